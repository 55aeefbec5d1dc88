//! How often the fleet's agents renew their Leases, and so how long a device may be silent
//! before it is offline. Each renewal is a write, and at a fixed interval their rate grows
//! with the fleet: the chart's 10 s is 1,000 writes a second at 10,000 devices, more than
//! half of what an apiserver on two cores takes, before the fleet has done anything. So the
//! controller stretches the interval with the fleet, in whole multiples of the agents'
//! configured one, to keep the fleet's renewals within a budget a second
//! (`--renewal-budget`), and the offline threshold with it. It writes the interval on each
//! device's Lease (`edgefleet_crds::renewal`), where the agent reads it.
//!
//! A small fleet keeps the configured interval and writes nothing new. A growing fleet's
//! new devices get the longer interval at once, in the Lease their registration writes
//! anyway; every other Lease is written once the fleet has held its size for [`HOLD`]
//! ([`Pace::follow`]), so that 10,000 devices enrolled at once have their Leases written
//! once, after, not at every thousand. The first pace is taken from the whole fleet when
//! the controller starts: a restart finds the Leases at the pace they have, and writes
//! none ([`Pace::first`]). A shrinking fleet gets a shorter interval only well below the budget
//! ([`stretch`]) and a minute after it needs it, and while agents still renew at the longer
//! one, its threshold holds ([`Pace::offline_threshold`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgefleet_crds::renewal::MAX_RENEW_EVERY;

/// How much more a fleet must shrink than the shorter interval needs before it gets it: a
/// fleet at the edge of the budget would otherwise have every Lease written back and forth.
const SHRINK_MARGIN: f64 = 1.25;

/// How long a fleet must need a new pace before every Lease is written at it.
pub const HOLD: Duration = Duration::from_secs(60);

/// The stretch (a whole multiple of the agents' `interval`) at which `devices` renew at
/// most `budget` times a second, given the one in effect. It grows as soon as the fleet
/// needs it; it shrinks only once the fleet is [`SHRINK_MARGIN`] times below what the
/// shorter stretch allows. Never past `max`.
pub fn stretch(devices: usize, budget: f64, interval: Duration, current: u32, max: u32) -> u32 {
    let per_stretch = budget * interval.as_secs_f64();
    let need = |devices: f64| {
        // Saturates: a float past u32's range casts to u32::MAX.
        ((devices / per_stretch).ceil() as u32).clamp(1, max)
    };
    let up = need(devices as f64);
    if up > current {
        return up;
    }
    need(devices as f64 * SHRINK_MARGIN).min(current)
}

/// The longest stretch of `interval` the agents heed (`MAX_RENEW_EVERY`), at least one.
pub fn max_stretch(interval: Duration) -> u32 {
    let most = MAX_RENEW_EVERY.as_secs_f64() / interval.as_secs_f64().max(1.0);
    (most.floor() as u32).max(1)
}

/// The interval at least half of the fleet's Leases carry (each one's `written`, the
/// agents' own where none is): what a controller that starts finds its agents following.
/// Not the longest: a device may write its own Lease, and one Lease saying an hour must
/// not make the whole fleet's silence go unseen for hours.
pub fn written_on_most(mut written: Vec<Duration>) -> Option<Duration> {
    written.sort_unstable();
    let middle = written.len().checked_sub(1)? / 2;
    written.get(middle).copied()
}

/// The fleet's pace, shared by the registry (which writes it on the Leases) and the device
/// reconcile (which judges presence by it).
#[derive(Debug)]
pub struct Pace {
    /// The agents' configured interval (`--lease-interval`).
    interval: Duration,
    /// The offline threshold at that interval (`--offline-threshold`).
    threshold: Duration,
    /// Renewals a second the fleet may send (`--renewal-budget`).
    budget: f64,
    max: u32,
    state: Mutex<State>,
}

/// What the registry writes on a device's Lease at the pace in effect.
#[derive(Debug, Clone, Copy)]
pub struct LeasePace {
    /// The Lease's duration: the offline threshold at the stretch in effect, what someone
    /// reading a Lease may take for its life.
    pub lasts: Duration,
    /// The interval to write on it (none while the agents' own holds).
    pub every: Option<Duration>,
    /// The pace grew and every Lease is to be written at it once the fleet holds its size:
    /// a registered device's Lease at an earlier pace waits for that pass, so that a mass
    /// enrolment writes each Lease once after it rather than at every look in between.
    pub written_later: bool,
}

#[derive(Debug, Clone, Copy)]
struct State {
    stretch: u32,
    /// Whether the first pace was chosen.
    decided: bool,
    /// A shorter stretch the fleet needs, and since when.
    pending: Option<(u32, Instant)>,
    /// Since when the stretch is one not yet written on every Lease (it grew).
    unwritten: Option<Instant>,
    /// A longer stretch given up, and until when its threshold still holds: its agents
    /// renew at its interval until their next renewal's answer tells them the new one.
    longer: Option<(u32, Instant)>,
}

impl Pace {
    pub fn new(interval: Duration, threshold: Duration, budget: f64) -> Pace {
        Pace {
            interval,
            threshold,
            budget,
            max: max_stretch(interval),
            state: Mutex::new(State {
                stretch: 1,
                decided: false,
                pending: None,
                unwritten: None,
                longer: None,
            }),
        }
    }

    fn state(&self) -> State {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Follows the fleet's size; whether every Lease is to be written now. The first call
    /// takes what `devices` need, which the registry's first pass writes. A longer stretch
    /// is taken at once (the Leases registered from now on carry it, and the threshold
    /// covers them), and written on every Lease once it has held for [`HOLD`]; a shorter one
    /// is taken, and written, once the fleet has needed it that long.
    pub fn follow(&self, devices: usize, now: Instant) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let next = stretch(devices, self.budget, self.interval, s.stretch, self.max);
        if !std::mem::replace(&mut s.decided, true) {
            s.stretch = next;
            return false;
        }
        if next > s.stretch {
            s.stretch = next;
            s.pending = None;
            s.unwritten = Some(now);
            return false;
        }
        if next < s.stretch {
            match s.pending {
                Some((wanted, since)) if wanted == next => {
                    if now.saturating_duration_since(since) >= HOLD {
                        // An agent learns the shorter interval at its next renewal, which
                        // may come two of the longer intervals after its last (put off by
                        // status writes): twice the longer threshold covers that and the
                        // Leases' writing.
                        let longest = s.longer.map_or(s.stretch, |(l, _)| l.max(s.stretch));
                        s.longer = Some((longest, now + self.threshold * longest * 2));
                        s.stretch = next;
                        s.pending = None;
                        s.unwritten = None;
                        return true;
                    }
                }
                _ => s.pending = Some((next, now)),
            }
        } else {
            s.pending = None;
        }
        match s.unwritten {
            Some(since) if now.saturating_duration_since(since) >= HOLD => {
                s.unwritten = None;
                true
            }
            _ => false,
        }
    }

    /// Chooses the first pace from the fleet `seen` gives (its size, and the interval most
    /// of its Leases carry, [`written_on_most`]), unless one was chosen. Agents following a
    /// longer interval than the new pace's (a controller started with a larger budget, or
    /// over a fleet that shrank while none ran) are judged by its threshold a while, as
    /// when a fleet shrinks under a running controller.
    pub fn first(&self, seen: impl FnOnce() -> (usize, Option<Duration>), now: Instant) {
        if self.state().decided {
            return;
        }
        let (devices, on_most) = seen();
        self.follow(devices, now);
        let written = on_most.map_or(1, |every| {
            let stretch = (every.as_secs_f64() / self.interval.as_secs_f64()).ceil();
            (stretch as u32).clamp(1, self.max)
        });
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if written > s.stretch {
            s.longer = Some((written, now + self.threshold * written * 2));
        }
    }

    /// The Lease the registry writes, from one look at the pace.
    pub fn lease(&self) -> LeasePace {
        let s = self.state();
        LeasePace {
            lasts: self.threshold * s.stretch,
            every: (s.stretch > 1).then(|| self.interval * s.stretch),
            written_later: s.unwritten.is_some(),
        }
    }

    /// How often the agents are to renew.
    pub fn every(&self) -> Duration {
        self.interval * self.state().stretch
    }

    /// The Leases' duration.
    pub fn lease_duration(&self) -> Duration {
        self.lease().lasts
    }

    /// How long a device may be silent at `now` before it is offline: the threshold at the
    /// stretch in effect, or at a longer one given up a moment ago.
    pub fn offline_threshold(&self, now: Instant) -> Duration {
        let s = self.state();
        let longer = s
            .longer
            .filter(|&(_, until)| now < until)
            .map_or(1, |(l, _)| l);
        self.threshold * s.stretch.max(longer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN_S: Duration = Duration::from_secs(10);

    #[test]
    fn a_fleet_within_the_budget_keeps_the_agents_interval() {
        assert_eq!(stretch(0, 100.0, TEN_S, 1, 360), 1);
        assert_eq!(stretch(1_000, 100.0, TEN_S, 1, 360), 1);
        assert_eq!(stretch(1_001, 100.0, TEN_S, 1, 360), 2);
        // 10,000 devices at 100 a second: every 100 s.
        assert_eq!(stretch(10_000, 100.0, TEN_S, 1, 360), 10);
        assert_eq!(stretch(10_000, 100.0, Duration::from_secs(40), 1, 90), 3);
    }

    /// A fleet that hovers about the budget's edge does not have every Lease written each
    /// time it crosses it: it shrinks back only a quarter below.
    #[test]
    fn a_fleet_at_the_edge_does_not_flap() {
        assert_eq!(stretch(1_001, 100.0, TEN_S, 1, 360), 2);
        assert_eq!(stretch(1_000, 100.0, TEN_S, 2, 360), 2);
        assert_eq!(stretch(801, 100.0, TEN_S, 2, 360), 2);
        assert_eq!(stretch(800, 100.0, TEN_S, 2, 360), 1);
        assert_eq!(stretch(5_000, 100.0, TEN_S, 10, 360), 7);
    }

    /// Neither a tiny budget nor a huge fleet asks agents for more than `MAX_RENEW_EVERY`.
    #[test]
    fn the_interval_has_a_ceiling() {
        assert_eq!(max_stretch(TEN_S), 360);
        assert_eq!(max_stretch(Duration::from_secs(7200)), 1);
        assert_eq!(max_stretch(Duration::ZERO), 3600);
        assert_eq!(stretch(usize::MAX, 0.001, TEN_S, 1, 360), 360);
    }

    const SECOND: Duration = Duration::from_secs(1);

    /// A controller that starts takes the pace its whole fleet needs at once: the Leases
    /// of a fleet it paced before are at that pace already, and nothing is written.
    #[test]
    fn the_first_pace_is_the_whole_fleets() {
        let t0 = Instant::now();
        let small = Pace::new(TEN_S, Duration::from_secs(40), 100.0);
        small.first(|| (500, None), t0);
        assert_eq!(small.lease().every, None, "the agents' own interval");
        assert_eq!(small.lease_duration(), Duration::from_secs(40));
        let large = Pace::new(TEN_S, Duration::from_secs(40), 100.0);
        large.first(|| (3_000, None), t0);
        large.first(|| unreachable!("chosen once"), t0);
        assert_eq!(large.lease().every, Some(Duration::from_secs(30)));
        assert_eq!(large.every(), Duration::from_secs(30));
        assert_eq!(large.lease_duration(), Duration::from_secs(120));
        assert_eq!(large.offline_threshold(t0), Duration::from_secs(120));
        assert!(!large.follow(3_000, t0 + HOLD * 2), "no change, no writes");
    }

    /// 10,000 devices enrolled at once: each new device's Lease carries the interval the
    /// fleet needs when it registers, and every Lease is written once, a minute after the
    /// fleet stopped growing, not at every thousand.
    #[test]
    fn a_growing_fleet_has_its_leases_written_once_it_stops_growing() {
        let pace = Pace::new(TEN_S, Duration::from_secs(40), 100.0);
        let t0 = Instant::now();
        pace.first(|| (0, None), t0);
        let mut writes = 0;
        for (i, devices) in (1_000..10_000).step_by(1_500).enumerate() {
            let at = t0 + SECOND * 10 * u32::try_from(i).expect("a few");
            writes += usize::from(pace.follow(devices, at));
        }
        assert_eq!(writes, 0, "still enrolling");
        assert_eq!(
            pace.lease().every,
            Some(Duration::from_secs(90)),
            "for 8,500"
        );
        assert!(
            pace.lease().written_later,
            "earlier Leases wait for the pass"
        );
        let grown = t0 + SECOND * 70;
        assert!(!pace.follow(10_000, grown));
        assert_eq!(pace.lease().every, Some(Duration::from_secs(100)));
        assert_eq!(pace.offline_threshold(grown), Duration::from_secs(400));
        assert!(!pace.follow(10_000, grown + HOLD - SECOND));
        assert!(pace.follow(10_000, grown + HOLD), "every Lease, once");
        assert!(!pace.lease().written_later, "the pass writes them");
        assert!(!pace.follow(10_000, grown + HOLD * 2));
    }

    /// A controller that starts over Leases written at a longer interval than its pace
    /// (its budget was raised) judges their agents by the longer threshold a while: they
    /// renew every 100 s until their rewritten Lease's answer tells them 10 s.
    #[test]
    fn a_controller_that_starts_over_longer_intervals_judges_by_them_a_while() {
        let pace = Pace::new(TEN_S, Duration::from_secs(40), 1_000.0);
        let t0 = Instant::now();
        pace.first(|| (10_000, Some(Duration::from_secs(100))), t0);
        assert_eq!(
            pace.lease().every,
            None,
            "10,000 within a budget of 1,000 a second"
        );
        assert_eq!(pace.offline_threshold(t0), Duration::from_secs(400));
        let after = t0 + Duration::from_secs(800);
        assert_eq!(pace.offline_threshold(after), Duration::from_secs(40));
        let shorter = Pace::new(TEN_S, Duration::from_secs(40), 100.0);
        shorter.first(|| (10_000, Some(Duration::from_secs(20))), t0);
        assert_eq!(shorter.offline_threshold(t0), Duration::from_secs(400));
    }

    /// A device may write its own Lease: an hour on one Lease, or on fewer than half, is
    /// not what the fleet follows, and can't hold every device online for hours.
    #[test]
    fn a_forged_interval_on_a_few_leases_does_not_pace_the_fleet() {
        let secs = Duration::from_secs;
        let fleet = |forged: usize, honest: usize, every: Duration| {
            let mut w = vec![secs(3600); forged];
            w.extend(std::iter::repeat_n(every, honest));
            written_on_most(w)
        };
        assert_eq!(fleet(1, 9_999, secs(110)), Some(secs(110)));
        assert_eq!(fleet(1, 1, TEN_S), Some(TEN_S), "one of two");
        assert_eq!(fleet(4_999, 5_001, TEN_S), Some(TEN_S));
        assert_eq!(fleet(0, 3, secs(100)), Some(secs(100)));
        assert_eq!(written_on_most(vec![]), None);
        let pace = Pace::new(TEN_S, Duration::from_secs(40), 100.0);
        let t0 = Instant::now();
        pace.first(|| (500, fleet(1, 499, TEN_S)), t0);
        assert_eq!(pace.offline_threshold(t0), Duration::from_secs(40));
    }

    /// Agents renewing every 30 s are not called offline after the 40 s of a fleet that has
    /// just shrunk: they learn the shorter interval only at their next renewal.
    #[test]
    fn a_shorter_interval_is_judged_by_the_longer_one_a_while() {
        let pace = Pace::new(TEN_S, Duration::from_secs(40), 100.0);
        let t0 = Instant::now();
        pace.first(|| (3_000, None), t0);
        assert!(!pace.follow(100, t0));
        assert_eq!(pace.lease().every, Some(Duration::from_secs(30)), "not yet");
        let shrunk = t0 + HOLD;
        assert!(pace.follow(100, shrunk), "every Lease, at once");
        assert_eq!(pace.lease().every, None);
        assert_eq!(pace.lease_duration(), Duration::from_secs(40));
        assert_eq!(pace.offline_threshold(shrunk), Duration::from_secs(120));
        let later = shrunk + SECOND * 239;
        assert_eq!(pace.offline_threshold(later), Duration::from_secs(120));
        let after = shrunk + SECOND * 240;
        assert_eq!(pace.offline_threshold(after), Duration::from_secs(40));
    }
}
