//! A device's hub and a cloud hub on 127.0.0.1, without the lab: the device hub configured
//! as the agent configures it (its module users and permissions, JetStream on disk) and
//! joined to the cloud hub as a leaf node (with a password here instead of the device's
//! certificate), and the agent's own router, forwarder and expiry talking to it. What
//! `bench-hub` measures and the hub's store tests (`tests/hub_store.rs`) prove things on.
//!
//! The device hub listens on the agent's own port (the agent dials that one), so one pair
//! runs on a machine at a time. The servers are stopped and their stores removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use edgefleet_agent::hub::{GO_MEMORY_LIMIT, HubSettings, config};
use edgefleet_agent::hub_status::{Counters, HubWatch};
use edgefleet_agent::hub_users::ModuleUser;
use edgefleet_agent::upstream::StoreSettings;
use edgefleet_agent::{router, upstream};
use edgefleet_crds::hub::{self, FLEET_UPSTREAM_SUBJECTS, NATS_PORT, UPSTREAM_STREAM};
use edgefleet_crds::{ResolvedModule, hub::module_user};
use tokio::task::JoinSet;

/// The device's name, and the team whose modules run on it.
pub const DEVICE: &str = "bench-1";
pub const TEAM: &str = "bench";
/// The modules on the device: `sensor` publishes, `filter` reads its inputs.
pub const SENSOR: &str = "sensor";
pub const FILTER: &str = "filter";
const CLOUD_PORT: u16 = 14_322;
const LEAF_PORT: u16 = 17_522;
const MONITOR_PORT: u16 = 18_322;
const PASSWORD: &str = "bench-secret";
/// How long a server may take to listen.
const START: Duration = Duration::from_secs(10);

/// The nats-server the hub image carries, as `e2e/build-images hub` leaves its path.
pub fn nats_server() -> Result<PathBuf, String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/images/nats-server.path");
    let path = std::fs::read_to_string(&file)
        .map_err(|e| format!("{}: {e}; run e2e/build-images hub", file.display()))?;
    let path = PathBuf::from(path.trim());
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} (named in {}) is missing; run e2e/build-images hub",
            path.display(),
            file.display()
        ))
    }
}

/// A nats-server that is stopped when dropped.
#[derive(Debug)]
pub struct Server(Child);

impl Server {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `bin` with `conf` under the hub pod's Go memory limit and waits (bounded) until it
/// listens on `port`.
async fn serve(bin: &Path, conf: &Path, port: u16) -> Server {
    let conf = conf.display().to_string();
    serve_with(bin, &["-c", &conf], GO_MEMORY_LIMIT, port).await
}

/// A bare nats-server: JetStream with its store in `store`, on 127.0.0.1:`port`, under the
/// Go memory limit `limit`; no users, routes or leaf nodes (the engine alone, for
/// `bench-hub`'s floor).
pub async fn bare_server(bin: &Path, store: &Path, port: u16, limit: &str) -> Server {
    let (store, port_arg) = (store.display().to_string(), port.to_string());
    let args = ["-js", "-a", "127.0.0.1", "-p", &port_arg, "-sd", &store];
    serve_with(bin, &args, limit, port).await
}

async fn serve_with(bin: &Path, args: &[&str], limit: &str, port: u16) -> Server {
    let child = Command::new(bin)
        .args(args)
        .env("GOMEMLIMIT", limit)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let server = Server(child);
    let deadline = Instant::now() + START;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "{} does not listen on {port}; is another on the port?",
            bin.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server
}

/// The device hub and the cloud hub.
#[derive(Debug)]
pub struct Hubs {
    bin: PathBuf,
    dir: PathBuf,
    device: Server,
    cloud: Option<Server>,
}

impl Hubs {
    /// Starts the device hub, with the cloud hub when `cloud` (else the device waits for
    /// it as it would for an unreachable cloud).
    pub async fn start(bin: &Path, cloud: bool) -> Hubs {
        let dir = std::env::temp_dir().join(format!("edgefleet-loopback-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let users = [SENSOR, FILTER].map(|m| ModuleUser {
            namespace: TEAM.into(),
            module: m.into(),
            password: m.into(),
        });
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
                &format!("\"127.0.0.1:{MONITOR_PORT}\""),
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
        let device = serve(bin, &dir.join("device.conf"), NATS_PORT).await;
        let mut hubs = Hubs {
            bin: bin.to_owned(),
            dir,
            device,
            cloud: None,
        };
        if cloud {
            hubs.start_cloud().await;
        }
        hubs
    }

    /// Starts the cloud hub (its store kept from before) with its stream `UPSTREAM`.
    pub async fn start_cloud(&mut self) {
        self.cloud = Some(serve(&self.bin, &self.dir.join("cloud.conf"), CLOUD_PORT).await);
        self.cloud()
            .await
            .get_or_create_stream(jetstream::stream::Config {
                name: UPSTREAM_STREAM.into(),
                subjects: vec![FLEET_UPSTREAM_SUBJECTS.into()],
                storage: jetstream::stream::StorageType::File,
                duplicate_window: Duration::from_secs(hub::DUPLICATE_WINDOW_SECS),
                ..Default::default()
            })
            .await
            .expect("the cloud stream");
    }

    /// Stops the cloud hub, as a device going offline sees it.
    pub fn stop_cloud(&mut self) {
        self.cloud = None;
    }

    /// The cloud's JetStream, as its reader.
    pub async fn cloud(&self) -> jetstream::Context {
        jetstream::new(client(CLOUD_PORT, "reader", "reader").await)
    }

    /// The device hub's process id, and its store's directory.
    pub fn device_pid(&self) -> u32 {
        self.device.0.id()
    }

    pub fn device_store(&self) -> PathBuf {
        self.dir.join("device")
    }
}

impl Drop for Hubs {
    fn drop(&mut self) {
        self.cloud = None;
        let _ = self.device.0.kill();
        let _ = self.device.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The agent's side of the device hub, running as on a device; stopped when dropped.
#[derive(Debug)]
pub struct Agent {
    pub counters: Arc<Counters>,
    /// What the agent reads for the device's status and metrics.
    pub watch: HubWatch,
    _plan: tokio::sync::watch::Sender<Vec<router::Hop>>,
    tasks: JoinSet<()>,
}

impl Agent {
    /// Connects as the agent and runs its router (with the routes of `modules`), its
    /// forwarder and its expiry over `store`; returns once every route reads the outputs
    /// (what a module publishes is routed). The agent's first look at the store comes
    /// later, as on a device, where a burst may fill the store before the first status pass.
    pub async fn start(store: StoreSettings, modules: &[ResolvedModule]) -> Agent {
        let client = upstream::connect(&store.device, PASSWORD).await;
        let counters = Arc::new(Counters::default());
        let hops = router::plan(modules);
        let (plan_tx, plan) = tokio::sync::watch::channel(hops.clone());
        let (routed_tx, mut routed) = tokio::sync::watch::channel(Vec::new());
        let lanes = Arc::new(upstream::Lanes::default());
        let mut tasks = JoinSet::new();
        tasks.spawn(upstream::forward(
            client.clone(),
            store.clone(),
            counters.clone(),
            lanes.clone(),
        ));
        tasks.spawn(upstream::expire(
            client.clone(),
            store.clone(),
            counters.clone(),
        ));
        tasks.spawn(router::run(
            client.clone(),
            store,
            counters.clone(),
            lanes,
            plan,
            routed_tx,
        ));
        assert!(
            router::wait_routed(&mut routed, &hops, START).await,
            "the router does not read the routes"
        );
        let js = jetstream::new(client.clone());
        let deadline = Instant::now() + START;
        while js.get_stream(UPSTREAM_STREAM).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "the agent's streams are not there"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let watch = HubWatch::new(client, counters.clone(), MONITOR_PORT);
        Agent {
            watch,
            counters,
            _plan: plan_tx,
            tasks,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

/// A module on the device's team with `routes`.
pub fn module(name: &str, routes: serde_json::Value) -> ResolvedModule {
    serde_json::from_value(serde_json::json!({
        "name": name, "deployment": format!("{TEAM}/d"), "moduleRef": format!("{TEAM}/{name}"),
        "image": "bench:1", "routes": routes,
    }))
    .expect("a module")
}

/// A NATS client of the hub on `port`.
pub async fn client(port: u16, user: &str, password: &str) -> async_nats::Client {
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .connect(format!("127.0.0.1:{port}"))
        .await
        .expect("the hub")
}

/// A module's own client of the device hub.
pub async fn module_client(name: &str) -> async_nats::Client {
    client(NATS_PORT, &module_user(TEAM, name), name).await
}

/// How many messages the cloud stream holds.
pub async fn cloud_messages(js: &jetstream::Context) -> u64 {
    match js.get_stream(UPSTREAM_STREAM).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Waits (bounded) until the cloud stream holds `n` messages; the time it took.
pub async fn until_cloud_holds(js: &jetstream::Context, n: u64, since: Instant) -> Duration {
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

/// Publishes `payload` `n` times on `subject` and waits until the hub has them all.
pub async fn publish_all(
    client: &async_nats::Client,
    subject: &str,
    payload: &bytes::Bytes,
    n: u64,
) {
    for _ in 0..n {
        client
            .publish(subject.to_owned(), payload.clone())
            .await
            .expect("publish");
    }
    client.flush().await.expect("flush");
}
