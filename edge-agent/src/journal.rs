//! The journal of accepted desired states on the device's disk. Every accepted state is
//! written here before anything acts on it, so that after a reboot without an apiserver
//! the agent starts from the last state it accepted.
//!
//! Each entry is its own file, written to a temporary name, fsynced, renamed into place and
//! the directory fsynced: a crash leaves either the old set of entries or the new one. An
//! entry is trusted only if its revision matches its modules, so a torn or damaged file
//! (a disk that lied about fsync, a hand edit) is skipped in favour of the one before it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use edgefleet_crds::DesiredState;

use crate::error::{Result, io};

const PREFIX: &str = "desired-";
const SUFFIX: &str = ".json";
const TEMP_PREFIX: &str = ".tmp-";

#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    keep: usize,
}

impl Journal {
    pub fn open(dir: &Path, keep: usize) -> Result<Journal> {
        fs::create_dir_all(dir).map_err(io("create the journal directory", dir))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
        })
    }

    /// The newest intact entry, if any.
    pub fn latest(&self) -> Option<DesiredState> {
        self.entries().into_iter().rev().find_map(|(_, path)| {
            let state = read_entry(&path);
            if state.is_none() {
                tracing::warn!(path = %path.display(), "skipping a damaged journal entry");
            }
            state
        })
    }

    /// Records `state` unless it is already the newest entry, then prunes old entries.
    pub fn record(&self, state: &DesiredState) -> Result<()> {
        if self
            .latest()
            .is_some_and(|l| l.revision == state.revision && l.modules == state.modules)
        {
            return Ok(());
        }
        let seq = self.entries().last().map_or(1, |(n, _)| n + 1);
        let name = format!("{PREFIX}{seq:010}-{}{SUFFIX}", state.revision);
        let bytes = serde_json::to_vec_pretty(&JournalEntry::from(state))
            .map_err(|e| std::io::Error::other(e.to_string()))
            .map_err(io("encode a journal entry for", &self.dir))?;
        write_atomic(&self.dir, &name, &bytes)?;
        self.prune();
        Ok(())
    }

    /// Entries by sequence number, oldest first.
    fn entries(&self) -> Vec<(u64, PathBuf)> {
        let mut entries: Vec<_> = fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = name.strip_prefix(PREFIX)?.split('-').next()?.parse().ok()?;
                name.ends_with(SUFFIX).then(|| (seq, e.path()))
            })
            .collect();
        entries.sort();
        entries
    }

    fn prune(&self) {
        let entries = self.entries();
        let old = entries.len().saturating_sub(self.keep);
        for (_, path) in &entries[..old] {
            let _ = fs::remove_file(path);
        }
        // Leftovers of writes that crashed before their rename.
        for e in fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// What an entry holds: the modules and their revision (the targeting explanation is the
/// controller's business and stays in the apiserver).
#[derive(serde::Serialize)]
struct JournalEntry<'a> {
    revision: &'a str,
    modules: &'a [edgefleet_crds::ResolvedModule],
}

impl<'a> From<&'a DesiredState> for JournalEntry<'a> {
    fn from(s: &'a DesiredState) -> Self {
        JournalEntry {
            revision: &s.revision,
            modules: &s.modules,
        }
    }
}

fn read_entry(path: &Path) -> Option<DesiredState> {
    let bytes = fs::read(path).ok()?;
    let state: DesiredState = serde_json::from_slice(&bytes).ok()?;
    (DesiredState::revision_of(&state.modules) == state.revision).then_some(state)
}

/// Writes `name` in `dir` so that readers see the old content or the new, never a part:
/// write a hidden temporary file, fsync it, rename it over the target, fsync the directory.
/// Hidden, because kubelet ignores dot files in its manifest directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    write_atomic_mode(dir, name, bytes, 0o644)
}

/// [`write_atomic`] with the file's permissions set from its creation on (a private key
/// must never be readable by others, not even for a moment).
pub fn write_atomic_mode(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let target = dir.join(name);
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    drop(f);
    fs::rename(&tmp, &target).map_err(io("rename into place", &target))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync the directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_crds::ResolvedModule;
    use serde_json::json;

    fn state(image: &str) -> DesiredState {
        let m: ResolvedModule = serde_json::from_value(json!({
            "name": "app", "deployment": "ns/d", "moduleRef": "ns/app", "image": image,
        }))
        .expect("module");
        DesiredState::new(vec![m], vec![])
    }

    #[test]
    fn records_and_reads_back_the_newest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path(), 3).expect("open");
        assert_eq!(j.latest(), None);
        j.record(&state("app:1")).expect("record");
        j.record(&state("app:2")).expect("record");
        assert_eq!(j.latest(), Some(state("app:2")));
        // The same state again is not a new entry.
        j.record(&state("app:2")).expect("record");
        assert_eq!(j.entries().len(), 2);
    }

    #[test]
    fn keeps_the_last_few() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path(), 3).expect("open");
        for i in 0..6 {
            j.record(&state(&format!("app:{i}"))).expect("record");
        }
        let entries = j.entries();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].0, 4);
        assert_eq!(j.latest(), Some(state("app:5")));
    }

    #[test]
    fn a_torn_write_falls_back_to_the_previous_entry() {
        let dir = tempfile::tempdir().expect("tempdir");
        let j = Journal::open(dir.path(), 5).expect("open");
        j.record(&state("app:1")).expect("record");
        j.record(&state("app:2")).expect("record");
        // The newest entry cut in half, as a disk that lost the tail would leave it.
        let (_, newest) = j.entries().pop().expect("an entry");
        let bytes = fs::read(&newest).expect("read");
        fs::write(&newest, &bytes[..bytes.len() / 2]).expect("tear");
        // And a temporary file of a write that never reached its rename.
        fs::write(dir.path().join(".tmp-desired-0000000009-x.json"), b"{").expect("tmp");
        assert_eq!(j.latest(), Some(state("app:1")));
        // An entry whose content no longer matches its revision is not trusted either.
        let mut edited = state("app:3");
        edited.revision = state("app:1").revision;
        fs::write(
            &newest,
            serde_json::to_vec(&JournalEntry::from(&edited)).expect("json"),
        )
        .expect("edit");
        assert_eq!(j.latest(), Some(state("app:1")));
        // Recording again continues after the damaged entry and removes the leftover.
        j.record(&state("app:4")).expect("record");
        assert_eq!(j.latest(), Some(state("app:4")));
        assert!(!dir.path().join(".tmp-desired-0000000009-x.json").exists());
    }
}
