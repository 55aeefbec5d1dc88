//! What the registry writes for each device: its Lease, and unless the device authorizer
//! stands in for it, RBAC for what its agent (user `edgefleet:device:<name>`) may do, and
//! nothing more (`device_access::RIGHTS`). Every object is owned by the EdgeDevice, so
//! deleting the device removes them. Pure builders; the registry applies them.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_crds::EdgeDevice;
use edgefleet_crds::identity::{REGISTRATION_ANNOTATION, device_object_name, device_user};
use edgefleet_crds::renewal::{RENEW_EVERY_ANNOTATION, renew_every, renew_every_value};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::decide::device_access::{RIGHTS, Scope};
use crate::k8s::kept_lease::KeptLease;

/// How long the registry's fingerprint is: 16 hex digits, 8 bytes of a SHA-256.
pub const FINGERPRINT_LEN: usize = 16;

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

/// The RBAC form of `rights` (those of one scope) for `device`.
fn rules(device: &str, scope: Scope) -> Vec<PolicyRule> {
    RIGHTS
        .iter()
        .filter(|r| r.scope == scope)
        .map(|r| PolicyRule {
            api_groups: Some(vec![r.group.to_owned()]),
            resources: Some(vec![r.rbac_resource()]),
            resource_names: Some(vec![r.object_name(device)]),
            verbs: r.verbs.iter().map(|v| (*v).to_owned()).collect(),
            ..Default::default()
        })
        .collect()
}

fn subject(name: &str) -> Vec<Subject> {
    vec![Subject {
        kind: "User".to_owned(),
        api_group: Some("rbac.authorization.k8s.io".to_owned()),
        name: device_user(name),
        namespace: None,
    }]
}

/// Cluster-scoped: the device's own EdgeDevice (`device_access::RIGHTS`). A device role
/// may grant only what the controller itself holds (RBAC's escalation rule).
pub fn cluster_role(name: &str, device: &EdgeDevice) -> ClusterRole {
    ClusterRole {
        metadata: meta(device_object_name(name), None, device),
        rules: Some(rules(name, Scope::Cluster)),
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
        rules: Some(rules(name, Scope::SystemNamespace)),
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

/// A device's RBAC: what its agent may do, as two roles and their bindings.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRbac {
    pub cluster_role: ClusterRole,
    pub cluster_role_binding: ClusterRoleBinding,
    pub role: Role,
    pub role_binding: RoleBinding,
}

impl DeviceRbac {
    pub fn of(name: &str, namespace: &str, device: &EdgeDevice) -> DeviceRbac {
        DeviceRbac {
            cluster_role: cluster_role(name, device),
            cluster_role_binding: cluster_role_binding(name, device),
            role: role(name, namespace, device),
            role_binding: role_binding(name, namespace, device),
        }
    }
}

/// Everything the registry writes for one device: its RBAC (none when the device
/// authorizer authorizes devices) and its Lease. The Lease carries the fingerprint of the
/// whole, so the registry can tell from its Lease cache alone that a device needs nothing
/// written; it writes the Lease last, once the RBAC it vouches for is in place. The fleet's
/// pace ([`Registration::paced`]) is outside the fingerprint: a fleet that outgrows its
/// renewal budget has its Leases written again, not its RBAC.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub rbac: Option<DeviceRbac>,
    pub lease: Lease,
}

impl Registration {
    pub fn of(
        name: &str,
        namespace: &str,
        device: &EdgeDevice,
        lease_s: i32,
        with_rbac: bool,
    ) -> Registration {
        let mut r = Registration {
            rbac: with_rbac.then(|| DeviceRbac::of(name, namespace, device)),
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

    /// The Lease at the fleet's pace (`decide::renewal_pace`): lasting `duration_s`, renewed
    /// every `every`, or at the agent's own interval when `None` (no annotation: what the
    /// registry always wrote, so a fleet within its budget has nothing written again).
    pub fn paced(mut self, duration_s: i32, every: Option<Duration>) -> Registration {
        self.lease
            .spec
            .get_or_insert_default()
            .lease_duration_seconds = Some(duration_s);
        if let Some(every) = every {
            self.lease
                .metadata
                .annotations
                .get_or_insert_default()
                .insert(RENEW_EVERY_ANNOTATION.to_owned(), renew_every_value(every));
        }
        self
    }

    /// Whether `written` (the device's Lease as cached) is at this registration's pace.
    pub fn is_paced(&self, written: Option<&KeptLease>) -> bool {
        let mine = renew_every(self.lease.metadata.annotations.as_ref());
        written.is_some_and(|w| w.renew_every == mine)
    }

    /// A hash of the objects as built (the Lease without its annotation). With RBAC it is
    /// the hash the registry always wrote, so an upgrade rewrites no device's objects.
    fn fingerprint(&self) -> String {
        let bytes = match &self.rbac {
            Some(r) => serde_json::to_vec(&(
                &r.cluster_role,
                &r.cluster_role_binding,
                &r.role,
                &r.role_binding,
                &self.lease,
            )),
            None => serde_json::to_vec(&(&self.lease,)),
        }
        .unwrap_or_default();
        Sha256::digest(&bytes)[..FINGERPRINT_LEN / 2]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether `written` (the device's Lease as cached) says this registration is in place.
    pub fn is_in(&self, written: Option<&KeptLease>) -> bool {
        let mine = self
            .lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(REGISTRATION_ANNOTATION));
        written.is_some_and(|w| w.registration.is_some() && w.registration.as_ref() == mine)
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
        let r = Registration::of("edge-1", "edgefleet-system", &d, 40, true);
        // What the Lease cache keeps of the Lease a registration writes.
        let cached = |r: &Registration| KeptLease::keep(r.lease.clone());
        assert!(r.is_in(Some(&cached(&r))));
        assert!(!r.is_in(None), "no Lease yet");
        let mut bare = r.lease.clone();
        bare.metadata.annotations = None;
        assert!(
            !r.is_in(Some(&KeptLease::keep(bare))),
            "a Lease without the fingerprint"
        );
        let longer = Registration::of("edge-1", "edgefleet-system", &d, 90, true);
        assert!(!longer.is_in(Some(&cached(&r))), "another lease duration");
        let mut again = d.clone();
        again.metadata.uid = Some("uid-2".into());
        let recreated = Registration::of("edge-1", "edgefleet-system", &again, 40, true);
        assert!(
            !recreated.is_in(Some(&cached(&r))),
            "a device deleted and created again owns new objects"
        );
        let authorized = Registration::of("edge-1", "edgefleet-system", &d, 40, false);
        assert!(authorized.rbac.is_none());
        assert!(
            !authorized.is_in(Some(&cached(&r))),
            "switching to the device authorizer is a new registration"
        );
        assert!(
            !r.is_in(Some(&cached(&authorized))),
            "and so is switching back: the RBAC is written again"
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
