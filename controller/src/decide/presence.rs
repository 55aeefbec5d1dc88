//! Whether a device is online, from its Lease: online while the last renewal is younger
//! than the offline threshold. Pure, given the time.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Presence {
    pub online: bool,
    /// When the answer changes by itself (an online device goes offline), if it does.
    pub recheck_in: Option<Duration>,
}

pub fn presence(lease: Option<&Lease>, now: Timestamp, threshold: Duration) -> Presence {
    let renewed = lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.renew_time.as_ref())
        .map(|t| t.0);
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn lease(renewed: &str) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renewed.parse().expect("ts"))),
                ..Default::default()
            }),
            ..Default::default()
        }
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
        let never_renewed = Lease::default();
        assert!(!presence(Some(&never_renewed), now, t).online);
    }
}
