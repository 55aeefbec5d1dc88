//! Writing the device's status with server-side apply under the agent's field manager:
//! only when it changed since the last successful write, and once more whenever the link to
//! the apiserver comes back (the status may have been lost or gone stale meanwhile). A
//! refusal for load (429) is retried at the longer pauses of [`Jittered::busy`].
//!
//! A status about to change is held back for the one that follows ([`hold`]). At fleet
//! size each status write is one of the apiserver's most expensive requests:
//! - one with a module still starting, up to [`SETTLE`]: a change whose modules start
//!   within it is one write (applied and running), not two;
//! - one of an agent that has no desired state yet (none journaled, none read), up to
//!   [`FIRST_READ`]: an agent's first status then says what it runs, and a fleet starting
//!   together (a new fleet, or every agent back after an apiserver outage) does not write
//!   10,000 statuses of nothing first, in the rush when the apiserver can least afford
//!   them.

use std::time::Duration;

use edgefleet_crds::identity::AGENT_MANAGER;
use edgefleet_crds::status_written::status_written;
use edgefleet_crds::writes;
use edgefleet_crds::{EdgeDevice, EdgeDeviceStatus, RuntimeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Patch;
use kube::runtime::utils::Backoff;
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::watch;

use crate::backoff::Jittered;
use crate::link::{Failure, within_deadline};

/// The longest a status with a module still starting waits for the next one before it is
/// written anyway: how late the apiserver may hear that a change was applied.
pub const SETTLE: Duration = Duration::from_secs(3);

/// The longest the status of an agent with no desired state waits for it to be read: how
/// late the apiserver may hear of an agent that cannot read its desired state.
pub const FIRST_READ: Duration = Duration::from_secs(30);

/// How long `status` may wait for the one that follows, when it is about to change.
fn hold(status: &EdgeDeviceStatus) -> Option<Duration> {
    if status.applied_revision.is_none() && status.rejected_revision.is_none() {
        return Some(FIRST_READ);
    }
    let starting = status
        .modules
        .iter()
        .any(|m| m.runtime_status == RuntimeStatus::Pending);
    starting.then_some(SETTLE)
}

/// Writes each `status` as said above, and tells `reported` of every write the controller
/// hears ([`heard`]): the heartbeat puts its next renewal off.
pub async fn run(
    client: Client,
    device: String,
    max_backoff: Duration,
    mut status: watch::Receiver<Option<EdgeDeviceStatus>>,
    mut link_up: watch::Receiver<bool>,
    reported: watch::Sender<()>,
) {
    let api: Api<EdgeDevice> = Api::all(client);
    let mut written: Option<EdgeDeviceStatus> = None;
    let mut backoff = Jittered::new(max_backoff);
    let mut busy = Jittered::busy();
    let mut failing = false;
    // Since when a status about to change has waited to be written, and for how long it
    // may (a hold of another kind starts afresh).
    let mut held: Option<(tokio::time::Instant, Duration)> = None;
    // The link went down: once it is back, the apiserver may not have what was written.
    let mut lost = false;
    // When the apiserver last recorded a status write of this agent, as the last answer said.
    let mut recorded: Option<Time> = None;
    loop {
        let want = status.borrow_and_update().clone();
        if let Some(want) = want.filter(|w| written.as_ref() != Some(w)) {
            if let Some(limit) = hold(&want) {
                let since = match held {
                    Some((since, l)) if l == limit => since,
                    _ => held.insert((tokio::time::Instant::now(), limit)).0,
                };
                let left = limit.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(left) => {}
                        r = status.changed() => if r.is_err() { return },
                    }
                    continue;
                }
            }
            match within_deadline(write(&api, &device, &want)).await {
                Ok(answer) => {
                    let now_recorded = status_written(&answer.metadata).cloned();
                    if heard(recorded.as_ref(), now_recorded.as_ref()) {
                        reported.send_replace(());
                    }
                    recorded = now_recorded;
                    held = None;
                    written = Some(want);
                    backoff.reset();
                    busy.reset();
                    failing = false;
                }
                Err(why) => {
                    if !failing {
                        tracing::warn!(error = %why, "cannot report status; retrying");
                    }
                    failing = true;
                    let pause = match why {
                        Failure::Busy(_) => busy.next(),
                        _ => backoff.next(),
                    };
                    tokio::select! {
                        () = tokio::time::sleep(pause.unwrap_or(max_backoff)) => {}
                        _ = link_up.changed() => lost |= !*link_up.borrow_and_update(),
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            r = status.changed() => if r.is_err() { return },
            r = link_up.changed() => {
                if r.is_err() { return }
                let up = *link_up.borrow_and_update();
                lost |= !up;
                // Back online after an outage: report the current state now, whatever was
                // written before. Not when the link first comes up: a status written before
                // the first renewal was answered is there, and a fleet starting together
                // would write each one twice.
                if up && std::mem::take(&mut lost) {
                    written = None;
                }
            }
        }
    }
}

/// Whether a write whose answer says the apiserver recorded the agent's last status write
/// at `now`, the one before at `before`, is one the controller hears: one that changed the
/// object moves the time; one that changed nothing (the same status sent again after an
/// outage) does not. The first answer has nothing to compare with and counts as none.
fn heard(before: Option<&Time>, now: Option<&Time>) -> bool {
    matches!((before, now), (Some(b), Some(n)) if b != n)
}

async fn write(
    api: &Api<EdgeDevice>,
    device: &str,
    status: &EdgeDeviceStatus,
) -> kube::Result<EdgeDevice> {
    let patch = json!({
        "apiVersion": EdgeDevice::api_version(&()),
        "kind": EdgeDevice::kind(&()),
        "metadata": { "name": device },
        "status": status,
    });
    api.patch_status(device, &writes::apply(AGENT_MANAGER), &Patch::Apply(patch))
        .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use edgefleet_crds::ModuleStatus;

    use super::*;
    use crate::fake_apiserver::apiserver;

    fn with_module(revision: &str, runtime_status: RuntimeStatus) -> Option<EdgeDeviceStatus> {
        Some(EdgeDeviceStatus {
            applied_revision: Some(revision.to_owned()),
            modules: vec![
                serde_json::from_value::<ModuleStatus>(json!({
                    "namespace": "team-a", "name": "app", "runtimeStatus": runtime_status,
                }))
                .expect("a module status"),
            ],
            ..Default::default()
        })
    }

    /// The writer for device edge-1, on `client`, as the agent runs it.
    fn spawn_writer(
        client: Client,
        status: watch::Receiver<Option<EdgeDeviceStatus>>,
        link_up: watch::Receiver<bool>,
        reported: watch::Sender<()>,
    ) -> tokio::task::JoinHandle<()> {
        let max_backoff = Duration::from_secs(2);
        tokio::spawn(run(
            client,
            "edge-1".into(),
            max_backoff,
            status,
            link_up,
            reported,
        ))
    }

    /// Runs the writer over `statuses`, each `(after, status)` sent `after` the one before,
    /// and returns the writes made by `end` of paused time.
    async fn writes(statuses: Vec<(Duration, Option<EdgeDeviceStatus>)>, end: Duration) -> usize {
        writes_over_link(statuses, vec![], end).await
    }

    /// [`writes`], the link to the apiserver starting down and taking each of `link`'s
    /// states `(at, up)` at that time.
    async fn writes_over_link(
        statuses: Vec<(Duration, Option<EdgeDeviceStatus>)>,
        link: Vec<(Duration, bool)>,
        end: Duration,
    ) -> usize {
        let (client, count) = apiserver(Some(200), Duration::ZERO);
        let (tx, rx) = watch::channel(None);
        let (link_tx, link_rx) = watch::channel(false);
        let start = tokio::time::Instant::now();
        let _link = tokio::spawn(async move {
            for (at, up) in link {
                tokio::time::sleep_until(start + at).await;
                link_tx.send_replace(up);
            }
            // Holds the link's sender to the end: its drop would stop the writer.
            std::future::pending::<()>().await;
        });
        let writer = spawn_writer(client, rx, link_rx, watch::channel(()).0);
        for (after, status) in statuses {
            tokio::time::sleep(after).await;
            tx.send_replace(status);
        }
        tokio::time::sleep_until(start + end).await;
        writer.abort();
        count.load(Ordering::SeqCst)
    }

    /// Only a write that moved the time the apiserver records is heard: not the first (it
    /// has nothing to compare with), not the same status sent again, which changes nothing.
    #[test]
    fn a_write_is_heard_when_it_moved_the_recorded_time() {
        let at = |s: &str| Time(s.parse().expect("ts"));
        let (t1, t2) = (at("2026-01-01T00:00:01Z"), at("2026-01-01T00:00:02Z"));
        assert!(heard(Some(&t1), Some(&t2)));
        assert!(!heard(Some(&t1), Some(&t1)), "changed nothing");
        assert!(!heard(None, Some(&t1)), "the first answer");
        assert!(!heard(Some(&t1), None), "no entry of the agent's");
    }

    /// The heartbeat is told of the writes heard: the second status written, not the first.
    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_is_told_of_the_writes_heard() {
        let (client, _) = apiserver(Some(200), Duration::ZERO);
        let (tx, rx) = watch::channel(with_module("r1", RuntimeStatus::Running));
        let (_link_tx, link_rx) = watch::channel(true);
        let (reported_tx, reported) = watch::channel(());
        let writer = spawn_writer(client, rx, link_rx, reported_tx);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            !reported.has_changed().expect("writer runs"),
            "the first write"
        );
        tx.send_replace(with_module("r2", RuntimeStatus::Running));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            reported.has_changed().expect("writer runs"),
            "the second write"
        );
        writer.abort();
    }

    /// A change whose module starts a second after it is applied is one write, not two.
    #[tokio::test(start_paused = true)]
    async fn a_module_that_starts_at_once_is_one_status_write() {
        let n = writes(
            vec![
                (Duration::ZERO, with_module("r2", RuntimeStatus::Pending)),
                (
                    Duration::from_secs(1),
                    with_module("r2", RuntimeStatus::Running),
                ),
            ],
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(n, 1);
    }

    /// A fresh agent's first status says what it runs: the one of nothing, before its
    /// desired state is read, is not written.
    #[tokio::test(start_paused = true)]
    async fn a_fresh_agents_first_status_waits_for_its_desired_state() {
        let n = writes(
            vec![
                (Duration::ZERO, Some(EdgeDeviceStatus::default())),
                (
                    Duration::from_secs(10),
                    with_module("r1", RuntimeStatus::Pending),
                ),
                (
                    Duration::from_secs(1),
                    with_module("r1", RuntimeStatus::Running),
                ),
            ],
            FIRST_READ * 2,
        )
        .await;
        assert_eq!(n, 1);
    }

    /// An agent that cannot read its desired state still says so, a moment late.
    #[tokio::test(start_paused = true)]
    async fn an_agent_without_a_desired_state_reports_after_a_while() {
        let nothing = vec![(Duration::ZERO, Some(EdgeDeviceStatus::default()))];
        assert_eq!(writes(nothing.clone(), FIRST_READ / 2).await, 0);
        assert_eq!(writes(nothing, FIRST_READ + SETTLE).await, 1);
    }

    /// The link coming up for the first time is no outage: what was written stays written.
    /// After an outage, the status is written again.
    #[tokio::test(start_paused = true)]
    async fn only_an_outage_has_the_status_written_again() {
        let ready = || vec![(Duration::ZERO, with_module("r1", RuntimeStatus::Running))];
        let s = Duration::from_secs;
        assert_eq!(
            writes_over_link(ready(), vec![(s(1), true)], s(10)).await,
            1
        );
        let outage = vec![(s(1), true), (s(2), false), (s(5), true)];
        assert_eq!(writes_over_link(ready(), outage, s(10)).await, 2);
    }

    /// A module that takes long to start (an image pull) is reported applied after SETTLE,
    /// and running when it runs: held back, never withheld.
    #[tokio::test(start_paused = true)]
    async fn a_slow_module_is_reported_starting_after_a_moment() {
        let slow = vec![(Duration::ZERO, with_module("r2", RuntimeStatus::Pending))];
        assert_eq!(writes(slow.clone(), SETTLE / 2).await, 0);
        assert_eq!(writes(slow.clone(), SETTLE * 2).await, 1);
        let mut runs = slow;
        runs.push((SETTLE * 3, with_module("r2", RuntimeStatus::Running)));
        assert_eq!(writes(runs, SETTLE * 5).await, 2);
        // Nothing starting: written at once.
        let ready = vec![(Duration::ZERO, with_module("r2", RuntimeStatus::Running))];
        assert_eq!(writes(ready, Duration::from_millis(10)).await, 1);
    }
}
