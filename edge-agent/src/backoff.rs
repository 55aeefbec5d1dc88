//! Retry pauses while the apiserver is unreachable: exponential, capped, and jittered so
//! that a fleet coming back after an outage does not reconnect in lockstep.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct Jittered {
    next: Duration,
    max: Duration,
}

impl Jittered {
    pub fn new(max: Duration) -> Self {
        Jittered {
            next: FIRST.min(max),
            max,
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
        self.next = FIRST.min(self.max);
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
