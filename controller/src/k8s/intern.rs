//! One copy of each distinct desired state in the device cache. Devices that the same
//! deployments select, at the same revisions, are given equal desired states, and at fleet
//! size these are most of what the cache holds: 10,000 devices carry a few hundred distinct
//! ones. The device watch hands each new object's desired state to [`Interner::intern`],
//! which swaps it for the copy already held when there is one.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};

use edgefleet_crds::{DesiredState, EdgeDevice};

/// How many new states are recorded between two sweeps of the ones no device holds.
const SWEEP_EVERY: usize = 1024;

/// The desired states the cache holds, by a hash of their JSON. Held weakly: a state that no
/// cached device has any more is freed with its last device, and its entry swept later.
#[derive(Debug, Default)]
pub struct Interner {
    states: Mutex<States>,
}

#[derive(Debug, Default)]
struct States {
    by_hash: HashMap<u64, Vec<Weak<DesiredState>>>,
    recorded: usize,
}

impl Interner {
    /// Replaces `device`'s desired state with the equal one already held, or records it.
    /// Equality is checked in full: the hash only finds the candidates.
    pub fn intern(&self, device: &mut EdgeDevice) {
        let Some(desired) = device.spec.desired.as_mut() else {
            return;
        };
        let hash = hash_of(desired);
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = states.by_hash.entry(hash).or_default();
        if let Some(same) = bucket
            .iter()
            .filter_map(Weak::upgrade)
            .find(|held| **held == **desired)
        {
            *desired = same;
            return;
        }
        bucket.push(Arc::downgrade(desired));
        states.recorded += 1;
        if states.recorded.is_multiple_of(SWEEP_EVERY) {
            states.by_hash.retain(|_, bucket| {
                bucket.retain(|w| w.strong_count() > 0);
                !bucket.is_empty()
            });
        }
    }

    /// How many distinct desired states are held.
    #[cfg(test)]
    fn len(&self) -> usize {
        let states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states
            .by_hash
            .values()
            .flatten()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

fn hash_of(desired: &DesiredState) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_vec(desired).unwrap_or_default().hash(&mut h);
    h.finish()
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

    #[test]
    fn equal_desired_states_are_held_once() {
        let interner = Interner::default();
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
        assert_eq!(interner.len(), 2);
        assert_eq!(
            **state(&b),
            **state(&device("b", "ns/one")),
            "nothing changed"
        );
    }

    #[test]
    fn a_state_no_device_holds_is_freed() {
        let interner = Interner::default();
        let mut a = device("a", "ns/one");
        interner.intern(&mut a);
        drop(a);
        assert_eq!(interner.len(), 0);
        let mut b = device("b", "ns/one");
        interner.intern(&mut b);
        assert_eq!(interner.len(), 1, "recorded afresh");
    }
}
