//! The controller under measurement. fleet-sim starts it (the command `e2e/bench-fleet`
//! gives it) rather than the script, so that it can stop it and start it again: the restart
//! phase measures a new controller's full relist of a fleet it did not see grow.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgefleet_e2e::stop_child;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How a controller is started: its command, where it logs, where it serves /readyz, and
/// where its pid goes (for the script's cleanup, should fleet-sim die without stopping it).
#[derive(Debug)]
pub struct Launch {
    pub command: Vec<String>,
    pub log: PathBuf,
    /// The address its `--http-addr` is given.
    pub http: String,
    pub pidfile: PathBuf,
}

/// A running controller; dropping it stops it with SIGTERM.
#[derive(Debug)]
pub struct Controller {
    launch: Launch,
    child: Child,
    started: Instant,
}

impl Controller {
    /// Starts it; refused while something else answers on its health address (a controller
    /// an earlier run left behind would answer this one's probes).
    pub async fn start(launch: Launch) -> std::io::Result<Controller> {
        if answers_ok(&launch.http, "/healthz").await {
            return Err(std::io::Error::other(format!(
                "something already answers on {}: a controller of another bench?",
                launch.http
            )));
        }
        let child = spawn(&launch)?;
        Ok(Controller {
            launch,
            child,
            started: Instant::now(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops it with SIGTERM (as a rolling upgrade would) and starts a new one.
    pub fn restart(&mut self) -> std::io::Result<()> {
        tokio::task::block_in_place(|| stop_child(&mut self.child));
        self.child = spawn(&self.launch)?;
        self.started = Instant::now();
        Ok(())
    }

    /// Waits until it says it is ready (/readyz answers 200: its caches synced and, where it
    /// authorizes devices, the fleet listed), or `timeout`, or it exits; how long after its
    /// start that was, `None` if it never did.
    pub async fn ready(&mut self, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if !matches!(self.child.try_wait(), Ok(None)) {
                eprintln!("fleet-sim: the controller exited (the end of its log follows)");
                return None;
            }
            if answers_ok(&self.launch.http, "/readyz").await {
                return Some(self.started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

/// Starts the command with `--http-addr`, its output appended to the log, its pid written.
fn spawn(launch: &Launch) -> std::io::Result<Child> {
    let (program, args) = launch
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("no controller command"))?;
    let log: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)?;
    let child = Command::new(program)
        .args(args)
        .args(["--http-addr", &launch.http])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    std::fs::write(&launch.pidfile, child.id().to_string())?;
    Ok(child)
}

/// Whether a plain HTTP GET of `path` at `addr` answers 200. The controller's health port is
/// plain HTTP on loopback: one request line is all it takes.
async fn answers_ok(addr: &str, path: &str) -> bool {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        Some(head.ends_with(b" 200"))
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
