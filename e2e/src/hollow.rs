//! A hollow device's runtime: the agent's [`Runtime`] in memory, so that the real agent loop
//! runs without kubelet or containerd. A placed module "starts" after a delay (a running
//! container of the module's current spec, as CRI would report it), or exits with code 1
//! when [`Behaviour::fail`] names it; a changed spec is a new pod that starts after the
//! delay again while the previous one still runs, as kubelet replaces a static pod. Every
//! running module restarts when the fleet's [`Restarts`] count goes up.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use edgefleet_agent::Runtime;
use edgefleet_agent::manifests::Blocked;
use edgefleet_agent::observe::{ContainerSeen, PodSeen, State};
use edgefleet_agent::render::spec_hash;
use edgefleet_crds::ResolvedModule;

/// How every module on a hollow device behaves.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// How long a placed module takes to start.
    pub start_delay: Duration,
    /// A module whose name is this, or whose image contains it, exits with code 1 instead.
    pub fail: Option<String>,
    /// Shared by the devices this behaviour is cloned for: restarts all their modules.
    pub restarts: Restarts,
}

/// A count shared by a fleet of hollow devices: raising it restarts every module running
/// on them, as a power cut at every site would. Each agent then reports its modules'
/// restarts on its own, with nothing written by the controller: what one status write a
/// device costs the cluster when the whole fleet sends it at once.
#[derive(Debug, Clone, Default)]
pub struct Restarts(Arc<AtomicU32>);

impl Restarts {
    /// Restarts every running module once.
    pub fn restart_all(&self) -> u32 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    fn count(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Behaviour {
    fn fails(&self, m: &ResolvedModule) -> bool {
        self.fail
            .as_deref()
            .is_some_and(|f| m.name == f || m.spec.image.contains(f))
    }
}

/// One placed module: its current pod and, while that one starts, the previous one.
#[derive(Debug)]
struct Placed {
    spec_hash: String,
    fails: bool,
    since: Instant,
    /// When it starts (or started), in nanoseconds since the epoch: fixed at placement, as
    /// a runtime's record is, so that the status it makes does not change from pass to pass.
    starts_at_ns: i64,
    /// The container of the spec placed before, still running until this one starts.
    previous: Option<ContainerSeen>,
    /// The fleet's restart count when this was placed: it restarted as often as the count
    /// rose since.
    restarts_before: u32,
}

/// An in-memory runtime for one hollow device.
#[derive(Debug)]
pub struct HollowRuntime {
    behaviour: Behaviour,
    placed: BTreeMap<String, Placed>,
}

impl HollowRuntime {
    pub fn new(behaviour: Behaviour) -> HollowRuntime {
        HollowRuntime {
            behaviour,
            placed: BTreeMap::new(),
        }
    }

    /// The container a placed module shows at `now`, if it started.
    fn container(&self, p: &Placed, now: Instant) -> Option<ContainerSeen> {
        let up = now.checked_duration_since(p.since)? >= self.behaviour.start_delay;
        if !up {
            return p.previous.clone();
        }
        let started = p.starts_at_ns;
        let restarts = if p.fails {
            0
        } else {
            self.behaviour
                .restarts
                .count()
                .saturating_sub(p.restarts_before)
        };
        Some(ContainerSeen {
            attempt: restarts,
            state: if p.fails {
                State::Exited
            } else {
                State::Running
            },
            created_at: started,
            started_at: started,
            finished_at: if p.fails { started } else { 0 },
            exit_code: i32::from(p.fails),
            reason: if p.fails {
                "Error".into()
            } else {
                String::new()
            },
            message: String::new(),
            image_ref: format!("sha256:hollow-{}", p.spec_hash),
            spec_hash: p.spec_hash.clone(),
        })
    }
}

impl Runtime for HollowRuntime {
    fn observe(
        &self,
    ) -> impl Future<Output = edgefleet_agent::error::Result<BTreeMap<String, PodSeen>>> + Send
    {
        let now = Instant::now();
        let seen = self
            .placed
            .iter()
            .filter_map(|(key, p)| {
                let c = self.container(p, now)?;
                Some((
                    key.clone(),
                    PodSeen {
                        containers: vec![c],
                    },
                ))
            })
            .collect();
        std::future::ready(Ok(seen))
    }

    fn placed(&self) -> BTreeSet<String> {
        self.placed.keys().cloned().collect()
    }

    fn place(&mut self, wanted: &[&ResolvedModule]) -> edgefleet_agent::error::Result<Blocked> {
        let now = Instant::now();
        let keys: BTreeSet<String> = wanted.iter().map(|m| m.key()).collect();
        self.placed.retain(|k, _| keys.contains(k));
        for m in wanted {
            let hash = spec_hash(m);
            let previous = match self.placed.get(&m.key()) {
                Some(p) if p.spec_hash == hash => continue,
                Some(p) => self.container(p, now).filter(|c| c.state == State::Running),
                None => None,
            };
            let delay = i64::try_from(self.behaviour.start_delay.as_nanos()).unwrap_or(0);
            let placed = Placed {
                spec_hash: hash,
                fails: self.behaviour.fails(m),
                since: now,
                starts_at_ns: now_ns().saturating_add(delay),
                previous,
                restarts_before: self.behaviour.restarts.count(),
            };
            self.placed.insert(m.key(), placed);
        }
        Ok(Blocked::new())
    }
}

fn now_ns() -> i64 {
    i64::try_from(jiff::Timestamp::now().as_nanosecond()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_agent::observe::{Placement, module_status};
    use edgefleet_crds::{ModuleStatus, RuntimeStatus};
    use serde_json::json;

    fn module(name: &str, image: &str) -> ResolvedModule {
        serde_json::from_value(json!({
            "name": name, "deployment": "ns/d", "moduleRef": format!("ns/{name}"), "image": image,
        }))
        .expect("module")
    }

    /// What the agent would report of `m` after one look at `rt`.
    async fn reported(rt: &HollowRuntime, m: &ResolvedModule) -> ModuleStatus {
        let seen = rt.observe().await.expect("observe");
        module_status(m, seen.get(&m.key()), Placement::Placed)
    }

    async fn status(rt: &HollowRuntime, m: &ResolvedModule) -> RuntimeStatus {
        reported(rt, m).await.runtime_status
    }

    #[tokio::test]
    async fn a_module_runs_after_the_delay_and_its_new_spec_after_another() {
        let delay = Duration::from_millis(50);
        let mut rt = HollowRuntime::new(Behaviour {
            start_delay: delay,
            fail: None,
            restarts: Restarts::default(),
        });
        let v1 = module("app", "app:1");
        rt.place(&[&v1]).expect("place");
        assert_eq!(rt.placed(), BTreeSet::from(["ns/app".to_owned()]));
        assert_eq!(status(&rt, &v1).await, RuntimeStatus::Pending);
        tokio::time::sleep(delay * 2).await;
        assert_eq!(status(&rt, &v1).await, RuntimeStatus::Running);
        // The same spec again changes nothing; a new one starts over.
        rt.place(&[&v1]).expect("place");
        assert_eq!(status(&rt, &v1).await, RuntimeStatus::Running);
        let v2 = module("app", "app:2");
        rt.place(&[&v2]).expect("place");
        assert_eq!(status(&rt, &v2).await, RuntimeStatus::Pending);
        tokio::time::sleep(delay * 2).await;
        assert_eq!(status(&rt, &v2).await, RuntimeStatus::Running);
        // What it reports does not change from one look to the next: the agent would write
        // its status every pass otherwise.
        let (a, b) = (rt.observe().await.ok(), rt.observe().await.ok());
        assert_eq!(a, b);
        rt.place(&[]).expect("place");
        assert!(rt.placed().is_empty());
        assert!(rt.observe().await.expect("observe").is_empty());
    }

    async fn restarts(rt: &HollowRuntime, m: &ResolvedModule) -> u32 {
        reported(rt, m).await.restart_count
    }

    /// Every device sharing the count reports each running module restarted once more,
    /// from its placement on; a module placed later counts from then.
    #[tokio::test]
    async fn raising_the_fleets_restarts_restarts_every_running_module() {
        let fleet = Restarts::default();
        let behaviour = Behaviour {
            start_delay: Duration::ZERO,
            fail: None,
            restarts: fleet.clone(),
        };
        let (mut a, mut b) = (
            HollowRuntime::new(behaviour.clone()),
            HollowRuntime::new(behaviour),
        );
        let app = module("app", "app:1");
        a.place(&[&app]).expect("place");
        b.place(&[&app]).expect("place");
        assert_eq!((restarts(&a, &app).await, restarts(&b, &app).await), (0, 0));
        assert_eq!(fleet.restart_all(), 1);
        assert_eq!((restarts(&a, &app).await, restarts(&b, &app).await), (1, 1));
        let v2 = module("app", "app:2");
        a.place(&[&v2]).expect("place");
        assert_eq!(restarts(&a, &v2).await, 0);
        fleet.restart_all();
        assert_eq!((restarts(&a, &v2).await, restarts(&b, &app).await), (1, 2));
    }

    #[tokio::test]
    async fn a_module_told_to_fail_exits_with_code_1() {
        let mut rt = HollowRuntime::new(Behaviour {
            start_delay: Duration::ZERO,
            fail: Some("bad:".into()),
            restarts: Restarts::default(),
        });
        let (good, bad) = (module("good", "good:1"), module("app", "bad:1"));
        rt.place(&[&good, &bad]).expect("place");
        assert_eq!(status(&rt, &good).await, RuntimeStatus::Running);
        assert_eq!(status(&rt, &bad).await, RuntimeStatus::Backoff);
        let seen = rt.observe().await.expect("observe");
        assert_eq!(seen["ns/app"].containers[0].exit_code, 1);
    }
}
