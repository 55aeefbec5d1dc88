//! The device registry: every Node labelled `edgefleet.io/device=true` gets an EdgeDevice,
//! a Lease and RBAC for its agent. What happens when the Node goes away is the device
//! reconcile's business (see `device`): the EdgeDevice is marked, never dropped.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::EdgeDevice;
use edgefleet_crds::identity::CONTROLLER_MANAGER;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::PostParams;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::{apply, device_rbac};

pub const CONTROLLER: &str = "registry";

pub async fn reconcile(node: Arc<PartialObjectMeta<Node>>, ctx: Arc<Context>) -> Result<Action> {
    ctx.synced().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = node.name_any();
    let device = match ctx.stores.devices.get(&ObjectRef::new(&name)) {
        Some(d) => d,
        None => Arc::new(create_device(&ctx, &name, &node).await?),
    };
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

/// Creates the EdgeDevice with the Node's labels. The device reconcile then owns the labels
/// and `spec.desired` through server-side apply.
async fn create_device(
    ctx: &Context,
    name: &str,
    node: &PartialObjectMeta<Node>,
) -> Result<EdgeDevice> {
    let api = Api::<EdgeDevice>::all(ctx.client.clone());
    let mut device = EdgeDevice::new(name, Default::default());
    device.metadata.labels = Some(node.labels().clone());
    let pp = PostParams {
        field_manager: Some(CONTROLLER_MANAGER.to_owned()),
        ..Default::default()
    };
    match api.create(&pp, &device).await {
        Ok(d) => {
            tracing::info!(device = name, "registered a new device");
            Ok(d)
        }
        // Created meanwhile (the cache lags): read it back.
        Err(kube::Error::Api(s)) if s.code == 409 => api
            .get(name)
            .await
            .map_err(|e| Error::CreateDevice(name.to_owned(), e)),
        Err(e) => Err(Error::CreateDevice(name.to_owned(), e)),
    }
}

pub fn error_policy(_node: Arc<PartialObjectMeta<Node>>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "registry reconcile failed");
    ctx.metrics.error(CONTROLLER, err.category());
    Action::requeue(Duration::from_secs(5))
}
