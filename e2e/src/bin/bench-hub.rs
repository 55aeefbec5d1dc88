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
//!   lost (must be 0).
//!
//! The hub runs with the Go memory limit its pod gives it. Every loop is bounded; the
//! servers are stopped at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use clap::Parser;
use edgefleet_agent::hub::{GO_MEMORY_LIMIT, HubSettings, config};
use edgefleet_agent::hub_status::Counters;
use edgefleet_agent::hub_users::ModuleUser;
use edgefleet_agent::upstream::{StoreSettings, WhenFull};
use edgefleet_agent::{router, upstream};
use edgefleet_crds::hub::{
    FLEET_UPSTREAM_SUBJECTS, NATS_PORT, UPSTREAM_STREAM, module_inputs, module_outputs, module_user,
};
use edgefleet_crds::{ResolvedModule, hub};
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

const DEVICE: &str = "bench-1";
const TEAM: &str = "bench";
const CLOUD_PORT: u16 = 14_322;
const LEAF_PORT: u16 = 17_522;
const PAYLOAD: usize = 1024;
const PASSWORD: &str = "bench-secret";

/// A nats-server that is stopped when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(bin: &Path, conf: &Path) -> Server {
    let child = Command::new(bin)
        .args(["-c", &conf.display().to_string()])
        // As the hub's pod runs it.
        .env("GOMEMLIMIT", GO_MEMORY_LIMIT)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    std::thread::sleep(Duration::from_millis(700));
    Server(child)
}

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

fn module(name: &str, routes: serde_json::Value) -> ResolvedModule {
    serde_json::from_value(serde_json::json!({
        "name": name, "deployment": format!("{TEAM}/d"), "moduleRef": format!("{TEAM}/{name}"),
        "image": "bench:1", "routes": routes,
    }))
    .expect("a module")
}

async fn client(port: u16, user: &str, password: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(format!("127.0.0.1:{port}"))
        .await
        .expect("the hub")
}

async fn cloud_messages(js: &jetstream::Context) -> u64 {
    match js.get_stream(UPSTREAM_STREAM).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits (bounded) until the cloud stream holds `n` messages; the time it took.
async fn until_cloud_holds(js: &jetstream::Context, n: u64, since: Instant) -> Duration {
    let deadline = since + Duration::from_secs(300);
    while cloud_messages(js).await < n {
        assert!(
            Instant::now() < deadline,
            "the cloud stream did not fill in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    since.elapsed()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let dir = tempfile_dir();
    let users = [
        ModuleUser {
            namespace: TEAM.into(),
            module: "sensor".into(),
            password: "s".into(),
        },
        ModuleUser {
            namespace: TEAM.into(),
            module: "filter".into(),
            password: "f".into(),
        },
    ];
    let settings = HubSettings {
        device: DEVICE.into(),
        namespace: "edgefleet-system".into(),
        image: String::new(),
        store_mib: 4096,
        upstream: None,
        kubeconfig: None,
    };
    let device_conf = config(&settings, PASSWORD, None, &users)
        .replace(
            "/var/lib/edgefleet-hub",
            &dir.join("device").display().to_string(),
        )
        .replace("0.0.0.0", "127.0.0.1")
        .replace(
            &format!("\"127.0.0.1:{}\"", hub::MONITOR_PORT),
            "\"127.0.0.1:18322\"",
        )
        + &format!(
            "leafnodes {{ remotes: [ {{ url: \"nats-leaf://leaf:leaf@127.0.0.1:{LEAF_PORT}\", account: DEVICE }} ] }}\n"
        );
    let cloud_conf = format!(
        "listen: \"127.0.0.1:{CLOUD_PORT}\"\njetstream {{ store_dir: \"{}\", domain: cloud }}\n\
         leafnodes {{ listen: \"127.0.0.1:{LEAF_PORT}\" }}\naccounts {{ FLEET {{ jetstream: enabled, users: [\n\
         {{user: leaf, password: leaf, permissions: {{publish: {{allow: [\"{}\"]}}, subscribe: {{allow: [\"{}.>\"]}}}}}}\n\
         {{user: reader, password: reader}}\n] }} }}\n",
        dir.join("cloud").display(),
        hub::upstream_subjects(DEVICE),
        hub::device_inbox(DEVICE),
    );
    std::fs::write(dir.join("device.conf"), device_conf).expect("write");
    std::fs::write(dir.join("cloud.conf"), cloud_conf).expect("write");
    let device = serve(&args.nats_server, &dir.join("device.conf"));
    let mut cloud = Some(serve(&args.nats_server, &dir.join("cloud.conf")));

    let reader = client(CLOUD_PORT, "reader", "reader").await;
    let cloud_js = jetstream::new(reader);
    cloud_js
        .get_or_create_stream(jetstream::stream::Config {
            name: UPSTREAM_STREAM.into(),
            subjects: vec![FLEET_UPSTREAM_SUBJECTS.into()],
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(hub::DUPLICATE_WINDOW_SECS),
            ..Default::default()
        })
        .await
        .expect("the cloud stream");

    // The agent's side, as it runs on a device.
    let store = StoreSettings {
        device: DEVICE.into(),
        ttl: Duration::from_secs(hub::DEFAULT_UPSTREAM_TTL_SECS),
        max_mib: 2048,
        when_full: WhenFull::DropOldest,
        outputs_mib: hub::OUTPUTS_MIB,
    };
    let agent = upstream::connect(DEVICE, PASSWORD).await;
    let counters = Arc::new(Counters::default());
    let modules = [
        module(
            "sensor",
            serde_json::json!([
                {"output": "up", "to": {"upstream": "readings"}},
                {"output": "local", "to": {"module": "filter", "input": "readings"}},
            ]),
        ),
        module("filter", serde_json::json!([])),
    ];
    let (_plan_tx, plan) = tokio::sync::watch::channel(router::plan(&modules));
    tokio::spawn(upstream::forward(
        agent.clone(),
        store.clone(),
        counters.clone(),
    ));
    tokio::spawn(router::run(agent.clone(), store, counters, plan));
    tokio::time::sleep(Duration::from_secs(2)).await;

    let sensor = client(NATS_PORT, &module_user(TEAM, "sensor"), "s").await;
    let outputs = module_outputs(TEAM, "sensor");
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
    let filter = client(NATS_PORT, &module_user(TEAM, "filter"), "f").await;
    let mut inbox = filter
        .subscribe(format!("{}.readings", module_inputs(TEAM, "filter")))
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
    drop(cloud.take());
    let before = device_store_bytes(&dir.join("device"));
    publish_all(&sensor, &format!("{outputs}.up"), &payload, n).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let grown = device_store_bytes(&dir.join("device")).saturating_sub(before);
    println!(
        "bench hub: backlog of {n} x {PAYLOAD} B on the device: {:.2} disk bytes per payload byte",
        grown as f64 / (n as f64 * PAYLOAD as f64)
    );
    cloud = Some(serve(&args.nats_server, &dir.join("cloud.conf")));
    let reader = client(CLOUD_PORT, "reader", "reader").await;
    let cloud_js = jetstream::new(reader);
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
    let (cpu, rss) = usage(device.0.id());
    println!("bench hub: device hub over the run: {cpu:.1} s CPU, peak RSS {rss:.1} MiB");
    drop(cloud);
    drop(device);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Publishes `payload` `n` times on `subject` and waits until the hub has them all.
async fn publish_all(client: &async_nats::Client, subject: &str, payload: &bytes::Bytes, n: u64) {
    for _ in 0..n {
        client
            .publish(subject.to_owned(), payload.clone())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
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

/// A fresh directory for the servers' stores and configs.
fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgefleet-bench-hub-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    dir
}
