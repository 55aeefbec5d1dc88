//! The device's status as the agent reports it. Pure: built from what the agent decided
//! and observed, with condition transition times carried over, so that an unchanged device
//! builds an identical status and costs no write.

use edgefleet_crds::condition::{Condition, ConditionStatus, carry_transition_times};
use edgefleet_crds::device::conditions::{APPLIED, READY};
use std::collections::BTreeSet;

use edgefleet_crds::{DesiredState, DesiredStatus, EdgeDeviceStatus, ModuleStatus, ResolvedModule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::observe::is_up;
use crate::validate::Refused;

/// How many not-ready modules the Ready condition names.
const NAMED: usize = 5;

#[derive(Debug)]
pub struct Facts<'a> {
    /// The accepted desired state being applied, if any.
    pub accepted: Option<&'a DesiredState>,
    /// The newest desired state that was refused, and why.
    pub rejected: Option<&'a Refused>,
    pub modules: Vec<ModuleStatus>,
    /// The lowest startupOrder still waited for.
    pub waiting_for: Option<u32>,
    /// Why the container runtime could not be read, when it could not.
    pub runtime_error: Option<String>,
}

pub fn status(f: &Facts<'_>, previous: &[Condition], now: &Time) -> EdgeDeviceStatus {
    let desired_running: BTreeSet<String> = f
        .accepted
        .map(|d| {
            d.modules
                .iter()
                .filter(|m| m.desired_status == DesiredStatus::Running)
                .map(ResolvedModule::key)
                .collect()
        })
        .unwrap_or_default();
    let not_ready: Vec<&ModuleStatus> = f
        .modules
        .iter()
        .filter(|m| desired_running.contains(&m.key()) && !is_up(m))
        .collect();
    let ready = desired_running.len() - not_ready.len();

    let applied = match (f.accepted, f.rejected) {
        (_, Some(r)) => Condition::new(
            APPLIED,
            ConditionStatus::False,
            "Rejected",
            format!(
                "desired revision {} rejected, the last good state keeps running: {}",
                r.revision, r.why
            ),
        ),
        (None, None) => Condition::new(
            APPLIED,
            ConditionStatus::False,
            "NoDesiredState",
            "no desired state received yet",
        ),
        (Some(d), None) => Condition::new(
            APPLIED,
            ConditionStatus::True,
            "Applied",
            match f.waiting_for {
                Some(order) => format!(
                    "revision {}: starting in order, waiting for startupOrder {order}",
                    d.revision
                ),
                None => format!("revision {}", d.revision),
            },
        ),
    };
    let ready_cond = if let Some(e) = &f.runtime_error {
        Condition::new(
            READY,
            ConditionStatus::False,
            "RuntimeUnreachable",
            e.clone(),
        )
    } else if not_ready.is_empty() {
        Condition::new(
            READY,
            ConditionStatus::True,
            "ModulesRunning",
            format!("{ready} of {} modules running", desired_running.len()),
        )
    } else {
        let failing = not_ready.iter().any(|m| m.runtime_status.is_failure());
        let names: Vec<String> = not_ready
            .iter()
            .take(NAMED)
            .map(|m| format!("{} {}", m.key(), m.runtime_status.as_str()))
            .collect();
        let more = not_ready.len().saturating_sub(NAMED);
        Condition::new(
            READY,
            ConditionStatus::False,
            if failing {
                "ModulesFailing"
            } else {
                "ModulesStarting"
            },
            format!(
                "{}{}",
                names.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ),
        )
    };
    let mut conditions = vec![applied, ready_cond];
    carry_transition_times(&mut conditions, previous, now);

    EdgeDeviceStatus {
        agent_version: Some(crate::VERSION.to_owned()),
        os: Some(std::env::consts::OS.to_owned()),
        arch: Some(std::env::consts::ARCH.to_owned()),
        applied_revision: f.accepted.map(|d| d.revision.clone()),
        rejected_revision: f.rejected.map(|r| r.revision.clone()),
        rejected_deployments: f.rejected.and_then(|r| r.at_fault.clone()),
        modules_ready: Some(format!("{ready}/{}", desired_running.len())),
        modules: f.modules.clone(),
        hub: None,
        conditions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::Rejection;
    use edgefleet_crds::{ResolvedModule, RuntimeStatus};
    use serde_json::json;

    fn desired(names: &[&str]) -> DesiredState {
        let modules: Vec<ResolvedModule> = names
            .iter()
            .map(|n| {
                serde_json::from_value(json!({
                    "name": n, "deployment": "ns/d", "moduleRef": format!("ns/{n}"), "image": "a:1",
                }))
                .expect("module")
            })
            .collect();
        DesiredState::new(modules, vec![])
    }

    fn ms(name: &str, s: RuntimeStatus) -> ModuleStatus {
        ModuleStatus {
            namespace: "ns".into(),
            name: name.into(),
            runtime_status: s,
            exit_code: None,
            restart_count: 0,
            last_start_time: None,
            last_exit_time: None,
            image_id: None,
            message: String::new(),
        }
    }

    fn now() -> Time {
        Time(jiff::Timestamp::UNIX_EPOCH)
    }

    fn cond<'a>(s: &'a EdgeDeviceStatus, t: &str) -> &'a Condition {
        edgefleet_crds::condition::find(&s.conditions, t).expect("condition")
    }

    #[test]
    fn all_running_is_ready_and_applied() {
        let d = desired(&["a", "b"]);
        let f = Facts {
            accepted: Some(&d),
            rejected: None,
            modules: vec![
                ms("a", RuntimeStatus::Running),
                ms("b", RuntimeStatus::Running),
            ],
            waiting_for: None,
            runtime_error: None,
        };
        let s = status(&f, &[], &now());
        assert_eq!(s.applied_revision.as_deref(), Some(d.revision.as_str()));
        assert_eq!(s.modules_ready.as_deref(), Some("2/2"));
        assert!(cond(&s, READY).is_true());
        assert!(cond(&s, APPLIED).is_true());
        assert_eq!(s.agent_version.as_deref(), Some(crate::VERSION));
        // Built again from the same facts, it is the same status: no write needed.
        assert_eq!(status(&f, &s.conditions, &Time(jiff::Timestamp::MAX)), s);
    }

    #[test]
    fn failing_and_rejected() {
        let d = desired(&["a", "b"]);
        let rejected = Refused {
            revision: "abcd".to_owned(),
            why: Rejection::Duplicate("x".into()),
            at_fault: Some(vec!["ns/d".to_owned()]),
        };
        let f = Facts {
            accepted: Some(&d),
            rejected: Some(&rejected),
            modules: vec![
                ms("a", RuntimeStatus::Backoff),
                ms("b", RuntimeStatus::Running),
            ],
            waiting_for: None,
            runtime_error: None,
        };
        let s = status(&f, &[], &now());
        assert_eq!(s.rejected_revision.as_deref(), Some("abcd"));
        assert_eq!(s.rejected_deployments, Some(vec!["ns/d".to_owned()]));
        assert_eq!(s.applied_revision.as_deref(), Some(d.revision.as_str()));
        let applied = cond(&s, APPLIED);
        assert_eq!(applied.reason, "Rejected");
        assert!(applied.message.contains("appears twice"));
        let ready = cond(&s, READY);
        assert_eq!(ready.reason, "ModulesFailing");
        assert_eq!(ready.message, "ns/a backoff");
        assert_eq!(s.modules_ready.as_deref(), Some("1/2"));
    }

    #[test]
    fn nothing_desired_and_runtime_down() {
        let f = Facts {
            accepted: None,
            rejected: None,
            modules: vec![],
            waiting_for: None,
            runtime_error: Some("connection refused".into()),
        };
        let s = status(&f, &[], &now());
        assert_eq!(cond(&s, APPLIED).reason, "NoDesiredState");
        assert_eq!(cond(&s, READY).reason, "RuntimeUnreachable");
        assert_eq!(s.modules_ready.as_deref(), Some("0/0"));
    }
}
