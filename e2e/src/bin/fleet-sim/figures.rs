//! The costs of a phase: the apiserver's requests from its own /metrics
//! (`apiserver_request_total` by verb and code), and the CPU time and peak memory of the
//! controller, the apiserver and this simulator, from /proc.

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

/// The apiserver's request counters: writes, and requests rejected as too many (429).
#[derive(Debug, Clone, Copy, Default)]
pub struct Requests {
    pub writes: f64,
    pub rejected: f64,
}

/// Reads the counters from the apiserver's metrics.
pub async fn requests(admin: &Client) -> Requests {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("a request");
    let text = admin.request_text(request).await.unwrap_or_else(|e| {
        eprintln!("fleet-sim: cannot read the apiserver's metrics: {e}");
        String::new()
    });
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
        if label("verb").is_some_and(|v| WRITES.contains(&v)) {
            r.writes += value;
        }
        if label("code") == Some("429") {
            r.rejected += value;
        }
    }
    r
}

/// A process measured through /proc.
#[derive(Debug, Clone, Copy)]
pub struct Process {
    pub name: &'static str,
    pub pid: u32,
}

impl Process {
    /// CPU seconds (user and system) so far.
    fn cpu_s(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| fields.get(i - 3).and_then(|f| f.parse::<f64>().ok());
        (ticks(14).unwrap_or(0.0) + ticks(15).unwrap_or(0.0)) / CLOCK_TICKS
    }

    /// The peak resident memory since the last [`Process::reset_peak`], in MiB.
    fn peak_mib(&self) -> f64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
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
    requests: Requests,
    cpu: Vec<f64>,
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

    /// What the phase cost.
    pub async fn end(&self, admin: &Client, processes: &[Process], devices: usize) -> Cost {
        let seconds = self.start.elapsed().as_secs_f64().max(0.001);
        let now = requests(admin).await;
        let writes = now.writes - self.requests.writes;
        let mut text = format!(
            "apiserver writes {writes:.0} ({:.0}/s, {:.1} per device), 429s {:.0}; over {seconds:.1}s",
            writes / seconds,
            writes / devices.max(1) as f64,
            now.rejected - self.requests.rejected,
        );
        for (p, before) in processes.iter().zip(&self.cpu) {
            text.push_str(&format!(
                "\n    {}: {:.1} CPU s, peak RSS {:.0} MiB",
                p.name,
                p.cpu_s() - before,
                p.peak_mib()
            ));
        }
        Cost {
            text,
            writes_per_s: writes / seconds,
        }
    }
}

/// What a phase cost: the figures to print, and the apiserver's write rate.
#[derive(Debug)]
pub struct Cost {
    pub text: String,
    pub writes_per_s: f64,
}
