//! `filter`: reads readings on its input `input`, drops those outside
//! `FILTER_MIN_C`..`FILTER_MAX_C` (-40..85, what the sensor can measure), adds the moving
//! average over `FILTER_WINDOW` (5) readings and publishes them on its output `smoothed`.

use edgefleet_examples::hub::{HubEnv, Link};
use edgefleet_examples::stages::Smoother;
use edgefleet_examples::{INPUT, SMOOTHED, Stop, log, setting};
use serde_json::json;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let min: f64 = setting("FILTER_MIN_C", -40.0);
    let max: f64 = setting("FILTER_MAX_C", 85.0);
    let window: usize = setting("FILTER_WINDOW", 5usize);
    if min >= max {
        eprintln!("FILTER_MIN_C ({min}) must be below FILTER_MAX_C ({max})");
        std::process::exit(2);
    }
    let hub = HubEnv::from_env();
    let mut stop = Stop::on_signals();
    let mut link = Link::open(&hub, &[INPUT], stop.clone());
    log(
        json!({"event": "started", "module": "filter", "input": INPUT, "output": SMOOTHED,
               "range_c": [min, max], "window": window}),
    );

    let mut smoother = Smoother::new(min, max, window);
    let (mut passed, mut dropped, mut skipped) = (0u64, 0u64, 0u64);
    while let Some(reading) = link.next_reading(&mut stop, &mut skipped).await {
        let (seq, celsius) = (reading.seq, reading.celsius);
        let Some(smoothed) = smoother.pass(reading) else {
            dropped += 1;
            log(json!({"event": "dropped", "seq": seq, "celsius": celsius}));
            continue;
        };
        if link.publish(SMOOTHED, &smoothed) {
            passed += 1;
            if passed.is_multiple_of(30) {
                log(json!({"event": "progress", "passed": passed, "dropped": dropped}));
            }
        }
    }
    let unsent = link.dropped;
    link.close().await;
    log(
        json!({"event": "stopped", "module": "filter", "passed": passed, "dropped": dropped,
               "skipped": skipped, "unsent": unsent}),
    );
}
