//! edgefleet-controller as a real process against the lab's apiserver.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::Lab;

/// The controller binary the tests start: `EDGEFLEET_CONTROLLER_BIN`, or the debug build
/// that `cargo test --workspace` makes for the controller's own tests.
pub fn controller_binary() -> PathBuf {
    let path = std::env::var_os("EDGEFLEET_CONTROLLER_BIN").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/edgefleet-controller"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "no controller binary at {}: run `cargo build -p edgefleet-controller` or set EDGEFLEET_CONTROLLER_BIN",
        path.display()
    );
    path
}

/// A running controller. Dropping it stops it; if the test is failing, the end of its log
/// is printed first, as that is what a person would look at, and the log is kept (a
/// passing test's is removed).
#[derive(Debug)]
pub struct ControllerProcess {
    child: Child,
    log: PathBuf,
    pub http: String,
}

impl ControllerProcess {
    /// Starts `binary` with the lab's admin kubeconfig and the given extra arguments,
    /// serving health and metrics on `127.0.0.1:<port>`.
    pub fn start(binary: &Path, lab: &Lab, port: u16, args: &[&str]) -> ControllerProcess {
        let log = std::env::temp_dir().join(format!(
            "edgefleet-controller-{port}-{}.log",
            std::process::id()
        ));
        let file = std::fs::File::create(&log).expect("controller log file");
        let http = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .args(["--http-addr", &http])
            .args(args)
            .env("KUBECONFIG", lab.kubeconfig())
            .env("RUST_LOG", "info,kube=warn")
            .env("NO_COLOR", "1")
            // The controller logs to stdout; a panic goes to stderr: both into the log.
            .stdout(Stdio::from(file.try_clone().expect("controller log file")))
            .stderr(Stdio::from(file))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        ControllerProcess { child, log, http }
    }

    pub fn log(&self) -> String {
        let mut s = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut s));
        s
    }

    /// Whether the process still runs (it must never exit on bad input).
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops it with SIGTERM, as Kubernetes would, and waits.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        stop_child(&mut self.child)
    }
}

/// Stops a child with SIGTERM, as Kubernetes would, and waits up to ten seconds for it to
/// exit before it is killed.
pub fn stop_child(child: &mut Child) -> Option<std::process::ExitStatus> {
    if let Ok(Some(s)) = child.try_wait() {
        return Some(s);
    }
    let _ = Command::new("kill")
        .arg(child.id().to_string())
        .stderr(Stdio::null())
        .status();
    for _ in 0..100 {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    child.wait().ok()
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "--- last lines of the controller log ({}, kept):",
                self.log.display()
            );
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
        // SIGTERM first, so the controller gives up its leader lease like in a cluster.
        self.stop();
        // A passing test's log is of no use to anyone: only a failing one's is kept.
        if !failing {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
