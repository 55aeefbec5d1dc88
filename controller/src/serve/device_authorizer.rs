//! The device authorizer: the apiserver asks it (`/authorize`, a SubjectAccessReview, the
//! webhook authorizer's protocol) whether a device's agent may make a request, and it
//! answers with `device_access::decide` against the EdgeDevices this replica knows. Every
//! replica serves it, leader or not, from a watch of its own that keeps only the names of
//! enrolled devices (a few dozen bytes a device, not the devices themselves).
//!
//! It never denies: what it does not allow gets no opinion, and the apiserver asks its next
//! authorizer (RBAC). Before its watch has listed the fleet, or while that watch has been
//! failing for two minutes, it answers 503, which the apiserver treats as no opinion
//! without caching it.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::post;
use edgefleet_crds::EdgeDevice;
use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    SubjectAccessReview, SubjectAccessReviewSpec, SubjectAccessReviewStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};

use crate::decide::device_access::{Access, decide};
use crate::k8s::watches::watch;
use crate::reconcile::registry::enrolment_problem;

/// The path the authorizer is served at.
pub const PATH: &str = "/authorize";

/// A device's SubjectAccessReview is well under a kilobyte. Anyone who reaches the port can
/// send one; this bounds what the controller reads of it.
const BODY_LIMIT: usize = 16 * 1024;

/// How long the watch of the devices may keep failing before the authorizer stops trusting
/// what it listed last.
const STALE_AFTER: Duration = Duration::from_secs(120);

/// The names of the enrolled devices; `None` until the watch has listed them all, and while
/// it has been failing for longer than `STALE_AFTER`.
#[derive(Clone, Default)]
pub struct Enrolled(Arc<RwLock<Option<HashSet<String>>>>);

/// How many devices it knows, not their names: a fleet's worth of names is no debug line.
impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("devices", &self.read().as_ref().map(HashSet::len))
            .finish()
    }
}

/// Whether the registry would give this EdgeDevice its rights: the same condition, so that
/// the authorizer and RBAC agree on who is enrolled.
fn enrols(meta: &ObjectMeta) -> bool {
    let name = meta.name.as_deref().unwrap_or_default();
    meta.deletion_timestamp.is_none() && enrolment_problem(name).is_none()
}

impl Enrolled {
    /// The enrolled devices, followed from now on by a watch of their own.
    pub fn follow_from(client: Client) -> Enrolled {
        let enrolled = Enrolled::default();
        tokio::spawn(enrolled.clone().follow(client));
        enrolled
    }

    /// Whether the authorizer can decide: it has listed the fleet and its watch is not
    /// stale. Part of a replica's readiness where devices are authorized here, so that the
    /// webhook Service sends the apiserver's reviews only to replicas that can answer them.
    pub fn listed(&self) -> bool {
        self.read().is_some()
    }

    /// An authorizer that has listed `devices`, for the tests of what depends on it.
    #[cfg(test)]
    pub fn listing(devices: &[&str]) -> Enrolled {
        let names = devices.iter().map(|d| (*d).to_owned()).collect();
        Enrolled(Arc::new(RwLock::new(Some(names))))
    }

    /// Follows the EdgeDevices' metadata, forever (the watcher retries with backoff).
    async fn follow(self, client: Client) {
        loop {
            self.follow_until_stale(client.clone()).await;
        }
    }

    /// One watch of the devices, until it has been failing for `STALE_AFTER`: then the set
    /// is dropped and the watch ends, so that the next one lists the fleet again. A watch
    /// that recovered by itself would resume where it stopped and never list again, and
    /// the authorizer would stay without a set.
    async fn follow_until_stale(&self, client: Client) {
        let mut listing: HashSet<String> = HashSet::new();
        let events = watch(
            Api::<PartialObjectMeta<EdgeDevice>>::all(client),
            watcher::Config::default(),
        )
        .default_backoff();
        futures::pin_mut!(events);
        let mut failing_since: Option<Instant> = None;
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => {
                    failing_since = None;
                    event
                }
                Err(e) => {
                    // A watch that keeps failing would leave retired devices allowed here:
                    // after a while, nobody is (RBAC decides) until it lists again.
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > STALE_AFTER {
                        self.write().take();
                        tracing::warn!(error = %e, "device authorizer: cannot watch the devices; allowing none until it lists them again");
                        return;
                    }
                    continue;
                }
            };
            match event {
                watcher::Event::Init => listing.clear(),
                watcher::Event::InitApply(d) => {
                    if enrols(&d.metadata) {
                        listing.insert(d.metadata.name.unwrap_or_default());
                    }
                }
                watcher::Event::InitDone => {
                    let listed = std::mem::take(&mut listing);
                    tracing::info!(devices = listed.len(), "device authorizer ready");
                    *self.write() = Some(listed);
                }
                watcher::Event::Apply(d) => {
                    let name = d.metadata.name.clone().unwrap_or_default();
                    if let Some(set) = self.write().as_mut() {
                        if enrols(&d.metadata) {
                            set.insert(name);
                        } else {
                            set.remove(&name);
                        }
                    }
                }
                watcher::Event::Delete(d) => {
                    if let Some(set) = self.write().as_mut() {
                        set.remove(d.metadata.name.as_deref().unwrap_or_default());
                    }
                }
            }
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<HashSet<String>>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<HashSet<String>>> {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The decision, or `None` while this replica does not know the enrolled devices.
    fn decide(&self, spec: &SubjectAccessReviewSpec, namespace: &str) -> Option<Access> {
        self.read()
            .as_ref()
            .map(|set| decide(spec, namespace, |d| set.contains(d)))
    }
}

#[derive(Clone)]
struct Authorizer {
    enrolled: Enrolled,
    namespace: Arc<str>,
}

/// The authorizer's route, deciding from `enrolled` ([`Enrolled::follow_from`]).
pub fn router(enrolled: Enrolled, system_namespace: String) -> Router {
    Router::new()
        .route(PATH, post(authorize))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(Authorizer {
            enrolled,
            namespace: system_namespace.into(),
        })
}

/// The review, answered.
fn answer(review: SubjectAccessReview, access: Access) -> SubjectAccessReview {
    let (allowed, reason) = match access {
        Access::Allowed => (true, None),
        Access::NoOpinion(why) => (false, Some(why.to_owned())),
    };
    SubjectAccessReview {
        metadata: Default::default(),
        spec: review.spec,
        status: Some(SubjectAccessReviewStatus {
            allowed,
            reason,
            ..Default::default()
        }),
    }
}

/// Answers a review; 503 while this replica can't decide. An error, unlike an answer of no
/// opinion, is not cached by the apiserver: a replica that has just started, or whose watch
/// fails, does not leave devices refused for `unauthorizedTTL` (the apiserver applies the
/// failure policy, NoOpinion, to this one request).
async fn authorize(
    State(a): State<Authorizer>,
    axum::Json(review): axum::Json<SubjectAccessReview>,
) -> Result<axum::Json<SubjectAccessReview>, (StatusCode, &'static str)> {
    let Some(access) = a.enrolled.decide(&review.spec, &a.namespace) else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller does not know the enrolled devices yet",
        ));
    };
    if let Access::NoOpinion(why) = access {
        // A device asking for what is not its own: a misconfigured agent, or a stolen
        // certificate probing. At debug: anyone who reaches the port can send reviews.
        // Debug-formatted: the fields are the requester's.
        let attributes = review.spec.resource_attributes.as_ref();
        tracing::debug!(
            user = ?review.spec.user,
            verb = ?attributes.and_then(|a| a.verb.as_ref()),
            resource = ?attributes.and_then(|a| a.resource.as_ref()),
            name = ?attributes.and_then(|a| a.name.as_ref()),
            why,
            "device request not authorized here"
        );
    }
    Ok(axum::Json(answer(review, access)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authorization::v1::ResourceAttributes;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn own_edgedevice(user: &str) -> SubjectAccessReviewSpec {
        SubjectAccessReviewSpec {
            user: Some(user.to_owned()),
            groups: Some(vec!["edgefleet:devices".to_owned()]),
            resource_attributes: Some(ResourceAttributes {
                verb: Some("get".to_owned()),
                group: Some("edgefleet.io".to_owned()),
                resource: Some("edgedevices".to_owned()),
                name: Some("edge-1".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Until the watch has listed the fleet, nothing is decided: an empty cache must not
    /// read as "every device retired", nor a partial one as the whole fleet.
    #[test]
    fn before_the_fleet_is_listed_nothing_is_decided() {
        let e = Enrolled::default();
        let own = own_edgedevice("edgefleet:device:edge-1");
        assert_eq!(e.decide(&own, "ns"), None);
        assert!(!e.listed(), "a replica that can't decide is not ready");
        *e.write() = Some(HashSet::from(["edge-1".to_owned()]));
        assert_eq!(e.decide(&own, "ns"), Some(Access::Allowed));
        assert!(e.listed());
        e.write().take();
        assert!(!e.listed(), "nor is one whose watch went stale");
    }

    /// The route as the apiserver meets it: 503 (an error it does not cache) before the
    /// fleet is listed, then the review answered; an oversized body is refused unread.
    #[tokio::test]
    async fn the_route_answers_503_until_it_knows_the_devices() {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let post = |body: Vec<u8>| {
            axum::http::Request::post(PATH)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(body))
                .expect("a request")
        };
        let review = serde_json::to_vec(&SubjectAccessReview {
            spec: own_edgedevice("edgefleet:device:edge-1"),
            ..Default::default()
        })
        .expect("json");
        let e = Enrolled::default();
        let app = router(e.clone(), "ns".to_owned());
        let early = app
            .clone()
            .oneshot(post(review.clone()))
            .await
            .expect("a response");
        assert_eq!(early.status(), StatusCode::SERVICE_UNAVAILABLE);
        *e.write() = Some(HashSet::from(["edge-1".to_owned()]));
        let later = app.clone().oneshot(post(review)).await.expect("a response");
        assert_eq!(later.status(), StatusCode::OK);
        let body = later
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        let answered: SubjectAccessReview = serde_json::from_slice(&body).expect("a review");
        assert!(answered.status.expect("status").allowed);
        let huge = app
            .oneshot(post(vec![b' '; BODY_LIMIT + 1]))
            .await
            .expect("a response");
        assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// An EdgeDevice being deleted has retired its device already; a name that can't be a
    /// device's never enrolled one.
    #[test]
    fn a_device_being_deleted_or_misnamed_is_not_enrolled() {
        let meta = |name: &str, deleting: bool| ObjectMeta {
            name: Some(name.to_owned()),
            deletion_timestamp: deleting.then(|| Time(Default::default())),
            ..Default::default()
        };
        assert!(enrols(&meta("edge-1", false)));
        assert!(!enrols(&meta("edge-1", true)));
        assert!(!enrols(&meta("edge-1.site", false)));
    }

    /// The apiserver reads `status.allowed`; no opinion is `allowed: false` without
    /// `denied`, so the next authorizer still decides.
    #[test]
    fn the_answer_never_denies() {
        let review = SubjectAccessReview {
            spec: own_edgedevice("edgefleet:device:edge-2"),
            ..Default::default()
        };
        let no = answer(review.clone(), Access::NoOpinion("not its own"))
            .status
            .expect("status");
        assert!(!no.allowed);
        assert_eq!(no.denied, None);
        let yes = answer(review, Access::Allowed).status.expect("status");
        assert!(yes.allowed);
        let json = serde_json::to_value(answer(Default::default(), Access::Allowed)).expect("json");
        assert_eq!(json["apiVersion"], "authorization.k8s.io/v1");
        assert_eq!(json["kind"], "SubjectAccessReview");
    }
}
