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

use crate::figures::Process;

/// Writes measured: at a few milliseconds each, seconds in all, long beside the noise of
/// /proc's 10 ms ticks.
const WRITES: u32 = 400;
/// How long the apiserver's own background (its controllers, the lab's kubelets) is
/// measured first, to be taken out of the writes' figure.
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
    /// (CPU seconds a second); never below nothing.
    fn of(cpu_s: f64, background_per_s: f64, seconds: f64, writes: u32) -> Yardstick {
        let writes = f64::from(writes.max(1));
        let spent = (cpu_s - background_per_s * seconds).max(0.0);
        Yardstick {
            ms_a_write: 1000.0 * spent / writes,
            writes_per_s: writes / seconds.max(0.001),
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
    let quiet = apiserver.cpu_s()?;
    tokio::time::sleep(BACKGROUND).await;
    let background_per_s = (apiserver.cpu_s()? - quiet) / BACKGROUND.as_secs_f64();
    let before = apiserver.cpu_s()?;
    let start = Instant::now();
    for i in 0..WRITES {
        let cm = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": NAME}, "data": {"write": i.to_string()},
        });
        if let Err(e) = api.patch(NAME, &params, &Patch::Apply(&cm)).await {
            eprintln!("fleet-sim: the yardstick's write {i} failed: {e}");
            return None;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_s = apiserver.cpu_s()? - before;
    let _ = api.delete(NAME, &DeleteParams::default()).await;
    Some(Yardstick::of(cpu_s, background_per_s, seconds, WRITES))
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
}
