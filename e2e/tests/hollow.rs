//! Hollow devices through the real join: three devices with no kubelet (their Nodes made as
//! a kubelet would, their EdgeDevices enrolled by the administrator) each get a bootstrap
//! pod on their Node and ask for their certificate with that pod's bound token, exactly as
//! the chart's bootstrap does (`edgefleet_agent::join::request_certificate`); the real
//! controller approves. Then the real agent loop runs on each with an in-memory runtime, and
//! a deployment reaches Ready from what they report; one module told to fail shows as the
//! one failed device. One device speaks HTTP/2 to the apiserver, as
//! `--apiserver-protocol http2` makes an agent do. Needs the lab and
//! `cargo build -p edgefleet-controller`.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_agent::apiserver::Protocol;
use edgefleet_agent::join;
use edgefleet_crds::identity::{APP_NAME_LABEL, BOOTSTRAP_NAME, DEVICE_LABEL, SYSTEM_NAMESPACE};
use edgefleet_crds::{EdgeDeployment, EdgeDevice, condition, deployment};
use edgefleet_e2e::hollow::Behaviour;
use edgefleet_e2e::hollow_fleet::{Cluster, HollowFleet, Timing, register, roll_out_app};
use edgefleet_e2e::{
    ControllerProcess, Lab, controller_binary, fresh_namespace, install_and_enrol, pod_bound_token,
    wait_for,
};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

const DEVICES: [&str; 3] = ["hollow-join-1", "hollow-join-2", "hollow-join-3"];
/// The device whose agent speaks HTTP/2 (one connection for its watch and writes).
const ON_HTTP2: &str = "hollow-join-2";
/// The device whose module is told to fail.
const FAILING: &str = "hollow-join-3";
const LABEL: &str = "e2e-hollow";
const PORT: u16 = 18170;
const MANAGER: &str = "edgefleet-e2e";

#[tokio::test]
#[ignore = "needs the lab: e2e/lab up"]
async fn hollow_devices_join_and_report_a_deployment_ready() {
    let lab = Lab::get();
    let admin = lab.client().await;
    install_and_enrol(&admin).await;
    remove_leftovers(&admin).await;
    let ns = fresh_namespace(&admin, "e2e-hollow").await;
    let _ctrl = ControllerProcess::start(
        &controller_binary(),
        &lab,
        PORT,
        &["--leader-election", "false"],
    );
    bootstrap_account(&admin).await;
    let cluster = Cluster::of(&lab);
    let mut fleet = HollowFleet::new("join");
    let labels = BTreeMap::from([(LABEL.to_owned(), "yes".to_owned())]);
    for device in DEVICES {
        register(&admin, device, &labels)
            .await
            .unwrap_or_else(|e| panic!("cannot register {device}: {e}"));
        let token = bootstrap_token(&admin, device).await;
        let as_pod = cluster.token_client(&token).await;
        let credential = tokio::time::timeout(
            Duration::from_secs(120),
            join::request_certificate(&as_pod, device),
        )
        .await
        .unwrap_or_else(|_| panic!("{device}'s certificate was not issued within 120 s"))
        .unwrap_or_else(|e| panic!("{device} could not join: {e}"));
        let protocol = if device == ON_HTTP2 {
            Protocol::Http2
        } else {
            Protocol::Http1
        };
        let client = cluster.device_client(device, &credential, protocol).await;
        let behaviour = Behaviour {
            start_delay: Duration::from_secs(1),
            fail: (device == FAILING).then(|| "app".to_owned()),
            ..Behaviour::default()
        };
        fleet.start(device, client, behaviour, &Timing::default());
    }

    roll_out_app(&admin, &ns, "hollow", LABEL).await;
    let deployments: Api<EdgeDeployment> = Api::namespaced(admin.clone(), &ns);
    wait_for(
        "two hollow devices ready and one failed, as the agents report",
        Duration::from_secs(120),
        || async {
            let d = deployments.get("hollow").await.map_err(|e| e.to_string())?;
            let s = d.status.unwrap_or_default();
            let failed: Vec<&str> = s.failures.iter().map(|f| f.device.as_str()).collect();
            (s.targeted == 3 && s.ready == 2 && s.failed == 1 && failed == [FAILING])
                .then_some(())
                .ok_or(format!(
                    "targeted {} ready {} failed {} ({failed:?})",
                    s.targeted, s.ready, s.failed
                ))
        },
    )
    .await;
    // Without the failing device the deployment is Ready.
    let devices: Api<EdgeDevice> = Api::all(admin.clone());
    devices
        .patch(
            FAILING,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {LABEL: "no"}}})),
        )
        .await
        .expect("relabel the failing device");
    wait_for(
        "the deployment Ready on the two devices that run it",
        Duration::from_secs(120),
        || async {
            let d = deployments.get("hollow").await.map_err(|e| e.to_string())?;
            let s = d.status.unwrap_or_default();
            let ready = condition::find(&s.conditions, deployment::conditions::READY)
                .is_some_and(|c| c.is_true());
            (ready && s.targeted == 2 && s.ready == 2)
                .then_some(())
                .ok_or(format!("Ready {ready}, {}/{} ready", s.ready, s.targeted))
        },
    )
    .await;
    fleet.stop().await;
    remove_leftovers(&admin).await;
}

/// The bootstrap's service account and its right to ask for certificates, as the chart
/// gives them, unless the chart's are there; labelled as this test's, to be removed.
async fn bootstrap_account(admin: &Client) {
    let accounts = Api::<ServiceAccount>::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    if accounts
        .get_opt(BOOTSTRAP_NAME)
        .await
        .ok()
        .flatten()
        .is_some()
    {
        return;
    }
    let apply = PatchParams::apply(MANAGER).force();
    let labels = json!({LABEL: "yes"});
    accounts
        .patch(
            BOOTSTRAP_NAME,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": BOOTSTRAP_NAME, "namespace": SYSTEM_NAMESPACE,
                    "labels": labels},
            })),
        )
        .await
        .expect("the bootstrap's service account");
    Api::<ClusterRole>::all(admin.clone())
        .patch(
            BOOTSTRAP_NAME,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": BOOTSTRAP_NAME, "labels": labels},
                "rules": [{"apiGroups": ["certificates.k8s.io"],
                    "resources": ["certificatesigningrequests"], "verbs": ["create", "get"]}],
            })),
        )
        .await
        .expect("the bootstrap's ClusterRole");
    Api::<ClusterRoleBinding>::all(admin.clone())
        .patch(
            BOOTSTRAP_NAME,
            &apply,
            &Patch::Apply(json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": BOOTSTRAP_NAME, "labels": labels},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": BOOTSTRAP_NAME},
                "subjects": [{"kind": "ServiceAccount", "name": BOOTSTRAP_NAME,
                    "namespace": SYSTEM_NAMESPACE}],
            })),
        )
        .await
        .expect("the bootstrap's ClusterRoleBinding");
}

/// A bootstrap pod bound to `device`'s Node (it never runs: no kubelet is behind the Node)
/// and a token of the bootstrap's account bound to that pod, as the pod would hold it.
async fn bootstrap_token(admin: &Client, device: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": format!("{BOOTSTRAP_NAME}-{device}"),
            "labels": {APP_NAME_LABEL: BOOTSTRAP_NAME, LABEL: "yes"}},
        "spec": {"nodeName": device, "serviceAccountName": BOOTSTRAP_NAME,
            "containers": [{"name": "join", "image": "localhost/hollow/bootstrap:1"}]},
    }))
    .expect("a pod");
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("cannot create {device}'s bootstrap pod: {e}"));
    pod_bound_token(admin, SYSTEM_NAMESPACE, BOOTSTRAP_NAME, &pod).await
}

/// What this test makes (also what an earlier run left): the hollow devices' Nodes,
/// EdgeDevices (their Leases and RBAC go with them), bootstrap pods, certificate requests
/// and the bootstrap's account, if the test made it.
async fn remove_leftovers(admin: &Client) {
    let dp = DeleteParams::default();
    let mine = ListParams::default().labels(&format!("{LABEL}=yes"));
    // No kubelet confirms a bootstrap pod's end: they go at once, or never.
    let pods = Api::<Pod>::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let _ = pods
        .delete_collection(&DeleteParams::default().grace_period(0), &mine)
        .await;
    wait_for(
        "the bootstrap pods to go",
        Duration::from_secs(60),
        || async {
            let left = pods.list_metadata(&mine).await.map_err(|e| e.to_string())?;
            left.items
                .is_empty()
                .then_some(())
                .ok_or(format!("{} left", left.items.len()))
        },
    )
    .await;
    let _ = Api::<ServiceAccount>::namespaced(admin.clone(), SYSTEM_NAMESPACE)
        .delete_collection(&dp, &mine)
        .await;
    let _ = Api::<ClusterRoleBinding>::all(admin.clone())
        .delete_collection(&dp, &mine)
        .await;
    let _ = Api::<ClusterRole>::all(admin.clone())
        .delete_collection(&dp, &mine)
        .await;
    let csrs: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let devices: Api<EdgeDevice> = Api::all(admin.clone());
    let nodes: Api<Node> = Api::all(admin.clone());
    for device in DEVICES {
        let _ = devices.delete(device, &dp).await;
        let _ = nodes.delete(device, &dp).await;
        let own = ListParams::default().labels(&format!("{DEVICE_LABEL}={device}"));
        let _ = csrs.delete_collection(&dp, &own).await;
    }
}
