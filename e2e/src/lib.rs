//! Helpers for edgefleet's end-to-end tests and `make demo`: drive the lab (`e2e/lab`), talk
//! to its real apiserver, look at what really runs on a device's containerd, and install
//! edgefleet's charts with Helm (`e2e/helm.py`, a thin driver of Helm's own engine).
//!
//! Tests that need the lab are `#[ignore]`d so that `cargo test` stays a unit-test run;
//! `make e2e` starts the lab and runs them with `--ignored`.

mod agents;
mod api;
mod containerd;
mod fleet;
mod helm;
pub mod hollow;
pub mod hollow_fleet;
mod hub;
mod lab;
pub mod loopback;
mod process;
mod wait;
mod webhook;

pub use agents::{RealAgents, remove_agent};
pub use api::{
    Agent, ENROLMENT_MANAGER, apply, enrol_lab_devices, fresh_namespace, grant, install_and_enrol,
    pod_bound_token, remove_every_deployment, try_apply, ungranted_namespace, wait_established,
};
pub use containerd::Task;
pub use fleet::{all_joined, all_ready, edge_devices};
pub use helm::{Helm, lab_values};
pub use hub::{CloudReader, CloudStream, agent_password, cloud_stream, mqtt, reader_password};
pub use lab::{Lab, NodeInfo, client_from};
pub use process::{ControllerProcess, controller_binary, stop_child};
pub use wait::{wait_for, wait_showing};
pub use webhook::{WebhookCert, unregister_webhook};
