//! `edgefleet-controller hub-reloader`: a sidecar of the cloud hub that has nats-server
//! read its config again when the accounts file changes. The controller rewrites the
//! accounts Secret as devices are enrolled and retired; kubelet updates the mounted file a
//! little later, and nats-server reads it again only when told (SIGHUP). The sidecar shares
//! the hub pod's process namespace and runs as the hub's user, so it may signal it.
//!
//! It also keeps the cloud's stream of devices' upstream messages in place (NATS's config
//! cannot declare streams): devices' forwarders remove a message from the device only when
//! this stream has acknowledged it, and its message ids keep each message once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{
    self,
    stream::{self, DiscardPolicy, StorageType},
};
use clap::Args;
use edgefleet_crds::hub::{
    DUPLICATE_WINDOW_SECS, FLEET_UPSTREAM_SUBJECTS, NATS_PORT, READER_PASSWORD_ENV, READER_USER,
    UPSTREAM_STREAM,
};
use rustix::process::{Pid, Signal, kill_process};
use sha2::{Digest, Sha256};

#[derive(Args, Debug, Clone)]
pub struct ReloaderArgs {
    /// The file whose changes reload the hub (the accounts the controller writes).
    #[arg(long)]
    pub watch: PathBuf,
    /// nats-server's pid file (its `pid_file` setting), on a volume both containers share.
    #[arg(long)]
    pub pid_file: PathBuf,
    /// How often the file is read.
    #[arg(long, default_value = "2s", value_parser = edgefleet_crds::duration::parse)]
    pub interval: Duration,
    /// How long the cloud stream keeps devices' upstream messages.
    #[arg(long, default_value = "168h", value_parser = edgefleet_crds::duration::parse)]
    pub upstream_retention: Duration,
    /// The most the cloud stream holds, in MiB; the oldest messages go first beyond it.
    #[arg(long, default_value_t = 8192)]
    pub upstream_max_mib: u32,
    /// The reader's password, with which the stream is made.
    #[arg(long, env = READER_PASSWORD_ENV, hide_env_values = true)]
    pub reader_password: Option<String>,
}

/// The cloud stream's config.
pub fn cloud_stream(args: &ReloaderArgs) -> stream::Config {
    stream::Config {
        name: UPSTREAM_STREAM.into(),
        subjects: vec![FLEET_UPSTREAM_SUBJECTS.into()],
        storage: StorageType::File,
        max_age: args.upstream_retention,
        max_bytes: i64::from(args.upstream_max_mib) * 1024 * 1024,
        discard: DiscardPolicy::Old,
        duplicate_window: Duration::from_secs(DUPLICATE_WINDOW_SECS),
        ..Default::default()
    }
}

/// Makes the cloud stream exist, or brings its limits in line.
async fn ensure_stream(args: &ReloaderArgs) -> Result<(), String> {
    let password = args
        .reader_password
        .clone()
        .ok_or("no reader password: the cloud stream cannot be made")?;
    let client = async_nats::ConnectOptions::with_user_and_password(READER_USER.into(), password)
        .connection_timeout(Duration::from_secs(5))
        .connect(format!("127.0.0.1:{NATS_PORT}"))
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    let wanted = cloud_stream(args);
    let mut s = js
        .get_or_create_stream(wanted.clone())
        .await
        .map_err(|e| e.to_string())?;
    let c = s.info().await.map_err(|e| e.to_string())?.config.clone();
    if c.max_age != wanted.max_age
        || c.max_bytes != wanted.max_bytes
        || c.duplicate_window != wanted.duplicate_window
    {
        js.update_stream(wanted).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs until SIGTERM: reloads the hub after each change of the watched file. A reload
/// that fails (the hub restarting, no pid yet) is tried again at the next look.
pub async fn run(args: ReloaderArgs) {
    // Nothing counts as seen at first: kubelet may have updated the file after the hub read
    // it and before this sidecar started, so the first look reloads the hub once.
    let mut seen = None;
    let mut stream_ready = false;
    tracing::info!(watch = %args.watch.display(), "watching the hub's accounts");
    let shutdown = crate::run::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(args.interval) => {}
        }
        if !stream_ready {
            match ensure_stream(&args).await {
                Ok(()) => {
                    tracing::info!(
                        stream = UPSTREAM_STREAM,
                        "the cloud's upstream stream is in place"
                    );
                    stream_ready = true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the cloud's upstream stream is not in place yet")
                }
            }
        }
        let now = fingerprint(&args.watch);
        if now.is_none() || now == seen {
            continue;
        }
        match reload(&args.pid_file) {
            Ok(pid) => {
                tracing::info!(pid, "the hub's accounts changed; the hub reloads them");
                seen = now;
            }
            Err(e) => tracing::warn!(error = %e, "cannot reload the hub"),
        }
    }
}

/// A hash of the file's content, `None` while it cannot be read.
fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    std::fs::read(path).ok().map(|b| Sha256::digest(&b).into())
}

/// Sends SIGHUP to the pid in `pid_file`; returns the pid.
fn reload(pid_file: &Path) -> Result<i32, String> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| format!("cannot read {}: {e}", pid_file.display()))?;
    let raw: i32 = text
        .trim()
        .parse()
        .map_err(|_| format!("{}: not a pid: {text:?}", pid_file.display()))?;
    // Never 0 or 1 (a process group, the pod's init), never negative (every process).
    let pid = (raw > 1)
        .then(|| Pid::from_raw(raw))
        .flatten()
        .ok_or_else(|| format!("{}: not a hub's pid: {raw}", pid_file.display()))?;
    kill_process(pid, Signal::HUP).map_err(|e| format!("cannot signal pid {raw}: {e}"))?;
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid file is input from a shared volume: nothing in it may make the sidecar signal
    /// a process group or every process it can reach.
    #[test]
    fn a_pid_file_cannot_aim_the_signal_elsewhere() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("nats.pid");
        for bad in ["0", "1", "-1", "-42", "x", "", "99999999999"] {
            std::fs::write(&file, bad).expect("write");
            assert!(reload(&file).is_err(), "{bad:?}");
        }
        assert!(reload(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_fingerprint_follows_the_content() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("accounts.conf");
        assert_eq!(fingerprint(&file), None);
        std::fs::write(&file, "a").expect("write");
        let a = fingerprint(&file);
        std::fs::write(&file, "b").expect("write");
        assert_ne!(fingerprint(&file), a);
    }
}
