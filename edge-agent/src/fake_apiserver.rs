//! A stand-in apiserver for the unit tests of the agent's loops that talk to it: it answers
//! every request alike and counts them, so that a test can tell how often a loop retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use edgefleet_crds::identity::AGENT_MANAGER;
use edgefleet_crds::renewal::RENEW_EVERY_ANNOTATION;
use edgefleet_crds::status_written::{APPLY_OPERATION, STATUS_SUBRESOURCE};
use kube::Client;
use kube::client::Body;
use serde_json::json;

/// A client whose every request is answered with `status` after `delay` (or, with `None`,
/// not at all: the connection fails), counting the requests. A success answers with the
/// Lease or the EdgeDevice the request wrote (a renewal, a status; each status write a
/// change, at a time of its own in the agent's managed-fields entry), a 500 with the text the apiserver's
/// authorization filter writes when it cannot reach an authorizer, another failure with a
/// Status.
pub fn apiserver(status: Option<u16>, delay: Duration) -> (Client, Arc<AtomicUsize>) {
    serve(status, delay, json!({}))
}

/// [`apiserver`] answering every request at once, and a renewal with a Lease annotated to
/// be renewed every `secs` seconds, as the controller does once the fleet outgrows its
/// renewal budget.
pub fn apiserver_pacing(secs: &str) -> (Client, Arc<AtomicUsize>) {
    serve(
        Some(200),
        Duration::ZERO,
        json!({ RENEW_EVERY_ANNOTATION: secs }),
    )
}

fn serve(
    status: Option<u16>,
    delay: Duration,
    lease_annotations: serde_json::Value,
) -> (Client, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let service = tower::service_fn(move |r: http::Request<Body>| {
        let n = seen.fetch_add(1, Ordering::SeqCst);
        let answer = status.map(|code| {
            let body = if (200..300).contains(&code) && r.uri().path().contains("/leases/") {
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": "edgefleet-device-edge-1",
                                    "annotations": lease_annotations.clone()},
                       "spec": {}})
                .to_string()
            } else if (200..300).contains(&code) {
                // The n-th write changed the object: the agent's entry records its time.
                let at = format!("2026-01-01T00:{:02}:{:02}Z", n / 60 % 60, n % 60);
                json!({"apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeDevice",
                       "metadata": {"name": "edge-1", "managedFields": [{
                           "manager": AGENT_MANAGER, "operation": APPLY_OPERATION,
                           "subresource": STATUS_SUBRESOURCE, "time": at,
                           "apiVersion": "edgefleet.io/v1alpha1", "fieldsType": "FieldsV1",
                           "fieldsV1": {"f:status": {}}}]},
                       "spec": {}})
                .to_string()
            } else if code == 500 {
                format!(
                    "Internal Server Error: {:?}: Post \"https://127.0.0.1:8443/authorize\": connection refused",
                    r.uri().path()
                )
            } else {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": "busy", "reason": "TooManyRequests", "code": code})
                .to_string()
            };
            http::Response::builder()
                .status(code)
                .header("content-type", if code == 500 { "text/plain" } else { "application/json" })
                .body(Body::from(body.into_bytes()))
                .expect("a status and one header make a response")
        });
        async move {
            tokio::time::sleep(delay).await;
            answer.ok_or_else(|| std::io::Error::other("connection refused"))
        }
    });
    (Client::new(service, "default"), count)
}
