//! edgefleet's charts on the lab with Helm v4's own engine. That engine is PyPI's
//! helm-python-sdk (the only Helm on these machines), so `e2e/helm.py` wraps it as a thin
//! command; what to install with which values, and every wait and check around it, is here.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use edgefleet_crds::identity::SYSTEM_NAMESPACE;
use serde_json::{Value, json};

use crate::lab::{image_ref, stdout_of_success};
use crate::{Lab, NodeInfo};
use edgefleet_crds::hub::LEAF_PORT;

/// Helm on the lab's cluster, as the lab admin, releases in the system namespace.
#[derive(Debug)]
pub struct Helm {
    python: PathBuf,
    kubeconfig: PathBuf,
}

impl Helm {
    /// The Helm of the virtualenv named by `HELM_PY` (`make demo` and `make e2e` prepare it
    /// and set it). Panics, saying so, without it.
    pub fn for_lab(lab: &Lab) -> Helm {
        let venv = std::env::var_os("HELM_PY").unwrap_or_else(|| {
            panic!("HELM_PY names no helm-python-sdk virtualenv; run through make demo or make e2e")
        });
        Helm {
            python: Path::new(&venv).join("bin/python"),
            kubeconfig: lab.kubeconfig().to_path_buf(),
        }
    }

    /// Installs `chart` (a directory under `charts/`) as `release`, creating the namespace,
    /// and waits for its objects; returns the release.
    pub fn install(&self, chart: &str, release: &str, values: &Value) -> Value {
        self.run(&["install", &chart_dir(chart), release], values)
    }

    /// Upgrades `release` to `chart` with `values` and waits for its objects.
    pub fn upgrade(&self, chart: &str, release: &str, values: &Value) -> Value {
        self.run(&["upgrade", &chart_dir(chart), release], values)
    }

    /// [`Helm::install`], or [`Helm::upgrade`] when `release` is already deployed.
    pub fn install_or_upgrade(&self, chart: &str, release: &str, values: &Value) -> Value {
        if self.installed(release) {
            self.upgrade(chart, release, values)
        } else {
            self.install(chart, release, values)
        }
    }

    /// Removes `release`; with `wait`, returns once its objects are gone.
    pub fn uninstall(&self, release: &str, wait: bool) {
        let mut args = vec!["uninstall", release];
        if wait {
            args.push("--wait");
        }
        self.run(&args, &Value::Null);
    }

    /// Whether `release` is deployed.
    pub fn installed(&self, release: &str) -> bool {
        self.run(&["status", release], &Value::Null)["status"] == "deployed"
    }

    /// The revision numbers of `release`, oldest first.
    pub fn revisions(&self, release: &str) -> Vec<u64> {
        let history = self.run(&["history", release], &Value::Null);
        history
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["revision"].as_u64())
            .collect()
    }

    /// Runs `e2e/helm.py ARGS...` with `values` on stdin; panics with its stderr when it
    /// fails, as a test or the demo cannot go on then. Returns what it printed.
    fn run(&self, args: &[&str], values: &Value) -> Value {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm.py");
        let mut child = Command::new(&self.python)
            .arg(&script)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["--namespace", SYSTEM_NAMESPACE])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.python.display()));
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(values.to_string().as_bytes())
            .expect("values to helm.py");
        let what = format!("helm {}", args.join(" "));
        let out = child.wait_with_output().expect("helm.py's output");
        serde_json::from_str(&stdout_of_success(&what, &out))
            .unwrap_or_else(|e| panic!("{what} printed no JSON: {e}"))
    }
}

fn chart_dir(chart: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../charts")
        .join(chart);
    dir.display().to_string()
}

/// The values the lab needs: the images `e2e/build-images --load` imported, and one
/// controller replica on cloud-1, on the host's network (the lab has no pod network),
/// talking to the apiserver's address, with the agent's paths on the lab's devices.
pub fn lab_values(lab: &Lab) -> Value {
    let info = lab.info("edge-1");
    let cloud = lab.info("cloud-1");
    let image = |name: &str| {
        let reference = image_ref(name);
        let (repository, tag) = reference
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("image {reference} has no tag"));
        json!({"repository": repository, "tag": tag, "pullPolicy": "Never"})
    };
    let hub_image = {
        let mut i = image("hub");
        i.as_object_mut().expect("an object").remove("pullPolicy");
        i
    };
    json!({
        "image": image("controller"),
        "replicas": 1,
        "hostNetwork": true,
        "apiServer": info.apiserver.trim_start_matches("https://"),
        "nodeSelector": {"edgefleet.io/role": "cloud"},
        "tolerations": [{"key": "edgefleet.io/role", "operator": "Equal", "value": "cloud",
                         "effect": "NoSchedule"}],
        "agent": {"image": image("agent"), "paths": device_paths(&info)},
        "hub": {"enabled": true, "image": hub_image, "storeMiB": 256, "cloud": {
            // On cloud-1's own address: the lab has no kube-proxy and no load balancer.
            "url": format!("tls://{}:{LEAF_PORT}", cloud.ip),
            "ips": [cloud.ip],
            "hostNetwork": true,
            "nodeSelector": {"edgefleet.io/role": "cloud"},
            "tolerations": [{"key": "edgefleet.io/role", "operator": "Equal", "value": "cloud",
                             "effect": "NoSchedule"}],
            "persistence": {"enabled": false},
            "storeMiB": 256,
        }},
    })
}

/// The agent's paths on the lab's devices, `{node}` for the device's name: the lab keeps all
/// devices side by side on one host.
fn device_paths(info: &NodeInfo) -> Value {
    let per_node = |path: &Path| path.display().to_string().replace("/edge-1/", "/{node}/");
    let state = info.agent_state.as_deref().expect("edge-1 is a device");
    json!({
        "manifestDir": per_node(&info.manifests),
        "stateDir": per_node(state),
        "criSocket": per_node(&info.containerd_socket),
    })
}
