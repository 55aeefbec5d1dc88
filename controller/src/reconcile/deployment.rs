//! The deployment status reconcile: validates the spec, rolls the targeted devices' reports
//! up into the status, and publishes Events when the spec turns bad, the targets change, or
//! the deployment loses a priority tie.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::bounds::Bounded;
use edgefleet_crds::condition::{self, ConditionStatus};
use edgefleet_crds::device::conditions::ONLINE;
use edgefleet_crds::{EdgeDeployment, EdgeDeploymentStatus, EdgeModule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};

use crate::decide::catalog::{self, Contribution};
use crate::decide::conditions;
use crate::decide::rollup::{self, DeviceView};
use crate::error::{Error, Result};
use crate::k8s::context::Context;
use crate::k8s::events::reference;
use crate::{k8s::apply, reconcile::rollout};

pub const CONTROLLER: &str = "deployment";

pub async fn reconcile(d: Arc<EdgeDeployment>, ctx: Arc<Context>) -> Result<Action> {
    ctx.synced().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let specs = ctx.module_specs();
    let compiled = catalog::compile(&d, &specs, &ctx.grants());
    let problems = match &compiled.contribution {
        Contribution::Held { problems, .. } => problems.clone(),
        Contribution::Fresh { .. } => Vec::new(),
    };
    // The snapshot of the devices is dropped before the rollout step writes: held across
    // a wave's moves (seconds at 10,000 devices), it kept every device the watch replaced
    // meanwhile in memory twice. The rollup owns what it keeps.
    let mut r = {
        let devices = ctx.stores.devices.state();
        let views = devices
            .iter()
            .filter(|dev| ctx.is_enrolled(dev))
            .map(|dev| DeviceView {
                name: dev.metadata.name.as_deref().unwrap_or_default(),
                labels: dev.labels(),
                desired: dev.spec.desired.as_deref(),
                status: dev.status.as_ref(),
                online: dev
                    .status
                    .as_ref()
                    .and_then(|s| condition::find(&s.conditions, ONLINE))
                    .is_some_and(|c| c.is_true()),
                rollouts: &dev.spec.rollouts,
            });
        rollup::rollup(&compiled, views, jiff::Timestamp::now())
    };
    let old = d.status.clone().unwrap_or_default();
    let (rollout, recheck_in) = match rollout::step(&ctx, &d, &compiled, &mut r).await? {
        Some((rollout, recheck_in)) => (Some(rollout), recheck_in),
        None => (old.rollout.clone(), None),
    };
    let mut status = rollup::status(d.metadata.generation, &problems, &r, rollout);
    status.bound();
    let now = Time(jiff::Timestamp::now());
    condition::carry_transition_times(&mut status.conditions, &old.conditions, &now);
    let requeue = Action::requeue(
        recheck_in
            .unwrap_or(IDLE_RECHECK)
            .min(IDLE_RECHECK)
            .max(Duration::from_secs(1)),
    );
    if status == old {
        ctx.metrics.skipped_write(CONTROLLER);
        return Ok(requeue);
    }
    let api = Api::<EdgeDeployment>::namespaced(ctx.client.clone(), &ns);
    apply::status(&api, &name, &status)
        .await
        .map_err(|e| Error::ApplyDeploymentStatus(catalog::key(&ns, &name), e))?;
    publish_transitions(&ctx, &d, &old, &status).await;
    if let Some(rollout) = &status.rollout {
        rollout::publish_phase(&ctx, &d, old.rollout.as_ref(), rollout).await;
    }
    Ok(requeue)
}

/// How often a deployment is looked at with nothing changing.
const IDLE_RECHECK: Duration = Duration::from_secs(300);

async fn publish_transitions(
    ctx: &Context,
    d: &EdgeDeployment,
    old: &EdgeDeploymentStatus,
    new: &EdgeDeploymentStatus,
) {
    let r = reference(d);
    let stalled =
        |s: &EdgeDeploymentStatus| condition::find(&s.conditions, conditions::STALLED).cloned();
    if let Some(c) = stalled(new)
        && c.status == ConditionStatus::True
        && stalled(old).is_none_or(|o| o.status != c.status || o.reason != c.reason)
    {
        ctx.event(
            &r,
            EventType::Warning,
            &c.reason,
            "Validate",
            c.message.clone(),
        )
        .await;
    }
    let tie = |s: &EdgeDeploymentStatus| {
        condition::find(&s.conditions, conditions::CONFLICTED).map(|c| c.message.clone())
    };
    if let Some(msg) = tie(new)
        && tie(old).as_ref() != Some(&msg)
    {
        ctx.event(&r, EventType::Warning, "PriorityTie", "Target", msg)
            .await;
    }
    if new.targeted != old.targeted {
        let note = format!(
            "targets {} devices (was {}); {} matching devices are owned by other deployments",
            new.targeted, old.targeted, new.lost
        );
        ctx.event(&r, EventType::Normal, "TargetsChanged", "Target", note)
            .await;
    }
    let ready = |s: &EdgeDeploymentStatus| {
        condition::find(&s.conditions, conditions::READY).map(|c| c.status)
    };
    if ready(new) == Some(ConditionStatus::True) && ready(old) != Some(ConditionStatus::True) {
        ctx.event(
            &r,
            EventType::Normal,
            "Ready",
            "Rollout",
            format!("{} of {} targeted devices ready", new.ready, new.targeted),
        )
        .await;
    }
}

/// The deployments a device's state matters to: those named in its targeting decisions.
pub fn deployments_of_device(dev: &edgefleet_crds::EdgeDevice) -> Vec<ObjectRef<EdgeDeployment>> {
    dev.spec
        .desired
        .iter()
        .flat_map(|d| d.targeting.iter())
        .filter_map(|t| t.deployment.split_once('/'))
        .map(|(ns, name)| ObjectRef::new(name).within(ns))
        .collect()
}

/// The deployments of a module's namespace that name it: a module's change may change them.
pub fn deployments_using_module(
    deployments: &Store<EdgeDeployment>,
    m: &EdgeModule,
) -> Vec<ObjectRef<EdgeDeployment>> {
    let ns = m.namespace();
    let name = m.name_any();
    deployments
        .state()
        .iter()
        .filter(|d| d.namespace() == ns && d.spec.modules.iter().any(|dm| dm.module_name() == name))
        .map(|d| ObjectRef::from(d.as_ref()))
        .collect()
}

/// Every deployment: a grant's change may widen or narrow any of them.
pub fn every_deployment(deployments: &Store<EdgeDeployment>) -> Vec<ObjectRef<EdgeDeployment>> {
    deployments
        .state()
        .iter()
        .map(|d| ObjectRef::from(d.as_ref()))
        .collect()
}
