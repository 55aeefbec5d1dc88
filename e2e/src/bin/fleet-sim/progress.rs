//! How far the fleet is, from the apiserver's point of view: one watch over the hollow
//! devices' EdgeDevices, and for the current goal the moment each device first met it.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use edgefleet_crds::device::conditions::{ONLINE, READY};
use edgefleet_crds::{EdgeDevice, condition};
use futures::StreamExt;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};

/// What a device must show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Goal {
    /// Nothing yet.
    None,
    /// Its agent reports Ready at the desired revision, whose modules run `image`.
    Ready { image: String },
    /// Its agent reports every module restarted at least `times` (nothing for the
    /// controller to write).
    Restarted { times: u32 },
}

impl Goal {
    /// What meeting it is called in the bench's figures.
    fn met(&self) -> &'static str {
        match self {
            Goal::None | Goal::Ready { .. } => "Ready",
            Goal::Restarted { .. } => "reported",
        }
    }

    /// The controller's share: the device's desired state runs `image`.
    fn written_for(&self, d: &EdgeDevice) -> bool {
        let Goal::Ready { image } = self else {
            return false;
        };
        d.spec
            .desired
            .as_ref()
            .is_some_and(|desired| desired.modules.iter().any(|m| &m.spec.image == image))
    }

    /// The whole way: besides, its agent applied that state and reports it Ready.
    fn met_by(&self, d: &EdgeDevice) -> bool {
        let (Some(desired), Some(status)) = (d.spec.desired.as_ref(), d.status.as_ref()) else {
            return false;
        };
        if let Goal::Restarted { times } = self {
            return !status.modules.is_empty()
                && status.modules.iter().all(|m| m.restart_count >= *times);
        }
        self.written_for(d)
            && status.applied_revision.as_deref() == Some(desired.revision.as_str())
            && condition::find(&status.conditions, READY).is_some_and(|c| c.is_true())
    }
}

#[derive(Debug)]
struct State {
    goal: Goal,
    since: Instant,
    /// The latest object of every device, so that a new goal is judged at once.
    devices: HashMap<String, EdgeDevice>,
    /// When each device's desired state first named the goal, counted from `since`: what
    /// separates the controller's share of a phase from the agents'.
    written: HashMap<String, Duration>,
    /// When each device met the goal, counted from `since`.
    reached: HashMap<String, Duration>,
}

impl State {
    fn judge(&mut self, d: &EdgeDevice) {
        let name = d.name_any();
        if !self.written.contains_key(&name) && self.goal.written_for(d) {
            self.written.insert(name.clone(), self.since.elapsed());
        }
        if !self.reached.contains_key(&name) && self.goal.met_by(d) {
            self.reached.insert(name, self.since.elapsed());
        }
    }
}

/// When each device of a phase got its desired state and met the goal, each sorted.
#[derive(Debug)]
pub struct Times {
    /// What meeting the goal is called.
    pub met: &'static str,
    pub written: Vec<Duration>,
    pub reached: Vec<Duration>,
}

/// The watcher's findings, shared with the benchmark.
#[derive(Debug, Clone)]
pub struct Progress {
    state: Arc<Mutex<State>>,
}

impl Progress {
    /// Watches the EdgeDevices that `selector` picks, until the process ends. It says on
    /// stderr when its watch fails and when it lists again: a watcher that is blind for a
    /// while (a loaded apiserver refusing or timing out its list) makes devices look late,
    /// and the log must show it.
    pub fn start(client: Client, selector: &str) -> Progress {
        let state = Arc::new(Mutex::new(State {
            goal: Goal::None,
            since: Instant::now(),
            devices: HashMap::new(),
            written: HashMap::new(),
            reached: HashMap::new(),
        }));
        let api: Api<EdgeDevice> = Api::all(client);
        let events = watcher(api, watcher::Config::default().labels(selector)).default_backoff();
        let shared = state.clone();
        tokio::spawn(async move {
            let began = Instant::now();
            let mut events = std::pin::pin!(events);
            let mut failing: Option<Instant> = None;
            while let Some(e) = events.next().await {
                let d = match e {
                    Err(e) => {
                        if failing.is_none() {
                            eprintln!(
                                "fleet-sim: the devices' watch failed at {:.0}s, retrying: {e}",
                                began.elapsed().as_secs_f64()
                            );
                        }
                        failing.get_or_insert_with(Instant::now);
                        continue;
                    }
                    Ok(watcher::Event::Init) => {
                        eprintln!(
                            "fleet-sim: the devices' watch lists them again at {:.0}s",
                            began.elapsed().as_secs_f64()
                        );
                        continue;
                    }
                    Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) => d,
                    Ok(watcher::Event::Delete(_) | watcher::Event::InitDone) => continue,
                };
                if let Some(since) = failing.take() {
                    eprintln!(
                        "fleet-sim: the devices' watch is back after {:.0}s blind",
                        since.elapsed().as_secs_f64()
                    );
                }
                let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
                s.judge(&d);
                s.devices.insert(d.name_any(), d);
            }
        });
        Progress { state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets a new goal, counted from `since`; devices that meet it already count now.
    pub fn aim(&self, goal: Goal, since: Instant) {
        let mut s = self.lock();
        s.goal = goal;
        s.since = since;
        s.written.clear();
        s.reached.clear();
        let devices: Vec<EdgeDevice> = s.devices.values().cloned().collect();
        for d in &devices {
            s.judge(d);
        }
    }

    /// How many devices meet the goal now and are Online as the controller says, as last
    /// seen (not when they first did): what a controller's restart must leave as it was.
    pub fn meeting_online(&self) -> usize {
        let s = self.lock();
        s.devices
            .values()
            .filter(|d| {
                let online = d.status.as_ref().is_some_and(|st| {
                    condition::find(&st.conditions, ONLINE).is_some_and(|c| c.is_true())
                });
                online && s.goal.met_by(d)
            })
            .count()
    }

    /// Who changed devices' statuses at or after `since` (the second it is in), as the
    /// objects' managed fields say: each field manager and how many devices it changed. What
    /// tells the controller's writes from the agents' in a phase; an apply that changes
    /// nothing leaves no trace here.
    pub fn status_writers_since(&self, since: jiff::Timestamp) -> BTreeMap<String, usize> {
        let since = since.as_second();
        let mut writers = BTreeMap::new();
        for d in self.lock().devices.values() {
            for m in d.metadata.managed_fields.iter().flatten() {
                let wrote = m.subresource.as_deref() == Some("status")
                    && m.time.as_ref().is_some_and(|t| t.0.as_second() >= since);
                if wrote {
                    let manager = m.manager.clone().unwrap_or_default();
                    *writers.entry(manager).or_default() += 1;
                }
            }
        }
        writers
    }

    /// Waits until `n` devices met the goal, or `timeout`; the times they took.
    pub async fn wait(&self, n: usize, timeout: Duration) -> Times {
        let start = Instant::now();
        let mut shown = Instant::now();
        loop {
            let reached = self.lock().reached.len();
            if reached >= n || start.elapsed() > timeout {
                break;
            }
            if shown.elapsed() > Duration::from_secs(10) {
                eprintln!(
                    "fleet-sim: {reached}/{n} ({:.0}s)",
                    start.elapsed().as_secs_f64()
                );
                shown = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let sorted = |m: &HashMap<String, Duration>| {
            let mut v: Vec<Duration> = m.values().copied().collect();
            v.sort();
            v
        };
        let s = self.lock();
        Times {
            met: s.goal.met(),
            written: sorted(&s.written),
            reached: sorted(&s.reached),
        }
    }
}

/// The time by which `share` (0 to 1) of `n` devices met the goal, if they did.
pub fn by_share(sorted: &[Duration], n: usize, share: f64) -> Option<Duration> {
    let k = ((n as f64 * share).ceil() as usize).clamp(1, n.max(1));
    sorted.get(k - 1).copied()
}
