//! The device reconcile: mirrors the Node's labels, resolves and writes the device's
//! desired state, and keeps the controller's own conditions on it (Registered, Online,
//! StatusValid), with Events on their transitions.
//!
//! When the Node is deleted or loses the device label the EdgeDevice is kept and marked
//! `Registered=False`; its desired state becomes empty, so an agent still running there
//! removes every module it started. Its Lease and RBAC stay, so the agent can still report;
//! deleting the EdgeDevice removes them (they are owned by it). If the Node comes back with
//! the label, the device is registered again and targeted as before.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::condition::{self, Condition, ConditionStatus};
use edgefleet_crds::device::conditions::{ONLINE, REGISTERED, STATUS_VALID};
use edgefleet_crds::identity::{
    CONTROLLER_MANAGER, DEVICE_LABEL, DEVICE_LABEL_VALUE, ROLLOUT_MANAGER,
};
use edgefleet_crds::{DesiredState, EdgeDevice, TargetingOutcome};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::context::{Context, reference};
use crate::error::{Error, Result};
use crate::presence::presence;
use crate::{apply, status_check, targeting};

pub const CONTROLLER: &str = "device";
/// Which of an EdgeDevice's labels are mirrored from its Node, so that a label removed from
/// the Node is removed from the device too, while labels set on the device itself stay.
pub const MIRRORED_LABELS_ANNOTATION: &str = "edgefleet.io/mirrored-labels";

/// The labels targeting sees (the device's own plus the Node's, the Node winning) and
/// whether the EdgeDevice's labels must be written to match.
pub fn effective_labels(
    device: &EdgeDevice,
    node_labels: &BTreeMap<String, String>,
) -> (BTreeMap<String, String>, bool) {
    let mirrored: BTreeSet<&str> = device
        .annotations()
        .get(MIRRORED_LABELS_ANNOTATION)
        .map(|a| a.split(',').filter(|k| !k.is_empty()).collect())
        .unwrap_or_default();
    let mut labels = device.labels().clone();
    labels.retain(|k, _| !mirrored.contains(k.as_str()) || node_labels.contains_key(k));
    let stale = labels.len() != device.labels().len();
    let missing = node_labels.iter().any(|(k, v)| labels.get(k) != Some(v));
    let keys_changed = !node_labels
        .keys()
        .map(String::as_str)
        .eq(mirrored.iter().copied());
    labels.extend(node_labels.iter().map(|(k, v)| (k.clone(), v.clone())));
    (labels, stale || missing || keys_changed)
}

/// The conditions the controller owns on a device, without transition times.
pub fn controller_conditions(
    registered: bool,
    online: bool,
    ever_renewed: bool,
    threshold: Duration,
    status_problems: &[String],
) -> Vec<Condition> {
    let registered = if registered {
        Condition::new(
            REGISTERED,
            ConditionStatus::True,
            "NodeLabelled",
            format!("its Node carries {DEVICE_LABEL}={DEVICE_LABEL_VALUE}"),
        )
    } else {
        Condition::new(
            REGISTERED,
            ConditionStatus::False,
            "NodeGone",
            format!(
                "its Node is gone or no longer labelled {DEVICE_LABEL}={DEVICE_LABEL_VALUE}: its desired state is empty, so its agent removes every module; delete the EdgeDevice to remove its Lease and RBAC as well"
            ),
        )
    };
    let online = match (online, ever_renewed) {
        (true, _) => Condition::new(
            ONLINE,
            ConditionStatus::True,
            "LeaseRenewed",
            format!(
                "the agent renewed its Lease within {}s",
                threshold.as_secs()
            ),
        ),
        (false, true) => Condition::new(
            ONLINE,
            ConditionStatus::False,
            "LeaseExpired",
            format!(
                "the agent has not renewed its Lease for {}s",
                threshold.as_secs()
            ),
        ),
        (false, false) => Condition::new(
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

fn same(a: &Condition, b: Option<&Condition>) -> bool {
    b.is_some_and(|b| a.status == b.status && a.reason == b.reason && a.message == b.message)
}

pub async fn reconcile(device: Arc<EdgeDevice>, ctx: Arc<Context>) -> Result<Action> {
    ctx.synced().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let name = device.name_any();
    let api = Api::<EdgeDevice>::all(ctx.client.clone());
    let node: Option<Arc<PartialObjectMeta<Node>>> = ctx.registered(&name);

    // Desired state and labels.
    let current = device.spec.desired.as_ref();
    let (desired, labels_stale) = match &node {
        Some(n) => {
            let (labels, stale) = effective_labels(&device, n.labels());
            let staging = targeting::Staging {
                moved_to: &device.spec.rollouts,
                snapshots: ctx.as_ref(),
            };
            (
                targeting::resolve_staged(&labels, &ctx.catalog(), current, &staging),
                stale,
            )
        }
        None => (DesiredState::new(vec![], vec![]), false),
    };
    if current != Some(&desired) || labels_stale {
        let mut patch = json!({
            "apiVersion": EdgeDevice::api_version(&()),
            "kind": EdgeDevice::kind(&()),
            "metadata": { "name": name },
            "spec": { "desired": desired },
        });
        if let Some(n) = &node {
            let keys: Vec<&str> = n.labels().keys().map(String::as_str).collect();
            patch["metadata"]["labels"] = json!(n.labels());
            patch["metadata"]["annotations"] =
                json!({ MIRRORED_LABELS_ANNOTATION: keys.join(",") });
        }
        api.patch(
            &name,
            &PatchParams::apply(CONTROLLER_MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(|e| Error::ApplyDevice(name.clone(), e))?;
        if current.map(|c| &c.revision) != Some(&desired.revision) {
            tracing::info!(device = %name, revision = %desired.revision, modules = desired.modules.len(), "desired state changed");
        }
    } else {
        ctx.metrics.skipped_write(CONTROLLER);
    }

    forget_rollouts(&ctx, &device, &desired).await?;

    // The controller's conditions.
    let lease = ctx
        .stores
        .leases
        .get(&ObjectRef::new(&name).within(&ctx.config.namespace));
    let now = jiff::Timestamp::now();
    let p = presence(lease.as_deref(), now, ctx.config.offline_threshold);
    let ever_renewed = lease
        .as_ref()
        .and_then(|l| l.spec.as_ref())
        .is_some_and(|s| s.renew_time.is_some());
    let status = device.status.clone().unwrap_or_default();
    let status_problems = status_check::problems(&status, Some(&desired));
    let mut conditions = controller_conditions(
        node.is_some(),
        p.online,
        ever_renewed,
        ctx.config.offline_threshold,
        &status_problems,
    );
    let old = &status.conditions;
    if conditions
        .iter()
        .any(|c| !same(c, condition::find(old, &c.type_)))
    {
        condition::carry_transition_times(&mut conditions, old, &Time(now));
        apply::status(&api, &name, &json!({ "conditions": conditions }))
            .await
            .map_err(|e| Error::ApplyDeviceStatus(name.clone(), e))?;
        publish_transitions(&ctx, &device, old, &conditions).await;
    }
    report_module_failures(&ctx, &device, &desired).await;

    Ok(match p.recheck_in {
        Some(d) => Action::requeue(d),
        None => Action::requeue(Duration::from_secs(300)),
    })
}

/// Drops the rollout entries of deployments that no longer give this device anything (gone,
/// or no longer selecting it): if such a deployment selects the device again, it arrives
/// in that deployment's waves like any device, not at once.
async fn forget_rollouts(ctx: &Context, device: &EdgeDevice, desired: &DesiredState) -> Result<()> {
    let gives = |key: &str| {
        desired
            .targeting
            .iter()
            .any(|t| t.deployment == key && t.outcome != TargetingOutcome::Lost)
    };
    let stale: serde_json::Map<String, serde_json::Value> = device
        .spec
        .rollouts
        .keys()
        .filter(|k| !gives(k))
        .map(|k| (k.clone(), serde_json::Value::Null))
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let name = device.name_any();
    let params = PatchParams {
        field_manager: Some(ROLLOUT_MANAGER.to_owned()),
        ..Default::default()
    };
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

pub fn error_policy(_d: Arc<EdgeDevice>, err: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, "device reconcile failed");
    ctx.metrics.error(CONTROLLER, err.category());
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(s: &str) -> BTreeMap<String, String> {
        s.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                p.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .expect("k=v")
            })
            .collect()
    }

    fn device(own: &str, mirrored: Option<&str>) -> EdgeDevice {
        let mut d = EdgeDevice::new("edge-1", Default::default());
        d.metadata.labels = Some(labels(own));
        if let Some(m) = mirrored {
            d.metadata.annotations = Some(BTreeMap::from([(
                MIRRORED_LABELS_ANNOTATION.to_owned(),
                m.to_owned(),
            )]));
        }
        d
    }

    #[test]
    fn labels_mirror_the_node_and_keep_the_devices_own() {
        // (device labels, mirrored annotation, node labels) -> (effective, needs write)
        let cases = [
            ("site=a", Some("site"), "site=a", "site=a", false),
            ("site=a", Some("site"), "site=b", "site=b", true),
            ("site=a,hw=x", Some("site,hw"), "site=a", "site=a", true),
            (
                "site=a,owner=me",
                Some("site"),
                "site=a",
                "owner=me,site=a",
                false,
            ),
            ("owner=me", None, "site=a", "owner=me,site=a", true),
            ("", None, "", "", false),
        ];
        for (own, mirrored, node, want, write) in cases {
            let (got, needs) = effective_labels(&device(own, mirrored), &labels(node));
            assert_eq!(
                (got, needs),
                (labels(want), write),
                "{own} {mirrored:?} {node}"
            );
        }
    }

    #[test]
    fn conditions_explain_the_device() {
        let t = Duration::from_secs(40);
        let c = controller_conditions(true, true, true, t, &[]);
        let s: Vec<_> = c
            .iter()
            .map(|c| (c.type_.as_str(), c.status, c.reason.as_str()))
            .collect();
        assert_eq!(
            s,
            [
                (REGISTERED, ConditionStatus::True, "NodeLabelled"),
                (ONLINE, ConditionStatus::True, "LeaseRenewed"),
                (STATUS_VALID, ConditionStatus::True, "Valid")
            ]
        );
        let c = controller_conditions(
            false,
            false,
            false,
            t,
            &["module \"x\" is reported but not desired".into()],
        );
        assert_eq!(c[0].reason, "NodeGone");
        assert_eq!(c[1].reason, "NeverSeen");
        assert_eq!(c[2].message, "module \"x\" is reported but not desired");
        assert_eq!(
            controller_conditions(true, false, true, t, &[])[1].reason,
            "LeaseExpired"
        );
    }
}
