//! A fake apiserver: a `tower` service that stands in for kube's HTTP client, records every
//! request the controller sends and answers each from a handler the test gives.
//!
//! The stock handler, [`Objects::answer`], behaves enough like an apiserver for a reconcile
//! to run through: it keeps the objects it was given and those written to it, answers a
//! patch with the object as patched, a GET with the object or 404, and a create with the
//! object created. What a reconcile wrote can then be fed back into its caches, as a watch
//! would, to see what the next pass does.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use futures::FutureExt;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};

/// One request as the controller sent it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub path: String,
    /// The query string's parameters (`fieldManager`, `force`, ...), as sent: not URL-decoded.
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    /// The body, `Null` when there is none.
    pub body: Value,
}

impl Request {
    /// Whether this is a server-side apply under `manager`, forcing ownership.
    pub fn is_apply_by(&self, manager: &str) -> bool {
        self.method == Method::PATCH
            && self.content_type.as_deref() == Some("application/apply-patch+yaml")
            && self.query.get("fieldManager").map(String::as_str) == Some(manager)
            && self.query.get("force").map(String::as_str) == Some("true")
    }

    /// The object path a request is about: its own path, less a `/status` subresource.
    pub fn object_path(&self) -> &str {
        self.path.strip_suffix("/status").unwrap_or(&self.path)
    }
}

/// What a handler answers: a status code and a JSON body.
pub type Reply = (StatusCode, Value);

/// Answers a request; the test gives it, most often [`Objects::answer`] or a wrapper of it.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// The requests the fake received, in the order they arrived.
#[derive(Debug, Clone, Default)]
pub struct Log(Arc<Mutex<Vec<Request>>>);

impl Log {
    fn lock(&self) -> MutexGuard<'_, Vec<Request>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every request since the last `take`, which starts the next pass afresh.
    pub fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.lock())
    }
}

/// A client whose requests go to `handler` and into the returned log.
///
/// A request is recorded and answered the moment kube's client dispatches it, not when
/// the reconcile polls for the answer: a request sent and then abandoned (one of several
/// joined futures failed first) is still in the log, as it would have reached a real
/// apiserver.
pub fn client(handler: Handler) -> (kube::Client, Log) {
    let log = Log::default();
    let recorded = log.clone();
    let service = tower::service_fn(move |req: http::Request<Body>| {
        let request = read(req);
        let (status, body) = handler(&request);
        recorded.lock().push(request);
        let response = http::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string().into_bytes()))
            .expect("a status and one fixed header make a response");
        std::future::ready(Ok::<_, Infallible>(response))
    });
    (kube::Client::new(service, "default"), log)
}

fn read(req: http::Request<Body>) -> Request {
    let (parts, body) = req.into_parts();
    // kube builds every request body whole in memory, so it is ready at once.
    let bytes = body
        .collect()
        .now_or_never()
        .expect("a request body in memory")
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Request {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts
            .uri
            .query()
            .unwrap_or_default()
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        // kube sends JSON for every body, server-side applies included.
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// The objects the fake apiserver holds, by object path.
#[derive(Debug, Clone, Default)]
pub struct Objects(Arc<Mutex<BTreeMap<String, Value>>>);

impl Objects {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Value>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn insert(&self, path: String, object: Value) {
        self.lock().insert(path, object);
    }

    /// Merges `patch` into the object at `path`, as [`Objects::answer`] does with a patch,
    /// and returns the object as it is now.
    pub fn patch(&self, path: String, patch: &Value) -> Value {
        let mut objects = self.lock();
        let object = objects.entry(path).or_insert_with(|| json!({}));
        merge(object, patch);
        object.clone()
    }

    /// The object at `path`, as written.
    pub fn get(&self, path: &str) -> Option<Value> {
        self.lock().get(path).cloned()
    }

    /// Answers like an apiserver, roughly: a patch (apply or merge, both taken as a JSON
    /// merge, which is what the controller's patches amount to) returns the object as
    /// patched, creating it if need be; a GET returns the object or 404; a create returns
    /// what was sent; a delete removes the object.
    pub fn answer(&self, req: &Request) -> Reply {
        let path = req.object_path().to_owned();
        match req.method {
            Method::PATCH => (StatusCode::OK, self.patch(path, &req.body)),
            Method::GET => match self.get(&path) {
                Some(object) => (StatusCode::OK, object),
                None => failure(StatusCode::NOT_FOUND, "NotFound"),
            },
            Method::POST => (StatusCode::CREATED, req.body.clone()),
            Method::DELETE => {
                self.lock().remove(&path);
                (
                    StatusCode::OK,
                    json!({"kind": "Status", "status": "Success"}),
                )
            }
            _ => failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"),
        }
    }
}

/// An apiserver's `Status` of a failed request.
pub fn failure(code: StatusCode, reason: &str) -> Reply {
    let status = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": format!("the fake apiserver says {reason}"),
        "reason": reason,
        "code": code.as_u16(),
    });
    (code, status)
}

/// A JSON merge patch (RFC 7386): maps merge, `null` removes, anything else replaces.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}
