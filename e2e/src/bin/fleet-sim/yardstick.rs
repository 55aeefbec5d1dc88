//! The machine's yardstick: what one small write costs this apiserver's CPU, measured
//! before the fleet exists, with a ConfigMap that nothing of edgefleet's touches. These
//! machines are shared, and the same code's writes cost the apiserver more on some days
//! than on others (registration at 10,000 devices: 2.9 ms a write in one session, 3.3
//! and 3.9 in the next): a phase's CPU a write read beside this figure tells a slower
//! machine from a slower edgefleet. Beside it, the apiserver's capacity: what it takes
//! with many such writes in flight.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::figures::{Process, find};

/// Writes measured: at a few milliseconds each, seconds in all, long beside the noise of
/// /proc's 10 ms ticks.
const WRITES: u32 = 400;
/// The capacity's writers, each writing its own ConfigMap one write after another: as many
/// as the controller's writes in flight by default (64 took no more here: 878 a second
/// against 844 and 871 at 32).
const IN_FLIGHT: u32 = 32;
/// Writes each of them makes for the capacity: 1,920 in all, two seconds or more.
const WRITES_EACH: u32 = 60;
/// How long the servers' background (the apiserver's controllers, the lab's kubelets) is
/// measured before writes made with no fleet, to be taken out of the writes' figures.
pub const BACKGROUND: Duration = Duration::from_secs(3);
const NAME: &str = "fleet-sim-yardstick";

/// A process's CPU a write in milliseconds, or why it is not told.
type PerWrite = Result<f64, &'static str>;

/// ConfigMap applies made, and what they cost the apiserver and etcd: the one measure behind
/// the yardstick (one writer) and the capacity (many).
#[derive(Debug)]
struct Applied {
    writes: u32,
    seconds: f64,
    apiserver: Spent,
    etcd: Result<Spent, &'static str>,
}

impl Applied {
    fn writes_per_s(&self) -> f64 {
        f64::from(self.writes.max(1)) / self.seconds.max(0.001)
    }

    fn apiserver_ms_a_write(&self) -> PerWrite {
        self.apiserver.ms_a_write(self.seconds, self.writes)
    }

    fn etcd_ms_a_write(&self) -> PerWrite {
        self.etcd
            .and_then(|e| e.ms_a_write(self.seconds, self.writes))
    }
}

/// The apiserver's CPU for one write with nothing else to do: one writer, one at a time.
#[derive(Debug)]
pub struct Yardstick(Applied);

impl std::fmt::Display for Yardstick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{WRITES} server-side applies of one ConfigMap, one at a time ({:.0} writes a second): {}",
            self.0.writes_per_s(),
            told(
                &self.0.apiserver_ms_a_write(),
                "the apiserver's CPU a write"
            )
        )
    }
}

/// Measures the yardstick in namespace `ns`, its `background` taken out; `None` (and why, on
/// stderr) if a write fails or the apiserver's CPU cannot be read, so that the figure is
/// missing rather than wrong.
pub async fn measure(
    admin: &Client,
    ns: &str,
    servers: Servers,
    background: Background,
) -> Option<Yardstick> {
    apply_config_maps(admin, ns, servers, background, 1, WRITES)
        .await
        .map(Yardstick)
}

/// What this apiserver takes with many small writes in flight, and what a write then costs
/// it and etcd: the rate a fleet's floor is reckoned from ("two writes a device at this
/// apiserver's rate"), measured on the same lab as the phases, not taken from another
/// apiserver's. The client shares the machine, as the hollow fleet does.
#[derive(Debug)]
pub struct Capacity(Applied);

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} server-side applies of {IN_FLIGHT} ConfigMaps, {IN_FLIGHT} in flight: {:.0} writes a second; {}; {}",
            self.0.writes,
            self.0.writes_per_s(),
            told(
                &self.0.apiserver_ms_a_write(),
                "the apiserver's CPU a write"
            ),
            told(&self.0.etcd_ms_a_write(), "etcd's")
        )
    }
}

/// Measures the capacity in namespace `ns`, beside whatever the cluster does meanwhile: its
/// `background` is taken out of the CPU, not of the rate. `None` (and why, on stderr) if a
/// write fails or the apiserver's CPU cannot be read.
pub async fn capacity(
    admin: &Client,
    ns: &str,
    servers: Servers,
    background: Background,
) -> Option<Capacity> {
    apply_config_maps(admin, ns, servers, background, IN_FLIGHT, WRITES_EACH)
        .await
        .map(Capacity)
}

/// Applies `writers` ConfigMaps at once, `writes_each` times each one after another, and
/// deletes them; `None` (and why, on stderr) if a write fails or the apiserver's CPU cannot
/// be read.
async fn apply_config_maps(
    admin: &Client,
    ns: &str,
    servers: Servers,
    background: Background,
    writers: u32,
    writes_each: u32,
) -> Option<Applied> {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    let names: Vec<String> = (0..writers).map(|w| format!("{NAME}-{w}")).collect();
    let before = servers.cpu_s()?;
    let start = Instant::now();
    let written = futures::future::join_all(names.iter().map(|name| {
        let api = api.clone();
        async move {
            let params = PatchParams::apply("fleet-sim").force();
            for i in 0..writes_each {
                api.patch(name, &params, &Patch::Apply(&config_map(name, i)))
                    .await?;
            }
            Ok::<_, kube::Error>(())
        }
    }))
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let after = servers.cpu_s();
    for name in &names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    if let Some(Err(e)) = written.into_iter().find(Result::is_err) {
        eprintln!("fleet-sim: a ConfigMap write for the yardstick or the capacity failed: {e}");
        return None;
    }
    let (apiserver, etcd) = servers.spent(before, after?, background);
    Some(Applied {
        writes: writers * writes_each,
        seconds,
        apiserver,
        etcd,
    })
}

/// The processes whose CPU the writes cost: the apiserver, and etcd when exactly one process
/// of that name runs (the lab's).
#[derive(Debug, Clone, Copy)]
pub struct Servers {
    apiserver: Process,
    etcd: Option<Process>,
}

/// CPU seconds so far: the apiserver's, and etcd's if it is measured and still there.
#[derive(Debug, Clone, Copy)]
struct Cpu {
    apiserver: f64,
    etcd: Option<f64>,
}

/// The servers' CPU seconds a second while nothing of the bench's was written.
#[derive(Debug, Clone, Copy)]
pub struct Background {
    apiserver: f64,
    etcd: Option<f64>,
}

impl Background {
    /// The rates from reading `from` to reading `now`, `seconds` apart; etcd's only if both
    /// readings have it.
    fn between(from: Cpu, now: Cpu, seconds: f64) -> Background {
        let seconds = seconds.max(0.001);
        Background {
            apiserver: (now.apiserver - from.apiserver) / seconds,
            etcd: now.etcd.zip(from.etcd).map(|(n, f)| (n - f) / seconds),
        }
    }
}

/// A background measurement under way (see [`Servers::sample`]).
pub struct Sampling {
    servers: Servers,
    from: Cpu,
    since: Instant,
}

impl Servers {
    pub fn find(apiserver: Process) -> Servers {
        let etcd = find("etcd").map(|pid| Process {
            name: "etcd",
            pid,
            serves_writes: false,
        });
        Servers { apiserver, etcd }
    }

    /// `None` (and why, on stderr) once the apiserver is gone.
    fn cpu_s(&self) -> Option<Cpu> {
        let Some(apiserver) = self.apiserver.cpu_s() else {
            eprintln!("fleet-sim: the apiserver's CPU cannot be read any more");
            return None;
        };
        let etcd = self.etcd.and_then(|e| e.cpu_s());
        Some(Cpu { apiserver, etcd })
    }

    /// What the apiserver and etcd spent between `before` and `after`, and their background;
    /// etcd's, or why it is not told: none found, or a reading or its background missing.
    fn spent(
        &self,
        before: Cpu,
        after: Cpu,
        background: Background,
    ) -> (Spent, Result<Spent, &'static str>) {
        let apiserver = Spent {
            cpu_s: after.apiserver - before.apiserver,
            background_per_s: background.apiserver,
        };
        let etcd = match (self.etcd, before.etcd, after.etcd, background.etcd) {
            (None, ..) => Err("no single etcd process"),
            (Some(_), Some(b), Some(a), Some(per_s)) => Ok(Spent {
                cpu_s: a - b,
                background_per_s: per_s,
            }),
            _ => Err("its CPU could not be read"),
        };
        (apiserver, etcd)
    }

    /// Starts measuring the background. Beside an idle fleet the caller ends it after whole
    /// Lease intervals: the renewals come in waves, and a few seconds catch one or miss it.
    pub fn sample(self) -> Option<Sampling> {
        Some(Sampling {
            servers: self,
            from: self.cpu_s()?,
            since: Instant::now(),
        })
    }

    /// The background over `span`, with nothing of the bench's written meanwhile.
    pub async fn background_over(self, span: Duration) -> Option<Background> {
        let sampling = self.sample()?;
        tokio::time::sleep(span).await;
        sampling.end()
    }
}

impl Sampling {
    /// The rates since [`Servers::sample`].
    pub fn end(&self) -> Option<Background> {
        let now = self.servers.cpu_s()?;
        Some(Background::between(
            self.from,
            now,
            self.since.elapsed().as_secs_f64(),
        ))
    }
}

/// What a process spent while the writes were made, and its background rate.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spent {
    cpu_s: f64,
    background_per_s: f64,
}

impl Spent {
    /// Milliseconds of CPU a write over `seconds` of `writes`, the background taken out; not
    /// told when the background was larger than what was spent (it was caught in a wave, or
    /// the process's CPU is too little to tell from it), rather than told as nothing.
    fn ms_a_write(self, seconds: f64, writes: u32) -> PerWrite {
        let spent = self.cpu_s - self.background_per_s * seconds;
        if spent <= 0.0 {
            return Err("less than its background");
        }
        Ok(1000.0 * spent / f64::from(writes.max(1)))
    }
}

/// A figure a write as printed, `what` it is: its milliseconds, or why it is not told.
fn told(per_write: &PerWrite, what: &str) -> String {
    match per_write {
        Ok(ms) => format!("{what} {ms:.2} ms"),
        Err(why) => format!("{what} not told ({why})"),
    }
}

/// The ConfigMap both measures write: two short fields, nothing of edgefleet's.
fn config_map(name: &str, write: u32) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"write": write.to_string()},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spent(cpu_s: f64, background_per_s: f64) -> Spent {
        Spent {
            cpu_s,
            background_per_s,
        }
    }

    fn applied(
        writes: u32,
        seconds: f64,
        apiserver: Spent,
        etcd: Result<Spent, &'static str>,
    ) -> Applied {
        Applied {
            writes,
            seconds,
            apiserver,
            etcd,
        }
    }

    fn process(name: &'static str) -> Process {
        Process {
            name,
            pid: 1,
            serves_writes: false,
        }
    }

    fn servers(etcd: bool) -> Servers {
        Servers {
            apiserver: process("apiserver"),
            etcd: etcd.then(|| process("etcd")),
        }
    }

    fn cpu(apiserver: f64, etcd: Option<f64>) -> Cpu {
        Cpu { apiserver, etcd }
    }

    #[test]
    fn the_apiserver_s_background_is_taken_out_of_the_writes() {
        // 2.0 CPU s over 5 s, 0.04 of them a second the apiserver's own: 1.8 s for 400.
        let p = Yardstick(applied(400, 5.0, spent(2.0, 0.04), Err("not measured")));
        let ms = p.0.apiserver_ms_a_write().expect("told");
        assert!((ms - 4.5).abs() < 1e-9, "{p:?}");
        assert!((p.0.writes_per_s() - 80.0).abs() < 1e-9, "{p:?}");
        assert!(
            p.to_string()
                .ends_with("the apiserver's CPU a write 4.50 ms"),
            "{p}"
        );
    }

    #[test]
    fn a_background_larger_than_the_writes_leaves_the_figure_untold_not_nothing() {
        let p = Yardstick(applied(400, 1.0, spent(0.1, 0.5), Err("not measured")));
        assert!(p.0.apiserver_ms_a_write().is_err(), "{p:?}");
        assert!(
            p.to_string()
                .ends_with("the apiserver's CPU a write not told (less than its background)"),
            "{p}"
        );
    }

    #[test]
    fn the_capacity_takes_each_server_s_own_background_out() {
        // 1,920 writes in 2 s: the apiserver spent 4.0 CPU s with 0.5 a second its own (an
        // idle fleet's renewals), etcd 0.6 with 0.1: 3.0 and 0.4 s for the writes.
        let c = Capacity(applied(1920, 2.0, spent(4.0, 0.5), Ok(spent(0.6, 0.1))));
        assert!((c.0.writes_per_s() - 960.0).abs() < 1e-9, "{c:?}");
        let apiserver = c.0.apiserver_ms_a_write().expect("told");
        assert!((apiserver - 3000.0 / 1920.0).abs() < 1e-9, "{c:?}");
        let etcd = c.0.etcd_ms_a_write().expect("told");
        assert!((etcd - 400.0 / 1920.0).abs() < 1e-9, "{c:?}");
    }

    #[test]
    fn what_each_server_spent_is_its_own_reading_after_less_before() {
        let background = Background {
            apiserver: 0.5,
            etcd: Some(0.1),
        };
        let (before, after) = (cpu(10.0, Some(3.0)), cpu(14.0, Some(3.5)));
        let (apiserver, etcd) = servers(true).spent(before, after, background);
        assert_eq!(apiserver, spent(4.0, 0.5));
        assert_eq!(etcd, Ok(spent(0.5, 0.1)));
    }

    #[test]
    fn etcd_missing_or_unread_is_said_apart_and_the_apiserver_s_figure_stands() {
        let background = Background {
            apiserver: 0.5,
            etcd: Some(0.1),
        };
        let (before, after) = (cpu(10.0, Some(3.0)), cpu(14.0, None));
        let (apiserver, etcd) = servers(true).spent(before, after, background);
        assert_eq!(apiserver, spent(4.0, 0.5));
        assert_eq!(etcd, Err("its CPU could not be read"));
        let (_, etcd) = servers(false).spent(cpu(10.0, None), cpu(14.0, None), background);
        assert_eq!(etcd, Err("no single etcd process"));
        let c = Capacity(applied(1920, 2.0, spent(4.0, 0.5), etcd));
        assert!(
            c.to_string()
                .ends_with("; etcd's not told (no single etcd process)"),
            "{c}"
        );
    }

    #[test]
    fn the_background_is_each_server_s_own_rate_between_its_readings() {
        let b = Background::between(cpu(10.0, Some(3.0)), cpu(16.0, Some(4.0)), 40.0);
        assert!((b.apiserver - 0.15).abs() < 1e-9, "{b:?}");
        assert!(
            (b.etcd.expect("etcd read twice") - 0.025).abs() < 1e-9,
            "{b:?}"
        );
        let b = Background::between(cpu(10.0, None), cpu(16.0, Some(4.0)), 40.0);
        assert_eq!(b.etcd, None);
    }
}
