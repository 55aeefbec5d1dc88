//! Store-and-forward to the cloud. The router stores every upstream message in the device
//! hub's stream (on the host's disk, so it survives the hub, the agent and a reboot), and
//! the forwarder here sends them on to the cloud hub over the leaf connection, removing each
//! from the device only once the cloud's stream has acknowledged it. A message sent twice
//! (an acknowledgement lost on the way back) carries the same message id, so the cloud
//! keeps it once.
//!
//! The device stream is bounded: messages older than the TTL expire, and when it is full
//! the policy drops the oldest or refuses new ones (the router counts those). The agent
//! expires messages itself, counting them: NATS's own expiry counts nothing, so it is only
//! a safety net here, a little after the TTL, for when the agent is not running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::response::Response;
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind, Context, ErrorCode};
use edgefleet_crds::hub::{
    AGENT_USER, Lane, NATS_PORT, STORED_UPSTREAM_PREFIX, UPSTREAM_STREAM, device_inbox,
    forwarded_subject,
};
use futures::StreamExt;

use crate::hub_status::Counters;

/// The forwarders' durable consumers on the device stream: `cloud-<lane>`.
const FORWARDER: &str = "cloud";
/// The one forwarder's consumer before the store had lanes.
const UNLANED_FORWARDER: &str = "cloud";
/// How many messages may wait in the live lane before new ones go to the held lane: live
/// messages keep up with the cloud, a few batches at most.
const LIVE_MAX: u64 = 4 * BATCH as u64;
/// How many messages the forwarder sends before it waits for their acknowledgements.
const BATCH: usize = 256;
/// How long the cloud may take to acknowledge a batch before the forwarder tries again.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the forwarder waits before trying again when the cloud is out of reach.
const RETRY: Duration = Duration::from_secs(2);
/// How often the agent looks for messages older than the TTL: a message lives at most this
/// much longer than the TTL while the agent runs.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// How much longer than the TTL the store itself keeps a message, so that it is the agent,
/// which counts them, that expires messages, unless it is not running.
const SAFETY_NET: Duration = Duration::from_secs(60);

/// What to do with a new upstream message when the device's store is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenFull {
    /// Drop the oldest stored messages to make room (the newest data matters most).
    DropOldest,
    /// Keep what is stored and refuse the new message.
    RefuseNew,
}

/// The device's upstream store.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub device: String,
    pub ttl: Duration,
    pub max_mib: u32,
    pub when_full: WhenFull,
    /// What the outputs stream may take (see the router), beside this store in the hub's.
    pub outputs_mib: u32,
}

impl StoreSettings {
    /// The device stream's config.
    pub fn stream(&self) -> stream::Config {
        stream::Config {
            name: UPSTREAM_STREAM.into(),
            subjects: vec![format!("{STORED_UPSTREAM_PREFIX}.>")],
            // A message leaves the store once the forwarder has the cloud's acknowledgement:
            // what the store holds is the backlog.
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            max_age: self.ttl + SAFETY_NET,
            max_bytes: i64::from(self.max_mib) * 1024 * 1024,
            discard: match self.when_full {
                WhenFull::DropOldest => DiscardPolicy::Old,
                WhenFull::RefuseNew => DiscardPolicy::New,
            },
            ..Default::default()
        }
    }
}

/// Connects to the device's hub as the agent, with reply subjects under the device's inbox
/// (the only replies the cloud sends to this device).
pub async fn connect(device: &str, password: &str) -> async_nats::Client {
    loop {
        let connected = async_nats::ConnectOptions::with_user_and_password(
            AGENT_USER.into(),
            password.to_owned(),
        )
        .custom_inbox_prefix(device_inbox(device))
        .retry_on_initial_connect()
        .connect(format!("127.0.0.1:{NATS_PORT}"))
        .await;
        match connected {
            Ok(c) => return c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the device's hub yet");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// Makes the device stream exist with `settings` (a changed TTL, size or policy updates it
/// in place, keeping what it holds).
pub async fn ensure_stream(js: &Context, settings: &StoreSettings) -> Result<stream::Info, String> {
    let wanted = settings.stream();
    let mut s = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| format!("cannot create the upstream store: {e}"))?;
    let info = s
        .info()
        .await
        .map_err(|e| format!("cannot read the upstream store: {e}"))?
        .clone();
    let c = &info.config;
    if c.max_age != wanted.max_age || c.max_bytes != wanted.max_bytes || c.discard != wanted.discard
    {
        return js
            .update_stream(wanted)
            .await
            .map_err(|e| format!("cannot update the upstream store: {e}"));
    }
    Ok(info)
}

/// Which lane the router stores a new upstream message in: live while the cloud takes
/// what the forwarder sends and the live lane keeps up, held otherwise. Messages stored
/// while the device is offline go to the held lane, so that once it is back its live
/// messages do not wait behind that backlog; both lanes are forwarded at once.
#[derive(Debug, Default)]
pub struct Lanes {
    /// Whether the cloud acknowledged the last batch either lane sent.
    reachable: AtomicBool,
    /// Messages waiting in the live lane, as its forwarder last saw.
    live_waiting: AtomicU64,
}

impl Lanes {
    /// The lane for a message stored now.
    pub fn for_new(&self) -> Lane {
        if self.reachable.load(Ordering::Relaxed)
            && self.live_waiting.load(Ordering::Relaxed) < LIVE_MAX
        {
            Lane::Live
        } else {
            Lane::Held
        }
    }
}

/// Forwards stored messages to the cloud, each lane on its own, for as long as the agent
/// runs.
pub async fn forward(
    client: async_nats::Client,
    settings: StoreSettings,
    counters: Arc<Counters>,
    lanes: Arc<Lanes>,
) {
    let js = jetstream::new(client);
    let (js, settings, counters, lanes) = (&js, &settings, &counters, &lanes);
    let forward_lane = |lane: Lane| async move {
        loop {
            if let Err(e) = forward_once(js, settings, counters, lanes, lane).await {
                lanes.reachable.store(false, Ordering::Relaxed);
                tracing::info!(lane = lane.token(), error = %e, "upstream messages wait on the device");
                tokio::time::sleep(RETRY).await;
            }
        }
    };
    tokio::join!(forward_lane(Lane::Live), forward_lane(Lane::Held));
}

/// Removes, once a second, the stored messages older than the TTL, and counts them.
pub async fn expire(client: async_nats::Client, settings: StoreSettings, counters: Arc<Counters>) {
    let js = jetstream::new(client);
    let mut tick = tokio::time::interval(EXPIRE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match expire_once(&js, settings.ttl).await {
            Ok(purged) => {
                counters.expired.fetch_add(purged, Ordering::Relaxed);
            }
            Err(e) => tracing::debug!(error = %e, "cannot expire upstream messages now"),
        }
    }
}

/// The stored message a `start_time` get found: the first at or after that time.
#[derive(Debug, serde::Deserialize)]
struct Found {
    message: FoundMessage,
}

#[derive(Debug, serde::Deserialize)]
struct FoundMessage {
    seq: u64,
}

/// Purges every stored message older than `ttl`; how many it purged. The stream's
/// timestamps grow with its sequences, so what is older is everything before the first
/// message newer than `now - ttl`, which the stream finds by time itself (a message get by
/// `start_time`, which async-nats's builders do not offer; the request is NATS's own API).
async fn expire_once(js: &Context, ttl: Duration) -> Result<u64, String> {
    let stream = js
        .get_stream(UPSTREAM_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let state = &stream.cached_info().state;
    let ttl = jiff::SignedDuration::try_from(ttl).map_err(|e| e.to_string())?;
    let cutoff = jiff::Timestamp::now()
        .checked_sub(ttl)
        .map_err(|e| e.to_string())?;
    if state.messages == 0 || state.first_timestamp.unix_timestamp_nanos() >= cutoff.as_nanosecond()
    {
        return Ok(0);
    }
    let request = serde_json::json!({
        "start_time": cutoff.to_string(),
        "next_by_subj": format!("{STORED_UPSTREAM_PREFIX}.>"),
    });
    let found: Response<Found> = js
        .request(format!("STREAM.MSG.GET.{UPSTREAM_STREAM}"), &request)
        .await
        .map_err(|e| e.to_string())?;
    let keep_from = match found {
        Response::Ok(f) => f.message.seq,
        // Nothing as new as the cutoff: everything stored when the state was read is older
        // (what arrived since has a later sequence and stays).
        Response::Err { error } if error.error_code() == ErrorCode::NO_MESSAGE_FOUND => {
            state.last_sequence + 1
        }
        Response::Err { error } => return Err(error.to_string()),
    };
    let purged = stream
        .purge()
        .sequence(keep_from)
        .await
        .map_err(|e| e.to_string())?;
    Ok(purged.purged)
}

/// Sends `lane`'s batches until something fails: the cloud out of reach, the hub
/// restarting.
async fn forward_once(
    js: &Context,
    settings: &StoreSettings,
    counters: &Counters,
    lanes: &Lanes,
    lane: Lane,
) -> Result<(), String> {
    let info = ensure_stream(js, settings).await?;
    // Message ids are unique per device and per store: a store made anew (its files lost)
    // numbers from 1 again, and its creation time keeps those ids apart from the old ones.
    // Both lanes are one stream, one sequence: their ids never meet.
    let epoch = info.created.unix_timestamp_nanos();
    let stream = js
        .get_stream(UPSTREAM_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    // The single forwarder before lanes read every subject: a work queue takes no other
    // consumer beside it. What it had not sent, the held lane sends.
    let _ = stream.delete_consumer(UNLANED_FORWARDER).await;
    let name = format!("{FORWARDER}-{}", lane.token());
    let consumer = stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subjects: lane.filters(),
                ack_policy: AckPolicy::Explicit,
                ack_wait: ACK_TIMEOUT * 3,
                max_ack_pending: i64::try_from(BATCH * 4).unwrap_or(1024),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let mut fetched = consumer
            .fetch()
            .max_messages(BATCH)
            .expires(Duration::from_secs(1))
            .messages()
            .await
            .map_err(|e| e.to_string())?;
        let mut batch = Vec::with_capacity(BATCH);
        while let Some(msg) = fetched.next().await {
            batch.push(msg.map_err(|e| e.to_string())?);
        }
        if lane == Lane::Live {
            // What waits behind this batch (nothing when it came back empty).
            let waiting = batch
                .last()
                .and_then(|m| m.info().ok())
                .map_or(0, |i| i.pending);
            lanes.live_waiting.store(waiting, Ordering::Relaxed);
        }
        if let Err(e) = send(js, settings, counters, epoch, &batch).await {
            // What the cloud did not take is offered again at once, not after the ack wait.
            for msg in &batch {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
            }
            return Err(e);
        }
        if !batch.is_empty() {
            lanes.reachable.store(true, Ordering::Relaxed);
        }
    }
}

/// Sends a batch and, in order, removes from the device each message the cloud has
/// acknowledged. Stops at the first failure; the messages not yet removed go again.
async fn send(
    js: &Context,
    settings: &StoreSettings,
    counters: &Counters,
    epoch: i128,
    batch: &[jetstream::Message],
) -> Result<(), String> {
    let mut sent = Vec::with_capacity(batch.len());
    for msg in batch {
        let seq = msg.info().map_err(|e| e.to_string())?.stream_sequence;
        let Some(subject) = forwarded_subject(&settings.device, &msg.subject) else {
            // Not a subject the store takes: nothing to send.
            let _ = msg.ack().await;
            continue;
        };
        let mut headers = msg.headers.clone().unwrap_or_default();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("{}:{epoch}:{seq}", settings.device).as_str(),
        );
        let ack = js
            .publish_with_headers(subject, headers, msg.payload.clone())
            .await
            .map_err(|e| e.to_string())?;
        sent.push((msg, ack));
    }
    for (msg, ack) in sent {
        match tokio::time::timeout(ACK_TIMEOUT, ack).await {
            Ok(Ok(_)) => {
                msg.ack().await.map_err(|e| e.to_string())?;
                counters.forwarded.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => return Err(format!("the cloud did not take a message: {e}")),
            Err(_) => return Err("the cloud did not acknowledge in time".into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store is bounded on every axis the issue names: age, bytes, and what happens
    /// when full; and it takes only what the router stores.
    #[test]
    fn the_store_is_bounded_by_age_and_size_with_a_policy_when_full() {
        let s = StoreSettings {
            device: "edge-1".into(),
            ttl: Duration::from_secs(7200),
            max_mib: 512,
            when_full: WhenFull::RefuseNew,
            outputs_mib: 64,
        };
        let c = s.stream();
        assert_eq!(c.subjects, ["edgefleet.up.>"]);
        assert_eq!(
            c.max_age,
            Duration::from_secs(7260),
            "the agent expires and counts; the store's own expiry is a safety net after it"
        );
        assert_eq!(c.max_bytes, 512 * 1024 * 1024);
        assert_eq!(c.discard, DiscardPolicy::New);
        assert_eq!(c.storage, StorageType::File);
        assert_eq!(
            c.retention,
            RetentionPolicy::WorkQueue,
            "what it holds is the backlog"
        );
    }
}
