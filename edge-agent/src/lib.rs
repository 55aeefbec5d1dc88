//! edgefleet's device agent. It turns the device's journaled desired state into static pod
//! manifests that kubelet runs without an apiserver, reads what runs from the container
//! runtime (CRI), and reports it into the device's own EdgeDevice status and Lease.
//!
//! Pure decisions (`validate`, `render`, `startup`, `observe`, `report`) carry most of the
//! tests; `journal` and `manifests` own the files on disk; `cri`, `desired`, `lease` and
//! `status_writer` talk to the runtime and the apiserver; `runtime` is the boundary to
//! where modules run; `run` wires them together.

pub mod apiserver;
pub mod backoff;
pub mod config;
pub mod cri;
pub mod desired;
pub mod error;
#[cfg(test)]
mod fake_apiserver;
pub mod host_pod;
pub mod hub;
pub mod hub_status;
pub mod hub_users;
pub mod join;
pub mod journal;
pub mod lease;
pub mod link;
pub mod manifests;
pub mod observe;
pub mod render;
pub mod report;
pub mod router;
pub mod run;
pub mod runtime;
pub mod self_pod;
pub mod startup;
pub mod status_writer;
pub mod upstream;
pub mod validate;

pub use config::{Command, Config, JoinArgs};
pub use run::{run, run_with};
pub use runtime::{Kubelet, Runtime};

/// The agent's version as reported in `EdgeDevice.status.agentVersion`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
