//! The real agent on the lab's devices, with the real controller: modules deployed through
//! EdgeModule and EdgeDeployment run as static pods on exactly the targeted devices, their
//! health comes back from the device's own container runtime, and they survive going
//! offline and a reboot while offline. Run by `make e2e` (they need the lab and the images).

use std::time::{Duration, Instant};

use edgefleet_agent::render::config_dir;
use edgefleet_crds::condition;
use edgefleet_crds::device::conditions::{APPLIED, READY};
use edgefleet_crds::{EdgeDeployment, EdgeDevice, FailureSample, ModuleStatus, RuntimeStatus};
use edgefleet_e2e::{
    ControllerProcess, Lab, RealAgents, apply, controller_binary, fresh_namespace,
    install_and_enrol, remove_every_deployment, wait_for,
};
use kube::api::DeleteParams;
use kube::{Api, Client};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const BUSYBOX: &str = "localhost/edgefleet-lab/busybox:1";

struct Setup {
    lab: Lab,
    client: Client,
    ns: String,
    _ctrl: ControllerProcess,
    _agents: RealAgents,
}

async fn setup(ns: &str, port: u16, devices: &[&str]) -> Setup {
    let lab = Lab::get();
    let client = lab.client().await;
    install_and_enrol(&client).await;
    remove_every_deployment(&client).await;
    let ns = fresh_namespace(&client, ns).await;
    let ctrl = ControllerProcess::start(
        &controller_binary(),
        &lab,
        port,
        &["--leader-election", "false"],
    );
    let agents = RealAgents::install(&lab, &client, devices).await;
    Setup {
        lab,
        client,
        ns,
        _ctrl: ctrl,
        _agents: agents,
    }
}

/// A module that runs until it is stopped.
async fn looping_module(client: &Client, ns: &str, name: &str) {
    let spec = json!({"image": BUSYBOX, "command": ["sh", "-c", "while true; do sleep 1; done"]});
    apply(client, ns, "EdgeModule", name, spec).await;
}

fn running(m: &ModuleStatus) -> bool {
    m.runtime_status == RuntimeStatus::Running
}

fn module_of<'a>(d: &'a EdgeDevice, name: &str) -> Option<&'a ModuleStatus> {
    d.status.as_ref()?.modules.iter().find(|m| m.name == name)
}

/// Waits until the device reports, for its current desired revision, a module that
/// satisfies `check`.
async fn wait_module(
    client: &Client,
    device: &str,
    module: &str,
    what: &str,
    check: impl Fn(&ModuleStatus) -> bool,
) -> ModuleStatus {
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    wait_for(&format!("{device}: {module} {what}"), WAIT, || async {
        let d = devices.get(device).await.map_err(|e| e.to_string())?;
        let desired = d.spec.desired.as_ref().map(|x| x.revision.clone());
        let applied = d.status.as_ref().and_then(|s| s.applied_revision.clone());
        match module_of(&d, module) {
            Some(m) if desired == applied && check(m) => Ok(m.clone()),
            other => Err(format!(
                "desired {desired:?} applied {applied:?}: {other:?}"
            )),
        }
    })
    .await
}

/// Waits until a deployment counts `failed` failing devices and its failure sample holds
/// one that `expected` recognizes.
async fn wait_failures(
    deployments: &Api<EdgeDeployment>,
    name: &str,
    failed: u32,
    expected: impl Fn(&FailureSample) -> bool,
) {
    wait_for(
        &format!("{name} to count {failed} failing devices"),
        WAIT,
        || async {
            let d = deployments.get(name).await.map_err(|e| e.to_string())?;
            let st = d.status.unwrap_or_default();
            let named = st.failures.iter().any(&expected);
            (st.failed == failed && named)
                .then_some(())
                .ok_or(format!("{st:?}"))
        },
    )
    .await;
}

fn kill(pid: u32) {
    let ok = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "cannot kill {pid}");
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn modules_run_where_targeted_and_report_health() {
    let s = setup("e2e-agent-health", 18120, &["edge-1", "edge-2", "edge-3"]).await;
    let (client, ns) = (&s.client, s.ns.as_str());
    apply(
        client,
        ns,
        "EdgeModule",
        "beat",
        json!({
            "image": BUSYBOX, "command": ["sh", "-c", "while true; do sleep 1; done"],
            "config": [{"name": "beat.conf", "content": "interval = 1"}],
        }),
    )
    .await;
    // site=berlin: edge-1 and edge-3, not edge-2.
    apply(
        client,
        ns,
        "EdgeDeployment",
        "berlin",
        json!({
            "priority": 10, "selector": {"matchLabels": {"site": "berlin"}},
            "modules": [{"name": "beat"}],
        }),
    )
    .await;
    for dev in ["edge-1", "edge-3"] {
        let m = wait_module(client, dev, "beat", "running", running).await;
        assert!(
            m.image_id.is_some_and(|i| i.starts_with("sha256:")),
            "image id reported"
        );
        assert!(
            s.lab.running_task(dev, "beat").is_some(),
            "beat runs on {dev}'s containerd"
        );
    }
    let edge2: EdgeDevice = Api::all(client.clone())
        .get("edge-2")
        .await
        .expect("edge-2");
    assert!(
        module_of(&edge2, "beat").is_none(),
        "edge-2 is not targeted"
    );
    assert!(
        s.lab.running_task("edge-2", "beat").is_none(),
        "nothing runs on edge-2"
    );
    // The config file reached the module.
    let state = s
        .lab
        .info("edge-1")
        .agent_state
        .expect("edge-1 is a device");
    let conf = config_dir(&state, &format!("{ns}/beat")).join("beat.conf");
    let cat = s.lab.exec("edge-1", &["cat", &conf.display().to_string()]);
    assert_eq!(cat.trim(), "interval = 1");

    // Killing the module's process: kubelet restarts it, the agent reports the restart.
    let before = s.lab.running_task("edge-1", "beat").expect("beat task");
    kill(before.pid);
    let m = wait_module(client, "edge-1", "beat", "restarted and running", |m| {
        m.restart_count >= 1 && running(m)
    })
    .await;
    assert_eq!(m.exit_code, Some(137), "killed by SIGKILL");
    assert!(m.last_exit_time.is_some());

    // A module that exits 1: backoff with its exit code, and the deployment counts it.
    apply(
        client,
        ns,
        "EdgeModule",
        "crasher",
        json!({
            "image": BUSYBOX, "command": ["sh", "-c", "sleep 1; exit 1"],
        }),
    )
    .await;
    apply(
        client,
        ns,
        "EdgeDeployment",
        "berlin",
        json!({
            "priority": 10, "selector": {"matchLabels": {"site": "berlin"}},
            "modules": [{"name": "beat"}, {"name": "crasher"}],
        }),
    )
    .await;
    let m = wait_module(client, "edge-3", "crasher", "failing", |m| {
        m.runtime_status.is_failure()
    })
    .await;
    assert_eq!(m.exit_code, Some(1));
    assert_eq!(m.runtime_status, RuntimeStatus::Backoff);
    let deployments: Api<EdgeDeployment> = Api::namespaced(client.clone(), ns);
    wait_failures(&deployments, "berlin", 2, |f| {
        f.module == "crasher" && f.reason.contains("exit")
    })
    .await;
    let dev: EdgeDevice = Api::all(client.clone())
        .get("edge-3")
        .await
        .expect("edge-3");
    let ready = condition::find(&dev.status.as_ref().expect("status").conditions, READY).cloned();
    assert!(ready.is_some_and(|c| !c.is_true() && c.message.contains("crasher")));

    // Deleting the deployment removes the modules from the devices.
    deployments
        .delete("berlin", &DeleteParams::default())
        .await
        .expect("delete");
    wait_for("edge-1's modules to be gone", WAIT, || async {
        let manifests = s.lab.info("edge-1").manifests;
        let left: Vec<_> = std::fs::read_dir(&manifests)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("-module-"))
            .collect();
        let running = s.lab.running_task("edge-1", "beat");
        (left.is_empty() && running.is_none())
            .then_some(())
            .ok_or(format!("{left:?} {running:?}"))
    })
    .await;
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn modules_survive_offline_and_a_reboot_while_offline() {
    let s = setup("e2e-agent-offline", 18121, &["edge-2"]).await;
    let (client, ns, lab) = (&s.client, s.ns.as_str(), &s.lab);
    looping_module(client, ns, "beat").await;
    apply(
        client,
        ns,
        "EdgeDeployment",
        "jetson",
        json!({
            "priority": 10, "selector": {"matchLabels": {"hardware": "jetson"}},
            "modules": [{"name": "beat"}],
        }),
    )
    .await;
    wait_module(client, "edge-2", "beat", "running", running).await;
    let before = lab.running_task("edge-2", "beat").expect("beat task");
    let agent_before = lab
        .running_task("edge-2", "edgefleet-agent")
        .expect("agent task");

    lab.run(&["offline", "edge-2"]);
    // Offline: the module keeps running, the same process, and so does the agent.
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        lab.running_task("edge-2", "beat"),
        Some(before.clone()),
        "same task offline"
    );
    assert!(
        lab.running_task("edge-2", "edgefleet-agent").is_some(),
        "agent runs offline"
    );

    // A reboot while offline: kubelet brings the agent back from its static pod, the agent
    // starts from its journal, and the module runs again, all with no apiserver.
    let rebooted = Instant::now();
    lab.run(&["reboot", "edge-2"]);
    let after = wait_for(
        "the module back after the reboot, still offline",
        WAIT,
        || async {
            let link = lab.run(&["info", "edge-2"]);
            assert!(
                link.contains("link=offline"),
                "edge-2 must still be offline"
            );
            match lab.running_task("edge-2", "beat") {
                Some(t) if t.pid != before.pid => Ok(t),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    wait_for("the agent back after the reboot", WAIT, || async {
        match lab.running_task("edge-2", "edgefleet-agent") {
            Some(t) if t.pid != agent_before.pid => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // A few of the agent's passes later the module still runs: the agent started from its
    // journal (without it, it would know no module and remove the manifest).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        lab.running_task("edge-2", "beat").map(|t| t.pid),
        Some(after.pid)
    );

    // A change made while the device is away reaches it once it is back.
    apply(
        client,
        ns,
        "EdgeDeployment",
        "jetson",
        json!({
            "priority": 10, "selector": {"matchLabels": {"hardware": "jetson"}},
            "modules": [{"name": "beat"}, {"name": "late", "moduleRef": "beat"}],
        }),
    )
    .await;

    // Reconnect: the device reports the module's new start within seconds.
    lab.run(&["online", "edge-2"]);
    let reconnected = Instant::now();
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let since = jiff::Timestamp::now() - rebooted.elapsed();
    wait_for(
        "the post-reboot state reported after reconnecting",
        Duration::from_secs(30),
        || async {
            let d = devices.get("edge-2").await.map_err(|e| e.to_string())?;
            let started = module_of(&d, "beat").and_then(|m| m.last_start_time.clone());
            match started {
                Some(t)
                    if t.0
                        >= since.round(jiff::Unit::Second).unwrap_or(since)
                            - jiff::SignedDuration::from_secs(1) =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    eprintln!(
        "e2e: reported {:.1}s after reconnecting",
        reconnected.elapsed().as_secs_f64()
    );
    wait_module(
        client,
        "edge-2",
        "late",
        "running (added while offline)",
        running,
    )
    .await;
    let d = devices.get("edge-2").await.expect("edge-2");
    let applied = condition::find(&d.status.as_ref().expect("status").conditions, APPLIED).cloned();
    assert!(applied.is_some_and(|c| c.is_true()));
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn a_state_the_agent_cannot_apply_is_rejected_whole() {
    let s = setup("e2e-agent-reject", 18122, &["edge-3"]).await;
    let (client, ns, lab) = (&s.client, s.ns.as_str(), &s.lab);
    looping_module(client, ns, "beat").await;
    let beta = |modules: Value| {
        json!({
            "priority": 10, "selector": {"matchLabels": {"channel": "beta"}}, "modules": modules,
        })
    };
    apply(
        client,
        ns,
        "EdgeDeployment",
        "beta",
        beta(json!([{"name": "beat"}])),
    )
    .await;
    wait_module(client, "edge-3", "beat", "running", running).await;
    let good = lab.running_task("edge-3", "beat").expect("beat task");

    // What the controller ships is always within the device's limits (a module over them
    // is held at the controller), and the apiserver prunes fields the schema doesn't know,
    // so the state the agent can't apply is written here by hand: one more module under a
    // revision that is not its modules' hash, as a tampered or torn write would look. The
    // controller is stopped so that it doesn't put its own back at once.
    drop(s._ctrl);
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let mut desired = devices
        .get("edge-3")
        .await
        .expect("edge-3")
        .spec
        .desired
        .map(|d| serde_json::to_value(d).expect("json"))
        .expect("a desired state");
    let mut newer = desired["modules"][0].clone();
    newer["name"] = json!("newer");
    newer["deployment"] = json!(format!("{ns}/other"));
    desired["modules"]
        .as_array_mut()
        .expect("modules")
        .push(newer);
    desired["revision"] = json!("feedfacefeedface");
    devices
        .patch(
            "edge-3",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"desired": desired}})),
        )
        .await
        .expect("an administrator writes spec.desired");
    let applied = wait_for("edge-3 to reject the desired state", WAIT, || async {
        let d = devices.get("edge-3").await.map_err(|e| e.to_string())?;
        let st = d.status.clone().unwrap_or_default();
        let cond = condition::find(&st.conditions, APPLIED).cloned();
        match cond {
            Some(c)
                if st.rejected_revision.as_deref() == Some("feedfacefeedface")
                    && c.reason == "Rejected" =>
            {
                Ok(c)
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        applied.message.contains("does not match its modules"),
        "{}",
        applied.message
    );
    // The rejection is charged to the deployment that changed, not to `beta`.
    let st = devices.get("edge-3").await.expect("edge-3").status;
    assert_eq!(
        st.and_then(|s| s.rejected_deployments),
        Some(vec![format!("{ns}/other")])
    );
    assert_eq!(
        lab.running_task("edge-3", "beat"),
        Some(good),
        "the last good state keeps running"
    );
    assert!(lab.running_task("edge-3", "newer").is_none());

    // The controller is back and writes the state it computes: the agent takes it.
    let _ctrl = ControllerProcess::start(
        &controller_binary(),
        lab,
        18122,
        &["--leader-election", "false"],
    );
    wait_for("edge-3 to apply again", WAIT, || async {
        let d = devices.get("edge-3").await.map_err(|e| e.to_string())?;
        let st = d.status.clone().unwrap_or_default();
        let ok = condition::find(&st.conditions, APPLIED).is_some_and(|c| c.is_true());
        (ok && st.rejected_revision.is_none())
            .then_some(())
            .ok_or(format!("{st:?}"))
    })
    .await;
}
