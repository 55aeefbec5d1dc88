//! The message hub on a lab device: the agent runs nats-server as a static pod beside the
//! modules; it admits no anonymous client, speaks MQTT to clients on the device (Debian's
//! mosquitto clients here, as a module's would be), and keeps what it stored across a
//! reboot while the device is offline, because its store is the host's. Run by `make e2e`.

use std::time::Duration;

use edgefleet_agent::hub::HubDirs;
use edgefleet_crds::hub::{AGENT_USER, HUB_NAME};
use edgefleet_e2e::{
    ControllerProcess, Lab, RealAgents, controller_binary, install_and_enrol, mqtt, wait_for,
};

const DEVICE: &str = "edge-3";
const WAIT: Duration = Duration::from_secs(90);
const TOPIC: &str = "edgefleet/e2e/retained";

#[tokio::test]
#[ignore = "needs the lab and the images (make e2e)"]
async fn the_hub_admits_no_stranger_and_keeps_its_store_across_an_offline_reboot() {
    let lab = Lab::get();
    let client = lab.client().await;
    install_and_enrol(&client).await;
    let _ctrl = ControllerProcess::start(
        &controller_binary(),
        &lab,
        18141,
        &["--leader-election", "false"],
    );
    let _agents = RealAgents::install(&lab, &client, &[DEVICE]).await;
    let hub_before = wait_for("the hub to run on the device", WAIT, || async {
        lab.running_task(DEVICE, HUB_NAME).ok_or("no hub task")
    })
    .await;

    let state = lab.info(DEVICE).agent_state.expect("a device");
    let dirs = HubDirs::under(&state);

    // No credentials, or wrong ones: refused (CONNACK "not authorised").
    let pub_ = |args: &[&str], anonymous| mqtt(&lab, DEVICE, "mosquitto_pub", args, anonymous);
    let anonymous = pub_(&["-t", TOPIC, "-m", "x", "-q", "1"], true);
    assert!(
        !anonymous.status.success(),
        "an anonymous client was admitted"
    );
    let wrong = pub_(
        &[
            "-u", AGENT_USER, "-P", "guess", "-t", TOPIC, "-m", "x", "-q", "1",
        ],
        true,
    );
    assert!(!wrong.status.success(), "a wrong password was admitted");

    // A retained message at QoS 1: the hub keeps it in JetStream's file store, on the host.
    let sent = format!("kept-{}", jiff::Timestamp::now().as_millisecond());
    wait_for("the hub to take a retained message", WAIT, || async {
        let out = pub_(&["-t", TOPIC, "-m", &sent, "-q", "1", "-r"], false);
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
    })
    .await;
    assert!(
        std::fs::read_dir(&dirs.store)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "nothing in the hub's store on the host ({})",
        dirs.store.display()
    );

    // Offline, then a reboot: kubelet starts the hub again from its manifest, with no
    // apiserver, and the new hub finds what the old one stored.
    lab.run(&["offline", DEVICE]);
    let _online_again = BackOnline(&lab);
    lab.run(&["reboot", DEVICE]);
    wait_for("the hub back after the reboot, offline", WAIT, || async {
        assert!(
            lab.run(&["info", DEVICE]).contains("link=offline"),
            "{DEVICE} must still be offline"
        );
        match lab.running_task(DEVICE, HUB_NAME) {
            Some(t) if t.pid != hub_before.pid => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let received = wait_for("the retained message from the new hub", WAIT, || async {
        let out = mqtt(
            &lab,
            DEVICE,
            "mosquitto_sub",
            &["-t", TOPIC, "-C", "1", "-W", "5"],
            false,
        );
        let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !got.is_empty() {
            Ok(got)
        } else {
            Err(format!("{got:?} {}", String::from_utf8_lossy(&out.stderr)))
        }
    })
    .await;
    assert_eq!(received, sent, "the hub lost its store in the reboot");
}

/// Brings the device back online when the test ends, passed or not: the next test needs it.
struct BackOnline<'a>(&'a Lab);

impl Drop for BackOnline<'_> {
    fn drop(&mut self) {
        self.0.run(&["online", DEVICE]);
    }
}
