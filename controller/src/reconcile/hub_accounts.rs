//! Keeps the cloud hub's accounts (`decide::hub_accounts`) in the Secret the hub includes:
//! rewritten when the enrolled devices change, so that a new device's hub may join and a
//! retired one's may not. The hub's reloader (`hub_reloader`) sees the new file and has the
//! hub read it again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::hub::{ACCOUNTS_KEY, ACCOUNTS_SECRET};
use futures::{Stream, StreamExt};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::ObjectMeta;

use crate::decide::hub_accounts;
use crate::k8s::apply;
use crate::k8s::context::Context;

pub const CONTROLLER: &str = "hub-accounts";

/// How long a burst of device changes is gathered before the accounts are worked out again
/// (a fleet's status reports arrive every few seconds; the accounts change only when a
/// device is enrolled or retired).
const GATHER: Duration = Duration::from_secs(2);
/// A Node's arrival or departure (which enrols or retires a device too) is noticed by then.
const RESYNC: Duration = Duration::from_secs(30);
/// The pause before a failed write is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// Runs until `changes` ends: writes the accounts now, then whenever they differ from what
/// was written last, after any device change or every `RESYNC`. `changes` is drained
/// without pause into one pending flag: it is a subscription of the shared device watch,
/// and one left unread while this waits or writes would hold up every other subscriber.
pub async fn run(ctx: Arc<Context>, changes: impl Stream<Item = ()> + Send + 'static) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let drain = tokio::spawn({
        let changed = changed.clone();
        changes.for_each(move |()| {
            changed.notify_one();
            std::future::ready(())
        })
    });
    ctx.synced().await;
    let api = Api::<Secret>::namespaced(ctx.client.clone(), &ctx.config.namespace);
    let mut written: Option<String> = None;
    loop {
        // The snapshot of the devices goes before any wait: held, it would keep every
        // device the watch replaces meanwhile in memory twice.
        let (text, enrolled) = {
            let devices = ctx.stores.devices.state();
            let enrolled: Vec<&str> = devices
                .iter()
                .filter(|d| ctx.is_enrolled(d))
                .filter_map(|d| d.metadata.name.as_deref())
                .collect();
            (hub_accounts::accounts(&enrolled), enrolled.len())
        };
        if written.as_ref() != Some(&text) {
            let _timer = ctx.metrics.reconcile(CONTROLLER);
            match apply::object(&api, &secret(&ctx.config.namespace, &text)).await {
                Ok(_) => {
                    tracing::info!(devices = enrolled, "cloud hub accounts written");
                    written = Some(text);
                }
                Err(e) => {
                    tracing::warn!(error = %e, secret = ACCOUNTS_SECRET, "cannot write the cloud hub's accounts");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        if drain.is_finished() {
            return;
        }
        tokio::select! {
            () = changed.notified() => {}
            () = tokio::time::sleep(RESYNC) => {}
        }
        tokio::time::sleep(GATHER).await;
    }
}

/// The Secret's data only: the chart creates it and owns its labels (Helm applies them
/// server-side too, and two owners of one label with different values conflict).
fn secret(namespace: &str, accounts: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(ACCOUNTS_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..Default::default()
        },
        data: Some(BTreeMap::from([(
            ACCOUNTS_KEY.to_owned(),
            ByteString(accounts.as_bytes().to_vec()),
        )])),
        ..Default::default()
    }
}
