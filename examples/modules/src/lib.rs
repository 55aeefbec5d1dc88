//! What the sample modules share: the messages they pass along, their settings from the
//! environment (set by the EdgeModule), a clean stop on SIGTERM, and (in `hub`) their MQTT
//! link to the device's hub.
//!
//! The pipeline on one device, every hop a route of the deployment carried by the device's
//! router: `sensor` publishes on its output `readings` -> `filter` reads its input `input`,
//! publishes on `smoothed` -> `ml-model` reads its input `input`, publishes what it flags
//! on `anomalies` -> upstream to the cloud. Each module logs JSON lines on stdout.
//!
//! What arrives from the hub is another module's output, so it is treated as hostile:
//! bounded in size, parsed into a checked type, and skipped (and logged) when it is not one.

pub mod hub;
pub mod stages;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use tokio::sync::watch;

/// The sensor's output.
pub const READINGS: &str = "readings";
/// The input `filter` and `ml-model` read (each module's inputs are its own).
pub const INPUT: &str = "input";
/// The filter's output.
pub const SMOOTHED: &str = "smoothed";
/// The model's output, routed upstream by the examples.
pub const ANOMALIES: &str = "anomalies";

/// The largest message a module takes or sends. A reading is under 200 bytes; anything
/// larger is not one, and is skipped before it is parsed.
pub const MAX_MESSAGE: usize = 4096;

/// The longest sensor id carried along (it ends up in every downstream log line).
pub const MAX_SENSOR_ID: usize = 64;

/// One temperature reading on its way through the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    pub sensor: String,
    pub seq: u64,
    pub celsius: f64,
    /// Set by `filter`: the moving average the reading belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothed: Option<f64>,
}

impl Reading {
    /// Whether a parsed reading is one a module can work with: a short sensor id and
    /// finite numbers (JSON has no NaN, but a huge exponent parses to infinity).
    fn check(&self) -> Result<(), String> {
        if self.sensor.is_empty() || self.sensor.len() > MAX_SENSOR_ID {
            return Err(format!(
                "a sensor id of {} bytes (1 to {MAX_SENSOR_ID})",
                self.sensor.len()
            ));
        }
        if !self.celsius.is_finite() || !self.smoothed.is_none_or(f64::is_finite) {
            return Err("a temperature that is not a finite number".into());
        }
        Ok(())
    }
}

/// What the model sends upstream about a reading it flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    pub model: String,
    pub sensor: String,
    pub seq: u64,
    pub celsius: f64,
    pub score: f64,
}

/// A reading from bytes off the network: at most [`MAX_MESSAGE`] bytes of JSON with
/// exactly a reading's fields, each sane. The error says why it is not one, for the log.
pub fn parse_reading(bytes: &[u8]) -> Result<Reading, String> {
    let r: Reading = parse(bytes)?;
    r.check()?;
    Ok(r)
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_MESSAGE {
        return Err(format!("{} bytes, more than {MAX_MESSAGE}", bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// A setting from the environment, or its default; a value that does not parse stops the
/// module with a message that names the variable (exit code 2: the device reports the
/// module failed with it).
pub fn setting<T: FromStr>(name: &str, default: T) -> T
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| {
            eprintln!("{name}={v:?} is not valid: {e}");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

/// Logs one JSON line.
pub fn log(value: serde_json::Value) {
    println!("{value}");
}

/// Becomes true once SIGTERM or SIGINT arrives. As PID 1 of its container, a module gets no
/// default signal handling, so without this kubelet would wait out the grace period on
/// every stop.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// Handles both signals from now on; call it inside the runtime.
    pub fn on_signals() -> Stop {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = watch::channel(false);
        for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
            let mut s = signal(kind).unwrap_or_else(|e| {
                eprintln!("cannot handle signal {kind:?}: {e}");
                std::process::exit(1)
            });
            let tx = tx.clone();
            tokio::spawn(async move {
                if s.recv().await.is_some() {
                    let _ = tx.send(true);
                }
            });
        }
        Stop(rx)
    }

    /// Returns once a stop is requested.
    pub async fn requested(&mut self) {
        // An error means every sender is gone: no stop can come any more, so wait forever.
        if self.0.wait_for(|s| *s).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        Reading {
            sensor: "s".into(),
            seq: 7,
            celsius: 21.5,
            smoothed: None,
        }
    }

    #[test]
    fn a_reading_round_trips() {
        let bytes = serde_json::to_vec(&reading()).expect("serializes");
        assert_eq!(parse_reading(&bytes), Ok(reading()));
    }

    /// Another module's output is hostile input: oversized, malformed, mistyped, with
    /// unknown fields, absurd numbers or an endless id, it is refused with a reason, never
    /// a panic.
    #[test]
    fn what_is_not_a_sane_reading_is_refused() {
        let big = format!(
            r#"{{"sensor":"s","seq":1,"celsius":1,"pad":"{}"}}"#,
            "x".repeat(MAX_MESSAGE)
        );
        let long_id = format!(r#"{{"sensor":"{}","seq":1,"celsius":1}}"#, "x".repeat(65));
        for bad in [
            "",
            "not json",
            "[]",
            r#"{"sensor":"s","seq":-1,"celsius":1}"#,
            r#"{"sensor":"s","seq":1,"celsius":"hot"}"#,
            r#"{"sensor":"s","seq":1,"celsius":1e999}"#,
            r#"{"sensor":"s","seq":1,"celsius":1,"smoothed":-1e999}"#,
            r#"{"sensor":"","seq":1,"celsius":1}"#,
            r#"{"sensor":"s","seq":1,"celsius":1,"extra":true}"#,
            r#"{"sensor":"s","seq":1}"#,
            "\u{0}\u{ff}",
            big.as_str(),
            long_id.as_str(),
        ] {
            assert!(parse_reading(bad.as_bytes()).is_err(), "{bad:.80}");
        }
        assert!(parse_reading(&[0xff, 0xfe, 0x00]).is_err());
    }
}
