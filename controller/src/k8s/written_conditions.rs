//! The controller's conditions it wrote on a device that the device cache may not show yet.
//! A device reconcile often runs again before its status write comes back through the
//! watch: woken by its own desired-state write a moment earlier, or by the registry's. It
//! found the old conditions and wrote the same ones again, with a new transition time: 1.34
//! status writes a device when 10,000 devices registered. So each write is noted, and a
//! reconcile that would write what was noted within [`REMEMBERED`] leaves it to the cache.
//! A note goes once the cache shows it; after [`REMEMBERED`] (the write was overwritten,
//! say by the device, whose status it is) it is no longer heeded, and goes with the next
//! write. The cache is the truth, the notes only bridge its delay.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgefleet_crds::Condition;

/// How long a write is taken to be on its way at most. Far longer than a watch's delay; a
/// reconcile that skipped a write looks again after it.
pub const REMEMBERED: Duration = Duration::from_secs(10);

/// Per device: what its conditions say (types, statuses, reasons and messages; not when
/// they changed), hashed, and when they were written.
#[derive(Debug, Default)]
pub struct WrittenConditions {
    notes: Mutex<HashMap<String, (u64, Instant)>>,
    /// Keyed per process: a device's own words are in the messages (StatusValid's), and it
    /// must not find two that hash alike.
    hasher: RandomState,
}

impl WrittenConditions {
    /// Notes that `conditions` were written on `device` at `now`. Notes older than
    /// [`REMEMBERED`] go too, those of devices gone among them.
    pub fn note(&self, device: &str, conditions: &[Condition], now: Instant) {
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.retain(|_, (_, at)| now.duration_since(*at) < REMEMBERED);
        notes.insert(device.to_owned(), (self.said(conditions), now));
    }

    /// Whether `conditions` are what was written on `device` less than [`REMEMBERED`]
    /// before `now`, and so on their way to the cache.
    pub fn on_their_way(&self, device: &str, conditions: &[Condition], now: Instant) -> bool {
        let notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.get(device).is_some_and(|(what, at)| {
            *what == self.said(conditions) && now.duration_since(*at) < REMEMBERED
        })
    }

    /// What the conditions say, hashed: what the reconcile compares before it writes.
    fn said(&self, conditions: &[Condition]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for c in conditions {
            c.says().hash(&mut h);
        }
        h.finish()
    }

    /// The cache shows what `device`'s conditions should say: its note, if any, goes.
    pub fn shown(&self, device: &str) {
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.remove(device);
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::ConditionStatus;

    use super::*;

    fn online(status: ConditionStatus, reason: &str) -> Vec<Condition> {
        vec![Condition::new("Online", status, reason, "")]
    }

    #[test]
    fn a_write_is_on_its_way_until_shown_or_remembered_no_longer() {
        let notes = WrittenConditions::default();
        let t0 = Instant::now();
        let up = online(ConditionStatus::True, "LeaseRenewed");
        assert!(!notes.on_their_way("edge-1", &up, t0));
        notes.note("edge-1", &up, t0);
        assert!(notes.on_their_way("edge-1", &up, t0 + Duration::from_secs(1)));
        // Other conditions, another device, or a note too old: written again.
        let down = online(ConditionStatus::False, "LeaseExpired");
        assert!(!notes.on_their_way("edge-1", &down, t0));
        assert!(!notes.on_their_way("edge-2", &up, t0));
        assert!(!notes.on_their_way("edge-1", &up, t0 + REMEMBERED));
        notes.shown("edge-1");
        assert!(!notes.on_their_way("edge-1", &up, t0));
    }

    #[test]
    fn old_notes_go_with_the_next_write() {
        let notes = WrittenConditions::default();
        let t0 = Instant::now();
        let up = online(ConditionStatus::True, "LeaseRenewed");
        notes.note("gone", &up, t0);
        notes.note("edge-1", &up, t0 + REMEMBERED);
        let held = notes.notes.lock().expect("lock").len();
        assert_eq!(held, 1);
    }
}
