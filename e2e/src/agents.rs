//! The real edgefleet-agent on lab devices: installed as a static pod the way a device is
//! bootstrapped (the agent prints its own manifest), and removed again when the test ends.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use edgefleet_agent::{Config, self_pod};
use edgefleet_crds::EdgeDevice;
use edgefleet_crds::identity::AGENT_NAME;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::{Lab, wait_for};

/// The agent image `e2e/build-images` built and imported into the lab.
pub fn agent_image() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/agent.ref");
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| {
            panic!(
                "no agent image ({}: {e}); build and load it with `e2e/build-images --load`",
                path.display()
            )
        })
}

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
        let image = agent_image();
        let api: Api<EdgeDevice> = Api::all(client.clone());
        for d in devices {
            let clear = json!({"status": {"agentVersion": null, "os": null, "arch": null,
                "appliedRevision": null, "rejectedRevision": null, "modulesReady": null,
                "modules": []}});
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
            remove_files(&info.manifests, &state_dir(&info.node_dir));
            let kubeconfig = info
                .agent_kubeconfig
                .unwrap_or_else(|| panic!("{d} is not an edge device"));
            let config = Config::try_parse_from([
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
                &state_dir(&info.node_dir).display().to_string(),
                "--log",
                "info,kube=warn",
            ])
            .expect("agent flags");
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
            let info = self.lab.info(d);
            let _ = std::fs::remove_file(info.manifests.join(self_pod::FILE));
            // The agent must be gone before its files go, or it would write them again.
            let deadline = Instant::now() + Duration::from_secs(60);
            while self.lab.running_task(d, AGENT_NAME).is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(500));
            }
            // And the modules gone too, so the next test finds no container of this one.
            for module in remove_files(&info.manifests, &state_dir(&info.node_dir)) {
                let deadline = Instant::now() + Duration::from_secs(60);
                while self.lab.running_task(d, &module).is_some() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }
}

fn state_dir(node_dir: &Path) -> PathBuf {
    node_dir.join("agent-state")
}

/// Removes the module manifests an agent wrote and its state directory; returns the names
/// of the modules (their containers' names) whose manifests it removed.
fn remove_files(manifests: &Path, state: &Path) -> Vec<String> {
    let module_prefix = format!("{AGENT_NAME}-module-");
    let mut modules = Vec::new();
    for e in std::fs::read_dir(manifests).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `<prefix><namespace>.<name>.yaml`
        if let Some((_, module)) = name
            .strip_prefix(&module_prefix)
            .and_then(|m| m.strip_suffix(".yaml"))
            .and_then(|m| m.split_once('.'))
        {
            let _ = std::fs::remove_file(e.path());
            modules.push(module.to_owned());
        }
    }
    let _ = std::fs::remove_dir_all(state);
    modules
}
