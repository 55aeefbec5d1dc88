//! The agent's files in kubelet's staticPodPath and the module config files they mount.
//!
//! The agent touches only files it wrote: an inventory in its state directory lists them,
//! and it is saved before a new manifest is written, so a crash never leaves a manifest the
//! agent would not know as its own. A file of the same name that the agent did not write
//! (someone else's static pod) is left alone and the module reported as blocked.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use edgefleet_crds::ResolvedModule;

use crate::error::{Result, io};
use crate::journal::write_atomic;
use crate::render::{config_dir, manifest, manifest_file};

const INVENTORY: &str = "manifests.json";

#[derive(Debug)]
pub struct Manifests {
    manifest_dir: PathBuf,
    state_dir: PathBuf,
    /// Manifest file name -> module key (`namespace/name`), for every file the agent wrote.
    owned: BTreeMap<String, String>,
    /// Whether the device runs a hub: modules then get its address and their credentials.
    hub: bool,
}

/// What a sync did not manage, by module key: the reason goes into the module's status.
pub type Blocked = BTreeMap<String, String>;

impl Manifests {
    pub fn open(manifest_dir: &Path, state_dir: &Path, hub: bool) -> Result<Manifests> {
        fs::create_dir_all(manifest_dir).map_err(io("create", manifest_dir))?;
        fs::create_dir_all(state_dir).map_err(io("create", state_dir))?;
        let path = state_dir.join(INVENTORY);
        let owned = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                // Without the inventory the agent cannot tell its files from others'; it
                // rebuilds it from the files it writes from now on.
                tracing::warn!(path = %path.display(), error = %e, "ignoring a damaged inventory");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(io("read", &path)(e)),
        };
        Ok(Manifests {
            manifest_dir: manifest_dir.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            owned,
            hub,
        })
    }

    /// Modules (keys) that have a manifest in place.
    pub fn placed(&self) -> BTreeSet<String> {
        self.owned.values().cloned().collect()
    }

    /// Makes the manifest directory hold exactly `wanted` among the agent's files.
    pub fn sync(&mut self, wanted: &[&ResolvedModule]) -> Result<Blocked> {
        let mut blocked = Blocked::new();
        let wanted_files: BTreeSet<String> = wanted.iter().map(|m| manifest_file(m)).collect();
        let stale: Vec<(String, String)> = self
            .owned
            .iter()
            .filter(|(f, _)| !wanted_files.contains(*f))
            .map(|(f, m)| (f.clone(), m.clone()))
            .collect();
        for (file, module) in stale {
            let path = self.manifest_dir.join(&file);
            match fs::remove_file(&path) {
                Ok(()) => tracing::info!(module, "removed the module's manifest"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e)),
            }
            let dir = config_dir(&self.state_dir, &module);
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
                // The namespace's directory too, once its last module is gone.
                if let Some(parent) = dir.parent() {
                    let _ = fs::remove_dir(parent);
                }
            }
            self.owned.remove(&file);
            self.save()?;
        }
        for m in wanted {
            let file = manifest_file(m);
            let path = self.manifest_dir.join(&file);
            if !self.owned.contains_key(&file) && path.exists() {
                blocked.insert(
                    m.key(),
                    format!(
                        "{} exists and was not written by the agent; left alone",
                        path.display()
                    ),
                );
                continue;
            }
            self.write_config(m)?;
            let content = manifest(m, &self.state_dir, self.hub)?;
            if fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
                continue;
            }
            if self.owned.insert(file.clone(), m.key()).is_none() {
                self.save()?;
            }
            write_atomic(&self.manifest_dir, &file, content.as_bytes())?;
            tracing::info!(module = m.key(), "wrote the module's manifest");
        }
        Ok(blocked)
    }

    /// Writes a module's config files (only those that changed) and removes files that
    /// are no longer in its config.
    fn write_config(&self, m: &ResolvedModule) -> Result<()> {
        let dir = config_dir(&self.state_dir, &m.key());
        if m.spec.config.is_empty() {
            if dir.exists() {
                fs::remove_dir_all(&dir).map_err(io("remove", &dir))?;
            }
            return Ok(());
        }
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let names: BTreeSet<&str> = m.spec.config.iter().map(|f| f.name.as_str()).collect();
        for f in &m.spec.config {
            if fs::read(dir.join(&f.name)).ok().as_deref() != Some(f.content.as_bytes()) {
                write_atomic(&dir, &f.name, f.content.as_bytes())?;
            }
        }
        for e in fs::read_dir(&dir).map_err(io("list", &dir))?.flatten() {
            let name = e.file_name();
            if !names.contains(name.to_string_lossy().as_ref()) {
                fs::remove_file(e.path()).map_err(io("remove", &e.path()))?;
            }
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.owned)
            .map_err(|e| io("encode", &self.state_dir)(std::io::Error::other(e)))?;
        write_atomic(&self.state_dir, INVENTORY, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(name: &str, image: &str, config: serde_json::Value) -> ResolvedModule {
        in_ns("ns", name, image, config)
    }

    fn in_ns(ns: &str, name: &str, image: &str, config: serde_json::Value) -> ResolvedModule {
        serde_json::from_value(json!({
            "name": name, "deployment": format!("{ns}/d"), "moduleRef": format!("{ns}/{name}"),
            "image": image, "config": config,
        }))
        .expect("module")
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_rewrites_and_removes_only_its_own_files() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (manifests, state) = (tmp.path().join("manifests"), tmp.path().join("state"));
        let mut ms = Manifests::open(&manifests, &state, false).expect("open");
        // Someone else's static pods: the agent's own, and one that collides by name.
        fs::write(manifests.join("edgefleet-agent.yaml"), "agent").expect("write");
        let a = m("a", "app:1", json!([{"name": "a.conf", "content": "x=1"}]));
        let squatter = m("squatter", "app:1", json!([]));
        fs::write(manifests.join(manifest_file(&squatter)), "theirs").expect("write");
        let blocked = ms.sync(&[&a, &squatter]).expect("sync");
        assert!(blocked["ns/squatter"].contains("not written by the agent"));
        assert_eq!(ms.placed(), BTreeSet::from(["ns/a".to_owned()]));
        assert_eq!(
            fs::read_to_string(config_dir(&state, "ns/a").join("a.conf")).expect("config"),
            "x=1"
        );
        let first = fs::metadata(manifests.join(manifest_file(&a))).and_then(|m| m.modified());

        // Unchanged: not rewritten. A new agent process remembers what it owns.
        let mut ms = Manifests::open(&manifests, &state, false).expect("reopen");
        ms.sync(&[&a]).expect("sync");
        let again = fs::metadata(manifests.join(manifest_file(&a))).and_then(|m| m.modified());
        assert_eq!(first.ok(), again.ok());

        // Gone from the desired state: its manifest and config go, nothing else does.
        ms.sync(&[]).expect("sync");
        assert_eq!(
            files(&manifests),
            [manifest_file(&squatter).as_str(), "edgefleet-agent.yaml"]
        );
        assert!(!config_dir(&state, "ns/a").exists());
        assert!(
            !state.join("config/ns").exists(),
            "nor its namespace's directory"
        );
        assert!(ms.placed().is_empty());
    }

    #[test]
    fn config_files_follow_the_module() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut ms =
            Manifests::open(&tmp.path().join("m"), &tmp.path().join("s"), false).expect("open");
        let two = m(
            "a",
            "app:1",
            json!([{"name": "1", "content": "a"}, {"name": "2", "content": "b"}]),
        );
        ms.sync(&[&two]).expect("sync");
        let one = m("a", "app:1", json!([{"name": "2", "content": "c"}]));
        ms.sync(&[&one]).expect("sync");
        let dir = config_dir(&tmp.path().join("s"), "ns/a");
        assert_eq!(files(&dir), ["2"]);
        assert_eq!(fs::read_to_string(dir.join("2")).expect("read"), "c");
    }

    /// Two teams' modules of one name are two modules: two manifests, two config
    /// directories, and removing one leaves the other.
    #[test]
    fn one_name_in_two_namespaces_is_two_modules() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (manifests, state) = (tmp.path().join("m"), tmp.path().join("s"));
        let mut ms = Manifests::open(&manifests, &state, false).expect("open");
        let ours = in_ns(
            "team-a",
            "filter",
            "a:1",
            json!([{"name": "f", "content": "a"}]),
        );
        let theirs = in_ns(
            "team-b",
            "filter",
            "b:1",
            json!([{"name": "f", "content": "b"}]),
        );
        ms.sync(&[&ours, &theirs]).expect("sync");
        assert_eq!(ms.placed().len(), 2);
        assert_eq!(
            files(&manifests),
            [
                "edgefleet-agent-module-team-a.filter.yaml",
                "edgefleet-agent-module-team-b.filter.yaml"
            ]
        );
        ms.sync(&[&ours]).expect("sync");
        let dir = config_dir(&state, "team-a/filter");
        assert_eq!(fs::read_to_string(dir.join("f")).expect("read"), "a");
        assert!(!config_dir(&state, "team-b/filter").exists());
    }
}
