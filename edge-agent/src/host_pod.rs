//! The parts the agent's own static pod and the hub's share: host directories mounted into
//! the container, resource quantities, and root without any capability (both need host
//! directories that are root's; neither needs anything else).

use std::collections::BTreeMap;
use std::path::Path;

use k8s_openapi::api::core::v1::{
    Capabilities, HostPathVolumeSource, SeccompProfile, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A host directory or file in the pod: its volume name, the host path, where the
/// container sees it, the hostPath type, and whether it is read-only.
#[derive(Debug, Clone, Copy)]
pub struct HostMount<'a> {
    pub name: &'a str,
    pub host: &'a Path,
    pub at: &'a Path,
    pub type_: &'a str,
    pub read_only: bool,
}

/// The pod's volumes and the container's mounts for `mounts`.
pub fn volumes(mounts: &[HostMount<'_>]) -> (Vec<Volume>, Vec<VolumeMount>) {
    let volumes = mounts
        .iter()
        .map(|m| Volume {
            name: m.name.to_owned(),
            host_path: Some(HostPathVolumeSource {
                path: m.host.display().to_string(),
                type_: Some(m.type_.to_owned()),
            }),
            ..Default::default()
        })
        .collect();
    let volume_mounts = mounts
        .iter()
        .map(|m| VolumeMount {
            name: m.name.to_owned(),
            mount_path: m.at.display().to_string(),
            read_only: m.read_only.then_some(true),
            ..Default::default()
        })
        .collect();
    (volumes, volume_mounts)
}

/// `cpu` and `memory` as requests or limits.
pub fn quantities(cpu: &str, memory: &str) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
    ])
}

/// Root, for the host's root-owned directories, and nothing more: no capability, no
/// privilege escalation, a read-only root filesystem, seccomp `RuntimeDefault`.
pub fn root_without_capabilities() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(0),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}
