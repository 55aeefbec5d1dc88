"""`make demo`, after the lab is up and the images are loaded: installs edgefleet with Helm
(CRDs, then the controller and the bootstrap that joins every device), waits until every
device's agent reports, applies examples/ and waits until every deployment is Ready,
showing progress, then prints what kubectl shows. Safe to run again: it upgrades in place."""

import sys

from edgefleet_lab import (EXAMPLES, NS, all_ready, edge_devices, enrol_devices, grant_examples, helm, install_or_upgrade, joined, kubectl,
                           lab_values, rollout_progress, wait_for)


def main() -> int:
    cfg = helm()
    print("demo: installing edgefleet-crds and edgefleet with Helm", file=sys.stderr)
    install_or_upgrade(cfg, "edgefleet-crds", "edgefleet-crds")
    install_or_upgrade(cfg, "edgefleet", "edgefleet", lab_values())
    print("demo: enrolling the lab's devices: kubectl apply -f <(e2e/lab enrolment)", file=sys.stderr)
    print(enrol_devices(), end="", file=sys.stderr)

    devices = edge_devices()
    wait_for(f"the bootstrap to join {len(devices)} devices", lambda: joined() == devices, timeout=300,
             progress=lambda: f"joined {len(joined())}/{len(devices)}")

    print("demo: granting fleet-demo devices and privileges: kubectl apply -f examples/platform/", file=sys.stderr)
    print(grant_examples(), end="", file=sys.stderr)
    print("demo: kubectl apply -k examples/", file=sys.stderr)
    print(kubectl("apply", "-k", str(EXAMPLES)), end="", file=sys.stderr)
    wait_for("every EdgeDeployment Ready", all_ready, timeout=300, progress=rollout_progress)

    print(kubectl("get", "edgedeployments,edgedevices", "-n", "fleet-demo"), end="")
    print(f"\ndemo: edgefleet runs in {NS}; try `kubectl describe edgedevice edge-1` or "
          "`kubectl get edgedeployments -A -w` (KUBECONFIG: e2e/lab kubeconfig).", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as e:
        print(f"\ndemo: {e}", file=sys.stderr)
        sys.exit(1)
