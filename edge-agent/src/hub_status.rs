//! The hub's state for the device's status and metrics: whether its leaf connection to the
//! cloud is up, what waits on the device for the cloud, and what was lost on the way,
//! counted by reason. NATS counts no drops, so the agent counts what it can see itself
//! (messages it expired, messages a full store refused) and derives the rest: every message
//! that entered the store since the first look (its last sequence moved on) was either
//! forwarded, expired, is still there, or was pushed out of a full store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use edgefleet_crds::device::{HubStatus, MAX_HUB_COUNT};
use edgefleet_crds::hub::UPSTREAM_STREAM;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long reading the hub's state may take before the status goes without it.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The most of the monitor's answer read.
const MAX_ANSWER: u64 = 64 * 1024;

/// Counts the router, the forwarder and the expiry keep.
#[derive(Debug, Default)]
pub struct Counters {
    /// Messages a full store refused (refuse-new).
    pub refused: AtomicU64,
    /// Messages the cloud acknowledged.
    pub forwarded: AtomicU64,
    /// Messages the agent removed from the store for being older than the TTL.
    pub expired: AtomicU64,
    /// The upstream store as the router found it before it stored anything: every message
    /// that entered since is this agent's to account for, however late its first look.
    pub start: std::sync::OnceLock<StoreStart>,
}

/// The upstream store's sequence and size at the agent's start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStart {
    pub last_sequence: u64,
    pub messages: u64,
}

/// The hub's figures, exact: the status shows them coarsely, the metrics as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubFigures {
    pub connected: bool,
    pub backlog_messages: u64,
    pub backlog_bytes: u64,
    /// How long the oldest waiting message has waited.
    pub oldest_seconds: u64,
    /// These four since the agent started.
    pub forwarded: u64,
    pub expired: u64,
    pub full: u64,
    pub refused: u64,
}

impl HubFigures {
    /// The figures as the device's status carries them.
    pub fn status(&self) -> HubStatus {
        HubStatus {
            connected: self.connected,
            backlog_messages: HubStatus::coarse(self.backlog_messages),
            backlog_bytes: HubStatus::coarse(self.backlog_bytes),
            oldest_minutes: (self.oldest_seconds / 60).min(MAX_HUB_COUNT),
            expired: HubStatus::coarse(self.expired),
            full: HubStatus::coarse(self.full),
            refused: HubStatus::coarse(self.refused),
        }
    }
}

/// The store and the counters at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Look {
    last_sequence: u64,
    messages: u64,
    forwarded: u64,
    expired: u64,
}

/// Messages pushed out of a full store between `base` and `now`: those that entered and
/// neither left through the forwarder or the expiry nor are still stored.
fn pushed_out(base: &Look, now: &Look) -> u64 {
    let entered = now.last_sequence.saturating_sub(base.last_sequence) + base.messages;
    let left = now.forwarded.saturating_sub(base.forwarded)
        + now.expired.saturating_sub(base.expired)
        + now.messages;
    entered.saturating_sub(left)
}

/// Reads the hub's state pass after pass, remembering the drops already counted.
#[derive(Debug)]
pub struct HubWatch {
    client: async_nats::Client,
    counters: Arc<Counters>,
    /// The hub's monitoring port on the loopback.
    monitor: u16,
    full: u64,
}

impl HubWatch {
    pub fn new(client: async_nats::Client, counters: Arc<Counters>, monitor: u16) -> HubWatch {
        HubWatch {
            client,
            counters,
            monitor,
            full: 0,
        }
    }

    /// The hub's state now; `None` when the hub does not answer in time.
    pub async fn read(&mut self) -> Option<HubFigures> {
        let connected = tokio::time::timeout(TIMEOUT, leaf_connected(self.monitor))
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
        let mut figures = HubFigures {
            connected,
            forwarded: self.counters.forwarded.load(Ordering::Relaxed),
            expired: self.counters.expired.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            ..HubFigures::default()
        };
        if let Some(state) = store {
            let now = Look {
                last_sequence: state.last_sequence,
                messages: state.messages,
                forwarded: figures.forwarded,
                expired: figures.expired,
            };
            // Before the router's start nothing entered: nothing can have been pushed out.
            if let Some(start) = self.counters.start.get() {
                let base = Look {
                    last_sequence: start.last_sequence,
                    messages: start.messages,
                    forwarded: 0,
                    expired: 0,
                };
                // Never down: a message forwarded or expired between the reads above counts
                // later.
                self.full = self.full.max(pushed_out(&base, &now));
            }
            figures.backlog_messages = state.messages;
            figures.backlog_bytes = state.bytes;
            if state.messages > 0 {
                let age =
                    jiff::Timestamp::now().as_second() - state.first_timestamp.unix_timestamp();
                figures.oldest_seconds = u64::try_from(age).unwrap_or(0);
            }
        }
        figures.full = self.full;
        Some(figures)
    }
}

/// Whether the hub has a leaf connection, from its monitoring endpoint on the loopback
/// (the agent shares the host's network with it).
async fn leaf_connected(monitor: u16) -> Option<bool> {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", monitor))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn look(last_sequence: u64, messages: u64, forwarded: u64, expired: u64) -> Look {
        Look {
            last_sequence,
            messages,
            forwarded,
            expired,
        }
    }

    /// What the agent expired itself is counted as expired, never a second time as pushed
    /// out of a full store; what nobody accounts for was pushed out.
    #[test]
    fn drops_are_told_apart_by_reason() {
        // 10 stored at the first look (up to sequence 10), none forwarded or expired yet.
        let base = look(10, 10, 5, 2);
        // 30 more entered; 12 forwarded, 8 expired, 15 still stored: 5 pushed out.
        assert_eq!(pushed_out(&base, &look(40, 15, 17, 10)), 5);
        // Everything accounted for: nothing pushed out.
        assert_eq!(pushed_out(&base, &look(40, 20, 17, 10)), 0);
        // Counted twice (a message forwarded while it expired) never makes a negative.
        assert_eq!(pushed_out(&base, &look(40, 25, 17, 10)), 0);
        assert_eq!(pushed_out(&base, &base), 0);
    }

    /// The status moves in coarse steps: a steady trickle of losses does not rewrite it
    /// every pass, and small counts stay exact.
    #[test]
    fn the_status_is_coarse_and_the_figures_exact() {
        let f = HubFigures {
            connected: true,
            backlog_messages: 12_345,
            backlog_bytes: 99,
            oldest_seconds: 179,
            forwarded: 1,
            expired: 4_321,
            full: 7,
            refused: 150,
        };
        let s = f.status();
        assert_eq!(s.backlog_messages, 12_000);
        assert_eq!(s.backlog_bytes, 99);
        assert_eq!(s.oldest_minutes, 2);
        assert_eq!((s.expired, s.full, s.refused), (4_300, 7, 150));
    }
}
