//! The device's heartbeat: its Lease in the system namespace, renewed every interval. Its
//! outcome is also the agent's view of the link to the apiserver: the first renewal that
//! succeeds after failures marks the link up again, and the status writer then reports at
//! once.

use std::time::Duration;

use edgefleet_crds::identity::{AGENT_MANAGER, device_object_name, device_user};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::runtime::utils::Backoff;
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

use crate::backoff::Jittered;

/// A request that takes longer than this counts as failed: offline, a connection can hang.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A request to the apiserver under [`REQUEST_TIMEOUT`]; the error is the text to log.
pub async fn within_deadline<T>(
    request: impl std::future::Future<Output = kube::Result<T>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Renews `device`'s Lease once: the agent's own field manager applies the holder and the
/// renewal time, which the controller reads as the device's presence. Public so that the
/// end-to-end tests' simulated agents renew exactly as the real one does.
pub async fn renew(leases: &Api<Lease>, device: &str) -> kube::Result<Lease> {
    let patch = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "spec": {
            "holderIdentity": device_user(device),
            "renewTime": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        }
    });
    leases
        .patch(
            &device_object_name(device),
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
}

pub async fn heartbeat(
    client: Client,
    device: String,
    namespace: String,
    interval: Duration,
    max_backoff: Duration,
    link_up: watch::Sender<bool>,
) {
    let leases: Api<Lease> = Api::namespaced(client, &namespace);
    let mut backoff = Jittered::new(max_backoff);
    loop {
        let pause = match within_deadline(renew(&leases, &device)).await {
            Ok(_) => {
                if link_up.send_if_modified(|up| !std::mem::replace(up, true)) {
                    tracing::info!("the apiserver is reachable; lease renewed");
                }
                backoff.reset();
                interval
            }
            Err(why) => {
                if link_up.send_if_modified(|up| std::mem::replace(up, false)) {
                    tracing::warn!(
                        error = why,
                        "cannot renew the lease; modules keep running, retrying"
                    );
                }
                backoff.next().unwrap_or(max_backoff)
            }
        };
        tokio::time::sleep(pause).await;
    }
}
