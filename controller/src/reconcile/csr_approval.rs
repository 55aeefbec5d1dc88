//! Joining devices: the reconcile that approves the client certificate a device's agent
//! authenticates with. It looks the requesting pod up, asks [`crate::decide::join`] for the
//! verdict, and writes it to the request's approval with an Event. Once the signer has
//! issued the certificate, its subject is compared with the device approved all the same,
//! and a difference raised as a Warning Event and counted.

use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::identity::{CONTROLLER_NAME, JOIN_APPROVED_REASON, JOIN_DENIED_REASON};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::decide::join::{Standing, Verdict, issued_mismatch, judge, requester_pod, standing};
use crate::error::{Error, Result};
use crate::k8s::context::Context;
use crate::k8s::events::reference;

pub const CONTROLLER: &str = "csr-approval";
/// The Warning Event on a request whose issued certificate names another subject than the
/// device approved.
const MISMATCH_REASON: &str = "IssuedCertificateMismatch";
/// How soon a request for a device not registered yet is looked at again.
const REGISTRATION_WAIT: Duration = Duration::from_secs(5);

pub async fn reconcile(csr: Arc<CertificateSigningRequest>, ctx: Arc<Context>) -> Result<Action> {
    ctx.synced().await;
    let _timer = ctx.metrics.reconcile(CONTROLLER);
    match standing(&csr, &ctx.config.namespace) {
        Standing::NotOurs | Standing::Decided => Ok(Action::await_change()),
        Standing::Issued(certificate) => {
            check_issued(&csr, certificate, &ctx).await;
            Ok(Action::await_change())
        }
        Standing::Undecided => decide(csr, &ctx).await,
    }
}

/// Raises a Warning Event on the request, and counts it, when the certificate issued does
/// not name the device approved. Nothing can take a certificate back; this tells a person.
async fn check_issued(csr: &CertificateSigningRequest, certificate: &[u8], ctx: &Context) {
    let Some(why) = issued_mismatch(&csr.spec.request.0, certificate) else {
        return;
    };
    tracing::warn!(csr = csr.name_any(), "{why}");
    ctx.metrics.issued_mismatch();
    ctx.event(
        &reference(csr),
        EventType::Warning,
        MISMATCH_REASON,
        "CheckIssued",
        why,
    )
    .await;
}

/// Looks the requesting pod up, judges the request and writes the verdict.
async fn decide(csr: Arc<CertificateSigningRequest>, ctx: &Context) -> Result<Action> {
    let ns = ctx.config.namespace.as_str();
    let pod = match requester_pod(&csr) {
        Some((name, _)) => Api::<Pod>::namespaced(ctx.client.clone(), ns)
            .get_opt(&name)
            .await
            .map_err(|e| Error::ReadPod(name, e))?,
        None => None,
    };
    let verdict = judge(&csr, ns, pod.as_ref(), |d| ctx.enrolled(d));
    let name = csr.name_any();
    let (type_, reason, message) = match verdict {
        Verdict::NotOurs => return Ok(Action::await_change()),
        Verdict::Wait(why) => {
            tracing::info!(csr = name, "{why}; waiting");
            return Ok(Action::requeue(REGISTRATION_WAIT));
        }
        Verdict::Approve { device } => (
            "Approved",
            JOIN_APPROVED_REASON,
            format!("{CONTROLLER_NAME}: the bootstrap pod on {device} joins it"),
        ),
        Verdict::Deny(why) => ("Denied", JOIN_DENIED_REASON, why),
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
