//! The message hubs of the lab, spoken to with Debian's mosquitto clients in the nodes'
//! network namespaces: MQTT on a device's own hub, as a module's client would, and the
//! cloud hub's reader on the cloud node.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Output, Stdio};

use edgefleet_agent::hub::HubDirs;
use edgefleet_crds::hub::{AGENT_USER, MQTT_PORT, READER_PASSWORD_ENV, READER_USER};
use edgefleet_crds::identity::SYSTEM_NAMESPACE;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::Lab;

/// Runs `mosquitto_pub` or `mosquitto_sub` on `device` against its hub, as the agent's
/// user (its password from the device's state directory) unless `anonymous`.
pub fn mqtt(lab: &Lab, device: &str, tool: &str, args: &[&str], anonymous: bool) -> Output {
    let port = MQTT_PORT.to_string();
    let password = if anonymous {
        String::new()
    } else {
        agent_password(lab, device)
    };
    let mut cmd = vec!["exec", device, "--", tool, "-h", "127.0.0.1", "-p", &port];
    if !anonymous {
        cmd.extend(["-u", AGENT_USER, "-P", &password]);
    }
    cmd.extend_from_slice(args);
    lab.try_run(&cmd)
}

/// The agent's password on `device`'s hub.
pub fn agent_password(lab: &Lab, device: &str) -> String {
    let state = lab
        .info(device)
        .agent_state
        .unwrap_or_else(|| panic!("{device} is not a device"));
    let path = HubDirs::under(&state).config.join("agent.secret");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// The cloud hub reader's password, from the Secret the chart keeps it in.
pub async fn reader_password(admin: &Client) -> String {
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let secret = secrets
        .get("edgefleet-hub-reader")
        .await
        .expect("the reader's Secret");
    secret
        .data
        .and_then(|d| d.get("password").cloned())
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
        .expect("a password")
}

/// What the cloud hub's stream holds under one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloudStream {
    /// Messages, duplicates included.
    pub messages: u64,
    /// Distinct payloads.
    pub distinct: u64,
    /// Each distinct payload.
    pub payloads: Vec<String>,
}

/// What the cloud hub's stream UPSTREAM holds under `subject`, read by the `cloud-stream`
/// probe (`probe`, the binary's path, which only a test knows) in the cloud node's network
/// namespace.
pub fn cloud_stream(
    lab: &Lab,
    probe: &str,
    password: &str,
    subject: &str,
) -> Result<CloudStream, String> {
    let env = format!("{READER_PASSWORD_ENV}={password}");
    let out = lab.try_run(&["exec", "cloud-1", "--", "env", &env, probe, subject]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let summary = text.lines().next().unwrap_or_default();
    let field = |k: &str| {
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.parse::<u64>().ok())
    };
    match (out.status.success(), field("messages="), field("distinct=")) {
        (true, Some(messages), Some(distinct)) => Ok(CloudStream {
            messages,
            distinct,
            payloads: text.lines().skip(1).map(str::to_owned).collect(),
        }),
        _ => Err(format!("{text} {}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// What devices send, as the cloud hub's reader sees it: `mosquitto_sub` on the cloud hub's
/// MQTT listener, in the cloud node's network namespace, for as long as this lives.
#[derive(Debug)]
pub struct CloudReader {
    /// `(topic, payload)` of every message, in arrival order.
    pub messages: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    sub: Child,
}

impl CloudReader {
    /// Subscribes to every device's upstream topics as `edgefleet-reader`, with the
    /// password the chart keeps in its Secret. mosquitto_sub keeps trying to connect
    /// (a fresh hub creates its MQTT streams, and one reloading its accounts may stall a
    /// connection); the caller waits for messages, not for the subscription.
    pub async fn subscribe(lab: &Lab, admin: &Client) -> CloudReader {
        let password = reader_password(admin).await;
        let port = MQTT_PORT.to_string();
        let mut sub = Command::new(lab.script())
            // Line-buffered: through a pipe, stdio would hold the lines back.
            .args(["exec", "cloud-1", "--", "stdbuf", "-oL", "mosquitto_sub"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-u",
                READER_USER,
                "-P",
                &password,
            ])
            // QoS 0: nats-server hands a QoS 1 MQTT subscriber only the QoS 1 messages stored
            // in its own MQTT stream, and a device's QoS 1 message reaches the cloud over the
            // leaf connection, not through that stream (store-and-forward comes with
            // JetStream streams). Ends by itself, should the test's end not reach it.
            .args(["-v", "-q", "0", "-W", "600", "-t", "edgefleet/dev/+/up/#"])
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("mosquitto_sub on cloud-1");
        let (tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let stdout = sub.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            // -v: "topic payload"
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((topic, payload)) = line.split_once(' ') {
                    let _ = tx.send((topic.to_owned(), payload.to_owned()));
                }
            }
        });
        CloudReader { messages, sub }
    }
}

impl Drop for CloudReader {
    fn drop(&mut self) {
        // The whole group: `e2e/lab exec` and the mosquitto_sub it started.
        let _ = Command::new("kill")
            .args(["--", &format!("-{}", self.sub.id())])
            .status();
        let _ = self.sub.wait();
    }
}
