//! Every identity string edgefleet uses, once. The controller, the agent, the charts' tests
//! and the lab all refer to these.

/// The API group of edgefleet's resources.
pub const GROUP: &str = "edgefleet.io";
/// The API version of edgefleet's resources.
pub const VERSION: &str = "v1alpha1";
/// The namespace holding edgefleet's controller, the device Leases and per-device Roles.
pub const SYSTEM_NAMESPACE: &str = "edgefleet-system";

/// The Node label the chart's bootstrap DaemonSet selects (value [`DEVICE_LABEL_VALUE`]):
/// where the bootstrap pod runs, nothing more. A kubelet may set it on its own Node, so it
/// enrols nothing: a device is enrolled by its EdgeDevice, which only an administrator
/// creates, and its certificate request is approved only then.
pub const DEVICE_LABEL: &str = "edgefleet.io/device";
pub const DEVICE_LABEL_VALUE: &str = "true";

/// `app.kubernetes.io/name`: names what an object belongs to (the agent's pod, the
/// bootstrap's certificate requests).
pub const APP_NAME_LABEL: &str = "app.kubernetes.io/name";

/// Binary and field-manager names.
pub const CONTROLLER_NAME: &str = "edgefleet-controller";
pub const AGENT_NAME: &str = "edgefleet-agent";
/// Server-side apply field managers: the controller owns `spec.desired` and its own status
/// conditions, the agent owns the device's reported status.
pub const CONTROLLER_MANAGER: &str = CONTROLLER_NAME;
pub const AGENT_MANAGER: &str = AGENT_NAME;
/// The field manager of the rollout planner's moves (`EdgeDevice.spec.rollouts`), apart
/// from the controller's own server-side applies of `spec.desired`.
pub const ROLLOUT_MANAGER: &str = "edgefleet-rollout";

/// A device's agent authenticates as `edgefleet:device:<device>` in group `edgefleet:devices`.
pub const DEVICE_USER_PREFIX: &str = "edgefleet:device:";
pub const DEVICES_GROUP: &str = "edgefleet:devices";

/// The reason the controller gives when it approves a device's join request, and when it
/// refuses one: what the approval of an edgefleet certificate is known by.
pub const JOIN_APPROVED_REASON: &str = "EdgefleetDeviceJoin";
pub const JOIN_DENIED_REASON: &str = "EdgefleetJoinRefused";

/// The Kubernetes user name of a device's agent.
pub fn device_user(device: &str) -> String {
    format!("{DEVICE_USER_PREFIX}{device}")
}

/// The prefix of every per-device object the controller makes (the device's Lease, and the
/// ClusterRole, ClusterRoleBinding, Role and RoleBinding that give it access to its own
/// objects), and of nothing else of edgefleet's: whatever a device is called, its objects
/// can't share a name with the controller's own (its leader Lease, the chart's RBAC).
pub const DEVICE_OBJECT_PREFIX: &str = "edgefleet-device-";

/// The name of `device`'s Lease and of its RBAC objects.
pub fn device_object_name(device: &str) -> String {
    format!("{DEVICE_OBJECT_PREFIX}{device}")
}

/// Labels of a deployment's ControllerRevisions: the deployment (its name, in its own
/// namespace) and the revision the object keeps. The controller watches only objects with
/// the first.
pub const DEPLOYMENT_LABEL: &str = "edgefleet.io/deployment";
pub const REVISION_LABEL: &str = "edgefleet.io/revision";

/// On a device's Lease: the fingerprint of the Lease and RBAC the controller last wrote
/// for the device, whole. A controller that starts again finds it and writes nothing for
/// a device whose objects are already what they should be.
pub const REGISTRATION_ANNOTATION: &str = "edgefleet.io/registration";

/// The device a per-device object (named by [`device_object_name`]) belongs to.
pub fn device_of_object(name: &str) -> Option<&str> {
    name.strip_prefix(DEVICE_OBJECT_PREFIX)
}

/// The chart's bootstrap that joins devices: its DaemonSet and ServiceAccount. The controller
/// approves a device's client certificate only when the request comes from this account's
/// pod on that very device.
pub const BOOTSTRAP_NAME: &str = "edgefleet-bootstrap";

/// The Kubernetes user name of the bootstrap pods' service account.
pub fn bootstrap_user(namespace: &str) -> String {
    format!("system:serviceaccount:{namespace}:{BOOTSTRAP_NAME}")
}

/// The signer of client certificates for the apiserver: device certificates are issued by it.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client";

/// The Lease through which the controller holds leadership.
pub const LEADER_LEASE: &str = "edgefleet-controller-leader";

/// Labels and annotations on the static pods the agent writes, and what module pods see.
pub mod pods {
    /// Names the module a static pod runs; also how the agent finds its pods over CRI.
    pub const MODULE_LABEL: &str = "edgefleet.io/module";
    /// `app.kubernetes.io/managed-by`, set to the agent's name on every pod it writes.
    pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
    /// A hash of a module's config files: a config change restarts the module's pod.
    pub const CONFIG_HASH_ANNOTATION: &str = "edgefleet.io/config-hash";
    /// A hash of the module's whole spec, on its pod: which containers run the current
    /// spec, and which are the previous one still being replaced.
    pub const SPEC_HASH_LABEL: &str = "edgefleet.io/spec-hash";
    /// Where a module's config files appear inside its container.
    pub const CONFIG_MOUNT_PATH: &str = "/etc/edgefleet/config";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_device_can_be_named_into_the_controllers_objects() {
        for own in [LEADER_LEASE, CONTROLLER_NAME, BOOTSTRAP_NAME] {
            assert!(device_of_object(own).is_none(), "{own}");
        }
        assert_eq!(
            device_of_object(&device_object_name("edge-1")),
            Some("edge-1")
        );
        // Even a device named like the leader Lease gets an object of its own.
        assert_ne!(device_object_name(LEADER_LEASE), LEADER_LEASE);
    }
}
