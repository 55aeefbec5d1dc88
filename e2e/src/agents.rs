//! The real edgefleet-agent on lab devices: installed as a static pod the way a device is
//! bootstrapped (the agent prints its own manifest), and removed again when the test ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use edgefleet_agent::{Config, hub, render, self_pod};
use edgefleet_crds::EdgeDevice;
use edgefleet_crds::hub::HUB_NAME;
use edgefleet_crds::identity::AGENT_NAME;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::lab::image_ref;
use crate::{Lab, NodeInfo, wait_for};

/// Agents running on some of the lab's devices. Dropping it stops them and removes every
/// file they wrote, so the next test starts from bare devices; a failing test first gets
/// the end of each agent's log.
#[derive(Debug)]
pub struct RealAgents {
    lab: Lab,
    devices: Vec<String>,
}

impl RealAgents {
    /// Installs the agent on `devices` and waits for each one's first report. What an
    /// earlier agent reported is cleared first, so that a test never reads a stale status.
    pub async fn install(lab: &Lab, client: &Client, devices: &[&str]) -> RealAgents {
        Self::install_with(lab, client, devices, &[]).await
    }

    /// As [`RealAgents::install`], the agents given `flags` besides the lab's (an operator's
    /// choice of store size or TTL, say).
    pub async fn install_with(
        lab: &Lab,
        client: &Client,
        devices: &[&str],
        flags: &[&str],
    ) -> RealAgents {
        let image = image_ref("agent");
        let hub_image = image_ref("hub");
        let api: Api<EdgeDevice> = Api::all(client.clone());
        for d in devices {
            let clear = json!({"status": {"agentVersion": null, "os": null, "arch": null,
                "appliedRevision": null, "rejectedRevision": null, "modulesReady": null,
                "modules": [], "hub": null}});
            // The controller registers the device first (a fresh lab has no EdgeDevices).
            wait_for(
                &format!("{d} to be registered"),
                Duration::from_secs(60),
                || async {
                    api.patch_status(d, &PatchParams::default(), &Patch::Merge(&clear))
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                },
            )
            .await;
            let info = lab.info(d);
            remove_files(&info.manifests, state_dir(&info));
            let kubeconfig = info
                .agent_kubeconfig
                .as_deref()
                .unwrap_or_else(|| panic!("{d} is not an edge device"));
            let lab_flags = [
                "edgefleet-agent",
                "--device",
                d,
                "--kubeconfig",
                &kubeconfig.display().to_string(),
                "--manifest-dir",
                &info.manifests.display().to_string(),
                "--cri-socket",
                &info.containerd_socket.display().to_string(),
                "--state-dir",
                &state_dir(&info).display().to_string(),
                "--hub-image",
                &hub_image,
                "--hub-store-mib",
                "64",
                "--log",
                "info,kube=warn",
            ];
            let config = Config::try_parse_from(lab_flags.iter().chain(flags))
                .unwrap_or_else(|e| panic!("agent flags {flags:?}: {e}"));
            let mut pod = self_pod::pod(&config, &image);
            // kubelet names a static pod's log directory by a hash of its manifest, and
            // deletes it a little after the pod goes: a fresh install gets its own.
            pod.metadata.annotations = Some(
                [(
                    "e2e.edgefleet.io/installed".to_owned(),
                    jiff::Timestamp::now().to_string(),
                )]
                .into(),
            );
            let yaml = serde_yaml::to_string(&pod).expect("agent pod");
            std::fs::write(info.manifests.join(self_pod::FILE), yaml)
                .unwrap_or_else(|e| panic!("cannot install the agent on {d}: {e}"));
        }
        let agents = RealAgents {
            lab: lab.clone(),
            devices: devices.iter().map(|d| (*d).to_owned()).collect(),
        };
        for d in devices {
            wait_for(
                &format!("the agent on {d} to report"),
                Duration::from_secs(90),
                || async {
                    let dev = api.get(d).await.map_err(|e| e.to_string())?;
                    let reported = dev.status.and_then(|s| s.agent_version);
                    reported.map(|_| ()).ok_or("no report yet".to_owned())
                },
            )
            .await;
        }
        agents
    }

    /// The agent's log on a device (kubelet's log files of its static pod, oldest first),
    /// from the device's own pod log directory.
    pub fn log(&self, device: &str) -> String {
        let prefix = format!("edgefleet-system_{AGENT_NAME}-{device}_");
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.lab.info(device).pod_logs)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .flat_map(|e| {
                std::fs::read_dir(e.path().join(AGENT_NAME))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .map(|e| e.path())
            .collect();
        files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
        files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect()
    }
}

impl Drop for RealAgents {
    fn drop(&mut self) {
        for d in &self.devices {
            if std::thread::panicking() {
                let log = self.log(d);
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- last lines of the agent's log on {d}:");
                for line in tail.into_iter().rev() {
                    eprintln!("{line}");
                }
            }
            remove_agent(&self.lab, d);
        }
    }
}

/// Takes the agent off `device` as an administrator does (charts/README.md): its static
/// pod first, then, once it has stopped (or it would write them again), its hub's and its
/// modules' manifests and its state (the hub's store with it); returns when no container of theirs runs on the device. An
/// agent the chart's bootstrap placed stays when the chart is uninstalled, so this is how
/// a test leaves bare devices behind it, whoever installed the agent.
pub fn remove_agent(lab: &Lab, device: &str) {
    let info = lab.info(device);
    let _ = std::fs::remove_file(info.manifests.join(self_pod::FILE));
    wait_until_gone(lab, device, AGENT_NAME);
    let _ = std::fs::remove_file(info.manifests.join(hub::MANIFEST_FILE));
    wait_until_gone(lab, device, HUB_NAME);
    for module in remove_files(&info.manifests, state_dir(&info)) {
        wait_until_gone(lab, device, &module);
    }
}

/// Waits, a minute at most, until no task of the container `name` runs on `device`.
fn wait_until_gone(lab: &Lab, device: &str, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while lab.running_task(device, name).is_some() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The agent's state directory on a lab device.
fn state_dir(info: &NodeInfo) -> &Path {
    info.agent_state
        .as_deref()
        .unwrap_or_else(|| panic!("{} is not an edge device", info.name))
}

/// Removes the module manifests an agent wrote and its state directory; returns the names
/// of the modules (their containers' names) whose manifests it removed.
fn remove_files(manifests: &Path, state: &Path) -> Vec<String> {
    let mut modules = Vec::new();
    for e in std::fs::read_dir(manifests).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((_, module)) = render::module_of_manifest_file(&name) {
            let _ = std::fs::remove_file(e.path());
            modules.push(module.to_owned());
        }
    }
    let _ = std::fs::remove_dir_all(state);
    modules
}
