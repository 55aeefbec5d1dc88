//! The device's router: carries each module's output messages where its routes say, to
//! other modules' inputs or upstream, when their condition holds. It is a client of the
//! device's hub (the agent's own user, which alone may publish into modules' inputs), so
//! routing keeps working offline, and a module can only ever reach the inputs a route
//! gives it.
//!
//! Modules' outputs are kept in a stream on the device (`OUTPUTS`) until every route that
//! reads them has carried them: a message the hub acknowledged to a module survives the
//! agent and the device restarting before it was routed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind, Context, ErrorCode};
use edgefleet_crds::ResolvedModule;
use edgefleet_crds::hub::{
    Lane, MODULE_SUBJECTS, OUTPUTS_STREAM, UPSTREAM_STREAM, module_inputs, module_outputs,
    stored_in_lane, stored_upstream,
};
use edgefleet_crds::route::{Condition, Destination};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::hub_status::{Counters, StoreStart};
use crate::render::hex;
use crate::upstream::{Lanes, StoreSettings};

/// How long a message that could not be routed waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);
/// The most messages a route carries at once.
const BATCH: usize = 256;

/// One route as the router runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    /// The NATS subject the route reads.
    pub from: String,
    /// Where matching messages go: a module's input, or the identity of an upstream route
    /// (`edgefleet.up.<ns>.<name>`; its messages are stored in `stored`'s lanes).
    pub to: String,
    /// For an upstream route, the device's upstream store: the message is routed once the
    /// store has it (its acknowledgement), and the forwarder takes it to the cloud from there.
    pub stored: Option<StoredIn>,
    pub when: Option<Condition>,
    /// The condition as written: with `from` and `to`, the route's identity.
    pub when_text: Option<String>,
}

impl Hop {
    /// The name of the route's durable consumer: a hash of what the route is, so that an
    /// unchanged route keeps its place in the stream across restarts and plan changes.
    pub fn consumer_name(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            &self.from,
            &self.to,
            self.when_text.as_deref().unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        format!("route-{}", hex(&h.finalize()[..8]))
    }
}

/// An upstream route's subjects in the store's lanes.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredIn {
    pub live: String,
    pub held: String,
}

impl StoredIn {
    fn subject(&self, lane: Lane) -> &str {
        match lane {
            Lane::Live => &self.live,
            Lane::Held => &self.held,
        }
    }
}

/// The hops of every route of `modules`. A route the agent's validation would
/// have refused (it never gets here) is skipped, not guessed at.
pub fn plan(modules: &[ResolvedModule]) -> Vec<Hop> {
    let mut hops = Vec::new();
    for m in modules {
        let ns = m.namespace();
        for r in &m.routes {
            let Ok(dest) = r.check() else { continue };
            let (to, stored) = match dest {
                Destination::Input { module, input } => {
                    (format!("{}.{input}", module_inputs(ns, module)), None)
                }
                Destination::Upstream(name) => (
                    stored_upstream(ns, name),
                    Some(StoredIn {
                        live: stored_in_lane(Lane::Live, ns, name),
                        held: stored_in_lane(Lane::Held, ns, name),
                    }),
                ),
            };
            let when = match r.when.as_deref().map(Condition::parse) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(_)) => continue,
            };
            hops.push(Hop {
                from: format!("{}.{}", module_outputs(ns, &m.name), r.output),
                to,
                stored,
                when,
                when_text: r.when.clone(),
            });
        }
    }
    hops
}

/// Runs the hops `plan` sends, replacing them whenever the plan changes, on the agent's
/// connection to the hub (which reconnects by itself). `routed` says which plan has its
/// consumers in place: until then, what a module publishes on an output no consumer reads
/// yet is not kept (the outputs stream keeps only what a route wants).
pub async fn run(
    client: async_nats::Client,
    store: StoreSettings,
    counters: Arc<Counters>,
    lanes: Arc<Lanes>,
    mut plan: watch::Receiver<Vec<Hop>>,
    routed: watch::Sender<Vec<Hop>>,
) {
    let js = jetstream::new(client.clone());
    record_start(&js, &counters).await;
    loop {
        let hops = plan.borrow_and_update().clone();
        let mut tasks = JoinSet::new();
        match consumers(&js, &store, &hops).await {
            Ok(consumers) => {
                routed.send_replace(hops.clone());
                for (hop, consumer) in hops.into_iter().zip(consumers) {
                    tasks.spawn(forward(
                        client.clone(),
                        hop,
                        consumer,
                        counters.clone(),
                        lanes.clone(),
                    ));
                }
                tracing::info!(routes = tasks.len(), "routing");
            }
            // Tried again at the next change, or in a moment.
            Err(e) => {
                tracing::warn!(error = %e, "cannot route yet");
                tokio::time::sleep(RETRY).await;
                plan.mark_changed();
            }
        }
        if plan.changed().await.is_err() {
            return;
        }
        tasks.shutdown().await;
    }
}

/// Waits, at most `limit`, until the router has the consumers of `hops`: a module placed
/// before then could publish into a route that does not read yet and lose those messages.
/// `false` when it did not happen in time (the hub is down, say): the modules are placed
/// anyway, since they must run with or without the hub.
pub async fn wait_routed(
    routed: &mut watch::Receiver<Vec<Hop>>,
    hops: &[Hop],
    limit: Duration,
) -> bool {
    tokio::time::timeout(limit, routed.wait_for(|r| r.as_slice() == hops))
        .await
        .is_ok_and(|r| r.is_ok())
}

/// Notes the upstream store's state before the router stores anything in it (the router is
/// its only writer), so that what a full store pushes out from then on is counted even if
/// it happens before the agent's first look. Waits for the hub, as routing would.
async fn record_start(js: &Context, counters: &Counters) {
    loop {
        let found = match js.get_stream(UPSTREAM_STREAM).await {
            Ok(mut s) => s
                .info()
                .await
                .map(|i| StoreStart {
                    last_sequence: i.state.last_sequence,
                    messages: i.state.messages,
                })
                .map_err(|e| e.to_string()),
            // Made later by the forwarder: it starts from nothing.
            Err(e)
                if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(StoreStart::default())
            }
            Err(e) => Err(e.to_string()),
        };
        match found {
            Ok(start) => {
                let _ = counters.start.set(start);
                return;
            }
            Err(e) => {
                tracing::info!(error = %e, "waiting for the hub before routing");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Makes the outputs stream and one durable consumer per hop, and removes the consumers of
/// routes that are gone (with interest retention, what only they wanted goes with them).
async fn consumers(
    js: &Context,
    store: &StoreSettings,
    hops: &[Hop],
) -> Result<Vec<PullConsumer>, String> {
    let stream = js
        .get_or_create_stream(outputs_stream(store))
        .await
        .map_err(|e| format!("cannot make the outputs stream: {e}"))?;
    let names: Vec<String> = hops.iter().map(Hop::consumer_name).collect();
    let mut existing = stream.consumer_names();
    let mut stale = Vec::new();
    while let Some(name) = existing.next().await {
        let name = name.map_err(|e| e.to_string())?;
        if !names.contains(&name) {
            stale.push(name);
        }
    }
    for name in stale {
        let _ = stream.delete_consumer(&name).await;
    }
    let mut out = Vec::with_capacity(hops.len());
    for (hop, name) in hops.iter().zip(names) {
        let consumer = stream
            .get_or_create_consumer(
                &name,
                pull::Config {
                    durable_name: Some(name.clone()),
                    filter_subject: hop.from.clone(),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(30),
                    max_ack_pending: 1024,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("cannot make the consumer of a route from {}: {e}", hop.from))?;
        out.push(consumer);
    }
    Ok(out)
}

/// The device's stream of modules' outputs: a module's message is on the device's disk once
/// the hub has acknowledged it, until every route that reads it has carried it (interest
/// retention: an output no route reads is not kept), within the upstream store's age and
/// its own small share of the hub's store.
pub fn outputs_stream(store: &StoreSettings) -> stream::Config {
    stream::Config {
        name: OUTPUTS_STREAM.into(),
        subjects: vec![format!("{MODULE_SUBJECTS}.*.*.out.>")],
        retention: RetentionPolicy::Interest,
        storage: StorageType::File,
        max_age: store.ttl,
        max_bytes: i64::from(store.outputs_mib) * 1024 * 1024,
        discard: DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Carries one route's matching messages, headers and all, taking each off the outputs
/// stream once delivered (or stored upstream).
async fn forward(
    client: async_nats::Client,
    hop: Hop,
    consumer: PullConsumer,
    counters: Arc<Counters>,
    lanes: Arc<Lanes>,
) {
    let js = jetstream::new(client.clone());
    let messages = match consumer.messages().await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(from = hop.from, error = %e, "cannot read a route's messages");
            return;
        }
    };
    // Whatever has arrived, up to a batch at a time: stored messages are published together
    // and their acknowledgements awaited together, not one round trip per message.
    let mut batches = messages.ready_chunks(BATCH);
    while let Some(batch) = batches.next().await {
        let mut storing = Vec::new();
        // One lane for the batch: the cloud's reach does not change message by message.
        let lane = lanes.for_new();
        for msg in batch.into_iter().flatten() {
            if let Some(when) = &hop.when {
                let header = |name: &str| {
                    msg.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .map(|v| v.as_str().to_owned())
                };
                if !when.holds(&msg.payload, &header) {
                    let _ = msg.ack().await;
                    continue;
                }
            }
            let headers = tenant_headers(msg.headers.as_ref());
            if let Some(stored) = &hop.stored {
                match js
                    .publish_with_headers(
                        stored.subject(lane).to_owned(),
                        headers,
                        msg.payload.clone(),
                    )
                    .await
                {
                    Ok(ack) => storing.push((msg, ack)),
                    Err(e) => retry(&hop, &msg, &e.to_string()).await,
                }
                continue;
            }
            match client
                .publish_with_headers(hop.to.clone(), headers, msg.payload.clone())
                .await
            {
                Ok(()) => {
                    let _ = msg.ack().await;
                }
                Err(e) => retry(&hop, &msg, &e.to_string()).await,
            }
        }
        for (msg, ack) in storing {
            match ack.await {
                Ok(_) => {
                    let _ = msg.ack().await;
                }
                // A full store that refuses new messages: counted, and not tried again.
                Err(e) if refused_as_full(&e) => {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(to = hop.to, error = %e, "the upstream store is full");
                    let _ = msg.ack().await;
                }
                Err(e) => retry(&hop, &msg, &e.to_string()).await,
            }
        }
    }
}

/// The limits' own errors (nats-server's `server/store.go`), which a full store with
/// discard-new answers with.
const FULL: [&str; 3] = [
    "maximum bytes exceeded",
    "maximum messages exceeded",
    "maximum messages per subject exceeded",
];

/// Whether the store refused a message because it is full (refuse-new). JetStream answers
/// every store it could not make with one code, 10077 (`JSStreamStoreFailedF`, whose
/// description is the store's error), and a full store is only one reason: under the same
/// code a stream that is closing (the hub restarting) says "store closed", and that message
/// must be tried again, not dropped. So the code first, then which of the store's errors.
fn refused_as_full(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(store_full)
}

fn store_full(e: &jetstream::Error) -> bool {
    // The description is only reachable through Display: "<description> (code ...)".
    let text = e.to_string();
    e.error_code() == ErrorCode::STREAM_STORE_FAILED
        && FULL
            .iter()
            .any(|f| text.strip_prefix(f).is_some_and(|r| r.starts_with(" (")))
}

/// Header prefixes the hub itself acts on, which no module's message carries further.
const HUB_HEADER_PREFIXES: [&str; 2] = ["nats-", "nmqtt-"];

/// A module's headers without the hub's own. `Nats-*` steer JetStream (expected sequence,
/// rollup, message id, TTL): a module that set one could have the device's store or the
/// cloud's refuse its messages forever, stalling the forwarder for every team on the
/// device, or claim another message's id; the forwarder sets the id itself. `Nmqtt-*` are
/// the MQTT listener's: an MQTT publish's `Nmqtt-Pub` kept on a routed copy makes the hub
/// hand it to a QoS 1 subscriber only from its MQTT stream, where a routed copy never is,
/// so the receiving module would get nothing.
fn tenant_headers(headers: Option<&async_nats::HeaderMap>) -> async_nats::HeaderMap {
    let mut kept = async_nats::HeaderMap::new();
    for (name, values) in headers.into_iter().flat_map(async_nats::HeaderMap::iter) {
        let name_str: &str = name.as_ref();
        if HUB_HEADER_PREFIXES.iter().any(|p| {
            name_str
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p))
        }) {
            continue;
        }
        for v in values {
            kept.append(name.clone(), v.clone());
        }
    }
    kept
}

/// Leaves a message that could not be routed for another try in a moment.
async fn retry(hop: &Hop, msg: &jetstream::Message, why: &str) {
    tracing::warn!(to = hop.to, error = why, "a routed message waits");
    let _ = msg.ack_with(AckKind::Nak(Some(RETRY))).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(from: &str) -> Hop {
        Hop {
            from: from.into(),
            to: "edgefleet.modules.a.b.in.x".into(),
            stored: None,
            when: None,
            when_text: None,
        }
    }

    /// A module is placed only once the router reads its new route (or the wait gives up):
    /// placed before, what it publishes first would be lost.
    #[tokio::test]
    async fn modules_wait_for_the_router_to_read_their_new_routes() {
        let plan = vec![hop("edgefleet.modules.a.sensor.out.temperature")];
        let (routed_tx, mut routed_rx) = watch::channel(Vec::new());
        let limit = Duration::from_millis(100);
        assert!(
            !wait_routed(&mut routed_rx, &plan, limit).await,
            "the router never read the route"
        );
        routed_tx.send_replace(vec![hop("edgefleet.modules.a.other.out.x")]);
        assert!(
            !wait_routed(&mut routed_rx, &plan, limit).await,
            "the router reads another plan"
        );
        let sent = plan.clone();
        let router = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            routed_tx.send_replace(sent);
            routed_tx
        });
        assert!(wait_routed(&mut routed_rx, &plan, Duration::from_secs(5)).await);
        drop(router.await);
    }

    /// A module's own `Nats-Expected-Last-Sequence` or `Nats-Rollup` would make every
    /// store refuse its messages and stall the device's forwarder; a `Nats-Msg-Id` would
    /// claim another message's place in the cloud. None survives routing; its other
    /// headers do.
    #[test]
    fn a_module_cannot_steer_the_hub_through_its_headers() {
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Expected-Last-Sequence", "0");
        h.insert("NATS-ROLLUP", "all");
        h.insert("Nats-Msg-Id", "edge-2:1:1");
        h.insert("Nmqtt-Pub", "1");
        h.insert("NMQTT-Subject", "x");
        h.insert("kind", "alert");
        let kept = tenant_headers(Some(&h));
        let names: Vec<String> = kept.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(names, ["kind"]);
        assert_eq!(kept.get("kind").map(|v| v.as_str()), Some("alert"));
        assert_eq!(tenant_headers(None).iter().count(), 0);
    }

    /// Only a full store's refusal drops a message; a store closing while the hub
    /// restarts answers with the same code, and that message is tried again. A message
    /// "exceeding the maximum size" is not a full store either.
    #[test]
    fn only_a_full_store_refuses_a_message_for_good() {
        let answer = |code: u64, description: &str| -> jetstream::Error {
            serde_json::from_value(serde_json::json!({
                "code": 503, "err_code": code, "description": description,
            }))
            .expect("a JetStream error")
        };
        for full in FULL {
            assert!(store_full(&answer(10077, full)), "{full}");
        }
        for (code, other) in [
            (10077, "store closed"),
            (10077, "message too large"),
            (10077, "maximum bytes exceeded, and more"),
            (10054, "message size exceeds maximum allowed"),
            (10023, "insufficient resources"),
            (10047, "maximum bytes exceeded"),
        ] {
            assert!(!store_full(&answer(code, other)), "{code} {other}");
        }
    }

    #[test]
    fn routes_become_hops_between_the_modules_subjects() {
        let sensor: ResolvedModule = serde_json::from_value(serde_json::json!({
            "name": "sensor", "deployment": "team-a/d", "moduleRef": "team-a/sensor",
            "image": "app:1",
            "routes": [
                {"output": "readings", "to": {"module": "filter", "input": "in"}},
                {"output": "readings", "when": "$body.t > 30", "to": {"upstream": "alerts"}},
            ],
        }))
        .expect("in the test setup");
        let hops = plan(&[sensor]);
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0].from, "edgefleet.mod.team-a.sensor.out.readings");
        assert_eq!(hops[0].to, "edgefleet.mod.team-a.filter.in.in");
        assert_eq!(hops[0].when, None);
        assert_eq!(hops[0].stored, None);
        assert_eq!(
            hops[1].to, "edgefleet.up.team-a.alerts",
            "an upstream route keeps its identity (and its consumer) from before lanes"
        );
        assert_eq!(
            hops[1].stored,
            Some(StoredIn {
                live: "edgefleet.up.live.team-a.alerts".into(),
                held: "edgefleet.up.team-a.alerts".into(),
            }),
            "upstream messages are stored until the cloud has them"
        );
        assert!(hops[1].when.is_some());
    }
}
