//! How often an agent renews its Lease, when the controller says: the controller stretches
//! the fleet's renewal interval as the fleet grows (each renewal is a write, and at a fixed
//! interval their rate grows with the fleet) and writes the interval it chose on each
//! device's Lease, where the agent reads it in every renewal's answer. One definition for
//! both sides: the annotation's name and what a value in it may be.

use std::collections::BTreeMap;
use std::time::Duration;

/// The annotation on a device's Lease that gives its renewal interval in whole seconds.
/// Absent, the agent renews at its own configured interval.
pub const RENEW_EVERY_ANNOTATION: &str = "edgefleet.io/renew-every-seconds";

/// The longest interval the controller writes and the agent heeds: a device silent for
/// hours would be offline that long before anyone noticed.
pub const MAX_RENEW_EVERY: Duration = Duration::from_secs(3600);

/// The interval `annotations` give, if they give one the agent may follow: whole seconds,
/// at least one, at most [`MAX_RENEW_EVERY`]. Anything else (someone who may write the
/// Lease, the device itself, wrote nonsense) is no interval: the agent keeps its own.
pub fn renew_every(annotations: Option<&BTreeMap<String, String>>) -> Option<Duration> {
    let value = annotations?.get(RENEW_EVERY_ANNOTATION)?;
    // At most four digits: u64 parsing accepts `+`, and a long string is no interval.
    if value.is_empty() || value.len() > 4 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = value.parse().ok()?;
    let every = Duration::from_secs(secs);
    (secs >= 1 && every <= MAX_RENEW_EVERY).then_some(every)
}

/// The annotation's value for `every`, which the caller keeps within
/// [`MAX_RENEW_EVERY`].
pub fn renew_every_value(every: Duration) -> String {
    every.as_secs().max(1).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> BTreeMap<String, String> {
        BTreeMap::from([(RENEW_EVERY_ANNOTATION.to_owned(), value.to_owned())])
    }

    #[test]
    fn an_interval_is_whole_seconds_within_bounds() {
        assert_eq!(
            renew_every(Some(&with("80"))),
            Some(Duration::from_secs(80))
        );
        assert_eq!(renew_every(Some(&with("3600"))), Some(MAX_RENEW_EVERY));
        assert_eq!(renew_every(None), None);
        assert_eq!(renew_every(Some(&BTreeMap::new())), None);
        assert_eq!(renew_every_value(Duration::from_secs(80)), "80");
        assert_eq!(
            renew_every(Some(&with(&renew_every_value(Duration::from_millis(10))))),
            Some(Duration::from_secs(1))
        );
    }

    /// A Lease's annotations are writable by the device and by whoever administers its
    /// namespace: no value makes an agent renew so rarely that it drops offline unseen
    /// for hours, or fail to parse its way into a panic.
    #[test]
    fn a_forged_interval_is_no_interval() {
        for bad in [
            "0",
            "3601",
            "99999999999999999999",
            "-5",
            "+80",
            "80s",
            "8.0",
            "",
            " 80",
        ] {
            assert_eq!(renew_every(Some(&with(bad))), None, "{bad:?}");
        }
    }
}
