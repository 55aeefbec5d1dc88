//! A kept revision's modules, judged before any device gets them.
//!
//! Every revision of a deployment is kept as a ControllerRevision in the deployment's own
//! namespace, and devices at an earlier revision run the modules read back from it. Such an
//! object is not the controller's alone: a role that lets a team write ControllerRevisions
//! in its namespace (the built-in `edit` and `admin` roles do not; a custom one may) lets it
//! put modules there under a revision's name that edgefleet never wrote: modules of another
//! team's namespace, or ones a device would refuse, failing every team's change on it. So
//! a snapshot is checked as the controller's own output is, and one that fails is never
//! used: the devices at that revision keep what they run. (What a team's grants allow is
//! judged again per device, in targeting, as for a held deployment.)

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use edgefleet_crds::bounds::{ROLLOUT_MESSAGE_MAX, clamp};
use edgefleet_crds::identity::{DEPLOYMENT_LABEL, REVISION_LABEL};
use edgefleet_crds::limits;
use edgefleet_crds::route::Destination;
use edgefleet_crds::{EdgeDeploymentSpec, ResolvedModule};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::decide::catalog;

/// A deployment's ControllerRevision as the controller's cache holds it: what the rollout
/// step reads of its metadata, and its modules judged once, when the watch delivers the
/// object. Devices at an earlier revision read it on every reconcile of theirs (thousands
/// in a wave), so it is not parsed and checked again for each; and the JSON it was read
/// from, whoever wrote it (up to an object's 1.5 MiB, the spec kept for people included),
/// is not held.
#[derive(Clone, Debug)]
pub struct KeptRevision {
    /// Name, namespace, UID, resourceVersion, deletionTimestamp and edgefleet's two labels.
    pub metadata: ObjectMeta,
    /// The object's `revision` number.
    pub revision: i64,
    /// Its modules, or why they are not ones edgefleet wrote (in words for an Event, cut to
    /// a rollout message's length: a forger chooses what a parse error quotes).
    pub modules: Result<Arc<[ResolvedModule]>, String>,
}

impl KeptRevision {
    /// Judges a ControllerRevision the watch delivered, keeping only what is read of it.
    pub fn judge(cr: ControllerRevision) -> Self {
        let ControllerRevision {
            metadata,
            data,
            revision,
        } = cr;
        let mut labels = metadata.labels.unwrap_or_default();
        labels.retain(|k, _| k == DEPLOYMENT_LABEL || k == REVISION_LABEL);
        let key = catalog::key(
            metadata.namespace.as_deref().unwrap_or_default(),
            labels.get(DEPLOYMENT_LABEL).map_or("", String::as_str),
        );
        let mut modules = data
            .ok_or_else(|| "it has no data".to_owned())
            .and_then(|d| self::modules(&key, d.0))
            .map(Arc::from);
        if let Err(why) = &mut modules {
            clamp(why, ROLLOUT_MESSAGE_MAX);
        }
        KeptRevision {
            metadata: ObjectMeta {
                name: metadata.name,
                namespace: metadata.namespace,
                uid: metadata.uid,
                resource_version: metadata.resource_version,
                deletion_timestamp: metadata.deletion_timestamp,
                labels: Some(labels),
                ..Default::default()
            },
            revision,
            modules,
        }
    }

    /// Its modules as deployment `name`'s (of its namespace), or why they are not: the
    /// cache judged them as the deployment the label names, which must be this one.
    pub fn modules_of(&self, name: &str) -> Result<&Arc<[ResolvedModule]>, &str> {
        if self.labels().get(DEPLOYMENT_LABEL).map(String::as_str) != Some(name) {
            return Err("it is labelled as another deployment's");
        }
        self.modules.as_ref().map_err(String::as_str)
    }
}

/// A ControllerRevision still, for object references (the Events that name one) and keys.
impl Resource for KeptRevision {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ControllerRevision::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        ControllerRevision::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        ControllerRevision::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        ControllerRevision::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// What a ControllerRevision keeps of one revision: the spec (for people reading it) and
/// the modules devices at that revision run.
pub fn data(spec: &EdgeDeploymentSpec, modules: &[ResolvedModule]) -> Value {
    json!({"spec": spec, "modules": modules})
}

/// The modules a ControllerRevision's `data` keeps for deployment `key` (`namespace/name`),
/// or why they are not ones edgefleet would have written.
pub fn modules(key: &str, mut data: Value) -> Result<Vec<ResolvedModule>, String> {
    let raw = data
        .get_mut("modules")
        .map(Value::take)
        .ok_or_else(|| "it keeps no modules".to_owned())?;
    let modules: Vec<ResolvedModule> =
        serde_json::from_value(raw).map_err(|e| format!("its modules do not parse: {e}"))?;
    check(key, &modules)?;
    Ok(modules)
}

/// Why `modules` can't be what deployment `key` gave devices; `Ok` when they can.
pub fn check(key: &str, modules: &[ResolvedModule]) -> Result<(), String> {
    let namespace = key.split_once('/').map_or("", |(ns, _)| ns);
    let names: BTreeSet<&str> = modules.iter().map(|m| m.name.as_str()).collect();
    if names.len() != modules.len() {
        return Err("a module name appears twice".to_owned());
    }
    for m in modules {
        let wrap = |why: String| format!("module {:?}: {why}", m.name);
        if m.deployment != key {
            return Err(wrap(format!(
                "it belongs to deployment {:?}, not {key:?}",
                m.deployment
            )));
        }
        if m.module_ref.split_once('/').map(|(ns, _)| ns) != Some(namespace) {
            return Err(wrap(format!(
                "its EdgeModule {:?} is outside namespace {namespace:?}",
                m.module_ref
            )));
        }
        limits::check_resolved(m).map_err(wrap)?;
        for r in &m.routes {
            match r.check().map_err(wrap)? {
                Destination::Input { module, .. } if !names.contains(module) => {
                    return Err(wrap(format!(
                        "route from output {:?} goes to module {module:?}, which the revision does not run",
                        r.output
                    )));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::catalog::fixtures::{deployment, modules as library};
    use crate::decide::catalog::resolve_modules;

    fn module(name: &str, deployment: &str, module_ref: &str) -> Value {
        json!({"name": name, "deployment": deployment, "moduleRef": module_ref,
               "image": "localhost/app:1"})
    }

    /// What the controller keeps reads back equal, every field set: otherwise the controller
    /// would take its own revision for a forged one and write it again on every pass.
    #[test]
    fn a_kept_revision_reads_back_as_written() {
        let d = deployment(
            "metadata: {name: web, namespace: team-a}\nspec:\n  modules:\n  - name: app\n    overrides: {args: [--fast]}\n    routes: [{output: out, to: {module: db, input: in}, when: \"$body.t > 1\"}]\n  - name: db",
        );
        let lib = library(&[
            (
                "team-a/app",
                "image: localhost/app:1\nimagePullPolicy: Always\ncommand: [run]\nenv: [{name: A, value: b}, {name: EMPTY}]\nconfig: [{name: app.toml, content: 'x = 1'}]\nrestartPolicy: OnFailure\nstartupOrder: 2\ndevices: [{hostPath: /dev/ttyS0}]\nresources: {memory: 64Mi, cpu: 250m}\nhostNetwork: true\nreadOnlyRootFilesystem: true",
            ),
            ("team-a/db", "image: localhost/db:1"),
        ]);
        let written = resolve_modules(&d, &lib);
        let app = &written[0];
        assert!(
            app.spec.resources.is_some() && app.spec.devices.len() == 1 && app.routes.len() == 1
        );
        let read = modules("team-a/web", data(&d.spec, &written)).expect("its own revision");
        assert_eq!(read, written);
    }

    /// What the controller writes passes.
    #[test]
    fn the_controllers_own_snapshot_is_used() {
        let data = json!({"modules": [
            module("app", "team-a/web", "team-a/app"),
            {"name": "sensor", "deployment": "team-a/web", "moduleRef": "team-a/sensor",
             "image": "localhost/sensor:1",
             "routes": [{"output": "out", "to": {"module": "app", "input": "in"}}]},
        ]});
        let got = modules("team-a/web", data).expect("the controller's own snapshot");
        assert_eq!(got.len(), 2);
    }

    /// A team that may write ControllerRevisions puts modules under its revision's name that
    /// would run in another team's namespace, or that a device would refuse (failing every
    /// team's change on it): none of them is used.
    #[test]
    fn a_forged_snapshot_never_reaches_a_device() {
        for (forged, says) in [
            (
                json!([module("app", "team-b/web", "team-a/app")]),
                "belongs to deployment \"team-b/web\"",
            ),
            (
                json!([module("app", "team-a/web", "team-b/app")]),
                "outside namespace \"team-a\"",
            ),
            (
                json!([module("../etc", "team-a/web", "team-a/app")]),
                "name",
            ),
            (
                json!([{"name": "app", "deployment": "team-a/web", "moduleRef": "team-a/app",
                        "image": "not an image"}]),
                "image",
            ),
            (
                json!([
                    module("app", "team-a/web", "team-a/app"),
                    module("app", "team-a/web", "team-a/app")
                ]),
                "appears twice",
            ),
            (
                json!([{"name": "app", "deployment": "team-a/web", "moduleRef": "team-a/app",
                        "image": "localhost/app:1",
                        "routes": [{"output": "out", "to": {"module": "db", "input": "in"}}]}]),
                "does not run",
            ),
            (json!("modules"), "do not parse"),
        ] {
            let err = modules("team-a/web", json!({"modules": forged.clone()}))
                .expect_err(&format!("{forged} must be refused"));
            assert!(err.contains(says), "{forged}: {err}");
        }
        assert!(modules("team-a/web", json!({"spec": {}})).is_err());
    }

    fn revision(labels: serde_json::Value, data: Value) -> ControllerRevision {
        serde_json::from_value(json!({
            "metadata": {"name": "web-abc", "namespace": "team-a", "uid": "u1",
                         "resourceVersion": "7", "labels": labels,
                         "annotations": {"big": "x".repeat(100_000)}},
            "data": data, "revision": 3,
        }))
        .expect("a ControllerRevision")
    }

    /// The cache keeps the modules of the controller's own revision, judged as the
    /// deployment its label names, and of the object only what the rollout step reads.
    #[test]
    fn the_cache_keeps_a_revisions_modules_and_little_else() {
        let own = json!({"spec": {"big": "x".repeat(100_000)},
                         "modules": [module("app", "team-a/web", "team-a/app")]});
        let labels = json!({"edgefleet.io/deployment": "web", "edgefleet.io/revision": "abc",
                            "other": "x"});
        let kept = KeptRevision::judge(revision(labels, own.clone()));
        assert!(kept.modules_of("web").is_ok());
        assert!(kept.modules_of("api").is_err(), "not another deployment's");
        let got = kept.modules.expect("the controller's own revision");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "app");
        assert_eq!(
            (kept.revision, kept.metadata.uid.as_deref()),
            (3, Some("u1"))
        );
        assert_eq!(
            kept.metadata
                .labels
                .unwrap_or_default()
                .keys()
                .collect::<Vec<_>>(),
            [DEPLOYMENT_LABEL, REVISION_LABEL]
        );
        assert!(kept.metadata.annotations.is_none());

        // Labelled as another deployment's, the same modules are not that one's.
        let other = json!({"edgefleet.io/deployment": "api"});
        assert!(KeptRevision::judge(revision(other, own)).modules.is_err());
    }

    /// A forger chooses what a parse error quotes: the cache holds, and an Event says, a
    /// rollout message's length of it at most.
    #[test]
    fn a_forged_revisions_words_are_cut() {
        let labels = json!({"edgefleet.io/deployment": "web"});
        for forged in [
            json!({"modules": [module(&"a".repeat(200_000), "team-a/web", "team-a/app")]}),
            json!({"modules": [{"name": "app", "image": 1, "deployment": "x".repeat(200_000)}]}),
            json!({"modules": "y".repeat(200_000)}),
        ] {
            let why = KeptRevision::judge(revision(labels.clone(), forged))
                .modules
                .expect_err("forged");
            assert!(why.chars().count() <= ROLLOUT_MESSAGE_MAX, "{}", why.len());
        }
        let none = KeptRevision::judge(ControllerRevision::default()).modules;
        assert_eq!(none.expect_err("no data"), "it has no data");
    }
}
