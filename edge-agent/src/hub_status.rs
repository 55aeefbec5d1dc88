//! The hub's state for the device's status: whether its leaf connection to the cloud is up,
//! what waits on the device for the cloud, and what was lost on the way, counted by reason.
//! NATS counts no drops, so they are derived: every message that entered the store since
//! the first look (its last sequence moved on) was either forwarded (the forwarder counts
//! the cloud's acknowledgements), is still there, or was lost, expired or pushed out of a
//! full store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use edgefleet_crds::device::HubStatus;
use edgefleet_crds::hub::{MONITOR_PORT, UPSTREAM_STREAM};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long reading the hub's state may take before the status goes without it.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The most of the monitor's answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// Counts the router and the forwarder keep.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages a full store refused (refuse-new).
    pub refused: AtomicU64,
    /// Messages the cloud acknowledged.
    pub forwarded: AtomicU64,
}

/// The store and the forwarder's count at the first look.
#[derive(Debug, Clone, Copy)]
struct Baseline {
    last_sequence: u64,
    messages: u64,
    forwarded: u64,
}

/// Reads the hub's state pass after pass, remembering the drops already counted.
#[derive(Debug)]
pub struct HubWatch {
    client: async_nats::Client,
    counters: Arc<Counters>,
    baseline: Option<Baseline>,
    dropped: u64,
}

impl HubWatch {
    pub fn new(client: async_nats::Client, counters: Arc<Counters>) -> HubWatch {
        HubWatch {
            client,
            counters,
            baseline: None,
            dropped: 0,
        }
    }

    /// The hub's state now; `None` when the hub does not answer in time.
    pub async fn read(&mut self) -> Option<HubStatus> {
        let connected = tokio::time::timeout(TIMEOUT, leaf_connected())
            .await
            .ok()
            .flatten()?;
        let js = jetstream::new(self.client.clone());
        let store = tokio::time::timeout(TIMEOUT, async {
            let mut stream = js.get_stream(UPSTREAM_STREAM).await.ok()?;
            Some(stream.info().await.ok()?.state.clone())
        })
        .await
        .ok()
        .flatten();
        let forwarded = self.counters.forwarded.load(Ordering::Relaxed);
        let mut status = HubStatus {
            connected,
            refused: self.counters.refused.load(Ordering::Relaxed),
            ..HubStatus::default()
        };
        if let Some(state) = store {
            let base = *self.baseline.get_or_insert(Baseline {
                last_sequence: state.last_sequence,
                messages: state.messages,
                forwarded,
            });
            let entered = state.last_sequence.saturating_sub(base.last_sequence) + base.messages;
            let left = (forwarded - base.forwarded) + state.messages;
            // Never down: a message forwarded between the two reads above counts later.
            self.dropped = self.dropped.max(entered.saturating_sub(left));
            status.backlog_messages = HubStatus::coarse(state.messages);
            status.backlog_bytes = HubStatus::coarse(state.bytes);
            if state.messages > 0 {
                let age =
                    jiff::Timestamp::now().as_second() - state.first_timestamp.unix_timestamp();
                status.oldest_minutes = u64::try_from(age / 60).unwrap_or(0);
            }
        }
        status.dropped = self.dropped;
        Some(status)
    }
}

/// Whether the hub has a leaf connection, from its monitoring endpoint on the loopback
/// (the agent shares the host's network with it).
async fn leaf_connected() -> Option<bool> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", MONITOR_PORT))
        .await
        .ok()?;
    conn.write_all(b"GET /leafz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut answer = Vec::new();
    conn.take(MAX_ANSWER).read_to_end(&mut answer).await.ok()?;
    let text = String::from_utf8_lossy(&answer);
    let (_, body) = text.split_once("\r\n\r\n")?;
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(v.get("leafnodes").and_then(serde_json::Value::as_u64)? > 0)
}
