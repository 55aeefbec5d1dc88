//! The size bounds of the strings edgefleet writes into statuses, as consts the schema
//! attributes use too, and [`Bounded`] to fit a status within them before it is written.
//!
//! Much of what the controller writes is quoted from devices (a module's message, the
//! reason an agent rejected its desired state), and a device is not trusted: one over-long
//! string makes the apiserver reject the whole status write, so a single device could
//! freeze the status of every deployment that targets it (and with it a rollback that
//! needs a saved phase). Every status therefore passes through [`Bounded::bound`] on its
//! way out; the schema test below proves the consts and the generated CRDs agree.

use crate::condition::Condition;
use crate::deployment::{EdgeDeploymentStatus, FailureSample};
use crate::module::EdgeModuleStatus;
use crate::rollout::RolloutStatus;

/// `Condition.reason`.
pub const CONDITION_REASON_MAX: usize = 128;
/// `Condition.message`.
pub const CONDITION_MESSAGE_MAX: usize = 2048;
/// `FailureSample.reason`, a device's own words about a module or its desired state.
pub const FAILURE_REASON_MAX: usize = 1024;
/// `FailureSample.device` (an object name) and `FailureSample.module` (a DNS label).
pub const OBJECT_NAME_MAX: usize = 253;
pub const MODULE_NAME_MAX: usize = 63;
/// `RolloutStatus.message`.
pub const ROLLOUT_MESSAGE_MAX: usize = 1024;
/// `ModuleStatus.message`, as the agent reports it.
pub const MODULE_MESSAGE_MAX: usize = 1024;

/// What marks a cut.
const ELLIPSIS: char = '…';

/// Cuts `s` to at most `max` characters, ending in `…` when it was cut. The apiserver
/// counts `maxLength` in characters (Unicode code points), not bytes, and so does this.
pub fn clamp(s: &mut String, max: usize) {
    if max == 0 {
        s.clear();
        return;
    }
    if let Some((cut, _)) = s.char_indices().nth(max) {
        // Keep max - 1 characters and the ellipsis.
        let keep = s[..cut].char_indices().last().map_or(0, |(i, _)| i);
        s.truncate(keep);
        s.push(ELLIPSIS);
    }
}

/// A status that can be fitted within its schema's bounds.
pub trait Bounded {
    /// Clamps every string (and list) that may exceed its schema bound.
    fn bound(&mut self);
}

impl Bounded for Condition {
    fn bound(&mut self) {
        clamp(&mut self.reason, CONDITION_REASON_MAX);
        clamp(&mut self.message, CONDITION_MESSAGE_MAX);
    }
}

impl<T: Bounded> Bounded for Vec<T> {
    fn bound(&mut self) {
        self.iter_mut().for_each(Bounded::bound);
    }
}

impl Bounded for FailureSample {
    fn bound(&mut self) {
        clamp(&mut self.device, OBJECT_NAME_MAX);
        clamp(&mut self.module, MODULE_NAME_MAX);
        clamp(&mut self.reason, FAILURE_REASON_MAX);
    }
}

impl Bounded for RolloutStatus {
    fn bound(&mut self) {
        clamp(&mut self.message, ROLLOUT_MESSAGE_MAX);
    }
}

impl Bounded for EdgeDeploymentStatus {
    fn bound(&mut self) {
        self.failures
            .truncate(crate::deployment::MAX_FAILURE_SAMPLES);
        self.failures.bound();
        if let Some(r) = &mut self.rollout {
            r.bound();
        }
        self.conditions.bound();
    }
}

impl Bounded for EdgeModuleStatus {
    fn bound(&mut self) {
        self.conditions.bound();
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;
    use serde_json::Value;

    use super::*;
    use crate::{ConditionStatus, EdgeDeployment, EdgeDevice, EdgeModule};

    #[test]
    fn clamp_counts_characters_and_marks_the_cut() {
        let mut s = "äbcdef".to_owned();
        clamp(&mut s, 4);
        assert_eq!(s, "äbc…");
        assert_eq!(s.chars().count(), 4);
        let mut short = "äb".to_owned();
        clamp(&mut short, 2);
        assert_eq!(short, "äb");
        let mut any = "x".to_owned();
        clamp(&mut any, 0);
        assert_eq!(any, "");
    }

    /// Every string and list in `value` within the `maxLength`/`maxItems` that `schema`
    /// gives it; the paths of those that are not.
    fn violations(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
        match value {
            Value::String(s) => {
                if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                    && s.chars().count() as u64 > max
                {
                    out.push(format!("{path}: {} > {max}", s.chars().count()));
                }
            }
            Value::Array(items) => {
                if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                    && items.len() as u64 > max
                {
                    out.push(format!("{path}: {} items > {max}", items.len()));
                }
                for (i, item) in items.iter().enumerate() {
                    violations(item, &schema["items"], &format!("{path}[{i}]"), out);
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    violations(v, &schema["properties"][k], &format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }

    fn status_schema(
        crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    ) -> Value {
        let v = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
        v["openAPIV3Schema"]["properties"]["status"].clone()
    }

    /// A device's words, as long as an attacker likes (the Unicode makes bytes and
    /// characters differ).
    fn huge() -> String {
        "ü".repeat(5000)
    }

    fn huge_condition() -> Condition {
        Condition::new("Ready", ConditionStatus::False, &huge(), huge())
    }

    #[test]
    fn a_devices_words_never_make_a_deployment_status_too_long() {
        let mut status = EdgeDeploymentStatus {
            failures: (0..20)
                .map(|i| FailureSample {
                    device: format!("edge-{i}"),
                    module: "m".repeat(100),
                    reason: huge(),
                })
                .collect(),
            rollout: Some(RolloutStatus {
                message: huge(),
                ..Default::default()
            }),
            conditions: vec![huge_condition()],
            ..Default::default()
        };
        let schema = status_schema(EdgeDeployment::crd());
        let mut before = Vec::new();
        violations(
            &serde_json::to_value(&status).expect("json"),
            &schema,
            "status",
            &mut before,
        );
        assert!(!before.is_empty(), "the fixture must exceed the schema");
        status.bound();
        let mut after = Vec::new();
        violations(
            &serde_json::to_value(&status).expect("json"),
            &schema,
            "status",
            &mut after,
        );
        assert_eq!(after, Vec::<String>::new());
    }

    #[test]
    fn module_and_device_conditions_fit_their_schema() {
        let mut module = EdgeModuleStatus {
            conditions: vec![huge_condition()],
            ..Default::default()
        };
        module.bound();
        let mut out = Vec::new();
        violations(
            &serde_json::to_value(&module).expect("json"),
            &status_schema(EdgeModule::crd()),
            "status",
            &mut out,
        );
        let mut conditions = vec![huge_condition()];
        conditions.bound();
        violations(
            &serde_json::json!({ "conditions": conditions }),
            &status_schema(EdgeDevice::crd()),
            "status",
            &mut out,
        );
        assert_eq!(out, Vec::<String>::new());
    }
}
