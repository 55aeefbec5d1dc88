//! The device reconcile: resolves and writes the device's desired state from the labels on
//! its EdgeDevice, and keeps the controller's own conditions on it (Registered, Online,
//! StatusValid), with Events on their transitions.
//!
//! An EdgeDevice is the administrator's act of enrolling the Node of the same name, and
//! its labels are what deployments select on: both are written only by administrators,
//! never mirrored from the Node, whose labels a device's kubelet may set itself. When the
//! Node is gone the EdgeDevice is kept and marked `Registered=False`; its desired state
//! becomes empty, so an agent still running there removes every module it started.
//! Deleting the EdgeDevice retires the device: its Lease and RBAC are owned by it and go
//! with it, and nothing recreates them.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_crds::bounds::Bounded;
use edgefleet_crds::condition::{self, Condition, ConditionStatus};
use edgefleet_crds::device::conditions::{ONLINE, REGISTERED, STATUS_VALID};
use edgefleet_crds::identity::{CONTROLLER_MANAGER, ROLLOUT_MANAGER, device_object_name};
use edgefleet_crds::writes;
use edgefleet_crds::{DesiredState, EdgeDeployment, EdgeDevice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Patch;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde_json::json;

use crate::decide::presence::{Heard, heard, hearing_may_change, status_written};
use crate::error::{Error, Result};
use crate::k8s::context::Context;
use crate::k8s::events::reference;
use crate::k8s::written::{self, Saying};
use crate::{
    decide::catalog, decide::status_check, decide::targeting, k8s::apply, reconcile::registry,
};

pub const CONTROLLER: &str = "device";

/// Where a device stands with its enrolment. An EdgeDevice is the administrator's act of
/// enrolling the Node of that name; nothing the device itself can write enrols it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Enrolled, and its Node exists.
    Enrolled,
    /// Enrolled, but no Node of that name exists (any more).
    NodeGone,
    /// Its name can't be a device identity (see [`registry::enrolment_problem`]).
    Refused(String),
}

/// The part of a device's status the controller owns; the agent owns the rest.
#[derive(Serialize, Clone, Debug)]
struct ControllerStatus {
    conditions: Vec<Condition>,
}

impl Bounded for ControllerStatus {
    fn bound(&mut self) {
        self.conditions.bound();
    }
}

/// The conditions the controller owns on a device, without transition times.
pub fn controller_conditions(
    registration: &Registration,
    heard: Heard,
    threshold: Duration,
    status_problems: &[String],
) -> Vec<Condition> {
    let registered = match registration {
        Registration::Enrolled => Condition::new(
            REGISTERED,
            ConditionStatus::True,
            "Enrolled",
            "enrolled by its EdgeDevice, and its Node exists",
        ),
        Registration::NodeGone => Condition::new(
            REGISTERED,
            ConditionStatus::False,
            "NodeGone",
            "no Node of this name: its desired state is empty, so an agent still running there removes every module; delete the EdgeDevice to retire the device (its Lease and RBAC go with it)",
        ),
        Registration::Refused(why) => Condition::new(
            REGISTERED,
            ConditionStatus::False,
            "InvalidName",
            format!("not enrolled: {why}"),
        ),
    };
    // An online device's condition reads as it did before status writes were heard: another
    // wording would rewrite every device's status once when the controller is upgraded.
    let secs = threshold.as_secs();
    let online = match heard {
        Heard::Renewal => Condition::new(
            ONLINE,
            ConditionStatus::True,
            "LeaseRenewed",
            format!("the agent renewed its Lease within {secs}s"),
        ),
        Heard::StatusWrite => Condition::new(
            ONLINE,
            ConditionStatus::True,
            "StatusWritten",
            format!(
                "the agent wrote its status within {secs}s, though it has not renewed its Lease"
            ),
        ),
        Heard::Silence => Condition::new(
            ONLINE,
            ConditionStatus::False,
            "LeaseExpired",
            format!("the agent has neither renewed its Lease nor written its status for {secs}s"),
        ),
        Heard::Nothing => Condition::new(
            ONLINE,
            ConditionStatus::False,
            "NeverSeen",
            "the agent has never renewed its Lease",
        ),
    };
    let valid = if status_problems.is_empty() {
        Condition::new(STATUS_VALID, ConditionStatus::True, "Valid", "")
    } else {
        Condition::new(
            STATUS_VALID,
            ConditionStatus::False,
            "InvalidStatus",
            status_problems.join("; "),
        )
    };
    vec![registered, online, valid]
}

/// A digest of what [`reconcile`] reads of its EdgeDevice (the caches it reads besides wake
/// it on their own): its spec (by generation), its labels, of its status only what a
/// reconcile acts on, the status's problems, the modules failing and the conditions, and
/// when the agent wrote it while that can bring the device online. A
/// device event that leaves it unchanged would write nothing and is dropped before the
/// queue (`run.rs`). Most device events are agents' status writes, and at 10,000 devices
/// they kept devices already done queued ahead of new ones: kube's scheduler takes held
/// requests in hash order, not arrival order, so some new devices waited minutes.
pub fn reads(device: &EdgeDevice) -> u64 {
    let mut h = DefaultHasher::new();
    device.metadata.generation.hash(&mut h);
    device.labels().hash(&mut h);
    if let Some(status) = &device.status {
        status_check::problems(status, device.spec.desired.as_deref()).hash(&mut h);
        for m in status
            .modules
            .iter()
            .filter(|m| m.runtime_status.is_failure())
        {
            m.name.hash(&mut h);
        }
        for c in &status.conditions {
            c.says().hash(&mut h);
        }
    }
    if hearing_may_change(device.status.as_ref()) {
        status_written(device).hash(&mut h);
    }
    h.finish()
}

/// What device reconciles read of a deployment: its spec (by generation) and, when staged,
/// its current revision, which the devices it has not moved run. Its other status writes
/// wake no device.
pub fn reads_of_deployment(d: &EdgeDeployment) -> (Option<i64>, Option<String>) {
    (d.metadata.generation, catalog::current_revision(d))
}

fn same(a: &Condition, b: Option<&Condition>) -> bool {
    b.is_some_and(|b| a.says() == b.says())
}

pub async fn reconcile(device: Arc<EdgeDevice>, ctx: Arc<Context>) -> Result<Action> {
    ctx.synced().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = device.name_any();
    let api = Api::<EdgeDevice>::all(ctx.client.clone());
    let registration = match registry::enrolment_problem(&name) {
        Some(why) => Registration::Refused(why),
        None if ctx.node(&name).is_some() => Registration::Enrolled,
        None => Registration::NodeGone,
    };

    let catalog = ctx.catalog();
    let desired = desired_state(&ctx, &catalog, &device, &registration);
    let wrote = write_desired(&ctx, &device, &desired, Write::Always).await?;
    if wrote != Wrote::Written {
        ctx.metrics.skipped_write(CONTROLLER);
    }

    forget_rollouts(&ctx, &catalog, &device, &desired).await?;

    // The controller's conditions.
    let lease = ctx
        .stores
        .leases
        .get(&ObjectRef::new(&device_object_name(&name)).within(&ctx.config.namespace));
    let now = jiff::Timestamp::now();
    let status_time = status_written(&device);
    let threshold = ctx.pace.offline_threshold(Instant::now());
    let (what, p) = heard(lease.as_deref(), status_time, now, threshold);
    let status = device.status.clone().unwrap_or_default();
    let status_problems = status_check::problems(&status, Some(&desired));
    let mut conditions = controller_conditions(&registration, what, threshold, &status_problems);
    conditions.bound();
    let old = &status.conditions;
    let noted = &ctx.written_conditions;
    let mut recheck_in = p.recheck_in.unwrap_or(Duration::from_secs(300));
    if wrote == Wrote::OnItsWay {
        // Written by the registry or a reconcile a moment ago: its watch event wakes this
        // device. One overwritten meanwhile is written again after a while.
        recheck_in = recheck_in.min(written::REMEMBERED);
    }
    if conditions
        .iter()
        .all(|c| same(c, condition::find(old, &c.type_)))
    {
        noted.forget(&name);
    } else if !noted.claim(&name, Saying(&conditions), Instant::now()) {
        // Written by a reconcile a moment ago, as above.
        ctx.metrics.skipped_write(CONTROLLER);
        recheck_in = recheck_in.min(written::REMEMBERED);
    } else {
        condition::carry_transition_times(&mut conditions, old, &Time(now));
        let status = ControllerStatus {
            conditions: conditions.clone(),
        };
        if let Err(e) = apply::status(&api, &name, &status).await {
            noted.forget(&name);
            return Err(Error::ApplyDeviceStatus(name.clone(), e));
        }
        publish_transitions(&ctx, &device, old, &conditions).await;
    }
    report_module_failures(&ctx, &device, &desired).await;

    Ok(Action::requeue(recheck_in))
}

/// The device's desired state, from the labels an administrator gave the EdgeDevice (a
/// device's own credentials can't write them: its rights reach only its status); empty
/// unless it is enrolled.
pub fn desired_state(
    ctx: &Context,
    catalog: &[catalog::CompiledDeployment],
    device: &EdgeDevice,
    registration: &Registration,
) -> DesiredState {
    if *registration != Registration::Enrolled {
        return DesiredState::new(vec![], vec![]);
    }
    let staged = targeting::StagedRevisions {
        rollouts: &device.spec.rollouts,
        snapshots: ctx,
    };
    targeting::resolve_staged(
        device.labels(),
        catalog,
        device.spec.desired.as_deref(),
        &staged,
    )
}

/// How [`write_desired`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Over whatever the EdgeDevice is now: the device reconcile owns its desired state.
    Always,
    /// Only over the version of the EdgeDevice it was decided from (a 409 otherwise): for a
    /// write beside the device reconcile, which must not land on a newer state of its.
    IfUnchanged,
}

/// What [`write_desired`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrote {
    /// The device has that desired state already.
    Unchanged,
    Written,
    /// Not written: written a moment ago (by the registry or a device reconcile), and on
    /// its way to the cache.
    OnItsWay,
}

/// Writes `desired` into the device's spec unless it is there already, or on its way there
/// ([`written`]).
pub async fn write_desired(
    ctx: &Context,
    device: &EdgeDevice,
    desired: &DesiredState,
    how: Write,
) -> Result<Wrote> {
    let current = device.spec.desired.as_deref();
    let name = device.name_any();
    let noted = &ctx.written_desired;
    if current == Some(desired) {
        noted.forget(&name);
        return Ok(Wrote::Unchanged);
    }
    if !noted.claim(&name, desired.identity(), Instant::now()) {
        return Ok(Wrote::OnItsWay);
    }
    let mut metadata = json!({ "name": name });
    if how == Write::IfUnchanged {
        metadata["resourceVersion"] = json!(device.resource_version());
    }
    let patch = json!({
        "apiVersion": EdgeDevice::api_version(&()),
        "kind": EdgeDevice::kind(&()),
        "metadata": metadata,
        "spec": { "desired": desired },
    });
    let written = Api::<EdgeDevice>::all(ctx.client.clone())
        .patch(
            &name,
            &writes::apply(CONTROLLER_MANAGER),
            &Patch::Apply(patch),
        )
        .await;
    if let Err(e) = written {
        noted.forget(&name);
        return Err(Error::ApplyDevice(name, e));
    }
    if current.map(|c| &c.revision) != Some(&desired.revision) {
        tracing::info!(device = %name, revision = %desired.revision, modules = desired.modules.len(), "desired state changed");
    }
    Ok(Wrote::Written)
}

/// Drops the device's rollout entries [`targeting::forgotten_rollouts`] names.
async fn forget_rollouts(
    ctx: &Context,
    catalog: &[catalog::CompiledDeployment],
    device: &EdgeDevice,
    desired: &DesiredState,
) -> Result<()> {
    let stale: serde_json::Map<String, serde_json::Value> =
        targeting::forgotten_rollouts(&device.spec.rollouts, catalog, desired)
            .into_iter()
            .map(|k| (k.to_owned(), serde_json::Value::Null))
            .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let name = device.name_any();
    let params = writes::patch(ROLLOUT_MANAGER);
    Api::<EdgeDevice>::all(ctx.client.clone())
        .patch(
            &name,
            &params,
            &Patch::Merge(json!({"spec": {"rollouts": stale}})),
        )
        .await
        .map_err(|e| Error::ApplyDevice(name.clone(), e))?;
    Ok(())
}

async fn publish_transitions(
    ctx: &Context,
    device: &EdgeDevice,
    old: &[Condition],
    new: &[Condition],
) {
    let r = reference(device);
    for c in new {
        let before = condition::find(old, &c.type_).map(|o| o.status);
        if before == Some(c.status) {
            continue;
        }
        let (type_, reason) = match (c.type_.as_str(), c.status) {
            (ONLINE, ConditionStatus::True) => (EventType::Normal, "DeviceOnline"),
            (ONLINE, ConditionStatus::False) if before.is_some() => {
                (EventType::Warning, "DeviceOffline")
            }
            (REGISTERED, ConditionStatus::False) => (EventType::Warning, "DeviceUnregistered"),
            (REGISTERED, ConditionStatus::True) if before.is_some() => {
                (EventType::Normal, "DeviceRegistered")
            }
            (STATUS_VALID, ConditionStatus::False) => (EventType::Warning, "InvalidStatus"),
            _ => continue,
        };
        ctx.event(&r, type_, reason, "Observe", c.message.clone())
            .await;
    }
}

/// One Warning Event per module that starts failing on a device.
async fn report_module_failures(ctx: &Context, device: &EdgeDevice, desired: &DesiredState) {
    let name = device.name_any();
    let Some(status) = &device.status else { return };
    let mut newly_failing = Vec::new();
    {
        let mut failing = ctx.failing.lock().unwrap_or_else(|e| e.into_inner());
        for m in &status.modules {
            let key = (name.clone(), m.name.clone());
            let is_desired = desired.modules.iter().any(|d| d.name == m.name);
            if m.runtime_status.is_failure() && is_desired {
                if failing.insert(key) {
                    newly_failing.push(m.clone());
                }
            } else {
                failing.remove(&key);
            }
        }
    }
    for m in newly_failing {
        let note = format!(
            "module {} is {}{}{}",
            m.name,
            m.runtime_status.as_str(),
            m.exit_code
                .map(|c| format!(", exit code {c}"))
                .unwrap_or_default(),
            if m.message.is_empty() {
                String::new()
            } else {
                format!(": {}", m.message)
            }
        );
        ctx.event(
            &reference(device),
            EventType::Warning,
            "ModuleFailed",
            "Observe",
            note,
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::identity::AGENT_MANAGER;
    use edgefleet_crds::status_written::{APPLY_OPERATION, STATUS_SUBRESOURCE};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

    use super::*;

    fn reporting(modules: &str, conditions: &str) -> EdgeDevice {
        let mut d = EdgeDevice::new("edge-1", Default::default());
        d.metadata.generation = Some(2);
        d.status = Some(
            serde_yaml::from_str(&format!(
                "appliedRevision: 0123456789abcdef\nmodules: {modules}\nconditions: {conditions}"
            ))
            .expect("status fixture"),
        );
        d
    }

    const APP: &str = "[{namespace: team, name: app, runtimeStatus: pending}]";
    const ONLINE_TRUE: &str = "[{type: Online, status: 'True', reason: LeaseRenewed}]";

    /// An agent's status write that changes nothing the reconcile acts on (a module started,
    /// the clock moved) does not queue the device again; one that does, does.
    #[test]
    fn only_what_the_reconcile_acts_on_queues_a_device_again() {
        let before = reads(&reporting(APP, ONLINE_TRUE));
        let started = reporting(
            "[{namespace: team, name: app, runtimeStatus: running, restartCount: 0}]",
            "[{type: Online, status: 'True', reason: LeaseRenewed, lastTransitionTime: '2026-12-04T00:00:00Z'}]",
        );
        assert_eq!(reads(&started), before, "a module started");

        let failing = reporting(
            "[{namespace: team, name: app, runtimeStatus: backoff}]",
            ONLINE_TRUE,
        );
        let offline = reporting(
            APP,
            "[{type: Online, status: 'False', reason: LeaseExpired}]",
        );
        let twice = reporting(
            &format!("{}, {}]", &APP[..APP.len() - 1], &APP[1..APP.len() - 1]),
            ONLINE_TRUE,
        );
        let mut relabelled = reporting(APP, ONLINE_TRUE);
        relabelled
            .labels_mut()
            .insert("site".into(), "munich".into());
        let mut respecified = reporting(APP, ONLINE_TRUE);
        respecified.metadata.generation = Some(3);
        for (what, d) in [
            ("a module failing", failing),
            ("a condition changed", offline),
            ("a status problem", twice),
            ("a label", relabelled),
            ("the spec", respecified),
        ] {
            assert_ne!(reads(&d), before, "{what}");
        }
    }

    /// An agent's status write is heard from the device: it queues a device the controller
    /// does not report online (it may bring it online before its next renewal), not one it
    /// does (that one is rechecked when what was heard runs out).
    #[test]
    fn a_status_write_queues_a_device_only_while_it_is_not_online() {
        let written = |conditions: &str, at: &str| {
            let mut d = reporting(APP, conditions);
            d.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
                manager: Some(AGENT_MANAGER.into()),
                operation: Some(APPLY_OPERATION.into()),
                subresource: Some(STATUS_SUBRESOURCE.into()),
                time: Some(Time(at.parse().expect("ts"))),
                ..ManagedFieldsEntry::default()
            }]);
            d
        };
        const OFFLINE: &str = "[{type: Online, status: 'False', reason: LeaseExpired}]";
        assert_ne!(
            reads(&written(OFFLINE, "2026-12-04T00:00:00Z")),
            reads(&written(OFFLINE, "2026-12-04T00:00:09Z")),
            "offline: heard again"
        );
        assert_eq!(
            reads(&written(ONLINE_TRUE, "2026-12-04T00:00:00Z")),
            reads(&written(ONLINE_TRUE, "2026-12-04T00:00:09Z")),
            "online"
        );
    }

    #[test]
    fn conditions_explain_the_device() {
        let t = Duration::from_secs(40);
        let c = controller_conditions(&Registration::Enrolled, Heard::Renewal, t, &[]);
        let s: Vec<_> = c
            .iter()
            .map(|c| (c.type_.as_str(), c.status, c.reason.as_str()))
            .collect();
        assert_eq!(
            s,
            [
                (REGISTERED, ConditionStatus::True, "Enrolled"),
                (ONLINE, ConditionStatus::True, "LeaseRenewed"),
                (STATUS_VALID, ConditionStatus::True, "Valid")
            ]
        );
        let c = controller_conditions(
            &Registration::NodeGone,
            Heard::Nothing,
            t,
            &["module \"x\" is reported but not desired".into()],
        );
        assert_eq!(c[0].reason, "NodeGone");
        assert_eq!(c[1].reason, "NeverSeen");
        assert_eq!(c[2].message, "module \"x\" is reported but not desired");
        let online = |heard| {
            let c = &controller_conditions(&Registration::Enrolled, heard, t, &[])[1];
            (c.status, c.reason.clone())
        };
        assert_eq!(
            online(Heard::Silence),
            (ConditionStatus::False, "LeaseExpired".into())
        );
        assert_eq!(
            online(Heard::StatusWrite),
            (ConditionStatus::True, "StatusWritten".into())
        );
        let refused = Registration::Refused("bad name".into());
        let c = controller_conditions(&refused, Heard::Nothing, t, &[]);
        assert_eq!(
            (c[0].status, c[0].reason.as_str()),
            (ConditionStatus::False, "InvalidName")
        );
    }
}
