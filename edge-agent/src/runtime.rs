//! The boundary between the agent's main loop and where its modules run. On a device that is
//! kubelet: manifests in its staticPodPath, containers read back over CRI ([`Kubelet`]).
//! Behind a trait so that a fleet simulator can run the agent's own loop (watch, validate,
//! journal, status, Lease) with an in-memory runtime instead, many agents in one process.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use edgefleet_crds::ResolvedModule;

use crate::config::Config;
use crate::cri::Cri;
use crate::error::Result;
use crate::manifests::{Blocked, Manifests};
use crate::observe::PodSeen;

/// Where the agent's modules run.
pub trait Runtime: Send + 'static {
    /// The agent's module pods by module key (`namespace/name`), containers newest first.
    fn observe(&self) -> impl Future<Output = Result<BTreeMap<String, PodSeen>>> + Send;

    /// Modules (keys) that have been handed to the runtime and not taken back.
    fn placed(&self) -> BTreeSet<String>;

    /// Makes the runtime hold exactly `wanted` among the agent's modules; what it could not
    /// place, with the reason, by module key.
    fn place(&mut self, wanted: &[&ResolvedModule]) -> Result<Blocked>;
}

/// The device's own runtime: static pod manifests for kubelet, containers read over CRI.
#[derive(Debug)]
pub struct Kubelet {
    cri: Cri,
    manifests: Manifests,
}

impl Kubelet {
    /// Opens the manifest directory and (lazily) the CRI socket that `config` names.
    pub fn open(config: &Config) -> Result<Kubelet> {
        let hub = config.hub_image.is_some();
        Ok(Kubelet {
            cri: Cri::new(&config.cri_socket),
            manifests: Manifests::open(&config.manifest_dir, &config.state_dir, hub)?,
        })
    }
}

impl Runtime for Kubelet {
    fn observe(&self) -> impl Future<Output = Result<BTreeMap<String, PodSeen>>> + Send {
        self.cri.observe()
    }

    fn placed(&self) -> BTreeSet<String> {
        self.manifests.placed()
    }

    fn place(&mut self, wanted: &[&ResolvedModule]) -> Result<Blocked> {
        self.manifests.sync(wanted)
    }
}
