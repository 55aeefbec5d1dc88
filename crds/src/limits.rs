//! What a module must keep to to run on a device: one definition for the agent (which
//! refuses a desired state that breaks it), the controller (which holds the deployment that
//! would ship one, so no device ever refuses its whole state because of one team's module)
//! and the CRD schema (whose bounds come from these consts where a schema can say it).
//!
//! The schema counts a string's characters; disks count bytes. Only the checks here count
//! bytes, so a module of multi-byte characters that the schema admitted is held by the
//! controller rather than refused by a device.

use std::collections::BTreeSet;

use crate::device::ResolvedModule;
use crate::module::EdgeModuleSpec;
use crate::names::{check_dns_label, check_env_name, check_file_name, check_image};

/// The largest config file edgefleet delivers, in bytes.
pub const MAX_CONFIG_FILE_BYTES: usize = 64 * 1024;
/// The most config one module may carry, in bytes. Config files are written to the
/// device's disk on every change; the schema allows more than a small device should hold.
pub const MAX_MODULE_CONFIG_BYTES: usize = 256 * 1024;
/// The highest `startupOrder`.
pub const MAX_STARTUP_ORDER: u32 = 1000;
/// The most desired state one device gets, in bytes of its modules as JSON (config
/// included). Every device's desired state is a copy in etcd, whose objects stop at
/// 1.5 MiB, and in the controller's cache: this keeps both bounded per device.
pub const MAX_DEVICE_DESIRED_BYTES: usize = 512 * 1024;
/// The most modules one device runs.
pub use crate::device::MAX_DESIRED_MODULES;

/// What one module costs a device's desired state, in bytes.
pub fn module_bytes(m: &ResolvedModule) -> usize {
    serde_json::to_vec(m).map_or(0, |v| v.len())
}

/// Why a device can't take these modules (its whole desired state) in words for a status;
/// `Ok` when it can.
pub fn check_device(modules: &[ResolvedModule]) -> Result<(), String> {
    let bytes: usize = modules.iter().map(module_bytes).sum();
    over_device_budget(modules.len(), bytes).map_or(Ok(()), Err)
}

/// Why `modules` modules of `bytes` in all are too much for one device, if they are.
pub fn over_device_budget(modules: usize, bytes: usize) -> Option<String> {
    if modules > MAX_DESIRED_MODULES {
        return Some(format!(
            "{modules} modules, more than a device's {MAX_DESIRED_MODULES}"
        ));
    }
    (bytes > MAX_DEVICE_DESIRED_BYTES).then(|| {
        format!("{bytes} bytes of desired state, more than a device's {MAX_DEVICE_DESIRED_BYTES}")
    })
}

/// Why a module as the device gets it can't run there, in words for a status; `Ok` when
/// it can. Namespace and name become a file name in kubelet's manifest directory, a config
/// directory and the namespace of the module's pod: a DNS label cannot contain a path
/// separator or `..`.
pub fn check_resolved(m: &ResolvedModule) -> Result<(), String> {
    check_dns_label(&m.name).map_err(|e| format!("name: {e}"))?;
    check_dns_label(m.namespace())
        .map_err(|e| format!("namespace (of {:?}): {e}", m.deployment))?;
    check_module(&m.spec)
}

/// Why a module can't run on a device, in words for a status; `Ok` when it can.
pub fn check_module(s: &EdgeModuleSpec) -> Result<(), String> {
    check_image(&s.image).map_err(|e| format!("image: {e}"))?;
    for e in &s.env {
        check_env_name(&e.name).map_err(|err| format!("env: {err}"))?;
    }
    let mut total = 0;
    let mut files = BTreeSet::new();
    for f in &s.config {
        check_file_name(&f.name).map_err(|e| format!("config file: {e}"))?;
        if !files.insert(f.name.as_str()) {
            return Err(format!("config file {:?} appears twice", f.name));
        }
        if f.content.len() > MAX_CONFIG_FILE_BYTES {
            return Err(format!(
                "config file {:?} is {} bytes, more than {MAX_CONFIG_FILE_BYTES}",
                f.name,
                f.content.len()
            ));
        }
        total += f.content.len();
    }
    if total > MAX_MODULE_CONFIG_BYTES {
        return Err(format!(
            "config is {total} bytes in all, more than {MAX_MODULE_CONFIG_BYTES}"
        ));
    }
    for d in &s.devices {
        for path in std::iter::once(&d.host_path).chain(&d.container_path) {
            if !path.starts_with("/dev/") || path.split('/').any(|c| c == "..") {
                return Err(format!("device path {path:?} is not under /dev"));
            }
        }
    }
    if s.startup_order > MAX_STARTUP_ORDER {
        return Err(format!(
            "startupOrder {} is above {MAX_STARTUP_ORDER}",
            s.startup_order
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> EdgeModuleSpec {
        serde_yaml::from_str(yaml).expect("spec")
    }

    /// The poison pill: each file under the per-file limit, 300 KB in all.
    #[test]
    fn a_module_over_the_device_limits_is_named() {
        let files: Vec<String> = (0..5)
            .map(|i| format!("{{name: f{i}, content: '{}'}}", "x".repeat(60 * 1024)))
            .collect();
        let big = spec(&format!("{{image: app:1, config: [{}]}}", files.join(", ")));
        assert!(
            check_module(&big)
                .expect_err("too big")
                .contains("more than 262144")
        );
    }

    /// The schema's maxLength counts characters: 30,000 three-byte characters pass it and
    /// are 90,000 bytes on disk.
    #[test]
    fn config_is_counted_in_bytes() {
        let wide = spec(&format!(
            "{{image: app:1, config: [{{name: f, content: '{}'}}]}}",
            "€".repeat(30_000)
        ));
        assert!(
            check_module(&wide)
                .expect_err("bytes")
                .contains("90000 bytes")
        );
    }

    #[test]
    fn a_device_path_cannot_climb_out_of_dev() {
        let escape = spec("{image: app:1, devices: [{hostPath: /dev/../etc/shadow}]}");
        assert!(
            check_module(&escape)
                .expect_err("escape")
                .contains("not under /dev")
        );
        let ok = spec("{image: app:1, devices: [{hostPath: /dev/ttyUSB0}]}");
        assert!(check_module(&ok).is_ok());
    }
}
