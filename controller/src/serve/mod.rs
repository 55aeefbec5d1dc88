//! What every replica answers, leader or not: health, metrics, admission and the device
//! authorizer.

pub mod admission;
pub mod device_authorizer;
pub mod http;
pub mod webhooks;
