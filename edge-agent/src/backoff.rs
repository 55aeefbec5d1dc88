//! Retry pauses while the apiserver is unreachable: exponential, capped, and jittered so
//! that a fleet coming back after an outage does not reconnect in lockstep.
//!
//! A refusal for load (429) gets longer pauses than a lost link. The link's are short so
//! that a reconnect is noticed within seconds; the apiserver refusing for load is already
//! reachable, and every refused request still costs it the TLS client certificate's check
//! and its priority and fairness: 10,000 agents starting at once, retrying 429s within 2 s,
//! had it refuse 370,000 requests in four minutes, and verifying their certificates took 30 %
//! of its CPU.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(200);

/// The first pause after a 429, and the longest.
const BUSY_FIRST: Duration = Duration::from_secs(1);
pub const BUSY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Jittered {
    first: Duration,
    next: Duration,
    max: Duration,
}

impl Jittered {
    pub fn new(max: Duration) -> Self {
        let first = FIRST.min(max);
        Jittered {
            first,
            next: first,
            max,
        }
    }

    /// Pauses after refusals for load: from 1 s, doubling up to [`BUSY_MAX`].
    pub fn busy() -> Self {
        Jittered {
            first: BUSY_FIRST,
            next: BUSY_FIRST,
            max: BUSY_MAX,
        }
    }
}

impl Iterator for Jittered {
    type Item = Duration;

    /// A pause between half and all of the current step; the step doubles up to `max`.
    fn next(&mut self) -> Option<Duration> {
        let step = self.next;
        self.next = (step * 2).min(self.max);
        Some(step.mul_f64(0.5 + fastrand::f64() * 0.5))
    }
}

/// `period` give or take a tenth: periodic work of agents that started together drifts apart.
pub fn around(period: Duration) -> Duration {
    period.mul_f64(0.9 + fastrand::f64() * 0.2)
}

impl kube::runtime::utils::Backoff for Jittered {
    fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let max = Duration::from_secs(2);
        let mut b = Jittered::new(max);
        let pauses: Vec<_> = b.by_ref().take(10).collect();
        assert!(pauses[0] <= FIRST && pauses[0] >= FIRST / 2);
        assert!(pauses.iter().all(|p| *p <= max && *p >= FIRST / 2));
        assert!(pauses[9] >= max / 2, "reaches the cap: {pauses:?}");
        b.reset();
        assert!(b.next().is_some_and(|p| p <= FIRST));
    }

    #[test]
    fn refusals_for_load_pause_from_a_second_to_half_a_minute() {
        let mut b = Jittered::busy();
        let pauses: Vec<_> = b.by_ref().take(10).collect();
        assert!(pauses[0] >= BUSY_FIRST / 2 && pauses[0] <= BUSY_FIRST);
        assert!(pauses.iter().all(|p| *p <= BUSY_MAX));
        assert!(pauses[9] >= BUSY_MAX / 2, "reaches the cap: {pauses:?}");
        b.reset();
        assert!(
            b.next()
                .is_some_and(|p| p >= BUSY_FIRST / 2 && p <= BUSY_FIRST)
        );
    }

    #[test]
    fn periods_drift_by_a_tenth_at_most() {
        let period = Duration::from_secs(10);
        let all: Vec<_> = (0..100).map(|_| around(period)).collect();
        assert!(
            all.iter()
                .all(|p| *p >= period * 9 / 10 && *p <= period * 11 / 10)
        );
        assert!(all.iter().any(|p| *p != all[0]), "not all alike: {all:?}");
    }
}
