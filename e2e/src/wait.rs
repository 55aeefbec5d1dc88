//! Polling with a deadline. The deadline bounds a test that would otherwise hang; it is not
//! a speed assertion (speed is measured by `make bench`).

use std::fmt::Debug;
use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Polls `check` every second until it returns `Ok`, and returns that value. At the
/// deadline it panics with `what` and the last `Err` the check gave, which says what the
/// test saw instead.
pub async fn wait_for<T, E, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    poll(what, deadline, check, None).await
}

/// [`wait_for`] for a person watching a long wait (`make demo`): what the check last saw
/// is shown while it waits, every 10 s, or on a terminal as one line updated in place.
pub async fn wait_showing<T, F, Fut>(what: &str, deadline: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    poll(what, deadline, check, Some(&|seen: &String| seen.clone())).await
}

async fn poll<T, E, F, Fut>(
    what: &str,
    deadline: Duration,
    mut check: F,
    show: Option<&dyn Fn(&E) -> String>,
) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut shown = Duration::ZERO;
    loop {
        let result = check().await;
        let elapsed = start.elapsed();
        if tty && show.is_some() && (result.is_ok() || elapsed >= deadline) {
            // Off the line that was being updated in place.
            eprintln!();
        }
        match result {
            Ok(v) => {
                eprintln!("e2e: {what}: after {:.1}s", elapsed.as_secs_f64());
                return v;
            }
            Err(last) if elapsed >= deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {last:?}")
            }
            Err(last) => {
                if let Some(show) = show.filter(|_| tty || elapsed - shown >= SHOW_EVERY) {
                    let line = format!(
                        "  waiting for {what}: {} ({}s)",
                        show(&last),
                        elapsed.as_secs()
                    );
                    if tty {
                        eprint!("\r{line:<100}");
                    } else {
                        eprintln!("{line}");
                    }
                    shown = elapsed;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// How often a wait shows its progress when it is not on a terminal (a CI log).
const SHOW_EVERY: Duration = Duration::from_secs(10);
