//! `bench-hub --nats-server PATH`: the message hub's figures on this machine, with a device
//! hub configured as the agent configures it (its module users and permissions, JetStream
//! on disk), a cloud hub it joins as a leaf node, and the agent's own router and forwarder,
//! all on 127.0.0.1 (no lab needed; the leaf connection uses a password here instead of
//! the device's certificate). Prints, at 1 KiB payloads:
//! - module -> cloud: messages/s from a module's first publish until the cloud stream holds
//!   them all, with durable storage on both sides;
//! - module -> module through a route at 1,000 msg/s: p50 and p99 latency;
//! - a backlog built while the cloud is down: disk bytes per payload byte on the device,
//!   and the rate it drains at once the cloud is back;
//! - the device hub's CPU time and peak RSS over the whole run; and acknowledged messages
//!   lost (must be 0);
//! - the engine's floor: a bare nats-server with one file stream and one consumer, the
//!   same messages sent at 10,000 msg/s, stored once and read once, under the hub's Go
//!   memory limit and under 32 MiB: what any hub built on this engine costs at least.
//!
//! The hub runs with the Go memory limit its pod gives it. Every loop is bounded; the
//! servers are stopped at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use edgefleet_agent::hub::GO_MEMORY_LIMIT;

use clap::Parser;
use edgefleet_agent::upstream::{StoreSettings, WhenFull};
use edgefleet_crds::hub;
use edgefleet_crds::hub::{module_inputs, module_outputs};
use edgefleet_e2e::loopback::{
    Agent, DEVICE, FILTER, Hubs, SENSOR, TEAM, bare_server, cloud_messages, module, module_client,
    publish_all, until_cloud_holds,
};
use futures::StreamExt;

#[derive(Parser, Debug)]
struct Args {
    /// The nats-server binary (e2e/build-images hub caches one).
    #[arg(long)]
    nats_server: PathBuf,
    /// Messages in the throughput and backlog runs.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
}

const PAYLOAD: usize = 1024;

/// CPU seconds and peak RSS (MiB) of a process, from /proc.
fn usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    (ticks / 100.0, hwm / 1024.0)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut hubs = Hubs::start(&args.nats_server, true).await;
    let cloud_js = hubs.cloud().await;

    // The agent's side, as it runs on a device.
    let store = StoreSettings {
        device: DEVICE.into(),
        ttl: Duration::from_secs(hub::DEFAULT_UPSTREAM_TTL_SECS),
        max_mib: 2048,
        when_full: WhenFull::DropOldest,
        outputs_mib: hub::OUTPUTS_MIB,
    };
    let modules = [
        module(
            SENSOR,
            serde_json::json!([
                {"output": "up", "to": {"upstream": "readings"}},
                {"output": "local", "to": {"module": FILTER, "input": "readings"}},
            ]),
        ),
        module(FILTER, serde_json::json!([])),
    ];
    let _agent = Agent::start(store, &modules).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let sensor = module_client(SENSOR).await;
    let outputs = module_outputs(TEAM, SENSOR);
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);
    let n = args.messages as u64;

    // 1. Module -> cloud, durable on both sides.
    let t0 = Instant::now();
    publish_all(&sensor, &format!("{outputs}.up"), &payload, n).await;
    let took = until_cloud_holds(&cloud_js, n, t0).await;
    println!(
        "bench hub: module -> cloud, {n} x {PAYLOAD} B, durable: {:.0} msg/s ({:.1} s)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );

    // 2. Module -> module through a route, at 1,000 msg/s for 5 s.
    let filter = module_client(FILTER).await;
    let mut inbox = filter
        .subscribe(format!("{}.readings", module_inputs(TEAM, FILTER)))
        .await
        .expect("subscribe");
    filter.flush().await.expect("flush");
    let start = Instant::now();
    let send = tokio::spawn({
        let sensor = sensor.clone();
        let subject = format!("{outputs}.local");
        async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            for _ in 0..5_000u32 {
                tick.tick().await;
                let mut body = start.elapsed().as_nanos().to_le_bytes().to_vec();
                body.resize(PAYLOAD, b'x');
                let _ = sensor.publish(subject.clone(), body.into()).await;
            }
        }
    });
    let mut latencies = Vec::with_capacity(5_000);
    while latencies.len() < 5_000 {
        match tokio::time::timeout(Duration::from_secs(10), inbox.next()).await {
            Ok(Some(m)) => {
                let mut sent = [0u8; 16];
                sent.copy_from_slice(&m.payload[..16]);
                let ns = start.elapsed().as_nanos() - u128::from_le_bytes(sent);
                latencies.push(ns as f64 / 1e6);
            }
            _ => break,
        }
    }
    let _ = send.await;
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "bench hub: module -> module via a route at 1000 msg/s: p50 {:.2} ms, p99 {:.2} ms ({} of 5000 delivered)",
        pct(0.50),
        pct(0.99),
        latencies.len()
    );

    // 3. A backlog while the cloud is down, then its drain.
    hubs.stop_cloud();
    let before = device_store_bytes(&hubs.device_store());
    publish_all(&sensor, &format!("{outputs}.up"), &payload, n).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = device_store_bytes(&hubs.device_store()).saturating_sub(before);
    println!(
        "bench hub: backlog of {n} x {PAYLOAD} B on the device: {:.2} disk bytes per payload byte",
        grown as f64 / (n as f64 * PAYLOAD as f64)
    );
    hubs.start_cloud().await;
    let cloud_js = hubs.cloud().await;
    let t0 = Instant::now();
    let took = until_cloud_holds(&cloud_js, 2 * n, t0).await;
    println!(
        "bench hub: backlog drain once the cloud is back: {:.0} msg/s ({:.1} s)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    let held = cloud_messages(&cloud_js).await;
    println!(
        "bench hub: acknowledged messages lost: {} (the cloud holds {held} of {})",
        (2 * n).saturating_sub(held),
        2 * n
    );
    let (cpu, rss) = usage(hubs.device_pid());
    println!("bench hub: device hub over the run: {cpu:.1} s CPU, peak RSS {rss:.1} MiB");
    drop(hubs);

    for limit in [GO_MEMORY_LIMIT, "32MiB"] {
        engine_floor(&args.nats_server, limit, n).await;
    }
}

/// Where the bare server of [`engine_floor`] listens, apart from the hubs' ports.
const FLOOR_PORT: u16 = 14_522;

/// The engine alone: nats-server with JetStream on disk under the Go memory limit `limit`,
/// one file stream (limits retention, no routing, no leaf), `n` messages (rounded up to ten)
/// published into it at 10,000 msg/s and read back by one consumer that acknowledges each.
/// The hub stores and reads every upstream message twice (the outputs stream, then the
/// upstream store); this is once.
async fn engine_floor(bin: &Path, limit: &str, n: u64) {
    let dir = std::env::temp_dir().join(format!("edgefleet-floor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = bare_server(bin, &dir, FLOOR_PORT, limit).await;
    let client = async_nats::connect(format!("127.0.0.1:{FLOOR_PORT}"))
        .await
        .expect("the bare nats-server answers");
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: "FLOOR".into(),
            subjects: vec!["floor.>".into()],
            storage: stream::StorageType::File,
            max_bytes: 2048 * 1024 * 1024,
            ..Default::default()
        })
        .await
        .expect("the floor's stream");
    let payload = bytes::Bytes::from(vec![b'x'; PAYLOAD]);

    // At the goal's rate, 10,000 msg/s (ten every millisecond), not as a burst.
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    for _ in 0..n.div_ceil(10) {
        tick.tick().await;
        for _ in 0..10 {
            client
                .publish("floor.in", payload.clone())
                .await
                .expect("publish");
        }
    }
    client.flush().await.expect("flush");
    let deadline = t0 + Duration::from_secs(120);
    let mut held = 0;
    while held < n && Instant::now() < deadline {
        held = js
            .get_stream("FLOOR")
            .await
            .expect("the floor's stream")
            .info()
            .await
            .map(|i| i.state.messages)
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wrote = t0.elapsed();

    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("floor".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .expect("the floor's consumer");
    let mut messages = consumer.messages().await.expect("the floor's messages");
    let t1 = Instant::now();
    let mut read = 0u64;
    while read < held {
        match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(m))) => {
                let _ = m.ack().await;
                read += 1;
            }
            _ => break,
        }
    }
    let reading = t1.elapsed();
    let (cpu, rss) = usage(server.pid());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "bench hub: the engine alone (one file stream, no routing, GOMEMLIMIT {limit}): {held} of {n} x {PAYLOAD} B sent at 10000 msg/s, stored at {:.0} msg/s, {read} read back at {:.0} msg/s; {cpu:.1} s CPU, peak RSS {rss:.1} MiB",
        held as f64 / wrote.as_secs_f64(),
        read as f64 / reading.as_secs_f64()
    );
}

/// Bytes of the files under `dir`.
fn device_store_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
