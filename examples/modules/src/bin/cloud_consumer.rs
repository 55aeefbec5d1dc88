//! `cloud-consumer`: prints what devices send upstream, one JSON line per message
//! (`device`, `namespace`, `route`, the stream's `seq`, and the `payload`, as JSON when it
//! is JSON), read from the cloud hub's stream `UPSTREAM` as `edgefleet-reader`. It follows
//! the stream until stopped; the client reconnects by itself when the cloud hub restarts.
//!
//! ```sh
//! kubectl -n edgefleet-system port-forward svc/edgefleet-hub 4222 &
//! export EDGEFLEET_READER_PASSWORD=$(kubectl -n edgefleet-system get secret \
//!   edgefleet-hub-reader -o jsonpath='{.data.password}' | base64 -d)
//! cloud-consumer --device edge-1 --from-start
//! ```

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull::OrderedConfig};
use clap::Parser;
use edgefleet_examples::MAX_MESSAGE;
use futures::StreamExt;
use serde_json::{Value, json};

#[derive(Parser, Debug)]
struct Args {
    /// The cloud hub's NATS address.
    #[arg(
        long,
        env = "EDGEFLEET_CLOUD_HUB",
        default_value = "nats://127.0.0.1:4222"
    )]
    url: String,
    /// The reader's password (the Secret `edgefleet-hub-reader`).
    #[arg(long, env = "EDGEFLEET_READER_PASSWORD", hide_env_values = true)]
    password: String,
    /// Only this device's messages (every device's by default).
    #[arg(long, default_value = "*")]
    device: String,
    /// Everything the stream holds, not only what arrives from now on.
    #[arg(long)]
    from_start: bool,
}

/// The cloud hub's reader (`crds/src/hub.rs`, `READER_USER`) and stream.
const READER_USER: &str = "edgefleet-reader";
const STREAM: &str = "UPSTREAM";

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.device.is_empty() || args.device.contains(['.', '>', ' ']) {
        return Err(format!("--device {:?} is not a device name", args.device));
    }
    let client =
        async_nats::ConnectOptions::with_user_and_password(READER_USER.into(), args.password)
            .connection_timeout(Duration::from_secs(10))
            .connect(&args.url)
            .await
            .map_err(|e| format!("cannot reach the cloud hub at {}: {e}", args.url))?;
    let stream = jetstream::new(client)
        .get_stream(STREAM)
        .await
        .map_err(|e| format!("no stream {STREAM} on the cloud hub: {e}"))?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: format!("edgefleet.dev.{}.up.>", args.device),
            deliver_policy: if args.from_start {
                DeliverPolicy::All
            } else {
                DeliverPolicy::New
            },
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot read the stream: {e}"))?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let next = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            next = messages.next() => next,
        };
        match next {
            Some(Ok(m)) => {
                let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
                println!("{}", line(&m.subject, seq, &m.payload));
            }
            Some(Err(e)) => eprintln!("cloud-consumer: {e}"),
            None => return Err("the stream's consumer ended".into()),
        }
    }
}

/// One message as a JSON line: the subject `edgefleet.dev.<device>.up.<namespace>.<route>`
/// split into its parts, the payload as JSON when it is JSON (a device's message is its
/// modules' word: shown, never trusted; a long one is cut).
fn line(subject: &str, seq: u64, payload: &[u8]) -> Value {
    let parts: Vec<&str> = subject.splitn(6, '.').collect();
    let (device, namespace, route) = match parts.as_slice() {
        ["edgefleet", "dev", device, "up", namespace, route] => (*device, *namespace, *route),
        _ => ("", "", subject),
    };
    let shown = &payload[..payload.len().min(MAX_MESSAGE)];
    let payload = serde_json::from_slice::<Value>(shown)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(shown).into_owned()));
    json!({"device": device, "namespace": namespace, "route": route, "seq": seq,
           "payload": payload})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_shown_by_device_and_route() {
        let l = line(
            "edgefleet.dev.edge-1.up.fleet-demo.anomalies",
            7,
            br#"{"seq":30}"#,
        );
        assert_eq!(
            l,
            json!({"device": "edge-1", "namespace": "fleet-demo", "route": "anomalies",
                   "seq": 7, "payload": {"seq": 30}})
        );
        let odd = line("elsewhere", 1, b"\xff\x00 not json");
        assert_eq!(odd["route"], "elsewhere");
        assert!(odd["payload"].is_string());
    }
}
