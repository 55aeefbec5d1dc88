"""edgefleet's charts installed, upgraded and uninstalled on the lab's real cluster with
Helm v4's own engine (helm-python-sdk), the way a user installs it. The controller runs in
the cluster under the chart's RBAC only, the chart's bootstrap joins every device (each
agent then runs as a static pod with its device's own certificate), and examples/ is
applied the GitOps way and checked for drift. Run by `e2e/run-e2e` after the Rust tests,
while the lab is up; needs the images (`e2e/build-images --load`)."""

import base64
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "e2e"))

from edgefleet_lab import (AGENT_FILE, CHARTS, CRDS, EXAMPLES, KUBECONFIG, NS, all_ready, condition, enrol_devices, grant_examples,  # noqa: E402
                           edge_devices, helm, installed, joined, kubectl, kubectl_json, lab_info, lab_values, remove_agents,
                           rollout_progress, wait_for)


def desired_modules(device: str) -> dict:
    dev = kubectl_json("get", "edgedevice", device)
    return {m["name"]: m for m in dev["spec"].get("desired", {}).get("modules", [])}


def openssl_request(tmp: str, device: str) -> str:
    """A PEM certificate request naming `device`, made with openssl in `tmp`."""
    key, csr = pathlib.Path(tmp, f"{device}.key"), pathlib.Path(tmp, f"{device}.csr")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(csr),
                    "-subj", f"/O=edgefleet:devices/CN=edgefleet:device:{device}"],
                   check=True, capture_output=True)
    return csr.read_text()


def create_as_pod(token: str, name: str, request: str) -> str:
    """Creates the certificate request `name` with the bootstrap account's `token`, labelled
    like the bootstrap's own (the controller watches only those); returns its name."""
    with tempfile.TemporaryDirectory() as tmp:
        obj = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
               "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "edgefleet-bootstrap"}},
               "spec": {"request": base64.b64encode(request.encode()).decode(),
                        "signerName": "kubernetes.io/kube-apiserver-client",
                        "usages": ["client auth", "digital signature"]}}
        manifest = pathlib.Path(tmp, "csr.json")
        manifest.write_text(json.dumps(obj))
        admin = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
        as_pod = {"apiVersion": "v1", "kind": "Config", "current-context": "pod",
                  "clusters": admin["clusters"],
                  "users": [{"name": "pod", "user": {"token": token}}],
                  "contexts": [{"name": "pod", "context": {"cluster": admin["clusters"][0]["name"], "user": "pod"}}]}
        pod_config = pathlib.Path(tmp, "pod.kubeconfig")
        pod_config.write_text(json.dumps(as_pod))
        out = subprocess.run(["kubectl", "--kubeconfig", str(pod_config), "create", "-f", str(manifest)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise AssertionError(f"creating the request {name} as the bootstrap pod: {out.stderr}")
    return name


def forged_request(token: str, device: str) -> str:
    """A certificate request for `device`, sent with the bootstrap account's token bound to a
    pod on another node; returns its name."""
    with tempfile.TemporaryDirectory() as tmp:
        request = openssl_request(tmp, device)
    return create_as_pod(token, f"forged-{device}-{int(time.time())}", request)


def two_block_request(token: str, shown: str, smuggled: str) -> str:
    """The request that once joined any identity: a first PEM block naming `shown` (the
    token's own node) closed by a wrong END line, then a second naming `smuggled`. Go's PEM
    reader skips the badly closed block, so Kubernetes reads (and would sign) the second;
    returns its name."""
    with tempfile.TemporaryDirectory() as tmp:
        first = openssl_request(tmp, shown).replace("-----END CERTIFICATE REQUEST-----", "-----END X-----")
        second = openssl_request(tmp, smuggled)
    return create_as_pod(token, f"two-blocks-{smuggled}-{int(time.time())}", first + second)


def decision(name: str):
    """The Approved or Denied condition of the request `name`, once it has one."""
    conds = kubectl_json("get", "csr", name).get("status", {}).get("conditions", [])
    return next((c for c in conds if c["type"] in ("Denied", "Approved")), None)


class LabInstall(unittest.TestCase):
    def test_install_join_gitops_upgrade_uninstall(self):
        cfg = helm()
        devices = edge_devices()
        # A run cut short earlier may have left releases and agents behind; earlier tests
        # applied the CRDs themselves, and Helm must own them. All of that goes first.
        for leftover in ("edgefleet", "edgefleet-crds"):
            if installed(cfg, leftover):
                cfg.uninstall(leftover, wait="watcher", timeout=120)
        remove_agents()
        kubectl("delete", "csr", "-l", "app.kubernetes.io/name=edgefleet-bootstrap", "--ignore-not-found")
        kubectl("delete", "crd", *CRDS, "--ignore-not-found", "--wait=true")
        kubectl("delete", "clusterrole,clusterrolebinding", "-l", "app.kubernetes.io/name in (edgefleet-controller,edgefleet-bootstrap)",
                "--ignore-not-found")

        cfg.install(CHARTS / "edgefleet-crds", "edgefleet-crds", namespace=NS, create_namespace=True, wait="watcher", timeout=120)
        for crd in CRDS:
            kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s")

        release = cfg.install(
            CHARTS / "edgefleet", "edgefleet", lab_values(), namespace=NS,
            create_namespace=True, wait="watcher", timeout=180,
        )
        self.assertEqual(release["status"], "deployed")
        enrol_devices()

        # The controller, under the chart's RBAC alone, registers every lab device and gives
        # each its own RBAC.
        def registered():
            ok = sorted(d["metadata"]["name"] for d in kubectl_json("get", "edgedevices")["items"]
                        if condition(d, "Registered"))
            return ok if ok == devices else None
        wait_for("the in-cluster controller to register the devices", registered)
        wait_for("per-device RBAC", lambda: kubectl("get", "clusterrole", "edgefleet-device-edge-1", check=False))

        # The bootstrap joins every device: approved certificate requests, one per device,
        # then each agent reports as its device, online.
        wait_for("the bootstrap to join every device", lambda: joined() == devices, timeout=240)
        csrs = [c for c in kubectl_json("get", "csr", "-l", "app.kubernetes.io/name=edgefleet-bootstrap")["items"]
                if any(x["type"] == "Approved" for x in c.get("status", {}).get("conditions", []))]
        self.assertEqual(sorted(c["metadata"]["labels"]["edgefleet.io/device"] for c in csrs), devices)
        for c in csrs:
            (approved,) = c["status"]["conditions"]
            self.assertEqual(approved["reason"], "EdgefleetDeviceJoin")
            self.assertEqual(c["spec"]["username"], f"system:serviceaccount:{NS}:edgefleet-bootstrap")
        kubeconfig = pathlib.Path(lab_info("edge-1")["node_dir"], "agent-state", "agent.kubeconfig")
        self.assertEqual(kubeconfig.stat().st_mode & 0o777, 0o600)
        self.assertTrue(pathlib.Path(lab_info("edge-1")["manifests"], AGENT_FILE).exists())

        # A bootstrap pod may join its own device only: a request for edge-2 with a token bound
        # to edge-1's bootstrap pod is denied, with the reason.
        pods = kubectl_json("get", "pods", "-n", NS, "-l", "app.kubernetes.io/name=edgefleet-bootstrap",
                            "--field-selector", "spec.nodeName=edge-1")["items"]
        token = kubectl("create", "token", "-n", NS, "edgefleet-bootstrap", "--bound-object-kind", "Pod",
                        "--bound-object-name", pods[0]["metadata"]["name"]).strip()
        forged = forged_request(token, "edge-2")
        verdict = wait_for("the forged request to be decided", lambda: decision(forged), timeout=60)
        self.assertEqual(verdict["type"], "Denied", verdict)
        self.assertIn("runs on node edge-1, so it may join only that node, not edge-2", verdict["message"])
        kubectl("delete", "csr", forged)
        self.assert_a_second_pem_block_cannot_smuggle_another_identity(token, "edge-1", "edge-2")

        # GitOps: examples/ applied with kustomize rolls out to every device, and once the
        # controller has written its part, kubectl sees no drift. Server-side apply too.
        grant_examples()
        kubectl("apply", "-k", str(EXAMPLES))
        wait_for("every example deployment Ready", all_ready, timeout=240, progress=rollout_progress)
        self.assertEqual(set(desired_modules("edge-1")), {"sensor", "filter", "ml-model"})
        self.assertEqual(set(desired_modules("edge-2")), {"sensor", "filter", "ml-model"})
        filter_env = {e["name"]: e["value"] for e in desired_modules("edge-1")["filter"].get("env", [])}
        self.assertEqual(filter_env.get("FILTER_MAX_C"), "60", "the Berlin layer tunes the filter")
        model_env = {e["name"]: e["value"] for e in desired_modules("edge-2")["ml-model"].get("env", [])}
        self.assertEqual(model_env.get("MODEL_THRESHOLD"), "2.5", "the Jetson deployment owns edge-2")
        base = kubectl_json("get", "edgedeployment", "-n", "fleet-demo", "fleet-base")["status"]
        self.assertEqual((base["targeted"], base["lost"]), (len(devices) - 1, 1), base)
        self.assert_no_drift()
        # Moving from client-side to server-side apply takes the fields over once (kubectl's
        # documented migration); from then on server-side apply is conflict-free.
        kubectl("apply", "--server-side", "--force-conflicts", "-k", str(EXAMPLES))
        self.assert_no_drift()
        kubectl("apply", "--server-side", "-k", str(EXAMPLES))
        self.assert_no_drift()
        self.assertTrue(all_ready())
        self.assert_the_webhook_refuses_what_no_grant_allows()

        # Upgrade: a changed setting rolls out.
        cfg.upgrade(
            CHARTS / "edgefleet", "edgefleet", lab_values(controller={"offlineThreshold": "60s"}),
            namespace=NS, wait="watcher", timeout=180,
        )
        args = kubectl_json("get", "deployment", "-n", NS, "edgefleet-controller")
        self.assertIn("--offline-threshold=60s", args["spec"]["template"]["spec"]["containers"][0]["args"])
        self.assertEqual(sorted(r["revision"] for r in cfg.history("edgefleet")), [1, 2])
        logs = kubectl("logs", "-n", NS, "deployment/edgefleet-controller")
        self.assertNotIn("forbidden", logs.lower(), logs[-2000:])

        # The examples go away with kubectl, and the agents take their modules off.
        kubectl("delete", "-k", str(EXAMPLES), "--wait=true")

        def modules_gone():
            left = {d["metadata"]["name"]: [m["name"] for m in d.get("status", {}).get("modules", [])]
                    for d in kubectl_json("get", "edgedevices")["items"]}
            return all(not m for m in left.values()) or AssertionError(left)
        wait_for("the agents to remove the examples' modules", modules_gone, timeout=120)

        # Uninstall: the controller's and the bootstrap's objects go; the agents the bootstrap
        # placed keep running (they are files on the devices); the CRDs stay (resource-policy
        # keep), and with them every device and deployment.
        cfg.uninstall("edgefleet", wait="watcher", timeout=120)
        for app in ("edgefleet-controller", "edgefleet-bootstrap"):
            wait_for(f"the {app} objects to go", lambda: not kubectl(
                "get", "deployment,daemonset,serviceaccount,role,rolebinding", "-n", NS,
                "-l", f"app.kubernetes.io/name={app}", "-o", "name"))
            self.assertFalse(kubectl("get", "clusterrole", "-l", f"app.kubernetes.io/name={app}", "-o", "name"))
        self.assertTrue(pathlib.Path(lab_info("edge-1")["manifests"], AGENT_FILE).exists())
        remove_agents()
        cfg.uninstall("edgefleet-crds", timeout=120)
        for crd in CRDS:
            kubectl("get", "crd", crd)

    def assert_the_webhook_refuses_what_no_grant_allows(self):
        """The chart's admission webhook, reached through its Service: fleet-demo's grant
        allows the host's network but no host device, so the apiserver refuses a module
        asking for one, with the grant's reason."""
        module = json.dumps({"apiVersion": "edgefleet.io/v1alpha1", "kind": "EdgeModule",
                             "metadata": {"name": "serial", "namespace": "fleet-demo"},
                             "spec": {"image": "localhost/edgefleet/sensor:v1", "devices": [{"hostPath": "/dev/ttyS0"}]}})

        def refused():
            out = subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, "apply", "--dry-run=server", "-f", "-"],
                                 input=module, capture_output=True, text=True)
            return out.stderr if out.returncode != 0 else AssertionError(f"admitted: {out.stdout.strip()}")
        why = wait_for("the chart's webhook to refuse a host device", refused, timeout=60)
        self.assertIn("grant fleet-demo: module \"serial\" asks for host devices", why)

    def assert_a_second_pem_block_cannot_smuggle_another_identity(self, token: str, own: str, other: str):
        """Edge-1's bootstrap pod sends a request whose first block, badly closed, names its
        own device and whose second (the one Kubernetes reads) names another: denied, and
        no certificate is ever issued for it."""
        name = two_block_request(token, own, other)
        verdict = wait_for("the two-block request to be decided", lambda: decision(name), timeout=60)
        self.assertEqual(verdict["type"], "Denied", verdict)
        self.assertIn("-----END X-----", verdict["message"])
        time.sleep(5)
        status = kubectl_json("get", "csr", name).get("status", {})
        self.assertFalse(status.get("certificate"), status)
        self.assertEqual([c["type"] for c in status.get("conditions", [])], ["Denied"], status)
        kubectl("delete", "csr", name)

    def assert_no_drift(self):
        out = subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, "diff", "-k", str(EXAMPLES)],
                             capture_output=True, text=True, env={**os.environ, "KUBECTL_EXTERNAL_DIFF": ""})
        self.assertEqual(out.returncode, 0, f"kubectl diff -k examples/ shows drift:\n{out.stdout}{out.stderr}")


if __name__ == "__main__":
    sys.exit(unittest.main())
