//! The lab's smoke test, on real components: every node Ready; a static pod on edge-2 runs,
//! mirrors into the API and serves its logs; `offline` makes the Node NotReady while the
//! container keeps running on the device's containerd; `online` brings it back without a
//! restart; `reboot` brings the static pod back. Pods on every node keep their logs. Also
//! the lab CLI's answers to bad input.

use std::time::Duration;

use edgefleet_e2e::{Lab, fresh_namespace, wait_for};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::Api;
use kube::api::{DeleteParams, LogParams};

const DEVICE: &str = "edge-2";
const CONTAINER: &str = "ticker";
/// The logs test's container, apart from the smoke test's (tests find containers by name).
const LOG_CONTAINER: &str = "log-ticker";

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

fn static_pod(name: &str, namespace: &str, container: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
spec:
  hostNetwork: true
  containers:
  - name: {container}
    image: localhost/edgefleet-lab/busybox:1
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 1; done"]
"#
    )
}

async fn node_is(nodes: &Api<Node>, name: &str, ready: bool) -> Result<(), String> {
    let node = nodes.get(name).await.map_err(|e| e.to_string())?;
    if node_ready(&node) == ready {
        Ok(())
    } else {
        Err(format!("{name} Ready={}", node_ready(&node)))
    }
}

async fn mirror_pod_running(pods: &Api<Pod>, name: &str) -> Result<Pod, String> {
    let pod = pods.get(name).await.map_err(|e| e.to_string())?;
    let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| cs.iter().all(|c| c.ready));
    if phase.as_deref() == Some("Running") && ready {
        Ok(pod)
    } else {
        Err(format!("phase {phase:?}, containers ready: {ready}"))
    }
}

fn restart_count(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.first())
        .map_or(-1, |c| c.restart_count)
}

#[tokio::test]
#[ignore = "needs the lab: e2e/lab up (make e2e runs it)"]
async fn static_pod_survives_offline_and_comes_back_after_reboot() {
    let lab = Lab::get();
    let client = lab.client().await;
    let nodes: Api<Node> = Api::all(client.clone());

    // Every node is Ready.
    let all = nodes.list(&Default::default()).await.expect("list nodes");
    let not_ready: Vec<_> = all
        .items
        .iter()
        .filter(|n| !node_ready(n))
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    assert!(all.items.len() >= 2, "the lab has no devices: {all:?}");
    assert!(not_ready.is_empty(), "nodes not Ready: {not_ready:?}");

    // A throwaway labelled namespace for the mirror pod.
    let ns_name = fresh_namespace(&client, "e2e-lab-smoke").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());

    // A static pod placed on edge-2 runs and appears as a mirror pod.
    let info = lab.info(DEVICE);
    let manifest = info.manifests.join("e2e-lab-smoke.yaml");
    std::fs::write(&manifest, static_pod("smoke", &ns_name, CONTAINER)).expect("write static pod");
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_name);
    let mirror = format!("smoke-{DEVICE}");
    let pod = wait_for("the mirror pod to run", Duration::from_secs(90), || {
        mirror_pod_running(&pods, &mirror)
    })
    .await;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(DEVICE)
    );
    assert!(
        pod.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror")),
        "{mirror} is not a mirror pod: {:?}",
        pod.metadata.annotations
    );

    // kubectl logs returns its output (the same API call kubectl makes).
    let logs = wait_for(
        "the pod's log to show ticks",
        Duration::from_secs(30),
        || {
            let pods = pods.clone();
            let mirror = mirror.clone();
            async move {
                let log = pods
                    .logs(&mirror, &LogParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                if log.contains("tick 1") {
                    Ok(log)
                } else {
                    Err(log)
                }
            }
        },
    )
    .await;
    assert!(logs.starts_with("tick 0"), "unexpected log: {logs}");

    let before = lab
        .running_task(DEVICE, CONTAINER)
        .expect("the ticker runs on the device's containerd");

    // Offline: Node NotReady, the container keeps running on the device.
    lab.run(&["offline", DEVICE]);
    wait_for("edge-2 to turn NotReady", Duration::from_secs(90), || {
        node_is(&nodes, DEVICE, false)
    })
    .await;
    let offline = lab
        .running_task(DEVICE, CONTAINER)
        .expect("the ticker still runs while offline");
    assert_eq!(offline, before, "the container changed while offline");

    // Online: Ready again, the very same container, no restart.
    lab.run(&["online", DEVICE]);
    wait_for("edge-2 to turn Ready", Duration::from_secs(90), || {
        node_is(&nodes, DEVICE, true)
    })
    .await;
    assert_eq!(
        lab.running_task(DEVICE, CONTAINER),
        Some(before.clone()),
        "the container was restarted by going online"
    );
    let pod = pods.get(&mirror).await.expect("mirror pod");
    assert_eq!(
        restart_count(&pod),
        0,
        "restartCount rose: {:?}",
        pod.status
    );

    // Reboot: every process of the device dies; the static pod comes back from its file.
    lab.run(&["reboot", DEVICE]);
    assert!(
        lab.tasks(DEVICE).iter().all(|t| t.pid != before.pid),
        "the old container survived the reboot"
    );
    let after = wait_for(
        "the ticker to run again after the reboot",
        Duration::from_secs(90),
        || async {
            lab.running_task(DEVICE, CONTAINER)
                .ok_or("no running ticker task")
        },
    )
    .await;
    assert_ne!(after.pid, before.pid);
    wait_for(
        "the mirror pod to run after the reboot",
        Duration::from_secs(90),
        || mirror_pod_running(&pods, &mirror),
    )
    .await;
    wait_for(
        "edge-2 to be Ready after the reboot",
        Duration::from_secs(90),
        || node_is(&nodes, DEVICE, true),
    )
    .await;

    std::fs::remove_file(&manifest).expect("remove static pod");
    wait_for("the ticker to stop", Duration::from_secs(60), || async {
        match lab.running_task(DEVICE, CONTAINER) {
            None => Ok(()),
            Some(t) => Err(t),
        }
    })
    .await;
    namespaces
        .delete(&ns_name, &DeleteParams::default())
        .await
        .expect("delete test namespace");
}

/// `kubectl logs` works for pods on every node, and keeps working: with one `/var/log/pods`
/// shared by every kubelet of the lab, each kubelet's container garbage collection removed
/// the log directories of pods it did not know, i.e. every other node's.
#[tokio::test]
#[ignore = "needs the lab: e2e/lab up (make e2e runs it)"]
async fn every_nodes_pods_keep_their_logs() {
    let lab = Lab::get();
    let client = lab.client().await;
    let ns_name = fresh_namespace(&client, "e2e-lab-logs").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut nodes = vec!["cloud-1".to_owned()];
    nodes.extend((1..=lab.device_count()).map(|i| format!("edge-{i}")));
    let manifests: Vec<_> = nodes
        .iter()
        .map(|node| {
            let path = lab.info(node).manifests.join("e2e-lab-logs.yaml");
            std::fs::write(&path, static_pod("logs", &ns_name, LOG_CONTAINER))
                .expect("write static pod");
            path
        })
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns_name);
    let read_all = || async {
        let mut missing = Vec::new();
        for node in &nodes {
            let mirror = format!("logs-{node}");
            match pods.logs(&mirror, &LogParams::default()).await {
                // The whole log, from its first line: a log directory removed and made
                // again starts later.
                Ok(log) if log.starts_with("tick 0\n") && log.contains("\ntick 1\n") => {}
                Ok(log) => missing.push(format!("{node}: {log:?}")),
                Err(e) => missing.push(format!("{node}: {e}")),
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    };
    wait_for("every node's pod log", Duration::from_secs(90), read_all).await;
    // Past a container garbage collection of every kubelet (one a minute), which removes
    // the log directories of pods the kubelet does not know.
    tokio::time::sleep(Duration::from_secs(75)).await;
    if let Err(missing) = read_all().await {
        panic!("pod logs vanished: {missing:?}");
    }
    for path in manifests {
        std::fs::remove_file(&path).expect("remove static pod");
    }
    for node in &nodes {
        wait_for(
            &format!("the log ticker on {node} to stop"),
            Duration::from_secs(60),
            || async {
                match lab.running_task(node, LOG_CONTAINER) {
                    None => Ok(()),
                    Some(t) => Err(t),
                }
            },
        )
        .await;
    }
    namespaces
        .delete(&ns_name, &DeleteParams::default())
        .await
        .expect("delete test namespace");
}

#[tokio::test]
#[ignore = "needs the lab: e2e/lab up (make e2e runs it)"]
async fn lab_cli_refuses_bad_input_and_up_is_idempotent() {
    let lab = Lab::get();
    let devices = lab.device_count();
    // edge-1's kubelet as `status` lists it (pid and state), taken before any refused
    // command: none of them may stop or restart it.
    let kubelet = |lab: &Lab| {
        lab.run(&["status"])
            .lines()
            .find(|l| l.starts_with("edge-1/kubelet"))
            .map(|l| l.split_whitespace().skip(1).take(2).collect::<Vec<_>>())
            .map(|pid_and_state| pid_and_state.join(" "))
            .expect("status lists edge-1's kubelet")
    };
    let before = kubelet(&lab);
    let expect_refusal = |args: &[&str], says: &str| {
        let out = lab.try_run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "e2e/lab {args:?} succeeded");
        assert!(
            stderr.contains(says),
            "e2e/lab {args:?} said {stderr:?}, expected it to mention {says:?}"
        );
    };
    expect_refusal(&["offline", "edge-99"], "unknown device 'edge-99'");
    expect_refusal(&["reboot", "cloud-1"], "is the cloud node");
    expect_refusal(&["exec", "nope", "--", "true"], "unknown device 'nope'");
    let other = (devices + 1).to_string();
    expect_refusal(&["up", "--devices", &other], "already up with");
    expect_refusal(&["up", "--devices", "zero"], "whole number");
    expect_refusal(
        &["load-image", "/nonexistent.tar"],
        "cannot read image archive",
    );
    expect_refusal(&["frobnicate"], "unknown command");

    // Too little free disk stops `up` before anything starts, saying so.
    let out = std::process::Command::new(lab.script())
        .args(["up", "--devices", &devices.to_string()])
        .env("EDGEFLEET_LAB_MIN_FREE_MIB", "999999999")
        .output()
        .expect("run e2e/lab up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "up on a too full disk succeeded");
    assert!(
        stderr.contains("the lab needs 999999999 MiB"),
        "unexpected message: {stderr}"
    );

    // A Debian package that cannot be installed stops `up` before anything starts.
    let out = std::process::Command::new(lab.script())
        .args(["up", "--devices", &devices.to_string()])
        .env("EDGEFLEET_LAB_EXTRA_PACKAGES", "edgefleet-no-such-package")
        .output()
        .expect("run e2e/lab up");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "up with an uninstallable package succeeded"
    );
    assert!(
        stderr.contains("cannot install Debian packages: edgefleet-no-such-package"),
        "unexpected message: {stderr}"
    );

    assert_eq!(kubelet(&lab), before, "the failed up disturbed the lab");

    // `up` again with the same size is harmless: nothing restarts, every node stays Ready.
    lab.run(&["up", "--devices", &devices.to_string()]);
    assert_eq!(
        kubelet(&lab),
        before,
        "a second `up` restarted edge-1's kubelet"
    );
}

#[tokio::test]
#[ignore = "needs the lab: e2e/lab up (make e2e runs it)"]
async fn device_kubeconfigs_authenticate_as_the_device() {
    let lab = Lab::get();
    let info = lab.info("edge-1");

    // From the host: the apiserver knows the caller as the device, which RBAC grants nothing
    // cluster-wide (the controller will grant it its own objects).
    let path = info.kubeconfig.expect("edge-1 has a device kubeconfig");
    let client = edgefleet_e2e::client_from(&path).await;
    let err = Api::<Node>::all(client)
        .list(&Default::default())
        .await
        .expect_err("a device may not list nodes");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 403, "{status:?}");
            assert!(
                status.message.contains("\"edgefleet:device:edge-1\""),
                "the apiserver did not see the device identity: {}",
                status.message
            );
        }
        other => panic!("expected 403 Forbidden, got {other}"),
    }

    // From inside the device: its own copy reaches the apiserver over the lab network and
    // verifies it against the lab CA.
    let agent = format!("{}/agent.kubeconfig", info.node_dir.display());
    let out = lab.try_run(&[
        "exec",
        "edge-1",
        "--",
        "kubectl",
        "--kubeconfig",
        &agent,
        "get",
        "nodes",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("User \"edgefleet:device:edge-1\" cannot list resource \"nodes\""),
        "unexpected answer inside the device: {stderr}"
    );
}
