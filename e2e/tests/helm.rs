//! edgefleet's charts installed, upgraded and uninstalled on the lab's real cluster with
//! Helm v4's own engine, the way a user installs them. The controller runs in the cluster
//! under the chart's RBAC only, the chart's bootstrap joins every device (each agent then
//! runs as a static pod with its device's own certificate), and examples/ is applied the
//! GitOps way and checked for drift.
//!
//! `e2e/run-e2e` runs it last, after every other lab test, as it replaces the CRDs; it
//! needs the images (`e2e/build-images --load`) and Helm (`HELM_PY`, which `make e2e` sets).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_agent::hub_users::{PASSWORD_FILE, USERNAME_FILE, credentials_dir};
use edgefleet_agent::{join, self_pod};
use edgefleet_crds::device::conditions::REGISTERED;
use edgefleet_crds::hub::{HUB_NAME, MQTT_PORT, module_outputs, mqtt_topic};
use edgefleet_crds::identity::{
    APP_NAME_LABEL, BOOTSTRAP_NAME, CONTROLLER_NAME, DEVICE_LABEL, JOIN_APPROVED_REASON,
    SYSTEM_NAMESPACE, bootstrap_user, device_object_name,
};
use edgefleet_crds::{EdgeDeployment, EdgeDevice, ResolvedModule, condition};
use edgefleet_e2e::{
    CloudReader, CloudStream, Helm, Lab, all_joined, all_ready, apply, cloud_stream, edge_devices,
    enrol_lab_devices, fresh_namespace, lab_values, mqtt, pod_bound_token, reader_password,
    remove_agent, try_apply, wait_established, wait_for,
};
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

const NS: &str = SYSTEM_NAMESPACE;

#[tokio::test]
#[ignore = "needs the lab and Helm: e2e/run-e2e runs it last"]
async fn helm_install_join_gitops_upgrade_uninstall() {
    let lab = Lab::get();
    let client = lab.client().await;
    let helm = Helm::for_lab(&lab);
    let devices = edge_devices(&client).await;
    start_from_a_bare_cluster(&lab, &helm, &devices);

    helm.install("edgefleet-crds", "edgefleet-crds", &serde_json::Value::Null);
    wait_established(&client).await;
    let release = helm.install("edgefleet", "edgefleet", &lab_values(&lab));
    assert_eq!(release["status"], "deployed");
    enrol_lab_devices(&client).await;

    // The controller, under the chart's RBAC alone, registers every lab device and gives
    // each its own RBAC.
    let devices_api: Api<EdgeDevice> = Api::all(client.clone());
    wait_for(
        "the in-cluster controller to register the devices",
        Duration::from_secs(120),
        || async {
            let registered: Vec<String> = devices_api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .filter(|d| {
                    d.status.as_ref().is_some_and(|s| {
                        condition::find(&s.conditions, REGISTERED).is_some_and(|c| c.is_true())
                    })
                })
                .map(ResourceExt::name_any)
                .collect();
            (registered == devices)
                .then_some(())
                .ok_or(format!("registered: {registered:?}"))
        },
    )
    .await;
    let roles: Api<ClusterRole> = Api::all(client.clone());
    wait_for("per-device RBAC", Duration::from_secs(120), || async {
        roles
            .get(&device_object_name("edge-1"))
            .await
            .map_err(|e| e.to_string())
    })
    .await;

    // The bootstrap joins every device: approved certificate requests, one per device,
    // then each agent reports as its device, online.
    wait_for(
        "the bootstrap to join every device",
        Duration::from_secs(240),
        || all_joined(&client, &devices),
    )
    .await;
    assert_one_approved_request_per_device(&client, &devices).await;
    let info = lab.info("edge-1");
    let state = info.agent_state.as_deref().expect("edge-1 is a device");
    let kubeconfig = state.join(join::KUBECONFIG_FILE);
    let mode = std::fs::metadata(&kubeconfig)
        .unwrap_or_else(|e| panic!("{}: {e}", kubeconfig.display()))
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{}", kubeconfig.display());
    assert!(info.manifests.join(self_pod::FILE).exists());

    // Messaging: every device's hub joins the cloud hub as a leaf node with the device's
    // own certificate; what a device sends upstream arrives there, and nothing it sends
    // in another device's name does.
    every_device_reaches_the_cloud_and_none_speaks_for_another(&lab, &client, &devices).await;
    let telemetry = Telemetry::deploy(&lab, &client).await;
    upstream_messages_wait_out_an_offline_reboot_and_reach_the_cloud_once(&telemetry).await;
    upstream_messages_the_hub_acknowledged_survive_its_kill(&telemetry).await;
    telemetry.remove().await;

    // A bootstrap pod may join its own device only.
    let token = bootstrap_token(&client, "edge-1").await;
    let as_pod = client_with_token(&lab, &token).await;
    a_request_for_another_device_is_denied(&client, &as_pod, "edge-1", "edge-2").await;
    a_second_pem_block_cannot_smuggle_another_identity(&client, &as_pod, "edge-1", "edge-2").await;

    // GitOps: examples/ applied with kustomize rolls out to every device, and once the
    // controller has written its part, kubectl sees no drift. Server-side apply too.
    let examples = examples();
    lab.kubectl(&[
        "apply",
        "-f",
        &examples.join("platform").display().to_string(),
    ]);
    lab.kubectl(&["apply", "-k", &examples.display().to_string()]);
    wait_for(
        "every example deployment Ready",
        Duration::from_secs(240),
        || all_ready(&client),
    )
    .await;
    the_examples_resolve_as_their_layers_say(&client, &devices).await;
    the_examples_anomalies_reach_the_cloud_from_every_device(&lab, &client, &devices).await;
    assert_no_drift(&lab);
    // Moving from client-side to server-side apply takes the fields over once (kubectl's
    // documented migration); from then on server-side apply is conflict-free.
    let kustomization = examples.display().to_string();
    lab.kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        &kustomization,
    ]);
    assert_no_drift(&lab);
    lab.kubectl(&["apply", "--server-side", "-k", &kustomization]);
    assert_no_drift(&lab);
    all_ready(&client).await.expect("still Ready");
    the_webhook_refuses_what_no_grant_allows(&client).await;

    // Upgrade: a changed setting rolls out.
    let mut values = lab_values(&lab);
    values["controller"] = json!({"offlineThreshold": "60s"});
    helm.upgrade("edgefleet", "edgefleet", &values);
    let deployment = lab.kubectl(&["get", "deployment", "-n", NS, CONTROLLER_NAME, "-o", "json"]);
    let deployment: serde_json::Value = serde_json::from_str(&deployment).expect("JSON");
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .is_some_and(|a| a.contains(&json!("--offline-threshold=60s"))),
        "{args}"
    );
    assert_eq!(helm.revisions("edgefleet"), [1, 2]);
    let logs = lab.kubectl(&["logs", "-n", NS, &format!("deployment/{CONTROLLER_NAME}")]);
    assert!(
        !logs.to_lowercase().contains("forbidden"),
        "{}",
        &logs[logs.len().saturating_sub(2000)..]
    );

    // The examples go away with kubectl, and the agents take their modules off.
    lab.kubectl(&["delete", "-k", &kustomization, "--wait=true"]);
    wait_for(
        "the agents to remove the examples' modules",
        Duration::from_secs(120),
        || async {
            let left: BTreeMap<String, usize> = devices_api
                .list(&ListParams::default())
                .await
                .map_err(|e| e.to_string())?
                .iter()
                .map(|d| {
                    let modules = d.status.as_ref().map_or(0, |s| s.modules.len());
                    (d.name_any(), modules)
                })
                .filter(|(_, modules)| *modules > 0)
                .collect();
            left.is_empty().then_some(()).ok_or(format!("{left:?}"))
        },
    )
    .await;

    // Uninstall: the controller's and the bootstrap's objects go; the agents the bootstrap
    // placed keep running (they are files on the devices); the CRDs stay (resource-policy
    // keep), and with them every device and deployment.
    helm.uninstall("edgefleet", true);
    for app in [CONTROLLER_NAME, BOOTSTRAP_NAME, HUB_NAME] {
        let selector = format!("{APP_NAME_LABEL}={app}");
        wait_for(
            &format!("the {app} objects to go"),
            Duration::from_secs(120),
            || async {
                let kinds = "deployment,daemonset,statefulset,serviceaccount,role,rolebinding,\
                             secret,configmap,service";
                let left = lab.kubectl(&["get", kinds, "-n", NS, "-l", &selector, "-o", "name"]);
                left.is_empty().then_some(()).ok_or(left)
            },
        )
        .await;
        let roles = lab.kubectl(&["get", "clusterrole", "-l", &selector, "-o", "name"]);
        assert!(roles.is_empty(), "{roles}");
    }
    assert!(info.manifests.join(self_pod::FILE).exists());
    for d in &devices {
        remove_agent(&lab, d);
    }
    helm.uninstall("edgefleet-crds", false);
    for (_, crd) in edgefleet_crds::schema::crds() {
        lab.kubectl(&["get", "crd", &crd.name_any()]);
    }
}

/// Publishes over MQTT on each device (as its modules will) and reads what arrives in the
/// cloud hub as its reader (over MQTT too: the messages crossed NATS's leaf connection). Then edge-1 publishes as edge-2 and then as itself: its own
/// message arrives and the one in edge-2's name never does (the cloud hub maps edge-1's
/// certificate to a user that may publish only under `edgefleet.dev.edge-1.up`).
async fn every_device_reaches_the_cloud_and_none_speaks_for_another(
    lab: &Lab,
    client: &Client,
    devices: &[String],
) {
    wait_for("the cloud hub Ready", Duration::from_secs(180), || async {
        let ready = lab.try_kubectl(&[
            "get",
            "pod",
            "-n",
            NS,
            "edgefleet-hub-0",
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        ]);
        let ready = String::from_utf8_lossy(&ready.stdout).into_owned();
        (ready == "True").then_some(()).ok_or(ready)
    })
    .await;
    let mut reader = CloudReader::subscribe(lab, client).await;
    // The cloud hub admits no anonymous client either.
    let anonymous = lab.try_run(&[
        "exec",
        "cloud-1",
        "--",
        "mosquitto_pub",
        "-h",
        "127.0.0.1",
        "-t",
        "x",
        "-m",
        "x",
    ]);
    assert!(
        !anonymous.status.success(),
        "the cloud hub admitted an anonymous client"
    );
    // Whether the device's hub took the message (it may not run yet).
    let send = |device: &str, as_device: &str, body: &str| {
        let topic = format!("edgefleet/dev/{as_device}/up/e2e");
        mqtt(
            lab,
            device,
            "mosquitto_pub",
            &["-t", &topic, "-m", body, "-q", "1"],
            false,
        )
        .status
        .success()
    };
    // Every message that arrives within `wait`, until one carries `body`; None if none did.
    async fn arrived(
        reader: &mut CloudReader,
        body: &str,
        wait: Duration,
    ) -> Option<Vec<(String, String)>> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut seen = Vec::new();
        while let Ok(Some((topic, payload))) =
            tokio::time::timeout_at(deadline, reader.messages.recv()).await
        {
            let done = payload == body;
            seen.push((topic, payload));
            if done {
                return Some(seen);
            }
        }
        None
    }
    for d in devices {
        // The device's hub starts after its agent, and its leaf connection is accepted once
        // the controller's accounts reach the cloud hub (kubelet updates a Secret volume
        // within a minute or two): until then what a device publishes stays on the device
        // (nothing is stored yet), so send again.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        loop {
            let body = format!("hello from {d} at {}", jiff::Timestamp::now());
            let sent = send(d, d, &body);
            if !sent {
                tokio::time::sleep(Duration::from_secs(2)).await;
            } else if let Some(seen) = arrived(&mut reader, &body, Duration::from_secs(3)).await {
                let (subject, _) = seen.last().expect("the message");
                assert_eq!(subject, &format!("edgefleet/dev/{d}/up/e2e"));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing from {d}'s hub reached the cloud hub in 180 s"
            );
        }
    }
    let spoof = format!("edge-1 as edge-2 at {}", jiff::Timestamp::now());
    assert!(
        send("edge-1", "edge-2", &spoof),
        "edge-1's hub took nothing"
    );
    let own = format!("edge-1 as itself at {}", jiff::Timestamp::now());
    assert!(send("edge-1", "edge-1", &own), "edge-1's hub took nothing");
    let seen = arrived(&mut reader, &own, Duration::from_secs(30))
        .await
        .expect("edge-1's own message arrives");
    assert!(
        seen.iter().all(|(_, body)| body != &spoof),
        "edge-1 published in edge-2's name: {seen:?}"
    );
}

/// A module on edge-1 whose readings a route sends upstream, and the cloud hub's stream
/// they land in. Each reading is `{"run":R,"i":I}`: `run` apart from earlier runs, `i` the
/// reading's number, so that a test checks which readings arrived, not only how many.
struct Telemetry<'a> {
    lab: &'a Lab,
    client: &'a Client,
    user: String,
    password: String,
    topic: String,
    run: i64,
    reader: String,
    subject: String,
}

impl<'a> Telemetry<'a> {
    const DEVICE: &'static str = "edge-1";
    const TEAM: &'static str = "e2e-upstream";
    /// Readings numbered from here on are the ones that showed the route works.
    const FIRST: usize = 100_000;

    /// Deploys the module with its upstream route and waits for a first reading in the
    /// cloud stream: the route is on the device and the leaf connection up.
    async fn deploy(lab: &'a Lab, client: &'a Client) -> Telemetry<'a> {
        fresh_namespace(client, Self::TEAM).await;
        let spec = json!({"image": "localhost/edgefleet-lab/busybox:1",
                          "command": ["sh", "-c", "while true; do sleep 1; done"]});
        apply(client, Self::TEAM, "EdgeModule", "sensor", spec).await;
        // Layered: it adds its module beside whatever the devices run, competing with nothing.
        apply(
            client,
            Self::TEAM,
            "EdgeDeployment",
            "telemetry",
            json!({"layered": true, "selector": {}, "modules": [{"name": "sensor", "routes": [
                {"output": "readings", "to": {"upstream": "readings"}}]}]}),
        )
        .await;
        let state = lab.info(Self::DEVICE).agent_state.expect("a device");
        let creds = credentials_dir(&state, Self::TEAM, "sensor");
        let read = |f: &str| std::fs::read_to_string(creds.join(f));
        wait_for(
            "the sensor's hub credentials on edge-1",
            Duration::from_secs(120),
            || async { read(PASSWORD_FILE).map(drop).map_err(|e| e.to_string()) },
        )
        .await;
        let t = Telemetry {
            lab,
            client,
            user: read(USERNAME_FILE).expect("user"),
            password: read(PASSWORD_FILE).expect("pw"),
            topic: format!(
                "{}/readings",
                mqtt_topic(&module_outputs(Self::TEAM, "sensor"))
            ),
            run: jiff::Timestamp::now().as_millisecond(),
            reader: reader_password(client).await,
            subject: format!("edgefleet.dev.{}.up.{}.readings", Self::DEVICE, Self::TEAM),
        };
        let attempt = std::sync::atomic::AtomicUsize::new(Self::FIRST);
        wait_for(
            "a first reading in the cloud stream",
            Duration::from_secs(180),
            || async {
                t.send(
                    attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    1,
                );
                t.cloud()
                    .and_then(|c| (c.messages > 0).then_some(()).ok_or("none yet".into()))
            },
        )
        .await;
        t
    }

    /// Sends readings `from..from + count` as the sensor, at MQTT QoS 1; true when the hub
    /// acknowledged every one of them (mosquitto_pub waits for each PUBACK).
    fn send(&self, from: usize, count: usize) -> bool {
        let lines: String = (from..from + count)
            .map(|i| format!("{{\"run\":{},\"i\":{i}}}\n", self.run))
            .collect();
        let script = format!(
            "printf '%s' '{lines}' | mosquitto_pub -h 127.0.0.1 -p {MQTT_PORT} -u '{}' -P '{}' -q 1 -t '{}' -l",
            self.user, self.password, self.topic
        );
        self.lab
            .try_run(&["exec", Self::DEVICE, "--", "sh", "-c", &script])
            .status
            .success()
    }

    /// What the cloud stream holds under the sensor's subject.
    fn cloud(&self) -> Result<CloudStream, String> {
        let probe = env!("CARGO_BIN_EXE_cloud-stream");
        cloud_stream(self.lab, probe, &self.reader, &self.subject)
    }

    /// The numbers of this run's readings in the cloud stream, below [`Self::FIRST`], once
    /// every message there is distinct; an error names a duplicate.
    fn arrived(&self) -> Result<std::collections::BTreeSet<usize>, String> {
        let c = self.cloud()?;
        if c.messages != c.distinct {
            return Err(format!(
                "{} messages but {} distinct: the cloud kept a reading twice",
                c.messages, c.distinct
            ));
        }
        Ok(c.payloads
            .iter()
            .filter_map(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .filter(|v| v["run"].as_i64() == Some(self.run))
            .filter_map(|v| usize::try_from(v["i"].as_u64()?).ok())
            .filter(|i| *i < Self::FIRST)
            .collect())
    }

    /// Waits until the cloud holds exactly `want` of this run's readings, each once.
    async fn wait_arrived(&self, what: &str, want: &std::collections::BTreeSet<usize>) {
        wait_for(what, Duration::from_secs(180), || async {
            let got = self.arrived()?;
            let missing = want.difference(&got).count();
            let extra: Vec<_> = got.difference(want).take(5).collect();
            (missing == 0 && extra.is_empty())
                .then_some(())
                .ok_or(format!(
                    "{} of {} readings, {missing} missing, unexpected {extra:?}",
                    got.len(),
                    want.len()
                ))
        })
        .await;
    }

    /// Waits until edge-1's status says: connected upstream, nothing waiting, nothing lost.
    async fn wait_drained(&self) {
        let devices: Api<EdgeDevice> = Api::all(self.client.clone());
        wait_for(
            "edge-1's hub status: connected, no backlog",
            Duration::from_secs(120),
            || async {
                let d = devices.get(Self::DEVICE).await.map_err(|e| e.to_string())?;
                let hub = d.status.and_then(|s| s.hub);
                match &hub {
                    Some(h)
                        if h.connected
                            && h.backlog_messages == 0
                            && h.expired == 0
                            && h.full == 0 =>
                    {
                        Ok(())
                    }
                    _ => Err(format!("{hub:?}")),
                }
            },
        )
        .await;
    }

    async fn remove(self) {
        let api: Api<EdgeDeployment> = Api::namespaced(self.client.clone(), Self::TEAM);
        let _ = api.delete("telemetry", &DeleteParams::default()).await;
    }
}

/// Store-and-forward: edge-1 stays offline for minutes while its sensor keeps sending
/// readings upstream through a route, and is rebooted halfway; once edge-1 is back, the
/// cloud hub's stream holds every reading exactly once (the device kept them on its disk
/// until the cloud acknowledged each, and message ids keep a resent one from counting
/// twice).
async fn upstream_messages_wait_out_an_offline_reboot_and_reach_the_cloud_once(t: &Telemetry<'_>) {
    /// Readings per chunk, and chunks on each side of the reboot.
    const EACH: usize = 30;
    const CHUNKS: usize = 5;
    /// Between chunks: with the reboot, edge-1 is offline for two and a half minutes.
    const PAUSE: Duration = Duration::from_secs(15);
    let lab = t.lab;
    let device = Telemetry::DEVICE;
    // Whatever of the first readings is still on its way arrives before the count.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = t.cloud().expect("the stream").messages;

    lab.run(&["offline", device]);
    let offline_at = std::time::Instant::now();
    for chunk in 0..CHUNKS {
        assert!(
            t.send(chunk * EACH, EACH),
            "edge-1's hub took no reading while offline"
        );
        tokio::time::sleep(PAUSE).await;
    }
    lab.run(&["reboot", device]);
    let after = CHUNKS * EACH;
    wait_for(
        "edge-1's hub to take readings again after the reboot",
        Duration::from_secs(180),
        || async { t.send(after, EACH).then_some(()).ok_or("not yet") },
    )
    .await;
    for chunk in 1..CHUNKS {
        tokio::time::sleep(PAUSE).await;
        assert!(
            t.send(after + chunk * EACH, EACH),
            "edge-1's hub took no reading after the reboot"
        );
    }
    let offline = t.cloud().expect("the stream").messages;
    assert_eq!(
        offline, before,
        "readings reached the cloud while edge-1 was offline"
    );
    println!(
        "edge-1 offline for {:.0?} with readings flowing",
        offline_at.elapsed()
    );
    lab.run(&["online", device]);
    t.wait_arrived(
        "every reading in the cloud stream, once",
        &(0..2 * CHUNKS * EACH).collect(),
    )
    .await;
    t.wait_drained().await;
}

/// The device's hub killed while the sensor sends, with edge-1 offline so that what the hub
/// took waits in its store: kubelet starts the hub again from its manifest, and once edge-1
/// is back every reading the hub acknowledged reaches the cloud, once. (A reading the hub
/// never acknowledged may be lost; the sensor knows, as MQTT QoS 1 tells it.)
async fn upstream_messages_the_hub_acknowledged_survive_its_kill(t: &Telemetry<'_>) {
    /// Readings per MQTT connection; numbered from `FROM`, apart from the other tests'.
    const EACH: usize = 25;
    const FROM: usize = 10_000;
    /// Acknowledged chunks before the kill, and after the hub is back, before the end.
    const AROUND: usize = 8;
    let lab = t.lab;
    let device = Telemetry::DEVICE;
    let hub = lab.running_task(device, HUB_NAME).expect("the hub runs");
    lab.run(&["offline", device]);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked_chunks = std::sync::atomic::AtomicUsize::new(0);
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "no {what} in 120 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // One thread sends chunk after chunk, as a sensor would, never resending one; this
    // thread kills the hub while they flow.
    let (acknowledged, sent) = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            let (mut acknowledged, mut sent) = (Vec::new(), Vec::new());
            let mut from = FROM;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if t.send(from, EACH) {
                    acknowledged.extend(from..from + EACH);
                    acked_chunks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                sent.extend(from..from + EACH);
                from += EACH;
            }
            (acknowledged, sent)
        });
        let acked = || acked_chunks.load(std::sync::atomic::Ordering::Relaxed);
        wait("readings flowing", &|| acked() >= AROUND);
        let status = std::process::Command::new("kill")
            .args(["-KILL", &hub.pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "the hub was not killed");
        let killed_at = acked();
        wait("hub back after its kill", &|| {
            lab.running_task(device, HUB_NAME)
                .is_some_and(|h| h.pid != hub.pid)
        });
        wait("readings taken by the new hub", &|| {
            acked() >= killed_at + AROUND
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sender.join().expect("the sender")
    });
    let acknowledged: std::collections::BTreeSet<usize> = acknowledged.into_iter().collect();
    let sent: std::collections::BTreeSet<usize> = sent.into_iter().collect();
    println!(
        "hub killed mid-stream: {} readings sent, {} acknowledged by the hub",
        sent.len(),
        acknowledged.len()
    );
    lab.run(&["online", device]);
    wait_for(
        "every acknowledged reading in the cloud stream, once",
        Duration::from_secs(180),
        || async {
            let got: std::collections::BTreeSet<usize> =
                t.arrived()?.into_iter().filter(|i| *i >= FROM).collect();
            let missing: Vec<_> = acknowledged.difference(&got).take(5).collect();
            let foreign: Vec<_> = got.difference(&sent).take(5).collect();
            (missing.is_empty() && foreign.is_empty())
                .then_some(())
                .ok_or(format!(
                    "{} arrived of {} acknowledged; missing {missing:?}, never sent {foreign:?}",
                    got.len(),
                    acknowledged.len()
                ))
        },
    )
    .await;
    t.wait_drained().await;
}

/// The sample modules at work: on every device the sensor's readings are routed to the
/// filter, its output to the model, and the model's anomalies upstream, over MQTT between
/// modules in their own network namespaces; the cloud hub's reader sees anomalies from
/// every device (the sensor spikes every 30 readings, one a second).
async fn the_examples_anomalies_reach_the_cloud_from_every_device(
    lab: &Lab,
    client: &Client,
    devices: &[String],
) {
    let mut reader = CloudReader::subscribe(lab, client).await;
    let mut heard: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while heard.len() < devices.len() {
        let next = tokio::time::timeout_at(deadline, reader.messages.recv()).await;
        let Ok(Some((topic, payload))) = next else {
            panic!("anomalies in the cloud from {heard:?} only, not from every one of {devices:?}");
        };
        if let Some(device) = topic
            .strip_prefix("edgefleet/dev/")
            .and_then(|t| t.strip_suffix("/up/fleet-demo/anomalies"))
        {
            let anomaly: serde_json::Value = serde_json::from_str(&payload)
                .unwrap_or_else(|e| panic!("{topic}: {payload:?} is no anomaly: {e}"));
            assert!(
                anomaly["celsius"].as_f64().is_some_and(|c| c > 30.0),
                "{topic}: {anomaly}"
            );
            heard.insert(device.to_owned(), anomaly);
        }
    }
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// A run cut short earlier may have left releases and agents behind, and earlier tests
/// applied the CRDs themselves while Helm must own them: all of that goes first.
fn start_from_a_bare_cluster(lab: &Lab, helm: &Helm, devices: &[String]) {
    for release in ["edgefleet", "edgefleet-crds"] {
        if helm.installed(release) {
            helm.uninstall(release, true);
        }
    }
    for d in devices {
        remove_agent(lab, d);
    }
    let bootstrap = format!("{APP_NAME_LABEL}={BOOTSTRAP_NAME}");
    lab.kubectl(&["delete", "csr", "-l", &bootstrap, "--ignore-not-found"]);
    let crds: Vec<String> = edgefleet_crds::schema::crds()
        .iter()
        .map(|(_, crd)| crd.name_any())
        .collect();
    let mut delete = vec!["delete", "crd", "--ignore-not-found", "--wait=true"];
    delete.extend(crds.iter().map(String::as_str));
    lab.kubectl(&delete);
    lab.kubectl(&[
        "delete",
        "clusterrole,clusterrolebinding",
        "-l",
        &format!("{APP_NAME_LABEL} in ({CONTROLLER_NAME},{BOOTSTRAP_NAME})"),
        "--ignore-not-found",
    ]);
}

async fn assert_one_approved_request_per_device(client: &Client, devices: &[String]) {
    let csrs = Api::<CertificateSigningRequest>::all(client.clone())
        .list(&ListParams::default().labels(&format!("{APP_NAME_LABEL}={BOOTSTRAP_NAME}")))
        .await
        .expect("list the bootstrap's requests");
    let approved: Vec<&CertificateSigningRequest> = csrs
        .iter()
        .filter(|c| conditions(c).iter().any(|x| x.type_ == "Approved"))
        .collect();
    let mut named: Vec<String> = approved
        .iter()
        .map(|c| c.labels()[DEVICE_LABEL].clone())
        .collect();
    named.sort();
    assert_eq!(named, devices);
    for c in approved {
        let [only] = conditions(c) else {
            panic!("{}: {:?}", c.name_any(), conditions(c));
        };
        assert_eq!(only.reason.as_deref(), Some(JOIN_APPROVED_REASON));
        assert_eq!(
            c.spec.username.as_deref(),
            Some(bootstrap_user(NS).as_str())
        );
    }
}

fn conditions(csr: &CertificateSigningRequest) -> &[CertificateSigningRequestCondition] {
    csr.status
        .as_ref()
        .and_then(|s| s.conditions.as_deref())
        .unwrap_or_default()
}

/// A token of the bootstrap's service account bound to its pod on `node`, as that pod
/// holds it.
async fn bootstrap_token(client: &Client, node: &str) -> String {
    let pods = Api::<Pod>::namespaced(client.clone(), NS)
        .list(
            &ListParams::default()
                .labels(&format!("{APP_NAME_LABEL}={BOOTSTRAP_NAME}"))
                .fields(&format!("spec.nodeName={node}")),
        )
        .await
        .expect("list the bootstrap pods");
    let pod = pods.items.first().expect("a bootstrap pod on the node");
    pod_bound_token(client, NS, BOOTSTRAP_NAME, pod).await
}

/// A client of the lab's apiserver that presents `token` and nothing else.
async fn client_with_token(lab: &Lab, token: &str) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(lab.kubeconfig()).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    config.auth_info = serde_json::from_value(json!({"token": token})).expect("auth info");
    Client::try_from(config).expect("client")
}

/// A PEM certificate request naming `device`, as its bootstrap pod would make it.
fn request_for(device: &str) -> String {
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    join::certificate_request(device, &key).expect("a certificate request")
}

/// Sends `pem` for `device` as the certificate request `name` with `as_pod`'s identity, as
/// the bootstrap sends its own, and waits for the controller's decision: its Approved or
/// Denied condition.
async fn decided(
    admin: &Client,
    as_pod: &Client,
    name: &str,
    device: &str,
    pem: String,
) -> CertificateSigningRequestCondition {
    Api::<CertificateSigningRequest>::all(as_pod.clone())
        .create(
            &PostParams::default(),
            &join::signing_request(name, device, pem),
        )
        .await
        .unwrap_or_else(|e| panic!("creating the request {name} as the bootstrap pod: {e}"));
    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    wait_for(
        &format!("the request {name} to be decided"),
        Duration::from_secs(60),
        || async {
            let csr = csrs.get(name).await.map_err(|e| e.to_string())?;
            conditions(&csr)
                .iter()
                .find(|c| c.type_ == "Approved" || c.type_ == "Denied")
                .cloned()
                .ok_or("undecided".to_owned())
        },
    )
    .await
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", jiff::Timestamp::now().as_second())
}

/// A request for `other` with a token bound to `own`'s bootstrap pod: denied, with the
/// reason.
async fn a_request_for_another_device_is_denied(
    admin: &Client,
    as_pod: &Client,
    own: &str,
    other: &str,
) {
    let name = unique(&format!("forged-{other}"));
    let verdict = decided(admin, as_pod, &name, other, request_for(other)).await;
    assert_eq!(verdict.type_, "Denied", "{verdict:?}");
    let says = format!("runs on node {own}, so it may join only that node, not {other}");
    assert!(
        verdict
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&says)),
        "{verdict:?}"
    );
    delete_request(admin, &name).await;
}

/// The request that once joined any identity: a first PEM block naming `own` (the token's
/// own node) closed by a wrong END line, then a second naming `other`. Go's PEM reader skips
/// the badly closed block, so Kubernetes reads (and would sign) the second: denied, and no
/// certificate is ever issued for it.
async fn a_second_pem_block_cannot_smuggle_another_identity(
    admin: &Client,
    as_pod: &Client,
    own: &str,
    other: &str,
) {
    let first = request_for(own).replace("-----END CERTIFICATE REQUEST-----", "-----END X-----");
    let name = unique(&format!("two-blocks-{other}"));
    let verdict = decided(admin, as_pod, &name, other, first + &request_for(other)).await;
    assert_eq!(verdict.type_, "Denied", "{verdict:?}");
    assert!(
        verdict
            .message
            .as_deref()
            .is_some_and(|m| m.contains("-----END X-----")),
        "{verdict:?}"
    );
    // Nothing changes the verdict later: no certificate after a while, no second condition.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let csr = Api::<CertificateSigningRequest>::all(admin.clone())
        .get(&name)
        .await
        .expect("the request");
    let status = csr.status.clone().unwrap_or_default();
    assert!(status.certificate.is_none(), "{status:?}");
    let types: Vec<&str> = conditions(&csr).iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, ["Denied"], "{status:?}");
    delete_request(admin, &name).await;
}

async fn delete_request(admin: &Client, name: &str) {
    Api::<CertificateSigningRequest>::all(admin.clone())
        .delete(name, &DeleteParams::default())
        .await
        .unwrap_or_else(|e| panic!("delete the request {name}: {e}"));
}

/// What the examples' layers resolve to: every module on edge-1 and edge-2, the Berlin
/// layer's filter setting on edge-1, the Jetson deployment's model on edge-2, and the base
/// deployment lost on the device the Jetson one outranks it on.
async fn the_examples_resolve_as_their_layers_say(client: &Client, devices: &[String]) {
    let desired = |device: &'static str| async move {
        let dev = Api::<EdgeDevice>::all(client.clone())
            .get(device)
            .await
            .expect("the device");
        let modules = dev
            .spec
            .desired
            .map(|d| d.modules.clone())
            .unwrap_or_default();
        modules
            .into_iter()
            .map(|m| (m.name.clone(), m))
            .collect::<BTreeMap<String, ResolvedModule>>()
    };
    let env = |m: &ResolvedModule, name: &str| {
        m.spec
            .env
            .iter()
            .find(|e| e.name == name)
            .map(|e| e.value.clone())
    };
    let (edge1, edge2) = (desired("edge-1").await, desired("edge-2").await);
    for modules in [&edge1, &edge2] {
        let names: Vec<&str> = modules.keys().map(String::as_str).collect();
        assert_eq!(names, ["filter", "ml-model", "sensor"]);
    }
    assert_eq!(
        env(&edge1["filter"], "FILTER_MAX_C").as_deref(),
        Some("60"),
        "the Berlin layer tunes the filter"
    );
    assert_eq!(
        env(&edge2["ml-model"], "MODEL_THRESHOLD").as_deref(),
        Some("2.5"),
        "the Jetson deployment owns edge-2"
    );
    let base = Api::<EdgeDeployment>::namespaced(client.clone(), "fleet-demo")
        .get("fleet-base")
        .await
        .expect("fleet-base")
        .status
        .expect("fleet-base's status");
    let targeted = u32::try_from(devices.len() - 1).expect("a small fleet");
    assert_eq!((base.targeted, base.lost), (targeted, 1), "{base:?}");
}

/// `kubectl diff -k examples/` is clean: edgefleet never writes what a user applies.
fn assert_no_drift(lab: &Lab) {
    let out = lab.try_kubectl(&["diff", "-k", &examples().display().to_string()]);
    assert!(
        out.status.success(),
        "kubectl diff -k examples/ shows drift:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The chart's admission webhook, reached through its Service: fleet-demo's grant allows
/// the host's network but no host device, so the apiserver refuses a module asking for one,
/// with the grant's reason.
async fn the_webhook_refuses_what_no_grant_allows(client: &Client) {
    let spec =
        json!({"image": "localhost/edgefleet/sensor:v1", "devices": [{"hostPath": "/dev/ttyS0"}]});
    let why = wait_for(
        "the chart's webhook to refuse a host device",
        Duration::from_secs(60),
        || async {
            match try_apply(
                client,
                "fleet-demo",
                "EdgeModule",
                "serial",
                spec.clone(),
                true,
            )
            .await
            {
                Ok(()) => Err("admitted"),
                Err(why) => Ok(why),
            }
        },
    )
    .await;
    assert!(
        why.contains("grant fleet-demo: module \"serial\" asks for host devices"),
        "{why}"
    );
}
