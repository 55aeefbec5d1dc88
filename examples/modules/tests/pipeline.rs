//! The three sample modules as processes, wired as on a device (on free loopback ports):
//! the model flags exactly the sensor's spikes, and every module stops cleanly on SIGTERM.

use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.local_addr().expect("addr").port()
}

fn spawn(bin: &str, env: &[(&str, String)]) -> Child {
    Command::new(bin)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"))
}

/// SIGTERM, then the module's log; it must exit 0 on its own within a few seconds.
fn stop(mut child: Child, name: &str) -> Vec<serde_json::Value> {
    let pid = child.id().to_string();
    Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(5);
    while child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "{name} ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{name} exited with {}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name} logged {l:?}: {e}")))
        .collect()
}

#[test]
fn the_model_flags_the_spikes_the_sensor_makes() {
    let (to_filter, to_model) = (free_port(), free_port());
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let model = spawn(
        env!("CARGO_BIN_EXE_ml-model"),
        &[("MODEL_LISTEN", addr(to_model))],
    );
    let filter = spawn(
        env!("CARGO_BIN_EXE_filter"),
        &[
            ("FILTER_LISTEN", addr(to_filter)),
            ("FILTER_OUTPUT", addr(to_model)),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let sensor = spawn(
        env!("CARGO_BIN_EXE_sensor"),
        &[
            ("SENSOR_OUTPUT", addr(to_filter)),
            ("SENSOR_INTERVAL_MS", "10".to_owned()),
            ("SENSOR_SPIKE_EVERY", "25".to_owned()),
        ],
    );
    std::thread::sleep(Duration::from_millis(1500));
    let sensor_log = stop(sensor, "sensor");
    std::thread::sleep(Duration::from_millis(300));
    let filter_log = stop(filter, "filter");
    let model_log = stop(model, "ml-model");

    let sent = sensor_log
        .last()
        .and_then(|l| l["sent"].as_u64())
        .expect("sensor's last line counts what it sent");
    assert!(sent >= 50, "only {sent} readings in 1.5 s");
    assert_eq!(
        filter_log.last().and_then(|l| l["passed"].as_u64()),
        Some(sent)
    );
    let flagged: Vec<u64> = model_log
        .iter()
        .filter(|l| l["event"] == "anomaly")
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
            .all(|l| l["model"] == "v1" || l["event"] != "anomaly")
    );
}
