//! `ml-model`: scores the filtered readings from `MODEL_LISTEN` (127.0.0.1:7102) and logs
//! the anomalies. Model v1 follows the normal level with an exponential average and
//! scores each reading by its distance from it, in standard deviations of those distances
//! so far (Welford; at least `MODEL_MIN_SD_C`, 0.5): more than `MODEL_THRESHOLD` (3) is an
//! anomaly, and anomalies do not move the level. `MODEL_VERSION` (v1) names the model in every line, so a rollout
//! of a new version can be followed in the logs.

use std::net::SocketAddr;

use edgefleet_examples::{Stop, listen, log, receive, setting};
use serde_json::json;

fn main() {
    let input: SocketAddr = setting("MODEL_LISTEN", SocketAddr::from(([127, 0, 0, 1], 7102)));
    let threshold: f64 = setting("MODEL_THRESHOLD", 3.0);
    let min_sd: f64 = setting("MODEL_MIN_SD_C", 0.5);
    let version: String = setting("MODEL_VERSION", "v1".to_owned());
    let stop = Stop::on_signals();
    let socket = listen(input);
    log(
        json!({"event": "started", "module": "ml-model", "model": version,
               "listen": input.to_string(), "threshold": threshold}),
    );

    let (mut n, mut mean, mut m2, mut anomalies) = (0u64, 0.0f64, 0.0f64, 0u64);
    let mut level: Option<f64> = None;
    while !stop.requested() {
        let Some(reading) = receive(&socket) else {
            continue;
        };
        let x = reading.celsius - level.unwrap_or(reading.celsius);
        let sd = if n > 1 {
            (m2 / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let score = (x - mean).abs() / sd.max(min_sd).max(f64::EPSILON);
        if n >= 10 && score > threshold {
            anomalies += 1;
            log(
                json!({"event": "anomaly", "model": version, "sensor": reading.sensor,
                       "seq": reading.seq, "celsius": reading.celsius, "score": (score * 100.0).round() / 100.0}),
            );
            // An anomaly does not teach the model what normal is.
            continue;
        }
        level = Some(level.map_or(reading.celsius, |l| 0.8 * l + 0.2 * reading.celsius));
        n += 1;
        let delta = x - mean;
        mean += delta / n as f64;
        m2 += delta * (x - mean);
        if n.is_multiple_of(30) {
            log(json!({"event": "progress", "model": version, "scored": n,
                       "anomalies": anomalies}));
        }
    }
    log(
        json!({"event": "stopped", "module": "ml-model", "model": version, "scored": n,
               "anomalies": anomalies}),
    );
}
