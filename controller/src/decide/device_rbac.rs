//! What each device may do, and nothing more: its agent (user `edgefleet:device:<name>`)
//! may get and watch its own EdgeDevice and update its status, and get and renew its own
//! Lease. Every object is owned by the EdgeDevice, so deleting the device removes them.
//! Pure builders; the registry applies them.

use std::collections::BTreeMap;

use edgefleet_crds::EdgeDevice;
use edgefleet_crds::identity::{GROUP, REGISTRATION_ANNOTATION, device_object_name, device_user};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

fn owner(device: &EdgeDevice) -> Option<OwnerReference> {
    device.controller_owner_ref(&())
}

fn meta(name: String, namespace: Option<&str>, device: &EdgeDevice) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: namespace.map(str::to_owned),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/managed-by".to_owned(),
            edgefleet_crds::identity::CONTROLLER_NAME.to_owned(),
        )])),
        owner_references: owner(device).map(|o| vec![o]),
        ..Default::default()
    }
}

fn rule(group: &str, resource: &str, name: &str, verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(vec![resource.to_owned()]),
        resource_names: Some(vec![name.to_owned()]),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

fn subject(name: &str) -> Vec<Subject> {
    vec![Subject {
        kind: "User".to_owned(),
        api_group: Some("rbac.authorization.k8s.io".to_owned()),
        name: device_user(name),
        namespace: None,
    }]
}

/// Cluster-scoped: the device's own EdgeDevice. `list` and `watch` are limited to the one
/// name too; the apiserver allows them for a request with `fieldSelector=metadata.name=<name>`.
pub fn cluster_role(name: &str, device: &EdgeDevice) -> ClusterRole {
    ClusterRole {
        metadata: meta(device_object_name(name), None, device),
        rules: Some(vec![
            rule(GROUP, "edgedevices", name, &["get", "list", "watch"]),
            // The agent writes its status with server-side apply: patch only. A device
            // role may grant only what the controller itself holds (RBAC escalation rule).
            rule(GROUP, "edgedevices/status", name, &["patch"]),
        ]),
        ..Default::default()
    }
}

pub fn cluster_role_binding(name: &str, device: &EdgeDevice) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(device_object_name(name), None, device),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "ClusterRole".to_owned(),
            name: device_object_name(name),
        },
        subjects: Some(subject(name)),
    }
}

/// In the system namespace: the device's own Lease.
pub fn role(name: &str, namespace: &str, device: &EdgeDevice) -> Role {
    Role {
        metadata: meta(device_object_name(name), Some(namespace), device),
        rules: Some(vec![rule(
            "coordination.k8s.io",
            "leases",
            &device_object_name(name),
            &["get", "patch"],
        )]),
    }
}

pub fn role_binding(name: &str, namespace: &str, device: &EdgeDevice) -> RoleBinding {
    RoleBinding {
        metadata: meta(device_object_name(name), Some(namespace), device),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_owned(),
            kind: "Role".to_owned(),
            name: device_object_name(name),
        },
        subjects: Some(subject(name)),
    }
}

/// The device's heartbeat Lease. The controller sets only its owner and duration; the
/// agent renews `renewTime` under its own field manager.
pub fn lease(name: &str, namespace: &str, device: &EdgeDevice, duration_s: i32) -> Lease {
    Lease {
        metadata: meta(device_object_name(name), Some(namespace), device),
        spec: Some(LeaseSpec {
            lease_duration_seconds: Some(duration_s),
            ..Default::default()
        }),
    }
}

/// Everything the registry writes for one device. The Lease carries the fingerprint of the
/// whole, so the registry can tell from its Lease cache alone that a device needs nothing
/// written; it writes the Lease last, once the RBAC it vouches for is in place.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub cluster_role: ClusterRole,
    pub cluster_role_binding: ClusterRoleBinding,
    pub role: Role,
    pub role_binding: RoleBinding,
    pub lease: Lease,
}

impl Registration {
    pub fn of(name: &str, namespace: &str, device: &EdgeDevice, lease_s: i32) -> Registration {
        let mut r = Registration {
            cluster_role: cluster_role(name, device),
            cluster_role_binding: cluster_role_binding(name, device),
            role: role(name, namespace, device),
            role_binding: role_binding(name, namespace, device),
            lease: lease(name, namespace, device, lease_s),
        };
        let fingerprint = r.fingerprint();
        r.lease
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(REGISTRATION_ANNOTATION.to_owned(), fingerprint);
        r
    }

    /// A hash of the five objects as built (the Lease without its annotation).
    fn fingerprint(&self) -> String {
        let bytes = serde_json::to_vec(&(
            &self.cluster_role,
            &self.cluster_role_binding,
            &self.role,
            &self.role_binding,
            &self.lease,
        ))
        .unwrap_or_default();
        Sha256::digest(&bytes)[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `written` (the device's Lease as cached) says this registration is in place.
    pub fn is_in(&self, written: Option<&Lease>) -> bool {
        let annotation = |l: &Lease| {
            l.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REGISTRATION_ANNOTATION))
                .cloned()
        };
        written.is_some_and(|w| annotation(w).is_some() && annotation(w) == annotation(&self.lease))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> EdgeDevice {
        let mut d = EdgeDevice::new("edge-1", Default::default());
        d.metadata.uid = Some("uid-1".into());
        d
    }

    /// A controller that starts again writes nothing for a registered device; a device whose
    /// objects should now be different (another owner, another duration) or whose Lease
    /// lacks the fingerprint (never completed, or written by an older controller) is written.
    #[test]
    fn a_registration_in_place_is_not_written_again() {
        let d = device();
        let r = Registration::of("edge-1", "edgefleet-system", &d, 40);
        assert!(r.is_in(Some(&r.lease)));
        assert!(!r.is_in(None), "no Lease yet");
        let mut bare = r.lease.clone();
        bare.metadata.annotations = None;
        assert!(!r.is_in(Some(&bare)), "a Lease without the fingerprint");
        let longer = Registration::of("edge-1", "edgefleet-system", &d, 90);
        assert!(!longer.is_in(Some(&r.lease)), "another lease duration");
        let mut again = d.clone();
        again.metadata.uid = Some("uid-2".into());
        let recreated = Registration::of("edge-1", "edgefleet-system", &again, 40);
        assert!(
            !recreated.is_in(Some(&r.lease)),
            "a device deleted and created again owns new objects"
        );
    }

    #[test]
    fn grants_only_the_devices_own_objects() {
        let d = device();
        let cr = cluster_role("edge-1", &d);
        let rules = cr.rules.expect("rules");
        assert_eq!(rules.len(), 2);
        for r in &rules {
            assert_eq!(
                r.resource_names.as_deref(),
                Some(&["edge-1".to_owned()][..])
            );
            assert_eq!(
                r.api_groups.as_deref(),
                Some(&["edgefleet.io".to_owned()][..])
            );
            assert!(
                !r.verbs
                    .iter()
                    .any(|v| v == "create" || v == "delete" || v == "*")
            );
        }
        assert!(
            !rules[0].verbs.contains(&"update".to_owned()),
            "spec is not the device's"
        );
        assert_eq!(rules[1].verbs, ["patch"], "status only through apply");
        let crb = cluster_role_binding("edge-1", &d);
        let s = &crb.subjects.expect("subjects")[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("User", "edgefleet:device:edge-1")
        );
        let role = role("edge-1", "edgefleet-system", &d);
        let r = &role.rules.expect("rules")[0];
        assert_eq!(r.resources.as_deref(), Some(&["leases".to_owned()][..]));
        assert_eq!(
            r.resource_names.as_deref(),
            Some(&["edgefleet-device-edge-1".to_owned()][..])
        );
    }

    #[test]
    fn everything_is_owned_by_the_device() {
        let d = device();
        let owners = [
            cluster_role("edge-1", &d).metadata.owner_references,
            role_binding("edge-1", "ns", &d).metadata.owner_references,
            lease("edge-1", "ns", &d, 40).metadata.owner_references,
        ];
        for o in owners {
            let o = &o.expect("owner")[0];
            assert_eq!(
                (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
                ("EdgeDevice", "edge-1", "uid-1")
            );
        }
    }
}
