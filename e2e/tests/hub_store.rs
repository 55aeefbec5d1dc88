//! The device's upstream store against real nats-servers on the loopback (no lab, see
//! `edgefleet_e2e::loopback`): every message a module sends upstream is accounted for,
//! forwarded, still stored, or lost for a reason the device's status names; and live
//! messages reach the cloud while a backlog drains, each message kept there once. They need the
//! nats-server the hub image carries (`e2e/build-images hub`), so they are `#[ignore]`d
//! and `make e2e` runs them; by hand:
//! `cargo test -p edgefleet-e2e --test hub_store -- --ignored --test-threads=1`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use edgefleet_agent::hub_status::HubFigures;
use edgefleet_agent::upstream::{StoreSettings, WhenFull};
use edgefleet_crds::hub::{self, UPSTREAM_STREAM, module_outputs, upstream_subjects};
use edgefleet_e2e::loopback::{
    self, Agent, DEVICE, Hubs, SENSOR, TEAM, module, module_client, publish_all, until_cloud_holds,
};

/// The hubs listen on fixed ports: one test at a time, whatever the test threads.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long the figures may take to settle.
const SETTLE: Duration = Duration::from_secs(60);

fn store(ttl: Duration, max_mib: u32, when_full: WhenFull) -> StoreSettings {
    StoreSettings {
        device: DEVICE.into(),
        ttl,
        max_mib,
        when_full,
        outputs_mib: hub::OUTPUTS_MIB,
    }
}

/// The hubs (the cloud one only when `cloud`) and the agent, with the sensor's one route
/// upstream; then `n` messages of `size` bytes from the sensor.
async fn sent(cloud: bool, store: StoreSettings, n: u64, size: usize) -> (Hubs, Agent) {
    let bin = loopback::nats_server().unwrap_or_else(|e| panic!("{e}"));
    let hubs = Hubs::start(&bin, cloud).await;
    let sensor = module(
        SENSOR,
        serde_json::json!([{"output": "up", "to": {"upstream": "readings"}}]),
    );
    let agent = Agent::start(store, &[sensor]).await;
    let client = module_client(SENSOR).await;
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    let subject = format!("{}.up", module_outputs(TEAM, SENSOR));
    publish_all(&client, &subject, &payload, n).await;
    (hubs, agent)
}

/// Reads the agent's figures until `done` holds (bounded); the last figures.
async fn until(agent: &mut Agent, what: &str, done: impl Fn(&HubFigures) -> bool) -> HubFigures {
    let deadline = Instant::now() + SETTLE;
    loop {
        let figures = agent.watch.read().await.expect("the device hub's monitor");
        if done(&figures) {
            return figures;
        }
        assert!(Instant::now() < deadline, "{what}: still {figures:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// With the cloud out of reach, messages older than the TTL leave the store, and the
/// status counts them as expired, not as pushed out of a full store.
#[tokio::test]
#[ignore = "needs nats-server: e2e/build-images hub (make e2e runs it)"]
async fn messages_older_than_the_ttl_are_counted_as_expired() {
    let _one = ONE_AT_A_TIME.lock().await;
    let n = 50;
    let ttl = store(Duration::from_secs(2), 64, WhenFull::DropOldest);
    let (_hubs, mut agent) = sent(false, ttl, n, 100).await;
    let f = until(&mut agent, "all expired", |f| {
        f.expired == n && f.backlog_messages == 0
    })
    .await;
    assert!(!f.connected);
    assert_eq!((f.full, f.refused, f.forwarded), (0, 0, 0), "{f:?}");
}

/// A full store that drops the oldest counts what it pushed out as `full`: with what it
/// still holds, every message sent.
#[tokio::test]
#[ignore = "needs nats-server: e2e/build-images hub (make e2e runs it)"]
async fn a_full_store_dropping_the_oldest_counts_them_as_full() {
    let _one = ONE_AT_A_TIME.lock().await;
    let n = 1_000;
    // 4 MB into 1 MiB.
    let small = store(Duration::from_secs(3600), 1, WhenFull::DropOldest);
    let (_hubs, mut agent) = sent(false, small, n, 4096).await;
    let f = until(&mut agent, "every message stored or pushed out", |f| {
        f.full + f.backlog_messages == n
    })
    .await;
    assert!(f.full > 0 && f.backlog_messages > 0, "{f:?}");
    assert_eq!((f.expired, f.refused, f.forwarded), (0, 0, 0), "{f:?}");
}

/// A full store that refuses new messages counts them as refused, and the router does not
/// try them again: with what the store holds, every message sent.
#[tokio::test]
#[ignore = "needs nats-server: e2e/build-images hub (make e2e runs it)"]
async fn a_full_store_refusing_new_messages_counts_them_as_refused() {
    let _one = ONE_AT_A_TIME.lock().await;
    let n = 1_000;
    let small = store(Duration::from_secs(3600), 1, WhenFull::RefuseNew);
    let (_hubs, mut agent) = sent(false, small, n, 4096).await;
    let f = until(&mut agent, "every message stored or refused", |f| {
        f.refused + f.backlog_messages == n
    })
    .await;
    assert!(f.refused > 0 && f.backlog_messages > 0, "{f:?}");
    assert_eq!((f.expired, f.full, f.forwarded), (0, 0, 0), "{f:?}");
}

/// Every payload the cloud stream holds, with its sequence there (the order it arrived in).
async fn cloud_payloads(js: &jetstream::Context, n: u64) -> Vec<(String, u64)> {
    let stream = js
        .get_stream(UPSTREAM_STREAM)
        .await
        .expect("the cloud stream");
    let reader = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .expect("a reader of the cloud stream");
    let mut messages = reader
        .messages()
        .await
        .expect("the cloud stream's messages");
    let mut out = Vec::new();
    while (out.len() as u64) < n {
        match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(m))) => {
                let seq = m.info().expect("a stream message").stream_sequence;
                out.push((
                    String::from_utf8_lossy(&m.payload).trim_end().to_owned(),
                    seq,
                ));
            }
            other => panic!("reading the cloud stream after {}: {other:?}", out.len()),
        }
    }
    out
}

/// After the device was offline with a backlog, messages sent while it drains reach the
/// cloud before the backlog's last (the held lane drains while the live lane keeps up),
/// and the cloud keeps every message once. Prints how long the live ones took.
#[tokio::test]
#[ignore = "needs nats-server: e2e/build-images hub (make e2e runs it)"]
async fn live_messages_do_not_wait_behind_a_backlog() {
    let _one = ONE_AT_A_TIME.lock().await;
    let (backlog, live) = (20_000u64, 20u64);
    let bin = loopback::nats_server().unwrap_or_else(|e| panic!("{e}"));
    let mut hubs = Hubs::start(&bin, false).await;
    let sensor = module(
        SENSOR,
        serde_json::json!([{"output": "up", "to": {"upstream": "readings"}}]),
    );
    let big = store(Duration::from_secs(3600), 2048, WhenFull::DropOldest);
    let mut agent = Agent::start(big, &[sensor]).await;
    let client = module_client(SENSOR).await;
    let subject = format!("{}.up", module_outputs(TEAM, SENSOR));
    let body = |name: String| bytes::Bytes::from(format!("{name:<1024}"));
    for i in 0..backlog {
        client
            .publish(subject.clone(), body(format!("backlog-{i}")))
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
    until(&mut agent, "the backlog stored", |f| {
        f.backlog_messages == backlog
    })
    .await;

    // The cloud is back: its reader sees what arrives, live messages go while it drains.
    hubs.start_cloud().await;
    let cloud = hubs.cloud().await;
    let reader = loopback::client(14_322, "reader", "reader").await;
    let mut arrivals = reader
        .subscribe(upstream_subjects(DEVICE))
        .await
        .expect("subscribe");
    let arrived = tokio::spawn(async move {
        let mut at = HashMap::new();
        while (at.len() as u64) < live {
            let Some(m) = arrivals.next().await else {
                break;
            };
            let text = String::from_utf8_lossy(&m.payload).trim_end().to_owned();
            if text.starts_with("live-") {
                at.entry(text).or_insert_with(Instant::now);
            }
        }
        at
    });
    let back = Instant::now();
    // Well under way: the forwarder has seen the cloud take batches (a message sent before
    // it knows the cloud is back is held, rightly).
    until_cloud_holds(&cloud, 1_000, back).await;
    let mut sent_at = HashMap::new();
    for i in 0..live {
        let name = format!("live-{i}");
        client
            .publish(subject.clone(), body(name.clone()))
            .await
            .expect("publish");
        sent_at.insert(name, Instant::now());
        // 100 ms for all 20, well inside the drain of the 19,000 left (a second or more): at
        // 50 ms apart, on a machine that drained in 2.3 s, the last live message went as the
        // backlog's last did, and came after it.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drained = until_cloud_holds(&cloud, backlog + live, back).await;
    let arrived = tokio::time::timeout(Duration::from_secs(30), arrived)
        .await
        .expect("the live messages in the cloud")
        .expect("the reader");
    let mut took: Vec<Duration> = arrived
        .iter()
        .filter_map(|(name, at)| Some(at.duration_since(*sent_at.get(name)?)))
        .collect();
    took.sort();
    println!(
        "hub store: {live} live messages during the drain of {backlog} x 1 KiB: \
         in the cloud after p50 {:.0} ms, max {:.0} ms; the drain took {:.1} s",
        took.get(took.len() / 2)
            .map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        took.last().map_or(f64::NAN, |d| d.as_secs_f64() * 1e3),
        drained.as_secs_f64()
    );

    let held = cloud_payloads(&cloud, backlog + live).await;
    let distinct: HashSet<&str> = held.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(held.len() as u64, backlog + live, "the cloud holds more");
    assert_eq!(
        distinct.len() as u64,
        backlog + live,
        "every message once in the cloud"
    );
    let last = |prefix: &str| {
        held.iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .map(|(_, seq)| *seq)
            .max()
    };
    assert!(
        last("live-") < last("backlog-"),
        "the live messages waited behind the backlog: the last live one arrived {:?}th, \
         the backlog's last {:?}th",
        last("live-"),
        last("backlog-")
    );
}
