//! edgefleet's controller. Pure decisions (`selector`, `grant`, `catalog`, `targeting`, `rollup`,
//! `presence`, `status_check`, `device_rbac`) carry most of the tests; the reconciles
//! (`registry`, `device`, `deployment`, `module_status`) fetch, decide and apply.

pub mod admission;
pub mod apply;
pub mod catalog;
pub mod config;
pub mod context;
pub mod csr_approval;
pub mod csr_request;
pub mod deployment;
pub mod device;
pub mod device_rbac;
pub mod error;
pub mod grant;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod module_status;
pub mod presence;
pub mod registry;
pub mod rollout;
pub mod rollup;
pub mod run;
pub mod selector;
pub mod staging;
pub mod status_check;
pub mod targeting;

pub use config::Config;
pub use run::run;
