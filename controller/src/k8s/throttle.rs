//! At most one reconcile of an object per period, and never a trigger lost. A debounce
//! (waiting for a quiet spell) would hold a deployment's status and its rollout's next wave
//! for as long as its devices keep reporting, which during a rollout to thousands of
//! devices is the whole rollout; a throttle lets the status follow the fleet once a period.

use std::collections::HashMap;
use std::future::{Future, ready};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use kube::Resource;
use kube::runtime::controller::Action;

use crate::error::Result;
use crate::k8s::context::Context;

#[derive(Debug)]
pub struct Throttle {
    period: Duration,
    /// When each object last ran, for objects that ran within the period.
    last: Mutex<HashMap<String, Instant>>,
}

impl Throttle {
    pub fn new(period: Duration) -> Throttle {
        Throttle {
            period,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `None` when the object `key` may run at `now` (which is then its last run), else how
    /// long until it may: its reconcile is requeued for then, so the last trigger runs.
    pub fn admit(&self, key: &str, now: Instant) -> Option<Duration> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ran) = last.get(key) {
            let since = now.saturating_duration_since(*ran);
            if since < self.period {
                return Some(self.period - since);
            }
        }
        // Objects idle for a period (or deleted) are forgotten: the map holds only the busy.
        last.retain(|_, ran| now.saturating_duration_since(*ran) < self.period);
        last.insert(key.to_owned(), now);
        None
    }
}

/// `reconcile`, run at most once per `period` for each object; a trigger in between is
/// requeued for the period's end.
pub fn throttled<K, F, Fut>(
    period: Duration,
    reconcile: F,
) -> impl FnMut(Arc<K>, Arc<Context>) -> BoxFuture<'static, Result<Action>>
where
    K: Resource + Send + Sync + 'static,
    F: Fn(Arc<K>, Arc<Context>) -> Fut,
    Fut: Future<Output = Result<Action>> + Send + 'static,
{
    let throttle = Throttle::new(period);
    move |obj, ctx| {
        let meta = obj.meta();
        let key = format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        );
        match throttle.admit(&key, Instant::now()) {
            Some(wait) => Box::pin(ready(Ok(Action::requeue(wait)))),
            None => Box::pin(reconcile(obj, ctx)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_run_per_period_and_the_rest_told_when() {
        let t = Throttle::new(Duration::from_secs(1));
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(
            t.admit("a/one", at(0)),
            None,
            "the first trigger runs at once"
        );
        assert_eq!(
            t.admit("a/one", at(300)),
            Some(Duration::from_millis(700)),
            "a trigger within the period waits for its end"
        );
        assert_eq!(
            t.admit("a/two", at(300)),
            None,
            "objects are throttled apart"
        );
        assert_eq!(t.admit("a/one", at(1000)), None, "the period is over");
        assert_eq!(t.admit("a/one", at(1999)), Some(Duration::from_millis(1)));
        assert_eq!(t.admit("a/one", at(5000)), None);
        assert_eq!(
            t.last.lock().expect("lock").len(),
            1,
            "objects idle for a period are forgotten"
        );
    }
}
