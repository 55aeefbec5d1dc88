//! The wave planner of staged rollouts. Pure: from the devices a deployment targets (which
//! revision each one has been moved to, whether it is ready there, whether it is online),
//! the rollout policy and the rollout's last status, it decides which devices move next and
//! what the rollout's status is. Everything it needs is in the API (the devices' `rollouts`
//! entries and the deployment's status), so a restarted or newly elected controller carries
//! on exactly where the last one stopped: a device is moved once per target revision, and
//! none is skipped.
//!
//! Rules:
//! - Devices move in a fixed order: canaries first (those the canary selector matches,
//!   then by name), then by name.
//! - Unavailable = moved to the target and not ready (updating or failed), online or not. A
//!   device moves only while unavailable < maxUnavailable, so a rollout never makes more
//!   devices unavailable than that.
//! - A device that is offline when its turn comes is deferred: skipped, and moved when it
//!   is back (within the same budget).
//! - Canary: the first K devices move first; the rest wait until every canary has been
//!   ready for the soak time.
//! - More failed devices than the threshold stops the rollout (Stalled), or with
//!   `onFailure: Rollback` moves every device back, in waves, to the current revision (the
//!   last one that was fully ready), then stays RolledBack until the spec changes.
//! - No device moved or became ready within the progress deadline: Stalled, while it still
//!   moves devices whenever it can.
//! - A device not moved yet is at the current revision (see `catalog::current_revision`),
//!   so a device new to the deployment runs the last good revision whatever the rollout
//!   does (stalled, paused, rolled back, or its turn not yet come), and moves on to the
//!   target in turn.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_crds::{Count, OnFailure, RevisionCount, RolloutPhase, RolloutSpec, RolloutStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The stall reasons a plan gives (`RolloutStatus::stall_reason`).
pub const FAILURE_THRESHOLD_EXCEEDED: &str = "FailureThresholdExceeded";
pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";

/// How a device is doing at the revision it was moved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Applied and every module of the deployment as desired.
    Ready,
    /// Not applied yet, or modules still starting.
    Updating,
    /// A module failed, or the agent rejected the desired state.
    Failed,
}

/// One targeted device, as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    /// The canary's selector matches it, so it moves first. Only this is kept of its
    /// labels: a copy of them for every device took a staged rollout's pass some 2 MB at
    /// 3,000 devices (`CompiledDeployment::prefers`).
    pub preferred: bool,
    pub online: bool,
    /// The revision the rollout has the device at: the one it was moved to (the entry in the
    /// device's `spec.rollouts`), or else the current one; none while the deployment has no
    /// good revision and the device has not been moved.
    pub rollout: Option<String>,
    /// Its health at that revision.
    pub health: Health,
}

/// The canary policy: how many devices go first and how long they must all be ready
/// before the waves. Which devices are the canaries first is each device's
/// [`Device::preferred`].
#[derive(Debug, Clone)]
pub struct Canary {
    pub count: Count,
    pub soak: Duration,
}

/// The rollout policy with its defaults.
#[derive(Debug, Clone)]
pub struct Policy {
    pub max_unavailable: Count,
    pub canary: Option<Canary>,
    pub paused: bool,
    pub failure_threshold: Count,
    pub on_failure: OnFailure,
    pub progress_deadline: Duration,
    /// The deployment's spec changed since the rollout's last status (a new generation,
    /// `status.observedGeneration` behind). The revision hashes only what devices run, so a
    /// change of the rollout's settings is the same revision: this is what tries a
    /// rolled-back one again, with the new settings.
    pub spec_changed: bool,
}

impl Policy {
    pub fn from_spec(spec: &RolloutSpec) -> Policy {
        let canary = spec.canary.as_ref().map(|c| Canary {
            count: c.count.clone(),
            soak: Duration::from_secs(u64::from(c.soak_seconds)),
        });
        Policy {
            max_unavailable: spec.max_unavailable.clone(),
            canary,
            paused: spec.paused,
            failure_threshold: spec.failure_threshold.clone(),
            on_failure: spec.on_failure,
            progress_deadline: Duration::from_secs(u64::from(spec.progress_deadline_seconds)),
            spec_changed: false,
        }
    }
}

/// What the planner decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Devices to move to `status.target_revision` now, in order.
    pub moves: Vec<String>,
    pub status: RolloutStatus,
    /// When to look again even if nothing changes (the soak or the deadline ends).
    pub recheck_in: Option<Duration>,
}

/// Plans one step of the rollout of revision `update` over `devices` (every device the
/// deployment targets now). `last` is the rollout's status as the API has it.
pub fn plan(
    policy: &Policy,
    update: &str,
    devices: &[Device],
    last: &RolloutStatus,
    now: Timestamp,
) -> Plan {
    let t = Tally::new(policy, update, devices, last, now);
    if t.rolling_back {
        rolling_back(&t, update, devices)
    } else if t.done {
        complete(&t, update)
    } else {
        over_failure_threshold(&t, policy, update)
            .or_else(|| paused(&t, policy, now))
            .or_else(|| canary(&t, policy, now))
            .unwrap_or_else(|| next_wave(&t, policy, now))
    }
}

/// Where the rollout stands: the target, the devices in order, what they count to, and the
/// status every phase starts from.
struct Tally<'a> {
    /// The revision devices move to: the update, or the current one while rolling back.
    target: String,
    rolling_back: bool,
    /// Every targeted device at the target and none unavailable.
    done: bool,
    order: Vec<&'a Device>,
    total: u32,
    /// Devices at the target.
    updated: u32,
    failed: u32,
    unavailable: u32,
    deferred: u32,
    max_unavailable: u32,
    /// How many more devices may become unavailable now.
    budget: usize,
    canary_since: Option<Timestamp>,
    last_progress: Timestamp,
    status: RolloutStatus,
}

impl<'a> Tally<'a> {
    fn new(
        policy: &Policy,
        update: &str,
        devices: &'a [Device],
        last: &RolloutStatus,
        now: Timestamp,
    ) -> Self {
        // A rolled-back update tried again after a spec change starts afresh, as a new
        // revision would.
        let retried = policy.spec_changed
            && matches!(
                last.phase,
                RolloutPhase::RollingBack | RolloutPhase::RolledBack
            );
        let same_update = last.update_revision == update && !retried;
        // The progress clock and the soak start only carry over within one update.
        let carried = |t: &Option<Time>| t.as_ref().filter(|_| same_update).map(|t| t.0);
        let rolling_back = same_update
            && matches!(
                last.phase,
                RolloutPhase::RollingBack | RolloutPhase::RolledBack
            )
            && !last.current_revision.is_empty();
        let target = if rolling_back {
            last.current_revision.clone()
        } else {
            update.to_owned()
        };
        let order = ordered(devices);
        let total = count_u32(devices.len());
        let moved: Vec<&Device> = order
            .iter()
            .copied()
            .filter(|d| is_at(d, &target))
            .collect();
        let ready = count_u32(moved.iter().filter(|d| d.health == Health::Ready).count());
        let failed = count_u32(moved.iter().filter(|d| d.health == Health::Failed).count());
        let updated = count_u32(moved.len());
        let unavailable = updated - ready;
        let deferred = count_u32(
            order
                .iter()
                .filter(|d| !is_at(d, &target) && !d.online)
                .count(),
        );
        let max_unavailable = policy.max_unavailable.of(total, false).max(1);
        // Progress: more devices moved or ready than the last status said.
        let last_ready = last
            .revisions
            .iter()
            .find(|r| r.revision == target)
            .map_or(0, |r| r.ready);
        let progressed = !same_update || updated > last.updated || ready > last_ready;
        let last_progress = match carried(&last.last_progress_time) {
            Some(t) if !progressed => t,
            _ => now,
        };
        let status = RolloutStatus {
            current_revision: last.current_revision.clone(),
            update_revision: update.to_owned(),
            target_revision: target.clone(),
            failed_revision: if rolling_back {
                update.to_owned()
            } else {
                String::new()
            },
            updated,
            unavailable,
            deferred,
            revisions: revision_counts(devices, &target),
            waves: waves(total, max_unavailable, policy.canary.is_some()),
            last_progress_time: Some(Time(last_progress)),
            ..Default::default()
        };
        Tally {
            rolling_back,
            done: total > 0 && moved.len() == devices.len() && unavailable == 0,
            order,
            total,
            updated,
            failed,
            unavailable,
            deferred,
            max_unavailable,
            budget: max_unavailable.saturating_sub(unavailable) as usize,
            canary_since: carried(&last.canary_ready_since),
            last_progress,
            target,
            status,
        }
    }

    /// A plan that moves nothing yet, in `phase`, saying `message`.
    fn plan(&self, phase: RolloutPhase, message: String) -> Plan {
        Plan {
            moves: Vec::new(),
            status: RolloutStatus {
                phase,
                message,
                ..self.status.clone()
            },
            recheck_in: None,
        }
    }

    /// The wave `moved` devices at the target make.
    fn wave_of(&self, moved: u32, canary: bool) -> u32 {
        moved.div_ceil(self.max_unavailable.max(1)).max(1) + u32::from(canary)
    }
}

/// Rolling back: the devices that ran the failed revision go back in waves; RolledBack
/// once none is left there.
fn rolling_back(t: &Tally, update: &str, devices: &[Device]) -> Plan {
    let target = &t.target;
    let left = still_at(devices, update);
    let mut plan = if t.done || left == 0 && t.unavailable == 0 {
        t.plan(
            RolloutPhase::RolledBack,
            format!(
                "revision {update} exceeded the failure threshold; every device moved back to {target}"
            ),
        )
    } else {
        let mut plan = t.plan(
            RolloutPhase::RollingBack,
            format!(
                "rolling back to {target}: {} devices back, {left} to go{}",
                t.updated,
                deferred_note(t.deferred)
            ),
        );
        // Only the devices that left the target go back; a device that never ran the
        // failed revision has nothing to roll back.
        plan.moves = t
            .order
            .iter()
            .filter(|d| d.online && d.rollout.as_deref() == Some(update))
            .take(t.budget)
            .map(|d| d.name.clone())
            .collect();
        plan
    };
    plan.status.wave = t.wave_of(t.updated, false);
    plan
}

/// Every device runs the update, ready: it becomes the current revision.
fn complete(t: &Tally, update: &str) -> Plan {
    let mut plan = t.plan(
        RolloutPhase::Complete,
        format!("every device runs revision {update}"),
    );
    plan.status.current_revision = update.to_owned();
    plan.status.wave = plan.status.waves;
    plan
}

/// More failed devices than the threshold: roll back (when there is an earlier revision
/// to go back to and the policy says so) or stall.
fn over_failure_threshold(t: &Tally, policy: &Policy, update: &str) -> Option<Plan> {
    let threshold = policy.failure_threshold.of(t.updated, false);
    if t.failed <= threshold {
        return None;
    }
    let why = format!(
        "{} failed devices exceed the failure threshold of {} ({threshold} of {} moved)",
        t.failed, policy.failure_threshold, t.updated
    );
    // Rolling back needs an earlier revision: the current one failing (devices that ran it
    // fine crash now) has nothing behind it to go back to.
    let current = &t.status.current_revision;
    let earlier = !current.is_empty() && current != update;
    let mut plan = if policy.on_failure == OnFailure::Rollback && earlier {
        // The next pass (this status saved) moves the devices back.
        let mut plan = t.plan(
            RolloutPhase::RollingBack,
            format!("{why}; rolling back to {current}"),
        );
        plan.status.target_revision.clone_from(current);
        plan.status.failed_revision = update.to_owned();
        plan.recheck_in = Some(Duration::ZERO);
        plan
    } else {
        let message = if policy.on_failure == OnFailure::Rollback {
            format!("{why}; no earlier revision was fully ready, nothing to roll back to")
        } else {
            why
        };
        let mut plan = t.plan(RolloutPhase::Stalled, message);
        plan.status.stall_reason = FAILURE_THRESHOLD_EXCEEDED.to_owned();
        plan
    };
    plan.status.wave = t.wave_of(t.updated, policy.canary.is_some());
    Some(plan)
}

/// `paused: true` holds the rollout where it is; the progress clock stands still.
fn paused(t: &Tally, policy: &Policy, now: Timestamp) -> Option<Plan> {
    if !policy.paused {
        return None;
    }
    let mut plan = t.plan(
        RolloutPhase::Paused,
        format!(
            "paused with {} of {} devices at {}",
            t.updated, t.total, t.target
        ),
    );
    plan.status.last_progress_time = Some(Time(now));
    plan.status.wave = t.wave_of(t.updated, policy.canary.is_some());
    Some(plan)
}

/// The canary: the first K devices of the order that can take part (online or already
/// moved) move alone, then must be ready for the soak time. `None` once they have soaked.
fn canary(t: &Tally, policy: &Policy, now: Timestamp) -> Option<Plan> {
    let canary = policy.canary.as_ref()?;
    let target = &t.target;
    let k = canary.count.of(t.total, true).clamp(1, t.total.max(1)) as usize;
    let canaries: Vec<&Device> = t
        .order
        .iter()
        .copied()
        .filter(|d| is_at(d, target) || d.online)
        .take(k)
        .collect();
    let waiting: Vec<&str> = canaries
        .iter()
        .filter(|d| d.health != Health::Ready || !is_at(d, target))
        .map(|d| d.name.as_str())
        .collect();
    if !waiting.is_empty() {
        let mut plan = t.plan(
            RolloutPhase::Canary,
            format!(
                "canary: waiting for {} to be ready at {target}",
                list(&waiting)
            ),
        );
        plan.moves = canaries
            .iter()
            .filter(|d| !is_at(d, target))
            .take(t.budget)
            .map(|d| d.name.clone())
            .collect();
        plan.status.wave = 1;
        return Some(deadline(plan, policy, now, t.last_progress));
    }
    let since = t.canary_since.unwrap_or(now);
    let soaked = now.duration_since(since).unsigned_abs();
    if soaked >= canary.soak {
        return None;
    }
    let left = canary.soak - soaked;
    let names: Vec<&str> = canaries.iter().map(|d| d.name.as_str()).collect();
    let mut plan = t.plan(
        RolloutPhase::Soaking,
        format!(
            "canary ready ({}); soaking {}s more",
            list(&names),
            left.as_secs()
        ),
    );
    plan.status.canary_ready_since = Some(Time(since));
    plan.status.wave = 1;
    plan.status.last_progress_time = Some(Time(now));
    plan.recheck_in = Some(left);
    Some(plan)
}

/// The waves: the next devices in order, online, as many as the budget allows.
fn next_wave(t: &Tally, policy: &Policy, now: Timestamp) -> Plan {
    let target = &t.target;
    let moves: Vec<String> = t
        .order
        .iter()
        .filter(|d| !is_at(d, target) && d.online)
        .take(t.budget)
        .map(|d| d.name.clone())
        .collect();
    let after_moves = t.updated + count_u32(moves.len());
    let wave = t.wave_of(after_moves, policy.canary.is_some());
    let waves = t.status.waves;
    let message = if !moves.is_empty() {
        let names: Vec<&str> = moves.iter().map(String::as_str).collect();
        format!(
            "wave {wave} of {waves}: moving {} to {target}{}",
            list(&names),
            deferred_note(t.deferred)
        )
    } else if t.unavailable > 0 {
        format!(
            "wave {wave} of {waves}: waiting for {} updating devices to be ready{}",
            t.unavailable,
            deferred_note(t.deferred)
        )
    } else {
        format!(
            "waiting for {} offline devices (deferred; they update when they return)",
            t.deferred
        )
    };
    let mut plan = t.plan(RolloutPhase::Progressing, message);
    plan.moves = moves;
    plan.status.wave = wave;
    // Past the canary, the soak start stays on record.
    if policy.canary.is_some() {
        plan.status.canary_ready_since = Some(Time(t.canary_since.unwrap_or(now)));
    }
    deadline(plan, policy, now, t.last_progress)
}

/// The progress deadline: a rollout that cannot progress reports Stalled (and keeps
/// moving devices whenever it can).
fn deadline(mut plan: Plan, policy: &Policy, now: Timestamp, last_progress: Timestamp) -> Plan {
    if !plan.moves.is_empty() {
        plan.status.last_progress_time = Some(Time(now));
        return plan;
    }
    let idle = now.duration_since(last_progress).unsigned_abs();
    if idle >= policy.progress_deadline {
        plan.status.phase = RolloutPhase::Stalled;
        plan.status.stall_reason = PROGRESS_DEADLINE_EXCEEDED.to_owned();
        plan.status.message = format!(
            "no progress for {}s (progressDeadlineSeconds {}): {}",
            idle.as_secs(),
            policy.progress_deadline.as_secs(),
            plan.status.message
        );
    } else {
        plan.recheck_in = Some(policy.progress_deadline - idle);
    }
    plan
}

fn is_at(d: &Device, revision: &str) -> bool {
    d.rollout.as_deref() == Some(revision)
}

/// How many devices are still at `revision`.
fn still_at(devices: &[Device], revision: &str) -> u32 {
    count_u32(devices.iter().filter(|d| is_at(d, revision)).count())
}

/// The order devices move in: those the canary selector prefers first, then by name.
fn ordered(devices: &[Device]) -> Vec<&Device> {
    let mut order: Vec<&Device> = devices.iter().collect();
    // `true` sorts after `false`: compare "not preferred" so the preferred come first.
    order.sort_by(|a, b| {
        (!a.preferred)
            .cmp(&!b.preferred)
            .then_with(|| a.name.cmp(&b.name))
    });
    order
}

fn revision_counts(devices: &[Device], target: &str) -> Vec<RevisionCount> {
    let mut counts: BTreeMap<&str, RevisionCount> = BTreeMap::new();
    for d in devices {
        let rev = d.rollout.as_deref().unwrap_or("");
        let c = counts.entry(rev).or_insert_with(|| RevisionCount {
            revision: rev.to_owned(),
            ..Default::default()
        });
        c.devices += 1;
        if d.health == Health::Ready {
            c.ready += 1;
        }
    }
    let mut out: Vec<RevisionCount> = counts.into_values().collect();
    // The target first, then the most devices.
    out.sort_by(|a, b| {
        (b.revision == target)
            .cmp(&(a.revision == target))
            .then_with(|| b.devices.cmp(&a.devices))
    });
    out.truncate(5);
    out
}

fn waves(total: u32, per_wave: u32, canary: bool) -> u32 {
    total.div_ceil(per_wave.max(1)).max(1) + u32::from(canary)
}

fn deferred_note(deferred: u32) -> String {
    if deferred == 0 {
        String::new()
    } else {
        format!("; {deferred} offline devices deferred")
    }
}

/// At most five names, then how many more.
fn list(names: &[&str]) -> String {
    let mut s = names.iter().take(5).copied().collect::<Vec<_>>().join(", ");
    if names.len() > 5 {
        s.push_str(&format!(" and {} more", names.len() - 5));
    }
    s
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const S: &str = "rev-stable";
    const U: &str = "rev-update";

    fn t0() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("time")
    }

    fn policy(max_unavailable: u32) -> Policy {
        Policy {
            max_unavailable: Count::Devices(max_unavailable),
            canary: None,
            paused: false,
            failure_threshold: Count::Devices(0),
            on_failure: OnFailure::Pause,
            progress_deadline: Duration::from_secs(600),
            spec_changed: false,
        }
    }

    fn fleet(names: &[&str]) -> Vec<Device> {
        names
            .iter()
            .map(|n| Device {
                name: (*n).to_owned(),
                preferred: false,
                online: true,
                rollout: Some(S.to_owned()),
                health: Health::Ready,
            })
            .collect()
    }

    fn stable() -> RolloutStatus {
        RolloutStatus {
            current_revision: S.into(),
            update_revision: S.into(),
            phase: RolloutPhase::Complete,
            ..Default::default()
        }
    }

    /// Applies a plan's moves the way the controller does: the device takes the target.
    fn apply(devices: &mut [Device], plan: &Plan) {
        for d in devices.iter_mut() {
            if plan.moves.contains(&d.name) {
                d.rollout = Some(plan.status.target_revision.clone());
                d.health = Health::Updating;
            }
        }
    }

    /// What the rollup hands the planner for devices whose `rollout` is their entry in
    /// `spec.rollouts`: one not moved yet is at the current revision.
    fn rolled_up(devices: &[Device], last: &RolloutStatus) -> Vec<Device> {
        let current = Some(last.current_revision.clone()).filter(|c| !c.is_empty());
        devices
            .iter()
            .map(|d| Device {
                rollout: d.rollout.clone().or_else(|| current.clone()),
                ..d.clone()
            })
            .collect()
    }

    fn set(devices: &mut [Device], name: &str, f: impl FnOnce(&mut Device)) {
        f(devices.iter_mut().find(|d| d.name == name).expect("device"));
    }

    #[test]
    fn one_device_at_a_time_in_name_order() {
        let mut devices = fleet(&["edge-3", "edge-1", "edge-2"]);
        let p = policy(1);
        let mut last = stable();
        let mut order = Vec::new();
        for step in 0..10 {
            let plan = plan(&p, U, &devices, &last, t0());
            assert!(plan.moves.len() <= 1, "step {step}: {:?}", plan.moves);
            order.extend(plan.moves.clone());
            apply(&mut devices, &plan);
            last = plan.status;
            // The moved device becomes ready before the next pass.
            for d in devices.iter_mut() {
                d.health = Health::Ready;
            }
            if last.phase == RolloutPhase::Complete {
                break;
            }
        }
        assert_eq!(order, ["edge-1", "edge-2", "edge-3"]);
        assert_eq!(last.phase, RolloutPhase::Complete);
        assert_eq!(last.current_revision, U);
    }

    #[test]
    fn a_wave_waits_for_the_updating_device() {
        let mut devices = fleet(&["a", "b"]);
        let first = plan(&policy(1), U, &devices, &stable(), t0());
        assert_eq!(first.moves, ["a"]);
        apply(&mut devices, &first);
        let second = plan(&policy(1), U, &devices, &first.status, t0());
        assert_eq!(second.moves, Vec::<String>::new());
        assert_eq!(second.status.unavailable, 1);
        assert!(
            second.status.message.contains("waiting for 1 updating"),
            "{}",
            second.status.message
        );
    }

    #[test]
    fn an_offline_device_is_deferred_then_moved_when_it_returns() {
        let mut devices = fleet(&["a", "b", "c"]);
        set(&mut devices, "a", |d| d.online = false);
        let mut last = stable();
        for _ in 0..6 {
            let plan = plan(&policy(1), U, &devices, &last, t0());
            assert!(
                !plan.moves.contains(&"a".to_owned()),
                "an offline device never moves"
            );
            apply(&mut devices, &plan);
            devices.iter_mut().for_each(|d| d.health = Health::Ready);
            last = plan.status;
        }
        assert_eq!(last.phase, RolloutPhase::Progressing);
        assert!(
            last.message.contains("1 offline devices"),
            "{}",
            last.message
        );
        assert_eq!(last.updated, 2);
        set(&mut devices, "a", |d| d.online = true);
        let back = plan(&policy(1), U, &devices, &last, t0());
        assert_eq!(back.moves, ["a"]);
        apply(&mut devices, &back);
        devices.iter_mut().for_each(|d| d.health = Health::Ready);
        let done = plan(&policy(1), U, &devices, &back.status, t0());
        assert_eq!(done.status.phase, RolloutPhase::Complete);
    }

    #[test]
    fn the_canary_goes_first_and_soaks() {
        let mut devices = fleet(&["a", "b", "c", "d"]);
        set(&mut devices, "c", |d| d.preferred = true);
        let mut p = policy(2);
        p.canary = Some(Canary {
            count: Count::Devices(1),
            soak: Duration::from_secs(60),
        });
        let first = plan(&p, U, &devices, &stable(), t0());
        assert_eq!(first.moves, ["c"], "the beta device is the canary");
        assert_eq!(first.status.phase, RolloutPhase::Canary);
        apply(&mut devices, &first);
        let waiting = plan(&p, U, &devices, &first.status, t0());
        assert!(waiting.moves.is_empty());
        set(&mut devices, "c", |d| d.health = Health::Ready);
        let soaking = plan(&p, U, &devices, &waiting.status, t0());
        assert_eq!(soaking.status.phase, RolloutPhase::Soaking);
        assert!(soaking.moves.is_empty());
        assert_eq!(soaking.recheck_in, Some(Duration::from_secs(60)));
        let later = t0() + jiff::SignedDuration::from_secs(30);
        let still = plan(&p, U, &devices, &soaking.status, later);
        assert_eq!(still.status.phase, RolloutPhase::Soaking);
        assert_eq!(still.recheck_in, Some(Duration::from_secs(30)));
        let after = t0() + jiff::SignedDuration::from_secs(61);
        let waves = plan(&p, U, &devices, &still.status, after);
        assert_eq!(waves.status.phase, RolloutPhase::Progressing);
        assert_eq!(waves.moves, ["a", "b"]);
    }

    #[test]
    fn a_failing_canary_resets_the_soak() {
        let mut devices = fleet(&["a", "b"]);
        let mut p = policy(1);
        p.canary = Some(Canary {
            count: Count::Devices(1),
            soak: Duration::from_secs(60),
        });
        p.failure_threshold = Count::Devices(1);
        let first = plan(&p, U, &devices, &stable(), t0());
        apply(&mut devices, &first);
        set(&mut devices, "a", |d| d.health = Health::Ready);
        let soaking = plan(&p, U, &devices, &first.status, t0());
        assert!(soaking.status.canary_ready_since.is_some());
        set(&mut devices, "a", |d| d.health = Health::Updating);
        let again = plan(&p, U, &devices, &soaking.status, t0());
        assert_eq!(again.status.phase, RolloutPhase::Canary);
        assert_eq!(again.status.canary_ready_since, None);
    }

    #[test]
    fn failures_beyond_the_threshold_roll_back_the_devices_already_moved() {
        let mut devices = fleet(&["a", "b", "c"]);
        let mut p = policy(1);
        p.on_failure = OnFailure::Rollback;
        let first = plan(&p, U, &devices, &stable(), t0());
        assert_eq!(first.moves, ["a"]);
        apply(&mut devices, &first);
        set(&mut devices, "a", |d| d.health = Health::Failed);
        let tripped = plan(&p, U, &devices, &first.status, t0());
        assert_eq!(tripped.status.phase, RolloutPhase::RollingBack);
        assert!(tripped.moves.is_empty());
        assert!(
            tripped
                .status
                .message
                .contains("exceed the failure threshold"),
            "{}",
            tripped.status.message
        );
        let back = plan(&p, U, &devices, &tripped.status, t0());
        assert_eq!(back.status.target_revision, S);
        assert_eq!(back.moves, ["a"], "only the device that moved goes back");
        apply(&mut devices, &back);
        set(&mut devices, "a", |d| d.health = Health::Ready);
        let done = plan(&p, U, &devices, &back.status, t0());
        assert_eq!(done.status.phase, RolloutPhase::RolledBack);
        assert_eq!(done.status.failed_revision, U);
        assert!(devices.iter().all(|d| d.rollout.as_deref() == Some(S)));
        // It stays rolled back, and a new revision starts over.
        let stays = plan(&p, U, &devices, &done.status, t0());
        assert_eq!(stays.status.phase, RolloutPhase::RolledBack);
        assert!(stays.moves.is_empty());
        let fresh = plan(&p, "rev-fixed", &devices, &stays.status, t0());
        assert_eq!(fresh.moves, ["a"]);
        assert_eq!(fresh.status.target_revision, "rev-fixed");
    }

    /// A change of the rollout's settings alone is no new revision (the revision hashes what
    /// devices run), so after a rollback it is the spec's new generation that tries the
    /// same revision again: afresh, its clocks restarted, and only once.
    #[test]
    fn a_rolled_back_revision_is_tried_again_when_the_spec_changes() {
        let mut devices = fleet(&["a", "b", "c"]);
        let mut p = policy(1);
        p.on_failure = OnFailure::Rollback;
        p.progress_deadline = Duration::from_secs(60);
        let first = plan(&p, U, &devices, &stable(), t0());
        apply(&mut devices, &first);
        set(&mut devices, "a", |d| d.health = Health::Failed);
        let tripped = plan(&p, U, &devices, &first.status, t0());
        let back = plan(&p, U, &devices, &tripped.status, t0());
        apply(&mut devices, &back);
        set(&mut devices, "a", |d| d.health = Health::Ready);
        let later = t0() + Duration::from_secs(3600);
        let done = plan(&p, U, &devices, &back.status, later);
        assert_eq!(done.status.phase, RolloutPhase::RolledBack);

        p.failure_threshold = Count::Devices(1);
        p.spec_changed = true;
        let again = plan(&p, U, &devices, &done.status, later);
        assert_eq!(again.status.phase, RolloutPhase::Progressing, "{again:?}");
        assert_eq!(again.moves, ["a"]);
        assert_eq!(
            (
                again.status.target_revision.as_str(),
                again.status.failed_revision.as_str()
            ),
            (U, "")
        );
        assert_eq!(
            again.status.last_progress_time,
            Some(Time(later)),
            "a fresh clock"
        );
        apply(&mut devices, &again);

        // The status written, the spec is seen: the rollout goes on from there.
        p.spec_changed = false;
        let on = plan(&p, U, &devices, &again.status, later);
        assert_eq!(on.status.phase, RolloutPhase::Progressing, "{on:?}");
        assert!(on.status.failed_revision.is_empty());
    }

    #[test]
    fn failures_with_pause_stall_and_a_percent_threshold_tolerates_some() {
        let mut devices = fleet(&["a", "b", "c", "d"]);
        let mut p = policy(4);
        let first = plan(&p, U, &devices, &stable(), t0());
        apply(&mut devices, &first);
        set(&mut devices, "b", |d| d.health = Health::Failed);
        let stalled = plan(&p, U, &devices, &first.status, t0());
        assert_eq!(stalled.status.phase, RolloutPhase::Stalled);
        assert_eq!(stalled.status.stall_reason, FAILURE_THRESHOLD_EXCEEDED);
        p.failure_threshold = Count::Percent("25%".into());
        let tolerated = plan(&p, U, &devices, &first.status, t0());
        assert_eq!(tolerated.status.phase, RolloutPhase::Progressing);
        // Rollback without an earlier fully ready revision: nothing to go back to.
        p.failure_threshold = Count::Devices(0);
        p.on_failure = OnFailure::Rollback;
        let fresh = RolloutStatus::default();
        let nowhere = plan(&p, U, &devices, &fresh, t0());
        assert_eq!(nowhere.status.phase, RolloutPhase::Stalled);
        assert!(nowhere.status.message.contains("nothing to roll back to"));
    }

    #[test]
    fn paused_holds_and_the_deadline_stalls() {
        let devices = fleet(&["a", "b"]);
        let mut p = policy(1);
        p.paused = true;
        let held = plan(&p, U, &devices, &stable(), t0());
        assert!(held.moves.is_empty());
        assert_eq!(held.status.phase, RolloutPhase::Paused);
        p.paused = false;
        let mut devices = devices;
        devices.iter_mut().for_each(|d| d.online = false);
        let waiting = plan(&p, U, &devices, &held.status, t0());
        assert_eq!(waiting.status.phase, RolloutPhase::Progressing);
        assert_eq!(waiting.recheck_in, Some(Duration::from_secs(600)));
        let late = t0() + jiff::SignedDuration::from_secs(601);
        let stalled = plan(&p, U, &devices, &waiting.status, late);
        assert_eq!(stalled.status.phase, RolloutPhase::Stalled);
        assert_eq!(stalled.status.stall_reason, PROGRESS_DEADLINE_EXCEEDED);
        assert!(
            stalled.status.message.contains("no progress for 601s"),
            "{}",
            stalled.status.message
        );
    }

    #[test]
    fn a_restart_continues_from_the_status_and_the_devices() {
        // A new controller knows only what the API holds: the devices' rollouts and the
        // status as stored (through JSON). Mid-soak, it must not soak again, and it must
        // not move the canary twice.
        let mut devices = fleet(&["a", "b", "c"]);
        let mut p = policy(1);
        p.canary = Some(Canary {
            count: Count::Devices(1),
            soak: Duration::from_secs(60),
        });
        let first = plan(&p, U, &devices, &stable(), t0());
        assert_eq!(first.moves, ["a"]);
        apply(&mut devices, &first);
        set(&mut devices, "a", |d| d.health = Health::Ready);
        let ready_at = t0() + jiff::SignedDuration::from_secs(10);
        let soaking = plan(&p, U, &devices, &first.status, ready_at);
        assert_eq!(soaking.status.phase, RolloutPhase::Soaking);
        let stored: RolloutStatus =
            serde_json::from_value(serde_json::to_value(&soaking.status).expect("json"))
                .expect("status");
        let after_soak = ready_at + jiff::SignedDuration::from_secs(61);
        let restarted = plan(&p, U, &devices, &stored, after_soak);
        assert_eq!(restarted.status.phase, RolloutPhase::Progressing);
        assert_eq!(restarted.moves, ["b"], "the soak is over, the canary stays");
    }

    /// Devices that ran the current revision fine crash now: there is nothing earlier to
    /// roll back to, so the rollout stalls instead of "rolling back" to the same revision.
    #[test]
    fn a_failing_current_revision_stalls_instead_of_rolling_back_to_itself() {
        let mut p = policy(1);
        p.on_failure = OnFailure::Rollback;
        let mut devices = fleet(&["a", "b"]);
        set(&mut devices, "a", |d| d.health = Health::Failed);
        let plan = plan(&p, S, &devices, &stable(), t0());
        assert_eq!(plan.status.phase, RolloutPhase::Stalled);
        assert!(plan.moves.is_empty());
    }

    /// Many random fleets, each through a whole rollout with devices going offline and
    /// coming back, updates finishing at random and some failing: the unavailable count
    /// never exceeds maxUnavailable, no device moves twice to the same revision, and with
    /// no failures every rollout completes once all devices are back.
    #[test]
    fn property_unavailable_never_exceeds_max_unavailable() {
        for seed in 0..400u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let n = rng.usize(1..40);
            let names: Vec<String> = (0..n).map(|i| format!("dev-{i:02}")).collect();
            let mut devices: Vec<Device> = names
                .iter()
                .map(|name| Device {
                    name: name.clone(),
                    // A quarter of them the canary's selector matches, if there is one.
                    preferred: rng.u8(0..4) == 0,
                    online: rng.u8(0..5) != 0,
                    rollout: if rng.bool() { Some(S.to_owned()) } else { None },
                    health: Health::Ready,
                })
                .collect();
            let mut p = policy(0);
            p.max_unavailable = if rng.bool() {
                Count::Devices(rng.u32(1..6))
            } else {
                Count::Percent(format!("{}%", rng.u32(1..60)))
            };
            if rng.bool() {
                p.canary = Some(Canary {
                    count: Count::Devices(rng.u32(1..4)),
                    soak: Duration::from_secs(5),
                });
            } else {
                devices.iter_mut().for_each(|d| d.preferred = false);
            }
            let failures = rng.u8(0..3) == 0;
            p.failure_threshold = Count::Devices(n as u32);
            let max = p.max_unavailable.of(n as u32, false).max(1);
            let mut last = stable();
            let mut now = t0();
            let mut moves: BTreeSet<(String, String)> = BTreeSet::new();
            for step in 0..2000 {
                let plan = plan(&p, U, &rolled_up(&devices, &last), &last, now);
                for m in &plan.moves {
                    assert!(
                        moves.insert((m.clone(), plan.status.target_revision.clone())),
                        "seed {seed} step {step}: {m} moved twice"
                    );
                    let d = devices.iter().find(|d| &d.name == m).expect("device");
                    assert!(d.online, "seed {seed}: offline {m} moved");
                }
                apply(&mut devices, &plan);
                let unavailable = devices
                    .iter()
                    .filter(|d| d.rollout.as_deref() == Some(U) && d.health != Health::Ready)
                    .count() as u32;
                assert!(
                    unavailable <= max,
                    "seed {seed} step {step}: {unavailable} unavailable > {max}"
                );
                last = plan.status;
                if last.phase == RolloutPhase::Complete {
                    break;
                }
                // The world moves on: updates finish (some fail), links come and go; after
                // step 1000 every device is back for good.
                for d in devices.iter_mut() {
                    if d.rollout.as_deref() == Some(U)
                        && d.health == Health::Updating
                        && rng.u8(0..3) == 0
                    {
                        d.health = if failures && rng.u8(0..10) == 0 {
                            Health::Failed
                        } else {
                            Health::Ready
                        };
                    }
                    if step < 1000 && rng.u8(0..10) == 0 {
                        d.online = !d.online;
                    } else if step >= 1000 {
                        d.online = true;
                    }
                }
                now += jiff::SignedDuration::from_secs(1);
            }
            if !failures {
                assert_eq!(
                    last.phase,
                    RolloutPhase::Complete,
                    "seed {seed}: {}",
                    last.message
                );
                assert!(devices.iter().all(|d| d.rollout.as_deref() == Some(U)));
            }
        }
    }

    /// Issue 12's starvation: random event sequences (devices entering and leaving the
    /// selector, failures and rejections, links going down, pauses, rollbacks, new
    /// revisions) never leave a targeted device without a revision of the deployment, once
    /// one was good: after every step each targeted device is at some revision, and never
    /// at one the rollout gave up on while it is rolled back.
    #[test]
    fn property_every_targeted_device_keeps_some_revision() {
        let revisions = ["rev-u1", "rev-u2", "rev-u3"];
        for seed in 0..300u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let universe: Vec<String> = (0..rng.usize(1..25))
                .map(|i| format!("dev-{i:02}"))
                .collect();
            let mut devices = fleet(&universe.iter().map(String::as_str).collect::<Vec<_>>());
            let mut p = policy(rng.u32(1..4));
            p.on_failure = if rng.bool() {
                OnFailure::Rollback
            } else {
                OnFailure::Pause
            };
            p.failure_threshold = Count::Devices(rng.u32(0..2));
            let mut last = stable();
            let mut update = revisions[0];
            let mut now = t0();
            for step in 0..600 {
                let plan = plan(&p, update, &rolled_up(&devices, &last), &last, now);
                apply(&mut devices, &plan);
                last = plan.status;
                for d in &rolled_up(&devices, &last) {
                    assert!(
                        d.rollout.is_some(),
                        "seed {seed} step {step}: {} runs nothing ({:?}: {})",
                        d.name,
                        last.phase,
                        last.message
                    );
                    if last.phase == RolloutPhase::RolledBack {
                        assert_ne!(
                            d.rollout.as_deref(),
                            Some(last.failed_revision.as_str()),
                            "seed {seed} step {step} {}: {last:?}",
                            d.name
                        );
                    }
                }
                // The world moves on.
                for d in devices.iter_mut() {
                    if d.health == Health::Updating && rng.u8(0..3) == 0 {
                        d.health = if rng.u8(0..6) == 0 {
                            Health::Failed
                        } else {
                            Health::Ready
                        };
                    }
                    if rng.u8(0..15) == 0 {
                        d.online = !d.online;
                    }
                }
                match rng.u8(0..40) {
                    // A device leaves the selector: its rollout entry is forgotten.
                    0 if !devices.is_empty() => {
                        devices.remove(rng.usize(0..devices.len()));
                    }
                    // A device (back) in the selector arrives with nothing.
                    1 => {
                        let name = &universe[rng.usize(0..universe.len())];
                        if devices.iter().all(|d| &d.name != name) {
                            devices.push(Device {
                                name: name.clone(),
                                preferred: false,
                                online: rng.bool(),
                                rollout: None,
                                health: Health::Updating,
                            });
                        }
                    }
                    2 => p.paused = !p.paused,
                    // A new spec.
                    3 => update = revisions[rng.usize(0..revisions.len())],
                    _ => {}
                }
                now += jiff::SignedDuration::from_secs(1);
            }
        }
    }
}
