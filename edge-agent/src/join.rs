//! Joining a device (`edgefleet-agent join`), run by the chart's bootstrap DaemonSet on
//! every device: it obtains the device's own client certificate (`edgefleet:device:<node>`)
//! through a CertificateSigningRequest that the controller approves only for the pod on
//! that very node, writes the agent's kubeconfig and then the agent's static pod into
//! kubelet's manifest directory. From then on the agent runs from files on the device and
//! needs neither the bootstrap pod nor the network to start after a reboot.
//!
//! It stays running to renew the certificate when a third of its lifetime is left; a new
//! certificate changes an annotation of the agent's pod, so kubelet restarts the agent
//! with it. Nothing is rewritten while the credential and the settings are unchanged.

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use edgefleet_crds::identity::{
    APP_NAME_LABEL, BOOTSTRAP_NAME, CLIENT_SIGNER, DEVICE_LABEL, DEVICES_GROUP, device_user,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestSpec,
};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use serde_json::json;
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::config::{Config, JoinArgs};
use crate::journal::{write_atomic, write_atomic_mode};
use crate::self_pod;

/// The agent's kubeconfig in the state directory.
pub const KUBECONFIG_FILE: &str = "agent.kubeconfig";
/// On the agent's pod: a hash of its certificate, so that a renewal restarts the agent.
pub const CREDENTIAL_ANNOTATION: &str = "edgefleet.io/credential";
/// How often the certificate's approval is looked for, and how often progress is logged.
const POLL: Duration = Duration::from_secs(2);
const PROGRESS_EVERY: u32 = 10;
/// How long a request may stay undecided before joining fails (and the pod restarts).
const DECISION_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Error)]
pub enum JoinError {
    #[error("no in-cluster credentials for the bootstrap pod: {0}")]
    Config(#[source] kube::config::InferConfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot make a key and a certificate request: {0}")]
    Key(#[source] rcgen::Error),
    #[error("cannot {0} the certificate request {1}: {2}")]
    Api(&'static str, String, #[source] kube::Error),
    #[error("the certificate request {0} was {1}: {2}")]
    Refused(String, String, String),
    #[error(
        "the certificate request {0} was not decided within {1:?}; is edgefleet-controller running?"
    )]
    Undecided(String, Duration),
    #[error(transparent)]
    Write(#[from] crate::error::Error),
    #[error("cannot render the kubeconfig: {0}")]
    Render(#[source] serde_yaml::Error),
}

/// A device's client credential: PEM certificate and key, and the certificate's lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl Credential {
    /// Parses a certificate; `None` unless it names `device`'s user.
    pub fn parse(cert_pem: String, key_pem: String, device: &str) -> Option<Credential> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
        let cert = pem.parse_x509().ok()?;
        let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
        if cn != device_user(device) {
            return None;
        }
        let validity = cert.validity();
        let (not_before, not_after) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        Some(Credential {
            cert_pem,
            key_pem,
            not_before,
            not_after,
        })
    }

    /// Due when less than a third of its lifetime is left (or it has none).
    pub fn due_for_renewal(&self, now: i64) -> bool {
        let lifetime = self.not_after - self.not_before;
        lifetime <= 0 || (self.not_after - now) * 3 < lifetime
    }

    /// A short, stable name of the certificate.
    pub fn fingerprint(&self) -> String {
        crate::render::hex(&Sha256::digest(self.cert_pem.as_bytes())[..8])
    }
}

pub async fn join(config: &Config, args: &JoinArgs) -> Result<(), JoinError> {
    let kube_config = kube::Config::infer().await.map_err(JoinError::Config)?;
    let server = args
        .server
        .clone()
        .unwrap_or_else(|| kube_config.cluster_url.to_string());
    let ca = kube_config
        .root_cert
        .as_deref()
        .map(|ders| {
            ders.iter()
                .map(|d| pem("CERTIFICATE", d))
                .collect::<String>()
        })
        .unwrap_or_default();
    let client = Client::try_from(kube_config).map_err(JoinError::Client)?;
    let device = config.device.as_str();
    let local_kubeconfig = args.write_state_dir.join(KUBECONFIG_FILE);
    let mut agent = config.clone();
    agent.kubeconfig = Some(config.state_dir.join(KUBECONFIG_FILE));
    agent.command = None;
    loop {
        let now = jiff::Timestamp::now().as_second();
        let credential = match read_credential(&local_kubeconfig, device) {
            Some(c) if !c.due_for_renewal(now) => c,
            found => {
                let why = if found.is_some() {
                    "renewing"
                } else {
                    "requesting"
                };
                tracing::info!(device, "{why} the device's client certificate");
                let c = request_certificate(&client, device).await?;
                let kubeconfig = kubeconfig(&server, &ca, device, &c)?;
                write_atomic_mode(
                    &args.write_state_dir,
                    KUBECONFIG_FILE,
                    kubeconfig.as_bytes(),
                    0o600,
                )?;
                c
            }
        };
        if let Some(ca) = &args.hub_upstream_ca_file {
            crate::hub::keep_upstream_ca(ca, &args.write_state_dir)?;
        }
        place_agent(&agent, args, &credential)?;
        tokio::select! {
            () = tokio::time::sleep(args.check_interval) => {}
            () = crate::run::shutdown_signal() => return Ok(()),
        }
    }
}

/// Writes the agent's static pod unless the same one is already there.
fn place_agent(agent: &Config, args: &JoinArgs, credential: &Credential) -> Result<(), JoinError> {
    let mut pod = self_pod::pod(agent, &args.image);
    pod.metadata.annotations = Some(
        [(CREDENTIAL_ANNOTATION.to_owned(), credential.fingerprint())]
            .into_iter()
            .collect(),
    );
    let yaml = serde_yaml::to_string(&pod).map_err(JoinError::Render)?;
    let path = args.write_manifest_dir.join(self_pod::FILE);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == yaml) {
        return Ok(());
    }
    write_atomic(&args.write_manifest_dir, self_pod::FILE, yaml.as_bytes())?;
    tracing::info!(
        device = agent.device,
        image = args.image,
        credential = credential.fingerprint(),
        valid_until = jiff::Timestamp::from_second(credential.not_after)
            .map(|t| t.to_string())
            .unwrap_or_default(),
        "joined: the agent's static pod is in kubelet's manifest directory"
    );
    Ok(())
}

/// The credential in the kubeconfig written earlier, if it is this device's.
pub fn read_credential(path: &Path, device: &str) -> Option<Credential> {
    let text = std::fs::read_to_string(path).ok()?;
    let kc: serde_json::Value = serde_yaml::from_str(&text).ok()?;
    let user = &kc["users"][0]["user"];
    let decode = |field: &str| -> Option<String> {
        String::from_utf8(BASE64.decode(user[field].as_str()?).ok()?).ok()
    };
    Credential::parse(
        decode("client-certificate-data")?,
        decode("client-key-data")?,
        device,
    )
}

/// A PEM certificate request for `device`'s identity (user `edgefleet:device:<device>` in
/// group `edgefleet:devices`), signed by `key`.
pub fn certificate_request(device: &str, key: &KeyPair) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, DEVICES_GROUP);
    subject.push(DnType::CommonName, device_user(device));
    params.distinguished_name = subject;
    params.serialize_request(key)?.pem()
}

/// The CertificateSigningRequest `name` the bootstrap sends for `device` with the PEM
/// `request`: for the apiserver-client signer, and labelled as the bootstrap's, the only
/// requests the controller watches. Public so that the end-to-end tests send a forged
/// request exactly as a bootstrap pod would.
pub fn signing_request(name: &str, device: &str, request: String) -> CertificateSigningRequest {
    CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [
                    (APP_NAME_LABEL.to_owned(), BOOTSTRAP_NAME.to_owned()),
                    (DEVICE_LABEL.to_owned(), device.to_owned()),
                ]
                .into_iter()
                .collect(),
            ),
            ..Default::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(request.into_bytes()),
            signer_name: CLIENT_SIGNER.to_owned(),
            usages: Some(vec!["client auth".into(), "digital signature".into()]),
            ..Default::default()
        },
        status: None,
    }
}

/// Asks for `device`'s client certificate with `client`'s identity (the bootstrap pod's)
/// and waits for it to be approved and issued. Public so that the fleet simulator's hollow
/// devices join exactly as the bootstrap does.
pub async fn request_certificate(client: &Client, device: &str) -> Result<Credential, JoinError> {
    let key = KeyPair::generate().map_err(JoinError::Key)?;
    let request = certificate_request(device, &key).map_err(JoinError::Key)?;
    let key_hash = Sha256::digest(key.der_bytes());
    let suffix: String = key_hash[..4].iter().map(|b| format!("{b:02x}")).collect();
    let name = format!("edgefleet-{device}-{suffix}");
    let api = Api::<CertificateSigningRequest>::all(client.clone());
    let csr = signing_request(&name, device, request);
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(|e| JoinError::Api("create", name.clone(), e))?;
    tracing::info!(
        csr = name,
        "certificate request sent; waiting for the controller to approve it"
    );
    let started = tokio::time::Instant::now();
    let mut polls = 0u32;
    loop {
        tokio::time::sleep(POLL).await;
        polls += 1;
        let csr = api
            .get(&name)
            .await
            .map_err(|e| JoinError::Api("read", name.clone(), e))?;
        let status = csr.status.unwrap_or_default();
        let conditions = status.conditions.unwrap_or_default();
        if let Some(c) = conditions.iter().find(|c| c.type_ != "Approved") {
            return Err(JoinError::Refused(
                name,
                c.type_.to_lowercase(),
                c.message.clone().unwrap_or_default(),
            ));
        }
        if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
            let cert = String::from_utf8_lossy(&cert.0).into_owned();
            return Credential::parse(cert, key.serialize_pem(), device).ok_or_else(|| {
                JoinError::Refused(
                    name,
                    "issued".into(),
                    format!("the certificate does not name {}", device_user(device)),
                )
            });
        }
        if started.elapsed() > DECISION_TIMEOUT {
            return Err(JoinError::Undecided(name, DECISION_TIMEOUT));
        }
        if polls.is_multiple_of(PROGRESS_EVERY) {
            let state = if conditions.is_empty() {
                "pending"
            } else {
                "approved, not yet signed"
            };
            tracing::info!(
                csr = name,
                waited_s = started.elapsed().as_secs(),
                "still {state}"
            );
        }
    }
}

/// The agent's kubeconfig: the device's credential and the cluster it belongs to (`ca` the
/// cluster's CA, PEM).
pub fn kubeconfig(
    server: &str,
    ca: &str,
    device: &str,
    c: &Credential,
) -> Result<String, JoinError> {
    let user = device_user(device);
    let mut cluster = json!({"server": server});
    if !ca.is_empty() {
        cluster["certificate-authority-data"] = BASE64.encode(ca).into();
    }
    let kc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "edgefleet", "cluster": cluster}],
        "users": [{"name": user, "user": {
            "client-certificate-data": BASE64.encode(&c.cert_pem),
            "client-key-data": BASE64.encode(&c.key_pem),
        }}],
        "contexts": [{"name": "edgefleet", "context": {"cluster": "edgefleet", "user": user}}],
        "current-context": "edgefleet",
    });
    serde_yaml::to_string(&kc).map_err(JoinError::Render)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = BASE64.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap_or_default())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(cn: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_credential_must_name_the_device() {
        let (cert, key) = self_signed("edgefleet:device:edge-1");
        assert!(Credential::parse(cert.clone(), key.clone(), "edge-1").is_some());
        assert!(Credential::parse(cert, key.clone(), "edge-2").is_none());
        let (admin, _) = self_signed("admin");
        assert!(Credential::parse(admin, key.clone(), "edge-1").is_none());
        assert!(Credential::parse("garbage".into(), key, "edge-1").is_none());
    }

    #[test]
    fn renewal_is_due_with_a_third_of_the_lifetime_left() {
        let c = Credential {
            cert_pem: String::new(),
            key_pem: String::new(),
            not_before: 0,
            not_after: 300,
        };
        assert!(!c.due_for_renewal(0));
        assert!(!c.due_for_renewal(200));
        assert!(c.due_for_renewal(201));
        assert!(c.due_for_renewal(400));
        let empty = Credential { not_after: 0, ..c };
        assert!(empty.due_for_renewal(0));
    }

    #[test]
    fn the_written_kubeconfig_is_read_back_and_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = self_signed("edgefleet:device:edge-1");
        let c = Credential::parse(cert, key, "edge-1").expect("credential");
        let ca = pem("CERTIFICATE", b"not really a CA");
        let kc = kubeconfig("https://10.0.0.1:6443", &ca, "edge-1", &c).expect("kubeconfig");
        write_atomic_mode(dir.path(), KUBECONFIG_FILE, kc.as_bytes(), 0o600).expect("write");
        let path = dir.path().join(KUBECONFIG_FILE);
        assert_eq!(read_credential(&path, "edge-1"), Some(c));
        assert_eq!(read_credential(&path, "edge-2"), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // kube reads it as a kubeconfig, with this user and server.
        let parsed = kube::config::Kubeconfig::read_from(&path).expect("a kubeconfig");
        assert_eq!(parsed.auth_infos[0].name, "edgefleet:device:edge-1");
        let server = parsed.clusters[0]
            .cluster
            .as_ref()
            .and_then(|c| c.server.clone());
        assert_eq!(server.as_deref(), Some("https://10.0.0.1:6443"));
    }
}
