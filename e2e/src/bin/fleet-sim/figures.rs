//! The costs of a phase: the apiserver's requests from its own /metrics
//! (`apiserver_request_total` by verb and code, and its authorization webhooks' failures),
//! and the CPU time and peak memory of the controller, the apiserver and this simulator,
//! from /proc.

use std::collections::BTreeMap;
use std::time::Instant;

use kube::Client;

/// Verbs that write (`APPLY` is a server-side apply patch).
const WRITES: [&str; 6] = [
    "POST",
    "PUT",
    "PATCH",
    "APPLY",
    "DELETE",
    "DELETECOLLECTION",
];

/// What a write was: its verb and its resource (with the subresource, `edgedevices/status`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Write {
    pub verb: String,
    pub resource: String,
}

impl std::fmt::Display for Write {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.verb, self.resource)
    }
}

/// The apiserver's request counters: writes made (2xx) by verb and resource, requests
/// rejected as too many (429), and requests that failed in the apiserver as it counts them
/// (5xx, a 504 when it gave up; an agent takes a 502, 503 or 504 for its link down). A
/// request its authorization filter fails, such as one whose authorizer errs, is not among
/// them: those are `undecided`.
#[derive(Debug, Clone, Default)]
pub struct Requests {
    pub writes: BTreeMap<Write, f64>,
    pub rejected: f64,
    pub failed: f64,
    /// Calls to an authorization webhook that failed (no answer in time, an error) and left
    /// the decision to the authorizers after it
    /// (`apiserver_authorization_webhook_evaluations_fail_open_total`). For a device, whom
    /// only the device authorizer allows, the apiserver then answers 500: what devices get
    /// while no controller replica can decide. Counted only under the lab's
    /// `failurePolicy: NoOpinion`; with `Deny` the devices get their 500s uncounted.
    pub undecided: f64,
}

impl Requests {
    fn total(&self) -> f64 {
        self.writes.values().sum()
    }

    /// Writes other than Leases: what is left to settle once the heartbeats are all that runs.
    pub fn besides_leases(&self) -> f64 {
        self.writes
            .iter()
            .filter(|(w, _)| w.resource != "leases")
            .map(|(_, v)| v)
            .sum()
    }

    /// The writes since `before`, most first: where a phase's writes went.
    fn since(&self, before: &Requests) -> Vec<(Write, f64)> {
        let mut d: Vec<(Write, f64)> = self
            .writes
            .iter()
            .map(|(w, v)| (w.clone(), v - before.writes.get(w).unwrap_or(&0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        d.sort_by(|a, b| b.1.total_cmp(&a.1));
        d
    }

    /// The counters in the apiserver's metrics text (`apiserver_request_total`, and the
    /// webhooks' fail-open evaluations).
    fn parse(text: &str) -> Requests {
        let mut r = Requests::default();
        for line in text.lines() {
            if let Some((_, value)) = sample(
                line,
                "apiserver_authorization_webhook_evaluations_fail_open_total",
            ) {
                r.undecided += value;
                continue;
            }
            let Some((labels, value)) = sample(line, "apiserver_request_total") else {
                continue;
            };
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"'))
            };
            let code = label("code");
            // A write is one the apiserver made: a refused or abandoned one is counted apart
            // (429) or not at all (504, which the apiserver may still complete).
            let made = code.is_some_and(|c| c.starts_with('2'));
            if let Some(verb) = label("verb").filter(|v| made && WRITES.contains(v)) {
                let resource = match (label("resource"), label("subresource")) {
                    (Some(r), Some(sub)) if !sub.is_empty() => format!("{r}/{sub}"),
                    (r, _) => r.unwrap_or_default().to_owned(),
                };
                let write = Write {
                    verb: verb.to_owned(),
                    resource,
                };
                *r.writes.entry(write).or_default() += value;
            }
            if code == Some("429") {
                r.rejected += value;
            }
            if code.is_some_and(|c| c.starts_with('5')) {
                r.failed += value;
            }
        }
        r
    }
}

/// A sample of the counter `name` in a metrics text's `line`: its labels and its value (0
/// when unreadable), or `None` for another line.
fn sample<'a>(line: &'a str, name: &str) -> Option<(&'a str, f64)> {
    let (labels, value) = line
        .strip_prefix(name)?
        .strip_prefix('{')?
        .rsplit_once("} ")?;
    Some((labels, value.trim().parse().unwrap_or(0.0)))
}

/// Reads the counters from the apiserver's metrics; `None` (and why, on stderr) if it
/// cannot, so that a figure is missing rather than wrong.
pub async fn requests(admin: &Client) -> Option<Requests> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a request");
    match admin.request_text(request).await {
        Ok(text) => Some(Requests::parse(&text)),
        Err(e) => {
            eprintln!("fleet-sim: cannot read the apiserver's metrics: {e}");
            None
        }
    }
}

/// A process measured through /proc.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pub name: &'static str,
    pub pid: u32,
    /// The apiserver: its CPU is also told a write made (everything it did in the phase over
    /// the writes it made), to read beside the machine's yardstick (`yardstick.rs`).
    pub serves_writes: bool,
}

impl Process {
    /// CPU seconds (user and system) so far; `None` once the process is gone.
    pub fn cpu_s(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
        Some((ticks(14)? + ticks(15)?) / CLOCK_TICKS)
    }

    /// The peak resident memory since the last [`Process::reset_peak`], in MiB.
    fn peak_mib(&self) -> Option<f64> {
        self.memory_mib("VmHWM:")
    }

    /// The resident memory now, in MiB: after a burst, what the allocator kept.
    fn rss_mib(&self) -> Option<f64> {
        self.memory_mib("VmRSS:")
    }

    /// A memory figure of /proc's status (`field` with its colon), in MiB.
    fn memory_mib(&self, field: &str) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    }

    /// How many files the process may open (its soft limit), if /proc says.
    pub fn open_files_limit(&self) -> Option<u64> {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid)).ok()?;
        limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    }

    /// Starts the peak over (`5` to clear_refs resets VmHWM).
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }
}

/// Linux's USER_HZ, which /proc's CPU times count in.
const CLOCK_TICKS: f64 = 100.0;

/// The pid of the one process whose command is `comm`.
pub fn find(comm: &str) -> Option<u32> {
    let found: Vec<u32> = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect();
    match found.as_slice() {
        [pid] => Some(*pid),
        _ => None,
    }
}

/// A phase being measured.
#[derive(Debug)]
pub struct Phase {
    start: Instant,
    requests: Option<Requests>,
    cpu: Vec<Option<f64>>,
}

impl Phase {
    pub async fn begin(admin: &Client, processes: &[Process]) -> Phase {
        for p in processes {
            p.reset_peak();
        }
        Phase {
            start: Instant::now(),
            requests: requests(admin).await,
            cpu: processes.iter().map(Process::cpu_s).collect(),
        }
    }

    pub fn started(&self) -> Instant {
        self.start
    }

    /// The `i`th process was started during the phase (a restart): all its CPU time counts.
    pub fn started_anew(&mut self, i: usize) {
        if let Some(cpu) = self.cpu.get_mut(i) {
            *cpu = Some(0.0);
        }
    }

    /// What the phase cost. A figure that cannot be read at both ends (the apiserver did
    /// not answer, a process is gone) is printed as unknown, never as a difference with zero.
    pub async fn end(&self, admin: &Client, processes: &[Process], devices: usize) -> Cost {
        let seconds = self.start.elapsed().as_secs_f64().max(0.001);
        let (mut text, writes_made) = match (&self.requests, requests(admin).await) {
            (Some(before), Some(now)) => {
                let writes = now.total() - before.total();
                let most: Vec<String> = now
                    .since(before)
                    .iter()
                    .take(6)
                    .map(|(what, n)| format!("{n:.0} {what}"))
                    .collect();
                let text = format!(
                    "apiserver writes {writes:.0} ({:.0}/s, {:.1} per device; most {}), 429s {:.0}, 5xx {:.0}, undecided (authorizer failed) {:.0}; over {seconds:.1}s",
                    writes / seconds,
                    writes / devices.max(1) as f64,
                    most.join(", "),
                    now.rejected - before.rejected,
                    now.failed - before.failed,
                    now.undecided - before.undecided,
                );
                (text, Some(writes))
            }
            _ => (
                format!("apiserver writes unknown (its metrics unread); over {seconds:.1}s"),
                None,
            ),
        };
        for (p, before) in processes.iter().zip(&self.cpu) {
            let spent = before.zip(p.cpu_s()).map(|(b, n)| n - b);
            let cpu = spent.map_or("unknown".to_owned(), |s| format!("{s:.1}"));
            // Not where the fleet wrote less than once a device: there the apiserver's CPU is
            // mostly the cluster's own background, which a figure a write would misstate.
            let a_write = match (spent, writes_made) {
                (Some(s), Some(w)) if p.serves_writes && w > 0.0 && w >= devices as f64 => {
                    format!(" ({:.1} ms a write)", 1000.0 * s / w)
                }
                _ => String::new(),
            };
            let mib = |m: Option<f64>| m.map_or("unknown".to_owned(), |m| format!("{m:.0} MiB"));
            text.push_str(&format!(
                "\n    {}: {cpu} CPU s{a_write}, peak RSS {}, at the end {}",
                p.name,
                mib(p.peak_mib()),
                mib(p.rss_mib())
            ));
        }
        Cost {
            text,
            writes_per_s: writes_made.map(|w| w / seconds),
        }
    }
}

/// What a phase cost: the figures to print, and the apiserver's write rate if it was read.
#[derive(Debug)]
pub struct Cost {
    pub text: String,
    pub writes_per_s: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
apiserver_request_total{code="200",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PATCH",version="v1"} 30
apiserver_request_total{code="200",component="apiserver",dry_run="",group="edgefleet.io",resource="edgedevices",scope="resource",subresource="status",verb="APPLY",version="v1"} 7
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="events",scope="namespace",subresource="",verb="POST",version="v1"} 2
apiserver_request_total{code="429",component="apiserver",dry_run="",group="coordination.k8s.io",resource="leases",scope="resource",subresource="",verb="PATCH",version="v1"} 5
apiserver_request_total{code="504",component="apiserver",dry_run="",group="edgefleet.io",resource="edgedevices",scope="resource",subresource="status",verb="APPLY",version="v1"} 11
apiserver_request_total{code="429",component="apiserver",dry_run="",group="edgefleet.io",resource="edgedevices",scope="cluster",subresource="",verb="WATCH",version="v1"} 1
apiserver_request_total{code="200",component="apiserver",dry_run="",group="edgefleet.io",resource="edgedevices",scope="cluster",subresource="",verb="LIST",version="v1"} 40
apiserver_request_duration_seconds_count{code="200",resource="leases",verb="PATCH"} 99
apiserver_authorization_webhook_evaluations_fail_open_total{name="edgefleet-devices-0",result="error"} 4
apiserver_authorization_webhook_evaluations_fail_open_total{name="edgefleet-devices-7",result="timeout"} 3
apiserver_authorization_webhook_evaluations_total{name="edgefleet-devices-0",result="error"} 16
"#;

    fn write(verb: &str, resource: &str) -> Write {
        Write {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
        }
    }

    #[test]
    fn only_writes_the_apiserver_made_count_by_verb_and_resource() {
        let r = Requests::parse(METRICS);
        assert_eq!(
            r.writes,
            BTreeMap::from([
                (write("APPLY", "edgedevices/status"), 7.0),
                (write("PATCH", "leases"), 30.0),
                (write("POST", "events"), 2.0),
            ]),
            "reads, refusals (429) and abandoned writes (504) are no writes made"
        );
        assert_eq!(r.total(), 39.0);
        assert_eq!(r.besides_leases(), 9.0);
        assert_eq!(r.rejected, 6.0, "every 429, reads and writes alike");
        assert_eq!(r.failed, 11.0, "every 5xx");
        assert_eq!(
            r.undecided, 7.0,
            "every authorizer's failed calls, not its retries"
        );
    }

    #[test]
    fn a_phase_s_writes_are_the_differences_most_first() {
        let before = Requests::parse(METRICS);
        let mut now = before.clone();
        *now.writes.entry(write("PATCH", "leases")).or_default() += 3.0;
        *now.writes.entry(write("APPLY", "edgedevices")).or_default() += 8.0;
        assert_eq!(
            now.since(&before),
            vec![
                (write("APPLY", "edgedevices"), 8.0),
                (write("PATCH", "leases"), 3.0)
            ]
        );
        assert_eq!(
            write("APPLY", "edgedevices").to_string(),
            "APPLY edgedevices"
        );
    }
}
