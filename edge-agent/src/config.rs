//! The agent's configuration: one clap struct with environment fallbacks, parsed once in
//! `main` and passed down. The defaults are k3s's paths.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edgefleet_crds::identity::SYSTEM_NAMESPACE;
use edgefleet_crds::{duration, hub};

use crate::apiserver::Protocol;

#[derive(Parser, Debug, Clone)]
#[command(name = "edgefleet-agent", version, about = "edgefleet's device agent")]
pub struct Config {
    /// This device's name: its Node and its EdgeDevice.
    #[arg(long, env = "EDGEFLEET_DEVICE", value_parser = device_name)]
    pub device: String,

    /// The device's kubeconfig (identity `edgefleet:device:<name>`). Without it, KUBECONFIG
    /// or the in-cluster config is used.
    #[arg(long, env = "EDGEFLEET_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// kubelet's staticPodPath, where module manifests go.
    #[arg(
        long,
        env = "EDGEFLEET_MANIFEST_DIR",
        default_value = "/var/lib/rancher/k3s/agent/pod-manifests"
    )]
    pub manifest_dir: PathBuf,

    /// The container runtime's CRI socket.
    #[arg(
        long,
        env = "EDGEFLEET_CRI_SOCKET",
        default_value = "/run/k3s/containerd/containerd.sock"
    )]
    pub cri_socket: PathBuf,

    /// Where the journal, the inventory of written manifests and module config files live.
    /// Config files are mounted into module pods from here, so this is a host path.
    #[arg(
        long,
        env = "EDGEFLEET_STATE_DIR",
        default_value = "/var/lib/edgefleet-agent"
    )]
    pub state_dir: PathBuf,

    /// The protocol spoken to the apiserver: http1 (a connection for each request in
    /// flight, about three a device) or http2 (one pinged connection a device, for
    /// apiservers whose open connections a large fleet would exhaust).
    #[arg(
        long,
        env = "EDGEFLEET_APISERVER_PROTOCOL",
        value_enum,
        default_value_t
    )]
    pub apiserver_protocol: Protocol,

    /// The namespace of the device's Lease.
    #[arg(long, env = "EDGEFLEET_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    pub namespace: String,

    /// How often the Lease is renewed.
    #[arg(long, env = "EDGEFLEET_LEASE_INTERVAL", default_value = "10s", value_parser = duration::parse)]
    pub lease_interval: Duration,

    /// How often the runtime is observed and manifests are brought in line.
    #[arg(long, env = "EDGEFLEET_SYNC_INTERVAL", default_value = "2s", value_parser = duration::parse)]
    pub sync_interval: Duration,

    /// The longest pause between retries while the apiserver is unreachable. Retries are
    /// jittered; this bounds how late a reconnect is noticed.
    #[arg(long, env = "EDGEFLEET_MAX_BACKOFF", default_value = "2s", value_parser = duration::parse)]
    pub max_backoff: Duration,

    /// How many accepted desired states the journal keeps.
    #[arg(long, env = "EDGEFLEET_JOURNAL_KEEP", default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub journal_keep: u16,

    /// The message hub's image (nats-server). With it the agent runs the hub as a static pod
    /// beside the modules; without it there is no hub and its pod is removed.
    #[arg(long, env = "EDGEFLEET_HUB_IMAGE")]
    pub hub_image: Option<String>,

    /// The cloud hub the device's hub joins as a leaf node (`tls://HOST:PORT`), with the
    /// device's own client certificate; it trusts the CA the join leaves in the state
    /// directory. Without it the hub runs on its own.
    #[arg(long, env = "EDGEFLEET_HUB_UPSTREAM", value_parser = upstream_url)]
    pub hub_upstream: Option<String>,

    /// The most the hub's store may hold on the device's disk, in MiB.
    #[arg(long, env = "EDGEFLEET_HUB_STORE_MIB", default_value_t = hub::DEFAULT_STORE_MIB,
          value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub hub_store_mib: u32,

    /// How long an upstream message waits on the device for the cloud before it expires.
    #[arg(long, env = "EDGEFLEET_HUB_UPSTREAM_TTL",
          default_value = "7200s", value_parser = edgefleet_crds::duration::parse)]
    pub hub_upstream_ttl: std::time::Duration,

    /// The most the upstream messages waiting on the device may take, in MiB (within the
    /// hub's store).
    #[arg(long, env = "EDGEFLEET_HUB_UPSTREAM_MIB", default_value_t = hub::DEFAULT_UPSTREAM_MIB,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub hub_upstream_mib: u32,

    /// What a full upstream store does with a new message.
    #[arg(
        long,
        env = "EDGEFLEET_HUB_UPSTREAM_WHEN_FULL",
        value_enum,
        default_value = "drop-oldest"
    )]
    pub hub_upstream_when_full: crate::upstream::WhenFull,

    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Config {
    /// The hub's settings, when the hub is on.
    pub fn hub(&self) -> Option<crate::hub::HubSettings> {
        self.hub_image
            .as_ref()
            .map(|image| crate::hub::HubSettings {
                device: self.device.clone(),
                namespace: self.namespace.clone(),
                image: image.clone(),
                store_mib: self.hub_store_mib,
                upstream: self.hub_upstream.clone(),
                kubeconfig: self.kubeconfig.clone(),
            })
    }

    /// The device's upstream store: within the hub's store, beside the outputs stream (the
    /// hub refuses streams whose limits add up to more than its store).
    pub fn upstream_store(&self) -> crate::upstream::StoreSettings {
        let outputs = hub::OUTPUTS_MIB.min(self.hub_store_mib / 8).max(1);
        let room = self.hub_store_mib.saturating_sub(outputs * 2).max(1);
        if self.hub_upstream_mib > room {
            tracing::warn!(
                asked = self.hub_upstream_mib,
                taken = room,
                "the upstream store must fit in the hub's store beside the outputs; it takes less"
            );
        }
        crate::upstream::StoreSettings {
            device: self.device.clone(),
            ttl: self.hub_upstream_ttl,
            max_mib: self.hub_upstream_mib.min(room),
            outputs_mib: outputs,
            when_full: self.hub_upstream_when_full,
        }
    }
}

#[derive(Subcommand, Debug, Clone)]
pub enum Command {
    /// Print the agent's own static pod manifest for these settings, for bootstrapping a
    /// device: put it into kubelet's staticPodPath.
    StaticPod {
        /// The agent's container image.
        #[arg(long)]
        image: String,
    },
    /// Join this device: obtain its client certificate, write the agent's kubeconfig into
    /// the state directory and the agent's static pod into the manifest directory, then
    /// keep the certificate renewed. Run by the chart's bootstrap DaemonSet, which mounts
    /// the host's directories into its pod; the directory flags above are the host's paths.
    Join(JoinArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct JoinArgs {
    /// The agent's container image.
    #[arg(long)]
    pub image: String,
    /// The apiserver URL the agent uses; by default the one this pod reaches.
    #[arg(long)]
    pub server: Option<String>,
    /// Where the host's manifest directory is mounted in this pod.
    #[arg(long, default_value = "/host/manifests")]
    pub write_manifest_dir: PathBuf,
    /// Where the host's state directory is mounted in this pod.
    #[arg(long, default_value = "/host/state")]
    pub write_state_dir: PathBuf,
    /// The cloud hub's CA (PEM), mounted into the bootstrap pod; copied into the state
    /// directory for the device's hub to trust.
    #[arg(long)]
    pub hub_upstream_ca_file: Option<PathBuf>,
    /// How often the certificate and the agent's pod are checked.
    #[arg(long, default_value = "1h", value_parser = duration::parse)]
    pub check_interval: Duration,
}

fn upstream_url(s: &str) -> Result<String, String> {
    edgefleet_crds::hub::check_upstream_url(s).map(|()| s.to_owned())
}

fn device_name(s: &str) -> Result<String, String> {
    // Node names are DNS subdomains; the device name also names files and RBAC objects.
    edgefleet_crds::names::check_dns_label(s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k3s_defaults() {
        let c = Config::try_parse_from(["edgefleet-agent", "--device", "edge-1"]).expect("parse");
        assert_eq!(
            c.manifest_dir,
            PathBuf::from("/var/lib/rancher/k3s/agent/pod-manifests")
        );
        assert_eq!(
            c.cri_socket,
            PathBuf::from("/run/k3s/containerd/containerd.sock")
        );
        assert_eq!(c.lease_interval, Duration::from_secs(10));
        assert_eq!(c.namespace, "edgefleet-system");
    }

    /// JetStream refuses a stream whose limit does not fit beside the others in the hub's
    /// store: the upstream store and the outputs stream always fit, however small the store.
    #[test]
    fn the_upstream_store_and_the_outputs_fit_in_the_hubs_store() {
        for (store, upstream) in [
            ("64", "512"),
            ("16", "512"),
            ("1024", "512"),
            ("4096", "100"),
        ] {
            let c = Config::try_parse_from([
                "edgefleet-agent",
                "--device",
                "edge-1",
                "--hub-store-mib",
                store,
                "--hub-upstream-mib",
                upstream,
            ])
            .expect("parse");
            let s = c.upstream_store();
            assert!(
                s.max_mib + 2 * s.outputs_mib <= c.hub_store_mib,
                "{store} {upstream}: {s:?}"
            );
            assert!(s.max_mib >= 1 && s.outputs_mib >= 1);
        }
    }

    #[test]
    fn rejects_bad_device_names_and_durations() {
        let parse = |args: &[&str]| Config::try_parse_from(["edgefleet-agent"].iter().chain(args));
        assert!(parse(&["--device", "../etc"]).is_err());
        assert!(parse(&[]).is_err());
        assert!(parse(&["--device", "edge-1", "--lease-interval", "soon"]).is_err());
        let c = parse(&["--device", "edge-1", "--sync-interval", "500ms"]).expect("parse");
        assert_eq!(c.sync_interval, Duration::from_millis(500));
    }
}
