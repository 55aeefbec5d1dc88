//! Writing the device's status with server-side apply under the agent's field manager:
//! only when it changed since the last successful write, and once more whenever the link to
//! the apiserver comes back (the status may have been lost or gone stale meanwhile). A
//! refusal for load (429) is retried at the longer pauses of [`Jittered::busy`].

use std::time::Duration;

use edgefleet_crds::identity::AGENT_MANAGER;
use edgefleet_crds::{EdgeDevice, EdgeDeviceStatus};
use kube::api::{Patch, PatchParams};
use kube::runtime::utils::Backoff;
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::watch;

use crate::backoff::Jittered;
use crate::link::{Failure, within_deadline};

pub async fn run(
    client: Client,
    device: String,
    max_backoff: Duration,
    mut status: watch::Receiver<Option<EdgeDeviceStatus>>,
    mut link_up: watch::Receiver<bool>,
) {
    let api: Api<EdgeDevice> = Api::all(client);
    let mut written: Option<EdgeDeviceStatus> = None;
    let mut backoff = Jittered::new(max_backoff);
    let mut busy = Jittered::busy();
    let mut failing = false;
    loop {
        let want = status.borrow_and_update().clone();
        if let Some(want) = want.filter(|w| written.as_ref() != Some(w)) {
            match within_deadline(write(&api, &device, &want)).await {
                Ok(()) => {
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
                        _ = link_up.changed() => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            r = status.changed() => if r.is_err() { return },
            r = link_up.changed() => {
                if r.is_err() { return }
                if *link_up.borrow_and_update() {
                    // Back online: report the current state now, whatever was written before.
                    written = None;
                }
            }
        }
    }
}

async fn write(api: &Api<EdgeDevice>, device: &str, status: &EdgeDeviceStatus) -> kube::Result<()> {
    let patch = json!({
        "apiVersion": EdgeDevice::api_version(&()),
        "kind": EdgeDevice::kind(&()),
        "metadata": { "name": device },
        "status": status,
    });
    api.patch_status(
        device,
        &PatchParams::apply(AGENT_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map(|_| ())
}
