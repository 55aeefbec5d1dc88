//! Whether a device is online: while the agent was last heard from within the offline
//! threshold. It is heard from when it renews its Lease and when it writes its status: after
//! a status write the controller hears, the agent's next renewal waits an interval from it
//! (`edgefleet_agent::lease`). In a change at 10,000 devices renewals were 57 to 61 % of the
//! apiserver's writes, and each agent writes its status once.
//!
//! When the status was written is the apiserver's word, not the device's
//! (`edgefleet_crds::status_written`); a Lease's `renewTime` is the device's own clock.
//! Either time is kept no later than when the controller saw it ([`keep_status_written`],
//! `KeptLease::keep`): a time in the future, from a device's clock running ahead or an entry
//! forged by someone who may write the whole EdgeDevice (an administrator's tool), counts as
//! heard then, and runs out an offline threshold later. Pure, given the time.

use std::time::Duration;

use edgefleet_crds::condition;
use edgefleet_crds::device::conditions::ONLINE;
use edgefleet_crds::status_written::is_agents;
use edgefleet_crds::{EdgeDevice, EdgeDeviceStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, Time};

use crate::k8s::kept_lease::KeptLease;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    /// When the answer changes by itself (an online device goes offline), if it does.
    pub recheck_in: Option<Duration>,
}

/// When the agent last changed its device's status, as the apiserver recorded it.
pub fn status_written(device: &EdgeDevice) -> Option<Timestamp> {
    edgefleet_crds::status_written::status_written(&device.metadata).map(|t| t.0)
}

/// Keeps of `device`'s managed fields only the agent's status entry, and of it only what
/// [`status_written`] reads, its time no later than now (when the controller sees it): the
/// rest is a field set per manager that nothing here reads, often the largest part of the
/// object.
pub fn keep_status_written(device: &mut EdgeDevice) {
    let seen = Timestamp::now();
    let kept = device
        .metadata
        .managed_fields
        .take()
        .into_iter()
        .flatten()
        .find(is_agents)
        .map(|e| ManagedFieldsEntry {
            manager: e.manager,
            operation: e.operation,
            subresource: e.subresource,
            time: e.time.map(|t| Time(t.0.min(seen))),
            ..ManagedFieldsEntry::default()
        });
    device.metadata.managed_fields = kept.map(|e| vec![e]);
}

/// Whether the agent was heard from (`last_heard`) within `threshold` of `now`.
pub fn presence(last_heard: Option<Timestamp>, now: Timestamp, threshold: Duration) -> Presence {
    let Some(heard) = last_heard else {
        return Presence {
            online: false,
            recheck_in: None,
        };
    };
    let age = now.duration_since(heard).unsigned_abs();
    // Heard in the future (the apiserver's clock ahead of the controller's, or a time the
    // cache kept when it saw it, a moment ago) counts as just now.
    let age = if heard > now { Duration::ZERO } else { age };
    if age < threshold {
        Presence {
            online: true,
            recheck_in: Some(threshold - age + Duration::from_millis(500)),
        }
    } else {
        Presence {
            online: false,
            recheck_in: None,
        }
    }
}

/// When the agent was last heard from: its Lease's renewal or its status write, the later.
pub fn last_heard(
    lease: Option<&KeptLease>,
    status_written: Option<Timestamp>,
) -> Option<Timestamp> {
    let renewed = lease.and_then(|l| l.renewed.as_ref()).map(|t| t.0);
    renewed.max(status_written)
}

/// Whether hearing from a device (a renewal of its Lease, a status write) can change what
/// the controller says of it: not while it reports the device online. The reconcile that
/// said so rechecks when what it heard runs out (`recheck_in`) and reads the newer one then;
/// waking it at every renewal would be a reconcile per device per lease interval, 1,000 a
/// second at 10,000 devices, that changes nothing.
pub fn hearing_may_change(reported: Option<&EdgeDeviceStatus>) -> bool {
    let conditions = reported
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    !condition::find(conditions, ONLINE).is_some_and(|c| c.is_true())
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::identity::{AGENT_MANAGER, CONTROLLER_MANAGER};
    use edgefleet_crds::status_written::{APPLY_OPERATION, STATUS_SUBRESOURCE};
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, MicroTime};

    use super::*;

    /// A Lease renewed at `renewed`, as the cache keeps it.
    fn lease(renewed: &str) -> KeptLease {
        KeptLease::keep(Lease {
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renewed.parse().expect("ts"))),
                ..Default::default()
            }),
            ..Default::default()
        })
    }

    #[test]
    fn table() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("ts");
        let t = Duration::from_secs(40);
        let cases = [
            (None, false, None),
            (
                Some(lease("2026-01-01T00:00:50Z")),
                true,
                Some(Duration::from_millis(30_500)),
            ),
            (Some(lease("2026-01-01T00:00:20Z")), false, None),
            (Some(lease("2026-01-01T00:00:19Z")), false, None),
            (
                Some(lease("2026-01-01T00:02:00Z")),
                true,
                Some(Duration::from_millis(40_500)),
            ),
        ];
        for (l, online, recheck) in cases {
            let p = presence(last_heard(l.as_ref(), None), now, t);
            assert_eq!((p.online, p.recheck_in), (online, recheck), "{l:?}");
        }
        let never_renewed = KeptLease::keep(Lease::default());
        assert!(!presence(last_heard(Some(&never_renewed), None), now, t).online);
    }

    /// A status write is heard like a renewal, with the apiserver's time: a device whose
    /// Lease ran out but whose agent wrote its status since is online until that runs out.
    #[test]
    fn a_status_written_is_heard_like_a_renewal() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("ts");
        let t = Duration::from_secs(40);
        let expired = lease("2026-01-01T00:00:10Z");
        let written = Some("2026-01-01T00:00:50Z".parse().expect("ts"));
        assert!(!presence(last_heard(Some(&expired), None), now, t).online);
        let p = presence(last_heard(Some(&expired), written), now, t);
        assert_eq!(
            (p.online, p.recheck_in),
            (true, Some(Duration::from_millis(30_500)))
        );
        assert_eq!(
            last_heard(None, written),
            written,
            "before its first renewal"
        );
        let fresh = lease("2026-01-01T00:00:55Z");
        assert_eq!(
            last_heard(Some(&fresh), written),
            Some("2026-01-01T00:00:55Z".parse().expect("ts")),
            "the later of the two"
        );
    }

    /// The cache keeps the agent's status entry (which entries count: `edgefleet_crds`'
    /// `status_written`) without its field set, and no other.
    #[test]
    fn the_cache_keeps_when_the_agent_wrote_its_status_and_nothing_else() {
        let entry = |manager: &str, subresource: Option<&str>, at: &str| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(APPLY_OPERATION.into()),
            subresource: subresource.map(Into::into),
            time: Some(Time(at.parse().expect("ts"))),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:status": {}}))),
            ..ManagedFieldsEntry::default()
        };
        let mut device = EdgeDevice::new("edge-1", Default::default());
        device.metadata.managed_fields = Some(vec![
            entry(CONTROLLER_MANAGER, Some("status"), "2026-01-01T00:00:59Z"),
            entry(AGENT_MANAGER, Some("status"), "2026-01-01T00:00:30Z"),
        ]);
        let written = Some("2026-01-01T00:00:30Z".parse().expect("ts"));
        assert_eq!(status_written(&device), written);
        keep_status_written(&mut device);
        assert_eq!(status_written(&device), written);
        let kept = device
            .metadata
            .managed_fields
            .as_deref()
            .unwrap_or_default();
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].fields_v1, None);

        let mut never = EdgeDevice::new("edge-2", Default::default());
        never.metadata.managed_fields = Some(vec![entry(
            CONTROLLER_MANAGER,
            Some("status"),
            "2026-01-01T00:00:59Z",
        )]);
        keep_status_written(&mut never);
        assert_eq!(
            (status_written(&never), never.metadata.managed_fields),
            (None, None)
        );
    }

    /// A time in the future, from a device's clock (its Lease) or from an entry forged by
    /// someone who may write the whole EdgeDevice, counts as heard when the controller saw
    /// it, and runs out a threshold later: not as heard for as long as the clock says.
    #[test]
    fn a_time_in_the_future_is_heard_when_seen_not_then() {
        let before = Timestamp::now();
        let future = "2099-01-01T00:00:00Z";
        let kept = lease(future);
        let renewed = kept.renewed.as_ref().map(|t| t.0).expect("renewed");
        let mut forged = EdgeDevice::new("edge-1", Default::default());
        forged.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
            manager: Some(AGENT_MANAGER.into()),
            operation: Some(APPLY_OPERATION.into()),
            subresource: Some(STATUS_SUBRESOURCE.into()),
            time: Some(Time(future.parse().expect("ts"))),
            ..ManagedFieldsEntry::default()
        }]);
        keep_status_written(&mut forged);
        let written = status_written(&forged).expect("written");
        let after = Timestamp::now();
        for seen in [renewed, written] {
            assert!(before <= seen && seen <= after, "{seen}");
            let later = seen + jiff::SignedDuration::from_secs(41);
            assert!(!presence(Some(seen), later, Duration::from_secs(40)).online);
        }
    }

    /// Renewals wake the device reconcile only while the device is not reported online:
    /// an offline or new device comes online at its first renewal, an online one is
    /// rechecked when its renewal runs out.
    #[test]
    fn only_renewals_that_may_bring_a_device_online_wake_it() {
        let reported = |online: Option<bool>| EdgeDeviceStatus {
            conditions: online
                .map(|o| {
                    let status = if o { "True" } else { "False" };
                    vec![
                        serde_json::from_value(serde_json::json!({
                            "type": ONLINE, "status": status, "reason": "Lease",
                            "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"
                        }))
                        .expect("a condition"),
                    ]
                })
                .unwrap_or_default(),
            ..Default::default()
        };
        assert!(hearing_may_change(None), "a device with no status yet");
        assert!(
            hearing_may_change(Some(&reported(None))),
            "no Online condition"
        );
        assert!(hearing_may_change(Some(&reported(Some(false)))), "offline");
        assert!(!hearing_may_change(Some(&reported(Some(true)))), "online");
    }
}
