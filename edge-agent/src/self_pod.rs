//! The agent's own static pod, printed for bootstrapping a device. The agent runs as a
//! static pod so that after a reboot kubelet starts it with no apiserver, and it then brings
//! the modules back from its journal.

use std::collections::BTreeMap;
use std::path::Path;

use edgefleet_crds::identity::pods::MANAGED_BY_LABEL;
use edgefleet_crds::identity::{AGENT_NAME, APP_NAME_LABEL};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ResourceRequirements};
use kube::api::ObjectMeta;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::host_pod::{self, HostMount};

/// The agent's own manifest file name in the staticPodPath.
pub const FILE: &str = "edgefleet-agent.yaml";

pub fn print(config: &Config, image: &str) -> Result<()> {
    let yaml = serde_yaml::to_string(&pod(config, image)).map_err(Error::Render)?;
    print!("{yaml}");
    Ok(())
}

pub fn pod(c: &Config, image: &str) -> Pod {
    let socket_dir = c.cri_socket.parent().unwrap_or(Path::new("/"));
    let at_same_path = |name, path, type_, read_only| HostMount {
        name,
        host: path,
        at: path,
        type_,
        read_only,
    };
    let mut mounts = vec![
        at_same_path(
            "manifests",
            c.manifest_dir.as_path(),
            "DirectoryOrCreate",
            false,
        ),
        at_same_path("state", c.state_dir.as_path(), "DirectoryOrCreate", false),
        at_same_path("cri", socket_dir, "Directory", false),
    ];
    if let Some(kc) = &c.kubeconfig {
        mounts.push(at_same_path("kubeconfig", kc.as_path(), "File", true));
    }
    let (volumes, volume_mounts) = host_pod::volumes(&mounts);
    let mut args = vec![
        format!("--device={}", c.device),
        format!("--manifest-dir={}", c.manifest_dir.display()),
        format!("--cri-socket={}", c.cri_socket.display()),
        format!("--state-dir={}", c.state_dir.display()),
        format!("--namespace={}", c.namespace),
        format!("--lease-interval={}ms", c.lease_interval.as_millis()),
        format!("--sync-interval={}ms", c.sync_interval.as_millis()),
        format!("--max-backoff={}ms", c.max_backoff.as_millis()),
        format!("--journal-keep={}", c.journal_keep),
        format!("--apiserver-protocol={}", value_name(&c.apiserver_protocol)),
    ];
    if let Some(kc) = &c.kubeconfig {
        args.push(format!("--kubeconfig={}", kc.display()));
    }
    if let Some(image) = &c.hub_image {
        args.push(format!("--hub-image={image}"));
        args.push(format!("--hub-store-mib={}", c.hub_store_mib));
        args.push(format!(
            "--hub-upstream-ttl={}s",
            c.hub_upstream_ttl.as_secs()
        ));
        args.push(format!("--hub-upstream-mib={}", c.hub_upstream_mib));
        args.push(format!(
            "--hub-upstream-when-full={}",
            value_name(&c.hub_upstream_when_full)
        ));
        if let Some(url) = &c.hub_upstream {
            args.push(format!("--hub-upstream={url}"));
        }
    }
    Pod {
        metadata: ObjectMeta {
            name: Some(AGENT_NAME.into()),
            namespace: Some(c.namespace.clone()),
            labels: Some(BTreeMap::from([
                (APP_NAME_LABEL.to_owned(), AGENT_NAME.to_owned()),
                (
                    MANAGED_BY_LABEL.to_owned(),
                    "edgefleet-bootstrap".to_owned(),
                ),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            host_network: Some(true),
            restart_policy: Some("Always".into()),
            termination_grace_period_seconds: Some(10),
            containers: vec![Container {
                name: AGENT_NAME.into(),
                image: Some(image.to_owned()),
                image_pull_policy: Some("IfNotPresent".into()),
                args: Some(args),
                env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                    name: "RUST_LOG".into(),
                    value: Some(c.log.clone()),
                    ..Default::default()
                }]),
                resources: Some(ResourceRequirements {
                    requests: Some(host_pod::quantities("10m", "16Mi")),
                    limits: Some(host_pod::quantities("200m", "64Mi")),
                    ..Default::default()
                }),
                // Root, because kubelet's manifest directory and the CRI socket are root's;
                // no capabilities beyond that, and nothing else writable.
                security_context: Some(host_pod::root_without_capabilities()),
                volume_mounts: Some(volume_mounts),
                ..Default::default()
            }],
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    }
}

/// The name a setting's value has on the command line.
fn value_name(value: &impl clap::ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::Protocol;
    use clap::Parser;

    #[test]
    fn the_agent_pod_mounts_what_its_flags_name() {
        let c = Config::try_parse_from([
            "edgefleet-agent",
            "--device=edge-1",
            "--kubeconfig=/etc/edgefleet/agent.kubeconfig",
            "--manifest-dir=/m",
            "--state-dir=/s",
            "--cri-socket=/run/containerd/containerd.sock",
            "--apiserver-protocol=http2",
        ])
        .expect("parse");
        let pod = pod(&c, "localhost/edgefleet/agent:1");
        let spec = pod.spec.expect("spec");
        assert_eq!(spec.host_network, Some(true));
        let paths: Vec<_> = spec
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.host_path.as_ref().map(|h| h.path.as_str()))
            .collect();
        assert_eq!(
            paths,
            [
                "/m",
                "/s",
                "/run/containerd",
                "/etc/edgefleet/agent.kubeconfig"
            ]
        );
        let args = spec.containers[0].args.clone().expect("args");
        // The printed flags parse back into the same settings.
        let back =
            Config::try_parse_from(std::iter::once("edgefleet-agent".to_owned()).chain(args))
                .expect("args parse back");
        assert_eq!(back.device, "edge-1");
        assert_eq!(back.manifest_dir, c.manifest_dir);
        assert_eq!(back.lease_interval, c.lease_interval);
        assert_eq!(back.kubeconfig, c.kubeconfig);
        assert_eq!(back.apiserver_protocol, Protocol::Http2);
    }
}
