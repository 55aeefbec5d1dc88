//! Kubernetes plumbing the reconciles share: the caches and the context around them,
//! server-side apply, Events and leader election.

pub mod apply;
pub mod context;
pub mod events;
pub mod feeds;
pub mod leader;
pub mod moves;
pub mod watches;
