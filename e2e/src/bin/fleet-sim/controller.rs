//! The controller under measurement. fleet-sim starts it (the command `e2e/bench-fleet`
//! gives it) rather than the script, so that it can stop it and start it again: the restart
//! phase measures a new controller's full relist of a fleet it did not see grow.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgefleet_e2e::stop_child;

/// How a controller is started: its command, where it logs, where it serves /readyz.
#[derive(Debug)]
pub struct Launch {
    pub command: Vec<String>,
    pub log: PathBuf,
    /// The address its `--http-addr` is given.
    pub http: String,
}

/// A running controller; dropping it stops it with SIGTERM.
#[derive(Debug)]
pub struct Controller {
    launch: Launch,
    child: Child,
    started: Instant,
}

impl Controller {
    pub fn start(launch: Launch) -> std::io::Result<Controller> {
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
                eprintln!(
                    "fleet-sim: the controller exited; its log is {}",
                    self.launch.log.display()
                );
                return None;
            }
            if answers_ok(&self.launch.http, "/readyz") {
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

/// Starts the command with `--http-addr`, its output appended to the log.
fn spawn(launch: &Launch) -> std::io::Result<Child> {
    let (program, args) = launch
        .command
        .split_first()
        .ok_or_else(|| std::io::Error::other("no controller command"))?;
    let log: File = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&launch.log)?;
    Command::new(program)
        .args(args)
        .args(["--http-addr", &launch.http])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
}

/// Whether a plain HTTP GET of `path` at `addr` answers 200. The controller's health port is
/// plain HTTP on loopback: one request line is all it takes.
fn answers_ok(addr: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}
