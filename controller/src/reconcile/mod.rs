//! The reconciles: each reads the caches, calls one decision and writes what it decided
//! back to Kubernetes, only when something changed.

pub mod csr_approval;
pub mod deployment;
pub mod device;
pub mod module_status;
pub mod registry;
pub mod rollout;
