"""edgefleet installed on the lab with Helm v4's own engine (helm-python-sdk): the values
the lab needs, install-or-upgrade, and the waits that both `make demo` (e2e/demo.py) and the
Helm lab test (charts/tests/test_lab_install.py) use."""

import json
import pathlib
import subprocess
import sys
import time

import helm_python

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHARTS = ROOT / "charts"
EXAMPLES = ROOT / "examples"
NS = "edgefleet-system"
CRDS = ["edgemodules.edgefleet.io", "edgedeployments.edgefleet.io", "edgedevices.edgefleet.io", "edgegrants.edgefleet.io"]
AGENT_FILE = "edgefleet-agent.yaml"


def lab(*args: str) -> str:
    return subprocess.run([str(ROOT / "e2e/lab"), *args], check=True, capture_output=True, text=True).stdout.strip()


def lab_info(node: str) -> dict:
    return dict(line.split("=", 1) for line in lab("info", node).splitlines() if "=" in line)


KUBECONFIG = lab("kubeconfig")


def kubectl(*args: str, check: bool = True) -> str:
    out = subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def enrol_devices():
    """Enrols the lab's devices as an administrator does: their EdgeDevices, with the labels
    deployments select on (`kubectl apply -f <(e2e/lab enrolment)`)."""
    out = subprocess.run(["kubectl", "--kubeconfig", KUBECONFIG, "apply", "-f", "-"], input=lab("enrolment"),
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise AssertionError(f"enrolling the lab's devices: {out.stderr.strip()}")
    return out.stdout


def grant_examples():
    """Grants the examples' namespace what it needs, as the platform team does
    (`kubectl apply -f examples/platform/`)."""
    return kubectl("apply", "-f", str(EXAMPLES / "platform"))


def kubectl_json(*args: str) -> dict:
    return json.loads(kubectl(*args, "-o", "json"))


def wait_for(what: str, check, timeout: float = 120, progress=None):
    """Polls `check` until it returns something true; fails with what it saw last. A
    check may return (or raise) an AssertionError to say what it saw: that is not done.
    `progress`, if given, turns the last result into a line shown while waiting."""
    start, last, shown = time.monotonic(), None, 0.0
    tty = sys.stderr.isatty()
    while time.monotonic() - start < timeout:
        try:
            last = check()
            if last and not isinstance(last, AssertionError):
                if tty and progress:
                    print(file=sys.stderr)
                print(f"{what}: after {time.monotonic() - start:.1f}s", file=sys.stderr)
                return last
        except AssertionError as e:
            last = e
        elapsed = time.monotonic() - start
        if progress and (tty or elapsed - shown >= 10):
            line = f"  waiting for {what}: {progress()} ({elapsed:.0f}s)"
            print(f"\r{line:<100}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
            shown = elapsed
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last}")


def image_ref(name: str) -> str:
    return (ROOT / f"target/images/{name}.ref").read_text().strip()


def device_paths() -> dict:
    """The agent's paths on lab devices, "{node}" for the device's name (the lab keeps all
    devices side by side on one host)."""
    info = lab_info("edge-1")
    per_node = lambda path: path.replace("/edge-1/", "/{node}/")  # noqa: E731
    return {
        "manifestDir": per_node(info["manifests"]),
        "stateDir": per_node(info["node_dir"] + "/agent-state"),
        "criSocket": per_node(info["containerd_socket"]),
    }


def lab_values(**extra) -> dict:
    repo, tag = image_ref("controller").rsplit(":", 1)
    agent_repo, agent_tag = image_ref("agent").rsplit(":", 1)
    values = {
        "image": {"repository": repo, "tag": tag, "pullPolicy": "Never"},
        # The lab has one cloud node and no pod network: one replica, on the host's network,
        # talking to the apiserver's address directly.
        "replicas": 1,
        "hostNetwork": True,
        "apiServer": "10.77.0.1:6443",
        "nodeSelector": {"edgefleet.io/role": "cloud"},
        "tolerations": [{"key": "edgefleet.io/role", "operator": "Equal", "value": "cloud", "effect": "NoSchedule"}],
        "agent": {"image": {"repository": agent_repo, "tag": agent_tag, "pullPolicy": "Never"},
                  "paths": device_paths()},
    }
    values.update(extra)
    return values


def helm() -> helm_python.Config:
    return helm_python.Config(kubeconfig_path=KUBECONFIG, namespace=NS)


def installed(cfg: helm_python.Config, release: str) -> bool:
    try:
        return cfg.status(release)["status"] == "deployed"
    except helm_python.HelmError:
        return False


def install_or_upgrade(cfg: helm_python.Config, chart: str, release: str, values: dict | None = None, timeout: int = 180):
    if installed(cfg, release):
        return cfg.upgrade(CHARTS / chart, release, values, namespace=NS, wait="watcher", timeout=timeout)
    return cfg.install(CHARTS / chart, release, values, namespace=NS, create_namespace=True, wait="watcher", timeout=timeout)


def edge_devices() -> list[str]:
    nodes = kubectl_json("get", "nodes", "-l", "edgefleet.io/device=true")["items"]
    return sorted(n["metadata"]["name"] for n in nodes)


def condition(obj: dict, type_: str) -> bool:
    return any(c["type"] == type_ and c["status"] == "True" for c in obj.get("status", {}).get("conditions", []))


def joined() -> list[str]:
    """Devices whose agent runs (its static pod's mirror is Running), has reported, and keeps
    the device online."""
    agents = {p["spec"].get("nodeName") for p in kubectl_json("get", "pods", "-n", NS, "-l",
                                                              "app.kubernetes.io/name=edgefleet-agent")["items"]
              if p.get("status", {}).get("phase") == "Running"}
    devices = kubectl_json("get", "edgedevices")["items"]
    return sorted(d["metadata"]["name"] for d in devices
                  if d["metadata"]["name"] in agents and d.get("status", {}).get("agentVersion")
                  and condition(d, "Online"))


def deployments() -> list[dict]:
    return kubectl_json("get", "edgedeployments", "-A")["items"]


def rollout_progress() -> str:
    deps = deployments()
    ready = sum(condition(d, "Ready") for d in deps)
    devices = kubectl_json("get", "edgedevices")["items"]
    modules = [m for d in devices for m in d.get("status", {}).get("modules", [])]
    running = sum(m.get("runtimeStatus") == "running" for m in modules)
    return f"deployments Ready {ready}/{len(deps)}, modules running {running}/{len(modules)}"


def all_ready() -> bool:
    deps = deployments()
    return bool(deps) and all(condition(d, "Ready") for d in deps)


def remove_agents():
    """Takes the agents the bootstrap placed off every device (uninstalling the chart leaves
    them running, on purpose) and waits until their modules are gone."""
    for node in edge_devices():
        info = lab_info(node)
        (pathlib.Path(info["manifests"]) / AGENT_FILE).unlink(missing_ok=True)
        for f in pathlib.Path(info["manifests"]).glob("edgefleet-agent-module-*.yaml"):
            f.unlink()
        subprocess.run(["rm", "-rf", info["node_dir"] + "/agent-state"], check=True)

    def running():
        # Modules' mirror pods are in their teams' namespaces.
        return [p["metadata"]["name"] for selector in ("app.kubernetes.io/name=edgefleet-agent", "edgefleet.io/module")
                for p in kubectl_json("get", "pods", "-A", "-l", selector)["items"]]
    wait_for("the agents and their modules to stop", lambda: not running() or AssertionError(running()))
