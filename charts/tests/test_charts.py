"""Offline checks of edgefleet's charts with Helm v4's own engine (helm-python-sdk):
lint, render, the values schema, and the CRD chart against the generated CRDs.
Run by `make chart-check` (part of `make lint`)."""

import base64
import pathlib
import sys
import unittest

import helm_python
import yaml

CHARTS = pathlib.Path(__file__).resolve().parent.parent
ROOT = CHARTS.parent


def docs(rendered: dict) -> list:
    return [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]


# The oldest Kubernetes the charts support, and the lab's (where the lab tests run).
MIN_KUBE = "v1.30.0"
LAB_KUBE = "v1.36.3"


class Lint(unittest.TestCase):
    def test_both_charts_lint_clean_from_the_oldest_supported_kubernetes_to_the_labs(self):
        for chart in ("edgefleet", "edgefleet-crds"):
            for kube in (MIN_KUBE, LAB_KUBE):
                report = helm_python.lint(CHARTS / chart, strict=True, namespace="edgefleet-system", kube_version=kube)
                problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
                self.assertEqual(problems, [], f"{chart} on {kube}: {problems}")

    def test_both_charts_state_the_oldest_supported_kubernetes(self):
        for chart in ("edgefleet", "edgefleet-crds"):
            meta = yaml.safe_load((CHARTS / chart / "Chart.yaml").read_text())
            self.assertEqual(meta.get("kubeVersion"), f">={MIN_KUBE[1:]}-0", chart)


class Controller(unittest.TestCase):
    def setUp(self):
        self.chart = helm_python.Chart.load(CHARTS / "edgefleet")

    def render(self, values=None):
        return docs(self.chart.render(values, name="edgefleet", namespace="edgefleet-system"))

    def kind(self, objs, kind):
        return [o for o in objs if o["kind"] == kind]

    def test_defaults(self):
        objs = self.render()
        (dep,) = self.kind(objs, "Deployment")
        self.assertEqual(dep["spec"]["replicas"], 2)
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        self.assertEqual(c["image"], "localhost/edgefleet/controller:0.1.0")
        self.assertIn("--namespace=edgefleet-system", c["args"])
        self.assertEqual(c["readinessProbe"]["httpGet"]["path"], "/readyz")
        self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        self.assertEqual(c["securityContext"]["capabilities"]["drop"], ["ALL"])
        self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        self.assertEqual(len(self.kind(objs, "PodDisruptionBudget")), 1)
        self.assertEqual(len(self.kind(objs, "Service")), 3)

    def test_admission_webhook(self):
        objs = self.render()
        (hook,) = self.kind(objs, "ValidatingWebhookConfiguration")
        (w,) = hook["webhooks"]
        self.assertEqual(w["clientConfig"]["service"]["name"], "edgefleet-controller-webhook")
        self.assertEqual(w["clientConfig"]["service"]["path"], "/validate")
        self.assertEqual(w["rules"][0]["resources"], ["edgedeployments", "edgemodules"])
        self.assertEqual(w["failurePolicy"], "Ignore")
        self.assertEqual(w["sideEffects"], "None")
        # The configuration trusts the CA that signed the Secret's certificate, and the
        # certificate names the Service.
        (secret,) = [o for o in self.kind(objs, "Secret") if o["metadata"]["name"] == "edgefleet-controller-webhook"]
        ca = base64.b64decode(w["clientConfig"]["caBundle"])
        self.assertEqual(base64.b64decode(secret["data"]["ca.crt"]), ca)
        crt = base64.b64decode(secret["data"]["tls.crt"]).decode()
        self.assertIn("BEGIN CERTIFICATE", crt)
        (dep,) = self.kind(objs, "Deployment")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        self.assertIn("--webhook-addr=0.0.0.0:9443", c["args"])
        self.assertEqual(c["volumeMounts"][0]["mountPath"], "/etc/edgefleet/webhook")
        # Off: none of it.
        objs = self.render({"webhook": {"enabled": False}})
        self.assertEqual(self.kind(objs, "ValidatingWebhookConfiguration"), [])
        (dep,) = self.kind(objs, "Deployment")
        (c,) = dep["spec"]["template"]["spec"]["containers"]
        self.assertFalse(any(a.startswith("--webhook") for a in c["args"]))

    def test_device_authorization(self):
        def rbac_writes(objs):
            roles = self.kind(objs, "ClusterRole") + self.kind(objs, "Role")
            return {res for o in roles if o["metadata"]["name"] == "edgefleet-controller"
                    for r in o["rules"] for res in r["resources"]
                    if r["apiGroups"] == ["rbac.authorization.k8s.io"]}

        def args(objs):
            (dep,) = self.kind(objs, "Deployment")
            (c,) = dep["spec"]["template"]["spec"]["containers"]
            return c["args"]

        # RBAC by default: the controller writes per-device roles and bindings.
        objs = self.render()
        self.assertNotIn("--device-authorization=webhook", args(objs))
        self.assertEqual(rbac_writes(objs),
                         {"clusterroles", "clusterrolebindings", "roles", "rolebindings"})
        # The device authorizer: no per-device RBAC, so no right to write any.
        objs = self.render({"controller": {"deviceAuthorization": "webhook"}})
        self.assertIn("--device-authorization=webhook", args(objs))
        self.assertEqual(rbac_writes(objs), set())
        # It is served on the webhook's port, so it needs the webhook.
        with self.assertRaises(helm_python.HelmError):
            self.render({"controller": {"deviceAuthorization": "webhook"},
                         "webhook": {"enabled": False}})

    def test_cloud_hub(self):
        objs = self.render({"hub": {"cloud": {"url": "tls://hub.example.com:7422",
                                               "dnsNames": ["hub.example.com"]}}})
        (sts,) = self.kind(objs, "StatefulSet")
        pod = sts["spec"]["template"]["spec"]
        self.assertTrue(pod["shareProcessNamespace"])
        self.assertTrue(pod["securityContext"]["runAsNonRoot"])
        hub, reloader = pod["containers"]
        self.assertEqual(hub["image"], "localhost/edgefleet/hub:2.15.2-r1")
        self.assertEqual(reloader["args"][0], "hub-reloader")
        self.assertIn("--upstream-max-mib=7680", reloader["args"], "3/4 of the 10240 MiB store")
        small = self.render({"hub": {"cloud": {"storeMiB": 256}}})
        (small_sts,) = self.kind(small, "StatefulSet")
        self.assertIn("--upstream-max-mib=192",
                      small_sts["spec"]["template"]["spec"]["containers"][1]["args"])
        for c in (hub, reloader):
            self.assertEqual(c["securityContext"]["capabilities"]["drop"], ["ALL"])
            self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
        self.assertEqual(sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"], "data")
        (config,) = [o for o in self.kind(objs, "ConfigMap") if o["metadata"]["name"] == "edgefleet-hub"]
        conf = config["data"]["nats.conf"]
        self.assertIn("verify_and_map: true", conf)
        self.assertIn('include "../accounts/accounts.conf"', conf)
        # Before the controller writes the accounts the hub still has a user (a nats-server
        # without any user admits anyone), and it is exactly what the controller writes
        # for a fleet of no device.
        (accounts,) = [o for o in self.kind(objs, "Secret") if o["metadata"]["name"] == "edgefleet-hub-accounts"]
        initial = base64.b64decode(accounts["data"]["accounts.conf"]).decode()
        self.assertEqual(initial, (ROOT / "controller/tests/data/hub-accounts-empty.conf").read_text())
        # The serving certificate names the URL's host; devices get the CA that signed it.
        (tls,) = [o for o in self.kind(objs, "Secret") if o["metadata"]["name"] == "edgefleet-hub-tls"]
        (ca,) = [o for o in self.kind(objs, "ConfigMap") if o["metadata"]["name"] == "edgefleet-hub-ca"]
        self.assertEqual(base64.b64decode(tls["data"]["ca.crt"]).decode(), ca["data"]["ca.crt"])
        # The bootstrap hands each agent the hub's image, the URL and the CA.
        (ds,) = self.kind(objs, "DaemonSet")
        (join,) = ds["spec"]["template"]["spec"]["containers"]
        self.assertIn("--hub-upstream=tls://hub.example.com:7422", join["args"])
        self.assertIn("--hub-upstream-ca-file=/etc/edgefleet-hub-ca/ca.crt", join["args"])
        self.assertTrue(any(a.startswith("--hub-image=") for a in join["args"]))
        (dep,) = self.kind(objs, "Deployment")
        self.assertIn("--cloud-hub=true", dep["spec"]["template"]["spec"]["containers"][0]["args"])
        # The controller may write the accounts Secret and no other.
        (role,) = self.kind(objs, "Role")
        secrets = [r for r in role["rules"] if "secrets" in r["resources"]]
        self.assertEqual(secrets, [{"apiGroups": [""], "resources": ["secrets"],
                                    "resourceNames": ["edgefleet-hub-accounts"], "verbs": ["get", "patch"]}])
        # Without a URL devices dial nothing; off, there is no hub at all.
        objs = self.render()
        (ds,) = self.kind(objs, "DaemonSet")
        self.assertFalse(any(a.startswith("--hub-upstream=") for a in ds["spec"]["template"]["spec"]["containers"][0]["args"]))
        objs = self.render({"hub": {"enabled": False}})
        self.assertEqual(self.kind(objs, "StatefulSet"), [])
        (ds,) = self.kind(objs, "DaemonSet")
        self.assertFalse(any(a.startswith("--hub") for a in ds["spec"]["template"]["spec"]["containers"][0]["args"]))

    def test_rbac_is_least_privilege(self):
        objs = self.render()
        (cr,) = [o for o in self.kind(objs, "ClusterRole") if o["metadata"]["name"] == "edgefleet-controller"]
        verbs = {v for r in cr["rules"] for v in r["verbs"]}
        self.assertNotIn("*", verbs)
        # It deletes nothing but ControllerRevisions: its own old ones, and forged or
        # unlabelled ones under a revision's name in a deployment's namespace.
        deleting = [r["resources"] for r in cr["rules"] if "delete" in r["verbs"]]
        self.assertEqual(deleting, [["controllerrevisions"]])
        self.assertNotIn("escalate", verbs)
        self.assertNotIn("bind", verbs)
        resources = {res for r in cr["rules"] for res in r["resources"]}
        self.assertNotIn("secrets", resources, "no Secret cluster-wide")
        self.assertNotIn("leases", resources, "leases only in the system namespace")
        (role,) = self.kind(objs, "Role")
        self.assertEqual(role["metadata"]["namespace"], "edgefleet-system")
        # The controller approves only apiserver client certificates.
        (signers,) = [r for r in cr["rules"] if r["resources"] == ["signers"]]
        self.assertEqual(signers["resourceNames"], ["kubernetes.io/kube-apiserver-client"])
        # The bootstrap may ask for certificates and nothing else.
        (boot,) = [o for o in self.kind(objs, "ClusterRole") if o["metadata"]["name"] == "edgefleet-bootstrap"]
        self.assertEqual(boot["rules"], [{"apiGroups": ["certificates.k8s.io"],
                                          "resources": ["certificatesigningrequests"], "verbs": ["create", "get"]}])

    def test_devices_get_priority_levels_of_their_own(self):
        # Agents' requests, matched by the devices' group (DEVICES_GROUP in crds/), go to
        # two levels of their own: Lease renewals in the release's namespace, and the rest.
        objs = self.render()
        levels = {o["metadata"]["name"]: o["spec"] for o in self.kind(objs, "PriorityLevelConfiguration")}
        schemas = {o["metadata"]["name"]: o["spec"] for o in self.kind(objs, "FlowSchema")}
        self.assertEqual(set(levels), {"edgefleet-device-heartbeats", "edgefleet-devices"})
        self.assertEqual(set(schemas), set(levels))
        for name, spec in schemas.items():
            self.assertEqual(spec["priorityLevelConfiguration"]["name"], name)
            self.assertEqual(spec["distinguisherMethod"]["type"], "ByUser")
            for rule in spec["rules"]:
                self.assertEqual(rule["subjects"], [{"kind": "Group", "group": {"name": "edgefleet:devices"}}])
        heartbeats = schemas["edgefleet-device-heartbeats"]
        (rule,) = heartbeats["rules"]
        self.assertEqual(rule["resourceRules"], [{
            "verbs": ["patch"], "apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
            "namespaces": ["edgefleet-system"]}])
        # Renewals are matched first, and both before the built-in catch-alls.
        self.assertLess(heartbeats["matchingPrecedence"], schemas["edgefleet-devices"]["matchingPrecedence"])
        self.assertLess(schemas["edgefleet-devices"]["matchingPrecedence"], 9000)
        self.assertEqual(levels["edgefleet-device-heartbeats"]["limited"]["lendablePercent"], 0)
        # Off: the cluster's own levels (global-default) take the devices.
        objs = self.render({"apiPriority": {"enabled": False}})
        self.assertEqual(self.kind(objs, "FlowSchema") + self.kind(objs, "PriorityLevelConfiguration"), [])

    def test_values_schema_rejects_bad_values(self):
        bad = [
            {"replicas": 0},
            {"replicas": "two"},
            {"controller": {"offlineThreshold": "soon"}},
            {"controller": {"concurrency": 0}},
            {"controller": {"renewalBudget": 0}},
            {"controller": {"renewalBudget": "lots"}},
            {"image": {"pullPolicy": "Sometimes"}},
            {"metrics": {"port": 80}},
            {"unknownKey": True},
            {"apiServer": "https://10.0.0.1"},
            {"agent": {"paths": {"manifestDir": "relative/dir"}}},
            {"agent": {"paths": {"stateDir": "/a/{node}/{node}"}}},
            {"agent": {"server": "10.0.0.1:6443"}},
            {"agent": {"apiserverProtocol": "h2c"}},
            # Precedence 1 is the apiserver's exempt schema's; 9900 on, the catch-alls' (the
            # devices' schema takes the next number).
            {"apiPriority": {"matchingPrecedence": 1}},
            {"apiPriority": {"matchingPrecedence": 9899}},
            {"apiPriority": {"devices": {"shares": 0}}},
            {"bootstrap": {"enabled": "yes"}},
            {"webhook": {"failurePolicy": "Sometimes"}},
            {"controller": {"deviceAuthorization": "nobody"}},
            # The URL is written into every device hub's config: no second line, no quote.
            {"hub": {"cloud": {"url": "tls://hub:7422\"\nlisten: 0.0.0.0:1"}}},
            {"hub": {"cloud": {"url": "nats://hub:4222"}}},
            {"hub": {"storeMiB": 1}},
            {"hub": {"cloud": {"dnsNames": ["bad name"]}}},
        ]
        for values in bad:
            with self.subTest(values=values):
                with self.assertRaises(helm_python.HelmError):
                    self.chart.render(values, name="edgefleet", namespace="edgefleet-system")
        # And good values pass.
        self.render({"replicas": 3, "controller": {"offlineThreshold": "2m"}})

    def test_controller_paces_renewals_from_the_agents_interval(self):
        # The controller stretches the interval the agents are given, so it is told it.
        objs = self.render({"agent": {"leaseInterval": "15s"}, "controller": {"renewalBudget": 50}})
        (dep,) = self.kind(objs, "Deployment")
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        self.assertIn("--lease-interval=15s", args)
        self.assertIn("--renewal-budget=50", args)
        (ds,) = self.kind(objs, "DaemonSet")
        self.assertIn("--lease-interval=15s", ds["spec"]["template"]["spec"]["containers"][0]["args"])

    def test_api_server_override(self):
        objs = self.render({"apiServer": "10.77.0.1:6443", "hostNetwork": True})
        (dep,) = self.kind(objs, "Deployment")
        pod = dep["spec"]["template"]["spec"]
        self.assertTrue(pod["hostNetwork"])
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        self.assertEqual(env["KUBERNETES_SERVICE_HOST"], "10.77.0.1")
        self.assertEqual(env["KUBERNETES_SERVICE_PORT"], "6443")

    def test_bootstrap_joins_each_device_with_k3s_paths(self):
        objs = self.render()
        (ds,) = self.kind(objs, "DaemonSet")
        pod = ds["spec"]["template"]["spec"]
        self.assertEqual(pod["nodeSelector"], {"edgefleet.io/device": "true"})
        self.assertFalse(pod["automountServiceAccountToken"])
        (c,) = pod["containers"]
        self.assertEqual(c["image"], "localhost/edgefleet/agent:0.1.0")
        self.assertIn("--manifest-dir=/var/lib/rancher/k3s/agent/pod-manifests", c["args"])
        self.assertIn("--apiserver-protocol=http1", c["args"])
        self.assertEqual(c["args"][c["args"].index("join") + 1], "--image=localhost/edgefleet/agent:0.1.0")
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["manifests"]["hostPath"]["path"], "/var/lib/rancher/k3s/agent/pod-manifests")
        self.assertTrue(all("subPathExpr" not in m for m in c["volumeMounts"]))
        sources = volumes["token"]["projected"]["sources"]
        self.assertIn("serviceAccountToken", sources[0])

    def test_bootstrap_paths_per_device(self):
        objs = self.render({"agent": {"paths": {
            "manifestDir": "/var/lib/lab/nodes/{node}/manifests",
            "stateDir": "/var/lib/lab/nodes/{node}",
            "criSocket": "/run/lab/nodes/{node}/containerd.sock"}}})
        (ds,) = self.kind(objs, "DaemonSet")
        pod = ds["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        self.assertIn("--manifest-dir=/var/lib/lab/nodes/$(EDGEFLEET_DEVICE)/manifests", c["args"])
        self.assertIn("--cri-socket=/run/lab/nodes/$(EDGEFLEET_DEVICE)/containerd.sock", c["args"])
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        self.assertEqual(mounts["manifests"]["subPathExpr"], "$(EDGEFLEET_DEVICE)/manifests")
        self.assertEqual(mounts["state"]["subPathExpr"], "$(EDGEFLEET_DEVICE)")
        volumes = {v["name"]: v for v in pod["volumes"]}
        self.assertEqual(volumes["manifests"]["hostPath"]["path"], "/var/lib/lab/nodes")

    def test_bootstrap_can_be_disabled(self):
        objs = self.render({"bootstrap": {"enabled": False}})
        self.assertEqual(self.kind(objs, "DaemonSet"), [])
        self.assertEqual([o for o in objs if "bootstrap" in o["metadata"]["name"]], [])

    def test_pdb_can_be_disabled(self):
        objs = self.render({"podDisruptionBudget": {"enabled": False}})
        self.assertEqual(self.kind(objs, "PodDisruptionBudget"), [])


class Crds(unittest.TestCase):
    def test_crd_chart_is_the_generated_crds(self):
        chart = helm_python.Chart.load(CHARTS / "edgefleet-crds")
        rendered = {pathlib.Path(k).name: yaml.safe_load(v) for k, v in chart.render(name="crds").items()}
        generated = {p.name: yaml.safe_load(p.read_text()) for p in (ROOT / "crds").glob("*.yaml")}
        self.assertEqual(rendered, generated)
        for crd in rendered.values():
            self.assertEqual(crd["metadata"]["annotations"]["helm.sh/resource-policy"], "keep")


if __name__ == "__main__":
    sys.exit(unittest.main())
