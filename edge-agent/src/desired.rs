//! Watching the device's own EdgeDevice, and nothing else: the field selector
//! `metadata.name=<device>` is what the device's RBAC allows. The desired state is passed on
//! raw, so that `validate` sees every field, also those this agent does not know.

use std::time::Duration;

use edgefleet_crds::EdgeDevice;
use futures::StreamExt;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::Value;
use tokio::sync::watch;

use crate::backoff::Jittered;

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
        let mut events = watcher(api.clone(), config.clone())
            .backoff(Jittered::new(max_backoff))
            .boxed();
        let (mut failing, mut link_lost) = (false, false);
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
                Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => failing = false,
                Some(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "watching the device's desired state failed; retrying");
                    }
                    failing = true;
                }
                None => return,
            }
        }
    }
}
