//! Resolving desired state for 10,000 devices against 100 deployments, pure and
//! single-threaded: the work the controller does when every deployment changes at once.
//! Target: under 1 s. Prints figures; asserts nothing about time.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Instant;

use serde::Deserialize;

use edgefleet_controller::decide::catalog::{CompiledDeployment, compile};
use edgefleet_controller::decide::grant::Grant;
use edgefleet_controller::decide::targeting::{StagedRevisions, resolve, resolve_staged};
use edgefleet_crds::{EdgeDeployment, EdgeGrant, EdgeModule, EdgeModuleSpec, Rollouts, limits};

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

/// The objects of one of `examples/`'s files, of one kind, in the examples' namespace.
fn example<K: serde::de::DeserializeOwned + kube::Resource<DynamicType = ()>>(
    file: &str,
) -> Vec<K> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    let text = std::fs::read_to_string(&path).expect("examples");
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter(|v| v.get("kind").and_then(|k| k.as_str()) == Some(K::kind(&()).as_ref()))
        .map(|v| {
            let mut k: K = serde_yaml::from_value(v).expect("an example object");
            k.meta_mut().namespace = Some("fleet-demo".to_owned());
            k
        })
        .collect()
}

/// What one device's desired state costs with the examples (`examples/`, as `make demo`
/// applies them), per device and for 10,000 such devices: the bytes each EdgeDevice holds
/// in etcd and in the controller's cache for its modules. Devices sit at the current
/// revision of every staged deployment, as after a rollout.
fn example_bytes() {
    let specs: BTreeMap<String, EdgeModuleSpec> = example::<EdgeModule>("modules.yaml")
        .into_iter()
        .map(|m| {
            (
                format!("fleet-demo/{}", m.metadata.name.unwrap_or_default()),
                m.spec,
            )
        })
        .collect();
    let grants: Vec<Grant> = example::<EdgeGrant>("platform/grant.yaml")
        .into_iter()
        .map(|g| Grant::new(g.metadata.name.as_deref().unwrap_or_default(), g.spec))
        .collect();
    let catalog: Vec<CompiledDeployment> =
        ["base.yaml", "site-berlin.yaml", "hardware-jetson.yaml"]
            .iter()
            .flat_map(|f| example::<EdgeDeployment>(f))
            .map(|d| compile(&d, &specs, &grants))
            .collect();
    let rollouts: Rollouts = catalog
        .iter()
        .map(|d| (d.key.clone(), d.revision.clone()))
        .collect();
    let staged = StagedRevisions {
        rollouts: &rollouts,
        snapshots: &(),
    };
    for (site, hardware) in [("munich", "rpi4"), ("berlin", "nuc"), ("berlin", "jetson")] {
        let labels = BTreeMap::from([
            ("site".to_owned(), site.to_owned()),
            ("hardware".to_owned(), hardware.to_owned()),
        ]);
        let desired = resolve_staged(&labels, &catalog, None, &staged);
        let bytes = serde_json::to_vec(&desired).map_or(0, |v| v.len());
        println!(
            "bench resolve: the examples on a {site}/{hardware} device: {} modules, {bytes} bytes of desired state ({:.1} MiB for 10,000 such devices; the budget is {} KiB a device)",
            desired.modules.len(),
            bytes as f64 * 10_000.0 / (1024.0 * 1024.0),
            limits::MAX_DEVICE_DESIRED_BYTES / 1024
        );
    }
}

fn main() {
    example_bytes();
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
    let bytes: usize = labels
        .iter()
        .map(|l| serde_json::to_vec(&resolve(l, &catalog, None)).map_or(0, |v| v.len()))
        .sum();
    println!(
        "bench resolve: desired state {:.0} bytes per device on average, {:.1} MiB for the {DEVICES}",
        bytes as f64 / DEVICES as f64,
        bytes as f64 / (1024.0 * 1024.0)
    );
}
