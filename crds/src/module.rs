//! EdgeModule: one containerized module, versioned by its spec. Changing it rolls out to
//! every device that runs it.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::condition::{Condition, conditions_schema};
use crate::names::{ENV_NAME_PATTERN, FILE_NAME_PATTERN, IMAGE_PATTERN};

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "edgefleet.io",
    version = "v1alpha1",
    kind = "EdgeModule",
    namespaced,
    status = "EdgeModuleStatus",
    shortname = "emod",
    category = "edgefleet",
    printcolumn = r#"{"name":"Image","type":"string","jsonPath":".spec.image"}"#,
    printcolumn = r#"{"name":"Deployments","type":"integer","jsonPath":".status.deployments"}"#,
    printcolumn = r#"{"name":"Devices","type":"integer","jsonPath":".status.devices"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct EdgeModuleSpec {
    /// The container image. There may be no registry near a device: images are pulled as
    /// `imagePullPolicy` says, or pre-loaded.
    #[schemars(length(min = 1, max = 512), pattern(IMAGE_PATTERN))]
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Overrides the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128), inner(length(max = 4096)))]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    /// Files delivered to the module, read-only, under `/etc/edgefleet/config/`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub config: Vec<ConfigFile>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Modules start in ascending order: one starts only when every module of a lower order
    /// runs.
    #[serde(default)]
    #[schemars(range(min = 0, max = crate::limits::MAX_STARTUP_ORDER))]
    pub startup_order: u32,
    /// Host devices (for example a serial port) the module may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub devices: Vec<HostDevice>,
    /// Limits; a module without a memory limit gets [`DEFAULT_MEMORY_LIMIT`], so one
    /// module's leak can't take its device down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Share the device's network namespace. Off by default: the module gets a network
    /// namespace of its own. Needs a grant (`EdgeGrant.spec.hostNetwork`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host_network: bool,
    /// Mount the image's root filesystem read-only; the module writes only to its volumes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub read_only_root_filesystem: bool,
}

/// The memory limit of a module that states none.
pub const DEFAULT_MEMORY_LIMIT: &str = "256Mi";

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct EnvVar {
    #[schemars(length(min = 1, max = 256), pattern(ENV_NAME_PATTERN))]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 32768))]
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct ConfigFile {
    /// The file's name under `/etc/edgefleet/config/`.
    #[schemars(length(min = 1, max = 128), pattern(FILE_NAME_PATTERN))]
    pub name: String,
    /// At most 64 KiB (65,536 bytes; the schema can count only characters), and 256 KiB
    /// for all of a module's files.
    #[schemars(length(max = crate::limits::MAX_CONFIG_FILE_BYTES))]
    pub content: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[self.hostPath, has(self.containerPath) ? self.containerPath : '/dev/x'].all(p, !p.contains('/../') && !p.endsWith('/..'))",
    "message": "a device path must stay under /dev: no '..' component"
}]))]
pub struct HostDevice {
    #[schemars(length(min = 6, max = 256), pattern("^/dev/[A-Za-z0-9._/-]+$"))]
    pub host_path: String,
    /// Where the module sees it; the host path when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 6, max = 256), pattern("^/dev/[A-Za-z0-9._/-]+$"))]
    pub container_path: Option<String>,
}

/// Limits, as Kubernetes quantities.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^[0-9]+(\\.[0-9]+)?m?$"))]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern("^[0-9]+(Ki|Mi|Gi|K|M|G)?$"))]
    pub memory: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EdgeModuleStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// How many deployments reference this module.
    #[serde(default)]
    pub deployments: u32,
    /// How many devices have it in their desired state.
    #[serde(default)]
    pub devices: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
