//! EdgeModule status: how many deployments reference the module and how many devices have
//! it in their desired state.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::{EdgeDeployment, EdgeDevice, EdgeModule, EdgeModuleStatus};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};

use crate::error::{Error, Result};
use crate::k8s::context::Context;
use crate::{decide::catalog, k8s::apply};

pub const CONTROLLER: &str = "module";

pub async fn reconcile(m: Arc<EdgeModule>, ctx: Arc<Context>) -> Result<Action> {
    ctx.synced().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = m.namespace().unwrap_or_default();
    let name = m.name_any();
    let key = catalog::key(&ns, &name);
    let deployments = ctx
        .stores
        .deployments
        .state()
        .iter()
        .filter(|d| d.namespace().as_deref() == Some(ns.as_str()))
        .filter(|d| d.spec.modules.iter().any(|dm| dm.module_name() == name))
        .count();
    let devices = ctx
        .stores
        .devices
        .state()
        .iter()
        .filter(|dev| {
            dev.spec
                .desired
                .as_ref()
                .is_some_and(|d| d.modules.iter().any(|rm| rm.module_ref == key))
        })
        .count();
    let status = EdgeModuleStatus {
        observed_generation: m.metadata.generation,
        deployments: u32::try_from(deployments).unwrap_or(u32::MAX),
        devices: u32::try_from(devices).unwrap_or(u32::MAX),
        conditions: vec![],
    };
    if m.status.as_ref() == Some(&status) {
        ctx.metrics.skipped_write(CONTROLLER);
        return Ok(Action::requeue(Duration::from_secs(300)));
    }
    let api = Api::<EdgeModule>::namespaced(ctx.client.clone(), &ns);
    apply::status(&api, &name, &status)
        .await
        .map_err(|e| Error::ApplyModuleStatus(key, e))?;
    Ok(Action::requeue(Duration::from_secs(300)))
}

/// The modules a device runs, as references.
pub fn modules_of_device(dev: &EdgeDevice) -> Vec<ObjectRef<EdgeModule>> {
    dev.spec
        .desired
        .iter()
        .flat_map(|d| d.modules.iter())
        .filter_map(|m| m.module_ref.split_once('/'))
        .map(|(ns, name)| ObjectRef::new(name).within(ns))
        .collect()
}

/// The modules a deployment names, as references in its namespace.
pub fn modules_of_deployment(d: &EdgeDeployment) -> Vec<ObjectRef<EdgeModule>> {
    let ns = d.namespace().unwrap_or_default();
    d.spec
        .modules
        .iter()
        .map(|m| ObjectRef::<EdgeModule>::new(m.module_name()).within(&ns))
        .collect()
}
