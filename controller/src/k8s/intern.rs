//! One copy of each distinct desired state in the device cache. Devices that the same
//! deployments select, at the same revisions, are given equal desired states, and at fleet
//! size these are most of what the cache holds: 10,000 devices carry a few hundred distinct
//! ones. The device watch hands each new object's desired state to [`Interner::intern`],
//! which swaps it for the copy already held when there is one.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Weak};

use edgefleet_crds::{DesiredState, EdgeDevice};

/// How many new states are recorded between two sweeps of the ones no device holds.
const SWEEP_EVERY: usize = 1024;

/// The desired states the cache holds, by a hash of their identity. Held weakly: a state
/// that no cached device has any more is freed with its last device, and its entry swept
/// later. The device watch owns it (one stream, no lock).
#[derive(Debug, Default)]
pub struct Interner {
    by_hash: HashMap<u64, Vec<Weak<DesiredState>>>,
    recorded: usize,
    /// Keyed per process, so that no one can choose states that collide.
    hasher: RandomState,
}

impl Interner {
    /// Replaces `device`'s desired state with the equal one already held, or records it.
    /// Equality is checked in full: the hash only finds the candidates.
    pub fn intern(&mut self, device: &mut EdgeDevice) {
        let Some(desired) = device.spec.desired.as_mut() else {
            return;
        };
        let bucket = self.by_hash.entry(self.hash_of(desired)).or_default();
        if let Some(same) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|held| **held == **desired)
        {
            *desired = same;
            return;
        }
        bucket.push(Arc::downgrade(desired));
        self.recorded += 1;
        if self.recorded.is_multiple_of(SWEEP_EVERY) {
            self.by_hash.retain(|_, bucket| {
                bucket.retain(|w| w.strong_count() > 0);
                !bucket.is_empty()
            });
        }
    }

    /// Runs on every device event, so it hashes [`DesiredState::identity`], not the whole
    /// state: a revision that does not match its modules only misplaces a state, since
    /// equality decides.
    fn hash_of(&self, desired: &DesiredState) -> u64 {
        self.hasher.hash_one(desired.identity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgefleet_crds::{TargetingDecision, TargetingOutcome};

    fn device(name: &str, deployment: &str) -> EdgeDevice {
        let mut d = EdgeDevice::new(name, Default::default());
        d.spec.desired = Some(Arc::new(DesiredState::new(
            vec![],
            vec![TargetingDecision {
                deployment: deployment.to_owned(),
                priority: 1,
                layered: false,
                outcome: TargetingOutcome::Owner,
                reason: String::new(),
                revision: String::new(),
            }],
        )));
        d
    }

    fn state(d: &EdgeDevice) -> &Arc<DesiredState> {
        d.spec.desired.as_ref().expect("a desired state")
    }

    /// Entries recorded, live or not.
    fn entries(interner: &Interner) -> usize {
        interner.by_hash.values().map(Vec::len).sum()
    }

    fn live(interner: &Interner) -> usize {
        interner
            .by_hash
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }

    #[test]
    fn equal_desired_states_are_held_once() {
        let mut interner = Interner::default();
        let (mut a, mut b, mut c) = (
            device("a", "ns/one"),
            device("b", "ns/one"),
            device("c", "ns/two"),
        );
        for d in [&mut a, &mut b, &mut c] {
            interner.intern(d);
        }
        assert!(
            Arc::ptr_eq(state(&a), state(&b)),
            "equal states share one copy"
        );
        assert!(
            !Arc::ptr_eq(state(&a), state(&c)),
            "different states stay apart"
        );
        assert_eq!(live(&interner), 2);
        assert_eq!(
            **state(&b),
            **state(&device("b", "ns/one")),
            "nothing changed"
        );
    }

    /// Two different states under one hash (a collision) each keep their own.
    #[test]
    fn a_hash_is_only_where_to_look() {
        let mut interner = Interner::default();
        let (mut a, mut b) = (device("a", "ns/one"), device("b", "ns/two"));
        interner.intern(&mut a);
        let only_bucket = interner.by_hash.drain().flat_map(|(_, v)| v).collect();
        let b_hash = interner.hash_of(state(&b));
        interner.by_hash.insert(b_hash, only_bucket);
        interner.intern(&mut b);
        assert!(!Arc::ptr_eq(state(&a), state(&b)));
        assert_eq!(state(&b).targeting[0].deployment, "ns/two");
    }

    #[test]
    fn a_state_no_device_holds_is_freed_and_swept() {
        let mut interner = Interner::default();
        let mut a = device("a", "ns/one");
        interner.intern(&mut a);
        drop(a);
        assert_eq!(live(&interner), 0, "freed with its last device");
        let mut b = device("b", "ns/one");
        interner.intern(&mut b);
        assert_eq!(live(&interner), 1, "recorded afresh");
        // a and b were recorded: these bring the count to the sweep, each device gone once
        // interned. The last is still held while the sweep runs.
        for i in 2..SWEEP_EVERY {
            interner.intern(&mut device("gone", &format!("ns/{i}")));
        }
        assert_eq!(
            entries(&interner),
            2,
            "the dead entries are swept: b's state and the last one's are left"
        );
    }
}
