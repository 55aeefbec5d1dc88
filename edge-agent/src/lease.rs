//! The device's heartbeat: its Lease in the system namespace, renewed every interval. Its
//! outcome is also the agent's view of the link to the apiserver (see `link`): the first
//! renewal answered after none were marks the link up again, and the status writer then
//! reports at once.
//!
//! A status write is heard from the device too: the controller counts the time the
//! apiserver recorded for it like a renewal (its `decide::presence`), so after a status
//! write the controller heard (the status writer says which), the next renewal waits an
//! interval from it, though it is never sent more than [`LONGEST_PUT_OFF`] intervals after
//! the last: with the offline threshold at three intervals or more (the chart's is four),
//! the Lease alone keeps an agent online, and never looks expired to someone reading it
//! while its device is. A change reaching 10,000 devices is a status write each, and
//! renewals were most of the apiserver's writes meanwhile.

use std::time::Duration;

use edgefleet_crds::identity::{AGENT_MANAGER, device_object_name, device_user};
use edgefleet_crds::renewal::renew_every;
use edgefleet_crds::writes;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Patch;
use kube::runtime::utils::Backoff;
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

use crate::backoff::{Jittered, around};
use crate::link::{Failure, within_deadline};

/// The most intervals a renewal may be sent after the one before while status writes put it
/// off.
pub const LONGEST_PUT_OFF: u32 = 2;

/// Renews `device`'s Lease once: a merge patch of the holder and the renewal time under the
/// agent's own field manager, which the controller reads as the device's presence. A merge
/// patch, not server-side apply: the renewal is the fleet's most frequent write, and apply
/// makes the apiserver merge and diff the whole object's field sets each time (the controller,
/// which writes the Lease rarely, keeps applying its fields). Public so that the end-to-end
/// tests' simulated agents renew exactly as the real one does.
pub async fn renew(leases: &Api<Lease>, device: &str) -> kube::Result<Lease> {
    let patch = json!({
        "spec": {
            "holderIdentity": device_user(device),
            "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        }
    });
    let params = writes::patch(AGENT_MANAGER);
    leases
        .patch(&device_object_name(device), &params, &Patch::Merge(patch))
        .await
}

/// The interval to renew at after a renewal answered with `lease`: the one the controller
/// wrote on it (`edgefleet_crds::renewal`) once the fleet outgrew its renewal budget, though
/// never shorter than the agent's own (`configured`).
fn pace(configured: Duration, lease: &Lease) -> Duration {
    renew_every(lease.metadata.annotations.as_ref()).map_or(configured, |e| e.max(configured))
}

/// Renews the Lease every `interval`, or as much longer as the controller writes on it
/// ([`pace`]), jittered, so that a fleet started together does not
/// renew in lockstep, and tells `link_up` whether the apiserver answers. A renewal refused
/// for load waits for its next turn: the offline threshold spans several intervals. A
/// status write the controller heard (`reported`, by the status writer) while renewals
/// succeed puts the next one off to an interval after it (at most [`LONGEST_PUT_OFF`]
/// intervals after the last); while they fail, they go on probing the link.
pub async fn heartbeat(
    client: Client,
    device: String,
    namespace: String,
    interval: Duration,
    max_backoff: Duration,
    link_up: watch::Sender<bool>,
    mut reported: watch::Receiver<()>,
) {
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let configured = interval;
    let mut interval = interval;
    let mut backoff = Jittered::new(max_backoff);
    let mut failing = false;
    loop {
        let sent = tokio::time::Instant::now();
        let outcome = within_deadline(renew(&leases, &device)).await;
        let answered = outcome.as_ref().map_or_else(Failure::answered, |_| true);
        if link_up.send_if_modified(|up| std::mem::replace(up, answered) != answered) {
            if answered {
                tracing::info!("the apiserver is reachable");
            } else {
                tracing::warn!("the apiserver does not answer; modules keep running");
            }
        }
        let pause = match outcome {
            Ok(lease) => {
                failing = false;
                backoff.reset();
                let paced = pace(configured, &lease);
                if paced != interval {
                    tracing::info!(every_s = paced.as_secs(), "renewing at the fleet's pace");
                    interval = paced;
                }
                around(interval)
            }
            Err(why) => {
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(error = %why, "cannot renew the lease; retrying");
                }
                match why {
                    Failure::Busy(_) => around(interval),
                    Failure::NoAnswer(_) | Failure::Refused(_) => {
                        backoff.next().unwrap_or(max_backoff)
                    }
                }
            }
        };
        let latest = sent + interval * LONGEST_PUT_OFF;
        rest(pause, interval, latest, failing, &mut reported).await;
    }
}

/// Waits `pause` before the next renewal; a status written meanwhile starts the wait over
/// at `interval`, up to `latest`, unless renewals are `failing`. Statuses written before
/// the wait began were written before the renewal was answered, which says as much.
async fn rest(
    pause: Duration,
    interval: Duration,
    latest: tokio::time::Instant,
    failing: bool,
    reported: &mut watch::Receiver<()>,
) {
    reported.mark_unchanged();
    let until = tokio::time::sleep(pause);
    tokio::pin!(until);
    // A status writer that has stopped writes nothing more to wait for.
    let mut listening = true;
    loop {
        tokio::select! {
            () = &mut until => return,
            written = reported.changed(), if listening => match written {
                Ok(()) if !failing => {
                    // Never sooner than it was due.
                    let put_off = (tokio::time::Instant::now() + around(interval))
                        .min(latest)
                        .max(until.deadline());
                    until.as_mut().reset(put_off);
                }
                Ok(()) => {}
                Err(_) => listening = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::fake_apiserver::{apiserver, apiserver_pacing};

    /// Runs the heartbeat for `run` of paused time; the requests it made and the link's state.
    async fn beat(status: Option<u16>, delay: Duration, run: Duration) -> (usize, bool) {
        beat_reported(status, delay, run, Some(vec![])).await
    }

    /// The renewals in `run` of paused time at 10 s, against an apiserver that answers them
    /// with a Lease to be renewed every `secs`.
    async fn beat_paced(secs: &str, run: Duration) -> usize {
        let (client, count) = apiserver_pacing(secs);
        let (link_tx, _link_rx) = watch::channel(false);
        let (_reported_tx, reported_rx) = watch::channel(());
        let heart = tokio::spawn(heartbeat(
            client,
            "edge-1".into(),
            "edgefleet-system".into(),
            Duration::from_secs(10),
            Duration::from_secs(2),
            link_tx,
            reported_rx,
        ));
        tokio::time::sleep(run).await;
        heart.abort();
        count.load(Ordering::SeqCst)
    }

    /// A fleet past the controller's renewal budget renews at the interval the controller
    /// writes on each Lease, learnt from the first renewal's answer; never faster than the
    /// agent's own, whatever the Lease says.
    #[tokio::test(start_paused = true)]
    async fn an_agent_renews_at_the_fleets_pace_never_faster_than_its_own() {
        let run = Duration::from_secs(120);
        let paced = beat_paced("30", run).await;
        assert!(
            (4..=5).contains(&paced),
            "{paced} renewals in 120 s at 30 s"
        );
        let own = beat_paced("5", run).await;
        assert!((12..=14).contains(&own), "{own} renewals in 120 s at 10 s");
        let forged = beat_paced("0", run).await;
        assert!(
            (12..=14).contains(&forged),
            "{forged} renewals in 120 s at 10 s"
        );
    }

    /// [`beat`], the status writer reporting writes the controller heard at `reports` (times
    /// from the start), or, with `None`, gone from the start.
    async fn beat_reported(
        status: Option<u16>,
        delay: Duration,
        run: Duration,
        reports: Option<Vec<Duration>>,
    ) -> (usize, bool) {
        let (client, count) = apiserver(status, delay);
        let (link_tx, link_rx) = watch::channel(false);
        let (reported_tx, reported_rx) = watch::channel(());
        let start = tokio::time::Instant::now();
        let writer = tokio::spawn(async move {
            let Some(reports) = reports else {
                return drop(reported_tx);
            };
            for at in reports {
                tokio::time::sleep_until(start + at).await;
                reported_tx.send_replace(());
            }
            // Holds the sender to the end: its drop says the writer has stopped.
            std::future::pending().await
        });
        let interval = Duration::from_secs(10);
        let max_backoff = Duration::from_secs(2);
        let heart = tokio::spawn(heartbeat(
            client,
            "edge-1".into(),
            "edgefleet-system".into(),
            interval,
            max_backoff,
            link_tx,
            reported_rx,
        ));
        tokio::time::sleep(run).await;
        heart.abort();
        writer.abort();
        (count.load(Ordering::SeqCst), *link_rx.borrow())
    }

    /// The status writes the controller heard every 5 s, over `run`.
    fn every_5_s(run: u64) -> Option<Vec<Duration>> {
        Some((1..run / 5).map(|i| Duration::from_secs(5 * i)).collect())
    }

    /// The controller hears a status write like a renewal: the renewal after one waits an
    /// interval (10 s) from it. At 5 s the renewal due at 10 s goes to 15 s, not to 20 s.
    #[tokio::test(start_paused = true)]
    async fn a_status_written_puts_the_next_renewal_off_by_an_interval() {
        let secs = |s: f64| Duration::from_secs_f64(s);
        let (quiet, _) = beat(Some(200), Duration::ZERO, secs(13.5)).await;
        assert_eq!(quiet, 2, "renewals in 13.5 s");
        let at_5 = || Some(vec![secs(5.0)]);
        let (put_off, up) = beat_reported(Some(200), Duration::ZERO, secs(13.5), at_5()).await;
        assert!(up);
        assert_eq!(put_off, 1, "renewals in 13.5 s, a status written at 5 s");
        let (put_off, _) = beat_reported(Some(200), Duration::ZERO, secs(17.0), at_5()).await;
        assert_eq!(put_off, 2, "renewals in 17 s, a status written at 5 s");
    }

    /// However often the status is written, a renewal is sent at least every two intervals:
    /// an agent writing its status every 5 s renews every 20 s, not never.
    #[tokio::test(start_paused = true)]
    async fn status_writes_put_renewals_off_two_intervals_at_most() {
        let (quiet, _) = beat(Some(200), Duration::ZERO, Duration::from_secs(60)).await;
        assert!((6..=8).contains(&quiet), "{quiet} renewals in 60 s");
        let (reporting, up) = beat_reported(
            Some(200),
            Duration::ZERO,
            Duration::from_secs(60),
            every_5_s(60),
        )
        .await;
        assert!(up);
        assert!(
            (3..=4).contains(&reporting),
            "{reporting} renewals in 60 s of status writes"
        );
    }

    /// A status writer that has stopped leaves the heartbeat renewing at its interval.
    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_outlives_its_status_writer() {
        let (renewals, up) =
            beat_reported(Some(200), Duration::ZERO, Duration::from_secs(60), None).await;
        assert!(up);
        assert!((6..=8).contains(&renewals), "{renewals} renewals in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_status_written_does_not_hold_up_probing_a_link_down() {
        let every = Some((1..120).map(|i| Duration::from_millis(500 * i)).collect());
        let (requests, up) =
            beat_reported(None, Duration::ZERO, Duration::from_secs(60), every).await;
        assert!(!up);
        assert!(requests >= 25, "{requests} probes in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_apiserver_is_retried_at_the_interval_and_is_no_outage() {
        let (requests, up) = beat(Some(429), Duration::ZERO, Duration::from_secs(60)).await;
        assert!(up, "an apiserver shedding load still answers");
        // At the interval (10 s, give or take a tenth): 6 or 7 in a minute, not 30 or more.
        assert!((6..=8).contains(&requests), "{requests} renewals in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn an_apiserver_failing_on_its_side_is_no_outage() {
        // A 500: the apiserver could not reach an authorizer. The link stays up, so nothing
        // relists or reports again when the renewals get through.
        let (requests, up) = beat(Some(500), Duration::ZERO, Duration::from_secs(60)).await;
        assert!(up, "an apiserver that fails a request still answers");
        assert!(requests >= 25, "retried at the backoff: {requests} in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn an_apiserver_that_does_not_answer_is_an_outage_probed_at_the_backoff() {
        let (requests, up) = beat(None, Duration::ZERO, Duration::from_secs(60)).await;
        assert!(!up);
        assert!(requests >= 25, "{requests} probes in 60 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_apiserver_is_waited_for_not_given_up_on_and_retried() {
        // 20 s to answer: a busy apiserver's queues. The renewal it is working on is waited
        // for; giving up on it would leave the write to the apiserver and add another.
        let (requests, up) =
            beat(Some(429), Duration::from_secs(20), Duration::from_secs(60)).await;
        assert!(up, "a slow answer is still an answer");
        // One every 20 s + 10 s: 2 or 3 in a minute, not one every 5 s + backoff.
        assert!((2..=3).contains(&requests), "{requests} renewals in 60 s");
    }
}
