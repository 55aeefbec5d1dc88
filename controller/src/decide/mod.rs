//! The pure decisions: no client, no cache, no clock of their own (they take `now`). They
//! carry most of the tests, and every reconcile is a thin shell around one of them.

pub mod catalog;
pub mod conditions;
pub mod csr_request;
pub mod device_access;
pub mod device_rbac;
pub mod grant;
pub mod hub_accounts;
pub mod join;
pub mod presence;
pub mod renewal_pace;
pub mod rollout;
pub mod rollup;
pub mod selector;
pub mod snapshot;
pub mod status_check;
pub mod targeting;
