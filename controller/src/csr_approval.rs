//! Joining devices: approves the client certificate a device's agent authenticates with.
//!
//! The chart's bootstrap pod on each device asks, through a CertificateSigningRequest, for a
//! certificate naming `edgefleet:device:<node>`. That name is worth exactly the device's
//! RBAC, so the request is approved only when it comes from the bootstrap service account
//! *through a token bound to a pod that runs on that node*: a bootstrap pod can join its own
//! device and no other. Requests from anyone else are not ours and left alone (an
//! administrator may approve them by hand); bad requests from the bootstrap account are
//! denied with the reason, which the bootstrap pod logs.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::identity::{
    BOOTSTRAP_NAME, CLIENT_SIGNER, CONTROLLER_NAME, DEVICE_USER_PREFIX, DEVICES_GROUP,
    bootstrap_user,
};
use edgefleet_crds::names::check_dns_label;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{OID_X509_COMMON_NAME, OID_X509_ORGANIZATION_NAME};
use x509_parser::prelude::FromDer;

use crate::context::{Context, reference};
use crate::error::{Error, Result};

pub const CONTROLLER: &str = "csr-approval";

/// The token of a pod-bound service account carries the pod in the user's extra fields.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// The only key usages a device's client certificate may ask for.
const CLIENT_AUTH: &str = "client auth";
const ALLOWED_USAGES: [&str; 3] = [CLIENT_AUTH, "digital signature", "key encipherment"];
const APPROVED_REASON: &str = "EdgefleetDeviceJoin";
const DENIED_REASON: &str = "EdgefleetJoinRefused";
/// How soon a request for a device not registered yet is looked at again.
const REGISTRATION_WAIT: Duration = Duration::from_secs(5);

/// What to do with a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Someone else's request, or one already decided.
    NotOurs,
    Approve {
        device: String,
    },
    Deny(String),
    /// Sound, but the device is not registered (yet): the registry follows its Node shortly.
    Wait(String),
}

/// The pod behind the request's token, as (name, uid).
pub fn requester_pod(csr: &CertificateSigningRequest) -> Option<(String, String)> {
    let extra = csr.spec.extra.as_ref()?;
    let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    Some((one(POD_NAME_EXTRA)?, one(POD_UID_EXTRA)?))
}

/// Decides on a request. `pod` is the requester's pod as found in `namespace`; `registered`
/// says whether a device of that name is registered.
pub fn judge(
    csr: &CertificateSigningRequest,
    namespace: &str,
    pod: Option<&Pod>,
    registered: impl Fn(&str) -> bool,
) -> Verdict {
    let spec = &csr.spec;
    let decided = csr
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| !c.is_empty());
    if decided
        || spec.signer_name != CLIENT_SIGNER
        || spec.username.as_deref() != Some(&bootstrap_user(namespace))
    {
        return Verdict::NotOurs;
    }
    let device = match requested_device(&spec.request.0) {
        Ok(d) => d,
        Err(why) => return Verdict::Deny(why),
    };
    let usages = spec.usages.as_deref().unwrap_or_default();
    if !usages.iter().any(|u| u == CLIENT_AUTH)
        || usages.iter().any(|u| !ALLOWED_USAGES.contains(&u.as_str()))
    {
        return Verdict::Deny(format!(
            "usages must be {CLIENT_AUTH:?} (with at most {:?}), not {usages:?}",
            &ALLOWED_USAGES[1..]
        ));
    }
    let Some((pod_name, pod_uid)) = requester_pod(csr) else {
        return Verdict::Deny(
            "the request was not made with a pod-bound token; the bootstrap pod must use a \
             projected service account token"
                .to_owned(),
        );
    };
    let Some(pod) = pod.filter(|p| p.uid().as_deref() == Some(pod_uid.as_str())) else {
        return Verdict::Deny(format!(
            "the requesting pod {namespace}/{pod_name} (uid {pod_uid}) no longer exists"
        ));
    };
    let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if node != Some(device.as_str()) {
        return Verdict::Deny(format!(
            "pod {namespace}/{pod_name} runs on node {}, so it may join only that node, not {device}",
            node.unwrap_or("(none)")
        ));
    }
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref());
    if account != Some(BOOTSTRAP_NAME) {
        return Verdict::Deny(format!(
            "pod {namespace}/{pod_name} does not run as {BOOTSTRAP_NAME}"
        ));
    }
    if !registered(&device) {
        return Verdict::Wait(format!("device {device} is not registered yet"));
    }
    Verdict::Approve { device }
}

/// The device a PEM certificate request names: subject exactly
/// `O=edgefleet:devices, CN=edgefleet:device:<device>`, no alternative names.
fn requested_device(pem: &[u8]) -> Result<String, String> {
    let not_csr = |e: String| format!("the request is not a PEM certificate request: {e}");
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| not_csr(e.to_string()))?;
    let (_, req) =
        X509CertificationRequest::from_der(&pem.contents).map_err(|e| not_csr(e.to_string()))?;
    let subject = &req.certification_request_info.subject;
    let (mut cn, mut orgs, mut other) = (Vec::new(), Vec::new(), 0);
    for attr in subject.iter_attributes() {
        let value = attr.as_str().unwrap_or_default().to_owned();
        if attr.attr_type() == &OID_X509_COMMON_NAME {
            cn.push(value);
        } else if attr.attr_type() == &OID_X509_ORGANIZATION_NAME {
            orgs.push(value);
        } else {
            other += 1;
        }
    }
    let wanted = format!("O={DEVICES_GROUP}, CN={DEVICE_USER_PREFIX}<device>");
    let device = match (cn.as_slice(), orgs.as_slice(), other) {
        ([cn], [org], 0) if org == DEVICES_GROUP => cn.strip_prefix(DEVICE_USER_PREFIX),
        _ => None,
    }
    .ok_or_else(|| format!("the subject must be exactly {wanted}, not {subject}"))?;
    check_dns_label(device).map_err(|e| format!("bad device name in the subject: {e}"))?;
    let has_alt_names = req.requested_extensions().is_some_and(|mut exts| {
        exts.any(|e| matches!(e, ParsedExtension::SubjectAlternativeName(_)))
    });
    if has_alt_names {
        return Err("a device certificate names no hosts: remove the alternative names".into());
    }
    Ok(device.to_owned())
}

pub async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Context>) -> Result<Action> {
    ctx.synced().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    let ns = ctx.config.namespace.as_str();
    let pod = match requester_pod(&csr) {
        Some((name, _)) => Api::<Pod>::namespaced(ctx.client.clone(), ns)
            .get_opt(&name)
            .await
            .map_err(|e| Error::ReadPod(name, e))?,
        None => None,
    };
    let verdict = judge(&csr, ns, pod.as_ref(), |d| ctx.registered(d).is_some());
    let name = csr.name_any();
    let (type_, reason, message) = match verdict {
        Verdict::NotOurs => return Ok(Action::await_change()),
        Verdict::Wait(why) => {
            tracing::info!(csr = name, "{why}; waiting");
            return Ok(Action::requeue(REGISTRATION_WAIT));
        }
        Verdict::Approve { device } => (
            "Approved",
            APPROVED_REASON,
            format!("{CONTROLLER_NAME}: the bootstrap pod on {device} joins it"),
        ),
        Verdict::Deny(why) => ("Denied", DENIED_REASON, why),
    };
    let now = jiff::Timestamp::now().to_string();
    let patch = json!({"status": {"conditions": [{
        "type": type_, "status": "True", "reason": reason, "message": message,
        "lastUpdateTime": now, "lastTransitionTime": now,
    }]}});
    Api::<CertificateSigningRequest>::all(ctx.client.clone())
        .patch_approval(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::DecideCsr(name.clone(), e))?;
    let event_type = if type_ == "Approved" {
        tracing::info!(csr = name, "{message}");
        EventType::Normal
    } else {
        tracing::warn!(csr = name, "join refused: {message}");
        EventType::Warning
    };
    ctx.event(
        &reference(csr.as_ref()),
        event_type,
        reason,
        "Decide",
        message,
    )
    .await;
    Ok(Action::await_change())
}

pub fn error_policy(_csr: Arc<CertificateSigningRequest>, e: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %e, "certificate request decision failed");
    ctx.metrics.error(CONTROLLER, e.category());
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::CertificateSigningRequestSpec;
    use k8s_openapi::api::core::v1::PodSpec;
    use kube::api::ObjectMeta;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    const NS: &str = "edgefleet-system";

    fn pem(dn: &[(DnType, &str)], alt_names: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let names: Vec<String> = alt_names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        params.distinguished_name = DistinguishedName::new();
        for (t, v) in dn {
            params.distinguished_name.push(t.clone(), *v);
        }
        let csr = params.serialize_request(&key).expect("csr");
        csr.pem().expect("pem").into_bytes()
    }

    fn device_pem(device: &str) -> Vec<u8> {
        let cn = format!("{DEVICE_USER_PREFIX}{device}");
        pem(
            &[
                (DnType::OrganizationName, DEVICES_GROUP),
                (DnType::CommonName, &cn),
            ],
            &[],
        )
    }

    fn csr(request: Vec<u8>) -> CertificateSigningRequest {
        CertificateSigningRequest {
            metadata: ObjectMeta {
                name: Some("edgefleet-device-edge-1".into()),
                ..Default::default()
            },
            spec: CertificateSigningRequestSpec {
                request: ByteString(request),
                signer_name: CLIENT_SIGNER.into(),
                username: Some(bootstrap_user(NS)),
                usages: Some(vec!["client auth".into(), "digital signature".into()]),
                extra: Some(BTreeMap::from([
                    (POD_NAME_EXTRA.to_owned(), vec!["bootstrap-abc".to_owned()]),
                    (POD_UID_EXTRA.to_owned(), vec!["uid-1".to_owned()]),
                ])),
                ..Default::default()
            },
            status: None,
        }
    }

    fn pod(node: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("bootstrap-abc".into()),
                uid: Some("uid-1".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                service_account_name: Some(BOOTSTRAP_NAME.into()),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn denied(v: Verdict, needle: &str) {
        match v {
            Verdict::Deny(why) => assert!(why.contains(needle), "{why:?} lacks {needle:?}"),
            other => panic!("expected a denial mentioning {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn the_bootstrap_pod_on_a_device_joins_that_device() {
        let v = judge(&csr(device_pem("edge-1")), NS, Some(&pod("edge-1")), |_| {
            true
        });
        assert_eq!(
            v,
            Verdict::Approve {
                device: "edge-1".into()
            }
        );
    }

    #[test]
    fn a_bootstrap_pod_cannot_join_another_device() {
        let v = judge(&csr(device_pem("edge-2")), NS, Some(&pod("edge-1")), |_| {
            true
        });
        denied(
            v,
            "runs on node edge-1, so it may join only that node, not edge-2",
        );
    }

    #[test]
    fn requests_of_others_and_decided_ones_are_left_alone() {
        let mut other = csr(device_pem("edge-1"));
        other.spec.username = Some("alice".into());
        assert_eq!(
            judge(&other, NS, Some(&pod("edge-1")), |_| true),
            Verdict::NotOurs
        );
        let mut kubelet = csr(device_pem("edge-1"));
        kubelet.spec.signer_name = "kubernetes.io/kube-apiserver-client-kubelet".into();
        assert_eq!(
            judge(&kubelet, NS, Some(&pod("edge-1")), |_| true),
            Verdict::NotOurs
        );
        let mut decided = csr(device_pem("edge-1"));
        decided.status = Some(Default::default());
        decided.status.as_mut().expect("status").conditions = Some(vec![Default::default()]);
        assert_eq!(
            judge(&decided, NS, Some(&pod("edge-1")), |_| true),
            Verdict::NotOurs
        );
    }

    #[test]
    fn a_device_not_registered_yet_waits() {
        let v = judge(&csr(device_pem("edge-1")), NS, Some(&pod("edge-1")), |_| {
            false
        });
        assert!(matches!(v, Verdict::Wait(_)), "{v:?}");
    }

    #[test]
    fn bad_requests_are_denied_with_the_reason() {
        let p = pod("edge-1");
        let judged = |c: &CertificateSigningRequest| judge(c, NS, Some(&p), |_| true);
        let cn = format!("{DEVICE_USER_PREFIX}edge-1");
        // An identity beyond the device's: another group, an admin name, extra attributes.
        denied(
            judged(&csr(pem(
                &[
                    (DnType::OrganizationName, "system:masters"),
                    (DnType::CommonName, &cn),
                ],
                &[],
            ))),
            "the subject must be exactly",
        );
        denied(
            judged(&csr(pem(
                &[
                    (DnType::OrganizationName, DEVICES_GROUP),
                    (DnType::CommonName, "admin"),
                ],
                &[],
            ))),
            "the subject must be exactly",
        );
        denied(
            judged(&csr(pem(
                &[
                    (DnType::OrganizationName, DEVICES_GROUP),
                    (DnType::OrganizationName, "system:masters"),
                    (DnType::CommonName, &cn),
                ],
                &[],
            ))),
            "the subject must be exactly",
        );
        denied(
            judged(&csr(pem(
                &[
                    (DnType::OrganizationName, DEVICES_GROUP),
                    (DnType::CommonName, &cn),
                ],
                &["edge-1.example"],
            ))),
            "alternative names",
        );
        denied(
            judged(&csr(b"hello".to_vec())),
            "not a PEM certificate request",
        );
        let mut server = csr(device_pem("edge-1"));
        server.spec.usages = Some(vec!["server auth".into()]);
        denied(judged(&server), "usages must be");
        let mut unbound = csr(device_pem("edge-1"));
        unbound.spec.extra = None;
        denied(judged(&unbound), "pod-bound token");
        let c = csr(device_pem("edge-1"));
        denied(judge(&c, NS, None, |_| true), "no longer exists");
        let mut impostor = pod("edge-1");
        impostor.metadata.uid = Some("uid-2".into());
        denied(judge(&c, NS, Some(&impostor), |_| true), "no longer exists");
        let mut other_account = pod("edge-1");
        other_account
            .spec
            .as_mut()
            .expect("spec")
            .service_account_name = Some("default".into());
        denied(
            judge(&c, NS, Some(&other_account), |_| true),
            "does not run as",
        );
    }
}
