//! Each module's own user on the device's hub: a password made once per module and kept in
//! the agent's state directory, mounted read-only into the module's container (never an
//! env var), and permissions that let it publish only its own outputs and read only its
//! own inputs. The hub reloads its users when modules come and go, without a restart:
//! connections of modules that stay are untouched, those of removed modules are closed.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgefleet_crds::ResolvedModule;
use edgefleet_crds::hub::{
    AGENT_SYSTEM_USER, NATS_PORT, module_inputs, module_outputs, module_user,
};

use crate::error::{Error, Result, io};
use crate::hub::{self, HubSettings};
use crate::journal::write_atomic_mode;

/// The files of a module's credential directory, as modules read them.
pub const USERNAME_FILE: &str = "username";
pub const PASSWORD_FILE: &str = "password";

/// How long a reload request may take before the agent tries again at its next pass.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(5);

/// One module's user, as the hub's config lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleUser {
    pub namespace: String,
    pub module: String,
    pub password: String,
}

impl ModuleUser {
    /// Its entry in the hub's `users` list: publish its outputs, subscribe its inputs,
    /// nothing else. `<prefix>` and `<prefix>.>` both, because an MQTT `#` filter also
    /// subscribes to its parent topic.
    pub fn config_entry(&self) -> String {
        let user = module_user(&self.namespace, &self.module);
        let outputs = module_outputs(&self.namespace, &self.module);
        let inputs = module_inputs(&self.namespace, &self.module);
        format!(
            r#"{{user: "{user}", password: "{}", permissions: {{publish: {{allow: ["{outputs}.>"]}}, subscribe: {{allow: ["{inputs}", "{inputs}.>"]}}}}}}"#,
            self.password
        )
    }
}

/// The host directory of a module's credentials, by namespace and name (a DNS label has no
/// dot, so no two modules share one).
pub fn credentials_dir(state_dir: &Path, namespace: &str, module: &str) -> PathBuf {
    hub::HubDirs::under(state_dir)
        .modules
        .join(format!("{namespace}.{module}"))
}

/// Makes sure every module has its credentials (kept from before, or made now) and removes
/// those of modules no longer here. Returns the users, sorted by namespace and name.
pub fn sync_credentials(state_dir: &Path, modules: &[ResolvedModule]) -> Result<Vec<ModuleUser>> {
    let root = hub::HubDirs::under(state_dir).modules;
    fs::create_dir_all(&root).map_err(io("create", &root))?;
    let mut users = Vec::with_capacity(modules.len());
    for m in modules {
        let dir = credentials_dir(state_dir, m.namespace(), &m.name);
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let user = module_user(m.namespace(), &m.name);
        if fs::read_to_string(dir.join(USERNAME_FILE)).ok().as_deref() != Some(user.as_str()) {
            write_atomic_mode(&dir, USERNAME_FILE, user.as_bytes(), 0o444)?;
        }
        // Readable by the module whatever user it runs as; the state directory above keeps
        // everyone else on the host out.
        let password = hub::kept_secret(&dir, PASSWORD_FILE, 0o444)?;
        users.push(ModuleUser {
            namespace: m.namespace().to_owned(),
            module: m.name.clone(),
            password,
        });
    }
    users.sort_by(|a, b| (&a.namespace, &a.module).cmp(&(&b.namespace, &b.module)));
    let wanted: std::collections::BTreeSet<String> = users
        .iter()
        .map(|u| format!("{}.{}", u.namespace, u.module))
        .collect();
    for e in fs::read_dir(&root).map_err(io("list", &root))?.flatten() {
        if !wanted.contains(e.file_name().to_string_lossy().as_ref()) {
            fs::remove_dir_all(e.path()).map_err(io("remove", &e.path()))?;
        }
    }
    Ok(users)
}

/// Keeps the hub's users in line with the modules: rewrites its config when they change
/// and asks the hub to reload it until it has.
#[derive(Debug, Default)]
pub struct HubUsers {
    written: Option<Vec<ModuleUser>>,
    reload_pending: bool,
}

impl HubUsers {
    /// One pass; errors are logged and tried again at the next pass.
    pub async fn update(
        &mut self,
        settings: &HubSettings,
        state_dir: &Path,
        manifest_dir: &Path,
        modules: &[ResolvedModule],
    ) {
        let users = match sync_credentials(state_dir, modules) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "cannot keep the modules' hub credentials");
                return;
            }
        };
        if self.written.as_ref() != Some(&users) {
            if let Err(e) = hub::place(Some(settings), state_dir, manifest_dir, &users) {
                tracing::warn!(error = %e, "cannot rewrite the hub's users");
                return;
            }
            tracing::info!(modules = users.len(), "the hub's users changed");
            self.written = Some(users);
            self.reload_pending = true;
        }
        if self.reload_pending {
            match reload(state_dir).await {
                Ok(()) => {
                    tracing::info!("the hub reloaded its users");
                    self.reload_pending = false;
                }
                // A hub that is (re)starting reads the new config anyway.
                Err(e) => tracing::info!(error = %e, "the hub did not reload its users yet"),
            }
        }
    }

    /// The users last written into the hub's config (at start: those of the journaled state).
    pub fn starting_with(users: Vec<ModuleUser>) -> HubUsers {
        HubUsers {
            written: Some(users),
            reload_pending: false,
        }
    }
}

/// Asks the hub to reload its config, through its system account (the hub runs in its own
/// pod: no signal reaches it from the agent's).
async fn reload(state_dir: &Path) -> Result<()> {
    let secret = hub::agent_secret(&hub::HubDirs::under(state_dir).config)?;
    let fail = |e: &dyn std::fmt::Display| Error::Invalid(format!("hub reload: {e}"));
    let client =
        async_nats::ConnectOptions::with_user_and_password(AGENT_SYSTEM_USER.into(), secret)
            .connection_timeout(RELOAD_TIMEOUT)
            .request_timeout(Some(RELOAD_TIMEOUT))
            .connect(format!("127.0.0.1:{NATS_PORT}"))
            .await
            .map_err(|e| fail(&e))?;
    let id = client.server_info().server_id;
    let answer = client
        .request(format!("$SYS.REQ.SERVER.{id}.RELOAD"), "".into())
        .await
        .map_err(|e| fail(&e))?;
    let v: serde_json::Value = serde_json::from_slice(&answer.payload).map_err(|e| fail(&e))?;
    match v.get("error") {
        Some(e) if !e.is_null() => Err(fail(&e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(ns: &str, name: &str) -> ResolvedModule {
        serde_json::from_value(serde_json::json!({
            "name": name, "deployment": format!("{ns}/d"), "moduleRef": format!("{ns}/{name}"),
            "image": "app:1",
        }))
        .expect("in the test setup")
    }

    /// A module may publish only its own outputs and read only its own inputs: with the
    /// hub's allow-lists, another module's subjects are denied.
    #[test]
    fn a_module_user_may_publish_only_its_outputs_and_read_only_its_inputs() {
        let u = ModuleUser {
            namespace: "team-a".into(),
            module: "sensor".into(),
            password: "p".into(),
        };
        assert_eq!(
            u.config_entry(),
            r#"{user: "team-a/sensor", password: "p", permissions: {publish: {allow: ["edgefleet.mod.team-a.sensor.out.>"]}, subscribe: {allow: ["edgefleet.mod.team-a.sensor.in", "edgefleet.mod.team-a.sensor.in.>"]}}}"#
        );
    }

    #[test]
    fn credentials_are_kept_per_module_and_removed_with_it() {
        let state = tempfile::tempdir().expect("in the test setup");
        let both = [module("a", "x"), module("b", "x")];
        let first = sync_credentials(state.path(), &both).expect("in the test setup");
        assert_eq!(first.len(), 2);
        assert_ne!(
            first[0].password, first[1].password,
            "one password per module"
        );
        let again = sync_credentials(state.path(), &both).expect("in the test setup");
        assert_eq!(first, again, "a restart keeps every module's password");
        let dir = credentials_dir(state.path(), "a", "x");
        assert_eq!(
            fs::read_to_string(dir.join(USERNAME_FILE)).expect("written"),
            "a/x"
        );
        sync_credentials(state.path(), &both[1..]).expect("in the test setup");
        assert!(!dir.exists(), "a removed module's credentials go with it");
        assert!(credentials_dir(state.path(), "b", "x").exists());
    }
}
