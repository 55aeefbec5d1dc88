//! Deciding whether a desired state can be applied. It is taken or rejected as a whole:
//! half of a desired state could break modules that depend on each other, so on rejection
//! the last good state keeps running and the reason goes into the device's status.

use std::collections::BTreeSet;

use edgefleet_crds::device::MAX_DESIRED_MODULES;
use edgefleet_crds::limits;
use edgefleet_crds::route::Destination;
use edgefleet_crds::{DesiredState, ResolvedModule, module_key};
use serde_json::Value;
use thiserror::Error;

/// Why a desired state was rejected. The text goes into status as it is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error("the desired state does not parse: {0}")]
    Malformed(String),
    #[error("unknown field {0} (agent {ver} does not know it)", ver = crate::VERSION)]
    UnknownField(String),
    #[error("revision {stated} does not match its modules (computed {computed})")]
    Revision { stated: String, computed: String },
    #[error("module {0:?}: {1}")]
    Module(String, String),
    #[error("module {0:?} appears twice")]
    Duplicate(String),
    #[error("too much for this device: {0}")]
    Device(String),
    /// Not the desired state's fault: it is tried again on the next pass.
    #[error("cannot journal it: {0}")]
    Journal(String),
}

/// A desired state the agent refused: its revision, why, and whose change it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub revision: String,
    pub why: Rejection,
    /// See [`at_fault`].
    pub at_fault: Option<Vec<String>>,
}

/// Parses and checks `spec.desired` as it came from the apiserver.
pub fn check(raw: &Value) -> Result<DesiredState, Rejection> {
    // A field this agent does not know would be dropped silently by serde: a newer
    // controller's setting that this agent cannot honour. Refuse it instead.
    let schema = schemars::schema_for!(DesiredState);
    if let Some(field) = unknown_field(raw, schema.as_value(), schema.as_value(), "") {
        return Err(Rejection::UnknownField(field));
    }
    let desired: DesiredState =
        serde_json::from_value(raw.clone()).map_err(|e| Rejection::Malformed(e.to_string()))?;
    let computed = DesiredState::revision_of(&desired.modules);
    if computed != desired.revision {
        return Err(Rejection::Revision {
            stated: desired.revision,
            computed,
        });
    }
    limits::check_device(&desired.modules).map_err(Rejection::Device)?;
    let mut keys = BTreeSet::new();
    for m in &desired.modules {
        limits::check_resolved(m).map_err(|why| Rejection::Module(m.key(), why))?;
        if !keys.insert(m.key()) {
            return Err(Rejection::Duplicate(m.key()));
        }
    }
    // A route reaches only a module of its own namespace, and one that runs here.
    for m in &desired.modules {
        for r in &m.routes {
            let dest = r.check().map_err(|why| Rejection::Module(m.key(), why))?;
            if let Destination::Input { module, .. } = dest
                && !keys.contains(&module_key(m.namespace(), module))
            {
                return Err(Rejection::Module(
                    m.key(),
                    format!(
                        "route from output {:?} goes to module {module:?}, which this device does not run",
                        r.output
                    ),
                ));
            }
        }
    }
    Ok(DesiredState {
        targeting: Vec::new(),
        ..desired
    })
}

/// The deployments a rejection of `raw` is charged to: those whose modules in it differ
/// from the ones in `running` (the accepted state; none yet makes every deployment new).
/// A module that doesn't parse, carries a field this agent doesn't know, or is a second
/// module of one key is a change. `None` when the state is too broken to tell (no module
/// list, a module without a deployment): then every deployment is charged. This is what
/// keeps one team's bad module from failing another team's rollout.
pub fn at_fault(raw: &Value, running: Option<&DesiredState>) -> Option<Vec<String>> {
    let items = raw.get("modules")?.as_array()?;
    let schema = schemars::schema_for!(ResolvedModule);
    let before: Vec<&ResolvedModule> = running
        .map(|d| d.modules.iter().collect())
        .unwrap_or_default();
    let mut changed = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for item in items {
        let deployment = item.get("deployment")?.as_str()?;
        let parsed: Option<ResolvedModule> = serde_json::from_value(item.clone()).ok();
        let unknown = unknown_field(item, schema.as_value(), schema.as_value(), "").is_some();
        let same = parsed
            .as_ref()
            .is_some_and(|m| seen.insert((m.deployment.clone(), m.key())) && before.contains(&m));
        if unknown || !same {
            changed.insert(deployment.to_owned());
        }
    }
    // A module gone from a deployment changes that deployment too.
    for b in before {
        if !seen.contains(&(b.deployment.clone(), b.key())) {
            changed.insert(b.deployment.clone());
        }
    }
    (changed.len() <= MAX_DESIRED_MODULES).then(|| changed.into_iter().collect())
}

/// The path of the first key in `value` that `schema` does not describe.
fn unknown_field(value: &Value, schema: &Value, root: &Value, path: &str) -> Option<String> {
    let schema = resolve(schema, root);
    let variants = ["allOf", "anyOf", "oneOf"]
        .iter()
        .filter_map(|k| schema.get(*k).and_then(Value::as_array))
        .flatten()
        .map(|s| resolve(s, root));
    let parts: Vec<&Value> = std::iter::once(schema).chain(variants).collect();
    match value {
        Value::Object(map) => {
            let open = parts
                .iter()
                .any(|s| s.get("additionalProperties").is_some_and(|a| a != false));
            for (key, v) in map {
                let sub = format!("{path}{}{key}", if path.is_empty() { "" } else { "." });
                let known = parts
                    .iter()
                    .find_map(|s| s.get("properties").and_then(|p| p.get(key)));
                match known {
                    Some(s) => {
                        if let Some(u) = unknown_field(v, s, root, &sub) {
                            return Some(u);
                        }
                    }
                    None if !open => return Some(sub),
                    None => {}
                }
            }
            None
        }
        Value::Array(items) => {
            let item_schema = parts.iter().find_map(|s| s.get("items"))?;
            items
                .iter()
                .enumerate()
                .find_map(|(i, v)| unknown_field(v, item_schema, root, &format!("{path}[{i}]")))
        }
        _ => None,
    }
}

/// Follows a local `$ref` (`#/$defs/Name`) to its definition.
fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
        .and_then(|pointer| root.pointer(pointer))
        .unwrap_or(schema)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn module(name: &str) -> Value {
        json!({
            "name": name, "deployment": "ns/base", "moduleRef": format!("ns/{name}"),
            "desiredStatus": "running", "image": "localhost/app:1",
        })
    }

    /// A desired state as the controller writes it, with a revision that matches.
    pub(crate) fn desired(modules: Vec<Value>) -> Value {
        let typed: Vec<ResolvedModule> =
            serde_json::from_value(json!(modules)).expect("test modules parse");
        json!({"revision": DesiredState::revision_of(&typed), "modules": modules,
               "targeting": [{"deployment": "ns/base", "priority": 1, "outcome": "Owner"}]})
    }

    #[test]
    fn accepts_a_good_state_and_drops_targeting() {
        let d = check(&desired(vec![module("a"), module("b")])).expect("accepted");
        assert_eq!(d.modules.len(), 2);
        assert!(d.targeting.is_empty());
    }

    /// What the controller holds back must not get through a forged or stale desired
    /// state either: a route into another namespace's module, or a condition that does not
    /// parse, rejects the state.
    #[test]
    fn a_route_into_another_namespace_or_a_bad_condition_is_rejected() {
        let with_route = |route: Value| {
            let mut m = module("sensor");
            m["routes"] = json!([route]);
            m
        };
        let mut theirs = module("filter");
        theirs["deployment"] = json!("other/base");
        let good = with_route(json!({"output": "o", "to": {"module": "filter", "input": "i"}}));
        check(&desired(vec![good.clone(), module("filter")])).expect("a route in one namespace");
        let err = check(&desired(vec![good, theirs])).expect_err("another namespace's module");
        assert!(err.to_string().contains("does not run"), "{err}");
        let bad = with_route(json!({"output": "o", "when": "$body.t >>", "to": {"upstream": "u"}}));
        assert!(check(&desired(vec![bad])).is_err());
    }

    #[test]
    fn rejects_bad_input_as_a_whole() {
        let mut unknown = module("a");
        unknown["hostPID"] = json!(true);
        let mut bad_image = module("b");
        bad_image["image"] = json!("Not An Image!");
        let mut big = module("c");
        big["config"] = json!(
            (0..5)
                .map(|i| json!({"name": format!("f{i}"), "content": "x".repeat(60 * 1024)}))
                .collect::<Vec<_>>()
        );
        let mut bad_env = module("d");
        bad_env["env"] = json!([{"name": "A-B", "value": "1"}]);
        let mut bad_device = module("e");
        bad_device["devices"] = json!([{"hostPath": "/dev/../etc/shadow"}]);
        let mut bad_file = module("f");
        bad_file["config"] = json!([{"name": "../x", "content": ""}]);
        let mut bad_namespace = module("g");
        bad_namespace["deployment"] = json!("../../etc/d");
        let mut other_team = module("a");
        other_team["deployment"] = json!("other/base");
        let cases = [
            (
                desired(vec![module("ok"), unknown]),
                "unknown field modules[1].hostPID",
            ),
            (desired(vec![module("ok"), bad_image]), "image"),
            (desired(vec![big]), "more than 262144"),
            (desired(vec![module("../../etc")]), "name"),
            (desired(vec![bad_env]), "env"),
            (desired(vec![bad_device]), "not under /dev"),
            (desired(vec![bad_file]), "config file"),
            (desired(vec![bad_namespace]), "namespace"),
            (desired(vec![module("a"), module("a")]), "appears twice"),
            (
                json!({"revision": "0000000000000000", "modules": [module("a")]}),
                "does not match",
            ),
            (json!({"modules": "nope"}), "does not parse"),
        ];
        for (input, expected) in cases {
            let err = check(&input).expect_err(expected).to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
        // One name in two namespaces is two modules.
        assert!(check(&desired(vec![module("a"), other_team])).is_ok());
    }

    /// The poison pill of issue 12: team b's new module breaks the desired state. The
    /// rejection is charged to b alone; team a's deployment, unchanged, is not at fault.
    #[test]
    fn a_rejection_is_charged_to_the_deployments_that_changed() {
        let from = |ns: &str, d: &str, name: &str| {
            let mut m = module(name);
            m["deployment"] = json!(format!("{ns}/{d}"));
            m["moduleRef"] = json!(format!("{ns}/{name}"));
            m
        };
        let running = check(&desired(vec![
            from("a", "base", "sensor"),
            from("b", "extra", "x"),
        ]))
        .expect("accepted");
        let mut poison = from("b", "extra", "x");
        poison["image"] = json!("Not An Image!");
        let raw = desired(vec![from("a", "base", "sensor"), poison.clone()]);
        assert!(check(&raw).is_err());
        assert_eq!(
            at_fault(&raw, Some(&running)),
            Some(vec!["b/extra".to_owned()])
        );

        // A field this agent doesn't know, in a new deployment's module.
        let mut newer = from("c", "new", "y");
        newer["hostPID"] = json!(true);
        let raw = desired(vec![
            from("a", "base", "sensor"),
            from("b", "extra", "x"),
            newer,
        ]);
        assert_eq!(
            at_fault(&raw, Some(&running)),
            Some(vec!["c/new".to_owned()])
        );

        // A module gone from a deployment, and a duplicate key: both are changes.
        let raw = desired(vec![
            from("a", "base", "sensor"),
            from("a", "base", "sensor"),
        ]);
        assert_eq!(
            at_fault(&raw, Some(&running)),
            Some(vec!["a/base".to_owned(), "b/extra".to_owned()])
        );
        // Nothing running yet: every deployment is new.
        let raw = desired(vec![from("a", "base", "sensor"), poison]);
        assert_eq!(
            at_fault(&raw, None),
            Some(vec!["a/base".to_owned(), "b/extra".to_owned()])
        );
        // Too broken to tell.
        assert_eq!(at_fault(&json!({"modules": "nope"}), Some(&running)), None);
        let mut anonymous = module("z");
        anonymous
            .as_object_mut()
            .expect("object")
            .remove("deployment");
        assert_eq!(
            at_fault(&json!({"modules": [anonymous]}), Some(&running)),
            None
        );
    }
}
