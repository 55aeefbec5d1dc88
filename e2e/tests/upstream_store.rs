//! The upstream store on a lab device while the cloud is out of reach: the real agent and
//! hub on edge-3 (no cloud hub is configured, as on a device that never reached one), a
//! module whose readings a route sends upstream, and what the device's status says when
//! the store's policy drops them: past the TTL they expire; a full store drops the oldest
//! or refuses the new, as configured. Each loss is counted by its reason, the others stay
//! zero. (The exact counts are proven against real hubs on the loopback in `hub_store.rs`;
//! here the status is coarse above 100.) Run by `make e2e`.

use std::time::Duration;

use edgefleet_agent::hub_users::{PASSWORD_FILE, USERNAME_FILE, credentials_dir};
use edgefleet_crds::EdgeDevice;
use edgefleet_crds::device::HubStatus;
use edgefleet_crds::hub::{MQTT_PORT, module_outputs, mqtt_topic};
use edgefleet_e2e::{
    ControllerProcess, Lab, RealAgents, apply, controller_binary, fresh_namespace,
    install_and_enrol, remove_every_deployment, wait_for,
};
use kube::{Api, Client};
use serde_json::json;

const DEVICE: &str = "edge-3";
const NS: &str = "e2e-store";
const WAIT: Duration = Duration::from_secs(120);
const BUSYBOX: &str = "localhost/edgefleet-lab/busybox:1";

/// Installs the agent on edge-3 with `flags`, deploys the sensor with its upstream route,
/// and, once a first reading reached the store, sends `count` readings of about `pad` bytes.
async fn send_upstream(
    lab: &Lab,
    client: &Client,
    flags: &[&str],
    count: usize,
    pad: usize,
) -> RealAgents {
    let agents = RealAgents::install_with(lab, client, &[DEVICE], flags).await;
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    apply(
        client,
        NS,
        "EdgeDeployment",
        "telemetry",
        json!({"selector": {}, "modules": [{"name": "sensor", "routes": [
            {"output": "readings", "to": {"upstream": "readings"}}]}]}),
    )
    .await;
    let state = lab.info(DEVICE).agent_state.expect("a device");
    let creds = credentials_dir(&state, NS, "sensor");
    let read = |f: &str| std::fs::read_to_string(creds.join(f));
    wait_for("the sensor's hub credentials", WAIT, || async {
        read(PASSWORD_FILE).map(drop).map_err(|e| e.to_string())
    })
    .await;
    let (user, password) = (
        read(USERNAME_FILE).expect("user"),
        read(PASSWORD_FILE).expect("pw"),
    );
    let topic = format!("{}/readings", mqtt_topic(&module_outputs(NS, "sensor")));
    // `n` readings, generated on the device: a megabyte and more does not fit in one
    // argument.
    let readings = |n: usize| {
        format!(
            "i=0; while [ $i -lt {n} ]; do printf '{{\"i\":%d,\"pad\":\"%0{pad}d\"}}\\n' $i 0; \
             i=$((i+1)); done | mosquitto_pub -h 127.0.0.1 -p {MQTT_PORT} -u '{user}' -P '{password}' \
             -q 1 -t '{topic}' -l"
        )
    };
    // The hub takes the sensor's readings before the router reads its outputs, and keeps
    // none of those: the status shows a first reading in the store (or already lost).
    let (probe, script) = (readings(1), readings(count));
    wait_for("a first reading in the upstream store", WAIT, || async {
        let out = lab.try_run(&["exec", DEVICE, "--", "sh", "-c", &probe]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        let d = devices.get(DEVICE).await.map_err(|e| e.to_string())?;
        match d.status.and_then(|s| s.hub) {
            Some(h) if h.backlog_messages + h.expired + h.full + h.refused > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_for("the hub to take the sensor's readings", WAIT, || async {
        let out = lab.try_run(&["exec", DEVICE, "--", "sh", "-c", &script]);
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await;
    agents
}

/// Waits until edge-3's hub status satisfies `done`; returns it.
async fn hub_status(client: &Client, what: &str, done: impl Fn(&HubStatus) -> bool) -> HubStatus {
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    wait_for(what, WAIT, || async {
        let d = devices.get(DEVICE).await.map_err(|e| e.to_string())?;
        match d.status.and_then(|s| s.hub) {
            Some(h) if done(&h) => Ok(h),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

#[tokio::test]
#[ignore = "needs the lab and the images (make e2e)"]
async fn past_the_ttl_or_in_a_full_store_upstream_messages_are_dropped_and_counted_by_reason() {
    let lab = Lab::get();
    let client = lab.client().await;
    install_and_enrol(&client).await;
    remove_every_deployment(&client).await;
    fresh_namespace(&client, NS).await;
    let _ctrl = ControllerProcess::start(
        &controller_binary(),
        &lab,
        18152,
        &["--leader-election", "false"],
    );
    let spec = json!({"image": BUSYBOX, "command": ["sh", "-c", "while true; do sleep 1; done"]});
    apply(&client, NS, "EdgeModule", "sensor", spec).await;

    // A TTL of 5 s: what waits longer expires, and only that is counted.
    {
        let _agents = send_upstream(&lab, &client, &["--hub-upstream-ttl=5s"], 50, 10).await;
        let h = hub_status(&client, "the readings counted as expired", |h| {
            h.expired >= 50 && h.backlog_messages == 0
        })
        .await;
        assert_eq!((h.full, h.refused, h.connected), (0, 0, false), "{h:?}");
    }
    // A 1 MiB store given 1,500 readings of 1 KiB, dropping the oldest: some are pushed out
    // and counted as full; what is left waits.
    {
        let flags = [
            "--hub-upstream-mib=1",
            "--hub-upstream-when-full=drop-oldest",
        ];
        let _agents = send_upstream(&lab, &client, &flags, 1_500, 1_000).await;
        let h = hub_status(&client, "the oldest readings counted as pushed out", |h| {
            h.full >= 100 && h.backlog_messages >= 100
        })
        .await;
        assert_eq!((h.expired, h.refused), (0, 0), "{h:?}");
    }
    // The same store refusing new readings: those are counted as refused, none as full.
    {
        let flags = [
            "--hub-upstream-mib=1",
            "--hub-upstream-when-full=refuse-new",
        ];
        let _agents = send_upstream(&lab, &client, &flags, 1_500, 1_000).await;
        let h = hub_status(&client, "the newest readings counted as refused", |h| {
            h.refused >= 100 && h.backlog_messages >= 100
        })
        .await;
        assert_eq!((h.expired, h.full), (0, 0), "{h:?}");
    }
}
