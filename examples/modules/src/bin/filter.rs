//! `filter`: receives readings on `FILTER_LISTEN` (127.0.0.1:7101), drops those outside
//! `FILTER_MIN_C`..`FILTER_MAX_C` (-40..85, what the sensor can measure), adds the moving
//! average over `FILTER_WINDOW` (5) readings and passes them on to `FILTER_OUTPUT`
//! (127.0.0.1:7102).

use std::collections::VecDeque;
use std::net::SocketAddr;

use edgefleet_examples::{Stop, listen, log, receive, send, sender, setting};
use serde_json::json;

fn main() {
    let input: SocketAddr = setting("FILTER_LISTEN", SocketAddr::from(([127, 0, 0, 1], 7101)));
    let output: SocketAddr = setting("FILTER_OUTPUT", SocketAddr::from(([127, 0, 0, 1], 7102)));
    let min: f64 = setting("FILTER_MIN_C", -40.0);
    let max: f64 = setting("FILTER_MAX_C", 85.0);
    let window: usize = setting("FILTER_WINDOW", 5usize).max(1);
    if min >= max {
        eprintln!("FILTER_MIN_C ({min}) must be below FILTER_MAX_C ({max})");
        std::process::exit(2);
    }
    let stop = Stop::on_signals();
    let socket = listen(input);
    let out = sender();
    log(
        json!({"event": "started", "module": "filter", "listen": input.to_string(),
               "output": output.to_string(), "range_c": [min, max], "window": window}),
    );

    let mut recent: VecDeque<f64> = VecDeque::with_capacity(window);
    let (mut passed, mut dropped) = (0u64, 0u64);
    while !stop.requested() {
        let Some(mut reading) = receive(&socket) else {
            continue;
        };
        if !(min..=max).contains(&reading.celsius) {
            dropped += 1;
            log(json!({"event": "dropped", "seq": reading.seq, "celsius": reading.celsius}));
            continue;
        }
        if recent.len() == window {
            recent.pop_front();
        }
        recent.push_back(reading.celsius);
        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
        reading.smoothed = Some((mean * 100.0).round() / 100.0);
        send(&out, output, &reading);
        passed += 1;
        if passed.is_multiple_of(30) {
            log(json!({"event": "progress", "passed": passed, "dropped": dropped}));
        }
    }
    log(json!({"event": "stopped", "module": "filter", "passed": passed, "dropped": dropped}));
}
