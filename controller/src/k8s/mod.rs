//! Kubernetes plumbing the reconciles share: the caches and the context around them,
//! server-side apply, Events, leader election and the reconciles' throttle.

pub mod apply;
pub mod context;
pub mod events;
pub mod feeds;
pub mod leader;
pub mod moves;
pub mod throttle;
pub mod watches;
