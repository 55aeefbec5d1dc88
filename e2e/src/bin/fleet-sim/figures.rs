//! The costs of a phase: the apiserver's requests from its own /metrics
//! (`apiserver_request_total` by verb and code), and the CPU time and peak memory of the
//! controller, the apiserver and this simulator, from /proc.

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

/// The apiserver's request counters: writes made (2xx) by verb and resource, and requests
/// rejected as too many (429).
#[derive(Debug, Clone, Default)]
pub struct Requests {
    pub writes: BTreeMap<String, f64>,
    pub rejected: f64,
}

impl Requests {
    pub fn total(&self) -> f64 {
        self.writes.values().sum()
    }

    /// Writes other than Leases: what is left to settle once the heartbeats are all that runs.
    pub fn besides_leases(&self) -> f64 {
        self.writes
            .iter()
            .filter(|(k, _)| !k.ends_with(" leases"))
            .map(|(_, v)| v)
            .sum()
    }

    /// The writes since `before`, most first: where a phase's writes went.
    fn since(&self, before: &Requests) -> Vec<(String, f64)> {
        let mut d: Vec<(String, f64)> = self
            .writes
            .iter()
            .map(|(k, v)| (k.clone(), v - before.writes.get(k).unwrap_or(&0.0)))
            .filter(|(_, v)| *v > 0.0)
            .collect();
        d.sort_by(|a, b| b.1.total_cmp(&a.1));
        d
    }
}

/// Reads the counters from the apiserver's metrics; `None` (and why, on stderr) if it
/// cannot, so that a figure is missing rather than wrong.
pub async fn requests(admin: &Client) -> Option<Requests> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a request");
    let text = match admin.request_text(request).await {
        Ok(text) => text,
        Err(e) => {
            eprintln!("fleet-sim: cannot read the apiserver's metrics: {e}");
            return None;
        }
    };
    let mut r = Requests::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let value: f64 = value.trim().parse().unwrap_or(0.0);
        let label = |k: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"'))
        };
        // A write is one the apiserver made: a refused or abandoned one is counted apart (429)
        // or not at all (504, which the apiserver may still complete).
        let made = label("code").is_some_and(|c| c.starts_with('2'));
        if let Some(verb) = label("verb").filter(|v| made && WRITES.contains(v)) {
            let resource = match (label("resource"), label("subresource")) {
                (Some(r), Some(sub)) if !sub.is_empty() => format!("{r}/{sub}"),
                (r, _) => r.unwrap_or_default().to_owned(),
            };
            *r.writes.entry(format!("{verb} {resource}")).or_default() += value;
        }
        if label("code") == Some("429") {
            r.rejected += value;
        }
    }
    Some(r)
}

/// A process measured through /proc.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pub name: &'static str,
    pub pid: u32,
}

impl Process {
    /// CPU seconds (user and system) so far; `None` once the process is gone.
    fn cpu_s(&self) -> Option<f64> {
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
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
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

    /// What the phase cost. A figure that cannot be read at both ends (the apiserver did
    /// not answer, a process is gone) is printed as unknown, never as a difference with zero.
    pub async fn end(&self, admin: &Client, processes: &[Process], devices: usize) -> Cost {
        let seconds = self.start.elapsed().as_secs_f64().max(0.001);
        let (mut text, writes_per_s) = match (&self.requests, requests(admin).await) {
            (Some(before), Some(now)) => {
                let writes = now.total() - before.total();
                let most: Vec<String> = now
                    .since(before)
                    .iter()
                    .take(3)
                    .map(|(what, n)| format!("{n:.0} {what}"))
                    .collect();
                let text = format!(
                    "apiserver writes {writes:.0} ({:.0}/s, {:.1} per device; most {}), 429s {:.0}; over {seconds:.1}s",
                    writes / seconds,
                    writes / devices.max(1) as f64,
                    most.join(", "),
                    now.rejected - before.rejected,
                );
                (text, Some(writes / seconds))
            }
            _ => (
                format!("apiserver writes unknown (its metrics unread); over {seconds:.1}s"),
                None,
            ),
        };
        for (p, before) in processes.iter().zip(&self.cpu) {
            let cpu = before
                .zip(p.cpu_s())
                .map_or("unknown".to_owned(), |(b, n)| format!("{:.1}", n - b));
            let peak = p
                .peak_mib()
                .map_or("unknown".to_owned(), |m| format!("{m:.0} MiB"));
            text.push_str(&format!("\n    {}: {cpu} CPU s, peak RSS {peak}", p.name));
        }
        Cost { text, writes_per_s }
    }
}

/// What a phase cost: the figures to print, and the apiserver's write rate if it was read.
#[derive(Debug)]
pub struct Cost {
    pub text: String,
    pub writes_per_s: Option<f64>,
}
