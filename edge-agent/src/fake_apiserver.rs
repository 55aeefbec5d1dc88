//! A stand-in apiserver for the unit tests of the agent's loops that talk to it: it answers
//! every request alike and counts them, so that a test can tell how often a loop retries.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use kube::Client;
use kube::client::Body;
use serde_json::json;

/// A client whose every request is answered with `status` after `delay` (or, with `None`,
/// not at all: the connection fails), counting the requests. A success answers with the
/// Lease or the EdgeDevice the request wrote (a renewal, a status), a 500 with the text the apiserver's
/// authorization filter writes when it cannot reach an authorizer, another failure with a
/// Status.
pub fn apiserver(status: Option<u16>, delay: Duration) -> (Client, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let service = tower::service_fn(move |r: http::Request<Body>| {
        seen.fetch_add(1, Ordering::SeqCst);
        let answer = status.map(|code| {
            let body = if (200..300).contains(&code) && r.uri().path().contains("/leases/") {
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                       "metadata": {"name": "edgefleet-device-edge-1"}, "spec": {}})
                .to_string()
            } else if (200..300).contains(&code) {
                json!({"apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeDevice",
                       "metadata": {"name": "edge-1"}, "spec": {}})
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
