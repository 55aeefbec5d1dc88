//! The machine's yardstick: what one small write costs this apiserver's CPU, measured
//! before the fleet exists, with a ConfigMap that nothing of edgefleet's touches. These
//! machines are shared, and the same code's writes cost the apiserver more on some days
//! than on others (registration at 10,000 devices: 2.9 ms a write in one session, 3.3
//! and 3.9 in the next): a phase's CPU a write read beside this figure tells a slower
//! machine from a slower edgefleet.

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
/// against 871).
const IN_FLIGHT: u32 = 32;
/// Writes each of them makes for the capacity: 1,920 in all, two seconds or more.
const WRITES_EACH: u32 = 60;
/// How long the processes' own background (the apiserver's controllers, the lab's kubelets,
/// an idle fleet's renewals) is measured first, to be taken out of the writes' figures.
const BACKGROUND: Duration = Duration::from_secs(3);
const NAME: &str = "fleet-sim-yardstick";

/// The apiserver's CPU for one write with nothing else to do.
#[derive(Debug)]
pub struct Yardstick {
    ms_a_write: f64,
    /// One at a time, as fast as the apiserver answers.
    writes_per_s: f64,
}

impl Yardstick {
    /// From the apiserver's CPU seconds over `seconds` of `writes`, less its background rate
    /// (CPU seconds a second).
    fn of(cpu_s: f64, background_per_s: f64, seconds: f64, writes: u32) -> Yardstick {
        Yardstick {
            ms_a_write: ms_a_write(cpu_s, background_per_s, seconds, writes),
            writes_per_s: f64::from(writes.max(1)) / seconds.max(0.001),
        }
    }
}

impl std::fmt::Display for Yardstick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{WRITES} server-side applies of one ConfigMap, one at a time, cost the apiserver {:.2} ms of CPU a write ({:.0} writes a second)",
            self.ms_a_write, self.writes_per_s
        )
    }
}

/// Measures the yardstick in namespace `ns`; `None` (and why, on stderr) if a write fails or the
/// apiserver's CPU cannot be read, so that the figure is missing rather than wrong.
pub async fn measure(admin: &Client, ns: &str, apiserver: &Process) -> Option<Yardstick> {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    let params = PatchParams::apply("fleet-sim").force();
    let background = *background_per_s(&[*apiserver]).await?.first()?;
    let before = apiserver.cpu_s()?;
    let start = Instant::now();
    for i in 0..WRITES {
        if let Err(e) = api
            .patch(NAME, &params, &Patch::Apply(&config_map(NAME, i)))
            .await
        {
            eprintln!("fleet-sim: the yardstick's write {i} failed: {e}");
            return None;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_s = apiserver.cpu_s()? - before;
    let _ = api.delete(NAME, &DeleteParams::default()).await;
    Some(Yardstick::of(cpu_s, background, seconds, WRITES))
}

/// What this apiserver takes with many small writes in flight, and what a write then costs
/// it and etcd: the rate a fleet's floor is reckoned from ("two writes a device at this
/// apiserver's rate"), measured on the same lab as the phases, not taken from another
/// apiserver's. The client shares the machine, as the hollow fleet does.
#[derive(Debug)]
pub struct Capacity {
    writes_per_s: f64,
    apiserver_ms_a_write: f64,
    /// `None` when etcd's process was not found (the lab runs one, named `etcd`).
    etcd_ms_a_write: Option<f64>,
}

impl Capacity {
    /// From `writes` made in `seconds`, and the CPU seconds the apiserver (and etcd, when
    /// found) spent meanwhile with their background rates, in that order.
    fn of(writes: u32, seconds: f64, spent_s: &[f64], background_per_s: &[f64]) -> Capacity {
        let ms: Vec<f64> = spent_s
            .iter()
            .zip(background_per_s)
            .map(|(&cpu_s, &background)| ms_a_write(cpu_s, background, seconds, writes))
            .collect();
        Capacity {
            writes_per_s: f64::from(writes.max(1)) / seconds.max(0.001),
            apiserver_ms_a_write: ms.first().copied().unwrap_or_default(),
            etcd_ms_a_write: ms.get(1).copied(),
        }
    }
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} server-side applies of {IN_FLIGHT} ConfigMaps, {IN_FLIGHT} in flight: {:.0} writes a second, {:.2} ms of the apiserver's CPU a write",
            IN_FLIGHT * WRITES_EACH,
            self.writes_per_s,
            self.apiserver_ms_a_write
        )?;
        match self.etcd_ms_a_write {
            Some(ms) => write!(f, " and {ms:.2} ms of etcd's"),
            None => write!(f, " (etcd's process not found)"),
        }
    }
}

/// Measures the capacity in namespace `ns`, besides whatever the cluster does meanwhile (its
/// background is taken out of the CPU, not of the rate); `None` (and why, on stderr) if a
/// write fails or the apiserver's CPU cannot be read.
pub async fn capacity(admin: &Client, ns: &str, apiserver: &Process) -> Option<Capacity> {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    let etcd = find("etcd").map(|pid| Process {
        name: "etcd",
        pid,
        serves_writes: false,
    });
    let measured: Vec<Process> = std::iter::once(*apiserver).chain(etcd).collect();
    let background = background_per_s(&measured).await?;
    let before = cpu_s(&measured)?;
    let names: Vec<String> = (0..IN_FLIGHT).map(|w| format!("{NAME}-{w}")).collect();
    let start = Instant::now();
    let written = futures::future::join_all(names.iter().map(|name| {
        let api = api.clone();
        async move {
            let params = PatchParams::apply("fleet-sim").force();
            for i in 0..WRITES_EACH {
                api.patch(name, &params, &Patch::Apply(&config_map(name, i)))
                    .await?;
            }
            Ok::<_, kube::Error>(())
        }
    }))
    .await;
    let seconds = start.elapsed().as_secs_f64();
    let after = cpu_s(&measured)?;
    for name in &names {
        let _ = api.delete(name, &DeleteParams::default()).await;
    }
    if let Some(Err(e)) = written.into_iter().find(Result::is_err) {
        eprintln!("fleet-sim: a write of the apiserver's capacity failed: {e}");
        return None;
    }
    let spent: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    Some(Capacity::of(
        IN_FLIGHT * WRITES_EACH,
        seconds,
        &spent,
        &background,
    ))
}

/// The ConfigMap both measures write: two short fields, nothing of edgefleet's.
fn config_map(name: &str, write: u32) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name}, "data": {"write": write.to_string()},
    })
}

/// Milliseconds of CPU a write: `cpu_s` spent over `seconds` of `writes`, less the process's
/// background rate (CPU seconds a second); never below nothing.
fn ms_a_write(cpu_s: f64, background_per_s: f64, seconds: f64, writes: u32) -> f64 {
    let spent = (cpu_s - background_per_s * seconds).max(0.0);
    1000.0 * spent / f64::from(writes.max(1))
}

/// Each process's CPU seconds so far; `None` if one is gone.
fn cpu_s(processes: &[Process]) -> Option<Vec<f64>> {
    processes.iter().map(Process::cpu_s).collect()
}

/// Each process's CPU seconds a second over [`BACKGROUND`], before the writes.
async fn background_per_s(processes: &[Process]) -> Option<Vec<f64>> {
    let quiet = cpu_s(processes)?;
    tokio::time::sleep(BACKGROUND).await;
    let now = cpu_s(processes)?;
    let seconds = BACKGROUND.as_secs_f64();
    Some(
        now.iter()
            .zip(&quiet)
            .map(|(n, q)| (n - q) / seconds)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_apiserver_s_background_is_taken_out_of_the_writes() {
        // 2.0 CPU s over 5 s, 0.04 of them a second the apiserver's own: 1.8 s for 400.
        let p = Yardstick::of(2.0, 0.04, 5.0, 400);
        assert!((p.ms_a_write - 4.5).abs() < 1e-9, "{p:?}");
        assert!((p.writes_per_s - 80.0).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn a_background_larger_than_the_writes_leaves_nothing_not_less() {
        let p = Yardstick::of(0.1, 0.5, 1.0, 400);
        assert_eq!(p.ms_a_write, 0.0);
    }

    #[test]
    fn the_capacity_takes_each_process_s_own_background_out() {
        // 1,920 writes in 2 s: the apiserver spent 4.0 CPU s with 0.5 a second its own (an
        // idle fleet's renewals), etcd 0.6 with 0.1: 3.0 and 0.4 s for the writes.
        let c = Capacity::of(1920, 2.0, &[4.0, 0.6], &[0.5, 0.1]);
        assert!((c.writes_per_s - 960.0).abs() < 1e-9, "{c:?}");
        assert!(
            (c.apiserver_ms_a_write - 3000.0 / 1920.0).abs() < 1e-9,
            "{c:?}"
        );
        assert!(
            (c.etcd_ms_a_write.expect("etcd was measured") - 400.0 / 1920.0).abs() < 1e-9,
            "{c:?}"
        );
    }

    #[test]
    fn etcd_not_found_is_missing_from_the_capacity_not_nothing() {
        let c = Capacity::of(1920, 2.0, &[4.0], &[0.5]);
        assert_eq!(c.etcd_ms_a_write, None);
        assert!(c.to_string().contains("etcd's process not found"), "{c}");
    }
}
