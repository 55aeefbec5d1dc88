//! The controller's admission webhook, as a test serves it: a certificate for 127.0.0.1
//! from a CA of its own, and a ValidatingWebhookConfiguration that sends the apiserver to
//! the lab's webhook port (`Lab::info(..).webhook_port`), which the lab forwards to the
//! host's loopback where the test's controller listens.

use std::path::PathBuf;

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// The webhook configuration's name: one per lab, replaced by each test that serves one.
const NAME: &str = "edgefleet-e2e";

/// The files a controller serves the webhook with, in a directory of their own that goes
/// with them: a test leaves no key behind.
#[derive(Debug)]
pub struct WebhookCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    ca_pem: String,
    _dir: tempfile::TempDir,
}

impl WebhookCert {
    /// A fresh CA and a certificate it signs for 127.0.0.1, written under the temp dir.
    pub fn generate() -> WebhookCert {
        let ca_key = rcgen::KeyPair::generate().expect("a CA key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "edgefleet-e2e-webhook-ca");
        let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("a key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &ca)
            .expect("certificate");
        let dir = tempfile::Builder::new()
            .prefix("edgefleet-e2e-webhook-")
            .tempdir()
            .expect("webhook dir");
        let (cert, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, leaf.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        WebhookCert {
            cert,
            key: key_path,
            ca_pem: ca.pem(),
            _dir: dir,
        }
    }

    /// Registers the webhook at `https://127.0.0.1:<port>/validate` for EdgeDeployments and
    /// EdgeModules. `failurePolicy: Ignore`: a configuration a failed test leaves behind
    /// costs nothing once its controller is gone.
    pub async fn register(&self, client: &Client, port: u16) {
        use base64::Engine;
        let config: ValidatingWebhookConfiguration = serde_json::from_value(json!({
            "metadata": ObjectMeta { name: Some(NAME.into()), ..Default::default() },
            "webhooks": [{
                "name": "grants.edgefleet.io",
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{port}/validate"),
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(&self.ca_pem),
                },
                "rules": [{
                    "apiGroups": ["edgefleet.io"], "apiVersions": ["*"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["edgedeployments", "edgemodules"],
                }],
                "failurePolicy": "Ignore",
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "timeoutSeconds": 5,
            }],
        }))
        .expect("webhook configuration");
        let mut patch = serde_json::to_value(&config).expect("json");
        patch["apiVersion"] = json!("admissionregistration.k8s.io/v1");
        patch["kind"] = json!("ValidatingWebhookConfiguration");
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .patch(
                NAME,
                &PatchParams::apply("edgefleet-e2e").force(),
                &Patch::Apply(patch),
            )
            .await
            .expect("register the webhook");
    }
}

/// Removes the test webhook's configuration, if there is one.
pub async fn unregister_webhook(client: &Client) {
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(NAME, &DeleteParams::default())
        .await;
}
