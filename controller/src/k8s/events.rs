//! Events: what a person reads in `kubectl describe` and `kubectl get events`. Published
//! on transitions only; a failure to publish is logged, never fatal to a reconcile.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Resource;
use kube::runtime::events::{Event, EventType};

use edgefleet_crds::identity::CONTROLLER_NAME;

use crate::k8s::context::Context;

impl Context {
    /// Publishes an Event; a failure to do so is logged, never fatal to a reconcile.
    pub async fn event(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.event_related(regarding, None, type_, reason, action, note)
            .await;
    }

    /// As [`Context::event`], about `related` as well.
    pub async fn event_related(
        &self,
        regarding: &ObjectReference,
        related: Option<ObjectReference>,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(truncate(note, 1000)),
            action: action.to_owned(),
            secondary: related,
        };
        let published = if regarding.namespace.is_some() {
            self.publish_namespaced(&ev, regarding).await
        } else {
            self.publish_cluster_scoped(&ev, regarding).await
        };
        if let Err(e) = published {
            tracing::warn!(reason, error = %e, "cannot publish event");
        }
    }

    /// Events about a namespaced object go through events.k8s.io/v1, a new Event each time.
    /// kube's `Recorder` folds an Event into an earlier one of the same object, reason and
    /// related object for six minutes and keeps the earlier note, so a rollout's second
    /// revision within that time read as its first. Events are published on transitions
    /// only: there is no series to fold.
    async fn publish_namespaced(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> kube::Result<()> {
        use k8s_openapi::api::events::v1::Event as NewEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        let namespace = regarding.namespace.clone().unwrap_or_default();
        let event = NewEvent {
            metadata: ObjectMeta {
                // events.k8s.io/v1 holds the name to a DNS subdomain, which may not end in a
                // dot (core/v1 does not): a generated name ends in `-`, which it allows.
                generate_name: Some(format!(
                    "{}-",
                    regarding.name.as_deref().unwrap_or("object")
                )),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            note: ev.note.clone(),
            type_: Some(type_name(ev.type_).to_owned()),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            event_time: Some(MicroTime(jiff::Timestamp::now())),
            reporting_controller: Some(CONTROLLER_NAME.to_owned()),
            reporting_instance: Some(self.config.identity.clone()),
            ..Default::default()
        };
        kube::Api::<NewEvent>::namespaced(self.client.clone(), &namespace)
            .create(&Default::default(), &event)
            .await
            .map(|_| ())
    }

    /// Events about a cluster-scoped object (an EdgeDevice) go through core/v1 into the
    /// `default` namespace: the events.k8s.io/v1 validation of Kubernetes before 1.22 rejects
    /// them. They are published on transitions only, so no series aggregation is needed.
    /// `action` has no place among the legacy fields and is dropped.
    async fn publish_cluster_scoped(
        &self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> kube::Result<()> {
        use k8s_openapi::api::core::v1::{Event as CoreEvent, EventSource};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
        let now = jiff::Timestamp::now();
        let event = CoreEvent {
            metadata: ObjectMeta {
                generate_name: Some(format!(
                    "{}.",
                    regarding.name.as_deref().unwrap_or("object")
                )),
                namespace: Some("default".to_owned()),
                ..Default::default()
            },
            involved_object: regarding.clone(),
            reason: Some(ev.reason.clone()),
            message: ev.note.clone(),
            type_: Some(type_name(ev.type_).to_owned()),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            count: Some(1),
            // Only the legacy fields: with eventTime or reportingComponent set, Kubernetes
            // before 1.22 validates strictly and refuses a cluster-scoped object again.
            source: Some(EventSource {
                component: Some(CONTROLLER_NAME.to_owned()),
                host: Some(self.config.identity.clone()),
            }),
            ..Default::default()
        };
        kube::Api::<CoreEvent>::namespaced(self.client.clone(), "default")
            .create(&Default::default(), &event)
            .await
            .map(|_| ())
    }
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Normal => "Normal",
        EventType::Warning => "Warning",
    }
}

/// An object reference for Events.
pub fn reference<K: Resource<DynamicType = ()>>(obj: &K) -> ObjectReference {
    obj.object_ref(&())
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}
