//! The moves this controller wrote that the cache may not show yet. A staged rollout moves
//! a device by writing its `spec.rollouts`; the device cache sees the write a moment later.
//! A second pass of the planner in that moment would take the device for unmoved and move
//! more devices than `maxUnavailable` allows, so each pass first lays the moves it
//! remembers over what the cache says. A move is forgotten once the cache shows it, or
//! after [`REMEMBERED`] (the write was undone, say the device left the deployment): the
//! cache is the truth, the ledger only bridges its delay.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::decide::rollout::{Device, Health};

/// How long a move is laid over the cache at most. Far longer than a watch's delay.
pub const REMEMBERED: Duration = Duration::from_secs(60);

/// Per device: the revision written and when.
type Written = HashMap<String, (String, Instant)>;

/// Per deployment (`namespace/name`), the moves written.
#[derive(Debug, Default)]
pub struct Moves(Mutex<HashMap<String, Written>>);

impl Moves {
    /// Notes that `device` was moved to `revision` for deployment `key` at `now`.
    pub fn remember(&self, key: &str, device: &str, revision: &str, now: Instant) {
        let mut moves = self.0.lock().unwrap_or_else(|e| e.into_inner());
        moves
            .entry(key.to_owned())
            .or_default()
            .insert(device.to_owned(), (revision.to_owned(), now));
    }

    /// Lays the remembered moves of deployment `key` over `devices` (as the cache has them):
    /// a device the cache does not show at its remembered revision yet is taken to be there,
    /// updating. Moves the cache shows, and old ones, are forgotten.
    pub fn recall(&self, key: &str, devices: &mut [Device], now: Instant) {
        let mut moves = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(remembered) = moves.get_mut(key) else {
            return;
        };
        remembered.retain(|_, (_, at)| now.duration_since(*at) < REMEMBERED);
        for d in devices.iter_mut() {
            let Some((revision, _)) = remembered.get(&d.name) else {
                continue;
            };
            if d.rollout.as_ref() == Some(revision) {
                remembered.remove(&d.name);
            } else {
                d.rollout = Some(revision.clone());
                d.health = Health::Updating;
            }
        }
        if remembered.is_empty() {
            moves.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(name: &str, rollout: Option<&str>) -> Device {
        Device {
            name: name.to_owned(),
            preferred: false,
            online: true,
            rollout: rollout.map(str::to_owned),
            health: Health::Ready,
        }
    }

    fn seen(devices: &[Device]) -> Vec<(&str, Option<&str>, Health)> {
        devices
            .iter()
            .map(|d| (d.name.as_str(), d.rollout.as_deref(), d.health))
            .collect()
    }

    /// A move the cache doesn't show yet counts as made, and updating.
    #[test]
    fn a_move_the_cache_does_not_show_yet_counts() {
        let moves = Moves::default();
        let t0 = Instant::now();
        moves.remember("ns/d", "a", "r2", t0);
        let mut cache = vec![device("a", Some("r1")), device("b", Some("r1"))];
        moves.recall("ns/d", &mut cache, t0);
        assert_eq!(
            seen(&cache),
            [
                ("a", Some("r2"), Health::Updating),
                ("b", Some("r1"), Health::Ready)
            ]
        );
        // Another deployment's moves are its own.
        let mut other = vec![device("a", Some("r1"))];
        moves.recall("ns/other", &mut other, t0);
        assert_eq!(seen(&other), [("a", Some("r1"), Health::Ready)]);
    }

    /// Once the cache shows a move, the cache speaks: the device's health is its own again,
    /// and a later change in the cache is not overridden.
    #[test]
    fn the_cache_takes_over_once_it_shows_the_move() {
        let moves = Moves::default();
        let t0 = Instant::now();
        moves.remember("ns/d", "a", "r2", t0);
        let mut shown = vec![device("a", Some("r2"))];
        moves.recall("ns/d", &mut shown, t0);
        assert_eq!(seen(&shown), [("a", Some("r2"), Health::Ready)]);
        let mut back = vec![device("a", Some("r1"))];
        moves.recall("ns/d", &mut back, t0);
        assert_eq!(seen(&back), [("a", Some("r1"), Health::Ready)]);
    }

    /// A move the cache never shows (the write was undone) is forgotten after a while, so
    /// a device is never held at a revision it doesn't have.
    #[test]
    fn an_undone_move_is_forgotten_in_time() {
        let moves = Moves::default();
        let t0 = Instant::now();
        moves.remember("ns/d", "a", "r2", t0);
        let mut cache = vec![device("a", None)];
        moves.recall("ns/d", &mut cache, t0 + REMEMBERED);
        assert_eq!(seen(&cache), [("a", None, Health::Ready)]);
    }
}
