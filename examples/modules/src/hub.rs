//! A module's link to its device's hub over MQTT 3.1.1, as any module would make it: where
//! the hub is and who the module is come from the environment the agent gives every
//! module (`EDGEFLEET_HUB_*`), its user name and password from the files in its read-only
//! credentials directory.
//!
//! The hub restarts when it is updated, and the module must ride that out: the link
//! reconnects with a growing, jittered pause (never a crash loop), and the module's loop
//! goes on meanwhile. Outputs are published at QoS 1 in a persistent session named after
//! the module, so what the hub has not acknowledged is sent again after a reconnect; what
//! cannot even be queued (the hub gone for long) is dropped and counted, so the module's
//! memory stays bounded. Inputs arrive on a bounded queue; a message on another topic, or
//! larger than [`MAX_MESSAGE`], is logged and skipped.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS,
    SubscribeReasonCode,
};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{MAX_MESSAGE, Reading, Stop, log, parse_reading};

/// The variables the agent sets in every module (`crds/src/hub.rs`, `env`).
pub mod env {
    pub const HOST: &str = "EDGEFLEET_HUB_HOST";
    pub const MQTT_PORT: &str = "EDGEFLEET_HUB_MQTT_PORT";
    pub const CREDENTIALS: &str = "EDGEFLEET_HUB_CREDENTIALS";
    pub const OUTPUTS: &str = "EDGEFLEET_HUB_OUTPUTS";
    pub const INPUTS: &str = "EDGEFLEET_HUB_INPUTS";
    pub const NAMESPACE: &str = "EDGEFLEET_NAMESPACE";
    pub const MODULE: &str = "EDGEFLEET_MODULE";
}

/// The files of the credentials directory.
const USERNAME_FILE: &str = "username";
const PASSWORD_FILE: &str = "password";
/// The largest credential file read (the agent's are under 100 bytes).
const MAX_CREDENTIAL: u64 = 1024;

/// The hub's own limit on a message (`max_payload` in its config): the MQTT client takes
/// packets up to it, so that a neighbour's oversized output costs one skipped message, not
/// a dropped connection.
const MAX_PACKET: usize = 1024 * 1024 + 4096;
/// Publishes the hub has not acknowledged yet, at most.
const IN_FLIGHT: u16 = 64;
/// Requests (publishes, subscriptions) waiting for the connection, at most.
const QUEUED: usize = 256;
/// Input messages waiting for the module, at most.
const INPUT_QUEUE: usize = 256;
/// Reconnect pauses: from the first to the longest, doubling.
const FIRST_PAUSE: Duration = Duration::from_millis(200);
const LONGEST_PAUSE: Duration = Duration::from_secs(10);
/// How long a stopping module waits for the hub to acknowledge what it sent: well within
/// the 10 s kubelet gives it.
const DRAIN: Duration = Duration::from_secs(3);

/// Where the hub is and who this module is on it, from the environment.
#[derive(Debug, Clone)]
pub struct HubEnv {
    pub host: String,
    pub port: u16,
    pub credentials: PathBuf,
    /// MQTT topic prefixes: `<outputs>/<output>`, `<inputs>/<input>`.
    pub outputs: String,
    pub inputs: String,
    /// `namespace/module`, the module's identity on the device (and its MQTT client id:
    /// one session per module, which the hub keeps across reconnects).
    pub client_id: String,
}

impl HubEnv {
    /// Reads the environment; a missing or invalid variable stops the module with a message
    /// naming it (exit code 2), as any bad setting does.
    pub fn from_env() -> HubEnv {
        let var = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                eprintln!(
                    "{name} is not set: is the module running on an edgefleet device with its hub?"
                );
                std::process::exit(2)
            })
        };
        let env = HubEnv {
            host: var(env::HOST),
            port: crate::setting(env::MQTT_PORT, 1883),
            credentials: var(env::CREDENTIALS).into(),
            outputs: var(env::OUTPUTS),
            inputs: var(env::INPUTS),
            client_id: format!("{}/{}", var(env::NAMESPACE), var(env::MODULE)),
        };
        for (name, prefix) in [(env::OUTPUTS, &env.outputs), (env::INPUTS, &env.inputs)] {
            if prefix.is_empty() || prefix.contains(['#', '+']) {
                eprintln!("{name}={prefix:?} is not a topic prefix");
                std::process::exit(2);
            }
        }
        env
    }
}

/// The module's user name and password, each the whole (trimmed) content of a small file.
pub fn read_credentials(dir: &Path) -> Result<(String, String), String> {
    let read = |file: &str| {
        use std::io::Read;
        let path = dir.join(file);
        let mut text = String::new();
        std::fs::File::open(&path)
            .and_then(|f| f.take(MAX_CREDENTIAL + 1).read_to_string(&mut text))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let text = text.trim();
        if text.is_empty() || text.len() as u64 > MAX_CREDENTIAL {
            return Err(format!(
                "{}: not a credential of 1 to {MAX_CREDENTIAL} bytes",
                path.display()
            ));
        }
        Ok(text.to_owned())
    };
    Ok((read(USERNAME_FILE)?, read(PASSWORD_FILE)?))
}

/// A message on one of the module's inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// The input's name (the topic after the inputs prefix).
    pub name: String,
    pub payload: Vec<u8>,
}

/// The live link: publish on outputs, receive from `inputs`. The connection is driven by a
/// task of its own, so the module's loop never waits on the network.
#[derive(Debug)]
pub struct Link {
    client: AsyncClient,
    outputs: String,
    pub inputs: mpsc::Receiver<Input>,
    driver: JoinHandle<()>,
    /// Messages dropped because the queue to the hub was full (the hub gone for long).
    pub dropped: u64,
}

impl Link {
    /// Connects (in the background, for as long as the module runs) and subscribes to
    /// `inputs` (input names) at every connection. Stops when `stop` is requested.
    pub fn open(env: &HubEnv, inputs: &[&str], stop: Stop) -> Link {
        let (user, password) = read_credentials(&env.credentials).unwrap_or_else(|e| {
            eprintln!("cannot read the module's hub credentials: {e}");
            std::process::exit(2)
        });
        let mut options = MqttOptions::new(&env.client_id, &env.host, env.port);
        options
            .set_credentials(user, password)
            .set_keep_alive(Duration::from_secs(15))
            .set_clean_session(false)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_inflight(IN_FLIGHT);
        let (client, eventloop) = AsyncClient::new(options, QUEUED);
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let topics = inputs
            .iter()
            .map(|i| format!("{}/{i}", env.inputs))
            .collect();
        let driver = tokio::spawn(drive(
            eventloop,
            client.clone(),
            format!("{}/", env.inputs),
            topics,
            tx,
            stop,
        ));
        Link {
            client,
            outputs: env.outputs.clone(),
            inputs: rx,
            driver,
            dropped: 0,
        }
    }

    /// The next reading on an input; what is not one is logged (`skipped`), counted in
    /// `skipped` and passed over. `None` once a stop is requested (it comes first: nothing
    /// more is taken once the link is closing) or the link has closed.
    pub async fn next_reading(&mut self, stop: &mut Stop, skipped: &mut u64) -> Option<Reading> {
        loop {
            let input = tokio::select! {
                biased;
                () = stop.requested() => return None,
                input = self.inputs.recv() => input?,
            };
            match parse_reading(&input.payload) {
                Ok(r) => return Some(r),
                Err(reason) => {
                    *skipped += 1;
                    log(json!({"event": "skipped", "input": input.name, "reason": reason}));
                }
            }
        }
    }

    /// Queues `message` on `output` at QoS 1; `false` (and counted) when the queue to the
    /// hub is full.
    pub fn publish(&mut self, output: &str, message: &impl Serialize) -> bool {
        let Ok(bytes) = serde_json::to_vec(message) else {
            return false;
        };
        let topic = format!("{}/{output}", self.outputs);
        match self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, bytes)
        {
            Ok(()) => true,
            Err(_) => {
                self.dropped += 1;
                if self.dropped.is_power_of_two() {
                    log(
                        json!({"event": "dropped", "output": output, "dropped": self.dropped,
                               "reason": "the queue to the hub is full"}),
                    );
                }
                false
            }
        }
    }

    /// Waits until the link has sent what was queued (bounded) and closed the connection.
    pub async fn close(self) {
        let _ = self.driver.await;
    }
}

/// Pauses between reconnects: doubling up to the longest, each between half and all of
/// its step, so that the modules of a device whose hub restarts do not come back in
/// lockstep.
#[derive(Debug)]
struct Backoff {
    step: Duration,
    seed: u64,
}

impl Backoff {
    fn new() -> Backoff {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64 | 1);
        Backoff {
            step: FIRST_PAUSE,
            seed,
        }
    }

    fn next(&mut self) -> Duration {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let fraction = 0.5 + (self.seed >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        let pause = self.step.mul_f64(fraction);
        self.step = (self.step * 2).min(LONGEST_PAUSE);
        pause
    }

    fn reset(&mut self) {
        self.step = FIRST_PAUSE;
    }
}

/// Drives the connection: reconnects with backoff, subscribes at every connection, hands
/// input messages to the module; on a stop, lets what is queued go out and disconnects.
async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    prefix: String,
    topics: Vec<String>,
    inputs: mpsc::Sender<Input>,
    mut stop: Stop,
) {
    let mut backoff = Backoff::new();
    let mut connected = false;
    loop {
        let event = tokio::select! {
            () = stop.requested() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                connected = true;
                backoff.reset();
                log(json!({"event": "connected", "session_present": ack.session_present}));
                // Through the request queue, which the connection empties from now on; a
                // task of its own, so that a full queue never stalls this loop. At QoS 0:
                // routed inputs reach the hub as NATS messages, which it hands to an MQTT
                // subscriber at QoS 0 whatever it asked for, and inputs are not queued for
                // a module that is away; asking for QoS 1 would promise more than it gets.
                for topic in &topics {
                    let (client, topic) = (client.clone(), topic.clone());
                    tokio::spawn(async move { client.subscribe(topic, QoS::AtMostOnce).await });
                }
            }
            Ok(Event::Incoming(Incoming::SubAck(ack))) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    log(json!({"event": "subscription refused", "topics": topics}));
                } else {
                    log(json!({"event": "subscribed", "topics": topics}));
                }
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => {
                take(&prefix, &topics, p.topic, p.payload.to_vec(), &inputs);
            }
            Ok(_) => {}
            Err(e) => {
                if connected {
                    log(json!({"event": "disconnected", "error": e.to_string()}));
                } else if matches!(e, ConnectionError::ConnectionRefused(_)) {
                    // Wrong credentials or a hub that does not know the module yet: said
                    // each time, as it needs someone to look.
                    log(json!({"event": "refused", "error": e.to_string()}));
                }
                connected = false;
                tokio::select! {
                    () = stop.requested() => break,
                    () = tokio::time::sleep(backoff.next()) => {}
                }
            }
        }
    }
    if connected {
        drain(&mut eventloop, &client).await;
    }
}

/// Hands an input message to the module when it is one: on a subscribed topic, within
/// [`MAX_MESSAGE`], and while the module keeps up (the queue is bounded).
fn take(
    prefix: &str,
    topics: &[String],
    topic: String,
    payload: Vec<u8>,
    to: &mpsc::Sender<Input>,
) {
    let skip = |reason: &str| log(json!({"event": "skipped", "topic": topic, "reason": reason}));
    if !topics.contains(&topic) {
        return skip("not an input of this module");
    }
    if payload.len() > MAX_MESSAGE {
        return skip(&format!("{} bytes, more than {MAX_MESSAGE}", payload.len()));
    }
    let name = topic.strip_prefix(prefix).unwrap_or(&topic).to_owned();
    if to.try_send(Input { name, payload }).is_err() {
        skip("the module is behind: its input queue is full");
    }
}

/// Lets the queued publishes go out and their acknowledgements come back (bounded by
/// [`DRAIN`]), then disconnects.
async fn drain(eventloop: &mut EventLoop, client: &AsyncClient) {
    let _ = tokio::time::timeout(DRAIN, async {
        let _ = client.try_disconnect();
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_small_files_read_whole() {
        let dir = std::env::temp_dir().join(format!("edgefleet-examples-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        std::fs::write(dir.join(USERNAME_FILE), "team/sensor").expect("write");
        std::fs::write(dir.join(PASSWORD_FILE), "s3cret\n").expect("write");
        assert_eq!(
            read_credentials(&dir),
            Ok(("team/sensor".into(), "s3cret".into()))
        );
        std::fs::write(dir.join(PASSWORD_FILE), "x".repeat(2000)).expect("write");
        assert!(read_credentials(&dir).is_err(), "too long");
        std::fs::write(dir.join(PASSWORD_FILE), "").expect("write");
        assert!(read_credentials(&dir).is_err(), "empty");
        std::fs::remove_dir_all(&dir).expect("clean up");
        assert!(read_credentials(&dir).is_err(), "missing");
    }

    #[test]
    fn only_sane_messages_on_subscribed_topics_reach_the_module() {
        let (tx, mut rx) = mpsc::channel(1);
        let topics = vec!["ns/m/in/input".to_owned()];
        take(
            "ns/m/in/",
            &topics,
            "ns/m/in/other".into(),
            b"{}".to_vec(),
            &tx,
        );
        take(
            "ns/m/in/",
            &topics,
            "ns/m/in/input".into(),
            vec![b' '; MAX_MESSAGE + 1],
            &tx,
        );
        take(
            "ns/m/in/",
            &topics,
            "ns/m/in/input".into(),
            b"1".to_vec(),
            &tx,
        );
        take(
            "ns/m/in/",
            &topics,
            "ns/m/in/input".into(),
            b"2".to_vec(),
            &tx,
        );
        assert_eq!(
            rx.try_recv().ok(),
            Some(Input {
                name: "input".into(),
                payload: b"1".to_vec()
            })
        );
        assert!(
            rx.try_recv().is_err(),
            "the rest was skipped: a full queue drops, never grows"
        );
    }

    #[test]
    fn reconnect_pauses_grow_to_a_cap_with_jitter_and_reset() {
        let mut b = Backoff::new();
        let pauses: Vec<Duration> = (0..10).map(|_| b.next()).collect();
        assert!(pauses[0] <= FIRST_PAUSE && pauses[0] >= FIRST_PAUSE / 2);
        assert!(pauses.iter().all(|p| *p <= LONGEST_PAUSE));
        assert!(pauses[9] >= LONGEST_PAUSE / 2, "{pauses:?}");
        b.reset();
        assert!(b.next() <= FIRST_PAUSE);
    }
}
