//! Every watch the controller starts: the caches the reconciles read, and the feeds that
//! wake the controllers, each with the one reader it is named for.

use std::future::ready;
use std::sync::Arc;

use edgefleet_crds::identity::DEPLOYMENT_LABEL;
use edgefleet_crds::{EdgeDeployment, EdgeDevice, EdgeGrant, EdgeModule};
use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, ReflectHandle};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::decide::presence;
use crate::decide::snapshot::KeptRevision;
use crate::k8s::context::Stores;
use crate::k8s::intern::Interner;
use crate::k8s::kept_lease::KeptLease;
use crate::k8s::watches::{
    Cache, Synced, arrivals_and_departures, cache, cache_as, drop_managed_fields, keep_name_only,
    shared,
};
use crate::reconcile::rollout;

/// What the controllers hear of the shared caches. A shared cache keeps every subscriber's
/// events until that subscriber reads them, so each subscription has exactly one reader,
/// named for it: `devices` drives the device reconcile, `devices_for_deployments` maps a
/// device's change to the deployments it matters to, and so on.
pub struct Feeds {
    pub devices: ReflectHandle<EdgeDevice>,
    pub devices_for_deployments: ReflectHandle<EdgeDevice>,
    pub devices_for_modules: ReflectHandle<EdgeDevice>,
    pub devices_for_registry: ReflectHandle<EdgeDevice>,
    pub devices_for_hub: ReflectHandle<EdgeDevice>,
    pub deployments: ReflectHandle<EdgeDeployment>,
    pub deployments_for_devices: ReflectHandle<EdgeDeployment>,
    pub deployments_for_modules: ReflectHandle<EdgeDeployment>,
    pub modules: ReflectHandle<EdgeModule>,
    pub modules_for_devices: ReflectHandle<EdgeModule>,
    pub modules_for_deployments: ReflectHandle<EdgeModule>,
    pub grants_for_devices: ReflectHandle<EdgeGrant>,
    pub grants_for_deployments: ReflectHandle<EdgeGrant>,
    pub lease_changes: BoxStream<'static, KeptLease>,
    pub node_changes: BoxStream<'static, Result<PartialObjectMeta<Node>, watcher::Error>>,
    /// The deployments whose ControllerRevisions changed.
    pub revision_changes: BoxStream<'static, ObjectRef<EdgeDeployment>>,
}

impl std::fmt::Debug for Feeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feeds").finish_non_exhaustive()
    }
}

/// Starts every watch the controller needs: the caches the reconciles read, each registered
/// with `synced`, and the feeds that wake the controllers.
pub fn watch(client: &Client, namespace: &str, synced: &Arc<Synced>) -> (Stores, Feeds) {
    let (
        devices,
        [
            dev_main,
            dev_for_deployments,
            dev_for_modules,
            dev_for_registry,
            dev_for_hub,
        ],
    ) = {
        let mut desired_states = Interner::default();
        shared(
            Api::<EdgeDevice>::all(client.clone()),
            move |device| keep_device(device, &mut desired_states),
            synced,
            Cache::Devices,
        )
    };
    let (deployments, [dep_main, dep_for_devices, dep_for_modules]) = shared(
        Api::<EdgeDeployment>::all(client.clone()),
        drop_managed_fields,
        synced,
        Cache::Deployments,
    );
    let (modules, [mod_main, mod_for_devices, mod_for_deployments]) = shared(
        Api::<EdgeModule>::all(client.clone()),
        drop_managed_fields,
        synced,
        Cache::Modules,
    );
    // Grants are few and change rarely; any change may widen or narrow any deployment.
    let (grants, [grant_for_devices, grant_for_deployments]) = shared(
        Api::<EdgeGrant>::all(client.clone()),
        drop_managed_fields,
        synced,
        Cache::Grants,
    );

    let (leases, lease_events) = cache_as(
        Api::<Lease>::namespaced(client.clone(), namespace),
        watcher::Config::default(),
        KeptLease::keep,
        synced,
        Cache::Leases,
    );

    // Metadata only, and every Node: a device needs to know whether its Node exists, not
    // what its labels say (a kubelet may set its own Node's labels; enrolment and targeting
    // rest on the EdgeDevice, which only administrators write).
    let (nodes, node_events) = cache(
        Api::<PartialObjectMeta<Node>>::all(client.clone()),
        watcher::Config::default(),
        keep_name_only,
        synced,
        Cache::Nodes,
    );

    // The deployments' revisions, for moving devices back to one, each judged as it comes.
    // A revision's change wakes its deployment: one edgefleet did not write is refused there.
    let (revisions, revision_events) = cache_as(
        Api::<ControllerRevision>::all(client.clone()),
        watcher::Config::default().labels(DEPLOYMENT_LABEL),
        KeptRevision::judge,
        synced,
        Cache::Revisions,
    );

    let stores = Stores {
        revisions,
        nodes,
        devices,
        deployments,
        modules,
        leases,
        grants,
    };
    let feeds = Feeds {
        devices: dev_main,
        devices_for_deployments: dev_for_deployments,
        devices_for_modules: dev_for_modules,
        devices_for_registry: dev_for_registry,
        devices_for_hub: dev_for_hub,
        deployments: dep_main,
        deployments_for_devices: dep_for_devices,
        deployments_for_modules: dep_for_modules,
        modules: mod_main,
        modules_for_devices: mod_for_devices,
        modules_for_deployments: mod_for_deployments,
        grants_for_devices: grant_for_devices,
        grants_for_deployments: grant_for_deployments,
        lease_changes: lease_events
            .applied_objects()
            .filter_map(|l| {
                ready(
                    l.inspect_err(|e| tracing::warn!(error = %e, "watching Leases"))
                        .ok(),
                )
            })
            .boxed(),
        // A Node's arrival or deletion reaches the device reconcile only after the store
        // has it: from a second watch it could arrive first, and a device whose Node is gone
        // would be judged against a store that still has the Node.
        node_changes: arrivals_and_departures(node_events).boxed(),
        // Deletions too: a deployment whose kept revision went writes it again.
        revision_changes: revision_events
            .touched_objects()
            .filter_map(|cr| {
                ready(match cr {
                    Ok(cr) => rollout::deployment_of_revision(&cr),
                    Err(e) => {
                        tracing::warn!(error = %e, "watching ControllerRevisions");
                        None
                    }
                })
            })
            .boxed(),
    };
    (stores, feeds)
}

/// What the device cache keeps of an EdgeDevice: of its managed fields only when the agent
/// last wrote its status (presence reads it: [`presence::keep_status_written`]), no
/// annotations (the controller reads none, and a device enrolled with `kubectl apply`
/// carries a copy of its manifest in one, with a map node around it, for each of 10,000
/// devices), one shared copy of each distinct desired state, and of the agent's status only
/// what the controller reads ([`forget_unread_status`]).
fn keep_device(device: &mut EdgeDevice, desired_states: &mut Interner) {
    presence::keep_status_written(device);
    device.metadata.annotations = None;
    forget_unread_status(device);
    desired_states.intern(device);
}

/// Drops the strings the agent reports for people and the controller never reads: its
/// version, OS and architecture, and each module's image ID. The device chooses them (an
/// image ID up to 512 bytes, for each of up to 256 modules), so the cache would otherwise
/// hold whatever every device sends within the schema's bounds; a real image ID is 71
/// bytes, some 400 bytes a device of five modules. The controller writes only its own
/// conditions into a status, so nothing dropped here is lost from the object.
fn forget_unread_status(device: &mut EdgeDevice) {
    let Some(status) = device.status.as_mut() else {
        return;
    };
    status.agent_version = None;
    status.os = None;
    status.arch = None;
    for m in &mut status.modules {
        m.image_id = None;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use edgefleet_crds::DesiredState;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    use super::*;

    #[test]
    fn a_cached_device_keeps_what_the_controller_reads() {
        let enrolled = || {
            let mut d = EdgeDevice::new("edge-1", Default::default());
            d.metadata.labels = Some(BTreeMap::from([("site".into(), "berlin".into())]));
            d.metadata.annotations = Some(BTreeMap::from([(
                "kubectl.kubernetes.io/last-applied-configuration".into(),
                "{}".repeat(500),
            )]));
            d.metadata.managed_fields = Some(vec![ManagedFieldsEntry::default()]);
            d.spec.desired = Some(Arc::new(DesiredState::new(vec![], vec![])));
            d
        };
        let mut desired_states = Interner::default();
        let (mut a, mut b) = (enrolled(), enrolled());
        keep_device(&mut a, &mut desired_states);
        keep_device(&mut b, &mut desired_states);
        assert_eq!(a.metadata.annotations, None);
        assert_eq!(a.metadata.managed_fields, None, "no agent's status write");
        assert_eq!(a.metadata.labels, enrolled().metadata.labels);
        let shared = |d: &EdgeDevice| d.spec.desired.clone().expect("desired");
        assert!(Arc::ptr_eq(&shared(&a), &shared(&b)));
    }

    #[test]
    fn a_cached_device_forgets_what_its_agent_reports_for_people_only() {
        let reported: EdgeDevice = serde_json::from_value(serde_json::json!({
            "apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeDevice",
            "metadata": {"name": "edge-1"}, "spec": {},
            "status": {
                "agentVersion": "0.1.0", "os": "linux", "arch": "x86_64",
                "appliedRevision": "0123456789abcdef", "modulesReady": "0/1",
                "modules": [{
                    "namespace": "team", "name": "app", "runtimeStatus": "failed",
                    "exitCode": 3, "restartCount": 2, "message": "out of memory",
                    "lastStartTime": "2026-12-05T09:27:57Z",
                    "lastExitTime": "2026-12-05T09:28:57Z",
                    "imageId": format!("sha256:{}", "f".repeat(500)),
                }],
                "conditions": [{"type": "Ready", "status": "False", "reason": "ModulesFailing",
                                "lastTransitionTime": "2026-12-05T09:28:57Z"}],
            },
        }))
        .expect("a reported device");
        let mut kept = reported.clone();
        keep_device(&mut kept, &mut Interner::default());
        let (before, after) = (
            reported.status.expect("status"),
            kept.status.expect("status"),
        );
        assert_eq!(
            (&after.agent_version, &after.os, &after.arch),
            (&None, &None, &None)
        );
        let (m, was) = (&after.modules[0], &before.modules[0]);
        assert_eq!(m.image_id, None);
        // What the rollup, the status checks and the reconciles read stays.
        assert_eq!(
            (
                &m.namespace,
                &m.name,
                m.runtime_status,
                m.exit_code,
                m.restart_count
            ),
            (
                &was.namespace,
                &was.name,
                was.runtime_status,
                was.exit_code,
                was.restart_count
            )
        );
        assert_eq!(
            (&m.message, &m.last_start_time),
            (&was.message, &was.last_start_time)
        );
        assert_eq!(after.applied_revision, before.applied_revision);
        assert_eq!(after.modules_ready, before.modules_ready);
        assert_eq!(after.conditions, before.conditions);
    }
}
