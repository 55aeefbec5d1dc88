//! The reconciles: each reads the caches, calls one decision and writes what it decided
//! back to Kubernetes, only when something changed.

pub mod csr_approval;
pub mod deployment;
pub mod device;
pub mod hub_accounts;
pub mod module_status;
pub mod registry;
pub mod rollout;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;

use crate::error::Error;
use crate::k8s::context::Context;

/// How soon a failed reconcile is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// The error policy every reconcile shares: a failure is logged and counted under the
/// reconcile's name and the error's category, and the object is tried again soon. Bad
/// specs never get here (they are reported on the object); these are transient failures.
pub fn retry<K>(controller: &'static str) -> impl Fn(Arc<K>, &Error, Arc<Context>) -> Action {
    move |_, err, ctx| {
        tracing::warn!(controller, error = %err, "reconcile failed");
        ctx.metrics.error(controller, err.category());
        Action::requeue(RETRY)
    }
}
