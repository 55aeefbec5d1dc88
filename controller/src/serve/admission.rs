//! Admission: the apiserver asks every replica (a validating webhook, `/validate`) before
//! it stores an EdgeDeployment or an EdgeModule, and is refused what no EdgeGrant allows,
//! with the words the deployment's Stalled condition would have. The judgement is the
//! controller's own (`grant::admit`, `limits::check_module`), so admission and the
//! controller never disagree; the controller still holds whatever gets past admission
//! (created while the webhook was down, or before a grant was narrowed).
//!
//! What is refused:
//! - an EdgeDeployment that no grant naming its namespace admits (priority, and the
//!   capabilities and images of the modules it refers to that exist already), or with a
//!   route that does not parse or goes to a module the deployment does not run;
//! - an EdgeModule that a device would refuse (`limits`), or that no grant naming its
//!   namespace lets run. A namespace no grant names may keep EdgeModules (they reach no
//!   device), so that a team's repository can be applied before its grant.
//!
//! Every replica serves it, leader or not, from caches of its own (grants and modules).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use edgefleet_crds::{EdgeDeployment, EdgeGrant, EdgeModule, ResolvedModule, limits};
use futures::StreamExt;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};

use crate::decide::catalog::{self, key};
use crate::decide::grant::{self, Grant, GrantProblem};
use crate::k8s::watches::{Cache, Synced, cache, drop_managed_fields};

/// The path the webhook is served at.
pub const PATH: &str = "/validate";

/// Why the apiserver should not store EdgeDeployment `d`; `None` when it may.
pub fn deployment_refusal(
    d: &EdgeDeployment,
    modules: &impl catalog::ModuleLookup,
    grants: &[Grant],
) -> Option<String> {
    if let Some(bad) = catalog::name_problem(d) {
        return Some(bad.to_string());
    }
    if let Some(bad) = catalog::route_problems(d).first() {
        return Some(bad.to_string());
    }
    let namespace = d.namespace().unwrap_or_default();
    let resolved = catalog::resolve_modules(d, modules);
    grant::admit(&namespace, d.spec.priority, &resolved, grants)
        .err()
        .map(|e| e.to_string())
}

/// Why the apiserver should not store EdgeModule `m`; `None` when it may.
pub fn module_refusal(m: &EdgeModule, grants: &[Grant]) -> Option<String> {
    let namespace = m.namespace().unwrap_or_default();
    if let Err(why) = limits::check_module(&m.spec) {
        return Some(format!("it can't run on a device: {why}"));
    }
    let as_run = ResolvedModule {
        name: m.name_any(),
        deployment: String::new(),
        module_ref: key(&namespace, &m.name_any()),
        desired_status: Default::default(),
        routes: vec![],
        spec: m.spec.clone(),
    };
    match grant::admit_module(&namespace, &as_run, grants) {
        Ok(()) | Err(GrantProblem::NoGrant(_)) => None,
        Err(refused) => Some(refused.to_string()),
    }
}

/// Answers one admission request, given the grants and a lookup of the modules of the
/// request's namespace.
pub fn answer(
    req: &AdmissionRequest<DynamicObject>,
    modules: &impl catalog::ModuleLookup,
    grants: &[Grant],
) -> AdmissionResponse {
    let response = AdmissionResponse::from(req);
    let Some(object) = &req.object else {
        return response;
    };
    let value = serde_json::to_value(object).unwrap_or_default();
    let refusal = match req.kind.kind.as_str() {
        "EdgeDeployment" => match serde_json::from_value::<EdgeDeployment>(value) {
            Ok(d) => deployment_refusal(&d, modules, grants),
            Err(e) => Some(format!("not an EdgeDeployment: {e}")),
        },
        "EdgeModule" => match serde_json::from_value::<EdgeModule>(value) {
            Ok(m) => module_refusal(&m, grants),
            Err(e) => Some(format!("not an EdgeModule: {e}")),
        },
        _ => None,
    };
    match refusal {
        Some(why) => response.deny(why),
        None => response,
    }
}

/// What the webhook reads: its own caches of grants and modules.
#[derive(Clone)]
struct Caches {
    grants: Store<EdgeGrant>,
    modules: Store<EdgeModule>,
}

impl Caches {
    fn grants(&self) -> Vec<Grant> {
        self.grants
            .state()
            .iter()
            .map(|g| Grant::new(&g.name_any(), g.spec.clone()))
            .collect()
    }

    /// The specs of the EdgeModules the request refers to (a deployment's modules, by
    /// `namespace/name`), looked up one by one: never a walk over every team's modules.
    fn modules_for(
        &self,
        req: &AdmissionRequest<DynamicObject>,
    ) -> BTreeMap<String, edgefleet_crds::EdgeModuleSpec> {
        let namespace = req.namespace.clone().unwrap_or_default();
        let referenced: Vec<String> = req
            .object
            .as_ref()
            .and_then(|o| serde_json::to_value(o).ok())
            .and_then(|v| serde_json::from_value::<EdgeDeployment>(v).ok())
            .map(|d| {
                d.spec
                    .modules
                    .iter()
                    .map(|m| m.module_name().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        referenced
            .into_iter()
            .filter_map(|name| {
                let m = self
                    .modules
                    .get(&ObjectRef::new(&name).within(&namespace))?;
                Some((key(&namespace, &name), m.spec.clone()))
            })
            .collect()
    }
}

async fn validate(
    State(caches): State<Caches>,
    axum::Json(review): axum::Json<AdmissionReview<DynamicObject>>,
) -> Result<axum::Json<AdmissionReview<DynamicObject>>, (StatusCode, String)> {
    let req: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}")))?;
    let namespace = req.namespace.clone().unwrap_or_default();
    let response = answer(&req, &caches.modules_for(&req), &caches.grants());
    if !response.allowed {
        tracing::info!(
            kind = req.kind.kind,
            namespace,
            name = req.name,
            reason = response.result.message,
            "refused at admission"
        );
    }
    Ok(axum::Json(response.into_review()))
}

/// The admission webhook's route, on caches of its own. It answers 503 (the apiserver then
/// applies the webhook's failurePolicy) until they have synced.
pub fn router(client: Client, addr: SocketAddr) -> Router {
    let synced = Arc::new(Synced::default());
    let (grants, grant_events) = cache(
        Api::<EdgeGrant>::all(client.clone()),
        watcher::Config::default(),
        drop_managed_fields,
        &synced,
        Cache::Grants,
    );
    let (modules, module_events) = cache(
        Api::<EdgeModule>::all(client),
        watcher::Config::default(),
        drop_managed_fields,
        &synced,
        Cache::Modules,
    );
    tokio::spawn(grant_events.for_each(|_| std::future::ready(())));
    tokio::spawn(module_events.for_each(|_| std::future::ready(())));
    let caches = Caches { grants, modules };
    let ready = Arc::new(tokio::sync::OnceCell::new());
    {
        let ready = ready.clone();
        tokio::spawn(async move {
            synced.wait().await;
            let _ = ready.set(());
            tracing::info!(%addr, "admission webhook ready");
        });
    }
    Router::new()
        .route(PATH, post(validate))
        .with_state(caches)
        .layer(axum::middleware::from_fn(
            move |req, next: axum::middleware::Next| {
                let ready = ready.initialized();
                async move {
                    if ready {
                        next.run(req).await
                    } else {
                        axum::response::IntoResponse::into_response((
                            StatusCode::SERVICE_UNAVAILABLE,
                            "caches not synced",
                        ))
                    }
                }
            },
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::decide::catalog::fixtures::{deployment, modules};
    use crate::decide::grant::fixtures::grant;

    fn module(ns: &str, name: &str, spec: &str) -> EdgeModule {
        serde_yaml::from_str(&format!(
            "apiVersion: edgefleet.io/v1alpha1\nkind: EdgeModule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}"
        ))
        .expect("module")
    }

    /// The refusals say what the controller's Stalled condition would.
    #[test]
    fn a_deployment_outside_its_grants_is_refused() {
        let grants = [grant(
            "team-a",
            "{namespaces: [team-a], devices: {}, priority: {min: 0, max: 10}}",
        )];
        let lib = modules(&[
            ("team-a/app", "image: app:1"),
            ("team-a/net", "image: app:1\nhostNetwork: true"),
        ]);
        let d = |ns: &str, priority: i32, module: &str| {
            deployment(&format!(
                "metadata: {{name: d, namespace: {ns}}}\nspec:\n  priority: {priority}\n  selector: {{}}\n  modules: [{{name: {module}}}]"
            ))
        };
        assert_eq!(
            deployment_refusal(&d("team-a", 5, "app"), &lib, &grants),
            None
        );
        let cases = [
            (
                d("team-a", 1000000, "app"),
                "priority 1000000 is outside 0..10",
            ),
            (d("team-a", 0, "net"), "asks for hostNetwork"),
            (
                d("team-b", 0, "app"),
                "no EdgeGrant names namespace \"team-b\"",
            ),
        ];
        for (dep, why) in cases {
            let refusal = deployment_refusal(&dep, &lib, &grants).expect(why);
            assert!(refusal.contains(why), "{refusal}");
        }
        // A module not there yet is judged when it comes (GitOps applies in any order).
        assert_eq!(
            deployment_refusal(&d("team-a", 0, "later"), &lib, &grants),
            None
        );
    }

    #[test]
    fn a_deployment_with_a_route_to_a_module_it_does_not_run_is_refused() {
        let grants = [grant("open", "{namespaces: [team-a], devices: {}}")];
        let lib = modules(&[("team-a/app", "image: app:1")]);
        let d = deployment(
            "metadata: {name: d, namespace: team-a}\nspec:\n  modules:\n  - name: app\n    routes: [{output: out, to: {module: theirs, input: in}}]",
        );
        let refusal = deployment_refusal(&d, &lib, &grants).expect("refused");
        assert!(refusal.contains("module \"theirs\""), "{refusal}");
    }

    #[test]
    fn a_deployment_named_too_long_for_a_label_is_refused() {
        let grants = [grant("open", "{namespaces: [team-a], devices: {}}")];
        let lib = modules(&[("team-a/app", "image: app:1")]);
        let named = |name: &str| {
            deployment(&format!(
                "metadata: {{name: {name}, namespace: team-a}}\nspec:\n  modules: [{{name: app}}]"
            ))
        };
        assert_eq!(
            deployment_refusal(&named(&"d".repeat(63)), &lib, &grants),
            None
        );
        let refusal = deployment_refusal(&named(&"d".repeat(64)), &lib, &grants).expect("refused");
        assert!(
            refusal.contains("labels the ControllerRevisions"),
            "{refusal}"
        );
    }

    #[test]
    fn a_module_no_grant_lets_run_is_refused() {
        let grants = [
            grant("plain", "{namespaces: [team-a], devices: {}}"),
            grant(
                "net",
                "{namespaces: [team-b], devices: {}, hostNetwork: true}",
            ),
        ];
        let net = "{image: app:1, hostNetwork: true}";
        let refusal = module_refusal(&module("team-a", "m", net), &grants).expect("refused");
        assert!(
            refusal.contains("grant plain: module \"m\" asks for hostNetwork"),
            "{refusal}"
        );
        assert_eq!(module_refusal(&module("team-b", "m", net), &grants), None);
        // Ungranted namespaces may keep modules: they reach no device.
        assert_eq!(module_refusal(&module("team-c", "m", net), &grants), None);
        // What a device would refuse, never.
        let escape = "{image: app:1, devices: [{hostPath: /dev/../etc/shadow}]}";
        let refusal = module_refusal(&module("team-c", "m", escape), &grants).expect("refused");
        assert!(refusal.contains("not under /dev"), "{refusal}");
    }

    #[test]
    fn an_admission_review_is_answered_by_kind() {
        let grants = [grant("plain", "{namespaces: [team-a], devices: {}}")];
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "0d3c", "operation": "CREATE", "namespace": "team-a", "name": "m",
                "kind": {"group": "edgefleet.io", "version": "v1alpha1", "kind": "EdgeModule"},
                "resource": {"group": "edgefleet.io", "version": "v1alpha1", "resource": "edgemodules"},
                "userInfo": {"username": "alice"},
                "object": {"apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeModule",
                           "metadata": {"name": "m", "namespace": "team-a"},
                           "spec": {"image": "app:1", "hostNetwork": true}},
            }
        }))
        .expect("review");
        let req: AdmissionRequest<DynamicObject> = review.try_into().expect("request");
        let none = BTreeMap::new();
        let response = answer(&req, &none, &grants);
        assert!(!response.allowed);
        assert!(response.result.message.contains("asks for hostNetwork"));
        assert!(
            answer(&req, &none, &[]).allowed,
            "no grant: a module may wait for one"
        );
    }
}
