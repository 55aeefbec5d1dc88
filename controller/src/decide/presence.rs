//! Whether a device is online: while the agent was last heard from within the offline
//! threshold. It is heard from when it renews its Lease and when it writes its status: after
//! a status write the controller hears, the agent's next renewal waits an interval from it
//! (`edgefleet_agent::lease`). In a change at 10,000 devices renewals were 57 to 61 % of the
//! apiserver's writes, and each agent writes its status once or twice.
//!
//! When the status was written is the apiserver's word, not the device's
//! (`edgefleet_crds::status_written`); a Lease's `renewTime` is the device's own clock.
//! - A renewal dated in the future (a device's clock running ahead, or a device keeping
//!   itself online) counts as made when the controller read the Lease
//!   (`KeptLease::keep`): at the renewal itself, or at a relist after a restart. It runs out
//!   an offline threshold after that, not at its date.
//! - A status write dated more than [`CLOCK_SKEW`] after the controller saw it is not heard
//!   at all ([`keep_status_written`]): the apiserver writes that time with its own clock,
//!   so such an entry was forged by someone who may write the whole EdgeDevice (an
//!   administrator's tool). Clamping it instead would make it new again at every event of
//!   the device, the controller's own writes included.
//!
//! The decisions are pure, given the time; the cache's trims read the clock.

use std::time::Duration;

use edgefleet_crds::condition;
use edgefleet_crds::device::conditions::ONLINE;
use edgefleet_crds::status_written::is_agents;
use edgefleet_crds::{EdgeDevice, EdgeDeviceStatus};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;

use crate::k8s::kept_lease::KeptLease;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    /// When the answer changes by itself (an online device goes offline), if it does.
    pub recheck_in: Option<Duration>,
}

/// How far ahead of the controller's clock the apiserver's may run: a status write dated
/// later than this after it was seen is not one the apiserver recorded.
pub const CLOCK_SKEW: Duration = Duration::from_secs(10);

/// When the agent last changed its device's status, as the apiserver recorded it.
pub fn status_written(device: &EdgeDevice) -> Option<Timestamp> {
    edgefleet_crds::status_written::status_written(&device.metadata).map(|t| t.0)
}

/// Keeps of `device`'s managed fields only the agent's status entry, and of it only what
/// [`status_written`] reads, unless its time is more than [`CLOCK_SKEW`] ahead of now (when
/// the controller sees it): the rest is a field set per manager that nothing here reads,
/// often the largest part of the object.
pub fn keep_status_written(device: &mut EdgeDevice) {
    let latest = Timestamp::now() + CLOCK_SKEW;
    let kept = device
        .metadata
        .managed_fields
        .take()
        .into_iter()
        .flatten()
        .find(is_agents)
        .filter(|e| e.time.as_ref().is_some_and(|t| t.0 <= latest))
        .map(|e| ManagedFieldsEntry {
            manager: e.manager,
            operation: e.operation,
            subresource: e.subresource,
            time: e.time,
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

/// What the controller last heard of a device, which its Online condition says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Its Lease was renewed within the threshold.
    Renewal,
    /// Its status was written within the threshold, its Lease not renewed.
    StatusWrite,
    /// Neither within the threshold.
    Silence,
    /// Neither, ever.
    Nothing,
}

/// What was heard of a device whose Lease `lease` and whose agent last wrote its status at
/// `status_written`, and whether that makes it online: the later of the two within
/// `threshold` of `now`.
pub fn heard(
    lease: Option<&KeptLease>,
    status_written: Option<Timestamp>,
    now: Timestamp,
    threshold: Duration,
) -> (Heard, Presence) {
    let renewed = lease.and_then(|l| l.renewed.as_ref()).map(|t| t.0);
    let p = presence(renewed.max(status_written), now, threshold);
    let what = if presence(renewed, now, threshold).online {
        Heard::Renewal
    } else if p.online {
        Heard::StatusWrite
    } else if renewed.or(status_written).is_some() {
        Heard::Silence
    } else {
        Heard::Nothing
    };
    (what, p)
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, MicroTime, Time};

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
            let (_, p) = heard(l.as_ref(), None, now, t);
            assert_eq!((p.online, p.recheck_in), (online, recheck), "{l:?}");
        }
        let never_renewed = KeptLease::keep(Lease::default());
        assert_eq!(
            heard(Some(&never_renewed), None, now, t),
            (heard(None, None, now, t).0, presence(None, now, t))
        );
    }

    /// A status write is heard like a renewal, with the apiserver's time: a device whose
    /// Lease ran out but whose agent wrote its status since is online until that runs out,
    /// and the condition says which was heard.
    #[test]
    fn a_status_written_is_heard_like_a_renewal() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().expect("ts");
        let t = Duration::from_secs(40);
        let expired = lease("2026-01-01T00:00:10Z");
        let written = Some("2026-01-01T00:00:50Z".parse().expect("ts"));
        let long_ago = Some("2026-01-01T00:00:05Z".parse().expect("ts"));
        let what = |l: Option<&KeptLease>, w| heard(l, w, now, t).0;
        assert_eq!(what(Some(&expired), None), Heard::Silence);
        assert_eq!(what(Some(&expired), long_ago), Heard::Silence);
        assert_eq!(what(None, None), Heard::Nothing);
        let (by, p) = heard(Some(&expired), written, now, t);
        assert_eq!(
            (by, p.online, p.recheck_in),
            (
                Heard::StatusWrite,
                true,
                Some(Duration::from_millis(30_500))
            )
        );
        assert_eq!(what(None, written), Heard::StatusWrite, "never renewed");
        // A fresh renewal is named whenever there is one, and the later time counts.
        let fresh = lease("2026-01-01T00:00:45Z");
        let (by, p) = heard(Some(&fresh), written, now, t);
        assert_eq!(
            (by, p.recheck_in),
            (Heard::Renewal, Some(Duration::from_millis(30_500)))
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

    /// A renewal dated in the future counts as made when the controller read it, and runs
    /// out a threshold later, not at its date. A status write dated well ahead of the
    /// apiserver's clock is none the apiserver recorded (someone who may write the whole
    /// EdgeDevice forged it): not heard at all, so not new again at every event either.
    #[test]
    fn a_time_in_the_future_is_not_heard_until_then() {
        let before = Timestamp::now();
        let future = "2099-01-01T00:00:00Z";
        let kept = lease(future);
        let renewed = kept.renewed.as_ref().map(|t| t.0).expect("renewed");
        assert!(
            before <= renewed && renewed <= Timestamp::now(),
            "{renewed}"
        );
        let later = renewed + jiff::SignedDuration::from_secs(41);
        let threshold = Duration::from_secs(40);
        assert_eq!(heard(Some(&kept), None, later, threshold).0, Heard::Silence);

        let written = |at: Timestamp| {
            let mut d = EdgeDevice::new("edge-1", Default::default());
            d.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
                manager: Some(AGENT_MANAGER.into()),
                operation: Some(APPLY_OPERATION.into()),
                subresource: Some(STATUS_SUBRESOURCE.into()),
                time: Some(Time(at)),
                ..ManagedFieldsEntry::default()
            }]);
            keep_status_written(&mut d);
            status_written(&d)
        };
        assert_eq!(written(future.parse().expect("ts")), None);
        // The apiserver's clock a moment ahead of the controller's is no forgery.
        let ahead = Timestamp::now() + jiff::SignedDuration::from_secs(2);
        assert_eq!(written(ahead), Some(ahead));
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
