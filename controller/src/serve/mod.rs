//! What every replica answers, leader or not: health, metrics and admission.

pub mod admission;
pub mod http;
