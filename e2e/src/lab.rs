//! The lab as a test sees it: its CLI, its nodes and an admin client.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::containerd::{self, Task};

/// The running lab. Every method panics with the lab's own error text when a command fails,
/// because a test cannot go on without the lab doing what it was told.
#[derive(Debug, Clone)]
pub struct Lab {
    script: PathBuf,
    kubeconfig: PathBuf,
}

/// A node's paths and address, from `e2e/lab info NODE`.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub ip: String,
    /// kubelet's staticPodPath on the node.
    pub manifests: PathBuf,
    pub containerd_socket: PathBuf,
    /// The node's "disk": kubelet's root, containerd's root, the agent's kubeconfig.
    pub node_dir: PathBuf,
    /// kubelet's podLogsDir on the node: `<namespace>_<pod>_<uid>/<container>/<n>.log`.
    pub pod_logs: PathBuf,
    /// The device's agent kubeconfig reachable from the host shell (edge devices only).
    pub kubeconfig: Option<PathBuf>,
    /// The device's agent kubeconfig as the device sees it: the apiserver at its lab
    /// address, for an agent running on the device (edge devices only).
    pub agent_kubeconfig: Option<PathBuf>,
    /// The device's kubelet credential, reachable from the host shell: what a thief of the
    /// device holds (edge devices only).
    pub kubelet_kubeconfig: Option<PathBuf>,
    /// The agent's state directory on the device (edge devices only): the lab lays out the
    /// device's disk, so every tool takes this path from it.
    pub agent_state: Option<PathBuf>,
    /// The apiserver's URL inside the lab, as nodes and in-cluster pods reach it.
    pub apiserver: String,
    /// The port a test serves an admission webhook on at 127.0.0.1: the apiserver reaches
    /// it at the same address (the lab forwards it; lab-wide, the same for every node).
    pub webhook_port: u16,
    /// The certificate and key a controller serves the webhooks with when it answers the
    /// lab apiserver's device authorizer (`--device-authorization webhook`): signed by the
    /// lab CA for 127.0.0.1, which the apiserver's authorization config trusts.
    pub authorizer_cert: PathBuf,
    pub authorizer_key: PathBuf,
    /// The lab's apiserver asks the device authorizer only about devices whose certificate
    /// carries this group too (e2e/lib/common.sh).
    pub authorizer_group: String,
}

impl Lab {
    /// The lab that `e2e/lab up` started. Panics, saying how to start it, when it is down.
    pub fn get() -> Lab {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("lab");
        let mut lab = Lab {
            script,
            kubeconfig: PathBuf::new(),
        };
        let out = lab.try_run(&["kubeconfig"]);
        assert!(
            out.status.success(),
            "the lab is not up; start it with `e2e/lab up` (or `make lab-up`): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        lab.kubeconfig = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        lab
    }

    /// The `e2e/lab` script, for a test that needs to run it with its own environment.
    pub fn script(&self) -> &Path {
        &self.script
    }

    /// The admin kubeconfig (user in group system:masters), usable from the host.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Runs `e2e/lab ARGS...` and returns what it did, successful or not.
    pub fn try_run(&self, args: &[&str]) -> Output {
        Command::new(&self.script)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.script.display()))
    }

    /// Runs `e2e/lab ARGS...`, panicking with its stderr when it fails; returns stdout.
    pub fn run(&self, args: &[&str]) -> String {
        stdout_of_success(&format!("e2e/lab {}", args.join(" ")), &self.try_run(args))
    }

    /// How many edge devices the lab runs (`edge-1` to `edge-N`).
    pub fn device_count(&self) -> u32 {
        // `status` opens with "lab: up with N devices (...)".
        let status = self.run(&["status"]);
        status
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("lab: up with "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                panic!("cannot read the device count from e2e/lab status:\n{status}")
            })
    }

    /// Runs kubectl as the lab admin, as a person would, and returns what it did, successful
    /// or not. `kubectl diff` prints a plain diff whatever the caller's environment says.
    pub fn try_kubectl(&self, args: &[&str]) -> Output {
        Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("KUBECTL_EXTERNAL_DIFF", "")
            .output()
            .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"))
    }

    /// Runs kubectl as the lab admin, panicking with its stderr when it fails; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        stdout_of_success(
            &format!("kubectl {}", args.join(" ")),
            &self.try_kubectl(args),
        )
    }

    /// Runs CMD in the node's network namespace with its containerd (`e2e/lab exec`).
    pub fn exec(&self, node: &str, cmd: &[&str]) -> String {
        let mut args = vec!["exec", node, "--"];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    pub fn info(&self, node: &str) -> NodeInfo {
        let kv: BTreeMap<String, String> = self
            .run(&["info", node])
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let field = |k: &str| {
            kv.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("e2e/lab info {node} printed no {k}"))
        };
        NodeInfo {
            name: field("name"),
            ip: field("ip"),
            manifests: field("manifests").into(),
            containerd_socket: field("containerd_socket").into(),
            node_dir: field("node_dir").into(),
            pod_logs: field("pod_logs").into(),
            kubeconfig: kv.get("kubeconfig").map(PathBuf::from),
            agent_kubeconfig: kv.get("agent_kubeconfig").map(PathBuf::from),
            kubelet_kubeconfig: kv.get("kubelet_kubeconfig").map(PathBuf::from),
            agent_state: kv.get("agent_state").map(PathBuf::from),
            apiserver: field("apiserver"),
            webhook_port: field("webhook_port")
                .parse()
                .unwrap_or_else(|e| panic!("e2e/lab info {node}: webhook_port: {e}")),
            authorizer_cert: field("authorizer_cert").into(),
            authorizer_key: field("authorizer_key").into(),
            authorizer_group: field("authorizer_group"),
        }
    }

    /// A client for the lab's apiserver as the lab admin.
    pub async fn client(&self) -> kube::Client {
        client_from(&self.kubeconfig).await
    }

    /// The lab admin's client at `server`: the apiserver's lab address (`NodeInfo::apiserver`)
    /// from inside the control plane's network namespace, past the host's forwarder.
    pub async fn client_at(&self, server: &str) -> kube::Client {
        client_from_at(&self.kubeconfig, Some(server)).await
    }

    /// A client for the lab's apiserver as `user`, whom the admin impersonates: a team's
    /// member, with only what the roles a test binds to that name allow.
    pub async fn client_as(&self, user: &str) -> kube::Client {
        let mut config = config_from(&self.kubeconfig, None).await;
        config.auth_info.impersonate = Some(user.to_owned());
        kube::Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client: {e}"))
    }

    /// The tasks (running or exited containers, pod sandboxes included) on the node's
    /// containerd, read from the device itself rather than from the apiserver.
    pub fn tasks(&self, node: &str) -> Vec<Task> {
        containerd::parse_tasks(&self.exec(node, &["ctr", "-n", "k8s.io", "tasks", "ls"]))
    }

    /// IDs of the containers of one Kubernetes container name on the node's containerd.
    pub fn containers_named(&self, node: &str, container: &str) -> Vec<String> {
        let filter = format!("labels.\"io.kubernetes.container.name\"=={container}");
        self.exec(
            node,
            &["ctr", "-n", "k8s.io", "containers", "ls", "-q", &filter],
        )
        .split_whitespace()
        .map(str::to_owned)
        .collect()
    }

    /// The one running task of a Kubernetes container name on the node, if there is one.
    pub fn running_task(&self, node: &str, container: &str) -> Option<Task> {
        let ids = self.containers_named(node, container);
        self.tasks(node)
            .into_iter()
            .find(|t| t.running() && ids.contains(&t.id))
    }
}

/// The stdout of a command that ran `what`, after panicking with its stderr if it failed:
/// a test cannot go on when the lab, kubectl or Helm did not do what it was told.
pub(crate) fn stdout_of_success(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The reference of an image `e2e/build-images` built and imported into the lab: `agent`,
/// `controller`, or one of the sample modules.
pub fn image_ref(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/images/{name}.ref"));
    std::fs::read_to_string(&path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| {
            panic!(
                "no {name} image ({}: {e}); build and load it with `e2e/build-images --load`",
                path.display()
            )
        })
}

/// A client from a kubeconfig file: the lab admin's, or a device's agent identity.
pub async fn client_from(path: &Path) -> kube::Client {
    client_from_at(path, None).await
}

/// A client from the kubeconfig at `path`, at `server` instead of its address when given.
pub async fn client_from_at(path: &Path, server: Option<&str>) -> kube::Client {
    let config = config_from(path, server).await;
    kube::Client::try_from(config).unwrap_or_else(|e| panic!("cannot build a client: {e}"))
}

/// The client configuration of the kubeconfig at `path`, at `server` when given.
async fn config_from(path: &Path, server: Option<&str>) -> kube::Config {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .unwrap_or_else(|e| panic!("cannot read kubeconfig {}: {e}", path.display()));
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap_or_else(|e| panic!("bad kubeconfig {}: {e}", path.display()));
    if let Some(server) = server {
        config.cluster_url = server
            .parse()
            .unwrap_or_else(|e| panic!("the apiserver's URL {server}: {e}"));
    }
    config
}
