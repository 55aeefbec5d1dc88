//! Staged rollouts: how an EdgeDeployment moves its devices from one revision to the next
//! (`spec.rollout`) and where that stands (`status.rollout`). The controller's planner
//! (`controller/src/rollout.rs`) gives these fields their meaning.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::deployment::DeviceSelector;

/// A number of devices, or a percentage (`"25%"`) of a total.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum Count {
    Devices(u32),
    Percent(String),
}

impl Count {
    /// The number of devices out of `total`; a percentage rounds down, or up when `round_up`.
    pub fn of(&self, total: u32, round_up: bool) -> u32 {
        match self {
            Count::Devices(n) => *n,
            Count::Percent(p) => {
                let pct = u64::from(p.trim_end_matches('%').parse::<u32>().unwrap_or(0).min(100));
                let scaled = u64::from(total) * pct;
                let n = if round_up {
                    scaled.div_ceil(100)
                } else {
                    scaled / 100
                };
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        }
    }
}

impl Default for Count {
    fn default() -> Self {
        Count::Devices(0)
    }
}

impl std::fmt::Display for Count {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Count::Devices(n) => write!(f, "{n}"),
            Count::Percent(p) => f.write_str(p),
        }
    }
}

impl JsonSchema for Count {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Count".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "x-kubernetes-int-or-string": true,
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": "^(100|[1-9]?[0-9])%$"}
            ],
            "description": "a number of devices, or a percentage such as \"25%\""
        })
    }
}

/// How a change reaches the devices. Without `spec.rollout` every targeted device gets a
/// change at once.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// At most this many devices (or this percentage of the targeted ones, at least one) are
    /// updating and not yet ready at once; devices move in waves of this size.
    #[serde(default = "default_max_unavailable")]
    pub max_unavailable: Count,
    /// Devices that move first, alone, and must stay ready for a soak time before the rest
    /// follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
    /// Holds the rollout where it is: no further device moves until it is false again.
    #[serde(default)]
    pub paused: bool,
    /// How many failed devices (or what percentage of the devices already moved) the
    /// rollout tolerates; one more and it stops. 0: the first failure stops it.
    #[serde(default)]
    pub failure_threshold: Count,
    /// What happens when the failure threshold is exceeded.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// A rollout that makes no progress for this long reports Stalled (it keeps going
    /// whenever it can, for example when a deferred device comes back).
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 2592000))]
    pub progress_deadline_seconds: u32,
    /// What becomes of this deployment's modules on a device its selector no longer selects.
    #[serde(default)]
    pub on_untarget: OnUntarget,
    /// A moved device counts as ready once every module of this deployment has been
    /// running this long (a module that crashes soon after starting never counts).
    #[serde(default = "default_min_ready")]
    #[schemars(range(max = 3600))]
    pub min_ready_seconds: u32,
}

fn default_min_ready() -> u32 {
    10
}

fn default_max_unavailable() -> Count {
    Count::Percent("25%".to_owned())
}

fn default_progress_deadline() -> u32 {
    600
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanarySpec {
    /// How many devices (or what percentage of the targeted ones, rounded up) go first.
    pub count: Count,
    /// Prefer these devices as canaries (for example `channel: beta`); the rest of the
    /// canaries, if any, come in name order like every wave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<DeviceSelector>,
    /// How long every canary must have been ready before the rollout continues.
    #[serde(default = "default_soak")]
    #[schemars(range(max = 604800))]
    pub soak_seconds: u32,
}

fn default_soak() -> u32 {
    60
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnFailure {
    /// Stop where it is and report Stalled; the devices already moved stay moved.
    #[default]
    Pause,
    /// Move every device already moved back, in waves, to the last revision that was fully
    /// ready, then report Stalled (reason RolledBack) until the spec changes.
    Rollback,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OnUntarget {
    /// The deployment's modules are removed from a device it no longer selects.
    #[default]
    Remove,
    /// They keep running there, no longer managed: edgefleet stops updating, restarting
    /// and reporting them, and leaves their static pods in place.
    Retain,
}

/// Where a rollout stands.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The last revision every targeted device ran, ready.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub current_revision: String,
    /// The revision of the spec as it is now.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub update_revision: String,
    /// The revision devices are moving to: the update revision, or the current one while
    /// rolling back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target_revision: String,
    #[serde(default)]
    pub phase: RolloutPhase,
    /// The wave in progress (1-based; the canary is wave 1 when there is one) and how many
    /// there are at this fleet size.
    #[serde(default)]
    pub wave: u32,
    #[serde(default)]
    pub waves: u32,
    /// Devices at the target revision, and how many of them are not ready yet.
    #[serde(default)]
    pub updated: u32,
    #[serde(default)]
    pub unavailable: u32,
    /// Devices whose turn came while they were offline: skipped, moved when they return.
    #[serde(default)]
    pub deferred: u32,
    /// Why the rollout is waiting, or what it is doing.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = crate::bounds::ROLLOUT_MESSAGE_MAX))]
    pub message: String,
    /// Devices per revision, newest first (at most five revisions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub revisions: Vec<RevisionCount>,
    /// When every canary was first seen ready (the soak runs from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_ready_since: Option<Time>,
    /// When a device last moved or became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress_time: Option<Time>,
    /// The update revision that exceeded the failure threshold and was rolled back.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failed_revision: String,
    /// Why a Stalled rollout stopped: `FailureThresholdExceeded` or
    /// `ProgressDeadlineExceeded`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stall_reason: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct RevisionCount {
    pub revision: String,
    pub devices: u32,
    pub ready: u32,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RolloutPhase {
    /// Devices are moving in waves.
    #[default]
    Progressing,
    /// The canaries are moving, or becoming ready.
    Canary,
    /// Every canary is ready; waiting out the soak time.
    Soaking,
    /// `paused: true`.
    Paused,
    /// Every targeted device runs the update revision, ready.
    Complete,
    /// Stopped: failure threshold exceeded (with onFailure Pause), or no progress within
    /// the deadline.
    Stalled,
    /// Moving the devices already moved back to the current revision.
    RollingBack,
    /// Rolled back; stays so until the spec changes.
    RolledBack,
}

impl RolloutPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutPhase::Progressing => "Progressing",
            RolloutPhase::Canary => "Canary",
            RolloutPhase::Soaking => "Soaking",
            RolloutPhase::Paused => "Paused",
            RolloutPhase::Complete => "Complete",
            RolloutPhase::Stalled => "Stalled",
            RolloutPhase::RollingBack => "RollingBack",
            RolloutPhase::RolledBack => "RolledBack",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentages() {
        assert_eq!(Count::Devices(3).of(10, false), 3);
        assert_eq!(Count::Percent("25%".into()).of(10, false), 2);
        assert_eq!(Count::Percent("25%".into()).of(10, true), 3);
        assert_eq!(Count::Percent("100%".into()).of(7, false), 7);
        let parsed: RolloutSpec = serde_json::from_str(r#"{"maxUnavailable": 1}"#).expect("spec");
        assert_eq!(parsed.max_unavailable, Count::Devices(1));
        assert_eq!(parsed.on_failure, OnFailure::Pause);
        let parsed: RolloutSpec =
            serde_json::from_str(r#"{"maxUnavailable": "10%", "canary": {"count": 1}}"#)
                .expect("spec");
        assert_eq!(parsed.max_unavailable, Count::Percent("10%".into()));
        assert_eq!(parsed.canary.map(|c| c.soak_seconds), Some(60));
    }
}
