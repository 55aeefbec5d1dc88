//! The device registry: every EdgeDevice an administrator creates (the act that enrols the
//! Node of that name) gets a Lease and (unless the device authorizer authorizes devices,
//! `--device-authorization webhook`) RBAC for its agent, owned by the EdgeDevice. Nothing
//! a device can write enrols it: a kubelet may label its own Node, but it can't create an
//! EdgeDevice. Deleting the EdgeDevice retires the device: Kubernetes' garbage collector
//! removes what it owned, and since only an EdgeDevice triggers this reconcile, nothing
//! recreates them.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::EdgeDevice;
use edgefleet_crds::identity::device_object_name;
use edgefleet_crds::names::check_dns_label;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::config::DeviceAuthorization;
use crate::decide::device_rbac::{DeviceRbac, Registration};
use crate::error::{Error, Result};
use crate::k8s::apply;
use crate::k8s::context::Context;
use crate::reconcile::device;

pub const CONTROLLER: &str = "registry";

/// How soon the registry looks again at a new device whose first desired state it left to
/// another write, or lost to a newer version of the device. The device reconcile's queue
/// can hold a device for minutes at fleet size; the registry's holds none.
pub const LOOK_AGAIN: Duration = Duration::from_secs(2);

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
    let seconds = |d: Duration| i32::try_from(d.as_secs()).unwrap_or(i32::MAX);
    let with_rbac = ctx.config.device_authorization == DeviceAuthorization::Rbac;
    let pace = ctx.pace.lease();
    let r = Registration::of(
        &name,
        ns,
        &device,
        seconds(ctx.config.offline_threshold),
        with_rbac,
    )
    .paced(seconds(pace.lasts), pace.every);
    let cached = ctx
        .stores
        .leases
        .get(&ObjectRef::new(&device_object_name(&name)).within(ns));
    let registered = r.is_in(cached.as_deref());
    if registered && (pace.written_later || r.is_paced(cached.as_deref())) {
        // What a controller that starts again finds for every device it registered before;
        // and while the fleet grows, a Lease at an earlier pace, which the pass after it
        // writes (this reconcile runs again until the device's desired state shows).
        ctx.metrics.skipped_write(CONTROLLER);
    } else {
        // Only the Lease when only the fleet's pace changed.
        if let Some(rbac) = r.rbac.as_ref().filter(|_| !registered) {
            apply_rbac(c, ns, rbac)
                .await
                .map_err(|e| Error::ApplyRbac(name.clone(), e))?;
        }
        // Last: its fingerprint says the RBAC above is in place.
        apply::object(&Api::<Lease>::namespaced(c.clone(), ns), &r.lease)
            .await
            .map_err(|e| Error::ApplyLease(name.clone(), e))?;
    }
    // A new device's first desired state, here as well as in the device reconcile, which
    // every device's changes and renewals wake: kube's scheduler takes the requests held
    // for a busy controller in hash order, not in order of arrival, so there a new device
    // could wait minutes behind devices long done (4,325 of 10,000 hollow devices, seven
    // minutes after their registration). The device reconcile then finds it written.
    // Decided from the cache's latest EdgeDevice and written only over that version. One
    // the device reconcile is writing or wrote a moment ago is not written again, nor is one
    // this write is making written again by the device reconcile (`k8s/written.rs`). So
    // until the cache shows the device with a desired state, the registry looks again: the
    // other write may fail, and a 409 (the device changed since the cache showed it) may
    // have met a device reconcile that left the write to this one. A registered device with
    // one costs a restart a cache lookup.
    let latest = ctx
        .stores
        .devices
        .get(&ObjectRef::from_obj(device.as_ref()))
        .filter(|d| {
            d.metadata.deletion_timestamp.is_none()
                && d.spec.desired.is_none()
                && ctx.node(&name).is_some()
        });
    if let Some(device) = latest {
        let desired = device::desired_state(
            &ctx,
            &ctx.catalog(),
            &device,
            &device::Registration::Enrolled,
        );
        match device::write_desired(&ctx, &device, &desired, device::Write::IfUnchanged).await {
            Ok(device::Wrote::OnItsWay) => return Ok(Action::requeue(LOOK_AGAIN)),
            Err(Error::ApplyDevice(_, kube::Error::Api(s))) if s.code == 409 => {
                return Ok(Action::requeue(LOOK_AGAIN));
            }
            other => {
                other?;
            }
        }
    }
    Ok(Action::await_change())
}

/// Writes a device's RBAC.
async fn apply_rbac(c: &kube::Client, ns: &str, rbac: &DeviceRbac) -> kube::Result<()> {
    let (cluster_roles, cluster_bindings, roles, bindings) = (
        Api::<ClusterRole>::all(c.clone()),
        Api::<ClusterRoleBinding>::all(c.clone()),
        Api::<Role>::namespaced(c.clone(), ns),
        Api::<RoleBinding>::namespaced(c.clone(), ns),
    );
    // A role before its binding: to bind a role it does not hold rights to grant
    // wholesale, the controller must hold every permission in it, and the apiserver
    // checks that against the role, which therefore has to exist (a missing one shows
    // as NotFound). Only a cluster admin would get away with another order. The two pairs
    // go out in parallel, so that mass registration is bound by the controller's
    // concurrency rather than by round trips.
    let cluster_pair = async {
        apply::object(&cluster_roles, &rbac.cluster_role).await?;
        apply::object(&cluster_bindings, &rbac.cluster_role_binding).await
    };
    let namespaced_pair = async {
        apply::object(&roles, &rbac.role).await?;
        apply::object(&bindings, &rbac.role_binding).await
    };
    futures::try_join!(cluster_pair, namespaced_pair).map(|_| ())
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
