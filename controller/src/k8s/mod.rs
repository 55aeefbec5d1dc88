//! Kubernetes plumbing the reconciles share: the caches (with one copy of each distinct
//! desired state) and the context around them, server-side apply, Events, leader election
//! and the reconciles' throttle.

pub mod apply;
pub mod context;
pub mod events;
pub mod feeds;
pub mod intern;
pub mod kept_lease;
pub mod leader;
pub mod moves;
pub mod throttle;
pub mod watches;
pub mod written;
