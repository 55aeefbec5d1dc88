//! What the controller wrote on a device that the device cache may not show yet: its
//! conditions, and its desired state. A device reconcile often runs again before its write
//! comes back through the watch, woken by its own other write a moment earlier or by the
//! registry's, and found the old object: it wrote the same conditions again, with a new
//! transition time (1.34 status writes a device when 10,000 devices registered), and the
//! registry and the device reconcile each wrote a new device's first desired state (about
//! 1,200 EdgeDevice requests more than devices at 10,000: no-op applies and 409s). So each
//! write is noted, and a reconcile that would write what was noted within [`REMEMBERED`]
//! leaves it to the cache. A note goes once the cache shows it or its write fails; after
//! [`REMEMBERED`] (the write was overwritten, say by the device, whose status it is) it is
//! no longer heeded, and goes with the next sweep. The cache is the truth, the notes only
//! bridge its delay.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use edgefleet_crds::Condition;

/// How long a write is taken to be on its way at most. Far longer than a watch's delay; a
/// reconcile that skipped a write looks again after it.
pub const REMEMBERED: Duration = Duration::from_secs(10);

/// Per device: what was written, hashed, and when.
#[derive(Debug, Default)]
pub struct Written {
    notes: Mutex<Notes>,
    /// Keyed per process: a device's own words are in what is noted (StatusValid's
    /// message), and it must not find two that hash alike.
    hasher: RandomState,
}

#[derive(Debug, Default)]
struct Notes {
    by_device: HashMap<String, (u64, Instant)>,
    /// When notes older than [`REMEMBERED`] last went.
    swept: Option<Instant>,
}

impl Written {
    /// Notes that `what` is being written on `device` at `now`, unless it is on its way
    /// already (noted less than [`REMEMBERED`] before): whether the caller is to write it.
    /// One step, so that of two reconciles about to write the same, one does. Notes older
    /// than [`REMEMBERED`] go too, those of devices gone among them, in one sweep each
    /// [`REMEMBERED`]: a sweep on every claim made a burst of n writes cost n² steps.
    pub fn claim(&self, device: &str, what: impl Hash, now: Instant) -> bool {
        let said = self.hasher.hash_one(what);
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        if notes
            .by_device
            .get(device)
            .is_some_and(|n| Self::heeded(n, said, now))
        {
            return false;
        }
        if notes
            .swept
            .is_none_or(|at| now.duration_since(at) >= REMEMBERED)
        {
            notes
                .by_device
                .retain(|_, (_, at)| now.duration_since(*at) < REMEMBERED);
            notes.swept = Some(now);
        }
        notes.by_device.insert(device.to_owned(), (said, now));
        true
    }

    fn heeded((what, at): &(u64, Instant), said: u64, now: Instant) -> bool {
        *what == said && now.duration_since(*at) < REMEMBERED
    }

    /// The cache shows what `device` should have, or its write failed: its note, if any,
    /// goes.
    pub fn forget(&self, device: &str) {
        let mut notes = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        notes.by_device.remove(device);
    }
}

/// What conditions say, without when they changed: what a condition write is noted by.
#[derive(Debug)]
pub struct Saying<'a>(pub &'a [Condition]);

impl Hash for Saying<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for c in self.0 {
            c.says().hash(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::ConditionStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;

    fn online(status: ConditionStatus, reason: &str) -> Vec<Condition> {
        vec![Condition::new("Online", status, reason, "")]
    }

    #[test]
    fn a_write_is_on_its_way_until_shown_or_remembered_no_longer() {
        let notes = Written::default();
        let t0 = Instant::now();
        let up = online(ConditionStatus::True, "LeaseRenewed");
        assert!(notes.claim("edge-1", Saying(&up), t0));
        assert!(!notes.claim("edge-1", Saying(&up), t0 + Duration::from_secs(1)));
        // Another device, or a note too old: written again.
        assert!(notes.claim("edge-2", Saying(&up), t0));
        assert!(notes.claim("edge-1", Saying(&up), t0 + REMEMBERED));
        // Shown: the next claim writes.
        notes.forget("edge-1");
        assert!(notes.claim("edge-1", Saying(&up), t0 + REMEMBERED));
    }

    #[test]
    fn conditions_are_noted_by_what_they_say() {
        let notes = Written::default();
        let t0 = Instant::now();
        let up = online(ConditionStatus::True, "LeaseRenewed");
        assert!(notes.claim("edge-1", Saying(&up), t0));
        let down = online(ConditionStatus::False, "LeaseExpired");
        assert!(notes.claim("edge-1", Saying(&down), t0));
        // When a condition changed is not what it says.
        let mut later = down.clone();
        later[0].last_transition_time = Some(Time(jiff::Timestamp::now()));
        assert!(!notes.claim("edge-1", Saying(&later), t0));
    }

    #[test]
    fn of_two_claims_of_the_same_write_one_writes() {
        let notes = Written::default();
        let t0 = Instant::now();
        assert!(notes.claim("edge-1", "revision-a", t0));
        assert!(!notes.claim("edge-1", "revision-a", t0));
        // Something else to write, or the first write long past: written.
        assert!(notes.claim("edge-1", "revision-b", t0));
        assert!(notes.claim("edge-1", "revision-b", t0 + REMEMBERED));
        // A failed write is forgotten, and the next claim writes.
        notes.forget("edge-1");
        assert!(notes.claim("edge-1", "revision-b", t0 + REMEMBERED));
    }

    fn held(notes: &Written) -> usize {
        notes.notes.lock().expect("lock").by_device.len()
    }

    #[test]
    fn old_notes_go_in_one_sweep_a_while() {
        let notes = Written::default();
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        notes.claim("gone", "a", t0);
        notes.claim("edge-1", "a", t0 + REMEMBERED / 2);
        // The first claim a REMEMBERED after the last sweep sweeps what has grown old.
        notes.claim("edge-2", "a", t0 + REMEMBERED + s);
        assert_eq!(held(&notes), 2, "gone went, edge-1 and edge-2 are left");
        // Until the next, old notes stay held (and unheeded).
        notes.claim("edge-3", "a", t0 + REMEMBERED * 3 / 2 + 2 * s);
        assert_eq!(held(&notes), 3);
        assert!(notes.claim("edge-1", "a", t0 + REMEMBERED * 3 / 2 + 2 * s));
    }
}
