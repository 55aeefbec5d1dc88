//! The device's upstream store against real nats-servers on the loopback (no lab, see
//! `edgefleet_e2e::loopback`): every message a module sends upstream is accounted for,
//! forwarded, still stored, or lost for a reason the device's status names. They need the
//! nats-server the hub image carries (`e2e/build-images hub`), so they are `#[ignore]`d
//! and `make e2e` runs them; by hand:
//! `cargo test -p edgefleet-e2e --test hub_store -- --ignored --test-threads=1`.

use std::time::{Duration, Instant};

use edgefleet_agent::hub_status::HubFigures;
use edgefleet_agent::upstream::{StoreSettings, WhenFull};
use edgefleet_crds::hub::{self, module_outputs};
use edgefleet_e2e::loopback::{
    self, Agent, DEVICE, Hubs, SENSOR, TEAM, module, module_client, publish_all,
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
