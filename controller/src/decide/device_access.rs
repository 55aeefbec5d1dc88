//! What a device's agent may do, written once: get and watch its own EdgeDevice, patch that
//! EdgeDevice's status, and get and renew its own Lease. Two enforcers read this one table:
//! per-device RBAC (`device_rbac`, a ClusterRole and a Role a device) and the device
//! authorizer (`decide`, which the apiserver asks over a webhook). They can't drift apart.
//!
//! Why a webhook as well as RBAC: the RBAC authorizer checks every ClusterRoleBinding, then
//! every RoleBinding of the request's namespace, on every request, so with a binding of each
//! a device its cost per request grows with the fleet (39 % of the apiserver's CPU at
//! 10,000 devices). `decide` costs the same for any fleet: it compares the request with the
//! device's name, the way the Node authorizer does for kubelets.

use edgefleet_crds::identity::{DEVICE_USER_PREFIX, DEVICES_GROUP, GROUP, device_object_name};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReviewSpec};

/// Where the object a right covers lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Cluster-scoped, named as the device.
    Cluster,
    /// In the controller's namespace, named `device_object_name(device)`.
    SystemNamespace,
}

/// One thing a device may do to one of its own objects.
#[derive(Debug, Clone, Copy)]
pub struct Right {
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: Option<&'static str>,
    pub scope: Scope,
    pub verbs: &'static [&'static str],
}

/// Everything a device may do. `list` and `watch` are of the one name too: the apiserver
/// names the object of a list or watch with `fieldSelector=metadata.name=<name>`, which is
/// how the agent watches its EdgeDevice. The agent writes its status with server-side
/// apply and renews its Lease with a merge patch: patch only, never update, create or
/// delete. A device's spec is the controller's.
pub const RIGHTS: [Right; 3] = [
    Right {
        group: GROUP,
        resource: "edgedevices",
        subresource: None,
        scope: Scope::Cluster,
        verbs: &["get", "list", "watch"],
    },
    Right {
        group: GROUP,
        resource: "edgedevices",
        subresource: Some("status"),
        scope: Scope::Cluster,
        verbs: &["patch"],
    },
    Right {
        group: "coordination.k8s.io",
        resource: "leases",
        subresource: None,
        scope: Scope::SystemNamespace,
        verbs: &["get", "patch"],
    },
];

impl Right {
    /// The name of `device`'s object this right covers.
    pub fn object_name(&self, device: &str) -> String {
        match self.scope {
            Scope::Cluster => device.to_owned(),
            Scope::SystemNamespace => device_object_name(device),
        }
    }

    /// The resource as RBAC names it (`edgedevices/status`).
    pub fn rbac_resource(&self) -> String {
        match self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.to_owned(),
        }
    }

    /// Whether this right lets `device` make the request `a`. Every attribute must match;
    /// a request without a name (a list of the fleet) matches nothing.
    fn covers(&self, a: &ResourceAttributes, device: &str, system_namespace: &str) -> bool {
        fn text(s: &Option<String>) -> &str {
            s.as_deref().unwrap_or_default()
        }
        let namespace = match self.scope {
            Scope::Cluster => "",
            Scope::SystemNamespace => system_namespace,
        };
        text(&a.group) == self.group
            && text(&a.resource) == self.resource
            && text(&a.subresource) == self.subresource.unwrap_or_default()
            && text(&a.namespace) == namespace
            && self.verbs.contains(&text(&a.verb))
            && text(&a.name) == self.object_name(device)
    }
}

/// The device authorizer's answer. It never denies outright: what it does not allow goes on
/// to the apiserver's next authorizer (RBAC), exactly as if the webhook were not there, so
/// a device gets nothing the cluster's RBAC would not give it besides its own objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Allowed,
    NoOpinion(&'static str),
}

/// Decides one SubjectAccessReview. A device is a user `edgefleet:device:<name>` in group
/// `edgefleet:devices`, as its certificate says (the join issues nothing else); the group
/// too, so that a user of that name from another authenticator is not a device even where
/// the apiserver's configuration sends every user here. `enrolled(device)` says whether the device has an
/// EdgeDevice that is not being deleted and whose name is a device's: the same condition
/// under which the registry gives a device RBAC, so retiring a device (deleting its
/// EdgeDevice) takes its rights away in both.
pub fn decide(
    spec: &SubjectAccessReviewSpec,
    system_namespace: &str,
    enrolled: impl Fn(&str) -> bool,
) -> Access {
    let in_group = spec
        .groups
        .as_ref()
        .is_some_and(|g| g.iter().any(|g| g == DEVICES_GROUP));
    let Some(device) = spec
        .user
        .as_deref()
        .and_then(|u| u.strip_prefix(DEVICE_USER_PREFIX))
        .filter(|d| in_group && !d.is_empty())
    else {
        return Access::NoOpinion("not a device's user");
    };
    // One reason for both refusals: whoever can reach the authorizer learns nothing about
    // which devices are enrolled.
    let own = spec
        .resource_attributes
        .as_ref()
        .is_some_and(|a| RIGHTS.iter().any(|r| r.covers(a, device, system_namespace)));
    if own && enrolled(device) {
        Access::Allowed
    } else {
        Access::NoOpinion("not an enrolled device's own object")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NS: &str = "edgefleet-system";

    fn review(user: &str, a: ResourceAttributes) -> SubjectAccessReviewSpec {
        SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec!["edgefleet:devices".to_owned()]),
            resource_attributes: Some(a),
            ..Default::default()
        }
    }

    fn attrs(
        verb: &str,
        group: &str,
        resource: &str,
        sub: &str,
        ns: &str,
        name: &str,
    ) -> ResourceAttributes {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        ResourceAttributes {
            verb: some(verb),
            group: some(group),
            resource: some(resource),
            subresource: some(sub),
            namespace: some(ns),
            name: some(name),
            version: Some("v1".to_owned()),
            ..Default::default()
        }
    }

    /// A request for a Lease in the controller's namespace.
    fn lease(verb: &str, name: &str) -> ResourceAttributes {
        attrs(verb, "coordination.k8s.io", "leases", "", NS, name)
    }

    fn only_edge_1(d: &str) -> bool {
        d == "edge-1"
    }

    fn by_edge_1(a: ResourceAttributes) -> Access {
        decide(&review("edgefleet:device:edge-1", a), NS, only_edge_1)
    }

    /// Everything the agent does: watch its EdgeDevice, apply its status, renew its Lease.
    #[test]
    fn a_device_may_do_what_its_agent_does() {
        for a in [
            attrs("get", GROUP, "edgedevices", "", "", "edge-1"),
            attrs("watch", GROUP, "edgedevices", "", "", "edge-1"),
            attrs("list", GROUP, "edgedevices", "", "", "edge-1"),
            attrs("patch", GROUP, "edgedevices", "status", "", "edge-1"),
            lease("get", "edgefleet-device-edge-1"),
            lease("patch", "edgefleet-device-edge-1"),
        ] {
            assert_eq!(by_edge_1(a.clone()), Access::Allowed, "{a:?}");
        }
    }

    #[test]
    fn a_device_cannot_reach_another_devices_objects() {
        for a in [
            attrs("get", GROUP, "edgedevices", "", "", "edge-2"),
            attrs("watch", GROUP, "edgedevices", "", "", "edge-2"),
            attrs("patch", GROUP, "edgedevices", "status", "", "edge-2"),
            lease("patch", "edgefleet-device-edge-2"),
            // The controller's own leader Lease, in the same namespace.
            attrs(
                "patch",
                "coordination.k8s.io",
                "leases",
                "",
                NS,
                "edgefleet-controller",
            ),
        ] {
            assert!(
                matches!(by_edge_1(a.clone()), Access::NoOpinion(_)),
                "{a:?}"
            );
        }
    }

    /// A list or watch without `metadata.name=<device>` would read every device's desired
    /// state: the fleet's modules, images and routes.
    #[test]
    fn a_device_cannot_list_or_watch_the_fleet() {
        for verb in ["list", "watch"] {
            let a = attrs(verb, GROUP, "edgedevices", "", "", "");
            assert!(matches!(by_edge_1(a), Access::NoOpinion(_)), "{verb}");
        }
    }

    /// The spec is the controller's: a device that wrote it would choose its own modules.
    #[test]
    fn a_device_cannot_write_its_own_spec_or_delete_itself() {
        for verb in ["update", "patch", "delete", "create"] {
            let a = attrs(verb, GROUP, "edgedevices", "", "", "edge-1");
            assert!(matches!(by_edge_1(a), Access::NoOpinion(_)), "{verb}");
        }
        let update_status = attrs("update", GROUP, "edgedevices", "status", "", "edge-1");
        assert!(matches!(by_edge_1(update_status), Access::NoOpinion(_)));
        let delete_lease = lease("delete", "edgefleet-device-edge-1");
        assert!(matches!(by_edge_1(delete_lease), Access::NoOpinion(_)));
    }

    /// Same name, another place: a Lease of the device's name in a team's namespace, a
    /// same-named resource of another group, another subresource.
    #[test]
    fn a_right_is_for_the_one_object_not_its_name_elsewhere() {
        for a in [
            attrs(
                "patch",
                "coordination.k8s.io",
                "leases",
                "",
                "team-a",
                "edgefleet-device-edge-1",
            ),
            attrs("get", "evil.example", "edgedevices", "", "", "edge-1"),
            attrs("get", GROUP, "edgedevices", "", "team-a", "edge-1"),
            attrs("patch", GROUP, "edgedevices", "scale", "", "edge-1"),
            attrs("get", "", "secrets", "", NS, "edgefleet-device-edge-1"),
        ] {
            assert!(
                matches!(by_edge_1(a.clone()), Access::NoOpinion(_)),
                "{a:?}"
            );
        }
    }

    /// Deleting the EdgeDevice retires the device: its certificate still authenticates, and
    /// must authorize nothing.
    #[test]
    fn a_retired_device_is_refused() {
        let a = attrs("get", GROUP, "edgedevices", "", "", "edge-1");
        let retired = decide(&review("edgefleet:device:edge-1", a), NS, |_| false);
        assert!(matches!(retired, Access::NoOpinion(_)));
    }

    /// Only the user name counts, as in the RBAC bindings: a name that merely contains the
    /// prefix, the group alone, or another identity's name are not the device.
    #[test]
    fn a_user_that_only_looks_like_a_device_gets_nothing() {
        let own = attrs("get", GROUP, "edgedevices", "", "", "edge-1");
        for user in [
            "system:serviceaccount:team-a:edgefleet:device:edge-1",
            "Edgefleet:device:edge-1",
            "edgefleet:device:",
            "edge-1",
            "system:node:edge-1",
        ] {
            let got = decide(&review(user, own.clone()), NS, |_| true);
            assert!(matches!(got, Access::NoOpinion(_)), "{user}");
        }
    }

    /// An OIDC or token user named like a device, outside the devices' group.
    #[test]
    fn a_device_name_without_the_devices_group_gets_nothing() {
        let own = attrs("get", GROUP, "edgedevices", "", "", "edge-1");
        let mut spec = review("edgefleet:device:edge-1", own);
        spec.groups = Some(vec!["system:authenticated".to_owned()]);
        assert!(matches!(decide(&spec, NS, |_| true), Access::NoOpinion(_)));
        spec.groups = None;
        assert!(matches!(decide(&spec, NS, |_| true), Access::NoOpinion(_)));
    }

    #[test]
    fn a_request_for_no_object_gets_no_opinion() {
        let spec = SubjectAccessReviewSpec {
            user: Some("edgefleet:device:edge-1".to_owned()),
            groups: Some(vec!["edgefleet:devices".to_owned()]),
            ..Default::default()
        };
        assert!(matches!(decide(&spec, NS, |_| true), Access::NoOpinion(_)));
    }
}
