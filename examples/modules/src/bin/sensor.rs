//! `sensor`: publishes a temperature reading every `SENSOR_INTERVAL_MS` (1000) as sensor
//! `SENSOR_ID` ("sensor") on its output `readings`. The values are a seeded random walk
//! around `SENSOR_BASE_C` (21) with a spike every `SENSOR_SPIKE_EVERY` (30) readings, so
//! that the filter and the model downstream have something to do. Where the readings go is
//! the deployment's routes' business, not the sensor's.

use std::time::Duration;

use edgefleet_examples::hub::{HubEnv, Link};
use edgefleet_examples::stages::Walk;
use edgefleet_examples::{READINGS, Stop, log, setting};
use serde_json::json;
use tokio::time::MissedTickBehavior;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let id: String = setting("SENSOR_ID", "sensor".to_owned());
    let interval = Duration::from_millis(setting("SENSOR_INTERVAL_MS", 1000u64).max(10));
    let base: f64 = setting("SENSOR_BASE_C", 21.0);
    let spike_every: u64 = setting("SENSOR_SPIKE_EVERY", 30u64);
    let hub = HubEnv::from_env();
    let mut stop = Stop::on_signals();
    let mut link = Link::open(&hub, &[], stop.clone());
    log(
        json!({"event": "started", "module": "sensor", "id": id, "output": READINGS,
               "interval_ms": interval.as_millis()}),
    );

    let mut walk = Walk::new(&id, base, spike_every);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sent = 0u64;
    loop {
        // A stop comes first: nothing is queued once the link is closing.
        tokio::select! {
            biased;
            () = stop.requested() => break,
            _ = tick.tick() => {}
        }
        let Some(reading) = walk.next() else { break };
        if link.publish(READINGS, &reading) {
            sent += 1;
        }
        if reading.seq % 10 == 1 {
            log(json!({"event": "reading", "seq": reading.seq, "celsius": reading.celsius}));
        }
    }
    let dropped = link.dropped;
    link.close().await;
    log(json!({"event": "stopped", "module": "sensor", "sent": sent, "dropped": dropped}));
}
