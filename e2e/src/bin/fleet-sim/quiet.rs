//! Waiting for a counter to stop growing: the apiserver's writes once a change has settled,
//! a controller's CPU once its relist is reconciled.

use std::time::Duration;

use tokio::time::Instant;

/// How long each look at a counter lasts when waiting for quiet.
pub const QUIET_WINDOW: Duration = Duration::from_secs(5);

/// Samples `counter` every [`QUIET_WINDOW`] until it grew by at most `bound` over one, or
/// `limit` passed: how long after the start the quiet window began. A sample that fails
/// counts as not quiet.
pub async fn until_quiet(
    bound: f64,
    limit: Duration,
    mut counter: impl AsyncFnMut() -> Option<f64>,
) -> Option<Duration> {
    let start = Instant::now();
    let mut before = counter().await;
    while start.elapsed() < limit {
        tokio::time::sleep(QUIET_WINDOW).await;
        let now = counter().await;
        if before.zip(now).is_some_and(|(b, n)| n - b <= bound) {
            return Some(start.elapsed().saturating_sub(QUIET_WINDOW));
        }
        before = now;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A counter that reads `samples` in turn, then the last one forever.
    fn counter(samples: Vec<Option<f64>>) -> impl AsyncFnMut() -> Option<f64> {
        let mut i = 0;
        async move || {
            let v = samples[i.min(samples.len() - 1)];
            i += 1;
            v
        }
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_starts_with_the_first_window_that_stays_under_the_bound() {
        let busy_for_three_windows = counter(vec![Some(0.0), Some(10.0), Some(20.0), Some(30.0)]);
        let quiet = until_quiet(1.0, Duration::from_secs(60), busy_for_three_windows).await;
        assert_eq!(quiet, Some(3 * QUIET_WINDOW));
    }

    #[tokio::test(start_paused = true)]
    async fn a_counter_that_keeps_growing_is_never_quiet() {
        let growing = {
            let mut v = 0.0;
            async move || {
                v += 10.0;
                Some(v)
            }
        };
        assert_eq!(
            until_quiet(1.0, Duration::from_secs(60), growing).await,
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_sample_is_not_quiet() {
        let unreadable = counter(vec![Some(0.0), None, Some(0.0), Some(0.0)]);
        let quiet = until_quiet(1.0, Duration::from_secs(60), unreadable).await;
        assert_eq!(quiet, Some(2 * QUIET_WINDOW));
    }
}
