//! `cloud-stream SUBJECT`: what the cloud hub's stream UPSTREAM holds under SUBJECT, read
//! as `edgefleet-reader` (its password in `EDGEFLEET_READER_PASSWORD`) from the cloud hub
//! on this network namespace's 127.0.0.1. Prints `messages=N distinct=M` (M distinct
//! payloads), then each distinct payload on a line of its own, so that a test can check
//! which messages arrived, not only how many. The lab tests run it in the cloud node's namespace (`e2e/lab exec cloud-1`):
//! a JetStream client there, where mosquitto's clients cannot read a stream.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull::OrderedConfig};
use edgefleet_crds::hub::{NATS_PORT, READER_PASSWORD_ENV, READER_USER, UPSTREAM_STREAM};
use futures::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let subject = std::env::args()
        .nth(1)
        .ok_or("usage: cloud-stream SUBJECT")?;
    let password = std::env::var(READER_PASSWORD_ENV).map_err(|e| e.to_string())?;
    let client = async_nats::ConnectOptions::with_user_and_password(READER_USER.into(), password)
        .connection_timeout(Duration::from_secs(5))
        .connect(format!("127.0.0.1:{NATS_PORT}"))
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    let stream = js
        .get_stream(UPSTREAM_STREAM)
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(OrderedConfig {
            filter_subject: subject,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let pending = consumer.cached_info().num_pending;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut distinct = BTreeSet::new();
    let mut total = 0u64;
    while total < pending {
        match tokio::time::timeout(Duration::from_secs(10), messages.next()).await {
            Ok(Some(Ok(m))) => {
                total += 1;
                distinct.insert(m.payload.to_vec());
            }
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) | Err(_) => break,
        }
    }
    println!("messages={total} distinct={}", distinct.len());
    for p in &distinct {
        println!("{}", String::from_utf8_lossy(p).replace('\n', " "));
    }
    Ok(())
}
