//! `sensor`: emits a temperature reading every `SENSOR_INTERVAL_MS` (1000) as sensor
//! `SENSOR_ID` ("sensor"), to `SENSOR_OUTPUT` (127.0.0.1:7101). The values are a seeded
//! random walk around `SENSOR_BASE_C` (21) with a spike every `SENSOR_SPIKE_EVERY` (30)
//! readings, so that the filter and the model downstream have something to do.

use std::net::SocketAddr;
use std::time::Duration;

use edgefleet_examples::{Reading, Stop, log, send, sender, setting};
use serde_json::json;

fn main() {
    let id: String = setting("SENSOR_ID", "sensor".to_owned());
    let interval = Duration::from_millis(setting("SENSOR_INTERVAL_MS", 1000u64).max(10));
    let output: SocketAddr = setting("SENSOR_OUTPUT", SocketAddr::from(([127, 0, 0, 1], 7101)));
    let base: f64 = setting("SENSOR_BASE_C", 21.0);
    let spike_every: u64 = setting("SENSOR_SPIKE_EVERY", 30u64).max(1);
    let stop = Stop::on_signals();
    let socket = sender();
    log(
        json!({"event": "started", "module": "sensor", "id": id, "output": output.to_string(),
               "interval_ms": interval.as_millis()}),
    );

    // xorshift64: deterministic per sensor id, no dependency for ten lines of randomness.
    let mut state = id.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut level = base;
    let mut seq = 0u64;
    while !stop.requested() {
        seq += 1;
        level = (level + (next() - 0.5) * 0.4).clamp(base - 5.0, base + 5.0);
        let celsius = if seq.is_multiple_of(spike_every) {
            level + 15.0
        } else {
            level
        };
        let reading = Reading {
            sensor: id.clone(),
            seq,
            celsius: (celsius * 100.0).round() / 100.0,
            smoothed: None,
        };
        send(&socket, output, &reading);
        if seq % 10 == 1 {
            log(json!({"event": "reading", "seq": seq, "celsius": reading.celsius}));
        }
        std::thread::sleep(interval);
    }
    log(json!({"event": "stopped", "module": "sensor", "sent": seq}));
}
