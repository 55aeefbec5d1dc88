//! EdgeGrant: what the platform team lets a team's namespaces do on devices. Cluster-scoped
//! and written only by administrators, so a tenant can never widen its own grant.
//!
//! The safe default is nothing: a namespace no grant names reaches no device. A deployment
//! is *admitted* by a grant that names its namespace when its priority is in the grant's
//! range and every module it runs asks only for what the grant allows (host network, host
//! devices, images). It then reaches the devices its own selector matches *and* the
//! grant's `devices` selector matches; with several grants for one namespace, the union of
//! the devices of those that admit it. A deployment no grant admits is held: it keeps
//! what it gave devices before and says why (see the controller's `grant` module).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::deployment::DeviceSelector;
use crate::names::DNS_LABEL_PATTERN;

/// The most namespaces, and image prefixes, one grant lists.
pub const MAX_GRANT_NAMESPACES: usize = 64;
pub const MAX_GRANT_IMAGE_PREFIXES: usize = 32;

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "edgefleet.io",
    version = "v1alpha1",
    kind = "EdgeGrant",
    shortname = "egrant",
    category = "edgefleet",
    printcolumn = r#"{"name":"Namespaces","type":"string","jsonPath":".spec.namespaces"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.priority.min"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.priority.max"}"#,
    printcolumn = r#"{"name":"HostNetwork","type":"boolean","jsonPath":".spec.hostNetwork"}"#,
    printcolumn = r#"{"name":"HostDevices","type":"boolean","jsonPath":".spec.hostDevices"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.priority) || self.priority.min <= self.priority.max",
    "message": "priority.min must not be above priority.max"
}]))]
pub struct EdgeGrantSpec {
    /// The namespaces whose EdgeDeployments this grant is for.
    #[schemars(length(min = 1, max = MAX_GRANT_NAMESPACES), inner(length(min = 1, max = 63), pattern(DNS_LABEL_PATTERN)))]
    pub namespaces: Vec<String>,
    /// The devices those namespaces may target, by EdgeDevice labels. Required: `{}` grants
    /// every device, and has to be written as such.
    pub devices: DeviceSelector,
    /// The priorities their deployments may use, which bounds whom they can outrank. The
    /// default is exactly 0.
    #[serde(default)]
    pub priority: PriorityRange,
    /// Modules may share the device's network namespace (`hostNetwork: true`): they can
    /// then reach every port on the device, the kubelet's included.
    #[serde(default)]
    pub host_network: bool,
    /// Modules may use host devices (`devices:`). A device needs the device cgroup opened,
    /// which Kubernetes offers only as a privileged container: a module with a host device
    /// is root on its device. Grant it only to teams you would give the device's root.
    #[serde(default)]
    pub host_devices: bool,
    /// Image reference prefixes modules may use (for example `registry.example:5000/team-a/`);
    /// empty allows any image. A prefix ends at a boundary of the reference: `lab/team-a`
    /// allows `lab/team-a/app:1`, not `lab/team-ab/app:1`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_GRANT_IMAGE_PREFIXES), inner(length(min = 1, max = 512)))]
    pub images: Vec<String>,
}

/// An inclusive range of deployment priorities.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct PriorityRange {
    #[serde(default)]
    #[schemars(range(min = -1000000, max = 1000000))]
    pub min: i32,
    #[serde(default)]
    #[schemars(range(min = -1000000, max = 1000000))]
    pub max: i32,
}

impl PriorityRange {
    pub fn contains(&self, priority: i32) -> bool {
        (self.min..=self.max).contains(&priority)
    }
}
