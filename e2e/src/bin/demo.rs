//! `make demo`, once the lab is up and the images are loaded: installs edgefleet with Helm
//! (the CRDs, then the controller and the bootstrap that joins every device), enrols the
//! lab's devices, waits until every device's agent reports, grants and applies examples/,
//! waits until every deployment is Ready while it shows how far they got, prints what
//! kubectl shows, and ends by showing the modules' anomalies arriving in the cloud hub from
//! every device (routed sensor -> filter -> ml-model -> upstream on each device). Safe to
//! run again: it upgrades in place.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use edgefleet_crds::identity::SYSTEM_NAMESPACE;
use edgefleet_e2e::{
    CloudReader, Helm, Lab, all_joined, all_ready, edge_devices, enrol_lab_devices, lab_values,
    wait_showing,
};
use serde_json::Value;

/// How long the bootstrap and the rollout each get: minutes on a loaded 2-core machine.
const DEADLINE: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() {
    // A failure reads as the demo's own message (what it waited for, what it saw).
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let why = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("failed");
        eprintln!("\ndemo: {why}");
    }));
    let lab = Lab::get();
    let client = lab.client().await;
    let helm = Helm::for_lab(&lab);
    eprintln!("demo: installing edgefleet-crds and edgefleet with Helm");
    helm.install_or_upgrade("edgefleet-crds", "edgefleet-crds", &Value::Null);
    helm.install_or_upgrade("edgefleet", "edgefleet", &lab_values(&lab));
    eprintln!("demo: enrolling the lab's devices (the EdgeDevices `e2e/lab enrolment` prints)");
    enrol_lab_devices(&client).await;

    let devices = edge_devices(&client).await;
    let joining = format!("the bootstrap to join {} devices", devices.len());
    wait_showing(&joining, DEADLINE, || all_joined(&client, &devices)).await;

    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let platform = examples.join("platform");
    eprintln!(
        "demo: granting fleet-demo devices and privileges: kubectl apply -f examples/platform/"
    );
    eprint!(
        "{}",
        lab.kubectl(&["apply", "-f", &platform.display().to_string()])
    );
    eprintln!("demo: kubectl apply -k examples/");
    eprint!(
        "{}",
        lab.kubectl(&["apply", "-k", &examples.display().to_string()])
    );
    wait_showing("every EdgeDeployment Ready", DEADLINE, || {
        all_ready(&client)
    })
    .await;

    print!(
        "{}",
        lab.kubectl(&["get", "edgedeployments,edgedevices", "-n", "fleet-demo"])
    );

    eprintln!(
        "\ndemo: the cloud hub, as its reader sees it: each device's anomalies (a sensor spike \
         every 30 readings, flagged by the model, routed upstream)"
    );
    let mut cloud = CloudReader::subscribe(&lab, &client).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while seen.len() < devices.len() {
        let Ok(Some((topic, payload))) =
            tokio::time::timeout_at(deadline, cloud.messages.recv()).await
        else {
            panic!("no message in the cloud hub from every device in {DEADLINE:?}; from: {seen:?}");
        };
        // edgefleet/dev/<device>/up/<namespace>/<route>
        let device = topic.split('/').nth(2).unwrap_or_default().to_owned();
        let n = seen.entry(device.clone()).or_default();
        *n += 1;
        if *n <= 2 {
            println!("cloud <- {device}: {topic} {payload}");
        }
    }
    eprintln!(
        "demo: every device's anomalies reached the cloud; read them with any NATS client \
         (examples/README.md, `cloud-consumer`)"
    );
    eprintln!(
        "\ndemo: edgefleet runs in {SYSTEM_NAMESPACE}; try `kubectl describe edgedevice edge-1` or \
         `kubectl get edgedeployments -A -w` (KUBECONFIG: e2e/lab kubeconfig)."
    );
}
