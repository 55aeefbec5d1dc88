//! Judging a joining device's certificate request: pure, from the request, the pod that
//! asked (looked up by the reconcile) and whether the device is enrolled. The reconcile
//! (`reconcile::csr_approval`) writes the verdict.
//!
//! The chart's bootstrap pod on each device asks, through a CertificateSigningRequest, for a
//! certificate naming `edgefleet:device:<node>`. That name is worth exactly the device's
//! RBAC, so the request is approved only when it comes from the bootstrap service account
//! *through a token bound to a pod that runs on that node*: a bootstrap pod can join its own
//! device and no other. Requests from anyone else are not ours and left alone (an
//! administrator may approve them by hand); bad requests from the bootstrap account are
//! denied with the reason, which the bootstrap pod logs.
//!
//! The request is read the way Kubernetes reads it ([`crate::decide::csr_request`]), so the identity
//! approved is the identity signed; once the signer has issued the certificate, its subject
//! is compared with the device approved all the same, and a difference raised as a Warning
//! Event and counted.

use edgefleet_crds::identity::{
    APP_NAME_LABEL, BOOTSTRAP_NAME, CLIENT_SIGNER, DEVICE_USER_PREFIX, DEVICES_GROUP,
    JOIN_APPROVED_REASON, bootstrap_user,
};
use edgefleet_crds::names::check_dns_label;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::runtime::watcher;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::oid_registry::{
    OID_X509_COMMON_NAME, OID_X509_EXT_SUBJECT_ALT_NAME, OID_X509_ORGANIZATION_NAME,
};
use x509_parser::x509::X509Name;

use crate::decide::csr_request;

/// The token of a pod-bound service account carries the pod in the user's extra fields.
const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";
/// The only key usages a device's client certificate may ask for.
const CLIENT_AUTH: &str = "client auth";
const ALLOWED_USAGES: [&str; 3] = [CLIENT_AUTH, "digital signature", "key encipherment"];

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

/// The requests the approval lists and watches: the ones the bootstrap labels as its own,
/// for the client signer. The apiserver filters, so the controller caches no other request
/// in the cluster. The bootstrap labels every request it makes (edge-agent's `join`), so an
/// unlabelled request is not the bootstrap's: ignoring it leaves it pending, never approved,
/// like any request not ours. Anyone may set the label, so it narrows the watch and proves
/// nothing: [`standing`] still checks requester and signer.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default()
        .labels(&format!("{APP_NAME_LABEL}={BOOTSTRAP_NAME}"))
        .fields(&format!("spec.signerName={CLIENT_SIGNER}"))
}

/// Where a request stands, read from the request alone: no lookups, so that requests that
/// are not ours, or are decided, cost nothing more.
#[derive(Debug, PartialEq, Eq)]
pub enum Standing<'a> {
    /// Another requester's, or for another signer.
    NotOurs,
    /// Ours and decided, with nothing to check: denied, not issued yet, or approved by
    /// someone else.
    Decided,
    /// Ours, approved by this controller, and issued: the certificate (PEM) to check.
    Issued(&'a [u8]),
    /// Ours and waiting for a decision.
    Undecided,
}

/// Tells [`Standing`] from the request's requester, signer and status.
pub fn standing<'a>(csr: &'a CertificateSigningRequest, namespace: &str) -> Standing<'a> {
    let spec = &csr.spec;
    if spec.signer_name != CLIENT_SIGNER
        || spec.username.as_deref() != Some(&bootstrap_user(namespace))
    {
        return Standing::NotOurs;
    }
    let status = csr.status.as_ref();
    let conditions = status
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default();
    if conditions.is_empty() {
        return Standing::Undecided;
    }
    let approved_by_us = conditions
        .iter()
        .any(|c| c.type_ == "Approved" && c.reason.as_deref() == Some(JOIN_APPROVED_REASON));
    match status.and_then(|s| s.certificate.as_ref()) {
        Some(cert) if approved_by_us && !cert.0.is_empty() => Standing::Issued(&cert.0),
        _ => Standing::Decided,
    }
}

/// The pod behind the request's token, as (name, uid).
pub fn requester_pod(csr: &CertificateSigningRequest) -> Option<(String, String)> {
    let extra = csr.spec.extra.as_ref()?;
    let one = |key: &str| extra.get(key).and_then(|v| v.first()).cloned();
    Some((one(POD_NAME_EXTRA)?, one(POD_UID_EXTRA)?))
}

/// Decides on a request. `pod` is the requester's pod as found in `namespace`; `registered`
/// says whether a device of that name is registered. Only an [`Standing::Undecided`]
/// request is judged: the reconcile asks [`standing`] first, before it looks the pod up.
pub fn judge(
    csr: &CertificateSigningRequest,
    namespace: &str,
    pod: Option<&Pod>,
    registered: impl Fn(&str) -> bool,
) -> Verdict {
    if standing(csr, namespace) != Standing::Undecided {
        return Verdict::NotOurs;
    }
    let spec = &csr.spec;
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
        return Verdict::Wait(format!(
            "device {device} is not enrolled (yet): an administrator enrols it by creating EdgeDevice {device}"
        ));
    }
    Verdict::Approve { device }
}

/// The device a PEM certificate request names: read as Kubernetes reads it
/// ([`csr_request`]), subject exactly `O=edgefleet:devices, CN=edgefleet:device:<device>`,
/// no alternative names.
fn requested_device(pem: &[u8]) -> Result<String, String> {
    let not_csr = |e: csr_request::Malformed| {
        format!("the request is not a PEM certificate request as Kubernetes reads it: {e}")
    };
    let der = csr_request::pem_to_der(pem).map_err(not_csr)?;
    let req = csr_request::parse(&der).map_err(not_csr)?;
    let device = subject_device(&req.certification_request_info.subject)?;
    // By OID, parsed or not: Go's signer copies whatever alternative names it reads.
    let has_alt_names = req
        .certification_request_info
        .iter_attributes()
        .any(|attr| match attr.parsed_attribute() {
            ParsedCriAttribute::ExtensionRequest(r) => r
                .extensions
                .iter()
                .any(|e| e.oid == OID_X509_EXT_SUBJECT_ALT_NAME),
            _ => false,
        });
    if has_alt_names {
        return Err("a device certificate names no hosts: remove the alternative names".into());
    }
    Ok(device)
}

/// The device a subject names: exactly `O=edgefleet:devices, CN=edgefleet:device:<device>`,
/// each once, nothing else, and a device name that is a DNS label.
fn subject_device(subject: &X509Name<'_>) -> Result<String, String> {
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
    Ok(device.to_owned())
}

/// Why the certificate issued for an approved request does not name exactly the device the
/// request names (CN and O), or `None` when it does. A difference means the signer read the
/// request otherwise than the approval did; a request that no longer passes the checks (one
/// approved before they were made stricter) counts as a difference too.
pub fn issued_mismatch(request: &[u8], certificate: &[u8]) -> Option<String> {
    let approved = match requested_device(request) {
        Ok(device) => device,
        Err(why) => {
            return Some(format!(
                "the approved request no longer passes the checks: {why}"
            ));
        }
    };
    let issued = x509_parser::pem::parse_x509_pem(certificate)
        .map_err(|e| e.to_string())
        .and_then(|(_, pem)| match pem.label.as_str() {
            "CERTIFICATE" => Ok(pem),
            other => Err(format!("a {other:?} PEM block")),
        })
        .and_then(|pem| {
            let cert = pem.parse_x509().map_err(|e| e.to_string())?;
            subject_device(cert.subject())
        });
    match issued {
        Ok(device) if device == approved => None,
        Ok(device) => Some(format!(
            "the certificate issued for device {approved} names device {device}"
        )),
        Err(why) => Some(format!(
            "the certificate issued for device {approved} does not name it: {why}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use edgefleet_crds::identity::JOIN_DENIED_REASON;
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequestCondition, CertificateSigningRequestSpec,
        CertificateSigningRequestStatus,
    };
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

    fn device_cert(org: &str, cn: &str) -> Vec<u8> {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, org);
        params.distinguished_name.push(DnType::CommonName, cn);
        params.self_signed(&key).expect("cert").pem().into_bytes()
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

    /// The attack that joined any identity: Kubernetes signs the second block, which names
    /// edge-2; the first, badly closed, names the requesting pod's own node.
    #[test]
    fn a_second_pem_block_behind_a_wrong_end_line_cannot_join_another_device() {
        let shown = String::from_utf8(device_pem("edge-1")).expect("PEM is text");
        let shown = shown.replace("-----END CERTIFICATE REQUEST-----", "-----END X-----");
        let smuggled = String::from_utf8(device_pem("edge-2")).expect("PEM is text");
        let request = format!("{shown}{smuggled}").into_bytes();
        let v = judge(&csr(request), NS, Some(&pod("edge-1")), |_| true);
        denied(v, "-----END X-----");
    }

    #[test]
    fn requests_not_ours_or_decided_are_told_apart_before_any_lookup() {
        let fresh = csr(device_pem("edge-1"));
        assert_eq!(standing(&fresh, NS), Standing::Undecided);
        let mut other = csr(device_pem("edge-1"));
        other.spec.username = Some("alice".into());
        assert_eq!(standing(&other, NS), Standing::NotOurs);
        let mut other_signer = csr(device_pem("edge-1"));
        other_signer.spec.signer_name = "example.com/signer".into();
        assert_eq!(standing(&other_signer, NS), Standing::NotOurs);

        let decided = |type_: &str, reason: &str, certificate: &[u8]| {
            let mut c = csr(device_pem("edge-1"));
            c.status = Some(CertificateSigningRequestStatus {
                conditions: Some(vec![CertificateSigningRequestCondition {
                    type_: type_.into(),
                    reason: Some(reason.into()),
                    status: "True".into(),
                    ..Default::default()
                }]),
                certificate: Some(ByteString(certificate.to_vec())),
            });
            c
        };
        let issued = decided("Approved", JOIN_APPROVED_REASON, b"cert");
        assert_eq!(standing(&issued, NS), Standing::Issued(b"cert"));
        let not_issued = decided("Approved", JOIN_APPROVED_REASON, b"");
        assert_eq!(standing(&not_issued, NS), Standing::Decided);
        let by_hand = decided("Approved", "KubectlApprove", b"cert");
        assert_eq!(standing(&by_hand, NS), Standing::Decided);
        let denial = decided("Denied", JOIN_DENIED_REASON, b"");
        assert_eq!(standing(&denial, NS), Standing::Decided);
    }

    #[test]
    fn the_watch_selects_only_bootstrap_requests_for_the_client_signer() {
        let config = watch_config();
        assert_eq!(
            config.label_selector.as_deref(),
            Some("app.kubernetes.io/name=edgefleet-bootstrap")
        );
        assert_eq!(
            config.field_selector.as_deref(),
            Some("spec.signerName=kubernetes.io/kube-apiserver-client")
        );
    }

    #[test]
    fn the_certificate_issued_for_the_device_approved_matches() {
        let cert = device_cert(DEVICES_GROUP, "edgefleet:device:edge-1");
        assert_eq!(issued_mismatch(&device_pem("edge-1"), &cert), None);
    }

    #[test]
    fn a_certificate_issued_for_another_subject_is_a_mismatch() {
        let request = device_pem("edge-1");
        let mismatch = |cert: &[u8]| issued_mismatch(&request, cert).expect("a mismatch");
        let other_device = device_cert(DEVICES_GROUP, "edgefleet:device:edge-2");
        assert_eq!(
            mismatch(&other_device),
            "the certificate issued for device edge-1 names device edge-2"
        );
        let admin = device_cert("system:masters", "edgefleet:device:edge-1");
        assert!(
            mismatch(&admin).contains("the subject must be exactly"),
            "{:?}",
            mismatch(&admin)
        );
        assert!(mismatch(b"not a certificate").contains("does not name it"));
        // A request approved before the checks were strict fails them now: still reported.
        let old = String::from_utf8(device_pem("edge-1")).expect("PEM is text");
        let two_blocks = format!("{old}{old}");
        let cert = device_cert(DEVICES_GROUP, "edgefleet:device:edge-1");
        let why = issued_mismatch(two_blocks.as_bytes(), &cert).expect("a mismatch");
        assert!(why.contains("no longer passes the checks"), "{why}");
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
