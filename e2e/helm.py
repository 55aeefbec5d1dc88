"""Helm v4's own engine (PyPI's helm-python-sdk, the only Helm on these machines) as a
command for the Rust harness (e2e/src/helm.rs): install, upgrade, uninstall, status and
history of a release. Values come as JSON on stdin, the result goes out as JSON on stdout;
render prints one template's objects as YAML instead (for e2e/bench-fleet).
Everything else (the lab's values, waits, checks) is the harness's, not this driver's.

    python e2e/helm.py --kubeconfig K --namespace NS install CHART_DIR RELEASE <values.json
"""

import argparse
import json
import sys

import helm_python


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--namespace", required=True)
    p.add_argument("--timeout", type=int, default=180, help="seconds Helm waits for the release's objects")
    cmds = p.add_subparsers(dest="cmd", required=True)
    for cmd in ("install", "upgrade"):
        c = cmds.add_parser(cmd, help=f"{cmd} RELEASE from CHART with the values on stdin, waiting for its objects")
        c.add_argument("chart")
        c.add_argument("release")
    c = cmds.add_parser("uninstall", help="remove RELEASE")
    c.add_argument("release")
    c.add_argument("--wait", action="store_true", help="until its objects are gone")
    c = cmds.add_parser("render", help="print TEMPLATE of CHART as RELEASE would have it, values on stdin")
    c.add_argument("chart")
    c.add_argument("release")
    c.add_argument("template", help="its path in the chart, e.g. templates/flowcontrol.yaml")
    for cmd in ("status", "history"):
        cmds.add_parser(cmd, help=f"RELEASE's {cmd} (status: null when there is no such release)").add_argument("release")
    return p.parse_args(argv)


def run(args: argparse.Namespace):
    cfg = helm_python.Config(kubeconfig_path=args.kubeconfig, namespace=args.namespace)
    if args.cmd in ("install", "upgrade"):
        values = json.loads(sys.stdin.read() or "null")
        if args.cmd == "install":
            return cfg.install(args.chart, args.release, values, namespace=args.namespace, create_namespace=True,
                               wait="watcher", timeout=args.timeout)
        return cfg.upgrade(args.chart, args.release, values, namespace=args.namespace, wait="watcher",
                           timeout=args.timeout)
    if args.cmd == "render":
        values = json.loads(sys.stdin.read() or "null")
        chart = helm_python.Chart.load(args.chart)
        rendered = chart.render(values, name=args.release, namespace=args.namespace)
        # Keyed by the chart's name, then the template's path in it.
        return rendered[f"{chart.name}/{args.template}"]
    if args.cmd == "uninstall":
        return cfg.uninstall(args.release, wait="watcher" if args.wait else None, timeout=args.timeout)
    if args.cmd == "history":
        return cfg.history(args.release)
    try:
        return cfg.status(args.release)
    except helm_python.HelmError:
        # No such release (or none Helm can read): not installed, and an install then says why.
        return None


if __name__ == "__main__":
    args = parse(sys.argv[1:])
    if args.cmd == "render":
        sys.stdout.write(run(args))
    else:
        json.dump(run(args), sys.stdout, default=str)
