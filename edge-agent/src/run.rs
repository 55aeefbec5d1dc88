//! The agent's main loop. Every sync interval, and whenever the desired state changes, it
//! takes a new desired state (validated and journaled first), observes the runtime, decides
//! which modules may run (startupOrder), brings the manifests in line and hands the status
//! to the writer. Nothing here needs the apiserver: offline, the loop goes on from the
//! journal, and the heartbeat, watch and status writer retry on their own.
//!
//! [`run`] is the device's agent; [`run_with`] is the same loop with the apiserver client,
//! the runtime and the end handed in, so that a fleet simulator runs many agents in one
//! process, each with its own identity and an in-memory runtime.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use edgefleet_crds::condition::Condition;
use edgefleet_crds::{DesiredState, EdgeDeviceStatus, ModuleStatus, RuntimeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::Client;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::hub_status::{Counters, HubFigures, HubWatch};
use crate::hub_users::{HubUsers, sync_credentials};
use crate::journal::Journal;
use crate::observe::{Placement, PodSeen, is_up, module_status};
use crate::report::{Facts, status};
use crate::runtime::{Kubelet, Runtime};
use crate::validate::{self, Refused, Rejection};
use crate::{apiserver, desired, hub, lease, router, startup, status_writer, upstream};

/// How long a pass waits for the router to read new routes before it places their modules.
const ROUTING_WAIT: Duration = Duration::from_secs(5);

/// The agent's memory between passes.
#[derive(Debug)]
struct Agent<R> {
    journal: Journal,
    runtime: R,
    accepted: Option<DesiredState>,
    rejected: Option<Refused>,
    /// The last runtime observation that succeeded: reused while the runtime is unreachable.
    seen: BTreeMap<String, PodSeen>,
    /// The conditions last reported: their transition times carry over.
    conditions: Vec<Condition>,
}

/// The device's agent: kubelet's runtime, the configured credentials, until SIGTERM or
/// Ctrl-C.
pub async fn run(config: Config) -> Result<()> {
    let client = client(&config).await?;
    let runtime = Kubelet::open(&config)?;
    if config.hub().is_none() {
        // A hub turned off: its pod goes, whatever the apiserver says.
        if let Err(e) = hub::place(None, &config.state_dir, &config.manifest_dir, &[]) {
            tracing::error!(error = %e, "cannot remove the message hub");
        }
    }
    run_with(client, &config, runtime, shutdown_signal()).await?;
    tracing::info!("stopped; modules keep running under kubelet");
    Ok(())
}

/// The agent's loop on `client`'s identity and `runtime` until `shutdown` completes. The
/// journal and the hub (when `config` has one) live in `config.state_dir`.
pub async fn run_with<R: Runtime>(
    client: Client,
    config: &Config,
    runtime: R,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    let hub = config.hub();
    let mut agent = Agent {
        journal: Journal::open(
            &config.state_dir.join("journal"),
            usize::from(config.journal_keep),
        )?,
        runtime,
        accepted: None,
        rejected: None,
        seen: BTreeMap::new(),
        conditions: Vec::new(),
    };
    agent.accepted = agent.journal.latest();
    // The hub runs beside the modules whatever the apiserver says: placed before anything
    // waits for it, with the users of the modules the journal says run. A hub that cannot
    // be placed leaves the modules to run without it.
    let journaled = agent.modules().to_vec();
    let users = match &hub {
        Some(_) => sync_credentials(&config.state_dir, &journaled).unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot keep the modules' hub credentials");
            Vec::new()
        }),
        None => Vec::new(),
    };
    if let Some(h) = &hub
        && let Err(e) = hub::place(Some(h), &config.state_dir, &config.manifest_dir, &users)
    {
        tracing::error!(error = %e, "cannot place the message hub");
    }
    let mut hub_users = HubUsers::starting_with(users);
    let (routes_tx, routes_rx) = watch::channel(router::plan(&journaled));
    let (routed_tx, mut routed_rx) = watch::channel(Vec::new());
    match &agent.accepted {
        Some(d) => tracing::info!(
            revision = d.revision,
            modules = d.modules.len(),
            "starting from the journal"
        ),
        None => tracing::info!("no journaled desired state; waiting for one"),
    }

    let (desired_tx, mut desired_rx) = watch::channel(None);
    let (status_tx, status_rx) = watch::channel(None);
    let (link_tx, link_rx) = watch::channel(false);
    let mut hub_watch = None;
    if hub.is_some() {
        match hub::agent_secret(&hub::HubDirs::under(&config.state_dir).config) {
            Ok(secret) => {
                let store = config.upstream_store();
                // Returns at once and connects in the background, for as long as it runs.
                let client = upstream::connect(&store.device, &secret).await;
                let counters = Arc::new(Counters::default());
                let lanes = Arc::new(upstream::Lanes::default());
                hub_watch = Some(HubWatch::new(
                    client.clone(),
                    counters.clone(),
                    edgefleet_crds::hub::MONITOR_PORT,
                ));
                tokio::spawn(upstream::expire(
                    client.clone(),
                    store.clone(),
                    counters.clone(),
                ));
                tokio::spawn(upstream::forward(
                    client.clone(),
                    store.clone(),
                    counters.clone(),
                    lanes.clone(),
                ));
                tokio::spawn(router::run(
                    client, store, counters, lanes, routes_rx, routed_tx,
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "no router: the agent's hub secret is unreadable")
            }
        }
    }
    // The status writer's writes, which the heartbeat hears as renewals.
    let (reported_tx, reported_rx) = watch::channel(());
    let _tasks = Tasks(vec![
        tokio::spawn(desired::watch(
            client.clone(),
            config.device.clone(),
            config.max_backoff,
            desired_tx,
            link_rx.clone(),
        )),
        tokio::spawn(lease::heartbeat(
            client.clone(),
            config.device.clone(),
            config.namespace.clone(),
            config.lease_interval,
            config.max_backoff,
            link_tx,
            reported_rx,
        )),
        tokio::spawn(status_writer::run(
            client,
            config.device.clone(),
            config.max_backoff,
            status_rx,
            link_rx,
            reported_tx,
        )),
    ]);

    let mut tick = tokio::time::interval(config.sync_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = tick.tick() => {}
            _ = desired_rx.changed() => {}
        }
        // Copied out of the watch only when it is news: the loop runs every sync interval,
        // and copying an unchanged desired state each time was some 6 % of an idle agent's
        // CPU (a profile of 1,000 hollow agents).
        let news = desired_rx
            .borrow_and_update()
            .as_ref()
            .filter(|raw| !agent.decided(raw))
            .cloned();
        if let Some(raw) = news {
            agent.consider(&raw);
        }
        // Credentials first: a module's pod mounts them.
        if let Some(h) = &hub {
            let modules = agent.modules();
            hub_users
                .update(h, &config.state_dir, &config.manifest_dir, modules)
                .await;
            let hops = router::plan(modules);
            let changed = routes_tx.send_if_modified(|current| {
                let changed = *current != hops;
                current.clone_from(&hops);
                changed
            });
            // A new route reads before its source module is placed, not a moment after.
            if changed && !router::wait_routed(&mut routed_rx, &hops, ROUTING_WAIT).await {
                tracing::warn!(
                    "the router has not set up the new routes in time; placing the modules anyway"
                );
            }
        }
        let mut report = agent.sync().await;
        if let Some(w) = &mut hub_watch {
            report.hub = w.read().await.as_ref().map(HubFigures::status);
        }
        status_tx.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&report);
            *current = Some(report);
            changed
        });
    }
    Ok(())
}

/// The loop's watch, heartbeat and status writer: stopped when the loop ends, also when a
/// caller drops its future (a fleet simulator ending its agents), not only on shutdown.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

impl<R: Runtime> Agent<R> {
    /// The modules of the desired state the agent runs.
    fn modules(&self) -> &[edgefleet_crds::ResolvedModule] {
        self.accepted
            .as_ref()
            .map(|d| d.modules.as_slice())
            .unwrap_or_default()
    }

    /// Whether the agent has decided on `raw` already: it runs it, or rejected it for good
    /// (a rejection for the journal is retried).
    fn decided(&mut self, raw: &Value) -> bool {
        let revision = revision(raw);
        if self
            .accepted
            .as_ref()
            .is_some_and(|a| a.revision == revision)
        {
            // Back to the state that runs (a bad change was reverted): nothing is rejected.
            self.rejected = None;
            return true;
        }
        let retry = |why: &Rejection| matches!(why, Rejection::Journal(_));
        self.rejected
            .as_ref()
            .is_some_and(|r| r.revision == revision && !retry(&r.why))
    }

    /// Takes a desired state not [`decided`](Self::decided) on yet, or rejects it as a whole.
    fn consider(&mut self, raw: &Value) {
        let revision = revision(raw);
        let result = validate::check(raw).and_then(|d| {
            self.journal
                .record(&d)
                .map(|()| d)
                .map_err(|e| Rejection::Journal(e.to_string()))
        });
        match result {
            Ok(d) => {
                tracing::info!(
                    revision = d.revision,
                    modules = d.modules.len(),
                    "accepted a desired state"
                );
                self.accepted = Some(d);
                self.rejected = None;
            }
            Err(why) => {
                tracing::warn!(revision, reason = %why, "rejected a desired state; the last good one keeps running");
                self.rejected = Some(Refused {
                    revision: revision.to_owned(),
                    at_fault: validate::at_fault(raw, self.accepted.as_ref()),
                    why,
                });
            }
        }
    }

    /// One pass: observe, plan, write manifests, and build the status to report.
    async fn sync(&mut self) -> EdgeDeviceStatus {
        let mut runtime_error = match self.runtime.observe().await {
            Ok(seen) => {
                self.seen = seen;
                None
            }
            Err(e) => Some(e.to_string()),
        };
        let modules = self
            .accepted
            .as_ref()
            .map(|d| d.modules.as_slice())
            .unwrap_or_default();
        let observed: BTreeMap<String, ModuleStatus> = modules
            .iter()
            .map(|m| {
                let key = m.key();
                let status = module_status(m, self.seen.get(&key), Placement::Placed);
                (key, status)
            })
            .collect();
        let plan = startup::plan(modules, &self.runtime.placed(), |n| {
            observed.get(n).is_some_and(is_up)
        });
        let wanted: Vec<_> = modules
            .iter()
            .filter(|m| plan.admitted.contains(&m.key()))
            .collect();
        let blocked = match self.runtime.place(&wanted) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot bring the manifests in line");
                runtime_error = Some(format!("cannot write static pod manifests: {e}"));
                BTreeMap::new()
            }
        };
        let statuses = modules
            .iter()
            .map(|m| {
                let key = m.key();
                if let Some(why) = blocked.get(&key) {
                    let mut s = module_status(m, None, Placement::Blocked);
                    s.runtime_status = RuntimeStatus::Failed;
                    s.message = why.clone();
                    return s;
                }
                let placement = match plan.waiting_for {
                    Some(order) if !plan.admitted.contains(&key) => Placement::WaitingFor(order),
                    _ => Placement::Placed,
                };
                module_status(m, self.seen.get(&key), placement)
            })
            .collect();
        let facts = Facts {
            accepted: self.accepted.as_ref(),
            rejected: self.rejected.as_ref(),
            modules: statuses,
            waiting_for: plan.waiting_for,
            runtime_error,
        };
        let report = status(&facts, &self.conditions, &Time(jiff::Timestamp::now()));
        self.conditions.clone_from(&report.conditions);
        report
    }
}

/// The revision a raw desired state states; empty if it states none (validation rejects it).
fn revision(raw: &Value) -> &str {
    raw.get("revision")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

async fn client(config: &Config) -> Result<Client> {
    let mut kube_config = match &config.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| Error::Kubeconfig(path.clone(), e))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| Error::Kubeconfig(path.clone(), e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| Error::Client(kube::Error::InferConfig(e)))?,
    };
    // Offline, a connection attempt must fail fast so that retries (and the reconnect) are
    // paced by the agent's backoff, not by TCP's timeouts.
    kube_config.connect_timeout = Some(std::time::Duration::from_secs(3));
    apiserver::client(kube_config, config.apiserver_protocol).map_err(Error::Client)
}

pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use edgefleet_crds::ResolvedModule;
    use serde_json::json;

    use super::*;
    use crate::manifests::Blocked;
    use crate::validate::tests::{desired, module};

    /// Holds nothing: these tests are about which desired states the agent takes.
    struct Nothing;

    impl Runtime for Nothing {
        fn observe(
            &self,
        ) -> impl std::future::Future<Output = Result<BTreeMap<String, PodSeen>>> + Send {
            std::future::ready(Ok(BTreeMap::new()))
        }

        fn placed(&self) -> BTreeSet<String> {
            BTreeSet::new()
        }

        fn place(&mut self, _: &[&ResolvedModule]) -> Result<Blocked> {
            Ok(Blocked::new())
        }
    }

    fn agent(journal: &std::path::Path) -> Agent<Nothing> {
        Agent {
            journal: Journal::open(journal, 5).expect("a journal"),
            runtime: Nothing,
            accepted: None,
            rejected: None,
            seen: BTreeMap::new(),
            conditions: Vec::new(),
        }
    }

    /// The loop copies a desired state out of its watch only when the agent has not decided
    /// on it, so a decision must hold until the state changes: for the state it runs, and
    /// for one it rejected, which a revert to the running state clears.
    #[test]
    fn a_desired_state_is_decided_once_and_a_revert_clears_its_rejection() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut agent = agent(dir.path());
        let good = desired(vec![module("a")]);
        assert!(!agent.decided(&good));
        agent.consider(&good);
        assert!(agent.decided(&good), "the state it runs");

        let mut forged = desired(vec![module("b")]);
        forged["revision"] = json!("feedfacefeedface");
        assert!(!agent.decided(&forged));
        agent.consider(&forged);
        assert!(
            agent.rejected.is_some(),
            "a revision that is not its modules'"
        );
        assert!(agent.decided(&forged), "not validated again every tick");

        assert!(agent.decided(&good));
        assert!(agent.rejected.is_none(), "back to the state that runs");
    }

    /// A state the journal could not record is not decided: the next tick tries again, and
    /// takes it once the journal can.
    #[test]
    fn a_state_the_journal_could_not_record_is_tried_again() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let journal = dir.path().join("journal");
        let mut agent = agent(&journal);
        // A file where the journal's directory was: every write into it fails, root or not.
        std::fs::remove_dir(&journal).expect("an empty journal");
        std::fs::write(&journal, b"").expect("a file in its place");
        let good = desired(vec![module("a")]);
        agent.consider(&good);
        assert!(
            matches!(&agent.rejected, Some(r) if matches!(r.why, Rejection::Journal(_))),
            "{:?}",
            agent.rejected
        );
        assert!(!agent.decided(&good), "tried again at the next tick");

        std::fs::remove_file(&journal).expect("the file");
        std::fs::create_dir(&journal).expect("the journal's directory back");
        agent.consider(&good);
        assert!(agent.accepted.is_some() && agent.rejected.is_none());
        assert!(agent.decided(&good));
    }
}
