//! `ml-model`: scores the filtered readings on its input `input` and publishes what it
//! flags on its output `anomalies` (which the examples route upstream to the cloud). Model
//! v1 (`stages::Model`) flags a reading more than `MODEL_THRESHOLD` (3) standard deviations
//! (at least `MODEL_MIN_SD_C`, 0.5) off the normal level it has learned. `MODEL_VERSION`
//! (v1) names the model in every line and anomaly, so a rollout of a new version can be
//! followed in the logs and in the cloud.

use edgefleet_examples::hub::{HubEnv, Link};
use edgefleet_examples::stages::Model;
use edgefleet_examples::{ANOMALIES, INPUT, Stop, log, setting};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let threshold: f64 = setting("MODEL_THRESHOLD", 3.0);
    let min_sd: f64 = setting("MODEL_MIN_SD_C", 0.5);
    let version: String = setting("MODEL_VERSION", "v1".to_owned());
    let hub = HubEnv::from_env();
    let mut stop = Stop::on_signals();
    let mut link = Link::open(&hub, &[INPUT], stop.clone());
    log(
        json!({"event": "started", "module": "ml-model", "model": version, "input": INPUT,
               "output": ANOMALIES, "threshold": threshold}),
    );

    let mut model = Model::new(&version, threshold, min_sd);
    let (mut anomalies, mut skipped) = (0u64, 0u64);
    while let Some(reading) = link.next_reading(&mut stop, &mut skipped).await {
        if let Some(anomaly) = model.score(&reading) {
            anomalies += 1;
            log(
                json!({"event": "anomaly", "model": version, "sensor": anomaly.sensor,
                       "seq": anomaly.seq, "celsius": anomaly.celsius, "score": anomaly.score}),
            );
            link.publish(ANOMALIES, &anomaly);
        } else if model.scored().is_multiple_of(30) {
            log(
                json!({"event": "progress", "model": version, "scored": model.scored(),
                       "anomalies": anomalies}),
            );
        }
    }
    let unsent = link.dropped;
    link.close().await;
    log(
        json!({"event": "stopped", "module": "ml-model", "model": version,
               "scored": model.scored(), "anomalies": anomalies, "skipped": skipped,
               "unsent": unsent}),
    );
}
