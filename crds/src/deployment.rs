//! EdgeDeployment: which modules run on which devices. Among the non-layered deployments
//! that select a device the highest priority wins; layered ones add or override modules on
//! top (see the controller's targeting module for the exact rules).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{Condition, conditions_schema};
use crate::module::EnvVar;
use crate::names::{DNS_LABEL_PATTERN, IMAGE_PATTERN};
use crate::rollout::{RolloutSpec, RolloutStatus};
use crate::route::Route;

/// The most failing devices a deployment's status lists: enough to act on, small at any
/// fleet size.
pub const MAX_FAILURE_SAMPLES: usize = 10;
/// The longest name an EdgeDeployment may have: a label value's (63), since the name labels
/// the ControllerRevisions that keep its revisions (`edgefleet.io/deployment`). Object
/// names may be longer; the controller holds such a deployment, and the admission webhook
/// refuses it.
pub const MAX_NAME: usize = 63;

/// Condition types on an EdgeDeployment (the controller decides them; see its
/// `decide::conditions`). Exactly one of Ready, Reconciling and Stalled is True.
pub mod conditions {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    /// Another deployment ties with this one at the same priority on some device.
    pub const CONFLICTED: &str = "Conflicted";
}

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "edgefleet.io",
    version = "v1alpha1",
    kind = "EdgeDeployment",
    namespaced,
    status = "EdgeDeploymentStatus",
    shortname = "edep",
    category = "edgefleet",
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"Layered","type":"boolean","jsonPath":".spec.layered","priority":1}"#,
    printcolumn = r#"{"name":"Targeted","type":"integer","jsonPath":".status.targeted"}"#,
    printcolumn = r#"{"name":"Applied","type":"integer","jsonPath":".status.applied"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.ready"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.failed"}"#,
    printcolumn = r#"{"name":"Deferred","type":"integer","jsonPath":".status.deferred","priority":1}"#,
    printcolumn = r#"{"name":"Rollout","type":"string","jsonPath":".status.rollout.phase"}"#,
    printcolumn = r#"{"name":"Wave","type":"string","jsonPath":".status.rollout.wave","priority":1}"#,
    printcolumn = r#"{"name":"Current","type":"string","jsonPath":".status.rollout.currentRevision","priority":1}"#,
    printcolumn = r#"{"name":"Update","type":"string","jsonPath":".status.rollout.updateRevision","priority":1}"#,
    printcolumn = r#"{"name":"Message","type":"string","jsonPath":".status.rollout.message","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.modules.all(m, self.modules.exists_one(n, n.name == m.name))",
    "message": "module names must be unique in a deployment: each names a module on the device"
}]))]
pub struct EdgeDeploymentSpec {
    /// Which devices this deployment targets, by the labels an administrator gave their
    /// EdgeDevices (never their Nodes' labels). An empty selector selects every device.
    #[serde(default)]
    pub selector: DeviceSelector,
    /// Higher wins. Among equal priorities the deployment whose `namespace/name` sorts first
    /// wins, and the others report a conflict.
    #[serde(default)]
    #[schemars(range(min = -1000000, max = 1000000))]
    pub priority: i32,
    /// A layered deployment adds or overrides modules on top of the device's winning base
    /// deployment instead of competing with it.
    #[serde(default)]
    pub layered: bool,
    #[schemars(length(min = 1, max = 64))]
    pub modules: Vec<DeploymentModule>,
    /// Staged rollout of every change: waves, canary, failure threshold, rollback. Without
    /// it a change reaches every targeted device at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

/// A label selector over devices, as in Kubernetes: all `matchLabels` and all
/// `matchExpressions` must hold.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSelector {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub match_expressions: Vec<SelectorRequirement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.operator in ['In', 'NotIn'] ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)",
    "message": "operators In and NotIn need at least one value; Exists and DoesNotExist take none"
}]))]
pub struct SelectorRequirement {
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// One module of a deployment: an EdgeModule in the deployment's namespace, under the name
/// it has on the device, with per-deployment overrides.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentModule {
    /// The module's name on the device (a DNS label, unique in the deployment).
    #[schemars(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN))]
    pub name: String,
    /// The EdgeModule to run; `name` when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub module_ref: Option<String>,
    #[serde(default)]
    pub desired_status: DesiredStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overrides: Option<ModuleOverrides>,
    /// Where this module's outputs go on the device's hub: to inputs of modules of this
    /// deployment, or upstream (see the route module for the mapping from IoT Edge).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = crate::route::MAX_ROUTES_PER_MODULE))]
    pub routes: Vec<Route>,
}

impl DeploymentModule {
    /// The name of the EdgeModule this entry refers to.
    pub fn module_name(&self) -> &str {
        self.module_ref.as_deref().unwrap_or(&self.name)
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum DesiredStatus {
    #[default]
    Running,
    Stopped,
}

/// What a deployment changes about a module for its devices.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleOverrides {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512), pattern(IMAGE_PATTERN))]
    pub image: Option<String>,
    /// Replaces the module's args.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub args: Option<Vec<String>>,
    /// Set or replace environment variables by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = crate::limits::MAX_STARTUP_ORDER))]
    pub startup_order: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeDeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Devices this deployment contributes modules to.
    #[serde(default)]
    pub targeted: u32,
    /// Targeted devices whose agent applied their current desired state.
    #[serde(default)]
    pub applied: u32,
    /// Applied devices on which every module of this deployment is as desired.
    #[serde(default)]
    pub ready: u32,
    /// Devices on which a module of this deployment failed, or whose agent rejected the
    /// desired state.
    #[serde(default)]
    pub failed: u32,
    /// Targeted devices that are offline and not yet applied: they update when they return.
    #[serde(default)]
    pub deferred: u32,
    /// Matching devices on which a higher-priority (or tie-winning) deployment won.
    #[serde(default)]
    pub lost: u32,
    /// At most ten failing devices, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_FAILURE_SAMPLES))]
    pub failures: Vec<FailureSample>,
    /// Revisions and where the rollout of the latest one stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct FailureSample {
    #[schemars(length(max = crate::bounds::OBJECT_NAME_MAX))]
    pub device: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = crate::bounds::MODULE_NAME_MAX))]
    pub module: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = crate::bounds::FAILURE_REASON_MAX))]
    pub reason: String,
}
