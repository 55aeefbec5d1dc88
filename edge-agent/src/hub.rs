//! The device's message hub: `nats-server` with JetStream and an MQTT listener, run as a
//! static pod beside the modules so that it keeps running offline and comes back after a
//! reboot without an apiserver, like they do. Its store lives on the host, in the agent's
//! state directory, never in the container's layer: what the hub has accepted survives the
//! container, the pod and the device restarting.
//!
//! The agent writes the hub's config and manifest when it starts (`place`); turning the hub
//! off (no image) removes the manifest and kubelet stops the hub, keeping its store.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use edgefleet_crds::hub::{
    AGENT_SYSTEM_USER, AGENT_USER, HUB_NAME, MONITOR_PORT, MQTT_PORT, NATS_PORT,
};
use edgefleet_crds::identity::pods::{CONFIG_HASH_ANNOTATION, MANAGED_BY_LABEL};
use edgefleet_crds::identity::{AGENT_NAME, APP_NAME_LABEL};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, HTTPGetAction, Pod, PodSpec, Probe, ResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ObjectMeta;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result, io};
use crate::host_pod::{self, HostMount};
use crate::hub_users::ModuleUser;
use crate::journal::{write_atomic, write_atomic_mode};
use crate::render::hex;

/// Go's soft memory limit for the hub (its container's limit is 128Mi): the collector keeps
/// it under this instead of the kernel killing it at the hard limit.
pub const GO_MEMORY_LIMIT: &str = "96MiB";

/// The hub's manifest in kubelet's staticPodPath: no module's file is named like it
/// (theirs are `edgefleet-agent-module-<namespace>.<name>.yaml`).
pub const MANIFEST_FILE: &str = "edgefleet-agent-hub.yaml";

/// Where the hub's files live in the container.
const CONFIG_MOUNT: &str = "/etc/edgefleet-hub";
const STORE_MOUNT: &str = "/var/lib/edgefleet-hub";
const CONFIG_FILE: &str = "nats.conf";
/// The agent's own password on the hub, generated once per device, readable by root only.
const AGENT_SECRET: &str = "agent.secret";
/// The cloud hub's CA, as the join leaves it in the hub's directory.
const UPSTREAM_CA: &str = "upstream-ca.crt";
/// The largest CA file taken (a bundle of a few certificates).
const MAX_CA_BYTES: u64 = 64 * 1024;
/// The hub's account of the agent and the modules, and its system account.
const DEVICE_ACCOUNT: &str = "DEVICE";
const SYSTEM_ACCOUNT: &str = "SYS";
/// The leaf connection's files in the config directory: the CA, the device's certificate
/// and key (a copy of the agent's credential, readable by root only).
const UPSTREAM_DIR: &str = "upstream";

/// What the agent's settings say about the hub.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub device: String,
    pub namespace: String,
    pub image: String,
    /// The most the store may hold on disk, in MiB.
    pub store_mib: u32,
    /// The cloud hub to join as a leaf node (`tls://HOST:PORT`, checked).
    pub upstream: Option<String>,
    /// The agent's kubeconfig, whose client certificate is the device's identity upstream.
    pub kubeconfig: Option<PathBuf>,
}

/// The hub's directories on the host, under the agent's state directory.
#[derive(Debug, Clone)]
pub struct HubDirs {
    pub config: PathBuf,
    pub store: PathBuf,
    /// One directory of credentials per module (see `hub_users`).
    pub modules: PathBuf,
}

impl HubDirs {
    pub fn under(state_dir: &Path) -> HubDirs {
        let root = state_dir.join("hub");
        HubDirs {
            config: root.join("config"),
            store: root.join("store"),
            modules: root.join("modules"),
        }
    }

    fn upstream_ca(&self) -> PathBuf {
        self.config
            .parent()
            .unwrap_or(&self.config)
            .join(UPSTREAM_CA)
    }
}

/// Copies the cloud hub's CA (from the bootstrap pod's mount) into the hub's directory on
/// the device, when it is a PEM certificate of a sane size and differs from the copy there.
/// The agent's hub trusts it for its leaf connection.
pub fn keep_upstream_ca(src: &Path, state_dir: &Path) -> Result<()> {
    // Read no more than one byte past the bound, whatever the file's size.
    let mut pem = String::new();
    fs::File::open(src)
        .and_then(|f| f.take(MAX_CA_BYTES + 1).read_to_string(&mut pem))
        .map_err(io("read", src))?;
    if pem.len() as u64 > MAX_CA_BYTES || !is_certificate(&pem) {
        return Err(Error::Invalid(format!(
            "{}: not a PEM certificate of at most {MAX_CA_BYTES} bytes",
            src.display()
        )));
    }
    let dirs = HubDirs::under(state_dir);
    let dest = dirs.upstream_ca();
    if fs::read_to_string(&dest).is_ok_and(|old| old == pem) {
        return Ok(());
    }
    let dir = dest.parent().unwrap_or(state_dir);
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    write_atomic(dir, UPSTREAM_CA, pem.as_bytes())?;
    tracing::info!(path = %dest.display(), "the cloud hub's CA is in place");
    Ok(())
}

fn is_certificate(pem: &str) -> bool {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .is_ok_and(|(_, p)| p.label == "CERTIFICATE" && p.parse_x509().is_ok())
}

/// What the leaf connection needs, when all of it is there: the URL, the cloud hub's CA
/// and the device's credential.
struct Upstream<'a> {
    url: &'a str,
    ca: String,
    cert: String,
    key: String,
}

impl Upstream<'_> {
    /// Reads the CA and the credential; says why there is no leaf connection otherwise.
    fn read<'a>(s: &'a HubSettings, dirs: &HubDirs) -> std::result::Result<Upstream<'a>, String> {
        let url = s.upstream.as_deref().ok_or("no cloud hub is set")?;
        let ca = fs::read_to_string(dirs.upstream_ca())
            .map_err(|e| format!("no cloud hub CA ({}): {e}", dirs.upstream_ca().display()))?;
        let kubeconfig = s
            .kubeconfig
            .as_deref()
            .ok_or("no device kubeconfig, so no device certificate")?;
        let credential = crate::join::read_credential(kubeconfig, &s.device)
            .ok_or_else(|| format!("no certificate of {} in {}", s.device, kubeconfig.display()))?;
        Ok(Upstream {
            url,
            ca,
            cert: credential.cert_pem,
            key: credential.key_pem,
        })
    }
}

/// Writes the hub's config with the modules' `users` and its static pod (when `settings`
/// is given), or removes the pod (when it is not). The agent's password is made once and
/// kept: the hub's users do not change when the agent restarts. The pod carries a hash of
/// the config without the modules' users: they change by a reload, not a restart.
pub fn place(
    settings: Option<&HubSettings>,
    state_dir: &Path,
    manifest_dir: &Path,
    users: &[ModuleUser],
) -> Result<()> {
    let Some(s) = settings else {
        return match fs::remove_file(manifest_dir.join(MANIFEST_FILE)) {
            Ok(()) => {
                tracing::info!("hub turned off: its static pod is removed, its store kept");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("remove", &manifest_dir.join(MANIFEST_FILE))(e)),
        };
    };
    let dirs = HubDirs::under(state_dir);
    for dir in [&dirs.config, &dirs.store] {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    let secret = agent_secret(&dirs.config)?;
    let upstream = match Upstream::read(s, &dirs) {
        Ok(u) => {
            let dir = dirs.config.join(UPSTREAM_DIR);
            fs::create_dir_all(&dir).map_err(io("create", &dir))?;
            for (name, pem) in [("ca.crt", &u.ca), ("tls.crt", &u.cert), ("tls.key", &u.key)] {
                write_atomic_mode(&dir, name, pem.as_bytes(), 0o600)?;
            }
            Some(u)
        }
        Err(why) => {
            if s.upstream.is_some() {
                tracing::warn!(%why, "the hub runs on its own: nothing goes upstream");
            }
            None
        }
    };
    let url = upstream.as_ref().map(|u| u.url);
    let config_now = config(s, &secret, url, users);
    write_atomic_mode(&dirs.config, CONFIG_FILE, config_now.as_bytes(), 0o600)?;
    let config = config(s, &secret, url, &[]);
    // A renewed certificate or a new CA restarts the hub, as a new config does.
    let identity = upstream
        .as_ref()
        .map(|u| format!("{}{}", u.ca, u.cert))
        .unwrap_or_default();
    let manifest = serde_yaml::to_string(&pod(s, &dirs, &format!("{config}{identity}")))
        .map_err(Error::Render)?;
    write_atomic(manifest_dir, MANIFEST_FILE, manifest.as_bytes())?;
    tracing::info!(image = %s.image, store = %dirs.store.display(), "hub placed");
    Ok(())
}

/// The agent's password on the hub (for both its users), made once.
pub fn agent_secret(config_dir: &Path) -> Result<String> {
    kept_secret(config_dir, AGENT_SECRET, 0o600)
}

/// A password kept in `dir/file`: read back if made before, else 32 random bytes, hex,
/// written with `mode`.
pub fn kept_secret(dir: &Path, file: &str, mode: u32) -> Result<String> {
    let path = dir.join(file);
    match fs::read_to_string(&path) {
        Ok(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => return Ok(s),
        Ok(_) => tracing::warn!(path = %path.display(), "replacing a damaged hub secret"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("read", &path)(e)),
    }
    let mut bytes = [0u8; 32];
    let urandom = Path::new("/dev/urandom");
    fs::File::open(urandom)
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io("read", urandom))?;
    let secret = hex(&bytes);
    write_atomic_mode(dir, file, secret.as_bytes(), mode)?;
    Ok(secret)
}

/// The hub's config (NATS's config syntax). Every listener needs a user: nobody connects
/// anonymously. The MQTT listener is on every address of the device, because modules in
/// their own network namespace reach the host only through its addresses; the monitoring
/// endpoint stays on the loopback. The agent and the modules share the account DEVICE
/// (with JetStream, which MQTT needs); the agent alone is in the system account, from
/// which it asks for reloads.
pub fn config(
    s: &HubSettings,
    agent_secret: &str,
    upstream: Option<&str>,
    users: &[ModuleUser],
) -> String {
    let device = &s.device;
    let store_mib = s.store_mib;
    let leaf = upstream.map(leaf_remote).unwrap_or_default();
    let modules: String = users
        .iter()
        .map(|u| format!("\n      {}", u.config_entry()))
        .collect();
    format!(
        r#"# Written by {AGENT_NAME} when it starts; edits are overwritten.
server_name: "{device}"
listen: "0.0.0.0:{NATS_PORT}"
http: "127.0.0.1:{MONITOR_PORT}"
max_payload: 1MB

jetstream {{
  store_dir: "{STORE_MOUNT}"
  domain: "{device}"
  max_file_store: {store_mib}MB
  max_memory_store: 16MB
}}

mqtt {{
  listen: "0.0.0.0:{MQTT_PORT}"
}}

accounts {{
  {DEVICE_ACCOUNT}: {{
    jetstream: enabled
    users: [
      {{user: "{AGENT_USER}", password: "{agent_secret}"}}{modules}
    ]
  }}
  {SYSTEM_ACCOUNT}: {{
    users: [
      {{user: "{AGENT_SYSTEM_USER}", password: "{agent_secret}"}}
    ]
  }}
}}
system_account: {SYSTEM_ACCOUNT}
{leaf}"#
    )
}

/// The leaf connection to the cloud hub: TLS both ways, the device's certificate as its
/// identity (the cloud hub maps it to the device's user and its subjects).
fn leaf_remote(url: &str) -> String {
    let dir = format!("{CONFIG_MOUNT}/{UPSTREAM_DIR}");
    format!(
        r#"
leafnodes {{
  remotes: [
    {{
      url: "{url}"
      account: {DEVICE_ACCOUNT}
      tls {{
        cert_file: "{dir}/tls.crt"
        key_file: "{dir}/tls.key"
        ca_file: "{dir}/ca.crt"
        timeout: 5
      }}
    }}
  ]
}}
"#
    )
}

/// The hub's static pod, carrying a hash of its config so that kubelet restarts the hub
/// when the config changes (a changed file alone would go unnoticed). Host network, because modules of every network namespace reach it
/// through the host's addresses; root without any capability, because its store and config
/// are root's directories on the host (the agent has no capability to hand them to another
/// user); nothing writable but the store.
pub fn pod(s: &HubSettings, dirs: &HubDirs, config: &str) -> Pod {
    let (volumes, volume_mounts) = host_pod::volumes(&[
        HostMount {
            name: "config",
            host: &dirs.config,
            at: Path::new(CONFIG_MOUNT),
            type_: "Directory",
            read_only: true,
        },
        HostMount {
            name: "store",
            host: &dirs.store,
            at: Path::new(STORE_MOUNT),
            type_: "Directory",
            read_only: false,
        },
    ]);
    Pod {
        metadata: ObjectMeta {
            name: Some(HUB_NAME.into()),
            namespace: Some(s.namespace.clone()),
            labels: Some(BTreeMap::from([
                (APP_NAME_LABEL.to_owned(), HUB_NAME.to_owned()),
                (MANAGED_BY_LABEL.to_owned(), AGENT_NAME.to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_owned(),
                hex(&Sha256::digest(config.as_bytes())[..8]),
            )])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            host_network: Some(true),
            restart_policy: Some("Always".into()),
            termination_grace_period_seconds: Some(30),
            containers: vec![Container {
                name: HUB_NAME.into(),
                image: Some(s.image.clone()),
                image_pull_policy: Some("IfNotPresent".into()),
                args: Some(vec![
                    "--config".into(),
                    format!("{CONFIG_MOUNT}/{CONFIG_FILE}"),
                ]),
                // Go's collector keeps the hub under its limit instead of being killed at it.
                env: Some(vec![EnvVar {
                    name: "GOMEMLIMIT".into(),
                    value: Some(GO_MEMORY_LIMIT.into()),
                    ..Default::default()
                }]),
                resources: Some(ResourceRequirements {
                    requests: Some(host_pod::quantities("20m", "32Mi")),
                    limits: Some(host_pod::quantities("500m", "128Mi")),
                    ..Default::default()
                }),
                liveness_probe: Some(Probe {
                    http_get: Some(HTTPGetAction {
                        host: Some("127.0.0.1".into()),
                        path: Some("/healthz".into()),
                        port: IntOrString::Int(i32::from(MONITOR_PORT)),
                        ..Default::default()
                    }),
                    initial_delay_seconds: Some(10),
                    period_seconds: Some(10),
                    failure_threshold: Some(6),
                    ..Default::default()
                }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> HubSettings {
        HubSettings {
            device: "edge-1".into(),
            namespace: "edgefleet-system".into(),
            image: "localhost/edgefleet/hub:2.15.2".into(),
            store_mib: 256,
            upstream: None,
            kubeconfig: None,
        }
    }

    /// The store is the host's: a new container, pod or boot finds what the last one
    /// accepted. Nothing else the hub may write.
    #[test]
    fn the_store_is_on_the_host_and_nothing_else_is_writable() {
        let dirs = HubDirs::under(Path::new("/var/lib/edgefleet-agent"));
        let pod = pod(&settings(), &dirs, "config");
        let spec = pod.spec.expect("in the test setup");
        let c = &spec.containers[0];
        let sc = c.security_context.as_ref().expect("in the test setup");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().expect("in the test setup").drop,
            Some(vec!["ALL".into()])
        );
        let writable: Vec<_> = c
            .volume_mounts
            .as_ref()
            .expect("in the test setup")
            .iter()
            .filter(|m| m.read_only != Some(true))
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(writable, [STORE_MOUNT]);
        let store = spec
            .volumes
            .expect("in the test setup")
            .into_iter()
            .find(|v| v.name == "store")
            .expect("in the test setup");
        assert_eq!(
            store.host_path.expect("in the test setup").path,
            "/var/lib/edgefleet-agent/hub/store"
        );
    }

    /// Nobody connects anonymously, the store is bounded, and JetStream's domain is the
    /// device's own (the cloud tells devices' streams apart by it).
    #[test]
    fn the_config_names_the_device_bounds_the_store_and_admits_no_anonymous_client() {
        let c = config(&settings(), "s3cret", None, &[]);
        assert!(c.contains("server_name: \"edge-1\""));
        assert!(c.contains("domain: \"edge-1\""));
        assert!(c.contains("max_file_store: 256MB"));
        assert!(c.contains(&format!("user: \"{AGENT_USER}\", password: \"s3cret\"")));
        assert!(!c.contains("no_auth_user"));
        assert!(c.contains(&format!("http: \"127.0.0.1:{MONITOR_PORT}\"")));
        assert!(!c.contains("leafnodes"), "no cloud hub, no leaf connection");
        let leaf = config(&settings(), "s3cret", Some("tls://10.77.0.2:7422"), &[]);
        assert!(leaf.contains("url: \"tls://10.77.0.2:7422\""));
        assert!(leaf.contains("cert_file: \"/etc/edgefleet-hub/upstream/tls.crt\""));
    }

    /// The CA comes from a mounted ConfigMap: only a PEM certificate of a sane size is
    /// taken, and only then is anything written.
    #[test]
    fn only_a_certificate_becomes_the_upstream_ca() {
        let state = tempfile::tempdir().expect("in the test setup");
        let src = state.path().join("ca.crt");
        for bad in [
            "",
            "not pem",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        ] {
            fs::write(&src, bad).expect("in the test setup");
            assert!(keep_upstream_ca(&src, state.path()).is_err(), "{bad:?}");
        }
        let key = rcgen::KeyPair::generate().expect("in the test setup");
        let ca = rcgen::CertificateParams::new(vec![])
            .expect("in the test setup")
            .self_signed(&key)
            .expect("in the test setup")
            .pem();
        fs::write(&src, format!("{ca}{}", "#".repeat(70_000))).expect("in the test setup");
        assert!(keep_upstream_ca(&src, state.path()).is_err(), "too big");
        fs::write(&src, &ca).expect("in the test setup");
        keep_upstream_ca(&src, state.path()).expect("a certificate is taken");
        let dirs = HubDirs::under(state.path());
        assert_eq!(fs::read_to_string(dirs.upstream_ca()).expect("copied"), ca);
    }

    #[test]
    fn placing_keeps_the_secret_and_turning_off_removes_only_the_pod() {
        let state = tempfile::tempdir().expect("in the test setup");
        let manifests = tempfile::tempdir().expect("in the test setup");
        place(Some(&settings()), state.path(), manifests.path(), &[]).expect("in the test setup");
        let dirs = HubDirs::under(state.path());
        let secret = fs::read_to_string(dirs.config.join(AGENT_SECRET)).expect("in the test setup");
        assert_eq!(secret.len(), 64);
        place(Some(&settings()), state.path(), manifests.path(), &[]).expect("in the test setup");
        assert_eq!(
            fs::read_to_string(dirs.config.join(AGENT_SECRET)).expect("in the test setup"),
            secret,
            "a restart must not change the agent's password"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dirs.config.join(CONFIG_FILE))
            .expect("in the test setup")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the config holds a password: root's only");
        let manifest =
            fs::read_to_string(manifests.path().join(MANIFEST_FILE)).expect("in the test setup");
        let bigger = HubSettings {
            store_mib: 512,
            ..settings()
        };
        place(Some(&bigger), state.path(), manifests.path(), &[]).expect("in the test setup");
        assert_ne!(
            fs::read_to_string(manifests.path().join(MANIFEST_FILE)).expect("in the test setup"),
            manifest,
            "a changed config must change the pod, or kubelet keeps the old hub"
        );

        fs::write(dirs.store.join("kept"), "x").expect("in the test setup");
        place(None, state.path(), manifests.path(), &[]).expect("in the test setup");
        assert!(!manifests.path().join(MANIFEST_FILE).exists());
        assert!(
            dirs.store.join("kept").exists(),
            "the store outlives the hub"
        );
        place(None, state.path(), manifests.path(), &[]).expect("in the test setup");
    }
}
