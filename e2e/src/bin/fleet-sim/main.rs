//! The fleet benchmark (issue 15), one process: N hollow devices, each with its own
//! identity signed by the lab's cluster CA and registered as a joined device is (its Node
//! and the administrator's EdgeDevice), each running the real agent loop on an in-memory
//! runtime. It starts the controller (the command `e2e/bench-fleet` gives), registers them,
//! rolls a deployment out, changes it all at once and then with a staged rollout, and
//! prints for each phase how long the fleet took to report the new revision Ready, as a
//! watch on the apiserver sees it, and what that cost. Last it restarts the controller and
//! measures the new one's relist of the whole fleet. Every wait is bounded; whatever it
//! created is removed at the end (and leftovers of an earlier run at the start).

mod controller;
mod figures;
mod progress;
mod quiet;
mod yardstick;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use controller::{Controller, Launch};
use edgefleet_agent::apiserver::Protocol;
use edgefleet_controller::decide::renewal_pace;
use edgefleet_crds::identity::{SYSTEM_NAMESPACE, device_object_name};
use edgefleet_crds::renewal::renew_every;
use edgefleet_crds::{EdgeDeployment, EdgeDevice, EdgeModule, RolloutPhase};
use edgefleet_e2e::hollow::Behaviour;
use edgefleet_e2e::hollow_fleet::{Cluster, HollowFleet, LabCa, Timing, create_node, enrol};
use edgefleet_e2e::{Lab, apply, fresh_namespace, install_and_enrol};
use figures::{Phase, Process};
use futures::{StreamExt, stream};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{DeleteParams, ListParams};
use kube::core::PartialObjectMeta;
use kube::{Api, Client};
use progress::{Goal, Progress, by_share};
use quiet::{QUIET_WINDOW, until_quiet};
use serde_json::json;

const NAMESPACE: &str = "fleet-sim";
const LABEL: &str = "fleet-sim.edgefleet.io/hollow";
const IMAGE: &str = "localhost/fleet-sim/app";

#[derive(Parser, Debug)]
struct Args {
    /// How many hollow devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Where the controller's output goes (appended: the restarted one's follows).
    #[arg(long)]
    controller_log: PathBuf,
    /// The address the controller serves /readyz on (given to it as `--http-addr`).
    #[arg(long, default_value = "127.0.0.1:18098")]
    controller_http: String,
    /// Where the running controller's pid is written, at each start.
    #[arg(long)]
    controller_pidfile: PathBuf,
    /// Registrations in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How long after a Node is made the node controller has marked it NotReady, no
    /// kubelet ever reporting for it (the lab's startup grace and two of its looks): the
    /// fleet's Nodes are waited for at least that long, so that the cluster's own writes
    /// for them fall in their phase, not in the enrolment or the agents' start.
    #[arg(long)]
    node_grace_s: u64,
    /// How long a hollow module takes to start, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    start_delay_ms: u64,
    /// How long the settled fleet is watched for its idle write rate, in seconds (two Lease
    /// intervals at least).
    #[arg(long, default_value_t = 30)]
    idle_s: u64,
    /// The agents' Lease interval in seconds (the agent's default; a large fleet renews less
    /// often, see the scaling model in controller/README.md).
    #[arg(long, default_value_t = 10)]
    lease_interval_s: u64,
    /// The controller's `--renewal-budget`: the idle phase waits until the controller has
    /// written the pace it gives the fleet on every Lease, and lasts two of its intervals.
    #[arg(long, default_value_t = 100.0)]
    renewal_budget: f64,
    /// The apiserver's URL, instead of the admin kubeconfig's: its lab address when run in
    /// the control plane's network namespace, as `e2e/bench-fleet` does. Through the host's
    /// forwarder (a socat pair, two processes a connection) a thousand agents measure socat.
    #[arg(long)]
    apiserver: Option<String>,
    /// A group every device's certificate carries besides `edgefleet:devices`: the lab's
    /// apiserver asks the device authorizer only about devices in its group.
    #[arg(long)]
    extra_group: Option<String>,
    /// The protocol the agents speak to the apiserver (the agent's `--apiserver-protocol`).
    #[arg(long, value_enum, default_value_t)]
    apiserver_protocol: Protocol,
    /// The controller's command, started (and restarted) by the benchmark.
    #[arg(last = true, required = true)]
    controller: Vec<String>,
}

fn device_name(i: usize) -> String {
    format!("hollow-{i:05}")
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let lab = Lab::get();
    let admin = match &args.apiserver {
        Some(server) => lab.client_at(server).await,
        None => lab.client().await,
    };
    install_and_enrol(&admin).await;
    let launch = Launch {
        command: args.controller.clone(),
        log: args.controller_log.clone(),
        http: args.controller_http.clone(),
        pidfile: args.controller_pidfile.clone(),
    };
    let mut controller = match Controller::start(launch).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-sim: cannot start the controller: {e}");
            return ExitCode::FAILURE;
        }
    };
    if controller.ready(Duration::from_secs(60)).await.is_none() {
        eprintln!("fleet-sim: the controller was not ready within 60s");
        return ExitCode::FAILURE;
    }
    remove(&admin).await;
    let ok = bench(&args, &lab, &admin, &mut controller).await;
    remove(&admin).await;
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the phases; false when one did not finish in time.
async fn bench(args: &Args, lab: &Lab, admin: &Client, controller: &mut Controller) -> bool {
    let n = args.devices;
    let Some(apiserver) = figures::find("kube-apiserver") else {
        eprintln!("fleet-sim: no single kube-apiserver process to measure");
        return false;
    };
    let apiserver = Process {
        name: "apiserver",
        pid: apiserver,
        serves_writes: true,
    };
    let simulator = Process {
        name: "fleet-sim (the hollow agents)",
        pid: std::process::id(),
        serves_writes: false,
    };
    let controller_process = Process {
        name: "controller",
        pid: controller.pid(),
        serves_writes: false,
    };
    // The two ends of every agent's connections.
    warn_of_open_files(&[apiserver, simulator], n, args.apiserver_protocol);
    let processes = [controller_process, apiserver, simulator];
    let timeout = Duration::from_secs(120 + n as u64 / 5);
    let ns = fresh_namespace(admin, NAMESPACE).await;
    apply(admin, &ns, "EdgeModule", "app", module("1")).await;
    apply(admin, &ns, "EdgeDeployment", "fleet", deployment(None)).await;
    let progress = Progress::start(admin.clone(), &format!("{LABEL}=true"));

    let issued = Instant::now();
    let ca = LabCa::open();
    let credentials: Vec<_> = (0..n)
        .map(|i| ca.credential_in(&device_name(i), args.extra_group.as_deref()))
        .collect();
    println!(
        "bench fleet: {n} device certificates from the lab CA in {:.1}s",
        issued.elapsed().as_secs_f64()
    );

    let mut fleet = HollowFleet::new("bench");
    let behaviour = Behaviour {
        start_delay: Duration::from_millis(args.start_delay_ms),
        fail: None,
        ..Behaviour::default()
    };
    // What the cluster writes without the hollow fleet (its own Leases, Events, ...).
    let quiet = Phase::begin(admin, &processes).await;
    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    let without = quiet.end(admin, &processes, n).await;
    let Some(baseline) = without.writes_per_s else {
        eprintln!("fleet-sim: no baseline without the apiserver's metrics");
        return false;
    };
    // Its CPU too: what the idle fleet costs the apiserver is the idle phase's less this.
    println!(
        "bench fleet: the cluster without the fleet writes {baseline:.1}/s; {}",
        without.text
    );
    let servers = yardstick::Servers::find(apiserver);
    if let Some(background) = servers.background_over(yardstick::BACKGROUND).await {
        if let Some(yardstick) = yardstick::measure(admin, &ns, servers, background).await {
            println!("bench fleet: this machine's yardstick: {yardstick}");
        }
        if let Some(capacity) = yardstick::capacity(admin, &ns, servers, background).await {
            println!("bench fleet: this apiserver's capacity without the fleet: {capacity}");
        }
    }

    // The Nodes first, as kubelets joining the cluster make them (Kubernetes', not
    // edgefleet's: the join's certificate is approved only for a device with both), until
    // the cluster is done with them (the node controller taints Nodes no kubelet reports
    // for); then the enrolment, measured alone.
    let phase = Phase::begin(admin, &processes).await;
    let labels = BTreeMap::from([(LABEL.to_owned(), "true".to_owned())]);
    let failed = for_each_device(n, args.concurrency, async |device| {
        create_node(admin, &device, &labels).await
    })
    .await;
    let created = phase.started().elapsed();
    tokio::time::sleep(Duration::from_secs(args.node_grace_s)).await;
    settle(admin, "the node controller's grace period").await;
    println!(
        "bench fleet: the fleet's Nodes ({n}, {failed} failed), made as kubelets joining the cluster make them, in {:.1}s; {}",
        created.as_secs_f64(),
        phase.end(admin, &processes, n).await.text
    );

    // Enrolment, then the agents: agents started before the controller made their Lease
    // and RBAC retry every 2 s each, and a thousand of them saturate this apiserver.
    let phase = Phase::begin(admin, &processes).await;
    let failed = for_each_device(n, args.concurrency, async |device| {
        enrol(admin, &device, &labels).await
    })
    .await;
    let leases = wait_for_leases(admin, n, timeout).await;
    println!(
        "bench fleet: registration ({n} EdgeDevices enrolled, {failed} failed; the controller registered {leases}: their Leases, and RBAC unless the device authorizer authorizes them) in {:.1}s; {}",
        phase.started().elapsed().as_secs_f64(),
        phase.end(admin, &processes, n).await.text
    );
    if leases < n {
        return false;
    }

    let phase = Phase::begin(admin, &processes).await;
    progress.aim(ready(IMAGE, "1"), phase.started());
    let cluster = match &args.apiserver {
        Some(server) => Cluster::of(lab).at(server),
        None => Cluster::of(lab),
    };
    let timing = Timing {
        lease_interval: Duration::from_secs(args.lease_interval_s),
        ..Timing::default()
    };
    for (i, credential) in credentials.iter().enumerate() {
        let device = device_name(i);
        let client = cluster
            .device_client(&device, credential, args.apiserver_protocol)
            .await;
        fleet.start(&device, client, behaviour.clone(), &timing);
    }
    let ok = report(
        "agents start (first revision Ready)",
        &progress,
        &phase,
        admin,
        &processes,
        n,
        timeout,
    )
    .await;
    if !ok {
        return false;
    }

    settle(admin, "the last device reported").await;
    let every = paced(admin, n, args).await;
    // Whole Lease intervals, two at least: agents that started together renew in waves
    // (jitter spreads them only slowly), and a shorter window catches a wave or misses it.
    let window = args
        .idle_s
        .max(2 * every.as_secs())
        .next_multiple_of(every.as_secs().max(1));
    let idle = Phase::begin(admin, &processes).await;
    let background = servers.sample();
    tokio::time::sleep(Duration::from_secs(window)).await;
    let background = background.and_then(|b| b.end());
    let cost = idle.end(admin, &processes, n).await;
    println!(
        "bench fleet: idle, settled: {} writes/s per device beyond the cluster's own; {}",
        cost.writes_per_s.map_or("unknown".to_owned(), |w| format!(
            "{:.3}",
            (w - baseline) / n as f64
        )),
        cost.text
    );
    // What the apiserver takes beside the idle fleet: the change's writes meet the cost that
    // the fleet's connections, watches and heap add to every write, which the capacity
    // without the fleet does not have. The idle fleet's own CPU, over the idle phase's whole
    // Lease intervals, is taken out.
    if let Some(background) = background
        && let Some(capacity) = yardstick::capacity(admin, &ns, servers, background).await
    {
        println!("bench fleet: this apiserver's capacity beside the idle fleet: {capacity}");
    }

    let changes = [("2", false), ("3", true)];
    for (version, staged) in changes {
        if staged {
            // The rollout settings alone change no device's modules (no new revision): the
            // phase waits until the controller has seen them, and times the module's change
            // alone.
            apply(
                admin,
                &ns,
                "EdgeDeployment",
                "fleet",
                deployment(Some("25%")),
            )
            .await;
            if !staged_settings_rolled_out(admin, &ns, timeout).await {
                return false;
            }
        }
        let phase = Phase::begin(admin, &processes).await;
        progress.aim(ready(IMAGE, version), phase.started());
        apply(admin, &ns, "EdgeModule", "app", module(version)).await;
        let what = if staged {
            "staged change (maxUnavailable 25%)"
        } else {
            "all-at-once change"
        };
        if !report(what, &progress, &phase, admin, &processes, n, timeout).await {
            return false;
        }
    }
    settle(admin, "the last device reported").await;

    // The agents' statuses alone: every agent reports once, at once, and the controller
    // writes nothing. A change costs this and the controller's share (one desired state a
    // device), so this bounds what fewer controller writes could save. Sent at once, the
    // statuses also queue at the devices' priority level, which a change's statuses,
    // spread by the controller's pace, do not: part of this phase's time is that herd.
    let phase = Phase::begin(admin, &processes).await;
    let times = behaviour.restarts.restart_all();
    progress.aim(Goal::Restarted { times }, phase.started());
    let what = "every module restarts at once (the agents' statuses alone)";
    if !report(what, &progress, &phase, admin, &processes, n, timeout).await {
        return false;
    }
    settle(admin, "the last device reported").await;
    // The restart below must leave the fleet as this left it: Ready at the last revision.
    let (last, _) = changes[changes.len() - 1];
    progress.aim(ready(IMAGE, last), Instant::now());

    let ok = restart(
        controller,
        admin,
        &progress,
        [apiserver, simulator],
        n,
        timeout,
    )
    .await;
    fleet.stop().await;
    ok
}

/// Restarts the controller with the fleet at rest and measures the new one: how long its
/// relist of every device, Lease and deployment took, what it wrote (nothing should be
/// written again), its CPU and peak memory, and whether every device stayed Ready and
/// Online.
async fn restart(
    controller: &mut Controller,
    admin: &Client,
    progress: &Progress,
    others: [Process; 2],
    n: usize,
    timeout: Duration,
) -> bool {
    let restarted = jiff::Timestamp::now();
    let mut processes = [
        Process {
            name: "controller (restarted)",
            pid: controller.pid(),
            serves_writes: false,
        },
        others[0],
        others[1],
    ];
    // Counted from before the stop: the seconds without a controller are the restart's too.
    let mut phase = Phase::begin(admin, &processes).await;
    if let Err(e) = controller.restart() {
        eprintln!("fleet-sim: cannot start the controller again: {e}");
        return false;
    }
    processes[0].pid = controller.pid();
    phase.started_anew(0);
    let new = processes[0];
    let Some(synced) = controller.ready(timeout).await else {
        eprintln!("fleet-sim: the restarted controller was not ready within {timeout:?}");
        return false;
    };
    let quiet = busy_until_quiet(&new, timeout).await;
    settle(admin, "the new controller went quiet").await;
    let still = progress.meeting_online();
    let writers: Vec<String> = progress
        .status_writers_since(restarted)
        .iter()
        .map(|(manager, devices)| format!("{manager} {devices}"))
        .collect();
    println!(
        "bench fleet: controller restart, {n} devices: ready in {:.1}s, then busy for {}; {still}/{n} devices Ready at the last revision and Online; statuses changed since by {}; {}",
        synced.as_secs_f64(),
        quiet.map_or("more than the timeout".to_owned(), |d| format!(
            "{:.1}s",
            d.as_secs_f64()
        )),
        if writers.is_empty() {
            "no one".to_owned()
        } else {
            writers.join(", ")
        },
        phase.end(admin, &processes, n).await.text
    );
    still == n
}

/// Waits until `p` used under a tenth of a core over a window (a controller done with the
/// reconciles its relist queued), or `timeout`; how long it was busy before that.
async fn busy_until_quiet(p: &Process, timeout: Duration) -> Option<Duration> {
    let bound = 0.1 * QUIET_WINDOW.as_secs_f64();
    until_quiet(bound, timeout, async || p.cpu_s()).await
}

/// The connections a hollow agent holds to the apiserver, as measured at 1,000 agents: on
/// HTTP/1.1 (3,000 to 3,300 open files in the apiserver) one request a connection, so the
/// watch holds one and the renewals and status writes beside it two more; on HTTP/2 one.
fn connections_per_agent(protocol: Protocol) -> u64 {
    match protocol {
        Protocol::Http1 => 3,
        Protocol::Http2 => 1,
    }
}

/// Files a process opens besides the fleet's connections (its own, the cluster's).
const OPEN_FILES_BESIDES: u64 = 1_000;

/// Says before the run when the apiserver or the simulator may open fewer files than the
/// fleet's connections need: past that, connections are refused ("too many open files")
/// and the run measures the limit, not edgefleet. A warning, not a refusal: the part of the
/// fleet that fits still measures something.
fn warn_of_open_files(ends: &[Process], n: usize, protocol: Protocol) {
    let per_agent = connections_per_agent(protocol);
    let needed = n as u64 * per_agent + OPEN_FILES_BESIDES;
    for p in ends {
        if let Some(limit) = p.open_files_limit().filter(|l| *l < needed) {
            eprintln!(
                "fleet-sim: warning: {n} agents hold about {} connections, but the {} may open only {limit} files: expect refused connections past about {} agents",
                n as u64 * per_agent,
                p.name,
                limit.saturating_sub(OPEN_FILES_BESIDES) / per_agent
            );
        }
    }
}

/// Waits until every hollow device's Lease is at the pace the controller gives the fleet
/// (`renewal_pace`: a stretched interval once the fleet passes its renewal budget, written a
/// minute after the fleet stopped growing), then an interval more, for each agent to renew
/// once at the old one and learn it; returns the interval. The idle phase measures that
/// pace, not the Leases' writing.
async fn paced(admin: &Client, n: usize, args: &Args) -> Duration {
    const LIMIT: Duration = Duration::from_secs(600);
    let interval = Duration::from_secs(args.lease_interval_s);
    let devices: Api<EdgeDevice> = Api::all(admin.clone());
    let mut fleet = 0;
    let mut page = ListParams::default().limit(500);
    loop {
        let Ok(list) = devices.list_metadata(&page).await else {
            break;
        };
        fleet += list.items.len();
        match list.metadata.continue_ {
            Some(token) if !token.is_empty() => page = page.continue_token(&token),
            _ => break,
        }
    }
    let max = renewal_pace::max_stretch(interval);
    let stretch = renewal_pace::stretch(fleet, args.renewal_budget, interval, 1, max);
    let want = (stretch > 1).then(|| interval * stretch);
    let every = want.unwrap_or(interval);
    println!(
        "bench fleet: the controller's pace for {fleet} devices: a renewal every {}s",
        every.as_secs()
    );
    let start = Instant::now();
    loop {
        let at_pace = hollow_leases(admin, |lease| {
            renew_every(lease.metadata.annotations.as_ref()) == want
        })
        .await;
        if at_pace >= n {
            break;
        }
        if start.elapsed() > LIMIT {
            println!(
                "bench fleet: {at_pace} of {n} Leases at that pace after {}s: the idle figure below includes the rest",
                LIMIT.as_secs()
            );
            return every;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(interval + interval / 5).await;
    println!(
        "bench fleet: every Lease at that pace {:.0}s after the fleet settled",
        start.elapsed().as_secs_f64()
    );
    every
}

/// Waits until everything but the heartbeats has stopped writing: the controller's rollups,
/// conditions and Events after a fleet reported Ready outlast the report by seconds to
/// minutes, and an idle rate measured over them is not idle. Settled means at most one write a
/// second besides Leases (the lab's own background), over five seconds; it waits five minutes
/// at most, and says so if the fleet never settled.
async fn settle(admin: &Client, after: &str) {
    const LIMIT: Duration = Duration::from_secs(300);
    let besides_leases = async || figures::requests(admin).await.map(|r| r.besides_leases());
    match until_quiet(5.0, LIMIT, besides_leases).await {
        Some(quiet) => println!(
            "bench fleet: settled {:.0}s after {after}",
            (quiet + QUIET_WINDOW).as_secs_f64()
        ),
        None => println!(
            "bench fleet: not settled after {}s: the idle figure below includes that work",
            LIMIT.as_secs()
        ),
    }
}

/// Waits until the deployment's switch to staged is seen (its status has the new generation
/// and says Complete), or `timeout`; says how long it took.
async fn staged_settings_rolled_out(admin: &Client, ns: &str, timeout: Duration) -> bool {
    let deployments: Api<EdgeDeployment> = Api::namespaced(admin.clone(), ns);
    let start = Instant::now();
    while start.elapsed() < timeout {
        let done = deployments.get("fleet").await.ok().is_some_and(|d| {
            let status = d.status.unwrap_or_default();
            status.observed_generation == d.metadata.generation
                && status
                    .rollout
                    .is_some_and(|r| r.phase == RolloutPhase::Complete)
        });
        if done {
            println!(
                "bench fleet: the switch to staged seen, rollout Complete, in {:.1}s",
                start.elapsed().as_secs_f64()
            );
            return true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("bench fleet: the switch to staged did not roll out within {timeout:?}");
    false
}

/// Waits until the controller made the Lease of every hollow device (in the reconcile that
/// makes its RBAC), or `timeout`; how many it made.
async fn wait_for_leases(admin: &Client, n: usize, timeout: Duration) -> usize {
    let start = Instant::now();
    loop {
        let made = hollow_leases(admin, |_| true).await;
        if made >= n || start.elapsed() > timeout {
            return made;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Runs `make` for every hollow device, `concurrency` at once (1 to 256); how many failed.
async fn for_each_device(
    n: usize,
    concurrency: usize,
    make: impl AsyncFn(String) -> kube::Result<()>,
) -> usize {
    let make = &make;
    stream::iter(0..n)
        .map(|i| async move { make(device_name(i)).await.err() })
        .buffer_unordered(concurrency.clamp(1, 256))
        .filter_map(|e| async move { e })
        .count()
        .await
}

/// How many hollow devices' Leases there are that `counts` (their metadata); 0 if the list
/// fails.
async fn hollow_leases(
    admin: &Client,
    counts: impl Fn(&PartialObjectMeta<Lease>) -> bool,
) -> usize {
    let leases: Api<Lease> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    leases
        .list_metadata(&ListParams::default())
        .await
        .map_or(0, |l| {
            l.items
                .iter()
                .filter(|o| {
                    o.metadata
                        .name
                        .as_deref()
                        .is_some_and(|m| m.starts_with(&device_object_name("hollow-")))
                        && counts(o)
                })
                .count()
        })
}

/// Waits for the fleet to meet the goal and prints the phase's figures.
async fn report(
    what: &str,
    progress: &Progress,
    phase: &Phase,
    admin: &Client,
    processes: &[Process],
    n: usize,
    timeout: Duration,
) -> bool {
    let times = progress.wait(n, timeout).await;
    let at = |sorted: &[Duration], share: f64| {
        by_share(sorted, n, share).map_or("-".to_owned(), |d| format!("{:.1}s", d.as_secs_f64()))
    };
    let shares = |sorted: &[Duration]| {
        format!(
            "50% {} / 99% {} / 100% {}",
            at(sorted, 0.5),
            at(sorted, 0.99),
            at(sorted, 1.0)
        )
    };
    // A goal the controller has no share in (every module restarting) names no write.
    let written = if times.written.is_empty() {
        String::new()
    } else {
        format!(" (desired state written {})", shares(&times.written))
    };
    println!(
        "bench fleet: {what}, {n} devices: {} {}{written}; {}",
        times.met,
        shares(&times.reached),
        phase.end(admin, processes, n).await.text
    );
    if times.reached.len() < n {
        eprintln!(
            "fleet-sim: only {}/{n} devices within {timeout:?}",
            times.reached.len()
        );
        return false;
    }
    true
}

fn ready(image: &str, version: &str) -> Goal {
    Goal::Ready {
        image: format!("{image}:{version}"),
    }
}

fn module(version: &str) -> serde_json::Value {
    json!({"image": format!("{IMAGE}:{version}")})
}

fn deployment(max_unavailable: Option<&str>) -> serde_json::Value {
    let mut spec =
        json!({"selector": {"matchLabels": {LABEL: "true"}}, "modules": [{"name": "app"}]});
    if let Some(m) = max_unavailable {
        spec["rollout"] = json!({"maxUnavailable": m});
    }
    spec
}

/// Removes the hollow devices (their Leases and RBAC go with their EdgeDevices), their
/// Nodes and the benchmark's namespace; waits up to two minutes for them to go.
async fn remove(admin: &Client) {
    let dp = DeleteParams::default();
    let mine = ListParams::default().labels(&format!("{LABEL}=true"));
    let devices: Api<EdgeDevice> = Api::all(admin.clone());
    let nodes: Api<Node> = Api::all(admin.clone());
    let _ = Api::<Namespace>::all(admin.clone())
        .delete(NAMESPACE, &dp)
        .await;
    for _ in 0..120 {
        let _ = devices.delete_collection(&dp, &mine).await;
        let _ = nodes.delete_collection(&dp, &mine).await;
        let none = |l: Option<usize>| l == Some(0);
        let d = devices
            .list_metadata(&mine)
            .await
            .ok()
            .map(|l| l.items.len());
        let nd = nodes.list_metadata(&mine).await.ok().map(|l| l.items.len());
        let m = Api::<EdgeModule>::namespaced(admin.clone(), NAMESPACE)
            .list_metadata(&ListParams::default())
            .await
            .ok()
            .map(|l| l.items.len());
        // The Leases go last, with the garbage collector: the idle baseline must not count them.
        let hollow = device_object_name(&device_name(0));
        let prefix = hollow.trim_end_matches(char::is_numeric);
        let l = Api::<Lease>::namespaced(admin.clone(), SYSTEM_NAMESPACE)
            .list_metadata(&ListParams::default())
            .await
            .ok()
            .map(|l| {
                l.items
                    .iter()
                    .filter(|l| {
                        l.metadata
                            .name
                            .as_deref()
                            .is_some_and(|n| n.starts_with(prefix))
                    })
                    .count()
            });
        if none(d) && none(nd) && none(m) && none(l) {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    eprintln!(
        "fleet-sim: hollow devices, their Leases or their namespace were still there after two minutes"
    );
}
