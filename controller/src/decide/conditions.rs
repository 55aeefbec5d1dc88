//! A deployment's conditions, decided in one place. Exactly one of the kstatus conditions
//! Ready, Reconciling and Stalled is True, and all three carry the same reason; which one,
//! and why, is the first row of [`ROWS`] that applies, most urgent first. (Flux folds its
//! conditions into Ready the same way: one table, written once.) Conflicted, a tie at the
//! same priority, is told beside them. Pure.

use edgefleet_crds::condition::{Condition, ConditionStatus};
use edgefleet_crds::{RolloutPhase, RolloutStatus};

use crate::decide::catalog::SpecProblem;
use crate::decide::rollup::Rollup;

pub use edgefleet_crds::deployment::conditions::{CONFLICTED, READY, RECONCILING, STALLED};

/// Which of the three kstatus conditions is True.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Ready,
    Reconciling,
    Stalled,
}

/// What a row decides: the state, its reason and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: State,
    pub reason: String,
    pub message: String,
}

/// Everything the rows read.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub problems: &'a [SpecProblem],
    pub rollup: &'a Rollup,
    pub rollout: Option<&'a RolloutStatus>,
}

type Row = fn(&Facts, &str) -> Option<Verdict>;

/// The rows, most urgent first. Each gets the facts and the progress line (counts of the
/// targeted devices) and says whether it applies.
pub const ROWS: [Row; 9] = [
    spec_problems,
    rollout_stopped,
    over_device_budget,
    modules_failed,
    outranked,
    rollout_moving,
    devices_pending,
    devices_starting,
    all_ready,
];

/// A spec the controller holds: devices keep what the deployment gave them before.
fn spec_problems(f: &Facts, _: &str) -> Option<Verdict> {
    let first = f.problems.first()?;
    let all = f
        .problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ");
    Some(stalled(
        first.reason(),
        format!("{all}; devices keep what this deployment gave them before"),
    ))
}

/// A staged rollout that stopped (failure threshold, progress deadline) or went back.
fn rollout_stopped(f: &Facts, _: &str) -> Option<Verdict> {
    let rollout = f.rollout?;
    let reason = match rollout.phase {
        RolloutPhase::Stalled => rollout.stall_reason.as_str(),
        RolloutPhase::RollingBack | RolloutPhase::RolledBack => rollout.phase.as_str(),
        _ => return None,
    };
    Some(stalled(reason, rollout_message(rollout)))
}

/// Devices that can't take the deployment's modules within their budget.
fn over_device_budget(f: &Facts, progress: &str) -> Option<Verdict> {
    let r = f.rollup;
    if r.over_budget == 0 {
        return None;
    }
    let sample = r
        .failures
        .iter()
        .find(|s| s.module.is_empty())
        .map(|s| format!("{}: {}", s.device, s.reason))
        .unwrap_or_default();
    Some(stalled(
        "OverDeviceBudget",
        format!(
            "{progress}; {} devices can't take its modules: {sample}",
            r.over_budget
        ),
    ))
}

fn modules_failed(f: &Facts, progress: &str) -> Option<Verdict> {
    let r = f.rollup;
    if r.failed == 0 {
        return None;
    }
    let sample = r
        .failures
        .iter()
        .take(3)
        .map(|s| format!("{}/{}: {}", s.device, s.module, s.reason))
        .collect::<Vec<_>>()
        .join("; ");
    Some(stalled("ModulesFailed", format!("{progress}; {sample}")))
}

/// Within a namespace, losing devices to a higher priority is the team's own design; losing
/// them to another team is news the team must see.
fn outranked(f: &Facts, progress: &str) -> Option<Verdict> {
    let r = f.rollup;
    if r.outranked_by.is_empty() {
        return None;
    }
    let winners = r
        .outranked_by
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    Some(stalled(
        "Outranked",
        format!(
            "{progress}; {} matching devices run another deployment instead, from another namespace among them: {winners}",
            r.lost
        ),
    ))
}

/// A staged rollout on its way (progressing, canary, soaking or paused).
fn rollout_moving(f: &Facts, _: &str) -> Option<Verdict> {
    let rollout = f.rollout?;
    match rollout.phase {
        RolloutPhase::Complete
        | RolloutPhase::Stalled
        | RolloutPhase::RollingBack
        | RolloutPhase::RolledBack => None,
        phase => Some(Verdict {
            state: State::Reconciling,
            reason: phase.as_str().to_owned(),
            message: rollout_message(rollout),
        }),
    }
}

fn devices_pending(f: &Facts, progress: &str) -> Option<Verdict> {
    let pending = f.rollup.pending;
    (pending > 0).then(|| {
        progressing(format!(
            "{progress}; {pending} devices not yet updated with the current spec"
        ))
    })
}

fn devices_starting(f: &Facts, progress: &str) -> Option<Verdict> {
    (f.rollup.ready < f.rollup.targeted).then(|| progressing(progress.to_owned()))
}

fn all_ready(f: &Facts, progress: &str) -> Option<Verdict> {
    let message = if f.rollup.targeted == 0 {
        "no device is targeted".to_owned()
    } else {
        progress.to_owned()
    };
    Some(Verdict {
        state: State::Ready,
        reason: "AllReady".to_owned(),
        message,
    })
}

fn stalled(reason: &str, message: String) -> Verdict {
    Verdict {
        state: State::Stalled,
        reason: reason.to_owned(),
        message,
    }
}

fn progressing(message: String) -> Verdict {
    Verdict {
        state: State::Reconciling,
        reason: "Progressing".to_owned(),
        message,
    }
}

fn rollout_message(rollout: &RolloutStatus) -> String {
    format!("rollout {}: {}", rollout.phase.as_str(), rollout.message)
}

/// The first row that applies.
pub fn verdict(f: &Facts) -> Verdict {
    let r = f.rollup;
    let progress = format!(
        "{} of {} targeted devices ready, {} applied, {} failed, {} deferred (offline)",
        r.ready, r.targeted, r.applied, r.failed, r.deferred
    );
    ROWS.iter()
        .find_map(|row| row(f, &progress))
        .expect("the last row always applies")
}

/// The deployment's conditions, each observing `generation`. Transition times are left for
/// the caller to carry over from the current status.
pub fn conditions(generation: Option<i64>, f: &Facts) -> Vec<Condition> {
    let v = verdict(f);
    let cond = |type_: &str, on: bool, reason: &str, message: String| {
        let mut c = Condition::new(type_, ConditionStatus::from_bool(on), reason, message);
        c.observed_generation = generation;
        c
    };
    // Ready always says why; the other two only when True.
    let only_if = |on: bool| if on { v.message.clone() } else { String::new() };
    let reconciling = v.state == State::Reconciling;
    let stalled = v.state == State::Stalled;
    let mut conds = vec![
        cond(READY, v.state == State::Ready, &v.reason, v.message.clone()),
        cond(RECONCILING, reconciling, &v.reason, only_if(reconciling)),
        cond(STALLED, stalled, &v.reason, only_if(stalled)),
    ];
    let r = f.rollup;
    if !r.tied_with.is_empty() {
        let winners = r.tied_with.iter().cloned().collect::<Vec<_>>().join(", ");
        conds.push(cond(
            CONFLICTED,
            true,
            "PriorityTie",
            format!(
                "ties at the same priority with {winners}, which win by namespace/name order on {} devices",
                r.lost
            ),
        ));
    }
    conds
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::rollout::PROGRESS_DEADLINE_EXCEEDED;

    fn counts(targeted: u32, ready: u32, failed: u32) -> Rollup {
        Rollup {
            targeted,
            applied: ready + failed,
            ready,
            failed,
            ..Default::default()
        }
    }

    fn rollout(phase: RolloutPhase, stall_reason: &str) -> RolloutStatus {
        RolloutStatus {
            phase,
            stall_reason: stall_reason.to_owned(),
            message: "waiting".to_owned(),
            ..Default::default()
        }
    }

    /// A name, the facts (problems, rollup, rollout) and the state and reason expected.
    type Case<'a> = (
        &'a str,
        &'a [SpecProblem],
        Rollup,
        Option<&'a RolloutStatus>,
        State,
        &'a str,
    );

    /// Every row of the table, and which wins when several apply.
    #[test]
    fn the_most_urgent_row_decides() {
        use State::*;
        let problem = [SpecProblem::DuplicateModule("a".into())];
        let stalled_rollout = rollout(RolloutPhase::Stalled, PROGRESS_DEADLINE_EXCEEDED);
        let rolled_back = rollout(RolloutPhase::RolledBack, "");
        let canary = rollout(RolloutPhase::Canary, "");
        let complete = rollout(RolloutPhase::Complete, "");
        let over_budget = Rollup {
            over_budget: 1,
            ..counts(3, 2, 1)
        };
        let outranked = Rollup {
            outranked_by: ["team-b/x".to_owned()].into(),
            ..counts(3, 3, 0)
        };
        let pending = Rollup {
            pending: 1,
            ..counts(3, 3, 0)
        };
        let none: &[SpecProblem] = &[];
        let cases: [Case; 13] = [
            ("all ready", none, counts(3, 3, 0), None, Ready, "AllReady"),
            (
                "nothing targeted",
                none,
                counts(0, 0, 0),
                None,
                Ready,
                "AllReady",
            ),
            (
                "starting",
                none,
                counts(3, 1, 0),
                None,
                Reconciling,
                "Progressing",
            ),
            ("pending", none, pending, None, Reconciling, "Progressing"),
            (
                "failed",
                none,
                counts(3, 2, 1),
                None,
                Stalled,
                "ModulesFailed",
            ),
            (
                "over budget",
                none,
                over_budget,
                None,
                Stalled,
                "OverDeviceBudget",
            ),
            ("outranked", none, outranked, None, Stalled, "Outranked"),
            (
                "bad spec",
                &problem,
                counts(3, 3, 0),
                None,
                Stalled,
                "DuplicateModule",
            ),
            (
                "a bad spec outweighs a stopped rollout",
                &problem,
                counts(3, 3, 0),
                Some(&rolled_back),
                Stalled,
                "DuplicateModule",
            ),
            (
                "a stopped rollout outweighs failures",
                none,
                counts(3, 2, 1),
                Some(&stalled_rollout),
                Stalled,
                PROGRESS_DEADLINE_EXCEEDED,
            ),
            (
                "rolled back",
                none,
                counts(3, 3, 0),
                Some(&rolled_back),
                Stalled,
                "RolledBack",
            ),
            (
                "failures outweigh a moving rollout",
                none,
                counts(3, 2, 1),
                Some(&canary),
                Stalled,
                "ModulesFailed",
            ),
            (
                "canary",
                none,
                counts(3, 3, 0),
                Some(&canary),
                Reconciling,
                "Canary",
            ),
        ];
        for (name, problems, rollup, rollout, state, reason) in cases {
            let f = Facts {
                problems,
                rollup: &rollup,
                rollout,
            };
            let v = verdict(&f);
            assert_eq!((v.state, v.reason.as_str()), (state, reason), "{name}");
            let conds = conditions(Some(7), &f);
            let on: Vec<_> = conds.iter().filter(|c| c.is_true()).collect();
            assert_eq!(on.len(), 1, "{name}: exactly one is True");
            assert!(conds.iter().all(|c| c.reason == reason), "{name}");
            assert!(conds.iter().all(|c| c.observed_generation == Some(7)));
        }
        let done = Facts {
            problems: none,
            rollup: &counts(3, 3, 0),
            rollout: Some(&complete),
        };
        assert_eq!(verdict(&done).state, Ready, "a complete rollout is ready");
    }

    #[test]
    fn ready_always_says_why_the_others_only_when_true() {
        let r = counts(3, 1, 0);
        let conds = conditions(
            None,
            &Facts {
                problems: &[],
                rollup: &r,
                rollout: None,
            },
        );
        let message = |t: &str| {
            conds
                .iter()
                .find(|c| c.type_ == t)
                .map(|c| c.message.clone())
                .expect(t)
        };
        assert!(message(READY).starts_with("1 of 3 targeted devices ready"));
        assert_eq!(message(RECONCILING), message(READY));
        assert_eq!(message(STALLED), "");
    }
}
