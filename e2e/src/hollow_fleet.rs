//! Hollow devices: the real agent loop ([`edgefleet_agent::run_with`]) under each device's
//! own identity, with an in-memory runtime ([`crate::hollow`]) and its journal on tmpfs,
//! many in one process. A device gets its identity either through the real join (a test)
//! or, for a benchmark's thousands, straight from the lab's cluster CA ([`LabCa`]): the same
//! subject the join's certificate carries, `edgefleet:device:<device>` in
//! `edgefleet:devices`, for client authentication only.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Parser;
use edgefleet_agent::Config;
use edgefleet_agent::apiserver::{self, Protocol};
use edgefleet_agent::join::{Credential, kubeconfig};
use edgefleet_crds::EdgeDevice;
use edgefleet_crds::identity::{DEVICE_LABEL, DEVICE_LABEL_VALUE, DEVICES_GROUP, device_user};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Lab;
use crate::hollow::{Behaviour, HollowRuntime};

/// How long a certificate issued from the lab CA is valid: longer than any benchmark.
const CERTIFICATE_DAYS: i64 = 2;

/// The cluster as a device's kubeconfig names it: the apiserver URL the host reaches (the
/// lab's loopback forwarder) and the CA that verifies it.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub server: String,
    pub ca_pem: String,
}

impl Cluster {
    /// The lab's, from its admin kubeconfig.
    pub fn of(lab: &Lab) -> Cluster {
        let kc = kube::config::Kubeconfig::read_from(lab.kubeconfig())
            .unwrap_or_else(|e| panic!("cannot read the lab's admin kubeconfig: {e}"));
        let cluster = kc
            .clusters
            .first()
            .and_then(|c| c.cluster.clone())
            .expect("the admin kubeconfig names a cluster");
        let ca = cluster
            .certificate_authority_data
            .expect("the admin kubeconfig carries the lab CA");
        let ca_pem = String::from_utf8(BASE64.decode(ca).expect("base64 CA")).expect("PEM CA");
        Cluster {
            server: cluster.server.expect("the admin kubeconfig names a server"),
            ca_pem,
        }
    }

    /// The same cluster at another address of its apiserver.
    pub fn at(self, server: &str) -> Cluster {
        Cluster {
            server: server.to_owned(),
            ..self
        }
    }

    /// A client that presents `token` and nothing else (a bootstrap pod's).
    pub async fn token_client(&self, token: &str) -> Client {
        let mut config = kube::Config::new(self.server.parse().expect("the server's URL"));
        config.root_cert = Some(vec![der(&self.ca_pem)]);
        config.auth_info.token = Some(token.to_owned().into());
        Client::try_from(config).expect("a client")
    }

    /// A client with `device`'s credential, through the kubeconfig the join writes, on
    /// `protocol` as the agent would speak it.
    pub async fn device_client(
        &self,
        device: &str,
        credential: &Credential,
        protocol: Protocol,
    ) -> Client {
        let yaml = kubeconfig(&self.server, &self.ca_pem, device, credential)
            .unwrap_or_else(|e| panic!("cannot write {device}'s kubeconfig: {e}"));
        let kc = kube::config::Kubeconfig::from_yaml(&yaml).expect("the join's kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap_or_else(|e| panic!("{device}'s kubeconfig: {e}"));
        apiserver::client(config, protocol).unwrap_or_else(|e| panic!("a client for {device}: {e}"))
    }
}

/// The DER of a PEM certificate.
fn der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    BASE64.decode(body).expect("a PEM certificate")
}

/// The lab's cluster CA, which also signs the certificates the controller approves
/// (kube-controller-manager's signer): where the lab keeps it, root's only.
#[derive(Debug)]
pub struct LabCa {
    issuer: Issuer<'static, KeyPair>,
}

impl LabCa {
    pub fn open() -> LabCa {
        let dir = std::env::var_os("EDGEFLEET_LAB_DIR")
            .map_or_else(|| PathBuf::from("/var/lib/edgefleet-lab"), PathBuf::from)
            .join("pki");
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name))
                .unwrap_or_else(|e| panic!("cannot read the lab CA's {name}: {e}"))
        };
        let key = KeyPair::from_pem(&pkcs8(&dir.join("ca.key"))).expect("the lab CA's key");
        let issuer = Issuer::from_ca_cert_pem(&read("ca.crt"), key).expect("the lab CA");
        LabCa { issuer }
    }

    /// A new key and a certificate for `device`'s agent, as the join's would be.
    pub fn credential(&self, device: &str) -> Credential {
        self.credential_in(device, None)
    }

    /// The same, in `group` as well (an organization of the subject): the lab's apiserver
    /// asks the device authorizer only about devices in its group (`Lab::info`).
    pub fn credential_in(&self, device: &str, group: Option<&str>) -> Credential {
        let key = KeyPair::generate().expect("a P-256 key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut subject = DistinguishedName::new();
        subject.push(DnType::OrganizationName, DEVICES_GROUP);
        if let Some(group) = group {
            // A second organization: rcgen keeps one value per attribute type, so this one
            // goes by the organization's OID (2.5.4.10), which the apiserver reads the same.
            subject.push(DnType::CustomDnType(vec![2, 5, 4, 10]), group);
        }
        subject.push(DnType::CommonName, device_user(device));
        params.distinguished_name = subject;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        // Midnight (UTC) of a day, as rcgen takes a certificate's validity.
        let day = |d: jiff::civil::Date| {
            let small = |n: i8| u8::try_from(n).expect("a month or a day");
            rcgen::date_time_ymd(i32::from(d.year()), small(d.month()), small(d.day()))
        };
        let today = jiff::Timestamp::now()
            .to_zoned(jiff::tz::TimeZone::UTC)
            .date();
        params.not_before = day(today.yesterday().expect("a yesterday"));
        params.not_after = day(today
            .checked_add(jiff::Span::new().days(CERTIFICATE_DAYS))
            .expect("a date"));
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a signed certificate");
        Credential::parse(cert.pem(), key.serialize_pem(), device)
            .expect("the certificate names the device")
    }
}

/// The CA key as PKCS#8, which is what rcgen reads with ring: the lab's is SEC1 (openssl's
/// `ecparam -genkey`). One openssl call per process.
fn pkcs8(key: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["pkcs8", "-topk8", "-nocrypt", "-in"])
        .arg(key)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl cannot read {}: {}",
        key.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("PEM")
}

/// A device's Node, as its kubelet registers it, for a device with no kubelet behind it.
pub fn node(device: &str, labels: &BTreeMap<String, String>) -> Node {
    let mut labels = labels.clone();
    labels.insert(DEVICE_LABEL.to_owned(), DEVICE_LABEL_VALUE.to_owned());
    Node {
        metadata: ObjectMeta {
            name: Some(device.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Registers `device` as a joined device is: its Node (which a kubelet would create) and
/// its EdgeDevice with `labels` (an administrator's enrolment). Either may exist already.
pub async fn register(
    admin: &Client,
    device: &str,
    labels: &BTreeMap<String, String>,
) -> kube::Result<()> {
    create_node(admin, device, labels).await?;
    enrol(admin, device, labels).await
}

/// Creates `device`'s Node as its kubelet would when joining the cluster, with `labels`;
/// it may exist already.
pub async fn create_node(
    admin: &Client,
    device: &str,
    labels: &BTreeMap<String, String>,
) -> kube::Result<()> {
    let nodes: Api<Node> = Api::all(admin.clone());
    ok_if_there(
        nodes
            .create(&PostParams::default(), &node(device, labels))
            .await
            .map(|_| ()),
    )
}

/// Enrols `device` as an administrator does: its EdgeDevice with `labels`; it may exist
/// already.
pub async fn enrol(
    admin: &Client,
    device: &str,
    labels: &BTreeMap<String, String>,
) -> kube::Result<()> {
    let mut d = EdgeDevice::new(device, Default::default());
    d.metadata.labels = Some(labels.clone());
    let devices: Api<EdgeDevice> = Api::all(admin.clone());
    ok_if_there(devices.create(&PostParams::default(), &d).await.map(|_| ()))
}

/// A create's answer, with "it exists already" taken for success.
fn ok_if_there(r: kube::Result<()>) -> kube::Result<()> {
    match r {
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        other => other,
    }
}

/// Removes the Nodes and EdgeDevices labelled `label=yes` (their Leases and RBAC go with
/// the EdgeDevices), and waits until the EdgeDevices are gone: a test's, also what an
/// earlier run of it left.
pub async fn unregister_labelled(admin: &Client, label: &str) {
    let mine = ListParams::default().labels(&format!("{label}=yes"));
    let dp = DeleteParams::default();
    let devices = Api::<EdgeDevice>::all(admin.clone());
    let _ = devices.delete_collection(&dp, &mine).await;
    let _ = Api::<Node>::all(admin.clone())
        .delete_collection(&dp, &mine)
        .await;
    crate::wait_for(
        &format!("the EdgeDevices labelled {label} to go"),
        Duration::from_secs(60),
        || async {
            let left = devices
                .list_metadata(&mine)
                .await
                .map_err(|e| e.to_string())?;
            left.items
                .is_empty()
                .then_some(())
                .ok_or(format!("{} left", left.items.len()))
        },
    )
    .await;
}

/// Rolls out module `app` (an image no hollow runtime needs to pull) to the devices labelled
/// `label=yes`, as EdgeDeployment `deployment` in `ns`.
pub async fn roll_out_app(admin: &Client, ns: &str, deployment: &str, label: &str) {
    crate::apply(
        admin,
        ns,
        "EdgeModule",
        "app",
        serde_json::json!({"image": "localhost/hollow/app:1"}),
    )
    .await;
    crate::apply(
        admin,
        ns,
        "EdgeDeployment",
        deployment,
        serde_json::json!({"selector": {"matchLabels": {label: "yes"}}, "modules": [{"name": "app"}]}),
    )
    .await;
}

/// The agent's timing on hollow devices; the defaults are the agent's own.
#[derive(Debug, Clone)]
pub struct Timing {
    pub lease_interval: Duration,
    pub sync_interval: Duration,
    pub max_backoff: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_interval: Duration::from_secs(10),
            sync_interval: Duration::from_secs(2),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// Hollow agents running in this process, their journals under one tmpfs directory.
#[derive(Debug)]
pub struct HollowFleet {
    root: PathBuf,
    stop: watch::Sender<bool>,
    agents: Vec<JoinHandle<()>>,
}

impl HollowFleet {
    /// An empty fleet whose journals go under `/dev/shm/edgefleet-hollow-<pid>-<name>`.
    pub fn new(name: &str) -> HollowFleet {
        let root = PathBuf::from(format!(
            "/dev/shm/edgefleet-hollow-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        HollowFleet {
            root,
            stop: watch::channel(false).0,
            agents: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }

    /// Starts `device`'s agent with `client` (the device's identity) on a hollow runtime.
    pub fn start(&mut self, device: &str, client: Client, behaviour: Behaviour, timing: &Timing) {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let state = self.root.join(device);
        let mut config = Config::try_parse_from([
            "edgefleet-agent",
            "--device",
            device,
            "--state-dir",
            &state.to_string_lossy(),
            "--manifest-dir",
            &state.join("manifests").to_string_lossy(),
            "--lease-interval",
            &ms(timing.lease_interval),
            "--sync-interval",
            &ms(timing.sync_interval),
            "--max-backoff",
            &ms(timing.max_backoff),
        ])
        .unwrap_or_else(|e| panic!("a hollow agent's settings for {device}: {e}"));
        // Whatever the environment says: a hollow device has no hub and no kubeconfig file.
        config.hub_image = None;
        config.kubeconfig = None;
        let mut stop = self.stop.subscribe();
        let device = device.to_owned();
        self.agents.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            let runtime = HollowRuntime::new(behaviour);
            if let Err(e) = edgefleet_agent::run_with(client, &config, runtime, shutdown).await {
                eprintln!("hollow agent {device}: {e}");
            }
        }));
    }

    /// Stops every agent (each within 10 s) and removes their journals.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for a in self.agents.drain(..) {
            let abort = a.abort_handle();
            if tokio::time::timeout(Duration::from_secs(10), a)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

impl Drop for HollowFleet {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for a in &self.agents {
            a.abort();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
