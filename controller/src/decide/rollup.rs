//! An EdgeDeployment's status, rolled up from the devices it targets: counts, a bounded
//! sample of failures, and kstatus conditions (Ready, Reconciling, Stalled) so that
//! `kubectl wait --for=condition=Ready`, Flux and Argo CD understand it. Pure.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_crds::condition;
use edgefleet_crds::deployment::MAX_FAILURE_SAMPLES;
use edgefleet_crds::device::conditions as device_conditions;
use edgefleet_crds::{
    DesiredState, DesiredStatus, EdgeDeploymentStatus, EdgeDeviceStatus, FailureSample,
    ResolvedModule, RolloutStatus, Rollouts, RuntimeStatus, TargetingOutcome,
};

use jiff::Timestamp;

use crate::decide::catalog::{CompiledDeployment, Contribution, SpecProblem};
use crate::decide::conditions;
use crate::decide::rollout::{self, Health};

/// What the rollup reads of one device.
#[derive(Debug, Clone, Copy)]
pub struct DeviceView<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub desired: Option<&'a DesiredState>,
    pub status: Option<&'a EdgeDeviceStatus>,
    pub online: bool,
    /// The device's `spec.rollouts`: which revision each staged deployment moved it to.
    pub rollouts: &'a Rollouts,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rollup {
    pub targeted: u32,
    pub applied: u32,
    pub ready: u32,
    pub failed: u32,
    pub deferred: u32,
    pub lost: u32,
    /// Devices whose desired state does not yet reflect this deployment's spec.
    pub pending: u32,
    pub failures: Vec<FailureSample>,
    /// Deployments that tie with this one and win on some device.
    pub tied_with: BTreeSet<String>,
    /// Devices its modules would take over their budget (counted in `failed` too).
    pub over_budget: u32,
    /// Deployments of other namespaces (other teams) that own some device this one selects.
    pub outranked_by: BTreeSet<String>,
    /// For a staged deployment: every device it targets, as the rollout planner sees it.
    pub rollout: Vec<rollout::Device>,
}

enum ModuleHealth {
    Ready,
    NotReady,
    Failed(String),
}

/// `ready_since`: a running module counts as ready only if it started at or before then.
fn module_health(
    m: &ResolvedModule,
    status: Option<&EdgeDeviceStatus>,
    ready_since: Timestamp,
) -> ModuleHealth {
    // An agent older than module namespaces reports none: its names were unique.
    let reported = status.and_then(|s| {
        s.modules
            .iter()
            .find(|r| r.name == m.name && (r.namespace.is_empty() || r.namespace == m.namespace()))
    });
    match (m.desired_status, reported) {
        (_, Some(r)) if r.runtime_status.is_failure() => {
            let mut reason = r.runtime_status.as_str().to_owned();
            if let Some(code) = r.exit_code {
                reason.push_str(&format!(", exit code {code}"));
            }
            if r.restart_count > 0 {
                reason.push_str(&format!(", {} restarts", r.restart_count));
            }
            if !r.message.is_empty() {
                reason.push_str(": ");
                reason.push_str(&r.message);
            }
            ModuleHealth::Failed(reason)
        }
        (DesiredStatus::Running, Some(r)) if r.runtime_status == RuntimeStatus::Running => {
            let settled = r
                .last_start_time
                .as_ref()
                .is_none_or(|t| t.0 <= ready_since);
            if settled {
                ModuleHealth::Ready
            } else {
                ModuleHealth::NotReady
            }
        }
        (DesiredStatus::Stopped, None) => ModuleHealth::Ready,
        (DesiredStatus::Stopped, Some(r)) if r.runtime_status == RuntimeStatus::Stopped => {
            ModuleHealth::Ready
        }
        _ => ModuleHealth::NotReady,
    }
}

fn rejection(status: Option<&EdgeDeviceStatus>, desired: &DesiredState) -> Option<String> {
    let s = status?;
    (s.rejected_revision.as_deref() == Some(desired.revision.as_str())).then(|| {
        condition::find(&s.conditions, device_conditions::APPLIED)
            .map(|c| c.message.clone())
            .unwrap_or_else(|| "the agent rejected the desired state".to_owned())
    })
}

/// Whether the device's rejection is deployment `key`'s fault: the agent names the
/// deployments that changed; one that names none leaves every deployment at fault.
fn at_fault(status: Option<&EdgeDeviceStatus>, key: &str) -> bool {
    status
        .and_then(|s| s.rejected_deployments.as_ref())
        .is_none_or(|changed| changed.iter().any(|k| k == key))
}

/// The namespace of a `namespace/name` key.
fn namespace_of(key: &str) -> &str {
    key.split_once('/').map_or("", |(ns, _)| ns)
}

/// Rolls `devices` up for deployment `d`, as of `now`.
pub fn rollup<'a>(
    d: &CompiledDeployment,
    devices: impl Iterator<Item = DeviceView<'a>>,
    now: Timestamp,
) -> Rollup {
    let ready_since = now - jiff::SignedDuration::try_from(d.min_ready).unwrap_or_default();
    let compiled: BTreeMap<&str, &ResolvedModule> = match &d.contribution {
        Contribution::Fresh { modules, .. } => {
            modules.iter().map(|m| (m.name.as_str(), m)).collect()
        }
        Contribution::Held { .. } => BTreeMap::new(),
    };
    let mut r = Rollup::default();
    let mut failures = Vec::new();
    for dev in devices {
        let decision = dev
            .desired
            .and_then(|s| s.targeting.iter().find(|t| t.deployment == d.key));
        let selects_now = d.selects(dev.labels, dev.desired.map(|s| s.targeting.as_slice()));
        let at = d.staged_at(dev.rollouts, dev.desired.map(|s| s.targeting.as_slice()));
        let mut planner_view = |health: Health| {
            if d.staged {
                r.rollout.push(rollout::Device {
                    name: dev.name.to_owned(),
                    preferred: d.prefers(dev.labels),
                    online: dev.online,
                    rollout: at.map(str::to_owned),
                    health,
                });
            }
        };
        let (Some(desired), Some(decision)) = (dev.desired, decision) else {
            if selects_now {
                planner_view(Health::Updating);
                r.pending += 1;
            }
            continue;
        };
        if decision.outcome == TargetingOutcome::Retained && !selects_now {
            continue;
        }
        if !selects_now {
            r.pending += 1;
            continue;
        }
        if decision.outcome == TargetingOutcome::Lost {
            r.lost += 1;
            if let Some(owner) = desired
                .targeting
                .iter()
                .find(|t| t.outcome == TargetingOutcome::Owner)
            {
                if owner.priority == d.priority {
                    r.tied_with.insert(owner.deployment.clone());
                }
                if namespace_of(&owner.deployment) != namespace_of(&d.key) {
                    r.outranked_by.insert(owner.deployment.clone());
                }
            }
            continue;
        }
        r.targeted += 1;
        if decision.outcome == TargetingOutcome::OverBudget {
            planner_view(Health::Failed);
            r.over_budget += 1;
            r.failed += 1;
            failures.push(FailureSample {
                device: dev.name.to_owned(),
                module: String::new(),
                reason: decision.reason.clone(),
            });
            continue;
        }
        let owned: Vec<&ResolvedModule> = desired
            .modules
            .iter()
            .filter(|m| m.deployment == d.key)
            .collect();
        let verdict = device_health(dev, &d.key, desired, &owned, ready_since);
        // The planner judges a device at the revision the rollout has it at, once its
        // desired state carries that revision.
        planner_view(match verdict {
            _ if at != Some(&decision.revision) => Health::Updating,
            DeviceHealth::Ready => Health::Ready,
            DeviceHealth::Rejected(_) | DeviceHealth::Failed(_) => Health::Failed,
            DeviceHealth::NotApplied | DeviceHealth::Starting => Health::Updating,
        });
        let up_to_date = matches!(d.contribution, Contribution::Held { .. })
            || owned
                .iter()
                .all(|m| compiled.get(m.name.as_str()) == Some(m));
        if !up_to_date {
            r.pending += 1;
            continue;
        }
        match verdict {
            DeviceHealth::Rejected(reason) => {
                r.failed += 1;
                failures.push(FailureSample {
                    device: dev.name.to_owned(),
                    module: String::new(),
                    reason,
                });
            }
            DeviceHealth::NotApplied => {
                if !dev.online {
                    r.deferred += 1;
                }
            }
            DeviceHealth::Failed(samples) => {
                r.applied += 1;
                r.failed += 1;
                failures.extend(samples);
            }
            DeviceHealth::Starting => r.applied += 1,
            DeviceHealth::Ready => {
                r.applied += 1;
                r.ready += 1;
            }
        }
    }
    failures.sort_by(|a, b| (&a.device, &a.module).cmp(&(&b.device, &b.module)));
    failures.truncate(MAX_FAILURE_SAMPLES);
    r.failures = failures;
    r
}

/// How a device is doing with a deployment's modules in its desired state.
enum DeviceHealth {
    /// The agent rejected the desired state (the reason).
    Rejected(String),
    /// Not applied yet.
    NotApplied,
    /// Applied; some modules failed.
    Failed(Vec<FailureSample>),
    /// Applied; modules still starting.
    Starting,
    Ready,
}

/// How a device does for deployment `key`, whose modules there are `owned`.
fn device_health(
    dev: DeviceView,
    key: &str,
    desired: &DesiredState,
    owned: &[&ResolvedModule],
    ready_since: Timestamp,
) -> DeviceHealth {
    let applied =
        dev.status.and_then(|s| s.applied_revision.as_deref()) == Some(desired.revision.as_str());
    if !applied {
        match rejection(dev.status, desired) {
            // A rejection is charged to the deployments whose change it was. For the others
            // the device runs their modules as desired (they did not change): judge those.
            Some(_) if !at_fault(dev.status, key) => {}
            Some(reason) => return DeviceHealth::Rejected(reason),
            None => return DeviceHealth::NotApplied,
        }
    }
    let mut all_ready = true;
    let mut failed = Vec::new();
    for m in owned {
        match module_health(m, dev.status, ready_since) {
            ModuleHealth::Ready => {}
            ModuleHealth::NotReady => all_ready = false,
            ModuleHealth::Failed(reason) => failed.push(FailureSample {
                device: dev.name.to_owned(),
                module: m.name.clone(),
                reason,
            }),
        }
    }
    if !failed.is_empty() {
        DeviceHealth::Failed(failed)
    } else if all_ready {
        DeviceHealth::Ready
    } else {
        DeviceHealth::Starting
    }
}

/// The status a deployment should have: the rollup's counts, the rollout status (`None`
/// for a deployment without one yet) and the conditions both decide. Transition times are
/// left for the caller to carry over from the current status.
pub fn status(
    generation: Option<i64>,
    problems: &[SpecProblem],
    r: &Rollup,
    rollout: Option<RolloutStatus>,
) -> EdgeDeploymentStatus {
    let facts = conditions::Facts {
        problems,
        rollup: r,
        rollout: rollout.as_ref(),
    };
    let conditions = conditions::conditions(generation, &facts);
    EdgeDeploymentStatus {
        // Devices a staged rollout skipped while offline are deferred too (the rollup
        // counts only devices offline with a change they have not applied).
        deferred: r.deferred + rollout.as_ref().map_or(0, |o| o.deferred),
        rollout,
        observed_generation: generation,
        targeted: r.targeted,
        applied: r.applied,
        ready: r.ready,
        failed: r.failed,
        lost: r.lost,
        failures: r.failures.clone(),
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::ConditionStatus;

    use super::*;
    use crate::decide::catalog::compile;
    use crate::decide::catalog::fixtures::{deployment, modules, open_grants};
    use crate::decide::targeting::resolve;

    struct Dev {
        name: String,
        labels: BTreeMap<String, String>,
        desired: DesiredState,
        status: Option<EdgeDeviceStatus>,
        online: bool,
        rollouts: Rollouts,
    }

    fn compiled(yaml_spec: &str) -> CompiledDeployment {
        let lib = modules(&[("ns/a", "image: a:v1"), ("ns/b", "image: b:v1")]);
        compile(
            &deployment(&format!(
                "metadata: {{name: d, namespace: ns, generation: 3}}\nspec:\n  {yaml_spec}"
            )),
            &lib,
            &open_grants(&["ns"]),
        )
    }

    /// A device targeted by `d`, with the agent's report given as YAML (None: no report).
    fn dev(name: &str, d: &CompiledDeployment, report: Option<&str>, online: bool) -> Dev {
        let labels = BTreeMap::from([("site".to_owned(), "x".to_owned())]);
        let desired = resolve(&labels, std::slice::from_ref(d), None);
        let status = report.map(|r| {
            let r = r.replace("REV", &desired.revision);
            serde_yaml::from_str(&r).expect("status fixture")
        });
        Dev {
            name: name.to_owned(),
            labels,
            desired,
            status,
            online,
            rollouts: Rollouts::new(),
        }
    }

    fn run(d: &CompiledDeployment, devs: &[Dev]) -> Rollup {
        rollup(
            d,
            devs.iter().map(|x| DeviceView {
                name: &x.name,
                labels: &x.labels,
                desired: Some(&x.desired),
                status: x.status.as_ref(),
                online: x.online,
                rollouts: &x.rollouts,
            }),
            now(),
        )
    }

    /// The tests' clock: fixed, so that no test depends on the day it runs.
    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().expect("time")
    }

    /// Device "d1", online, with this desired state and no report yet.
    fn unreported<'a>(
        labels: &'a BTreeMap<String, String>,
        desired: &'a DesiredState,
    ) -> DeviceView<'a> {
        DeviceView {
            name: "d1",
            labels,
            desired: Some(desired),
            status: None,
            online: true,
            rollouts: const { &Rollouts::new() },
        }
    }

    const RUNNING: &str = "appliedRevision: REV\nmodules: [{name: a, runtimeStatus: running}, {name: b, runtimeStatus: running}]";

    #[test]
    fn a_staged_device_is_ready_once_its_modules_ran_min_ready_seconds() {
        let d = compiled(
            "selector: {matchLabels: {site: x}}\n  modules: [{name: a}]\n  rollout: {minReadySeconds: 10}",
        );
        let rollouts = Rollouts::from_iter([("ns/d".to_owned(), d.revision.clone())]);
        let device = |name: &str, started: &str| {
            let labels = BTreeMap::from([("site".to_owned(), "x".to_owned())]);
            let staged = crate::decide::targeting::StagedRevisions {
                rollouts: &rollouts,
                snapshots: &(),
            };
            let desired = crate::decide::targeting::resolve_staged(
                &labels,
                std::slice::from_ref(&d),
                None,
                &staged,
            );
            let report = format!(
                "appliedRevision: {}\nmodules: [{{name: a, runtimeStatus: running, lastStartTime: \"{started}\"}}]",
                desired.revision
            );
            Dev {
                name: name.to_owned(),
                labels,
                desired,
                status: Some(serde_yaml::from_str(&report).expect("status")),
                online: true,
                rollouts: rollouts.clone(),
            }
        };
        let started =
            |secs_ago: i64| (now() - jiff::SignedDuration::from_secs(secs_ago)).to_string();
        let fresh = device("d1", &started(9));
        let settled = device("d2", &started(10));
        let r = run(&d, &[fresh, settled]);
        assert_eq!(r.ready, 1, "only the module that ran 10 s counts");
        let health: Vec<Health> = r.rollout.iter().map(|x| x.health).collect();
        assert_eq!(health, [Health::Updating, Health::Ready]);
    }

    /// The planner's view keeps whether the canary's selector matches a device, not its
    /// labels: the devices it matches are marked, the others not, and a deployment without
    /// that selector marks none.
    #[test]
    fn the_planner_view_marks_the_canarys_preferred_devices() {
        let marked = |rollout: &str| {
            let d = compiled(&format!(
                "selector: {{matchLabels: {{site: x}}}}\n  modules: [{{name: a}}]\n  rollout: {rollout}"
            ));
            let mut beta = dev("beta", &d, None, true);
            beta.labels.insert("channel".to_owned(), "beta".to_owned());
            let stable = dev("stable", &d, None, true);
            let r = run(&d, &[beta, stable]);
            r.rollout
                .iter()
                .map(|x| (x.name.clone(), x.preferred))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            marked("{canary: {count: 1, selector: {matchLabels: {channel: beta}}}}"),
            [("beta".to_owned(), true), ("stable".to_owned(), false)]
        );
        assert_eq!(
            marked("{canary: {count: 1}}"),
            [("beta".to_owned(), false), ("stable".to_owned(), false)]
        );
    }

    /// A device a staged rollout has not moved (no `spec.rollouts` entry, say it is new to
    /// the deployment) runs the current revision and is judged there; without a current
    /// revision it has nothing and is updating.
    #[test]
    fn a_device_not_moved_yet_runs_and_is_judged_at_the_current_revision() {
        let mut d = compiled(
            "selector: {matchLabels: {site: x}}\n  modules: [{name: a}]\n  rollout: {maxUnavailable: 1}",
        );
        let unmoved = |d: &CompiledDeployment| {
            let labels = BTreeMap::from([("site".to_owned(), "x".to_owned())]);
            let desired = crate::decide::targeting::resolve_staged(
                &labels,
                std::slice::from_ref(d),
                None,
                &crate::decide::targeting::StagedRevisions {
                    rollouts: &Rollouts::new(),
                    snapshots: &(),
                },
            );
            let report = format!(
                "appliedRevision: {}\nmodules: [{{name: a, runtimeStatus: running}}]",
                desired.revision
            );
            Dev {
                name: "new".to_owned(),
                labels,
                desired,
                status: Some(serde_yaml::from_str(&report).expect("status")),
                online: true,
                rollouts: Rollouts::new(),
            }
        };
        let nothing = unmoved(&d);
        assert!(nothing.desired.modules.is_empty());
        let r = run(&d, &[nothing]);
        assert_eq!(
            (r.rollout[0].rollout.as_deref(), r.rollout[0].health),
            (None, Health::Updating)
        );

        d.current = Some(d.revision.clone());
        let follows = unmoved(&d);
        assert_eq!(
            follows.desired.modules.len(),
            1,
            "the current revision's module"
        );
        let r = run(&d, &[follows]);
        assert_eq!(r.rollout[0].rollout.as_ref(), Some(&d.revision));
        assert_eq!(r.rollout[0].health, Health::Ready);
        assert_eq!(r.ready, 1);
    }

    #[test]
    fn counts_table() {
        let d = compiled("modules: [{name: a}, {name: b}]");
        // (case, reports as (report, online), want (targeted, applied, ready, failed, deferred))
        type Reports<'a> = Vec<(Option<&'a str>, bool)>;
        type Counts = (u32, u32, u32, u32, u32);
        let cases: Vec<(&str, Reports, Counts)> = vec![
            (
                "all ready",
                vec![(Some(RUNNING), true), (Some(RUNNING), true)],
                (2, 2, 2, 0, 0),
            ),
            (
                "not yet reported, online",
                vec![(None, true)],
                (1, 0, 0, 0, 0),
            ),
            (
                "offline and not applied is deferred",
                vec![(None, false)],
                (1, 0, 0, 0, 1),
            ),
            (
                "offline but applied and running still counts ready",
                vec![(Some(RUNNING), false)],
                (1, 1, 1, 0, 0),
            ),
            (
                "an older revision is not applied",
                vec![(Some("appliedRevision: 0000000000000000"), true)],
                (1, 0, 0, 0, 0),
            ),
            (
                "one module pending",
                vec![(
                    Some(
                        "appliedRevision: REV\nmodules: [{name: a, runtimeStatus: running}, {name: b, runtimeStatus: pending}]",
                    ),
                    true,
                )],
                (1, 1, 0, 0, 0),
            ),
            (
                "a crash-looping module fails the device",
                vec![(
                    Some(
                        "appliedRevision: REV\nmodules: [{name: a, runtimeStatus: backoff, exitCode: 1, restartCount: 4}, {name: b, runtimeStatus: running}]",
                    ),
                    true,
                )],
                (1, 1, 0, 1, 0),
            ),
            (
                "a rejected desired state fails the device",
                vec![(
                    Some(
                        "rejectedRevision: REV\nconditions: [{type: Applied, status: 'False', reason: Rejected, message: config too large}]",
                    ),
                    true,
                )],
                (1, 0, 0, 1, 0),
            ),
            (
                "a rejection that names this deployment fails the device",
                vec![(
                    Some(
                        "rejectedRevision: REV\nrejectedDeployments: [ns/d]\nappliedRevision: 0000000000000000",
                    ),
                    true,
                )],
                (1, 0, 0, 1, 0),
            ),
            (
                "another deployment's rejection leaves this one running",
                vec![(
                    Some(
                        "rejectedRevision: REV\nrejectedDeployments: [other/pill]\nappliedRevision: 0000000000000000\nmodules: [{namespace: ns, name: a, runtimeStatus: running}, {namespace: ns, name: b, runtimeStatus: running}]",
                    ),
                    true,
                )],
                (1, 1, 1, 0, 0),
            ),
        ];
        for (name, reports, want) in cases {
            let devs: Vec<Dev> = reports
                .iter()
                .enumerate()
                .map(|(i, (r, o))| dev(["d1", "d2"][i], &d, *r, *o))
                .collect();
            let r = run(&d, &devs);
            assert_eq!(
                (r.targeted, r.applied, r.ready, r.failed, r.deferred),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn failure_samples_say_what_failed_and_stay_bounded() {
        let d = compiled("modules: [{name: a}, {name: b}]");
        let bad = "appliedRevision: REV\nmodules: [{name: a, runtimeStatus: failed, exitCode: 1, message: boom}, {name: b, runtimeStatus: running}]";
        let devs: Vec<Dev> = (0..15)
            .map(|i| dev(&format!("dev-{i:02}"), &d, Some(bad), true))
            .collect();
        let r = run(&d, &devs);
        assert_eq!(r.failed, 15);
        assert_eq!(r.failures.len(), MAX_FAILURE_SAMPLES);
        assert_eq!(r.failures[0].device, "dev-00");
        assert_eq!(r.failures[0].module, "a");
        assert_eq!(r.failures[0].reason, "failed, exit code 1: boom");
    }

    #[test]
    fn a_device_not_yet_updated_keeps_the_deployment_reconciling() {
        let old = compiled("modules: [{name: a}]");
        let new = compiled("modules: [{name: a, overrides: {image: 'a:v2'}}]");
        let stale = dev(
            "d1",
            &old,
            Some("appliedRevision: REV\nmodules: [{name: a, runtimeStatus: running}]"),
            true,
        );
        let r = run(&new, &[stale]);
        assert_eq!((r.targeted, r.pending, r.ready), (1, 1, 0));
        let s = status(Some(3), &[], &r, None);
        let c = |t| condition::find(&s.conditions, t).map(|c| c.status);
        assert_eq!(c(conditions::READY), Some(ConditionStatus::False));
        assert_eq!(c(conditions::RECONCILING), Some(ConditionStatus::True));
    }

    #[test]
    fn a_priority_tie_is_reported_on_the_loser() {
        let lib = modules(&[("ns/a", "image: a:v1")]);
        let winner = compile(
            &deployment(
                "metadata: {name: a-first, namespace: ns}\nspec:\n  priority: 5\n  modules: [{name: a}]",
            ),
            &lib,
            &open_grants(&["ns"]),
        );
        let loser = compile(
            &deployment(
                "metadata: {name: b-second, namespace: ns}\nspec:\n  priority: 5\n  modules: [{name: a}]",
            ),
            &lib,
            &open_grants(&["ns"]),
        );
        let labels = BTreeMap::new();
        let desired = resolve(&labels, &[winner.clone(), loser.clone()], None);
        let view = unreported(&labels, &desired);
        let r = rollup(&loser, std::iter::once(view), now());
        assert_eq!((r.lost, r.targeted), (1, 0));
        assert_eq!(r.tied_with.iter().collect::<Vec<_>>(), ["ns/a-first"]);
        let s = status(None, &[], &r, None);
        let c = condition::find(&s.conditions, conditions::CONFLICTED).expect("Conflicted");
        assert_eq!(c.reason, "PriorityTie");
        assert!(c.message.contains("ns/a-first"), "{}", c.message);
        assert!(
            condition::find(
                &status(
                    None,
                    &[],
                    &rollup(&winner, std::iter::once(view), now()),
                    None
                )
                .conditions,
                conditions::CONFLICTED
            )
            .is_none()
        );
        assert_eq!(
            condition::find(&s.conditions, conditions::READY).map(|c| c.is_true()),
            Some(true),
            "losing to one's own namespace is by design"
        );
    }

    /// Another team's deployment takes a device: the loser is not Ready, and says who.
    #[test]
    fn losing_a_device_to_another_team_is_not_ready() {
        let lib = modules(&[("ns/a", "image: a:v1"), ("team-b/a", "image: a:v1")]);
        let grants = open_grants(&["ns", "team-b"]);
        let winner = compile(
            &deployment(
                "metadata: {name: takeover, namespace: team-b}\nspec:\n  priority: 9\n  modules: [{name: a}]",
            ),
            &lib,
            &grants,
        );
        let loser = compile(
            &deployment(
                "metadata: {name: base, namespace: ns}\nspec:\n  priority: 1\n  modules: [{name: a}]",
            ),
            &lib,
            &grants,
        );
        let labels = BTreeMap::new();
        let desired = resolve(&labels, &[winner, loser.clone()], None);
        let view = unreported(&labels, &desired);
        let r = rollup(&loser, std::iter::once(view), now());
        assert_eq!(
            r.outranked_by.iter().collect::<Vec<_>>(),
            ["team-b/takeover"]
        );
        let s = status(None, &[], &r, None);
        let ready = condition::find(&s.conditions, conditions::READY).expect("Ready");
        assert!(!ready.is_true());
        assert_eq!(ready.reason, "Outranked");
        assert!(
            ready.message.contains("team-b/takeover"),
            "{}",
            ready.message
        );
        let stalled = condition::find(&s.conditions, conditions::STALLED).expect("Stalled");
        assert!(
            stalled.is_true(),
            "published as a Warning Event naming the winner"
        );
    }
}
