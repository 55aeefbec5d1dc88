//! A bounded load generator for benchmarks: a simulated fleet of N devices (Node objects
//! with no kubelet behind them, each enrolled by an EdgeDevice carrying the labels
//! deployments select on, as an administrator would) and M deployments over them,
//! created in the lab's apiserver with a fixed number of requests in flight, and removed
//! again. Every loop is bounded in count and time.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use edgefleet_crds::identity::{SYSTEM_NAMESPACE, device_object_name};
use edgefleet_crds::{EdgeDeployment, EdgeDevice, EdgeModule};
use edgefleet_e2e::{Lab, fresh_namespace, install_and_enrol};
use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

const NAMESPACE: &str = "fleet-load";
const LOAD_LABEL: &str = "load.edgefleet.io/generated";
const SITES: usize = 50;
const HARDWARE: [&str; 5] = ["rpi4", "jetson", "nuc", "x86", "arm64"];

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, global = true)]
    concurrency: usize,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create the fleet and its deployments.
    Up {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        #[arg(long, default_value_t = 100)]
        deployments: usize,
    },
    /// Wait until the controller gave every simulated device its desired state.
    Wait {
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        #[arg(long, default_value_t = 900)]
        timeout_s: u64,
    },
    /// Create `count` certificate requests that are not edgefleet's (the client signer, but
    /// not the bootstrap's label), as a busy cluster has: the controller must not cache them.
    CsrFlood {
        #[arg(long, default_value_t = 3000)]
        count: usize,
    },
    /// Print what the simulated devices' EdgeDevices weigh per device, whole and their
    /// desired state, as JSON (how etcd stores custom resources).
    Bytes,
    /// Remove everything `up` and `csr-flood` created.
    Down,
}

/// One valid request (the apiserver checks its signature), reused under many names.
fn foreign_request() -> String {
    let key = rcgen::KeyPair::generate().expect("a P-256 key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "someone-else");
    let csr = params.serialize_request(&key).expect("a CSR");
    csr.pem().expect("PEM")
}

async fn csr_flood(client: Client, count: usize, concurrency: usize) -> usize {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::certificates::v1::{
        CertificateSigningRequest, CertificateSigningRequestSpec,
    };
    install_and_enrol(&client).await;
    let api: Api<CertificateSigningRequest> = Api::all(client);
    let request = ByteString(foreign_request().into_bytes());
    create_all(
        "foreign CertificateSigningRequests",
        count,
        concurrency,
        |i| {
            let api = api.clone();
            let csr = CertificateSigningRequest {
                metadata: ObjectMeta {
                    name: Some(format!("load-foreign-{i:05}")),
                    labels: Some(BTreeMap::from([(LOAD_LABEL.to_owned(), "true".to_owned())])),
                    ..Default::default()
                },
                spec: CertificateSigningRequestSpec {
                    request: request.clone(),
                    signer_name: edgefleet_crds::identity::CLIENT_SIGNER.to_owned(),
                    usages: Some(vec!["client auth".to_owned()]),
                    ..Default::default()
                },
                status: None,
            };
            async move { api.create(&PostParams::default(), &csr).await.map(|_| ()) }
        },
    )
    .await
}

/// The labels an administrator gives device `i` (on its EdgeDevice).
fn device_labels(i: usize) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LOAD_LABEL.to_owned(), "true".to_owned()),
        ("site".to_owned(), format!("site-{}", i % SITES)),
        (
            "hardware".to_owned(),
            HARDWARE[i % HARDWARE.len()].to_owned(),
        ),
        (
            "channel".to_owned(),
            if i.is_multiple_of(10) {
                "beta"
            } else {
                "stable"
            }
            .to_owned(),
        ),
    ])
}

/// How every simulated device's name begins.
const DEVICE_PREFIX: &str = "load-dev-";

fn device_name(i: usize) -> String {
    format!("{DEVICE_PREFIX}{i:05}")
}

/// The administrator's enrolment of device `i`.
fn device(i: usize) -> EdgeDevice {
    let mut d = EdgeDevice::new(&device_name(i), Default::default());
    d.metadata.labels = Some(device_labels(i));
    d
}

fn node(i: usize) -> Node {
    let labels = BTreeMap::from([(LOAD_LABEL.to_owned(), "true".to_owned())]);
    // A Ready condition: Kubernetes 1.20's node lifecycle controller crashes on a Node
    // without one. With no kubelet behind it, the Node turns Unknown after the grace period.
    let status = serde_json::from_value(serde_json::json!({
        "conditions": [{"type": "Ready", "status": "True", "reason": "Simulated",
            "lastHeartbeatTime": jiff::Timestamp::now().to_string(),
            "lastTransitionTime": jiff::Timestamp::now().to_string()}]
    }))
    .expect("node status");
    Node {
        metadata: ObjectMeta {
            name: Some(device_name(i)),
            labels: Some(labels),
            ..Default::default()
        },
        status: Some(status),
        ..Default::default()
    }
}

fn deployment(i: usize, modules: usize) -> EdgeDeployment {
    let selector = match i % 4 {
        0 if i == 0 => serde_json::json!({"matchLabels": {LOAD_LABEL: "true"}}),
        0 => serde_json::json!({"matchLabels": {"site": format!("site-{}", i % SITES)}}),
        1 => serde_json::json!({"matchLabels": {"hardware": HARDWARE[i % HARDWARE.len()]}}),
        2 => {
            serde_json::json!({"matchExpressions": [{"key": "site", "operator": "In", "values": [format!("site-{}", i % SITES)]}]})
        }
        _ => serde_json::json!({"matchLabels": {"channel": "beta"}}),
    };
    let mods: Vec<_> = (0..3)
        .map(|k| serde_json::json!({"name": format!("m{}", (i + k) % 8), "moduleRef": format!("module-{}", (i + k * 7) % modules)}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "EdgeDeployment",
        "metadata": {"name": format!("dep-{i:03}"), "namespace": NAMESPACE},
        "spec": {"priority": (i * 37) % 200, "layered": i % 5 == 4, "selector": selector, "modules": mods},
    }))
    .expect("deployment fixture")
}

/// Runs `n` creates with `concurrency` in flight, printing progress; returns the failures.
async fn create_all<F, Fut>(what: &str, n: usize, concurrency: usize, f: F) -> usize
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<(), kube::Error>>,
{
    let start = Instant::now();
    let mut done = 0;
    let mut failed = 0;
    let mut results = stream::iter(0..n).map(&f).buffer_unordered(concurrency);
    while let Some(r) = results.next().await {
        done += 1;
        match r {
            Ok(()) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("fleet-load: {what}: {e}");
                }
            }
        }
        if done % 1000 == 0 || done == n {
            eprintln!(
                "fleet-load: {what}: {done}/{n} in {:.1}s",
                start.elapsed().as_secs_f64()
            );
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64().max(0.001);
    println!("fleet-load: created {n} {what} at {rate:.0}/s ({failed} failed)");
    failed
}

async fn up(client: Client, devices: usize, deployments: usize, concurrency: usize) -> usize {
    install_and_enrol(&client).await;
    fresh_namespace(&client, NAMESPACE).await;
    let modules = (deployments / 5).max(1);
    let mod_api: Api<EdgeModule> = Api::namespaced(client.clone(), NAMESPACE);
    let mut failed = create_all("EdgeModules", modules, concurrency, |i| {
        let api = mod_api.clone();
        async move {
            let m = EdgeModule::new(
                &format!("module-{i}"),
                serde_json::from_value(serde_json::json!({"image": format!("localhost/fleet/module-{i}:v1"), "env": [{"name": "LEVEL", "value": "info"}]}))
                    .expect("module spec"),
            );
            api.create(&PostParams::default(), &m).await.map(|_| ())
        }
    })
    .await;
    let dep_api: Api<EdgeDeployment> = Api::namespaced(client.clone(), NAMESPACE);
    failed += create_all("EdgeDeployments", deployments, concurrency, |i| {
        let api = dep_api.clone();
        async move {
            api.create(&PostParams::default(), &deployment(i, modules))
                .await
                .map(|_| ())
        }
    })
    .await;
    let nodes: Api<Node> = Api::all(client.clone());
    failed += create_all("Nodes (devices)", devices, concurrency, |i| {
        let api = nodes.clone();
        async move {
            api.create(&PostParams::default(), &node(i))
                .await
                .map(|_| ())
        }
    })
    .await;
    let dev_api: Api<EdgeDevice> = Api::all(client.clone());
    failed += create_all("EdgeDevices (enrolments)", devices, concurrency, |i| {
        let api = dev_api.clone();
        async move {
            api.create(&PostParams::default(), &device(i))
                .await
                .map(|_| ())
        }
    })
    .await;
    failed
}

/// Calls `f` with every simulated device, listed in pages of 2,000; false when a page
/// could not be listed.
async fn each_device(api: &Api<EdgeDevice>, mut f: impl FnMut(&EdgeDevice)) -> bool {
    let mut token: Option<String> = None;
    loop {
        let mut lp = ListParams::default()
            .labels(&format!("{LOAD_LABEL}=true"))
            .limit(2000);
        if let Some(t) = &token {
            lp = lp.continue_token(t);
        }
        let Ok(page) = api.list(&lp).await else {
            return false;
        };
        page.items.iter().for_each(&mut f);
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return true;
        }
    }
}

async fn bytes(client: Client) -> bool {
    let api: Api<EdgeDevice> = Api::all(client);
    let (mut devices, mut whole, mut desired) = (0usize, 0usize, 0usize);
    let listed = each_device(&api, |d| {
        devices += 1;
        whole += serde_json::to_vec(d).map_or(0, |v| v.len());
        desired += serde_json::to_vec(&d.spec.desired).map_or(0, |v| v.len());
    })
    .await;
    if !listed || devices == 0 {
        return false;
    }
    println!(
        "fleet-load: an EdgeDevice weighs {} bytes on average ({} of them its desired state), over {devices} devices",
        whole / devices,
        desired / devices
    );
    true
}

async fn wait(client: Client, devices: usize, timeout: Duration) -> bool {
    let api: Api<EdgeDevice> = Api::all(client);
    let start = Instant::now();
    while start.elapsed() < timeout {
        let mut ready = 0;
        each_device(&api, |d| {
            if d.spec
                .desired
                .as_ref()
                .is_some_and(|d| !d.modules.is_empty())
            {
                ready += 1;
            }
        })
        .await;
        eprintln!(
            "fleet-load: {ready}/{devices} devices have their desired state ({:.0}s)",
            start.elapsed().as_secs_f64()
        );
        if ready >= devices {
            println!(
                "fleet-load: all {devices} devices resolved in {:.1}s",
                start.elapsed().as_secs_f64()
            );
            return true;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    false
}

async fn delete_all<K>(api: &Api<K>, names: Vec<String>, concurrency: usize)
where
    K: kube::Resource + Clone + for<'de> k8s_openapi::serde::Deserialize<'de> + std::fmt::Debug,
{
    stream::iter(names)
        .map(|n| async move { api.delete(&n, &DeleteParams::default()).await.map(|_| ()) })
        .buffer_unordered(concurrency)
        .for_each(|_| async {})
        .await;
}

/// The names of the objects `sel` selects; `None` when they could not be listed.
async fn names_of<K>(api: &Api<K>, sel: &ListParams) -> Option<Vec<String>>
where
    K: kube::Resource + Clone + for<'de> k8s_openapi::serde::Deserialize<'de> + std::fmt::Debug,
{
    let page = api.list_metadata(sel).await.ok()?;
    Some(
        page.items
            .into_iter()
            .filter_map(|o| o.metadata.name)
            .collect(),
    )
}

/// How long `down` waits for the fleet to be gone, the garbage collector's part included
/// (it removes each device's Lease and RBAC after its EdgeDevice): some minutes for 10,000.
const GONE_TIMEOUT: Duration = Duration::from_secs(900);

/// How many objects of kind `K` named with `prefix` the apiserver still holds; `None` when
/// they could not be listed.
async fn count_named<K>(api: &Api<K>, prefix: &str) -> Option<usize>
where
    K: kube::Resource + Clone + for<'de> k8s_openapi::serde::Deserialize<'de> + std::fmt::Debug,
{
    let names = names_of(api, &ListParams::default()).await?;
    Some(names.iter().filter(|n| n.starts_with(prefix)).count())
}

/// What is left of the simulated fleet: its Nodes and EdgeDevices, and each device's Lease
/// and RBAC, which the garbage collector removes after the EdgeDevice. A next run that
/// started before these were gone would see its new devices' Leases collected as the old
/// devices' and wait for devices that can never resolve.
async fn leftovers(client: &Client) -> Option<usize> {
    let ns = SYSTEM_NAMESPACE;
    let owned = device_object_name(DEVICE_PREFIX);
    let counts = [
        count_named(&Api::<Node>::all(client.clone()), DEVICE_PREFIX).await?,
        count_named(&Api::<EdgeDevice>::all(client.clone()), DEVICE_PREFIX).await?,
        count_named(&Api::<ClusterRole>::all(client.clone()), &owned).await?,
        count_named(&Api::<ClusterRoleBinding>::all(client.clone()), &owned).await?,
        count_named(&Api::<Role>::namespaced(client.clone(), ns), &owned).await?,
        count_named(&Api::<RoleBinding>::namespaced(client.clone(), ns), &owned).await?,
        count_named(&Api::<Lease>::namespaced(client.clone(), ns), &owned).await?,
    ];
    Some(counts.iter().sum())
}

/// Deletes the simulated fleet and returns once the apiserver holds nothing of it (false
/// if something was still left after [`GONE_TIMEOUT`]). Every round deletes again what
/// is still there, so a delete the apiserver refused under load is retried, not waited on.
async fn down(client: Client, concurrency: usize) -> bool {
    let sel = ListParams::default().labels(&format!("{LOAD_LABEL}=true"));
    let nodes: Api<Node> = Api::all(client.clone());
    let devices: Api<EdgeDevice> = Api::all(client.clone());
    let csrs: Api<k8s_openapi::api::certificates::v1::CertificateSigningRequest> =
        Api::all(client.clone());
    let csr_names = names_of(&csrs, &sel).await.unwrap_or_default();
    delete_all(&csrs, csr_names, concurrency).await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(NAMESPACE, &DeleteParams::default())
        .await;
    let start = Instant::now();
    loop {
        let names = names_of(&nodes, &sel).await.unwrap_or_default();
        let dev_names = names_of(&devices, &sel).await.unwrap_or_default();
        if !names.is_empty() || !dev_names.is_empty() {
            eprintln!(
                "fleet-load: removing {} nodes and {} devices ({}s)",
                names.len(),
                dev_names.len(),
                start.elapsed().as_secs()
            );
            delete_all(&nodes, names, concurrency).await;
            delete_all(&devices, dev_names, concurrency).await;
        }
        let left = leftovers(&client).await;
        if left == Some(0) {
            println!("fleet-load: removed the simulated fleet");
            return true;
        }
        if start.elapsed() > GONE_TIMEOUT {
            eprintln!(
                "fleet-load: {} objects of the simulated fleet still there after {}s",
                left.map_or("uncounted".to_owned(), |n| n.to_string()),
                GONE_TIMEOUT.as_secs()
            );
            return false;
        }
        if let Some(n) = left {
            eprintln!(
                "fleet-load: waiting for the garbage collector: {n} objects left ({}s)",
                start.elapsed().as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let client = Lab::get().client().await;
    let concurrency = args.concurrency.clamp(1, 256);
    match args.cmd {
        Cmd::Up {
            devices,
            deployments,
        } => {
            if up(client, devices, deployments, concurrency).await > 0 {
                return ExitCode::FAILURE;
            }
        }
        Cmd::Wait { devices, timeout_s } => {
            if !wait(client, devices, Duration::from_secs(timeout_s)).await {
                eprintln!("fleet-load: not every device was resolved within {timeout_s}s");
                return ExitCode::FAILURE;
            }
        }
        Cmd::CsrFlood { count } => {
            if csr_flood(client, count, concurrency).await > 0 {
                return ExitCode::FAILURE;
            }
        }
        Cmd::Bytes => {
            if !bytes(client).await {
                eprintln!("fleet-load: no simulated device could be listed");
                return ExitCode::FAILURE;
            }
        }
        Cmd::Down => {
            if !down(client, concurrency).await {
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
