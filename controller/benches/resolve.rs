//! Resolving desired state for 10,000 devices against 100 deployments, pure and
//! single-threaded: the work the controller does when every deployment changes at once.
//! Target: under 1 s. Prints figures; asserts nothing about time.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use edgefleet_controller::catalog::{CompiledDeployment, compile};
use edgefleet_controller::grant::Grant;
use edgefleet_controller::targeting::resolve;
use edgefleet_crds::{EdgeDeployment, EdgeModuleSpec};

const DEVICES: usize = 10_000;
const DEPLOYMENTS: usize = 100;
const MODULES: usize = 20;
const SITES: usize = 50;
const HARDWARE: [&str; 5] = ["rpi4", "jetson", "nuc", "x86", "arm64"];

fn modules() -> BTreeMap<String, EdgeModuleSpec> {
    (0..MODULES)
        .map(|i| {
            let spec: EdgeModuleSpec = serde_json::from_value(serde_json::json!({
                "image": format!("localhost/fleet/module-{i}:v1"),
                "env": [{"name": "MODULE", "value": i.to_string()}, {"name": "LEVEL", "value": "info"}],
                "args": ["--interval", "1s"],
                "config": [{"name": "app.toml", "content": "rate = 10\nunit = \"C\"\n"}],
            }))
            .expect("module spec");
            (format!("fleet/module-{i}"), spec)
        })
        .collect()
}

/// 80 base deployments (a fleet-wide default, per-site and per-hardware ones at different
/// priorities) and 20 layered ones.
fn deployments() -> Vec<EdgeDeployment> {
    (0..DEPLOYMENTS)
        .map(|i| {
            let layered = i >= 80;
            let selector = match i % 4 {
                0 if i == 0 => serde_json::json!({}),
                0 => serde_json::json!({"matchLabels": {"site": format!("site-{}", i % SITES)}}),
                1 => serde_json::json!({"matchLabels": {"hardware": HARDWARE[i % HARDWARE.len()]}}),
                2 => serde_json::json!({"matchExpressions": [
                    {"key": "site", "operator": "In", "values": [format!("site-{}", i % SITES), format!("site-{}", (i + 7) % SITES)]},
                    {"key": "channel", "operator": "NotIn", "values": ["beta"]},
                ]}),
                _ => serde_json::json!({"matchLabels": {"channel": "beta", "hardware": HARDWARE[i % HARDWARE.len()]}}),
            };
            let mods: Vec<_> = (0..3)
                .map(|k| {
                    let m = (i + k * 7) % MODULES;
                    serde_json::json!({"name": format!("m{}", (i + k) % 8), "moduleRef": format!("module-{m}"),
                        "overrides": {"env": [{"name": "DEPLOYMENT", "value": i.to_string()}]}})
                })
                .collect();
            serde_json::from_value(serde_json::json!({
                "apiVersion": "edgefleet.io/v1alpha1",
                "kind": "EdgeDeployment",
                "metadata": {"name": format!("dep-{i:03}"), "namespace": "fleet"},
                "spec": {"priority": (i * 37) % 200, "layered": layered, "selector": selector, "modules": mods},
            }))
            .expect("deployment")
        })
        .collect()
}

fn device_labels() -> Vec<BTreeMap<String, String>> {
    (0..DEVICES)
        .map(|i| {
            BTreeMap::from([
                ("edgefleet.io/device".to_owned(), "true".to_owned()),
                ("kubernetes.io/hostname".to_owned(), format!("dev-{i:05}")),
                ("site".to_owned(), format!("site-{}", i % SITES)),
                (
                    "hardware".to_owned(),
                    HARDWARE[i % HARDWARE.len()].to_owned(),
                ),
                (
                    "channel".to_owned(),
                    if i % 10 == 0 { "beta" } else { "stable" }.to_owned(),
                ),
            ])
        })
        .collect()
}

fn main() {
    let specs = modules();
    let deps = deployments();
    let labels = device_labels();

    // One grant for the fleet's namespace, as a platform team gives it.
    let grants = [Grant::new(
        "fleet",
        serde_json::from_value(serde_json::json!({
            "namespaces": ["fleet"], "devices": {}, "priority": {"min": 0, "max": 200},
        }))
        .expect("grant"),
    )];
    let start = Instant::now();
    let catalog: Vec<CompiledDeployment> =
        deps.iter().map(|d| compile(d, &specs, &grants)).collect();
    let compile_time = start.elapsed();

    let mut runs = Vec::new();
    let mut modules_total = 0;
    for _ in 0..5 {
        let start = Instant::now();
        modules_total = 0;
        for l in &labels {
            let desired = resolve(black_box(l), black_box(&catalog), None);
            modules_total += desired.modules.len();
            black_box(&desired);
        }
        runs.push(start.elapsed());
    }
    runs.sort();
    let median = runs[runs.len() / 2];
    println!(
        "bench resolve: {DEVICES} devices x {DEPLOYMENTS} deployments ({MODULES} modules), single-threaded"
    );
    println!(
        "bench resolve: compile the catalog: {:.2} ms",
        compile_time.as_secs_f64() * 1e3
    );
    println!(
        "bench resolve: resolve every device: median {:.0} ms, best {:.0} ms of {} runs (target < 1000 ms)",
        median.as_secs_f64() * 1e3,
        runs[0].as_secs_f64() * 1e3,
        runs.len()
    );
    println!(
        "bench resolve: {:.1} us per device, {:.1} modules per device on average",
        median.as_secs_f64() * 1e6 / DEVICES as f64,
        modules_total as f64 / DEVICES as f64
    );
}
