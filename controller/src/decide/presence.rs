//! Whether a device is online, from its Lease: online while the last renewal is younger
//! than the offline threshold. Pure, given the time.

use std::time::Duration;

use edgefleet_crds::EdgeDeviceStatus;
use edgefleet_crds::condition;
use edgefleet_crds::device::conditions::ONLINE;
use jiff::Timestamp;

use crate::k8s::kept_lease::KeptLease;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    /// When the answer changes by itself (an online device goes offline), if it does.
    pub recheck_in: Option<Duration>,
}

pub fn presence(lease: Option<&KeptLease>, now: Timestamp, threshold: Duration) -> Presence {
    let renewed = lease.and_then(|l| l.renewed.as_ref()).map(|t| t.0);
    let Some(renewed) = renewed else {
        return Presence {
            online: false,
            recheck_in: None,
        };
    };
    let age = now.duration_since(renewed).unsigned_abs();
    // A renewal in the future (clock skew) counts as just now.
    let age = if renewed > now { Duration::ZERO } else { age };
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

/// Whether a renewal of a device's Lease can change what the controller says of the device:
/// not while it reports the device online. The reconcile that said so rechecks when the
/// renewal it saw runs out (`recheck_in`) and reads the newer one then; waking it at every
/// renewal would be a reconcile per device per lease interval, 1,000 a second at 10,000
/// devices, that changes nothing.
pub fn renewal_may_change(reported: Option<&EdgeDeviceStatus>) -> bool {
    let conditions = reported
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    !condition::find(conditions, ONLINE).is_some_and(|c| c.is_true())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

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
            let p = presence(l.as_ref(), now, t);
            assert_eq!((p.online, p.recheck_in), (online, recheck), "{l:?}");
        }
        let never_renewed = KeptLease::keep(Lease::default());
        assert!(!presence(Some(&never_renewed), now, t).online);
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
        assert!(renewal_may_change(None), "a device with no status yet");
        assert!(
            renewal_may_change(Some(&reported(None))),
            "no Online condition"
        );
        assert!(renewal_may_change(Some(&reported(Some(false)))), "offline");
        assert!(!renewal_may_change(Some(&reported(Some(true)))), "online");
    }
}
