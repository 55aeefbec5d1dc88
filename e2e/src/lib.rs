//! Helpers for edgefleet's end-to-end tests: drive the lab (`e2e/lab`), talk to its real
//! apiserver, and look at what really runs on a device's containerd.
//!
//! Tests that need the lab are `#[ignore]`d so that `cargo test` stays a unit-test run;
//! `make e2e` starts the lab and runs them with `--ignored`.

mod agents;
mod api;
mod containerd;
mod lab;
mod process;
mod wait;
mod webhook;

pub use agents::RealAgents;
pub use api::{
    Agent, ENROLMENT_MANAGER, apply, enrol_lab_devices, fresh_namespace, grant, install_and_enrol,
    remove_every_deployment, try_apply, ungranted_namespace,
};
pub use containerd::Task;
pub use lab::{Lab, NodeInfo, client_from};
pub use process::{ControllerProcess, controller_binary};
pub use wait::wait_for;
pub use webhook::{WebhookCert, unregister_webhook};
