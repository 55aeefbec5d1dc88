//! Watching the device's own EdgeDevice, and nothing else: the field selector
//! `metadata.name=<device>` is what the device's RBAC allows. The desired state is passed on
//! raw, so that `validate` sees every field, also those this agent does not know. A list or
//! watch refused for load (429) is retried at the longer pauses of [`Jittered::busy`].

use std::time::Duration;

use edgefleet_crds::EdgeDevice;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher;
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backoff::{BUSY_MAX, Jittered};
use crate::link::Failure;

/// How long without a failure ends a streak of them: longer than the longest pause plus a
/// list that a busy apiserver queues before refusing it.
const CALM: Duration = Duration::from_secs(300);

/// Sends every new `spec.desired` (or `None` while the device has none) to `tx`. Whenever
/// the link to the apiserver comes back, the watch starts over with a fresh list: a watch
/// connection that lived through an outage may be dead without knowing it.
pub async fn watch(
    client: Client,
    device: String,
    max_backoff: Duration,
    tx: watch::Sender<Option<Value>>,
    mut link_up: watch::Receiver<bool>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<EdgeDevice>(&()));
    let config = watcher::Config::default().fields(&format!("metadata.name={device}"));
    loop {
        // The pauses between retries are this loop's, not the watcher's: kube's backoff is
        // reset by the `Init` that every retry of the list starts with, which kept a refused
        // list retrying every 200 ms.
        let mut events = watcher(api.clone(), config.clone()).boxed();
        let (mut failing, mut link_lost) = (false, false);
        let (mut backoff, mut busy) = (Jittered::new(max_backoff), Jittered::busy());
        // A watch restarted without a new list gives no event to reset the pauses by: a
        // failure after [`CALM`] without one starts them over.
        let mut last_failure: Option<Instant> = None;
        loop {
            let event = tokio::select! {
                e = events.next() => e,
                r = link_up.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let up = *link_up.borrow_and_update();
                    if up && link_lost {
                        tracing::info!("the apiserver is back; resyncing the desired state");
                        break;
                    }
                    link_lost |= !up;
                    continue;
                }
            };
            match event {
                Some(Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj))) => {
                    failing = false;
                    backoff.reset();
                    busy.reset();
                    let desired = obj
                        .data
                        .get("spec")
                        .and_then(|s| s.get("desired"))
                        .filter(|d| !d.is_null())
                        .cloned();
                    tx.send_if_modified(|current| {
                        let changed = *current != desired;
                        *current = desired;
                        changed
                    });
                }
                Some(Ok(watcher::Event::Delete(_))) => {
                    tracing::warn!(
                        device,
                        "the device's EdgeDevice was deleted; keeping the last accepted state"
                    );
                }
                // A list is starting: it may still fail.
                Some(Ok(watcher::Event::Init)) => {}
                Some(Ok(watcher::Event::InitDone)) => {
                    failing = false;
                    backoff.reset();
                    busy.reset();
                }
                Some(Err(e)) => {
                    if last_failure.is_some_and(|t| t.elapsed() > CALM) {
                        backoff.reset();
                        busy.reset();
                    }
                    last_failure = Some(Instant::now());
                    if !failing {
                        tracing::warn!(error = %e, "watching the device's desired state failed; retrying");
                    }
                    failing = true;
                    let pause = if refused_for_load(&e) {
                        busy.next()
                    } else {
                        backoff.next()
                    };
                    tokio::time::sleep(pause.unwrap_or(BUSY_MAX)).await;
                }
                None => return,
            }
        }
    }
}

/// Whether the watch failed because the apiserver refused it for load (429): its list or
/// its watch request, or the watch ended with a 429 status.
fn refused_for_load(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e) => {
            matches!(Failure::of(e), Failure::Busy(_))
        }
        watcher::Error::WatchError(s) => s.code == 429,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::fake_apiserver::apiserver;
    use kube::core::Status;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("no", "Reason").with_code(code)))
    }

    #[test]
    fn only_a_429_is_a_refusal_for_load() {
        assert!(refused_for_load(&watcher::Error::InitialListFailed(api(
            429
        ))));
        assert!(refused_for_load(&watcher::Error::WatchStartFailed(api(
            429
        ))));
        assert!(!refused_for_load(&watcher::Error::InitialListFailed(api(
            403
        ))));
        assert!(!refused_for_load(&watcher::Error::WatchStartFailed(api(
            503
        ))));
    }

    /// The list requests a watch makes in `run` of paused time against an apiserver that
    /// answers each with `status` (`None`: no answer at all).
    async fn lists(status: Option<u16>, run: Duration) -> usize {
        let (client, count) = apiserver(status, Duration::ZERO);
        let (tx, _rx) = watch::channel(None);
        let (_link_tx, link_rx) = watch::channel(true);
        let max_backoff = Duration::from_secs(2);
        let task = tokio::spawn(super::watch(
            client,
            "edge-1".into(),
            max_backoff,
            tx,
            link_rx,
        ));
        tokio::time::sleep(run).await;
        task.abort();
        count.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_refused_for_load_is_retried_at_pauses_growing_to_half_a_minute() {
        // Pauses of 1, 2, 4, 8, 16 and then 30 s, each jittered down to half: 8 to 13
        // lists in two minutes. Reset by the watcher's `Init`, they were 200 ms: hundreds.
        let requests = lists(Some(429), Duration::from_secs(120)).await;
        assert!((8..=13).contains(&requests), "{requests} lists in 120 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_list_without_an_answer_is_retried_at_the_links_backoff() {
        // Up to 2 s apart (jittered down to half): 30 to 120 in a minute, not 300.
        let requests = lists(None, Duration::from_secs(60)).await;
        assert!((30..=120).contains(&requests), "{requests} lists in 60 s");
    }
}
