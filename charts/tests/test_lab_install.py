"""edgefleet's charts installed, upgraded and uninstalled on the lab's real cluster with
Helm v4's own engine (helm-python-sdk). The controller then runs in the cluster under the
chart's RBAC only, so this also proves that RBAC is enough. Run by `e2e/run-e2e` after the
Rust tests, while the lab is up; needs the controller image (`e2e/build-images --load`)."""

import json
import pathlib
import subprocess
import sys
import time
import unittest

import helm_python

CHARTS = pathlib.Path(__file__).resolve().parent.parent
ROOT = CHARTS.parent
NS = "edgefleet-system"
CRDS = ["edgemodules.edgefleet.io", "edgedeployments.edgefleet.io", "edgedevices.edgefleet.io"]


def lab(*args: str) -> str:
    return subprocess.run([str(ROOT / "e2e/lab"), *args], check=True, capture_output=True, text=True).stdout.strip()


KUBECONFIG = lab("kubeconfig")


def kubectl(*args: str, check: bool = True) -> str:
    out = subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def wait_for(what: str, check, timeout: float = 120):
    """Polls `check` until it returns something true; fails with what it saw last."""
    start, last = time.monotonic(), None
    while time.monotonic() - start < timeout:
        try:
            last = check()
            if last:
                print(f"lab install: {what}: after {time.monotonic() - start:.1f}s", file=sys.stderr)
                return last
        except AssertionError as e:
            last = e
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last}")


def lab_values(**extra) -> dict:
    repo, tag = (ROOT / "target/images/controller.ref").read_text().strip().rsplit(":", 1)
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        # The lab has one cloud node and no pod network: one replica, on the host's network,
        # talking to the apiserver's address directly.
        "replicas": 1,
        "hostNetwork": True,
        "apiServer": "10.77.0.1:6443",
        "nodeSelector": {"edgefleet.io/role": "cloud"},
        "tolerations": [{"key": "edgefleet.io/role", "operator": "Equal", "value": "cloud", "effect": "NoSchedule"}],
    }
    values.update(extra)
    return values


class LabInstall(unittest.TestCase):
    def test_install_upgrade_uninstall(self):
        cfg = helm_python.Config(kubeconfig_path=KUBECONFIG, namespace=NS)
        # Earlier tests applied the CRDs themselves; Helm must own them, so they go first.
        kubectl("delete", "crd", *CRDS, "--ignore-not-found", "--wait=true")
        kubectl("delete", "clusterrole,clusterrolebinding", "-l", "app.kubernetes.io/name=edgefleet-controller", "--ignore-not-found")

        cfg.install(CHARTS / "edgefleet-crds", "edgefleet-crds", namespace=NS, create_namespace=True, wait="watcher", timeout=120)
        for crd in CRDS:
            kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")

        release = cfg.install(
            CHARTS / "edgefleet", "edgefleet", lab_values(), namespace=NS,
            create_namespace=True, wait="watcher", timeout=180,
        )
        self.assertEqual(release["status"], "deployed")

        # The controller, under the chart's RBAC alone, registers every lab device and gives
        # each its own RBAC.
        def registered():
            devices = json.loads(kubectl("get", "edgedevices", "-o", "json"))["items"]
            ok = sorted(
                d["metadata"]["name"] for d in devices
                if any(c["type"] == "Registered" and c["status"] == "True"
                       for c in d.get("status", {}).get("conditions", []))
            )
            return ok if ok == ["edge-1", "edge-2", "edge-3"] else None
        wait_for("the in-cluster controller to register the devices", registered)
        wait_for("per-device RBAC", lambda: kubectl("get", "clusterrole", "edgefleet-device-edge-1", check=False))
        logs = kubectl("logs", "-n", NS, "deployment/edgefleet-controller")
        self.assertNotIn("forbidden", logs.lower(), logs[-2000:])

        # Upgrade: a changed setting rolls out.
        cfg.upgrade(
            CHARTS / "edgefleet", "edgefleet", lab_values(controller={"offlineThreshold": "60s"}),
            namespace=NS, wait="watcher", timeout=180,
        )
        args = json.loads(kubectl("get", "deployment", "-n", NS, "edgefleet-controller", "-o", "json"))
        self.assertIn("--offline-threshold=60s", args["spec"]["template"]["spec"]["containers"][0]["args"])
        self.assertEqual(sorted(r["revision"] for r in cfg.history("edgefleet")), [1, 2])

        # Uninstall: the controller's objects go; the CRDs stay (resource-policy keep), and
        # with them every device and deployment.
        cfg.uninstall("edgefleet", wait="watcher", timeout=120)
        wait_for("the controller's objects to go", lambda: not kubectl(
            "get", "deployment,serviceaccount,role,rolebinding", "-n", NS,
            "-l", "app.kubernetes.io/name=edgefleet-controller", "-o", "name"))
        self.assertFalse(kubectl("get", "clusterrole", "-l", "app.kubernetes.io/name=edgefleet-controller", "-o", "name"))
        cfg.uninstall("edgefleet-crds", timeout=120)
        for crd in CRDS:
            kubectl("get", "crd", crd)


if __name__ == "__main__":
    sys.exit(unittest.main())
