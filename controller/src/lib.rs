//! edgefleet's controller, in four layers:
//!
//! - [`decide`]: the pure decisions (selectors, grants, the deployment catalog, targeting,
//!   the rollout planner, the status rollup, presence, device RBAC, certificate requests).
//! - [`reconcile`]: the reconciles that read the caches, decide and write.
//! - [`k8s`]: Kubernetes plumbing (context and caches, apply, Events, leader election).
//! - [`serve`]: health, metrics and the admission webhook.
//!
//! [`run`] wires them together. [`hub_reloader`] is another mode of the same binary: the
//! cloud hub's sidecar.

pub mod config;
pub mod decide;
pub mod error;
pub mod hub_reloader;
pub mod k8s;
pub mod metrics;
pub mod reconcile;
pub mod run;
pub mod serve;

pub use config::Config;
pub use run::run;
