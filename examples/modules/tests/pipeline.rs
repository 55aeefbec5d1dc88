//! The three sample modules as processes on a real device hub: nats-server with the config,
//! module users and permissions the agent writes (`edge_agent::hub`, `hub_users`), each
//! module started with the environment the agent renders into its pod, and the routes of
//! `examples/hardware-jetson.yaml` carried by the agent's own router. The model flags
//! exactly the sensor's spikes, its anomalies land in the device's upstream store, every
//! module stops cleanly on SIGTERM, and the modules ride out a restart of the hub.
//!
//! It needs the hub's nats-server binary, which `e2e/build-images hub` builds (and `make
//! e2e` before its tests), so it is ignored by `make unit`:
//! `e2e/build-images hub && cargo test -p edgefleet-examples --test pipeline -- --ignored`.
//! Everything listens on free ports of 127.0.0.1; no lab is needed.
//!
//! The test waits for what the modules and the hub log, or for the hub's own state, never
//! for a fixed time: each step has a deadline that only bounds a hang.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use edgefleet_agent::hub::{HubDirs, HubSettings, agent_secret, config};
use edgefleet_agent::hub_status::Counters;
use edgefleet_agent::hub_users::{PASSWORD_FILE, USERNAME_FILE, credentials_dir, sync_credentials};
use edgefleet_agent::upstream::{Lanes, StoreSettings, WhenFull, ensure_stream};
use edgefleet_agent::{render, router};
use edgefleet_crds::hub::{
    AGENT_USER, CREDENTIALS_MOUNT, MONITOR_PORT, MQTT_PORT, NATS_PORT, UPSTREAM_STREAM, env,
    forwarded_subject, module_outputs, stored_upstream,
};
use edgefleet_crds::{EdgeDeployment, EdgeModule, ResolvedModule};
use edgefleet_examples::{Anomaly, READINGS};
use serde_json::Value;

/// How long any one step may take; on a loaded machine a step takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(30);
const NS: &str = "fleet-demo";
const DEVICE: &str = "edge-test";

fn free_port() -> u16 {
    let s = TcpListener::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

/// The nats-server the hub's image carries, as `e2e/build-images hub` leaves its path.
fn nats_server() -> PathBuf {
    let note = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/images/nats-server.path");
    let path = std::fs::read_to_string(&note)
        .unwrap_or_else(|e| panic!("{}: {e}; run e2e/build-images hub first", note.display()));
    PathBuf::from(path.trim())
}

/// Lines a process writes, collected as they come, by a thread that ends at EOF.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(&self, from: impl Read + Send + 'static) -> JoinHandle<()> {
        let sink = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(from).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        })
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lines").clone()
    }
}

/// Waits until `seen` holds, polling what `now` returns; says `what` and the last value on
/// a timeout.
fn wait_until<T: std::fmt::Debug>(
    what: &str,
    mut now: impl FnMut() -> T,
    seen: impl Fn(&T) -> bool,
) -> T {
    let start = Instant::now();
    loop {
        let v = now();
        if seen(&v) {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}; last: {v:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The device's hub, as the agent configures it, on free ports of the loopback.
struct Hub {
    child: Child,
    log: Lines,
    conf: PathBuf,
    nats: u16,
    mqtt: u16,
}

impl Hub {
    /// Writes the agent's config for `modules` under `state` (their credentials too) and
    /// starts the hub. Only the addresses and the store's path differ from a device's.
    fn start(state: &Path, modules: &[ResolvedModule]) -> Hub {
        let users = sync_credentials(state, modules).expect("the modules' credentials");
        let dirs = HubDirs::under(state);
        std::fs::create_dir_all(&dirs.config).expect("the hub's config dir");
        let secret = agent_secret(&dirs.config).expect("the agent's secret");
        let settings = HubSettings {
            device: DEVICE.into(),
            namespace: "edgefleet-system".into(),
            image: String::new(),
            store_mib: 256,
            upstream: None,
            kubeconfig: None,
        };
        let (nats, mqtt, monitor) = (free_port(), free_port(), free_port());
        let mut text = config(&settings, &secret, None, &users);
        for (from, to) in [
            (format!("0.0.0.0:{NATS_PORT}"), format!("127.0.0.1:{nats}")),
            (format!("0.0.0.0:{MQTT_PORT}"), format!("127.0.0.1:{mqtt}")),
            (
                format!("127.0.0.1:{MONITOR_PORT}"),
                format!("127.0.0.1:{monitor}"),
            ),
            (
                "/var/lib/edgefleet-hub".into(),
                dirs.store.display().to_string(),
            ),
        ] {
            assert!(
                text.contains(&from),
                "the agent's hub config has no {from:?}:\n{text}"
            );
            text = text.replace(&from, &to);
        }
        let conf = state.join("nats.conf");
        std::fs::write(&conf, text).expect("the hub's config");
        Hub::run(conf, nats, mqtt)
    }

    fn run(conf: PathBuf, nats: u16, mqtt: u16) -> Hub {
        let mut child = Command::new(nats_server())
            .args(["-c", &conf.display().to_string()])
            .stderr(Stdio::piped())
            .spawn()
            .expect("nats-server");
        let log = Lines::default();
        log.collect(child.stderr.take().expect("piped stderr"));
        let hub = Hub {
            child,
            log,
            conf,
            nats,
            mqtt,
        };
        wait_until(
            "the hub to be ready",
            || hub.log.all(),
            |l| l.iter().any(|l| l.contains("Server is ready")),
        );
        hub
    }

    /// Stops the hub the way kubelet does on an update, and starts it again on its store.
    fn restart(mut self) -> Hub {
        self.stop();
        let (conf, nats, mqtt) = (self.conf.clone(), self.nats, self.mqtt);
        drop(self);
        Hub::run(conf, nats, mqtt)
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's side of the hub: its client and its router, on a runtime of their own.
struct Agent {
    rt: tokio::runtime::Runtime,
    js: jetstream::Context,
    /// The router runs while its plan can change.
    _plan: tokio::sync::watch::Sender<Vec<router::Hop>>,
}

impl Agent {
    fn start(state: &Path, hub: &Hub, modules: &[ResolvedModule]) -> Agent {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let secret = agent_secret(&HubDirs::under(state).config).expect("the agent's secret");
        let store = StoreSettings {
            device: DEVICE.into(),
            ttl: Duration::from_secs(3600),
            max_mib: 64,
            when_full: WhenFull::DropOldest,
            outputs_mib: 16,
        };
        let client = rt
            .block_on(
                async_nats::ConnectOptions::with_user_and_password(AGENT_USER.into(), secret)
                    .connect(format!("127.0.0.1:{}", hub.nats)),
            )
            .expect("the agent's connection to the hub");
        let js = rt.block_on(async { jetstream::new(client.clone()) });
        // On a device the forwarder keeps the upstream store; here nothing forwards.
        rt.block_on(ensure_stream(&js, &store))
            .expect("the upstream store");
        let hops = router::plan(modules);
        let (plan, rx) = tokio::sync::watch::channel(hops.clone());
        let (routed_tx, mut routed) = tokio::sync::watch::channel(Vec::new());
        rt.spawn(router::run(
            client,
            store,
            Arc::new(Counters::default()),
            Arc::new(Lanes::default()),
            rx,
            routed_tx,
        ));
        // Until the router's consumers exist, the outputs stream keeps nothing: the modules
        // start after, as the agent places them.
        assert!(
            rt.block_on(router::wait_routed(&mut routed, &hops, DEADLINE)),
            "the router does not read the routes"
        );
        Agent {
            rt,
            js,
            _plan: plan,
        }
    }

    /// What the device's upstream store holds, in order: subjects and payloads.
    fn stored_upstream(&self) -> Vec<(String, Vec<u8>)> {
        self.rt.block_on(async {
            let stream = self
                .js
                .get_stream(UPSTREAM_STREAM)
                .await
                .expect("the store");
            let mut out = Vec::new();
            let mut seq = 1;
            while let Ok(m) = stream.get_raw_message(seq).await {
                out.push((m.subject.to_string(), m.payload.to_vec()));
                seq += 1;
            }
            out
        })
    }
}

/// The modules of the Jetson deployment: each EdgeModule of `examples/modules.yaml` with
/// its routes from `examples/hardware-jetson.yaml`, as the device gets them.
fn jetson_modules() -> Vec<ResolvedModule> {
    let read = |file: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    use serde::Deserialize;
    let specs: Vec<EdgeModule> = serde_yaml::Deserializer::from_str(&read("modules.yaml"))
        .map(|d| EdgeModule::deserialize(d).expect("an EdgeModule"))
        .collect();
    let jetson: EdgeDeployment =
        serde_yaml::from_str(&read("hardware-jetson.yaml")).expect("an EdgeDeployment");
    jetson
        .spec
        .modules
        .iter()
        .map(|m| {
            let spec = specs
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(m.module_name()))
                .expect("the deployment's module is in modules.yaml");
            ResolvedModule {
                name: m.name.clone(),
                deployment: format!("{NS}/hardware-jetson"),
                module_ref: format!("{NS}/{}", m.module_name()),
                desired_status: m.desired_status,
                routes: m.routes.clone(),
                spec: spec.spec.clone(),
            }
        })
        .collect()
}

/// The environment the agent renders into a module's pod, as this host gives it: the
/// device's address is the loopback, the credentials directory the host's own.
fn pod_env(m: &ResolvedModule, state: &Path, hub: &Hub) -> Vec<(String, String)> {
    let pod = render::pod(m, state, true);
    let container = &pod.spec.expect("a pod spec").containers[0];
    container
        .env
        .iter()
        .flatten()
        .map(|e| {
            let value = match (e.name.as_str(), &e.value) {
                (env::HOST, _) => "127.0.0.1".to_owned(),
                (env::DEVICE, _) => DEVICE.to_owned(),
                (env::MQTT_PORT, _) => hub.mqtt.to_string(),
                (env::CREDENTIALS, Some(v)) => {
                    assert_eq!(v, CREDENTIALS_MOUNT);
                    credentials_dir(state, NS, &m.name).display().to_string()
                }
                (_, Some(v)) => v.clone(),
                (name, None) => panic!("{name}: a variable this test does not know"),
            };
            (e.name.clone(), value)
        })
        .collect()
}

/// A sample module running as a process, its stdout (JSON lines) collected as it comes.
/// Dropped before it was stopped (a failing test), it is killed, so that no module outlives
/// the test.
struct Module {
    name: String,
    child: Child,
    lines: Lines,
    reader: Option<JoinHandle<()>>,
}

impl Module {
    fn start(m: &ResolvedModule, state: &Path, hub: &Hub, extra: &[(&str, &str)]) -> Module {
        let bin = match m.name.as_str() {
            "sensor" => env!("CARGO_BIN_EXE_sensor"),
            "filter" => env!("CARGO_BIN_EXE_filter"),
            "ml-model" => env!("CARGO_BIN_EXE_ml-model"),
            other => panic!("no sample module {other}"),
        };
        let mut child = Command::new(bin)
            .env_clear()
            .envs(pod_env(m, state, hub))
            .envs(extra.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let lines = Lines::default();
        let reader = lines.collect(child.stdout.take().expect("piped stdout"));
        Module {
            name: m.name.clone(),
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn parsed(&self) -> Vec<Value> {
        self.lines
            .all()
            .iter()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{} logged {l:?}: {e}", self.name))
            })
            .collect()
    }

    /// Waits until the module has logged `count` lines for which `seen` holds.
    fn wait_for_n(&self, what: &str, count: usize, seen: impl Fn(&Value) -> bool) {
        wait_until(
            &format!("{}: {what}", self.name),
            || self.parsed(),
            |lines| lines.iter().filter(|l| seen(l)).count() >= count,
        );
    }

    fn wait_for(&self, what: &str, seen: impl Fn(&Value) -> bool) {
        self.wait_for_n(what, 1, seen);
    }

    /// SIGTERM, then the module's log; it must exit 0 on its own within a few seconds.
    fn stop(&mut self) -> Vec<Value> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(8);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{} exited with {status}", self.name);
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader");
        }
        self.parsed()
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn event(line: &Value, event: &str) -> bool {
    line["event"] == event
}

/// A fresh state directory (the agent's, for the hub's config, store and credentials).
fn state_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("edgefleet-pipeline-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a state dir");
    dir
}

fn module<'a>(modules: &'a [ResolvedModule], name: &str) -> &'a ResolvedModule {
    modules
        .iter()
        .find(|m| m.name == name)
        .expect("a module of the pipeline")
}

#[test]
#[ignore = "needs the hub's nats-server: e2e/build-images hub (make e2e builds it)"]
fn the_model_flags_the_spikes_the_sensor_makes_through_the_routes() {
    let state = state_dir("spikes");
    let modules = jetson_modules();
    let hub = Hub::start(&state, &modules);
    let agent = Agent::start(&state, &hub, &modules);
    let mut model = Module::start(module(&modules, "ml-model"), &state, &hub, &[]);
    let mut filter = Module::start(module(&modules, "filter"), &state, &hub, &[]);
    // The hub hands an input only to a module that has subscribed to it.
    model.wait_for("its subscription", |l| event(l, "subscribed"));
    filter.wait_for("its subscription", |l| event(l, "subscribed"));
    let mut sensor = Module::start(
        module(&modules, "sensor"),
        &state,
        &hub,
        &[("SENSOR_INTERVAL_MS", "10"), ("SENSOR_SPIKE_EVERY", "25")],
    );
    // It logs every tenth reading: the 51st means two spikes sent.
    sensor.wait_for("its 51st reading", |l| {
        event(l, "reading") && l["seq"].as_u64() >= Some(51)
    });
    let sensor_log = sensor.stop();
    let last = sensor_log.last().expect("the sensor's last line");
    let sent = last["sent"].as_u64().expect("it counts what it sent");
    assert_eq!(last["dropped"], 0, "the hub took every reading");

    // A last reading of the test's own, as the sensor (its user, on its output), far off
    // the normal level, sent once the sensor has stopped: the sensor disconnects only after
    // the hub has taken all it sent, so once the model flags this one, every reading
    // before it has passed the filter, which may stop.
    let marker = serde_json::json!({"sensor": "marker", "seq": sent + 1, "celsius": 80.0});
    agent.rt.block_on(async {
        let dir = credentials_dir(&state, NS, "sensor");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("a credential");
        let as_sensor = async_nats::ConnectOptions::with_user_and_password(
            read(USERNAME_FILE),
            read(PASSWORD_FILE),
        )
        .connect(format!("127.0.0.1:{}", hub.nats))
        .await
        .expect("the sensor's user");
        let subject = format!("{}.{READINGS}", module_outputs(NS, "sensor"));
        as_sensor
            .publish(subject, marker.to_string().into())
            .await
            .expect("publish");
        as_sensor.flush().await.expect("flush");
    });
    model.wait_for("the marker after the sensor's readings", |l| {
        event(l, "anomaly") && l["sensor"] == "marker"
    });
    let filter_log = filter.stop();
    let model_log = model.stop();

    assert!(sent >= 51, "the sensor stopped at {sent}");
    assert_eq!(
        filter_log.last().and_then(|l| l["passed"].as_u64()),
        Some(sent + 1),
        "the filter passes every reading in range, the marker too"
    );
    let flagged: Vec<u64> = model_log
        .iter()
        .filter(|l| event(l, "anomaly") && l["sensor"] == "sensor")
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    let spikes: Vec<u64> = (1..=sent).filter(|s| s.is_multiple_of(25)).collect();
    assert_eq!(
        flagged, spikes,
        "the model flags the spikes and nothing else"
    );

    // Upstream: the route of the model's anomalies stores each in the device's upstream
    // store, which the forwarder empties into the cloud.
    let stored = wait_until(
        "the anomalies in the upstream store",
        || agent.stored_upstream(),
        |s| s.len() > spikes.len(),
    );
    // The route's cloud subject, whichever lane of the store holds the message.
    let route = |stored: &str| forwarded_subject("device", stored);
    let subject = route(&stored_upstream(NS, "anomalies"));
    let upstream: Vec<(String, u64)> = stored
        .iter()
        .map(|(s, payload)| {
            assert_eq!(route(s), subject, "stored under {s}");
            let a: Anomaly = serde_json::from_slice(payload).expect("an anomaly");
            assert_eq!(a.model, "v1");
            (a.sensor, a.seq)
        })
        .collect();
    let expected: Vec<(String, u64)> = spikes
        .iter()
        .map(|s| ("sensor".to_owned(), *s))
        .chain([("marker".to_owned(), sent + 1)])
        .collect();
    assert_eq!(upstream, expected, "exactly the anomalies go upstream");
    let _ = std::fs::remove_dir_all(&state);
}

/// The hub restarts on every update: a module reconnects (to the session the hub kept on
/// its store), subscribes again and carries on, never exiting.
#[test]
#[ignore = "needs the hub's nats-server: e2e/build-images hub (make e2e builds it)"]
fn the_modules_ride_out_a_restart_of_the_hub() {
    let state = state_dir("restart");
    let modules = jetson_modules();
    let hub = Hub::start(&state, &modules);
    let agent = Agent::start(&state, &hub, &modules);
    let mut filter = Module::start(module(&modules, "filter"), &state, &hub, &[]);
    filter.wait_for("its subscription", |l| event(l, "subscribed"));
    let mut sensor = Module::start(
        module(&modules, "sensor"),
        &state,
        &hub,
        &[("SENSOR_INTERVAL_MS", "10")],
    );
    // The filter logs progress every 30 readings it passed.
    filter.wait_for("readings passed", |l| event(l, "progress"));

    let hub = hub.restart();
    for m in [&sensor, &filter] {
        m.wait_for("losing the hub", |l| event(l, "disconnected"));
        m.wait_for_n("connecting again", 2, |l| event(l, "connected"));
        let again = m
            .parsed()
            .into_iter()
            .filter(|l| event(l, "connected"))
            .nth(1);
        assert_eq!(
            again.map(|l| l["session_present"].clone()),
            Some(Value::Bool(true)),
            "{}: the hub keeps a module's session (and what it has not acknowledged)",
            m.name
        );
    }
    filter.wait_for_n("its subscription again", 2, |l| event(l, "subscribed"));
    let before = filter
        .parsed()
        .iter()
        .filter(|l| event(l, "progress"))
        .count();
    filter.wait_for_n("readings passed after the restart", before + 2, |l| {
        event(l, "progress")
    });
    let sensor_log = sensor.stop();
    filter.stop();
    assert!(
        sensor_log.iter().all(|l| !event(l, "refused")),
        "the hub kept the modules' users"
    );
    drop(agent);
    drop(hub);
    let _ = std::fs::remove_dir_all(&state);
}
