//! When an agent last changed its device's status, in the apiserver's words: the time of the
//! agent's Apply entry for the status subresource in the EdgeDevice's managed fields. The
//! apiserver sets it when an apply changes the object (an apply that changes nothing is no
//! write and moves no time), and a write to the status subresource cannot set managed
//! fields. The controller hears the device in it, like a renewal of its Lease; the agent
//! reads it in its write's answer to know that the write was one the controller hears.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta, Time};

use crate::identity::AGENT_MANAGER;

/// The subresource of the agent's status writes, as managed fields name it.
pub const STATUS_SUBRESOURCE: &str = "status";
/// The operation of the agent's status writes, as managed fields name it.
pub const APPLY_OPERATION: &str = "Apply";

/// Whether `entry` is the one the agent's status writes update.
pub fn is_agents(entry: &ManagedFieldsEntry) -> bool {
    entry.manager.as_deref() == Some(AGENT_MANAGER)
        && entry.subresource.as_deref() == Some(STATUS_SUBRESOURCE)
        && entry.operation.as_deref() == Some(APPLY_OPERATION)
}

/// When the agent last changed the status of the EdgeDevice `meta` is of.
pub fn status_written(meta: &ObjectMeta) -> Option<&Time> {
    meta.managed_fields
        .iter()
        .flatten()
        .filter(|e| is_agents(e))
        .find_map(|e| e.time.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(
        manager: &str,
        subresource: Option<&str>,
        operation: &str,
        at: &str,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            subresource: subresource.map(Into::into),
            time: Some(Time(at.parse().expect("ts"))),
            ..ManagedFieldsEntry::default()
        }
    }

    /// Only the agent's own applies of the status count: not another manager's status
    /// write, not an entry of the agent's name on the object itself, not an update.
    #[test]
    fn only_the_agents_apply_of_the_status_counts() {
        let meta = ObjectMeta {
            managed_fields: Some(vec![
                entry(
                    "edgefleet-controller",
                    Some("status"),
                    APPLY_OPERATION,
                    "2026-01-01T00:00:59Z",
                ),
                entry(
                    "kubectl-edit",
                    Some("status"),
                    "Update",
                    "2026-01-01T00:00:58Z",
                ),
                entry(AGENT_MANAGER, None, APPLY_OPERATION, "2026-01-01T00:00:57Z"),
                entry(
                    AGENT_MANAGER,
                    Some("status"),
                    "Update",
                    "2026-01-01T00:00:56Z",
                ),
                entry(
                    AGENT_MANAGER,
                    Some("status"),
                    APPLY_OPERATION,
                    "2026-01-01T00:00:30Z",
                ),
            ]),
            ..ObjectMeta::default()
        };
        let at = status_written(&meta).map(|t| t.0.to_string());
        assert_eq!(at.as_deref(), Some("2026-01-01T00:00:30Z"));
        assert_eq!(status_written(&ObjectMeta::default()), None);
    }
}
