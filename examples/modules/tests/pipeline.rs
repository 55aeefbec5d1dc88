//! The three sample modules as processes, wired as on a device (on free loopback ports):
//! the model flags exactly the sensor's spikes, and every module stops cleanly on SIGTERM.
//!
//! The test waits for what the modules log, never for a fixed time: each step has a
//! deadline that only bounds a hang.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edgefleet_examples::{Reading, send, sender};
use serde_json::Value;

/// How long any one step may take; on a loaded machine a step takes milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

/// A sample module running as a process, its stdout (JSON lines) collected as it comes.
/// Dropped before it was stopped (a failing test), it is killed, so that no module outlives
/// the test.
struct Module {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
}

impl Module {
    fn start(name: &'static str, bin: &str, env: &[(&str, String)]) -> Module {
        let mut child = Command::new(bin)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        // Ends at EOF, when the module exits.
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("lines").push(line);
            }
        });
        Module {
            name,
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn parsed(name: &str, lines: &[String]) -> Vec<Value> {
        lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name} logged {l:?}: {e}")))
            .collect()
    }

    /// Waits until the module has logged a line for which `seen` holds.
    fn wait_for(&self, what: &str, seen: impl Fn(&Value) -> bool) {
        let start = Instant::now();
        loop {
            let lines = Module::parsed(self.name, &self.lines.lock().expect("lines"));
            if lines.iter().any(&seen) {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out after {DEADLINE:?} waiting for {}: {what}; it logged {lines:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then the module's log; it must exit 0 on its own within a few seconds.
    fn stop(&mut self) -> Vec<Value> {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "{} ignored SIGTERM", self.name);
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "{} exited with {status}", self.name);
        if let Some(reader) = self.reader.take() {
            reader.join().expect("the log reader");
        }
        Module::parsed(self.name, &self.lines.lock().expect("lines"))
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

#[test]
fn the_model_flags_the_spikes_the_sensor_makes() {
    let (to_filter, to_model) = (free_port(), free_port());
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let mut model = Module::start(
        "ml-model",
        env!("CARGO_BIN_EXE_ml-model"),
        &[("MODEL_LISTEN", addr(to_model))],
    );
    let mut filter = Module::start(
        "filter",
        env!("CARGO_BIN_EXE_filter"),
        &[
            ("FILTER_LISTEN", addr(to_filter)),
            ("FILTER_OUTPUT", addr(to_model)),
        ],
    );
    // Each logs `started` once its socket is bound: from then on no reading is lost.
    model.wait_for("started", |l| event(l, "started"));
    filter.wait_for("started", |l| event(l, "started"));
    let mut sensor = Module::start(
        "sensor",
        env!("CARGO_BIN_EXE_sensor"),
        &[
            ("SENSOR_OUTPUT", addr(to_filter)),
            ("SENSOR_INTERVAL_MS", "10".to_owned()),
            ("SENSOR_SPIKE_EVERY", "25".to_owned()),
        ],
    );
    // It logs every tenth reading: the 51st means two spikes sent.
    sensor.wait_for("its 51st reading", |l| {
        event(l, "reading") && l["seq"].as_u64() >= Some(51)
    });
    let sensor_log = sensor.stop();
    let sent = sensor_log
        .last()
        .and_then(|l| l["sent"].as_u64())
        .expect("sensor's last line counts what it sent");

    // A last reading of the test's own, far off the normal level, sent once the sensor has
    // exited (on loopback a datagram is queued at the receiver when it is sent): once the
    // model flags it, every reading before it has passed the filter, which may stop.
    let marker = Reading {
        sensor: "marker".into(),
        seq: sent + 1,
        celsius: 80.0,
        smoothed: None,
    };
    let to_filter: SocketAddr = addr(to_filter).parse().expect("address");
    send(&sender(), to_filter, &marker);
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
    assert!(
        model_log
            .iter()
            .all(|l| l["model"] == "v1" || !event(l, "anomaly"))
    );
}
