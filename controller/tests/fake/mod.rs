//! A fake apiserver and the caches around it: the reconciles run as they do in the
//! cluster, and each test reads what they sent.

pub mod apiserver;
pub mod world;
