//! Polling with a deadline. The deadline bounds a test that would otherwise hang; it is not
//! a speed assertion (speed is measured by `make bench`).

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every second until it returns `Ok`, and returns that value. At the
/// deadline it panics with `what` and the last `Err` the check gave, which says what the
/// test saw instead.
pub async fn wait_for<T, E, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => {
                eprintln!("e2e: {what}: after {:.1}s", start.elapsed().as_secs_f64());
                return v;
            }
            Err(last) if start.elapsed() >= deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {last:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}
