//! State shared by every reconcile: the client, the configuration, the caches (reflector
//! stores) and the compiled deployment catalog.

use std::collections::{BTreeMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::k8s::kept_lease::KeptLease;
use edgefleet_crds::{EdgeDeployment, EdgeDevice, EdgeGrant, EdgeModule, EdgeModuleSpec};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::ResourceExt;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::config::Config;
use crate::decide::catalog::{self, CompiledDeployment};
use crate::decide::grant::Grant;
use crate::decide::renewal_pace::{Pace, written_on_most};
use crate::decide::snapshot::KeptRevision;
use crate::k8s::moves::Moves;
use crate::k8s::watches::Synced;
use crate::k8s::written::Written;
use crate::metrics::Metrics;

/// The caches every reconcile reads. Nodes are kept as metadata only: a device needs a
/// Node's name and labels, and full Node objects would dominate memory at fleet size.
#[derive(Clone, Debug)]
pub struct Stores {
    pub nodes: Store<PartialObjectMeta<Node>>,
    pub devices: Store<EdgeDevice>,
    pub deployments: Store<EdgeDeployment>,
    pub modules: Store<EdgeModule>,
    pub leases: Store<KeptLease>,
    /// The deployments' ControllerRevisions (labelled `edgefleet.io/deployment`), judged.
    pub revisions: Store<KeptRevision>,
    pub grants: Store<EdgeGrant>,
}

pub struct Context {
    pub client: Client,
    pub config: Config,
    pub metrics: Arc<Metrics>,
    pub stores: Stores,
    catalog: Mutex<Option<(u64, Arc<Vec<CompiledDeployment>>)>>,
    /// (device, module) pairs seen failing, so "module failed" is an Event once per failure.
    pub failing: Mutex<HashSet<(String, String)>>,
    /// The rollout moves written that the device cache may not show yet.
    pub moves: Moves,
    /// The devices' conditions written that the device cache may not show yet.
    pub written_conditions: Written,
    /// The devices' desired states written that the device cache may not show yet.
    pub written_desired: Written,
    /// How often the fleet renews its Leases, and how long a device may be silent.
    pub pace: Pace,
    synced: Arc<Synced>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: Client,
        config: Config,
        metrics: Arc<Metrics>,
        stores: Stores,
        synced: Arc<Synced>,
    ) -> Self {
        let pace = Pace::new(
            config.lease_interval,
            config.offline_threshold,
            config.renewal_budget,
        );
        Context {
            client,
            config,
            metrics,
            stores,
            catalog: Mutex::new(None),
            failing: Mutex::new(HashSet::new()),
            moves: Moves::default(),
            written_conditions: Written::default(),
            written_desired: Written::default(),
            pace,
            synced,
        }
    }

    /// Every EdgeModule spec by `namespace/name`.
    pub fn module_specs(&self) -> BTreeMap<String, EdgeModuleSpec> {
        self.stores
            .modules
            .state()
            .iter()
            .map(|m| {
                (
                    catalog::key(&m.namespace().unwrap_or_default(), &m.name_any()),
                    m.spec.clone(),
                )
            })
            .collect()
    }

    /// Every EdgeGrant, ready for judging deployments.
    pub fn grants(&self) -> Vec<Grant> {
        self.stores
            .grants
            .state()
            .iter()
            .map(|g| Grant::new(&g.name_any(), g.spec.clone()))
            .collect()
    }

    /// All deployments, compiled. Recompiled only when a deployment, module or grant
    /// changed (their uids and resourceVersions are the cache key), not once per device.
    pub fn catalog(&self) -> Arc<Vec<CompiledDeployment>> {
        let deployments = self.stores.deployments.state();
        let modules = self.stores.modules.state();
        let grants = self.stores.grants.state();
        let stamp = stamp(&deployments, &modules, &grants);
        let mut cache = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, c)) = cache.as_ref()
            && *s == stamp
        {
            return c.clone();
        }
        let specs = self.module_specs();
        let grants = self.grants();
        let compiled: Arc<Vec<_>> = Arc::new(
            deployments
                .iter()
                .map(|d| catalog::compile(d, &specs, &grants))
                .collect(),
        );
        *cache = Some((stamp, compiled.clone()));
        compiled
    }

    /// Waits until every cache has its initial list. Reconciles start with this: deciding on
    /// a half-filled cache would, for one, take every device's Node for gone. The fleet's
    /// first renewal pace is chosen here, from the whole fleet, before any reconcile writes
    /// a Lease or judges presence by it.
    pub async fn synced(&self) {
        self.synced.wait().await;
        let seen = || {
            let own = self.config.lease_interval;
            let leases = self.stores.leases.state();
            let written = leases.iter().map(|l| l.renew_every.unwrap_or(own));
            (
                self.stores.devices.state().len(),
                written_on_most(written.collect()),
            )
        };
        self.pace.first(seen, Instant::now());
    }

    /// The device's Node, if it exists. Only its existence counts, never its labels.
    pub fn node(&self, device: &str) -> Option<Arc<PartialObjectMeta<Node>>> {
        self.stores.nodes.get(&ObjectRef::new(device))
    }

    /// Whether `device` is enrolled and present: an administrator created its EdgeDevice
    /// (not being deleted), its name can be a device identity, and its Node exists.
    pub fn enrolled(&self, device: &str) -> bool {
        self.stores
            .devices
            .get(&ObjectRef::new(device))
            .is_some_and(|d| self.is_enrolled(&d))
    }

    /// [`Context::enrolled`] for a device already at hand: no second store lookup, for the
    /// rollup's pass over every device.
    pub fn is_enrolled(&self, device: &EdgeDevice) -> bool {
        let name = device.metadata.name.as_deref().unwrap_or_default();
        device.metadata.deletion_timestamp.is_none()
            && crate::reconcile::registry::enrolment_problem(name).is_none()
            && self.node(name).is_some()
    }
}

fn stamp(
    deployments: &[Arc<EdgeDeployment>],
    modules: &[Arc<EdgeModule>],
    grants: &[Arc<EdgeGrant>],
) -> u64 {
    // Order-independent: the stores hand objects out in no particular order.
    let mut sum = (deployments.len() as u64).wrapping_mul(31)
        ^ (modules.len() as u64).wrapping_mul(17)
        ^ grants.len() as u64;
    let mut add = |kind: u8, uid: Option<&String>, rv: Option<&String>| {
        let mut h = DefaultHasher::new();
        (kind, uid, rv).hash(&mut h);
        sum = sum.wrapping_add(h.finish());
    };
    for d in deployments {
        add(
            0,
            d.metadata.uid.as_ref(),
            d.metadata.resource_version.as_ref(),
        );
    }
    for m in modules {
        add(
            1,
            m.metadata.uid.as_ref(),
            m.metadata.resource_version.as_ref(),
        );
    }
    for g in grants {
        add(
            2,
            g.metadata.uid.as_ref(),
            g.metadata.resource_version.as_ref(),
        );
    }
    sum
}
