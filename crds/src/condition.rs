//! Conditions in the Kubernetes shape, merged by type so two field managers (controller and
//! agent) can each own some of an object's conditions under server-side apply.
//!
//! Empty strings are left out when serializing, here and in every type of the API: the
//! server-side apply of Kubernetes 1.20 reads `""` as null and rejects the whole object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[schemars(length(min = 1, max = 64))]
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    #[schemars(length(max = crate::bounds::CONDITION_REASON_MAX))]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[schemars(length(max = crate::bounds::CONDITION_MESSAGE_MAX))]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn from_bool(b: bool) -> Self {
        if b { Self::True } else { Self::False }
    }
}

impl Condition {
    pub fn new(
        type_: &str,
        status: ConditionStatus,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Condition {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
            last_transition_time: None,
            observed_generation: None,
        }
    }

    /// What the condition says, without when it changed: its type, status, reason and
    /// message. Two conditions that say the same need no write; what a reconcile reads of
    /// them, and what a written status is remembered by, is this.
    pub fn says(&self) -> (&str, ConditionStatus, &str, &str) {
        (&self.type_, self.status, &self.reason, &self.message)
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Sets `lastTransitionTime` on each new condition: kept from the old condition of the same
/// type when the status did not change, `now` otherwise. Writing an unchanged condition
/// then changes nothing, so status is only written when something really changed.
pub fn carry_transition_times(new: &mut [Condition], old: &[Condition], now: &Time) {
    for c in new.iter_mut() {
        c.last_transition_time = match find(old, &c.type_) {
            Some(o) if o.status == c.status => o.last_transition_time.clone(),
            _ => Some(now.clone()),
        };
    }
}

/// The schema of a conditions list: a map keyed by type, so server-side apply merges entries
/// owned by different managers instead of replacing the whole list.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Time {
        Time(s.parse().expect("timestamp"))
    }

    #[test]
    fn transition_time_moves_only_when_status_changes() {
        let mut old = vec![Condition::new("Ready", ConditionStatus::True, "A", "")];
        old[0].last_transition_time = Some(t("2026-01-01T00:00:00Z"));
        let now = t("2026-02-01T00:00:00Z");

        let mut same = vec![Condition::new("Ready", ConditionStatus::True, "B", "x")];
        carry_transition_times(&mut same, &old, &now);
        assert_eq!(same[0].last_transition_time, old[0].last_transition_time);

        let mut flipped = vec![Condition::new("Ready", ConditionStatus::False, "C", "")];
        carry_transition_times(&mut flipped, &old, &now);
        assert_eq!(flipped[0].last_transition_time, Some(now.clone()));

        let mut fresh = vec![Condition::new("Stalled", ConditionStatus::False, "", "")];
        carry_transition_times(&mut fresh, &old, &now);
        assert_eq!(fresh[0].last_transition_time, Some(now));
    }
}
