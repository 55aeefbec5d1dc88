//! A controller's world without a cluster: the caches a reconcile reads, filled by the
//! test, and the fake apiserver it writes to, holding the same objects.

use std::sync::Arc;

use clap::Parser;
use edgefleet_controller::Config;
use edgefleet_controller::decide::snapshot::KeptRevision;
use edgefleet_controller::k8s::context::{Context, Stores};
use edgefleet_controller::k8s::kept_lease::KeptLease;
use edgefleet_controller::k8s::watches::{Cache, Synced};
use edgefleet_controller::metrics::Metrics;
use edgefleet_crds::{EdgeDeployment, EdgeDevice, EdgeGrant, EdgeModule};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Resource;
use kube::core::{ObjectMeta, PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::apiserver::{self, Handler, Log, Objects};

/// The namespace of device Leases and RBAC in these tests.
pub const SYSTEM_NAMESPACE: &str = "edgefleet-system";

/// A kind the controller caches, and what its cache holds of an object.
pub trait Cached:
    Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + 'static
{
    type Held: Resource<DynamicType = ()> + Clone + 'static;
    fn writer(w: &mut Writers) -> &mut Writer<Self::Held>;
    fn hold(self) -> Self::Held;
}

/// The write halves of the caches.
pub struct Writers {
    nodes: Writer<PartialObjectMeta<Node>>,
    devices: Writer<EdgeDevice>,
    deployments: Writer<EdgeDeployment>,
    modules: Writer<EdgeModule>,
    leases: Writer<KeptLease>,
    revisions: Writer<KeptRevision>,
    grants: Writer<EdgeGrant>,
}

macro_rules! cached {
    ($($kind:ty => $field:ident),* $(,)?) => {
        $(impl Cached for $kind {
            type Held = Self;
            fn writer(w: &mut Writers) -> &mut Writer<Self> {
                &mut w.$field
            }
            fn hold(self) -> Self {
                self
            }
        })*
    };
}

cached! {
    PartialObjectMeta<Node> => nodes,
    EdgeDevice => devices,
    EdgeDeployment => deployments,
    EdgeModule => modules,
    EdgeGrant => grants,
}

/// The cache keeps of a Lease what the controller's watch does.
impl Cached for Lease {
    type Held = KeptLease;
    fn writer(w: &mut Writers) -> &mut Writer<KeptLease> {
        &mut w.leases
    }
    fn hold(self) -> KeptLease {
        KeptLease::keep(self)
    }
}

/// The cache judges a ControllerRevision as the controller's watch does.
impl Cached for ControllerRevision {
    type Held = KeptRevision;
    fn writer(w: &mut Writers) -> &mut Writer<KeptRevision> {
        &mut w.revisions
    }
    fn hold(self) -> KeptRevision {
        KeptRevision::judge(self)
    }
}

/// The caches and the apiserver of one test. Objects added before [`World::context`] make
/// the caches' initial list; [`World::update`] after it is a watch event.
pub struct World {
    writers: Writers,
    stores: Stores,
    pub objects: Objects,
    /// Every request the reconciles sent.
    pub log: Log,
    client: kube::Client,
}

impl World {
    /// A world whose apiserver answers with [`Objects::answer`].
    pub fn new() -> Self {
        Self::answering(|objects| Arc::new(move |req| objects.answer(req)))
    }

    /// A world whose apiserver answers with the handler `make` builds around its objects.
    pub fn answering(make: impl FnOnce(Objects) -> Handler) -> Self {
        let objects = Objects::default();
        let (client, log) = apiserver::client(make(objects.clone()));
        let (nodes, node_writer) = reflector::store();
        let (devices, device_writer) = reflector::store();
        let (deployments, deployment_writer) = reflector::store();
        let (modules, module_writer) = reflector::store();
        let (leases, lease_writer) = reflector::store();
        let (revisions, revision_writer) = reflector::store();
        let (grants, grant_writer) = reflector::store();
        World {
            writers: Writers {
                nodes: node_writer,
                devices: device_writer,
                deployments: deployment_writer,
                modules: module_writer,
                leases: lease_writer,
                revisions: revision_writer,
                grants: grant_writer,
            },
            stores: Stores {
                nodes,
                devices,
                deployments,
                modules,
                leases,
                revisions,
                grants,
            },
            objects,
            log,
            client,
        }
    }

    /// Adds `obj` to the caches' initial list and to the apiserver.
    pub fn add<K: Cached>(&mut self, obj: K) -> &mut Self {
        self.objects.insert(path_of(&obj), to_json(&obj));
        K::writer(&mut self.writers).apply_watcher_event(&Event::InitApply(obj.hold()));
        self
    }

    /// Adds an EdgeDevice from YAML, and its Node.
    pub fn device(&mut self, yaml: &str) -> &mut Self {
        let device: EdgeDevice = parse(yaml);
        let node = ObjectMeta {
            name: device.metadata.name.clone(),
            ..Default::default()
        }
        .into_request_partial::<Node>();
        self.add(node).add(device)
    }

    /// The context every reconcile gets, with every cache synced. Call it once.
    pub fn context(&mut self) -> Arc<Context> {
        self.context_with(&[])
    }

    /// [`context`](Self::context) with the controller started with `flags` as well.
    pub fn context_with(&mut self, flags: &[&str]) -> Arc<Context> {
        let w = &mut self.writers;
        w.nodes.apply_watcher_event(&Event::InitDone);
        w.devices.apply_watcher_event(&Event::InitDone);
        w.deployments.apply_watcher_event(&Event::InitDone);
        w.modules.apply_watcher_event(&Event::InitDone);
        w.leases.apply_watcher_event(&Event::InitDone);
        w.revisions.apply_watcher_event(&Event::InitDone);
        w.grants.apply_watcher_event(&Event::InitDone);
        let synced = Arc::new(Synced::default());
        for cache in [
            Cache::Devices,
            Cache::Deployments,
            Cache::Modules,
            Cache::Leases,
            Cache::Nodes,
            Cache::Revisions,
            Cache::Grants,
        ] {
            synced.expect(cache);
            synced.observe(cache, &Ok::<_, ()>(Event::<()>::InitDone));
        }
        let config = Config::try_parse_from(
            [
                "edgefleet-controller",
                "--namespace",
                SYSTEM_NAMESPACE,
                "--identity",
                "test",
            ]
            .iter()
            .chain(flags),
        )
        .expect("the test's flags parse");
        Arc::new(Context::new(
            self.client.clone(),
            config,
            Arc::new(Metrics::default()),
            self.stores.clone(),
            synced,
        ))
    }

    /// The object the apiserver holds at `obj`'s path (after the reconciles' writes).
    pub fn stored<K: Cached>(&self, obj: &K) -> K {
        let path = path_of(obj);
        let value = self
            .objects
            .get(&path)
            .unwrap_or_else(|| panic!("the apiserver holds no {path}"));
        serde_json::from_value(value).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// Shows the caches `obj` as the apiserver now holds it, as a watch would.
    pub fn update<K: Cached>(&mut self, obj: &K) -> Arc<K> {
        self.write(obj, &serde_json::json!({}))
    }

    /// Merges `patch` into `obj` as someone else would write it (an agent, an
    /// administrator), and shows the caches the result.
    pub fn write<K: Cached>(&mut self, obj: &K, patch: &serde_json::Value) -> Arc<K> {
        self.objects.patch(path_of(obj), patch);
        let stored = self.stored(obj);
        K::writer(&mut self.writers).apply_watcher_event(&Event::Apply(stored.clone().hold()));
        Arc::new(stored)
    }
}

/// Parses a test's YAML fixture.
pub fn parse<K: DeserializeOwned>(yaml: &str) -> K {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("fixture {yaml}: {e}"))
}

/// The object's path in the apiserver, as kube requests it.
pub fn path_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    let meta = obj.meta();
    let name = meta.name.as_deref().unwrap_or_default();
    format!("{}/{name}", K::url_path(&(), meta.namespace.as_deref()))
}

fn to_json<K: Serialize>(obj: &K) -> serde_json::Value {
    serde_json::to_value(obj).expect("a Kubernetes object serializes")
}
