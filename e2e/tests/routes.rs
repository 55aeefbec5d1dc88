//! Routes on a lab device's hub: a module's output reaches another module's input through a
//! route of their deployment, a conditional route carries only what its condition admits,
//! and a module can neither publish as another module nor read another's inputs. The
//! modules' MQTT clients are Debian's mosquitto clients, run on the device with the
//! credentials the agent gave each module. Run by `make e2e`.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use edgefleet_agent::hub_users::{PASSWORD_FILE, USERNAME_FILE, credentials_dir};
use edgefleet_crds::hub::{MQTT_PORT, module_inputs, module_outputs, mqtt_topic};
use edgefleet_e2e::{
    ControllerProcess, Lab, RealAgents, apply, controller_binary, fresh_namespace,
    install_and_enrol, mqtt, remove_every_deployment, wait_for,
};
use serde_json::json;

const DEVICE: &str = "edge-2";
const NS: &str = "e2e-routes";
const WAIT: Duration = Duration::from_secs(90);
const BUSYBOX: &str = "localhost/edgefleet-lab/busybox:1";

/// A module's MQTT client on the device, with the credentials the agent mounts into it.
struct ModuleClient<'a> {
    lab: &'a Lab,
    dir: PathBuf,
}

impl ModuleClient<'_> {
    fn run(&self, tool: &str, args: &[&str]) -> Output {
        let read = |f: &str| std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
        let (user, password) = (read(USERNAME_FILE), read(PASSWORD_FILE));
        let port = MQTT_PORT.to_string();
        let mut cmd = vec!["exec", DEVICE, "--", tool, "-h", "127.0.0.1", "-p", &port];
        cmd.extend(["-u", &user, "-P", &password]);
        cmd.extend_from_slice(args);
        self.lab.try_run(&cmd)
    }

    /// Publishes each payload on `topic` at QoS 1; whether the hub took them all.
    fn publish(&self, topic: &str, payloads: &[&str]) -> bool {
        payloads.iter().all(|m| {
            self.run("mosquitto_pub", &["-t", topic, "-m", m, "-q", "1"])
                .status
                .success()
        })
    }
}

/// What arrived (topic and payload per line) at a subscriber to `filter` within a few
/// seconds while `publish` ran, or that the hub refused the publisher: until the agent has
/// given the hub the modules' users it does, and a caller waiting for the route tries again.
/// `subscribe` runs the client with the arguments given.
fn received_while(
    subscribe: impl FnOnce(&[&str]) -> Output + Send,
    filter: &str,
    publish: impl FnOnce() -> bool,
) -> Result<String, String> {
    std::thread::scope(|s| {
        // QoS 1, as a module that wants its inputs asks: routed messages reach it too.
        let listening = s.spawn(|| subscribe(&["-t", filter, "-v", "-W", "6", "-q", "1"]));
        // mosquitto_sub connects and subscribes well within this on an idle device.
        std::thread::sleep(Duration::from_millis(1500));
        let published = publish();
        let out = listening.join().expect("the subscriber thread");
        if !published {
            return Err("the hub refused a module's own output".to_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
}

#[tokio::test]
#[ignore = "needs the lab and the images (make e2e)"]
async fn routes_carry_outputs_to_inputs_and_no_module_speaks_for_another() {
    let lab = Lab::get();
    let client = lab.client().await;
    install_and_enrol(&client).await;
    remove_every_deployment(&client).await;
    fresh_namespace(&client, NS).await;
    let _ctrl = ControllerProcess::start(
        &controller_binary(),
        &lab,
        18150,
        &["--leader-election", "false"],
    );
    let _agents = RealAgents::install(&lab, &client, &[DEVICE]).await;
    for name in ["sensor", "filter"] {
        let spec =
            json!({"image": BUSYBOX, "command": ["sh", "-c", "while true; do sleep 1; done"]});
        apply(&client, NS, "EdgeModule", name, spec).await;
    }
    apply(
        &client,
        NS,
        "EdgeDeployment",
        "pipeline",
        json!({
            "priority": 10, "selector": {},
            "modules": [
                {"name": "sensor", "routes": [
                    {"output": "readings", "to": {"module": "filter", "input": "readings"}},
                    {"output": "readings", "when": "$body.t > 30 AND $body.unit = 'C'",
                     "to": {"module": "filter", "input": "alerts"}},
                ]},
                {"name": "filter"},
            ],
        }),
    )
    .await;

    let state = lab.info(DEVICE).agent_state.expect("a device");
    let sensor = ModuleClient {
        lab: &lab,
        dir: credentials_dir(&state, NS, "sensor"),
    };
    let filter = ModuleClient {
        lab: &lab,
        dir: credentials_dir(&state, NS, "filter"),
    };
    let outputs = mqtt_topic(&module_outputs(NS, "sensor"));
    let inputs = mqtt_topic(&module_inputs(NS, "filter"));
    let as_filter = |args: &[&str]| filter.run("mosquitto_sub", args);
    let cool = r#"{"t":20,"unit":"C"}"#;
    let hot = r#"{"t":35,"unit":"C"}"#;

    // The route is in place once the agent has the modules' users and the router runs:
    // until then nothing arrives, and the test tries again.
    let routed = wait_for(
        "sensor's readings routed to filter's inputs",
        WAIT,
        || async {
            let got = received_while(as_filter, &format!("{inputs}/#"), || {
                sensor.publish(&format!("{outputs}/readings"), &[cool, hot])
            })?;
            let lines: Vec<&str> = got.lines().collect();
            (lines.len() >= 3).then(|| got.clone()).ok_or(got)
        },
    )
    .await;
    let mut lines: Vec<&str> = routed.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("{inputs}/alerts {hot}"),
            format!("{inputs}/readings {cool}"),
            format!("{inputs}/readings {hot}"),
        ],
        "every reading to readings, only the hot one to alerts"
    );

    // Spoofing: sensor publishes into filter's input and as filter's output; neither
    // reaches a subscriber, and sensor may not read filter's inputs at all.
    let spoofed = received_while(as_filter, &format!("{inputs}/#"), || {
        sensor.publish(&format!("{inputs}/readings"), &["spoofed"]);
        true
    })
    .unwrap_or_else(|refused| panic!("{refused}"));
    assert_eq!(
        spoofed, "",
        "a module published into another module's input"
    );
    let filter_out = mqtt_topic(&module_outputs(NS, "filter"));
    let as_agent = |args: &[&str]| mqtt(&lab, DEVICE, "mosquitto_sub", args, false);
    let seen = received_while(as_agent, &format!("{filter_out}/#"), || {
        sensor.publish(&format!("{filter_out}/readings"), &["as-filter"]);
        true
    })
    .unwrap_or_else(|refused| panic!("{refused}"));
    assert_eq!(seen, "", "a module published as another module");
    let snoop = sensor.run(
        "mosquitto_sub",
        &["-t", &format!("{inputs}/#"), "-C", "1", "-W", "3"],
    );
    let said = String::from_utf8_lossy(&snoop.stderr);
    assert!(
        said.contains("denied"),
        "a module subscribed to another module's inputs: {said}"
    );
}
