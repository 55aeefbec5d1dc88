//! EdgeDevice: one per device, named like its Node. The controller owns `spec.desired` and
//! the Online and Registered conditions; the device's agent owns the rest of the status.
//! Heartbeats go to a Lease, not to this object, so idle devices cost no writes; the
//! controller also hears a device in its status writes (`status_written`).

use std::hash::Hash;
use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::condition::{Condition, conditions_schema};
use crate::deployment::DesiredStatus;
use crate::device_rollouts::Rollouts;
use crate::module::EdgeModuleSpec;
use crate::names::DNS_LABEL_PATTERN;
use crate::route::Route;

/// Condition types on an EdgeDevice.
pub mod conditions {
    /// Controller: the agent renewed its Lease or wrote its status within the offline
    /// threshold.
    pub const ONLINE: &str = "Online";
    /// Controller: the device's Node exists and carries the device label.
    pub const REGISTERED: &str = "Registered";
    /// Controller: what the agent reported makes sense against the desired state.
    pub const STATUS_VALID: &str = "StatusValid";
    /// Agent: the desired revision is applied (False with a reason when it was rejected).
    pub const APPLIED: &str = "Applied";
    /// Agent: every desired module is as desired.
    pub const READY: &str = "Ready";
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "edgefleet.io",
    version = "v1alpha1",
    kind = "EdgeDevice",
    status = "EdgeDeviceStatus",
    shortname = "edev",
    category = "edgefleet",
    printcolumn = r#"{"name":"Online","type":"string","jsonPath":".status.conditions[?(@.type==\"Online\")].status"}"#,
    printcolumn = r#"{"name":"Desired","type":"string","jsonPath":".spec.desired.revision","priority":1}"#,
    printcolumn = r#"{"name":"Applied","type":"string","jsonPath":".status.appliedRevision"}"#,
    printcolumn = r#"{"name":"Modules","type":"string","jsonPath":".status.modulesReady"}"#,
    printcolumn = r#"{"name":"Backlog","type":"integer","jsonPath":".status.hub.backlogMessages"}"#,
    printcolumn = r#"{"name":"Upstream","type":"boolean","jsonPath":".status.hub.connected","priority":1}"#,
    printcolumn = r#"{"name":"Expired","type":"integer","jsonPath":".status.hub.expired","priority":1}"#,
    printcolumn = r#"{"name":"Full","type":"integer","jsonPath":".status.hub.full","priority":1}"#,
    printcolumn = r#"{"name":"Refused","type":"integer","jsonPath":".status.hub.refused","priority":1}"#,
    printcolumn = r#"{"name":"Agent","type":"string","jsonPath":".status.agentVersion"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EdgeDeviceSpec {
    /// Written by edgefleet-controller only: what the device should run.
    // An Arc: devices that run the same thing share one copy in the controller's cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<Arc<DesiredState>>,
    /// Written by edgefleet-controller's rollout planner only: for each deployment with a
    /// staged rollout (`namespace/name`), the revision this device has been moved to. The
    /// desired state takes that deployment's modules from this revision.
    #[serde(default, skip_serializing_if = "Rollouts::is_empty")]
    pub rollouts: Rollouts,
}

/// The most modules one device runs.
pub const MAX_DESIRED_MODULES: usize = 256;
/// The most deployments that target one device (`DesiredState::targeting`), and so the most
/// entries of its `spec.rollouts`.
pub const MAX_TARGETING: usize = 1000;
/// The longest revision, a desired state's or a deployment's (they are 16 hex digits).
pub const REVISION_MAX: usize = 64;

/// A device's full desired module set, resolved from every deployment that targets it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredState {
    /// The hash of `modules` ([`DesiredState::revision_of`]).
    #[schemars(length(max = REVISION_MAX))]
    pub revision: String,
    /// Sorted by namespace, then name.
    #[serde(default)]
    #[schemars(length(max = MAX_DESIRED_MODULES))]
    pub modules: Vec<ResolvedModule>,
    /// Every deployment that selects this device and what became of it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_TARGETING))]
    pub targeting: Vec<TargetingDecision>,
}

impl DesiredState {
    pub fn new(modules: Vec<ResolvedModule>, targeting: Vec<TargetingDecision>) -> Self {
        DesiredState {
            revision: Self::revision_of(&modules),
            modules,
            targeting,
        }
    }

    /// A stable 16-hex-digit hash of the module set: equal sets give equal revisions on
    /// every controller and agent version that serializes them alike.
    pub fn revision_of(modules: &[ResolvedModule]) -> String {
        let bytes = serde_json::to_vec(modules).unwrap_or_default();
        let digest = Sha256::digest(&bytes);
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// What tells two desired states apart, cheaply: the revision already stands for the
    /// modules (it is their hash, [`DesiredState::revision_of`]), and the targeting is taken
    /// beside it. Nothing is serialized, so it can be hashed on every device event. Only a
    /// revision that does not match its modules makes two different states look alike,
    /// which is why its users compare in full where it matters (the controller's interner)
    /// or only skip a write that the cache then checks (its notes of writes on their way).
    pub fn identity(&self) -> impl Hash + '_ {
        (&self.revision, &self.targeting)
    }
}

/// One module as the device runs it: the EdgeModule's spec with the deployment's overrides
/// applied, and where it came from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedModule {
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub name: String,
    /// The owning deployment, `namespace/name`.
    pub deployment: String,
    /// The EdgeModule, `namespace/name`.
    pub module_ref: String,
    #[serde(default)]
    pub desired_status: DesiredStatus,
    /// Where its outputs go on the device's hub.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::route::MAX_ROUTES_PER_MODULE))]
    pub routes: Vec<Route>,
    #[serde(flatten)]
    pub spec: EdgeModuleSpec,
}

/// A module's identity on a device, `namespace/name`: two teams' modules of one name are
/// two modules, each in its team's namespace.
pub fn module_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

impl ResolvedModule {
    /// The namespace of the team that runs it: its deployment's, where its static pod's
    /// mirror appears too.
    pub fn namespace(&self) -> &str {
        self.deployment.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// Its identity on the device, see [`module_key`].
    pub fn key(&self) -> String {
        module_key(self.namespace(), &self.name)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetingDecision {
    /// `namespace/name`.
    pub deployment: String,
    pub priority: i32,
    #[serde(default)]
    pub layered: bool,
    pub outcome: TargetingOutcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// The deployment's revision whose modules the device got (a staged rollout moves
    /// devices from one to the next); empty when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum TargetingOutcome {
    /// The winning base deployment.
    Owner,
    /// A layered deployment applied on top.
    Layered,
    /// Selected the device but another deployment won.
    Lost,
    /// Selected the device, but its modules would take the device over its budget (the
    /// reason says which): it keeps what it had there, and its status says so.
    OverBudget,
    /// No longer selects the device; with `onUntarget: Retain` its modules stay there as
    /// they were, no longer updated by it nor counted in its status.
    Retained,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeDeviceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub os: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub arch: Option<String>,
    /// The desired revision the agent runs now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub applied_revision: Option<String>,
    /// The desired revision the agent refused to apply (the reason is in the Applied
    /// condition); it keeps running `appliedRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub rejected_revision: Option<String>,
    /// The deployments (`namespace/name`) whose part of the rejected desired state differs
    /// from the state the agent runs: the rejection is theirs, and only they count the
    /// device as failed. Absent when the agent can't tell (all of them count it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = MAX_DESIRED_MODULES), inner(length(max = 317)))]
    pub rejected_deployments: Option<Vec<String>>,
    /// `ready/total` of the desired modules, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    pub modules_ready: Option<String>,
    /// Written whole by the agent (an atomic list): Kubernetes 1.20's server-side apply
    /// turns an emptied associative list into null and then rejects the object.
    #[serde(default)]
    #[schemars(length(max = 256))]
    pub modules: Vec<ModuleStatus>,
    /// The device's message hub, when it runs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// The device's hub as its agent last saw it. Coarse on purpose (counts to two significant
/// digits, ages in minutes), so that traffic alone does not rewrite the status: it changes
/// when the backlog or the losses do, meaningfully. A device keeps losing messages at a
/// steady rate while its store is full; exact counts would rewrite its status every pass.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HubStatus {
    /// Whether the hub's leaf connection to the cloud hub is up.
    pub connected: bool,
    /// Upstream messages waiting on the device for the cloud.
    #[serde(default)]
    #[schemars(range(max = MAX_HUB_COUNT))]
    pub backlog_messages: u64,
    #[serde(default)]
    #[schemars(range(max = MAX_HUB_COUNT))]
    pub backlog_bytes: u64,
    /// How long the oldest waiting message has waited, in whole minutes.
    #[serde(default)]
    #[schemars(range(max = MAX_HUB_COUNT))]
    pub oldest_minutes: u64,
    /// Upstream messages that expired on the device (older than the TTL) before the cloud
    /// had them, since the agent started.
    #[serde(default)]
    #[schemars(range(max = MAX_HUB_COUNT))]
    pub expired: u64,
    /// Upstream messages pushed out of a full store to make room for new ones
    /// (drop-oldest) before the cloud had them, since the agent started.
    #[serde(default)]
    #[schemars(range(max = MAX_HUB_COUNT))]
    pub full: u64,
    /// Upstream messages a full store refused (refuse-new) since the agent started.
    #[serde(default)]
    #[schemars(range(max = MAX_HUB_COUNT))]
    pub refused: u64,
}

/// The largest figure a device may report in `status.hub`: more than any device's store
/// holds or loses, and exact as a float (a Prometheus gauge, a JavaScript client), so that
/// one device's figures, true or not, cannot overflow or swamp what the fleet's sums say.
pub const MAX_HUB_COUNT: u64 = 1_000_000_000_000_000;

impl HubStatus {
    /// `n` to two significant digits, at most [`MAX_HUB_COUNT`]: 12345 is 12000.
    pub fn coarse(n: u64) -> u64 {
        let n = n.min(MAX_HUB_COUNT);
        let mut scale = 1;
        while n / scale >= 100 {
            scale *= 10;
        }
        n / scale * scale
    }
}

/// A module as the device's container runtime sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleStatus {
    /// The module's namespace, its deployment's: with the name, its identity on the device.
    #[serde(default)]
    #[schemars(length(max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    pub runtime_status: RuntimeStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub restart_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_start_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exit_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub image_id: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = crate::bounds::MODULE_MESSAGE_MAX))]
    pub message: String,
}

impl ModuleStatus {
    /// The module's identity on the device, see [`module_key`]; its name alone from an
    /// agent older than module namespaces, which reports none (its names were unique).
    pub fn key(&self) -> String {
        if self.namespace.is_empty() {
            self.name.clone()
        } else {
            module_key(&self.namespace, &self.name)
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum RuntimeStatus {
    Running,
    /// Crash-looping: kubelet waits before the next restart.
    Backoff,
    Stopped,
    Failed,
    Pending,
}

impl RuntimeStatus {
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Backoff | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Backoff => "backoff",
            Self::Stopped => "stopped",
            Self::Failed => "failed",
            Self::Pending => "pending",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::module::{PullPolicy, RestartPolicy};

    fn module(name: &str, image: &str) -> ResolvedModule {
        ResolvedModule {
            name: name.into(),
            deployment: "ns/base".into(),
            module_ref: format!("ns/{name}"),
            desired_status: DesiredStatus::Running,
            routes: vec![],
            spec: EdgeModuleSpec {
                image: image.into(),
                image_pull_policy: PullPolicy::IfNotPresent,
                command: vec![],
                args: vec![],
                env: vec![],
                config: vec![],
                restart_policy: RestartPolicy::Always,
                startup_order: 0,
                devices: vec![],
                resources: None,
                host_network: false,
                read_only_root_filesystem: false,
            },
        }
    }

    #[test]
    fn revision_is_stable_and_sensitive() {
        let a = vec![module("a", "img:1"), module("b", "img:1")];
        let r1 = DesiredState::revision_of(&a);
        assert_eq!(r1, DesiredState::revision_of(&a.clone()));
        assert_eq!(r1.len(), 16);
        let b = vec![module("a", "img:2"), module("b", "img:1")];
        assert_ne!(r1, DesiredState::revision_of(&b));
        assert_ne!(r1, DesiredState::revision_of(&[]));
    }

    /// Traffic alone must not rewrite a device's status: counts change it only at their
    /// second significant digit.
    #[test]
    fn hub_counts_are_coarse() {
        assert_eq!(HubStatus::coarse(0), 0);
        assert_eq!(HubStatus::coarse(99), 99);
        assert_eq!(HubStatus::coarse(12_345), 12_000);
        assert_eq!(HubStatus::coarse(12_999), 12_000);
        assert_eq!(HubStatus::coarse(MAX_HUB_COUNT - 1), 990_000_000_000_000);
    }

    /// A device that lies about its hub (or whose counters ran wild) cannot write figures
    /// that overflow or swamp the fleet's sums: the schema bounds each one and the agent's
    /// coarse figures stay within it.
    #[test]
    fn a_device_cannot_report_hub_figures_past_the_bound() {
        assert_eq!(HubStatus::coarse(u64::MAX), MAX_HUB_COUNT);
        let schema = serde_json::to_value(schemars::schema_for!(HubStatus)).expect("json");
        for field in [
            "backlogMessages",
            "backlogBytes",
            "oldestMinutes",
            "expired",
            "full",
            "refused",
        ] {
            assert_eq!(
                schema["properties"][field]["maximum"].as_f64(),
                Some(MAX_HUB_COUNT as f64),
                "{field} is unbounded"
            );
        }
    }

    #[test]
    fn resolved_module_flattens_the_module_spec() {
        let v = serde_json::to_value(module("a", "img:1")).expect("serialize");
        assert_eq!(v["image"], "img:1");
        assert_eq!(v["moduleRef"], "ns/a");
        assert_eq!(v["restartPolicy"], "Always");
    }
}
