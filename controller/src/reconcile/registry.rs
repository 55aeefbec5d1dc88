//! The device registry: every EdgeDevice an administrator creates (the act that enrols the
//! Node of that name) gets a Lease and RBAC for its agent, owned by the EdgeDevice. Nothing
//! a device can write enrols it: a kubelet may label its own Node, but it can't create an
//! EdgeDevice. Deleting the EdgeDevice retires the device: Kubernetes' garbage collector
//! removes what it owned, and since only an EdgeDevice triggers this reconcile, nothing
//! recreates them.

use std::sync::Arc;

use edgefleet_crds::EdgeDevice;
use edgefleet_crds::names::check_dns_label;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use crate::error::{Error, Result};
use crate::k8s::context::Context;
use crate::{decide::device_rbac, k8s::apply};

pub const CONTROLLER: &str = "registry";

/// Why a name can't be a device's identity, if it can't: the agent authenticates as
/// `edgefleet:device:<name>` and the certificate request must name a DNS label (Node names
/// may be longer, dotted subdomains).
pub fn enrolment_problem(name: &str) -> Option<String> {
    check_dns_label(name)
        .err()
        .map(|e| format!("a device's name must be a DNS label: {e}"))
}

pub async fn reconcile(device: Arc<EdgeDevice>, ctx: Arc<Context>) -> Result<Action> {
    ctx.synced().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = device.name_any();
    if device.metadata.deletion_timestamp.is_some() || enrolment_problem(&name).is_some() {
        // Being retired, or refused (the device reconcile says why on the EdgeDevice).
        return Ok(Action::await_change());
    }
    let ns = ctx.config.namespace.as_str();
    let c = &ctx.client;
    let lease_s = i32::try_from(ctx.config.offline_threshold.as_secs()).unwrap_or(i32::MAX);
    // The Lease and the two RBAC pairs go out in parallel, so that mass registration is
    // bound by the controller's concurrency, not by five round trips per device.
    let (lease, cluster_role, cluster_binding, role, binding) = (
        device_rbac::lease(&name, ns, &device, lease_s),
        device_rbac::cluster_role(&name, &device),
        device_rbac::cluster_role_binding(&name, &device),
        device_rbac::role(&name, ns, &device),
        device_rbac::role_binding(&name, ns, &device),
    );
    let (leases, cluster_roles, cluster_bindings, roles, bindings) = (
        Api::<Lease>::namespaced(c.clone(), ns),
        Api::<ClusterRole>::all(c.clone()),
        Api::<ClusterRoleBinding>::all(c.clone()),
        Api::<Role>::namespaced(c.clone(), ns),
        Api::<RoleBinding>::namespaced(c.clone(), ns),
    );
    let lease = async {
        apply::object(&leases, &lease)
            .await
            .map_err(|e| Error::ApplyLease(name.clone(), e))
    };
    let rbac = async {
        // A role before its binding: to bind a role it does not hold rights to grant
        // wholesale, the controller must hold every permission in it, and the apiserver
        // checks that against the role, which therefore has to exist (a missing one shows
        // as NotFound). Only a cluster admin would get away with another order.
        let cluster_pair = async {
            apply::object(&cluster_roles, &cluster_role).await?;
            apply::object(&cluster_bindings, &cluster_binding).await
        };
        let namespaced_pair = async {
            apply::object(&roles, &role).await?;
            apply::object(&bindings, &binding).await
        };
        futures::try_join!(cluster_pair, namespaced_pair)
            .map_err(|e| Error::ApplyRbac(name.clone(), e))
    };
    futures::try_join!(lease, rbac)?;
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dns_labels_are_enrolled() {
        assert_eq!(enrolment_problem("edge-1"), None);
        for bad in ["edge-1.site.example", "Edge", "-x", &"a".repeat(64)] {
            assert!(enrolment_problem(bad).is_some(), "{bad}");
        }
    }
}
