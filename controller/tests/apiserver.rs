//! The controller as a process against the lab's real apiserver. Devices are the lab's
//! Nodes; their agents are simulated by writing status and Leases under each device's own
//! identity, the way the real agent does. Run by `make e2e` (they need the lab).

use std::path::Path;
use std::time::Duration;

use edgefleet_crds::condition;
use edgefleet_crds::deployment::conditions::{READY, RECONCILING, STALLED};
use edgefleet_crds::identity::{DEVICES_GROUP, LEADER_LEASE, device_object_name, device_user};
use edgefleet_crds::{EdgeDeployment, EdgeDevice, EdgeModule, TargetingOutcome};
use edgefleet_e2e::{
    Agent, ControllerProcess, Lab, enrol_lab_devices, fresh_namespace, install_and_enrol,
    remove_every_deployment, wait_for,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_edgefleet-controller");
const WAIT: Duration = Duration::from_secs(60);

async fn setup(port: u16, args: &[&str]) -> (Lab, Client, ControllerProcess) {
    let lab = Lab::get();
    let client = lab.client().await;
    install_and_enrol(&client).await;
    remove_every_deployment(&client).await;
    let ctrl = ControllerProcess::start(Path::new(BIN), &lab, port, args);
    (lab, client, ctrl)
}

fn apply_yaml<K>(api: &Api<K>, yaml: &str) -> impl std::future::Future<Output = K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let value: serde_json::Value = serde_yaml::from_str(yaml).expect("fixture YAML");
    let name = value["metadata"]["name"].as_str().expect("name").to_owned();
    let api = api.clone();
    async move {
        api.patch(
            &name,
            &PatchParams::apply("e2e-user").force(),
            &Patch::Apply(&value),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply {name}: {e}"))
    }
}

async fn module(ns: &Api<EdgeModule>, name: &str, image: &str) {
    apply_yaml(
        ns,
        &format!("apiVersion: edgefleet.io/v1alpha1\nkind: EdgeModule\nmetadata: {{name: {name}}}\nspec: {{image: '{image}'}}"),
    )
    .await;
}

async fn deployment(api: &Api<EdgeDeployment>, name: &str, spec: &str) {
    apply_yaml(
        api,
        &format!("apiVersion: edgefleet.io/v1alpha1\nkind: EdgeDeployment\nmetadata: {{name: {name}}}\nspec:\n{spec}"),
    )
    .await;
}

fn cond(d: &EdgeDeployment, t: &str) -> Option<condition::Condition> {
    d.status
        .as_ref()
        .and_then(|s| condition::find(&s.conditions, t).cloned())
}

/// Waits until a deployment's status satisfies `check` at the current generation.
async fn wait_deployment(
    api: &Api<EdgeDeployment>,
    name: &str,
    what: &str,
    check: impl Fn(&EdgeDeployment) -> bool,
) -> EdgeDeployment {
    wait_for(&format!("{name}: {what}"), WAIT, || async {
        let d = api.get(name).await.map_err(|e| e.to_string())?;
        let current =
            d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation;
        if current && check(&d) {
            Ok(d)
        } else {
            Err(format!("{:?}", d.status))
        }
    })
    .await
}

fn is(d: &EdgeDeployment, t: &str, status: &str, reason: &str) -> bool {
    cond(d, t).is_some_and(|c| format!("{:?}", c.status) == status && c.reason == reason)
}

async fn desired_modules(devices: &Api<EdgeDevice>, dev: &str) -> Vec<(String, String, String)> {
    let d = devices.get(dev).await.expect("device");
    d.spec
        .desired
        .map(|d| {
            d.modules
                .iter()
                .map(|m| (m.name.clone(), m.deployment.clone(), m.spec.image.clone()))
                .collect()
        })
        .unwrap_or_default()
}

async fn events_for(client: &Client, ns: &str, name: &str) -> Vec<(String, String)> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list events")
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

async fn wait_event(client: &Client, ns: &str, name: &str, reason: &str) -> String {
    wait_for(&format!("a {reason} event on {name}"), WAIT, || async {
        let evs = events_for(client, ns, name).await;
        evs.iter()
            .find(|(r, _)| r == reason)
            .map(|(_, m)| m.clone())
            .ok_or(evs)
    })
    .await
}

/// Devices are cluster-wide, so a deployment left anywhere (by a failed run, or by hand)
/// would compete with the test's own. Each test starts from none.
/// GET a path from the controller's HTTP endpoint: (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the controller");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("read");
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

async fn cleanup(client: &Client, ns: &str) {
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn enrolled_devices_get_least_privilege() {
    let (lab, client, _ctrl) = setup(18181, &[]).await;
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let n = lab.device_count();
    for i in 1..=n {
        let name = format!("edge-{i}");
        wait_for(
            &format!("{name} enrolled, with its Lease"),
            WAIT,
            || async {
                let d = devices.get(&name).await.map_err(|e| e.to_string())?;
                registered(&d).then_some(()).ok_or("not Registered yet")?;
                Api::<Lease>::namespaced(client.clone(), "edgefleet-system")
                    .get(&device_object_name(&name))
                    .await
                    .map_err(|e| format!("no Lease: {e}"))
            },
        )
        .await;
    }
    assert!(
        devices.get("cloud-1").await.is_err(),
        "the cloud node is not a device"
    );

    // Least privilege, enforced by the real apiserver.
    let agent = Agent::new(&lab, "edge-1").await;
    wait_for("edge-1's RBAC", WAIT, || async {
        agent
            .devices()
            .get("edge-1")
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let forbidden = |r: kube::Result<_>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    assert!(
        forbidden(agent.devices().get("edge-2").await.map(|_| ())),
        "read another device"
    );
    assert!(
        forbidden(
            agent
                .devices()
                .list(&ListParams::default())
                .await
                .map(|_| ())
        ),
        "list all devices"
    );
    let own = agent
        .devices()
        .list(&ListParams::default().fields("metadata.name=edge-1"))
        .await
        .expect("list (and so watch) its own device by name");
    assert_eq!(own.items.len(), 1);
    agent
        .report(json!({"agentVersion": "e2e-sim"}))
        .await
        .expect("report own status");
    assert!(
        forbidden(
            agent
                .devices()
                .patch(
                    "edge-1",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"desired": null}}))
                )
                .await
                .map(|_| ())
        ),
        "write its own spec"
    );
    let other = Agent {
        device: "edge-2".into(),
        client: agent.client.clone(),
    };
    assert!(
        forbidden(other.report(json!({"agentVersion": "x"})).await.map(|_| ())),
        "write another's status"
    );
    agent.renew().await.expect("renew own Lease");
    assert!(
        forbidden(other.renew().await.map(|_| ())),
        "renew another's Lease"
    );
    let leases: Api<Lease> = Api::namespaced(agent.client.clone(), "edgefleet-system");
    assert!(
        forbidden(leases.list(&ListParams::default()).await.map(|_| ())),
        "list Leases"
    );
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn targeting_priority_layering_and_rollup() {
    let (lab, client, mut ctrl) = setup(18182, &[]).await;
    let ns = fresh_namespace(&client, "e2e-targeting").await;
    let modules: Api<EdgeModule> = Api::namespaced(client.clone(), &ns);
    let deps: Api<EdgeDeployment> = Api::namespaced(client.clone(), &ns);
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    module(&modules, "sensor", "localhost/sensor:v1").await;
    module(&modules, "sensor-fast", "localhost/sensor:fast").await;
    module(&modules, "filter", "localhost/filter:v1").await;
    module(&modules, "ml", "localhost/ml:v1").await;
    // The lab: edge-1 berlin/rpi4, edge-2 munich/jetson, edge-3 berlin/nuc.
    deployment(
        &deps,
        "base",
        "  priority: 10\n  selector: {}\n  modules: [{name: sensor}, {name: filter}]",
    )
    .await;
    deployment(&deps, "berlin", "  layered: true\n  priority: 20\n  selector: {matchLabels: {site: berlin}}\n  modules: [{name: ml}]").await;
    deployment(&deps, "jetson", "  priority: 50\n  selector: {matchExpressions: [{key: hardware, operator: In, values: [jetson]}]}\n  modules: [{name: sensor, moduleRef: sensor-fast}]").await;

    let want_berlin = vec![
        (
            "filter".to_owned(),
            format!("{ns}/base"),
            "localhost/filter:v1".to_owned(),
        ),
        (
            "ml".to_owned(),
            format!("{ns}/berlin"),
            "localhost/ml:v1".to_owned(),
        ),
        (
            "sensor".to_owned(),
            format!("{ns}/base"),
            "localhost/sensor:v1".to_owned(),
        ),
    ];
    for dev in ["edge-1", "edge-3"] {
        wait_for(&format!("{dev}'s desired state"), WAIT, || async {
            let got = desired_modules(&devices, dev).await;
            if got == want_berlin { Ok(()) } else { Err(got) }
        })
        .await;
    }
    let want_jetson = vec![(
        "sensor".to_owned(),
        format!("{ns}/jetson"),
        "localhost/sensor:fast".to_owned(),
    )];
    wait_for("edge-2's desired state", WAIT, || async {
        let got = desired_modules(&devices, "edge-2").await;
        if got == want_jetson { Ok(()) } else { Err(got) }
    })
    .await;
    // edge-2 explains itself.
    let edge2 = devices
        .get("edge-2")
        .await
        .expect("edge-2")
        .spec
        .desired
        .expect("desired");
    let lost = edge2
        .targeting
        .iter()
        .find(|t| t.deployment == format!("{ns}/base"))
        .expect("base is listed on edge-2");
    assert_eq!(lost.outcome, TargetingOutcome::Lost);
    assert_eq!(
        lost.reason,
        format!("priority 10 is lower than {ns}/jetson's 50")
    );

    // Agents apply and report: every deployment turns Ready, and kubectl wait says so.
    let mut agents = Vec::new();
    for i in 1..=lab.device_count() {
        let a = Agent::new(&lab, &format!("edge-{i}")).await;
        a.renew_once_granted().await;
        a.report_all_running().await;
        agents.push(a);
    }
    for name in ["base", "berlin", "jetson"] {
        wait_deployment(&deps, name, "Ready", |d| is(d, READY, "True", "AllReady")).await;
    }
    let base = deps.get("base").await.expect("base");
    let s = base.status.expect("status");
    assert_eq!(
        (s.targeted, s.applied, s.ready, s.failed, s.lost),
        (2, 2, 2, 0, 1)
    );
    let out = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            &lab.kubeconfig().display().to_string(),
            "-n",
            &ns,
        ])
        .args([
            "wait",
            "--for=condition=Ready",
            "edgedeployment/base",
            "edgedeployment/berlin",
            "--timeout=30s",
        ])
        .output()
        .expect("kubectl");
    assert!(
        out.status.success(),
        "kubectl wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = std::process::Command::new("kubectl")
        .args([
            "--kubeconfig",
            &lab.kubeconfig().display().to_string(),
            "-n",
            &ns,
            "get",
            "edgedeployments",
        ])
        .output()
        .expect("kubectl");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("PRIORITY") && table.contains("TARGETED") && table.contains("FAILED"),
        "{table}"
    );
    wait_for("EdgeModule status", WAIT, || async {
        let m = modules.get("sensor").await.map_err(|e| e.to_string())?;
        let s = m.status.unwrap_or_default();
        if (s.deployments, s.devices) == (1, 2) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;

    // A module crash-loops on edge-3: the deployment fails, with a sample and an Event.
    let a3 = &agents[2];
    let rev = devices
        .get("edge-3")
        .await
        .expect("edge-3")
        .spec
        .desired
        .expect("desired")
        .revision
        .clone();
    a3.report(json!({
        "appliedRevision": rev,
        "modules": [
            {"name": "filter", "runtimeStatus": "backoff", "exitCode": 1, "restartCount": 3, "message": "exit 1"},
            {"name": "ml", "runtimeStatus": "running"},
            {"name": "sensor", "runtimeStatus": "running"},
        ],
    }))
    .await
    .expect("report failure");
    let failed = wait_deployment(&deps, "base", "ModulesFailed", |d| {
        is(d, STALLED, "True", "ModulesFailed")
    })
    .await;
    let s = failed.status.expect("status");
    assert_eq!((s.failed, s.ready), (1, 1));
    assert_eq!(s.failures.len(), 1);
    assert_eq!(
        (s.failures[0].device.as_str(), s.failures[0].module.as_str()),
        ("edge-3", "filter")
    );
    assert!(
        s.failures[0].reason.contains("backoff, exit code 1"),
        "{:?}",
        s.failures[0]
    );
    let note = wait_event(&client, "default", "edge-3", "ModuleFailed").await;
    assert!(note.contains("filter"), "{note}");
    wait_deployment(&deps, "berlin", "still Ready", |d| {
        is(d, READY, "True", "AllReady")
    })
    .await;

    // A module changes: the new revision reaches the devices; the deployment reconciles
    // until the agents report it, then is Ready again.
    a3.report_all_running().await;
    module(&modules, "filter", "localhost/filter:v2").await;
    wait_deployment(&deps, "base", "Reconciling for the new module", |d| {
        is(d, RECONCILING, "True", "Progressing")
    })
    .await;
    for a in &agents {
        wait_for(&format!("{} to get filter:v2", a.device), WAIT, || async {
            let got = desired_modules(&devices, &a.device).await;
            if a.device == "edge-2" || got.iter().any(|m| m.2 == "localhost/filter:v2") {
                Ok(())
            } else {
                Err(got)
            }
        })
        .await;
        a.report_all_running().await;
    }
    wait_deployment(&deps, "base", "Ready again", |d| {
        is(d, READY, "True", "AllReady")
    })
    .await;

    // Health and metrics, as Prometheus and the kubelet see them.
    assert!(http_get(&ctrl.http, "/healthz").0.contains("200"));
    assert!(http_get(&ctrl.http, "/readyz").0.contains("200"));
    let (_, metrics) = http_get(&ctrl.http, "/metrics");
    for m in [
        "edgefleet_controller_reconciles_total{controller=\"device\"}",
        "edgefleet_controller_reconcile_duration_seconds_count{controller=\"deployment\"}",
        "edgefleet_controller_writes_skipped_total",
        "edgefleet_controller_devices{state=\"online\"}",
    ] {
        assert!(metrics.contains(m), "/metrics lacks {m}:\n{metrics}");
    }

    // Deleting the deployments empties the devices' desired state.
    cleanup(&client, &ns).await;
    wait_for("edge-1 to have no modules", WAIT, || async {
        let got = desired_modules(&devices, "edge-1").await;
        if got.is_empty() { Ok(()) } else { Err(got) }
    })
    .await;
    assert!(ctrl.running(), "the controller exited:\n{}", ctrl.log());
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn bad_input_is_reported_on_the_object_and_others_go_on() {
    let (lab, client, mut ctrl) = setup(18183, &[]).await;
    let ns = fresh_namespace(&client, "e2e-bad-input").await;
    let modules: Api<EdgeModule> = Api::namespaced(client.clone(), &ns);
    let deps: Api<EdgeDeployment> = Api::namespaced(client.clone(), &ns);
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    module(&modules, "sensor", "localhost/sensor:v1").await;
    let good = "  selector: {matchLabels: {site: munich}}\n  modules: [{name: sensor}]";
    deployment(&deps, "good", good).await;
    let a2 = Agent::new(&lab, "edge-2").await;
    a2.renew_once_granted().await;
    // Wait for this deployment's module, not just any: a previous test's may linger.
    let owner = format!("{ns}/good");
    wait_for("edge-2 to get the good deployment", WAIT, || async {
        let got = desired_modules(&devices, "edge-2").await;
        if got.len() == 1 && got[0].1 == owner {
            Ok(())
        } else {
            Err(got)
        }
    })
    .await;
    a2.report_all_running().await;
    wait_deployment(&deps, "good", "Ready", |d| is(d, READY, "True", "AllReady")).await;

    // Each bad spec: Stalled with its reason, and a Warning Event with the same reason.
    let bad = [
        (
            "bad-selector",
            "  selector: {matchExpressions: [{key: '-site-', operator: Exists}]}\n  modules: [{name: sensor}]",
            "InvalidSelector",
            "is not a qualified name",
        ),
        (
            "missing-module",
            "  selector: {matchLabels: {site: berlin}}\n  modules: [{name: x, moduleRef: nope}]",
            "ModuleNotFound",
            "EdgeModule e2e-bad-input/nope, which does not exist",
        ),
    ];
    for (name, spec, _, _) in bad {
        deployment(&deps, name, spec).await;
    }
    for (name, _, reason, says) in bad {
        let d = wait_deployment(&deps, name, reason, |d| is(d, STALLED, "True", reason)).await;
        let msg = cond(&d, READY).expect("Ready").message;
        assert!(msg.contains(says), "{name}: {msg}");
        let ev = wait_event(&client, &ns, name, reason).await;
        assert!(ev.contains(says), "{name}: event says {ev}");
    }

    // What the schema can reject is rejected at admission, with a clear message.
    let err = deps
        .create(
            &PostParams::default(),
            &serde_yaml::from_str(&format!(
                "apiVersion: edgefleet.io/v1alpha1\nkind: EdgeDeployment\nmetadata: {{name: bad-name, namespace: {ns}}}\nspec:\n  modules: [{{name: Not_A_Label}}]"
            ))
            .expect("yaml"),
        )
        .await
        .expect_err("a module name that is not a DNS label is refused");
    // The field's path: `spec.modules.name` up to Kubernetes 1.2x, `spec.modules[0].name` since.
    let says = err.to_string();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422)
            && says.contains("spec.modules")
            && says.contains(".name")
            && says.contains("Not_A_Label"),
        "{err}"
    );

    // What the schema's validation rules reject is rejected at admission too, with the rule's
    // message: the controller's own checks stay for what gets past (an older CRD).
    for (name, spec, says) in [
        (
            "no-values",
            "  selector: {matchExpressions: [{key: site, operator: In}]}\n  modules: [{name: sensor}]",
            "operators In and NotIn need at least one value",
        ),
        (
            "duplicate",
            "  selector: {matchLabels: {site: berlin}}\n  modules: [{name: sensor}, {name: sensor}]",
            "module names must be unique in a deployment",
        ),
    ] {
        let err = deps
            .create(
                &PostParams::default(),
                &serde_yaml::from_str(&format!(
                    "apiVersion: edgefleet.io/v1alpha1\nkind: EdgeDeployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
                ))
                .expect("yaml"),
            )
            .await
            .expect_err("refused at admission");
        assert!(
            matches!(&err, kube::Error::Api(s) if s.code == 422) && err.to_string().contains(says),
            "{name}: {err}"
        );
    }

    // A device path that climbs out of /dev (the schema's pattern alone would take it).
    let modules: Api<EdgeModule> = Api::namespaced(client.clone(), &ns);
    let err = modules
        .create(
            &PostParams::default(),
            &serde_yaml::from_str(&format!(
                "apiVersion: edgefleet.io/v1alpha1\nkind: EdgeModule\nmetadata: {{name: shadow, namespace: {ns}}}\nspec:\n  image: app:1\n  devices: [{{hostPath: /dev/../etc/shadow}}]"
            ))
            .expect("yaml"),
        )
        .await
        .expect_err("a device path with '..' is refused");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 422)
            && err
                .to_string()
                .contains("a device path must stay under /dev"),
        "{err}"
    );

    // Two deployments with equal priority over the same device: the loser says so.
    deployment(
        &deps,
        "tie-a",
        "  priority: 7\n  selector: {matchLabels: {hardware: nuc}}\n  modules: [{name: sensor}]",
    )
    .await;
    deployment(
        &deps,
        "tie-b",
        "  priority: 7\n  selector: {matchLabels: {hardware: nuc}}\n  modules: [{name: sensor}]",
    )
    .await;
    let tie = wait_deployment(&deps, "tie-b", "Conflicted", |d| {
        cond(d, "Conflicted").is_some()
    })
    .await;
    let c = cond(&tie, "Conflicted").expect("Conflicted");
    assert!(c.message.contains(&format!("{ns}/tie-a")), "{}", c.message);
    wait_event(&client, &ns, "tie-b", "PriorityTie").await;
    wait_deployment(&deps, "tie-a", "Progressing, no conflict", |d| {
        cond(d, "Conflicted").is_none()
    })
    .await;

    // A device fills its status with garbage: flagged on the device, nothing else moves.
    let a3 = Agent::new(&lab, "edge-3").await;
    a3.report(json!({
        "appliedRevision": "not-a-revision",
        "modulesReady": "9/1",
        "modules": [{"name": "ghost", "runtimeStatus": "running"}, {"name": "ghost", "runtimeStatus": "failed"}],
    }))
    .await
    .expect("the schema admits well-formed garbage");
    let flagged = wait_for("edge-3 StatusValid=False", WAIT, || async {
        let d = devices.get("edge-3").await.map_err(|e| e.to_string())?;
        let c = d
            .status
            .and_then(|s| condition::find(&s.conditions, "StatusValid").cloned());
        match c {
            Some(c) if !c.is_true() && c.message.contains("ghost") => Ok(c.message),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        flagged.contains("\"ghost\" is reported more than once"),
        "{flagged}"
    );
    assert!(flagged.contains("not a revision"), "{flagged}");
    wait_event(&client, "default", "edge-3", "InvalidStatus").await;
    wait_deployment(&deps, "good", "still Ready", |d| {
        is(d, READY, "True", "AllReady")
    })
    .await;
    a3.report(json!({"appliedRevision": null, "modulesReady": null, "modules": []}))
        .await
        .expect("clean status");

    // Fixing a held deployment releases it.
    module(&modules, "nope", "localhost/nope:v1").await;
    wait_deployment(&deps, "missing-module", "no longer stalled", |d| {
        !is(d, STALLED, "True", "ModuleNotFound")
    })
    .await;

    assert!(ctrl.running(), "the controller exited:\n{}", ctrl.log());
    assert!(!ctrl.log().contains("panicked"), "{}", ctrl.log());
    cleanup(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn online_follows_the_lease_and_offline_devices_are_deferred() {
    let (lab, client, _ctrl) = setup(18184, &["--offline-threshold", "6s"]).await;
    let ns = fresh_namespace(&client, "e2e-presence").await;
    let modules: Api<EdgeModule> = Api::namespaced(client.clone(), &ns);
    let deps: Api<EdgeDeployment> = Api::namespaced(client.clone(), &ns);
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let online = |dev: &str| {
        let devices = devices.clone();
        let dev = dev.to_owned();
        async move {
            let d = devices.get(&dev).await.ok()?;
            d.status
                .and_then(|s| condition::find(&s.conditions, "Online").map(|c| c.is_true()))
        }
    };
    // Whatever an earlier test left in edge-1's status, no one renews its Lease now: the
    // controller marks it offline first, so that coming online is a transition, with its
    // Event (an Online condition left from before would make it none).
    wait_for("edge-1 not Online before it renews", WAIT, || async {
        match online("edge-1").await {
            Some(true) => Err("still online from before"),
            _ => Ok(()),
        }
    })
    .await;
    let a1 = Agent::new(&lab, "edge-1").await;
    a1.renew_once_granted().await;
    wait_for("edge-1 Online", WAIT, || async {
        online("edge-1").await.filter(|o| *o).ok_or("not online")
    })
    .await;
    wait_event(&client, "default", "edge-1", "DeviceOnline").await;
    // No renewals: offline after the threshold, with an Event.
    wait_for("edge-1 Offline", WAIT, || async {
        online("edge-1").await.filter(|o| !*o).ok_or("still online")
    })
    .await;
    wait_event(&client, "default", "edge-1", "DeviceOffline").await;

    // A deployment targeting an offline device counts it deferred.
    module(&modules, "sensor", "localhost/sensor:v1").await;
    deployment(
        &deps,
        "d",
        "  selector: {matchLabels: {hardware: rpi4}}\n  modules: [{name: sensor}]",
    )
    .await;
    let d = wait_deployment(&deps, "d", "deferred", |d| {
        d.status.as_ref().is_some_and(|s| s.deferred == 1)
    })
    .await;
    assert!(is(&d, RECONCILING, "True", "Progressing"), "{:?}", d.status);
    // It comes back, applies and reports: Ready.
    a1.renew_once_granted().await;
    a1.report_all_running().await;
    wait_deployment(&deps, "d", "Ready", |d| is(d, READY, "True", "AllReady")).await;
    cleanup(&client, &ns).await;
}

fn registered(d: &EdgeDevice) -> bool {
    d.status
        .as_ref()
        .and_then(|s| condition::find(&s.conditions, "Registered"))
        .is_some_and(|c| c.is_true())
}

/// A client of the lab's apiserver with `kubeconfig`'s credential.
async fn client_as(kubeconfig: &Path) -> Client {
    edgefleet_e2e::client_from(kubeconfig).await
}

/// The lab's enrolments back as they were, even when a test fails, so that the tests after
/// it find the lab as it was. Its own runtime and client: the test's runtime may be
/// unwinding, and a client's connections live in the runtime that made them.
struct ReEnrol;

impl Drop for ReEnrol {
    fn drop(&mut self) {
        let _ = std::thread::spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(async {
                    let client = Lab::get().client().await;
                    enrol_lab_devices(&client).await;
                });
        })
        .join();
    }
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn a_stolen_kubelet_relabelling_its_node_neither_retargets_nor_enrols() {
    let (lab, client, _ctrl) = setup(18185, &[]).await;
    let _restore = ReEnrol;
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let ns = fresh_namespace(&client, "e2e-stolen-kubelet").await;
    let modules: Api<EdgeModule> = Api::namespaced(client.clone(), &ns);
    let deps: Api<EdgeDeployment> = Api::namespaced(client.clone(), &ns);
    module(&modules, "gpu", "localhost/gpu:v1").await;
    deployment(
        &deps,
        "jetson",
        "  selector: {matchLabels: {hardware: jetson}}\n  modules: [{name: gpu}]",
    )
    .await;
    wait_deployment(&deps, "jetson", "targets edge-2 alone", |d| {
        d.status.as_ref().is_some_and(|s| s.targeted == 1)
    })
    .await;

    // As edge-1's kubelet (what a thief of edge-1 holds): claim to be a jetson. And as the
    // cloud node's kubelet: claim to be a device. The apiserver allows both (a kubelet may
    // set its own Node's labels outside kubernetes.io), so the Nodes do change.
    let stolen = |node: &str| {
        lab.info(node).kubelet_kubeconfig.unwrap_or_else(|| {
            lab.kubeconfig()
                .parent()
                .expect("kubeconfig dir")
                .join(format!("kubelet-{node}.kubeconfig"))
        })
    };
    for (node, labels) in [
        (
            "edge-1",
            json!({"hardware": "jetson", "edgefleet.io/device": "true"}),
        ),
        (
            "cloud-1",
            json!({"edgefleet.io/device": "true", "hardware": "jetson"}),
        ),
    ] {
        let kubelet = client_as(&stolen(node)).await;
        Api::<Node>::all(kubelet)
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": labels}})),
            )
            .await
            .unwrap_or_else(|e| panic!("{node}'s kubelet may label its own Node: {e}"));
    }
    // A change the controller must act on, made after the relabelling: once the deployment's
    // status shows it, the relabelled Nodes have been seen too.
    deployment(&deps, "jetson", "  selector: {matchLabels: {hardware: jetson}}\n  modules: [{name: gpu}, {name: gpu2, moduleRef: gpu}]").await;
    wait_deployment(&deps, "jetson", "still targets edge-2 alone", |d| {
        d.status.as_ref().is_some_and(|s| s.targeted == 1)
    })
    .await;
    assert_eq!(
        desired_modules(&devices, "edge-1")
            .await
            .iter()
            .filter(|m| m.1.ends_with("/jetson"))
            .count(),
        0,
        "edge-1 got jetson modules"
    );
    assert_eq!(
        desired_modules(&devices, "edge-2")
            .await
            .iter()
            .filter(|m| m.1.ends_with("/jetson"))
            .count(),
        2
    );
    assert!(
        devices.get("cloud-1").await.is_err(),
        "a node that labels itself is not enrolled"
    );
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get(&device_object_name("cloud-1"))
            .await
            .is_err(),
        "and gets no device RBAC"
    );
    for node in ["edge-1", "cloud-1"] {
        Api::<Node>::all(client.clone())
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"hardware": null}}})),
            )
            .await
            .expect("admin restores the Node's labels");
    }
    let _ = Api::<Node>::all(client.clone())
        .patch(
            "cloud-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"edgefleet.io/device": null}}})),
        )
        .await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn an_admin_removing_a_devices_label_takes_its_deployment_away() {
    let (_lab, client, _ctrl) = setup(18186, &[]).await;
    let _restore = ReEnrol;
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let ns = fresh_namespace(&client, "e2e-unlabel").await;
    let modules: Api<EdgeModule> = Api::namespaced(client.clone(), &ns);
    let deps: Api<EdgeDeployment> = Api::namespaced(client.clone(), &ns);
    module(&modules, "sensor", "localhost/sensor:v1").await;
    deployment(
        &deps,
        "berlin",
        "  selector: {matchLabels: {site: berlin}}\n  modules: [{name: sensor}]",
    )
    .await;
    wait_deployment(&deps, "berlin", "targets edge-1 and edge-3", |d| {
        d.status.as_ref().is_some_and(|s| s.targeted == 2)
    })
    .await;
    assert_eq!(desired_modules(&devices, "edge-1").await.len(), 1);

    // `kubectl label edgedevice edge-1 site-`: the label was applied by the enrolment, and
    // its removal by another manager must still reach targeting.
    devices
        .patch(
            "edge-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"site": null}}})),
        )
        .await
        .expect("remove the label");
    wait_deployment(&deps, "berlin", "targets edge-3 alone", |d| {
        d.status.as_ref().is_some_and(|s| s.targeted == 1)
    })
    .await;
    wait_for(
        "edge-1's desired state without the module",
        WAIT,
        || async {
            let m = desired_modules(&devices, "edge-1").await;
            if m.is_empty() {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        },
    )
    .await;
    // And the label back, by the same apply that set it.
    enrol_lab_devices(&client).await;
    wait_deployment(&deps, "berlin", "targets both again", |d| {
        d.status.as_ref().is_some_and(|s| s.targeted == 2)
    })
    .await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn a_retired_device_keeps_no_rbac_and_its_certificate_authorizes_nothing() {
    let (lab, client, _ctrl) = setup(18187, &[]).await;
    let name = "retired-1";
    enrol_kubeletless(&client, name).await;
    let nodes: Api<Node> = Api::all(client.clone());
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let as_device: Api<EdgeDevice> = Api::all(as_device(&lab, name).await);
    wait_for(
        "the enrolled device to read its EdgeDevice",
        WAIT,
        || async {
            as_device
                .get(name)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let owned = |client: Client| async move {
        let mut left = Vec::new();
        let object = device_object_name(name);
        if Api::<ClusterRole>::all(client.clone())
            .get(&object)
            .await
            .is_ok()
        {
            left.push("ClusterRole");
        }
        if Api::<ClusterRoleBinding>::all(client.clone())
            .get(&object)
            .await
            .is_ok()
        {
            left.push("ClusterRoleBinding");
        }
        if Api::<Role>::namespaced(client.clone(), "edgefleet-system")
            .get(&object)
            .await
            .is_ok()
        {
            left.push("Role");
        }
        if Api::<RoleBinding>::namespaced(client.clone(), "edgefleet-system")
            .get(&object)
            .await
            .is_ok()
        {
            left.push("RoleBinding");
        }
        if Api::<Lease>::namespaced(client.clone(), "edgefleet-system")
            .get(&object)
            .await
            .is_ok()
        {
            left.push("Lease");
        }
        left
    };
    assert_eq!(
        owned(client.clone()).await.len(),
        5,
        "enrolment gives RBAC and a Lease"
    );

    devices
        .delete(name, &DeleteParams::default())
        .await
        .expect("retire");
    wait_for(
        "the retired device's RBAC and Lease to go",
        WAIT,
        || async {
            let left = owned(client.clone()).await;
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
    // The Node changes and stays: nothing recreates what the device had.
    nodes
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"edgefleet.io/device": "true"}}})),
        )
        .await
        .expect("touch the Node");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        owned(client.clone()).await,
        Vec::<&str>::new(),
        "recreated after retirement"
    );
    let refused = as_device.get(name).await;
    assert!(
        matches!(refused, Err(kube::Error::Api(ref s)) if s.code == 403 || s.code == 404),
        "the certificate still authorizes something: {refused:?}"
    );
    unenrol(&client, name).await;
}

/// A client that authenticates as `device`'s certificate would (impersonated by the admin).
async fn as_device(lab: &Lab, device: &str) -> Client {
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(lab.kubeconfig()).expect("admin kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("config");
    config.auth_info.impersonate = Some(device_user(device));
    config.auth_info.impersonate_groups = Some(vec![DEVICES_GROUP.to_owned()]);
    Client::try_from(config).expect("client")
}

/// A Node with no kubelet behind it, and its enrolment by the admin.
async fn enrol_kubeletless(client: &Client, name: &str) {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).expect("node");
    let _ = Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node)
        .await;
    let enrolment: EdgeDevice = serde_json::from_value(json!({
        "apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeDevice",
        "metadata": {"name": name}, "spec": {},
    }))
    .expect("enrolment");
    let _ = Api::<EdgeDevice>::all(client.clone())
        .create(&PostParams::default(), &enrolment)
        .await;
}

async fn unenrol(client: &Client, name: &str) {
    let _ = Api::<EdgeDevice>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
    let _ = Api::<Node>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn a_device_named_like_the_controllers_objects_reaches_none_of_them() {
    let (lab, client, _ctrl) = setup(18189, &[]).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "edgefleet-system");
    // The leader Lease exists while a controller leads.
    wait_for("the leader Lease", WAIT, || async {
        leases.get(LEADER_LEASE).await.map_err(|e| e.to_string())
    })
    .await;
    enrol_kubeletless(&client, LEADER_LEASE).await;
    let device_leases: Api<Lease> =
        Api::namespaced(as_device(&lab, LEADER_LEASE).await, "edgefleet-system");
    wait_for("the device's own Lease grant", WAIT, || async {
        device_leases
            .get(&device_object_name(LEADER_LEASE))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    let stolen = device_leases
        .patch(
            LEADER_LEASE,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"holderIdentity": "thief"}})),
        )
        .await;
    assert!(
        matches!(stolen, Err(kube::Error::Api(ref s)) if s.code == 403),
        "a device named like the leader Lease may patch it: {stolen:?}"
    );
    unenrol(&client, LEADER_LEASE).await;

    // A name that can't be a device identity is refused, on the EdgeDevice, with no grant.
    let dotted = "edge-9.example";
    enrol_kubeletless(&client, dotted).await;
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let why = wait_for("the dotted name refused", WAIT, || async {
        let d = devices.get(dotted).await.map_err(|e| e.to_string())?;
        d.status
            .as_ref()
            .and_then(|s| condition::find(&s.conditions, "Registered"))
            .filter(|c| !c.is_true() && c.reason == "InvalidName")
            .map(|c| c.message.clone())
            .ok_or(format!("{:?}", d.status))
    })
    .await;
    assert!(why.contains("DNS label"), "{why}");
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get(&device_object_name(dotted))
            .await
            .is_err(),
        "a refused name gets RBAC"
    );
    unenrol(&client, dotted).await;
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn a_devices_oversized_words_never_freeze_a_deployments_status() {
    let (lab, client, _ctrl) = setup(18188, &[]).await;
    let ns = fresh_namespace(&client, "e2e-device-words").await;
    let modules: Api<EdgeModule> = Api::namespaced(client.clone(), &ns);
    let deps: Api<EdgeDeployment> = Api::namespaced(client.clone(), &ns);
    module(&modules, "sensor", "localhost/sensor:v1").await;
    deployment(&deps, "all", "  modules: [{name: sensor}]").await;
    let agent = Agent::new(&lab, "edge-1").await;
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let revision = wait_for("edge-1's desired state", WAIT, || async {
        let d = devices.get("edge-1").await.map_err(|e| e.to_string())?;
        d.spec
            .desired
            .filter(|d| !d.modules.is_empty())
            .map(|d| d.revision.clone())
            .ok_or("none yet".to_owned())
    })
    .await;
    // The payload that froze every deployment targeting edge-1: a rejection of exactly the
    // desired revision, with a message longer than a failure sample may hold.
    let words = "x".repeat(1_100);
    agent
        .report(json!({
            "appliedRevision": "0000000000000000",
            "rejectedRevision": revision,
            "conditions": [{"type": "Applied", "status": "False", "reason": "Rejected", "message": words}],
        }))
        .await
        .expect("the schema admits the report");
    let d = wait_deployment(
        &deps,
        "all",
        "counts edge-1 failed, in a status that fits",
        |d| {
            d.status
                .as_ref()
                .is_some_and(|s| s.failures.iter().any(|f| f.device == "edge-1"))
        },
    )
    .await;
    let sample = d
        .status
        .expect("status")
        .failures
        .into_iter()
        .find(|f| f.device == "edge-1")
        .expect("sample");
    assert!(
        sample.reason.chars().count() <= 1024 && sample.reason.ends_with('…'),
        "{}",
        sample.reason.len()
    );
    // And the deployment's status keeps following its spec.
    deployment(
        &deps,
        "all",
        "  modules: [{name: sensor}, {name: sensor2, moduleRef: sensor}]",
    )
    .await;
    wait_deployment(&deps, "all", "observes its new generation", |_| true).await;
    agent.report_all_running().await;
    cleanup(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs the lab: make e2e"]
async fn only_the_leader_writes_and_a_standby_takes_over() {
    let lab = Lab::get();
    let client = lab.client().await;
    install_and_enrol(&client).await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "edgefleet-system");
    let holder = || async {
        leases
            .get("edgefleet-controller-leader")
            .await
            .ok()
            .and_then(|l| l.spec?.holder_identity)
            .unwrap_or_default()
    };
    // A previous test's controller may still hold the lease for its duration.
    let args = |id: &'static str| ["--identity", id, "--lease-duration", "4s"];
    let mut first = ControllerProcess::start(Path::new(BIN), &lab, 18186, &args("replica-a"));
    wait_for("replica-a to lead", WAIT, || async {
        let h = holder().await;
        if h == "replica-a" { Ok(()) } else { Err(h) }
    })
    .await;
    let mut second = ControllerProcess::start(Path::new(BIN), &lab, 18187, &args("replica-b"));
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        holder().await,
        "replica-a",
        "the standby must not take a live lease"
    );
    assert!(
        !second.log().contains("caches synced"),
        "the standby started its controllers:\n{}",
        second.log()
    );

    // The leader stops: the standby takes over and does the work.
    first.stop();
    wait_for("replica-b to lead", WAIT, || async {
        let h = holder().await;
        if h == "replica-b" { Ok(()) } else { Err(h) }
    })
    .await;
    let ns = fresh_namespace(&client, "e2e-leader").await;
    let modules: Api<EdgeModule> = Api::namespaced(client.clone(), &ns);
    module(&modules, "sensor", "localhost/sensor:v1").await;
    wait_for("the new leader to write module status", WAIT, || async {
        let m = modules.get("sensor").await.map_err(|e| e.to_string())?;
        m.status.ok_or_else(|| "no status yet".to_owned())
    })
    .await;
    assert!(second.running());
    cleanup(&client, &ns).await;
}
