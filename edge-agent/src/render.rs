//! Turning a module into the static pod manifest kubelet runs. Pure: the same module always
//! renders to the same bytes, so an unchanged module's file is never rewritten and kubelet
//! never restarts it for nothing. Only what belongs to the module goes in: which deployment
//! owns it or the device's revision would restart every pod on every change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use edgefleet_crds::EdgeModuleSpec;
use edgefleet_crds::ResolvedModule;
use edgefleet_crds::hub::{
    CREDENTIALS_MOUNT, MQTT_PORT, NATS_PORT, env, module_inputs, module_outputs, mqtt_topic,
};
use edgefleet_crds::identity::AGENT_NAME;
use edgefleet_crds::identity::pods::{
    CONFIG_HASH_ANNOTATION, CONFIG_MOUNT_PATH, MANAGED_BY_LABEL, MODULE_LABEL, SPEC_HASH_LABEL,
};
use edgefleet_crds::module::{DEFAULT_MEMORY_LIMIT, PullPolicy, Resources, RestartPolicy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, EnvVar, EnvVarSource, HostPathVolumeSource, ObjectFieldSelector, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecurityContext, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::hub_users::credentials_dir;

/// The manifest file of a module in kubelet's staticPodPath: `<namespace>.<name>`, which
/// no two modules share (a DNS label has no dot).
pub fn manifest_file(m: &ResolvedModule) -> String {
    format!("{AGENT_NAME}-module-{}.{}.yaml", m.namespace(), m.name)
}

/// The module (`namespace`, `name`) whose manifest file `file` is; `None` for any other file
/// in the staticPodPath (the agent's own, the hub's, the node's).
pub fn module_of_manifest_file(file: &str) -> Option<(&str, &str)> {
    file.strip_prefix(AGENT_NAME)?
        .strip_prefix("-module-")?
        .strip_suffix(".yaml")?
        .split_once('.')
}

/// The host directory holding a module's config files, by its key (`namespace/name`).
pub fn config_dir(state_dir: &Path, key: &str) -> PathBuf {
    state_dir.join("config").join(key)
}

/// A module's static pod as YAML; with `hub`, the module finds the device's hub.
pub fn manifest(m: &ResolvedModule, state_dir: &Path, hub: bool) -> Result<String> {
    serde_yaml::to_string(&pod(m, state_dir, hub)).map_err(Error::Render)
}

pub fn pod(m: &ResolvedModule, state_dir: &Path, hub: bool) -> Pod {
    let s = &m.spec;
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let mut env = Vec::new();
    let mut annotations = BTreeMap::new();
    if hub {
        volumes.push(host_path(
            "hub-credentials",
            &credentials_dir(state_dir, m.namespace(), &m.name),
            "Directory",
        ));
        mounts.push(VolumeMount {
            name: "hub-credentials".into(),
            mount_path: CREDENTIALS_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
        env = hub_env(m);
    }
    if !s.config.is_empty() {
        volumes.push(host_path(
            "config",
            &config_dir(state_dir, &m.key()),
            "Directory",
        ));
        mounts.push(VolumeMount {
            name: "config".into(),
            mount_path: CONFIG_MOUNT_PATH.into(),
            read_only: Some(true),
            ..Default::default()
        });
        annotations.insert(CONFIG_HASH_ANNOTATION.to_owned(), config_hash(m));
    }
    for (i, d) in s.devices.iter().enumerate() {
        let name = format!("device-{i}");
        volumes.push(host_path(&name, Path::new(&d.host_path), ""));
        mounts.push(VolumeMount {
            name,
            mount_path: d
                .container_path
                .clone()
                .unwrap_or_else(|| d.host_path.clone()),
            ..Default::default()
        });
    }
    let container = Container {
        name: m.name.clone(),
        image: Some(s.image.clone()),
        image_pull_policy: Some(pull_policy(s.image_pull_policy).into()),
        command: non_empty(s.command.clone()),
        args: non_empty(s.args.clone()),
        env: non_empty(
            env.into_iter()
                .chain(s.env.iter().map(|e| value(&e.name, &e.value)))
                .collect(),
        ),
        resources: Some(resources(s.resources.as_ref())),
        volume_mounts: non_empty(mounts),
        security_context: Some(security_context(s)),
        ..Default::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some(m.name.clone()),
            namespace: Some(m.namespace().to_owned()),
            labels: Some(BTreeMap::from([
                (MODULE_LABEL.to_owned(), m.name.clone()),
                (MANAGED_BY_LABEL.to_owned(), AGENT_NAME.to_owned()),
                (SPEC_HASH_LABEL.to_owned(), spec_hash(m)),
            ])),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        spec: Some(PodSpec {
            host_network: Some(s.host_network),
            // Static pods never pass PodSecurity admission: the agent is what holds modules
            // to the restricted profile's syscall filter.
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            restart_policy: Some(restart_policy(s.restart_policy).into()),
            termination_grace_period_seconds: Some(10),
            containers: vec![container],
            volumes: non_empty(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

/// Where the hub is and who the module is on it. The device's address comes from kubelet
/// (the module's own network namespace reaches the hub only through it).
fn hub_env(m: &ResolvedModule) -> Vec<EnvVar> {
    let field = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let ns = m.namespace();
    vec![
        field(env::HOST, "status.hostIP"),
        value(env::MQTT_PORT, &MQTT_PORT.to_string()),
        value(env::NATS_PORT, &NATS_PORT.to_string()),
        value(env::CREDENTIALS, CREDENTIALS_MOUNT),
        value(env::OUTPUTS, &mqtt_topic(&module_outputs(ns, &m.name))),
        value(env::INPUTS, &mqtt_topic(&module_inputs(ns, &m.name))),
        field(env::DEVICE, "spec.nodeName"),
        value(env::NAMESPACE, ns),
        value(env::MODULE, &m.name),
    ]
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..Default::default()
    }
}

/// The module's limits (and equal requests), with [`DEFAULT_MEMORY_LIMIT`] when it states
/// no memory limit.
fn resources(r: Option<&Resources>) -> ResourceRequirements {
    let cpu = r.and_then(|r| r.cpu.clone());
    let memory = r
        .and_then(|r| r.memory.clone())
        .unwrap_or_else(|| DEFAULT_MEMORY_LIMIT.to_owned());
    let q: BTreeMap<String, Quantity> = [("cpu", cpu), ("memory", Some(memory))]
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), Quantity(v?))))
        .collect();
    ResourceRequirements {
        limits: Some(q.clone()),
        requests: Some(q),
        ..Default::default()
    }
}

/// What a module may do to its device. Host devices need the device cgroup opened, which
/// Kubernetes offers only as a privileged container (there is no narrower way without a
/// device plugin): only modules that ask for devices get it, and the controller ships
/// those only to namespaces granted `hostDevices`. Every other module runs with no
/// capabilities and cannot gain privileges (setuid binaries, file capabilities).
fn security_context(s: &EdgeModuleSpec) -> SecurityContext {
    if !s.devices.is_empty() {
        return SecurityContext {
            privileged: Some(true),
            read_only_root_filesystem: s.read_only_root_filesystem.then_some(true),
            ..Default::default()
        };
    }
    SecurityContext {
        privileged: Some(false),
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        read_only_root_filesystem: Some(s.read_only_root_filesystem),
        ..Default::default()
    }
}

/// A short hash of the config files, names and contents.
/// A hash of the module's spec (image, command, env, config, ...): its pod carries it, so
/// that the containers of a previous spec are not taken for the current one.
pub fn spec_hash(m: &ResolvedModule) -> String {
    let bytes = serde_json::to_vec(&m.spec).unwrap_or_default();
    hex(&Sha256::digest(&bytes)[..8])
}

/// Bytes as lowercase hex: the hashes in labels and annotations, the hub's password.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn config_hash(m: &ResolvedModule) -> String {
    let mut h = Sha256::new();
    for f in &m.spec.config {
        h.update(f.name.as_bytes());
        h.update([0]);
        h.update(f.content.len().to_le_bytes());
        h.update(f.content.as_bytes());
    }
    hex(&h.finalize()[..8])
}

fn host_path(name: &str, path: &Path, type_: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        host_path: Some(HostPathVolumeSource {
            path: path.display().to_string(),
            type_: (!type_.is_empty()).then(|| type_.to_owned()),
        }),
        ..Default::default()
    }
}

fn non_empty<T>(v: Vec<T>) -> Option<Vec<T>> {
    (!v.is_empty()).then_some(v)
}

fn pull_policy(p: PullPolicy) -> &'static str {
    match p {
        PullPolicy::Always => "Always",
        PullPolicy::IfNotPresent => "IfNotPresent",
        PullPolicy::Never => "Never",
    }
}

fn restart_policy(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "Always",
        RestartPolicy::OnFailure => "OnFailure",
        RestartPolicy::Never => "Never",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn module(extra: serde_json::Value) -> ResolvedModule {
        let mut v = json!({
            "name": "sensor", "deployment": "ns/base", "moduleRef": "ns/sensor",
            "image": "localhost/sensor:1", "args": ["--rate", "5"],
            "env": [{"name": "SITE", "value": "berlin"}], "restartPolicy": "OnFailure",
        });
        if let (Some(v), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            v.extend(extra.clone());
        }
        serde_json::from_value(v).expect("module")
    }

    /// A module asks for nothing: it runs in its own network namespace, with no
    /// capabilities, no way to gain privileges, the runtime's syscall filter and a memory
    /// limit. Static pods bypass PodSecurity admission: this is what stands in for it.
    #[test]
    fn an_ungranted_module_runs_unprivileged() {
        let yaml = manifest(&module(json!({})), Path::new("/var/lib/agent"), false).expect("yaml");
        let pod: serde_json::Value = serde_yaml::from_str(&yaml).expect("parse back");
        let spec = &pod["spec"];
        assert_eq!(pod["metadata"]["name"], "sensor");
        assert_eq!(pod["metadata"]["namespace"], "ns", "its team's namespace");
        assert_eq!(pod["metadata"]["labels"][MODULE_LABEL], "sensor");
        assert_eq!(spec["hostNetwork"], false);
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(spec["restartPolicy"], "OnFailure");
        let c = &spec["containers"][0];
        assert_eq!(c["image"], "localhost/sensor:1");
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["args"], json!(["--rate", "5"]));
        assert_eq!(c["env"], json!([{"name": "SITE", "value": "berlin"}]));
        let sc = &c["securityContext"];
        assert_eq!(sc["privileged"], false);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["readOnlyRootFilesystem"], false);
        assert_eq!(c["resources"]["limits"]["memory"], DEFAULT_MEMORY_LIMIT);
        assert!(spec.get("volumes").is_none());
    }

    #[test]
    fn host_network_and_a_read_only_root_are_the_modules_choice() {
        let m = module(json!({"hostNetwork": true, "readOnlyRootFilesystem": true}));
        let pod = pod(&m, Path::new("/var/lib/agent"), false);
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.host_network, Some(true));
        let sc = spec.containers[0].security_context.clone().expect("set");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.privileged, Some(false));
    }

    #[test]
    fn config_and_devices_become_host_paths() {
        let m = module(json!({
            "config": [{"name": "app.toml", "content": "rate = 5"}],
            "devices": [{"hostPath": "/dev/ttyUSB0", "containerPath": "/dev/serial"}],
            "resources": {"cpu": "250m", "memory": "64Mi"},
        }));
        let pod = pod(&m, Path::new("/var/lib/agent"), false);
        let spec = pod.spec.expect("spec");
        let vols = spec.volumes.expect("volumes");
        let paths: Vec<_> = vols
            .iter()
            .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
            .collect();
        assert_eq!(paths, ["/var/lib/agent/config/ns/sensor", "/dev/ttyUSB0"]);
        let c = &spec.containers[0];
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(mounts, [CONFIG_MOUNT_PATH, "/dev/serial"]);
        assert_eq!(
            c.security_context.as_ref().and_then(|s| s.privileged),
            Some(true)
        );
        let limits = c.resources.as_ref().and_then(|r| r.limits.clone());
        assert_eq!(
            limits.and_then(|l| l.get("memory").cloned()),
            Some(Quantity("64Mi".into()))
        );
        let annotations = pod.metadata.annotations.expect("annotations");
        assert_eq!(annotations[CONFIG_HASH_ANNOTATION], config_hash(&m));
    }

    #[test]
    fn a_manifest_file_names_its_module_and_no_other_file_names_one() {
        let m = module(json!({"name": "filter", "deployment": "team-a/base"}));
        assert_eq!(
            module_of_manifest_file(&manifest_file(&m)),
            Some(("team-a", "filter"))
        );
        for other in [
            "edgefleet-agent.yaml",
            "edgefleet-hub.yaml",
            "kube-proxy.yaml",
        ] {
            assert_eq!(module_of_manifest_file(other), None, "{other}");
        }
    }

    #[test]
    fn only_module_content_changes_the_manifest() {
        let dir = Path::new("/s");
        let a = module(json!({}));
        let mut moved = a.clone();
        moved.deployment = "ns/other".into();
        assert_eq!(
            manifest(&a, dir, false).ok(),
            manifest(&moved, dir, false).ok()
        );
        let mut new_config = module(json!({"config": [{"name": "a", "content": "1"}]}));
        let before = manifest(&new_config, dir, false).ok();
        new_config.spec.config[0].content = "2".into();
        assert_ne!(
            before,
            manifest(&new_config, dir, false).ok(),
            "config change restarts"
        );
        assert_eq!(manifest_file(&a), "edgefleet-agent-module-ns.sensor.yaml");
    }
}
