//! Which deployments apply to a device, and the device's resulting desired state.
//!
//! Rules (as in Azure IoT Edge's automatic deployments):
//! - Among the non-layered deployments that select the device, the highest `priority`
//!   wins and owns the device's base module set. Equal priorities are broken by
//!   `namespace/name`, ascending: the first wins. The rule depends only on names, so
//!   deleting and re-creating a deployment (as GitOps tools do) never changes the winner.
//! - Layered deployments that select the device apply on top of the base, in ascending
//!   priority (then `namespace/name`): each adds its modules, and a module with the same
//!   name *in the same namespace* as one already there replaces it, so the highest-priority
//!   layer has the last word. A module's identity on a device is `namespace/name`: a team
//!   layers over its own modules only, never another team's of the same name.
//!   Layers apply even when no base deployment selects the device.
//! - Every selecting deployment appears in the device's `targeting` list: the owner, each
//!   layer, and each loser with the reason it lost.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_crds::{DesiredState, ResolvedModule, Rollouts, TargetingDecision, TargetingOutcome};

use edgefleet_crds::limits;

use crate::decide::catalog::{CompiledDeployment, Contribution};
use crate::decide::grant::Grant;

/// What one deployment gives a device: its modules there, the revision they are from, and
/// their cost to the device's budget (bytes, [`limits::module_bytes`]).
#[derive(Debug, Default)]
struct Given {
    modules: Vec<ResolvedModule>,
    revision: String,
    bytes: usize,
}

impl Given {
    fn new(modules: Vec<ResolvedModule>, revision: String) -> Self {
        let bytes = modules.iter().map(limits::module_bytes).sum();
        Given {
            modules,
            revision,
            bytes,
        }
    }
}

impl CompiledDeployment {
    /// The modules this deployment gives the device, and the revision they are from.
    fn modules_for(
        &self,
        labels: &BTreeMap<String, String>,
        current: Option<&DesiredState>,
        staged: &StagedRevisions,
    ) -> Given {
        match &self.contribution {
            Contribution::Held { reach, .. } => {
                let mut kept = self.read_back(current);
                keep_allowed(&mut kept.modules, reach, labels);
                Given::new(kept.modules, kept.revision)
            }
            Contribution::Fresh { modules, bytes, .. } if !self.staged => Given {
                modules: modules.clone(),
                revision: self.revision.clone(),
                bytes: *bytes,
            },
            Contribution::Fresh {
                modules,
                bytes,
                reach,
                ..
            } => match self.staged_at(staged.rollouts, current.map(|c| c.targeting.as_slice())) {
                Some(r) if r == self.revision => Given {
                    modules: modules.clone(),
                    revision: r.to_owned(),
                    bytes: *bytes,
                },
                Some(r) => match staged.snapshots.modules(&self.key, r) {
                    Some(mut snapshot) => {
                        keep_allowed(&mut snapshot, reach, labels);
                        Given::new(snapshot, r.to_owned())
                    }
                    None => self.read_back(current),
                },
                None => self.read_back(current),
            },
        }
    }

    /// What the device has from this deployment now: kept while a held spec waits to be
    /// fixed, while a staged rollout has not reached the device yet, or while a change
    /// would take the device over its budget.
    fn read_back(&self, current: Option<&DesiredState>) -> Given {
        let Some(c) = current else {
            return Given::default();
        };
        let modules = c
            .modules
            .iter()
            .filter(|m| m.deployment == self.key)
            .cloned()
            .collect();
        let revision = c
            .targeting
            .iter()
            .find(|t| t.deployment == self.key)
            .map(|t| t.revision.clone())
            .unwrap_or_default();
        Given::new(modules, revision)
    }
}

/// Keeps the modules one of `reach` (the grants naming their namespace) lets run on a device
/// with these labels, as grants are today, and drops the routes to the others: a route to a
/// module the device does not run would have the agent refuse its whole desired state,
/// every team's change on it with it.
fn keep_allowed(
    modules: &mut Vec<ResolvedModule>,
    reach: &[Grant],
    labels: &BTreeMap<String, String>,
) {
    modules.retain(|m| reach.iter().any(|g| g.allows(labels, m)));
    let names: BTreeSet<String> = modules.iter().map(|m| m.name.clone()).collect();
    for m in modules.iter_mut() {
        m.routes
            .retain(|r| r.to.module.as_ref().is_none_or(|to| names.contains(to)));
    }
}

/// What a device's desired state has taken so far of its budget (see [`limits`]).
#[derive(Debug, Default)]
struct Budget {
    modules: usize,
    bytes: usize,
}

impl Budget {
    /// Takes `g` if the device has room for it; why not otherwise.
    fn take(&mut self, g: &Given) -> Result<(), String> {
        let (modules, bytes) = (self.modules + g.modules.len(), self.bytes + g.bytes);
        if let Some(why) = limits::over_device_budget(modules, bytes) {
            return Err(why);
        }
        *self = Budget { modules, bytes };
        Ok(())
    }
}

/// The earlier revisions of deployments (their ControllerRevisions).
pub trait Snapshots {
    /// The modules deployment `key` gave devices at `revision`, if that revision is kept
    /// and its modules are ones edgefleet would have written ([`crate::decide::snapshot`]).
    fn modules(&self, key: &str, revision: &str) -> Option<Vec<ResolvedModule>>;
}

/// No earlier revisions: for deployments without staged rollouts, and tests.
impl Snapshots for () {
    fn modules(&self, _: &str, _: &str) -> Option<Vec<ResolvedModule>> {
        None
    }
}

/// Where staged deployments' modules come from on one device.
pub struct StagedRevisions<'a> {
    /// The device's `spec.rollouts`: the revision each staged deployment moved it to.
    pub rollouts: &'a Rollouts,
    pub snapshots: &'a dyn Snapshots,
}

impl std::fmt::Debug for StagedRevisions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedRevisions")
            .field("rollouts", self.rollouts)
            .finish_non_exhaustive()
    }
}

/// The deployments whose entries in a device's `spec.rollouts` are to be forgotten, once the
/// device's desired state is `desired`:
/// - those that no longer give the device anything (gone, or no longer selecting it): if
///   one selects the device again, the device arrives in its waves like any device, not at
///   once;
/// - those no longer staged. An entry is the revision a staged rollout moved the device to;
///   one left from an earlier staged period would outrank what the device runs when the
///   deployment is made staged again, and send the device back to that period's revision.
pub fn forgotten_rollouts<'a>(
    rollouts: &'a Rollouts,
    catalog: &[CompiledDeployment],
    desired: &DesiredState,
) -> Vec<&'a str> {
    let gives = |key: &str| {
        desired
            .targeting
            .iter()
            .any(|t| t.deployment == key && t.outcome != TargetingOutcome::Lost)
    };
    let staged = |key: &str| catalog.iter().any(|d| d.key == key && d.staged);
    rollouts
        .iter()
        .map(|(k, _)| k)
        .filter(|k| !gives(k) || !staged(k))
        .collect()
}

/// The desired state of one device with these labels, when no deployment is staged.
pub fn resolve(
    labels: &BTreeMap<String, String>,
    catalog: &[CompiledDeployment],
    current: Option<&DesiredState>,
) -> DesiredState {
    let none = Rollouts::new();
    resolve_staged(
        labels,
        catalog,
        current,
        &StagedRevisions {
            rollouts: &none,
            snapshots: &(),
        },
    )
}

/// The desired state of one device with these labels. `current` is the device's present
/// desired state, read for held deployments and for staged ones that have not moved the
/// device yet.
pub fn resolve_staged(
    labels: &BTreeMap<String, String>,
    catalog: &[CompiledDeployment],
    current: Option<&DesiredState>,
    staged: &StagedRevisions,
) -> DesiredState {
    let decisions = current.map(|c| c.targeting.as_slice());
    let mut base: Vec<Ranked> = Vec::new();
    let mut layers: Vec<Ranked> = Vec::new();
    let mut retained: Vec<&CompiledDeployment> = Vec::new();
    for d in catalog {
        if d.selects(labels, decisions) {
            let ranked = Ranked {
                priority: d.priority_on(decisions),
                d,
            };
            if d.layered {
                layers.push(ranked);
            } else {
                base.push(ranked);
            }
        } else if d.retain {
            retained.push(d);
        }
    }
    base.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.d.key.cmp(&b.d.key))
    });
    layers.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then_with(|| a.d.key.cmp(&b.d.key))
    });

    // The device's budget: the owner first, then layers from the highest priority down.
    // A deployment whose modules would take the device over it keeps what it had here
    // (or nothing, if even that no longer fits) and says why: the device is never sent
    // a state it would refuse, and the deployment that pushes it over is the one held.
    let mut budget = Budget::default();
    let mut given: BTreeMap<&str, (Given, Option<String>)> = BTreeMap::new();
    for r in base.first().into_iter().chain(layers.iter().rev()) {
        let g = r.d.modules_for(labels, current, staged);
        let entry = match budget.take(&g) {
            Ok(()) => (g, None),
            Err(why) => {
                let kept = r.d.read_back(current);
                let kept = if budget.take(&kept).is_ok() {
                    kept
                } else {
                    Given::default()
                };
                (kept, Some(why))
            }
        };
        given.insert(r.d.key.as_str(), entry);
    }
    let mut take = |r: &Ranked| given.remove(r.d.key.as_str()).unwrap_or_default();

    let mut modules: BTreeMap<String, ResolvedModule> = BTreeMap::new();
    let mut targeting = Vec::with_capacity(base.len() + layers.len());
    if let Some((winner, losers)) = base.split_first() {
        let (g, over) = take(winner);
        for m in g.modules {
            modules.insert(m.key(), m);
        }
        targeting.push(match over {
            Some(why) => winner.over_budget(why, g.revision),
            None => {
                let reason = rollout_note(winner.d, &g.revision);
                winner.decision(TargetingOutcome::Owner, reason, g.revision)
            }
        });
        for l in losers {
            let reason = if l.priority == winner.priority {
                format!(
                    "tie at priority {} with {}, which wins because its namespace/name sorts first",
                    l.priority, winner.d.key
                )
            } else {
                format!(
                    "priority {} is lower than {}'s {}",
                    l.priority, winner.d.key, winner.priority
                )
            };
            targeting.push(l.decision(TargetingOutcome::Lost, reason, String::new()));
        }
    }
    for layer in &layers {
        let (g, over) = take(layer);
        let revision = g.revision;
        let mut added = BTreeSet::new();
        let mut replaced = BTreeSet::new();
        for m in g.modules {
            let name = m.name.clone();
            if modules.insert(m.key(), m).is_some() {
                replaced.insert(name);
            } else {
                added.insert(name);
            }
        }
        let mut reason = Vec::new();
        if !added.is_empty() {
            reason.push(format!(
                "adds {}",
                added.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        if !replaced.is_empty() {
            reason.push(format!(
                "overrides {}",
                replaced.into_iter().collect::<Vec<_>>().join(", ")
            ));
        }
        if let Some(why) = over {
            targeting.push(layer.over_budget(why, revision));
            continue;
        }
        let note = rollout_note(layer.d, &revision);
        if !note.is_empty() {
            reason.push(note);
        }
        targeting.push(layer.decision(TargetingOutcome::Layered, reason.join("; "), revision));
    }
    // onUntarget: Retain. Modules a deployment gave the device before stay as they were,
    // unless a deployment that selects the device now runs a module of the same name.
    for d in retained {
        let Some(c) = current else { break };
        let before = c.targeting.iter().find(|t| t.deployment == d.key);
        let Some(before) = before.filter(|t| t.outcome != TargetingOutcome::Lost) else {
            continue;
        };
        for m in c.modules.iter().filter(|m| m.deployment == d.key) {
            modules.entry(m.key()).or_insert_with(|| m.clone());
        }
        let ranked = Ranked {
            priority: before.priority,
            d,
        };
        targeting.push(
            ranked.decision(
                TargetingOutcome::Retained,
                "no longer selects this device; its modules stay as they were (onUntarget: Retain)"
                    .to_owned(),
                before.revision.clone(),
            ),
        );
    }
    DesiredState::new(modules.into_values().collect(), targeting)
}

/// Says so when a staged rollout has given the device nothing yet. A device that runs an
/// earlier revision gets no note: its decision's revision already says where it is, and a
/// note naming the revision to come would rewrite every such device's desired state at
/// each change of the spec, a write per device before the first wave.
fn rollout_note(d: &CompiledDeployment, revision: &str) -> String {
    if d.staged && revision.is_empty() {
        STAGED_NOTHING_YET.to_owned()
    } else {
        String::new()
    }
}

/// The note of a device a staged rollout has not given anything yet.
const STAGED_NOTHING_YET: &str = "staged rollout: nothing until the rollout moves this device";

/// A deployment with the priority it competes with on this device.
struct Ranked<'a> {
    priority: i32,
    d: &'a CompiledDeployment,
}

impl Ranked<'_> {
    /// The decision for a deployment whose modules would take the device over its budget.
    fn over_budget(&self, why: String, kept: String) -> TargetingDecision {
        let reason = format!(
            "its modules would take the device over its budget ({why}); it keeps what it had here"
        );
        self.decision(TargetingOutcome::OverBudget, reason, kept)
    }

    fn decision(
        &self,
        outcome: TargetingOutcome,
        reason: String,
        revision: String,
    ) -> TargetingDecision {
        TargetingDecision {
            deployment: self.d.key.clone(),
            priority: self.priority,
            layered: self.d.layered,
            outcome,
            reason,
            revision,
        }
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::TargetingOutcome::*;

    use super::*;
    use crate::decide::catalog::compile;
    use crate::decide::catalog::fixtures::{deployment, modules, open_grants};

    fn lib() -> BTreeMap<String, edgefleet_crds::EdgeModuleSpec> {
        modules(&[
            ("a/sensor", "image: sensor:v1"),
            ("a/sensor2", "image: sensor:v2"),
            ("a/filter", "image: filter:v1"),
            ("a/ml", "image: ml:v1"),
            ("b/sensor", "image: sensor:b"),
        ])
    }

    fn dep(
        ns: &str,
        name: &str,
        priority: i32,
        layered: bool,
        selector: &str,
        mods: &str,
    ) -> CompiledDeployment {
        compile(
            &deployment(&format!(
                "metadata: {{name: {name}, namespace: {ns}}}\nspec:\n  priority: {priority}\n  layered: {layered}\n  selector: {selector}\n  modules: {mods}"
            )),
            &lib(),
            &open_grants(&["a", "b"]),
        )
    }

    fn labels(s: &str) -> BTreeMap<String, String> {
        s.split(',')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').expect("k=v");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    /// (module name, owning deployment, image) of a desired state.
    fn owned(d: &DesiredState) -> Vec<(String, String, String)> {
        d.modules
            .iter()
            .map(|m| (m.name.clone(), m.deployment.clone(), m.spec.image.clone()))
            .collect()
    }

    fn outcomes(d: &DesiredState) -> Vec<(String, TargetingOutcome)> {
        d.targeting
            .iter()
            .map(|t| (t.deployment.clone(), t.outcome))
            .collect()
    }

    #[test]
    fn targeting_table() {
        let all = "{}";
        let berlin = "{matchLabels: {site: berlin}}";
        let rpi = "{matchExpressions: [{key: hardware, operator: In, values: [rpi4]}]}";
        struct Case {
            name: &'static str,
            catalog: Vec<CompiledDeployment>,
            labels: &'static str,
            modules: Vec<(&'static str, &'static str, &'static str)>,
            outcomes: Vec<(&'static str, TargetingOutcome)>,
        }
        let cases = vec![
            Case {
                name: "nothing selects the device",
                catalog: vec![dep("a", "base", 0, false, berlin, "[{name: sensor}]")],
                labels: "site=munich",
                modules: vec![],
                outcomes: vec![],
            },
            Case {
                name: "highest priority wins",
                catalog: vec![
                    dep("a", "low", 1, false, all, "[{name: sensor}]"),
                    dep(
                        "a",
                        "high",
                        9,
                        false,
                        rpi,
                        "[{name: sensor, moduleRef: sensor2}]",
                    ),
                ],
                labels: "hardware=rpi4",
                modules: vec![("sensor", "a/high", "sensor:v2")],
                outcomes: vec![("a/high", Owner), ("a/low", Lost)],
            },
            Case {
                name: "a non-matching higher priority does not count",
                catalog: vec![
                    dep("a", "low", 1, false, all, "[{name: sensor}]"),
                    dep(
                        "a",
                        "high",
                        9,
                        false,
                        rpi,
                        "[{name: sensor, moduleRef: sensor2}]",
                    ),
                ],
                labels: "hardware=nuc",
                modules: vec![("sensor", "a/low", "sensor:v1")],
                outcomes: vec![("a/low", Owner)],
            },
            Case {
                name: "ties go to the namespace/name that sorts first, across namespaces",
                catalog: vec![
                    dep("b", "zz", 5, false, all, "[{name: sensor}]"),
                    dep("a", "zz", 5, false, all, "[{name: filter}]"),
                ],
                labels: "",
                modules: vec![("filter", "a/zz", "filter:v1")],
                outcomes: vec![("a/zz", Owner), ("b/zz", Lost)],
            },
            Case {
                name: "layers add and override on top of the base",
                catalog: vec![
                    dep(
                        "a",
                        "base",
                        0,
                        false,
                        all,
                        "[{name: sensor}, {name: filter}]",
                    ),
                    dep(
                        "a",
                        "site",
                        10,
                        true,
                        berlin,
                        "[{name: ml}, {name: sensor, moduleRef: sensor2}]",
                    ),
                ],
                labels: "site=berlin",
                modules: vec![
                    ("filter", "a/base", "filter:v1"),
                    ("ml", "a/site", "ml:v1"),
                    ("sensor", "a/site", "sensor:v2"),
                ],
                outcomes: vec![("a/base", Owner), ("a/site", Layered)],
            },
            Case {
                name: "the higher-priority layer has the last word",
                catalog: vec![
                    dep(
                        "a",
                        "l-high",
                        20,
                        true,
                        all,
                        "[{name: sensor, moduleRef: sensor2}]",
                    ),
                    dep("a", "l-low", 10, true, all, "[{name: sensor}]"),
                ],
                labels: "",
                modules: vec![("sensor", "a/l-high", "sensor:v2")],
                outcomes: vec![("a/l-low", Layered), ("a/l-high", Layered)],
            },
            Case {
                name: "layers apply without a base",
                catalog: vec![dep("a", "layer", 1, true, berlin, "[{name: ml}]")],
                labels: "site=berlin",
                modules: vec![("ml", "a/layer", "ml:v1")],
                outcomes: vec![("a/layer", Layered)],
            },
            Case {
                name: "a layer never competes with the base on priority",
                catalog: vec![
                    dep("a", "base", 100, false, all, "[{name: sensor}]"),
                    dep("a", "layer", -5, true, all, "[{name: filter}]"),
                ],
                labels: "",
                modules: vec![
                    ("filter", "a/layer", "filter:v1"),
                    ("sensor", "a/base", "sensor:v1"),
                ],
                outcomes: vec![("a/base", Owner), ("a/layer", Layered)],
            },
        ];
        for c in cases {
            let got = resolve(&labels(c.labels), &c.catalog, None);
            let want: Vec<_> = c
                .modules
                .iter()
                .map(|(n, d, i)| (n.to_string(), d.to_string(), i.to_string()))
                .collect();
            assert_eq!(owned(&got), want, "{}", c.name);
            let want: Vec<_> = c
                .outcomes
                .iter()
                .map(|(d, o)| (d.to_string(), *o))
                .collect();
            assert_eq!(outcomes(&got), want, "{}", c.name);
            assert_eq!(
                got.revision,
                DesiredState::revision_of(&got.modules),
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn losers_say_why() {
        let catalog = vec![
            dep("a", "x", 5, false, "{}", "[{name: sensor}]"),
            dep("a", "y", 5, false, "{}", "[{name: filter}]"),
            dep("a", "z", 1, false, "{}", "[{name: ml}]"),
        ];
        let got = resolve(&BTreeMap::new(), &catalog, None);
        assert_eq!(
            got.targeting[1].reason,
            "tie at priority 5 with a/x, which wins because its namespace/name sorts first"
        );
        assert_eq!(got.targeting[2].reason, "priority 1 is lower than a/x's 5");
    }

    #[test]
    fn order_of_the_catalog_does_not_matter() {
        let mut catalog = vec![
            dep("a", "base", 0, false, "{}", "[{name: sensor}]"),
            dep("a", "alt", 0, false, "{}", "[{name: filter}]"),
            dep("a", "layer", 3, true, "{}", "[{name: ml}]"),
        ];
        let first = resolve(&BTreeMap::new(), &catalog, None);
        catalog.reverse();
        assert_eq!(resolve(&BTreeMap::new(), &catalog, None), first);
    }

    #[test]
    fn a_held_deployment_keeps_what_devices_had() {
        let good = dep(
            "a",
            "base",
            0,
            false,
            "{matchLabels: {site: berlin}}",
            "[{name: sensor}]",
        );
        let before = resolve(&labels("site=berlin"), &[good], None);
        assert_eq!(owned(&before).len(), 1);

        // The user breaks the deployment: a reference to a missing module.
        let broken = dep(
            "a",
            "base",
            0,
            false,
            "{matchLabels: {site: berlin}}",
            "[{name: sensor, moduleRef: gone}]",
        );
        assert!(matches!(broken.contribution, Contribution::Held { .. }));
        let after = resolve(
            &labels("site=berlin"),
            std::slice::from_ref(&broken),
            Some(&before),
        );
        assert_eq!(after, before, "the device keeps running what it had");

        // A device it never targeted gets nothing from it.
        let other = resolve(&labels("site=berlin"), &[broken], None);
        assert!(other.modules.is_empty() && other.targeting.is_empty());
    }

    /// Attack 2 of issue 12: another team's layer naming its module like ours. It adds a
    /// module of its own; ours stays, untouched.
    #[test]
    fn another_teams_layer_cannot_replace_a_module() {
        let ours = dep("a", "base", 0, false, "{}", "[{name: sensor}]");
        let theirs = dep("b", "hijack", 100, true, "{}", "[{name: sensor}]");
        let state = resolve(&labels(""), &[ours, theirs], None);
        assert_eq!(
            owned(&state),
            [
                (
                    "sensor".to_owned(),
                    "a/base".to_owned(),
                    "sensor:v1".to_owned()
                ),
                (
                    "sensor".to_owned(),
                    "b/hijack".to_owned(),
                    "sensor:b".to_owned()
                ),
            ]
        );
        assert_eq!(state.targeting[1].reason, "adds sensor");
    }

    /// Amplification and the poison pill at the device level: each module fits, together
    /// they don't. The deployment that pushes the device over its budget is held there
    /// (and says why); the owner's modules go on, and the device gets a state it takes.
    #[test]
    fn the_deployment_that_breaks_a_device_budget_is_held_there() {
        let config = |kib: usize| {
            format!(
                "image: app:1\nconfig: [{{name: f, content: '{}'}}, {{name: g, content: '{}'}}, {{name: h, content: '{}'}}, {{name: i, content: '{}'}}]",
                "x".repeat(kib * 256),
                "x".repeat(kib * 256),
                "x".repeat(kib * 256),
                "x".repeat(kib * 256)
            )
        };
        let lib = modules(&[
            ("a/big", &config(200)),
            ("a/big2", &config(200)),
            ("b/big", &config(200)),
        ]);
        let d = |ns: &str, name: &str, layered: bool, mods: &str| {
            compile(
                &deployment(&format!(
                    "metadata: {{name: {name}, namespace: {ns}}}\nspec:\n  layered: {layered}\n  selector: {{}}\n  modules: {mods}"
                )),
                &lib,
                &open_grants(&["a", "b"]),
            )
        };
        let base = d("a", "base", false, "[{name: big}, {name: big2}]");
        let extra = d("b", "extra", true, "[{name: big}]");
        let state = resolve(&labels(""), &[base, extra], None);
        assert_eq!(
            owned(&state)
                .iter()
                .map(|m| m.1.as_str())
                .collect::<Vec<_>>(),
            ["a/base", "a/base"]
        );
        assert_eq!(
            outcomes(&state),
            [
                ("a/base".to_owned(), Owner),
                ("b/extra".to_owned(), OverBudget)
            ]
        );
        assert!(
            state.targeting[1]
                .reason
                .contains("more than a device's 524288")
        );
        assert!(
            limits::check_device(&state.modules).is_ok(),
            "the device takes it"
        );
    }

    /// A held deployment keeps what its devices had, but only what its grants still allow
    /// there: narrowing a grant takes a privilege away even from a broken spec.
    #[test]
    fn a_narrowed_grant_takes_privileges_from_a_held_deployment() {
        let lib = modules(&[
            (
                "a/serial",
                "image: serial:v1\ndevices: [{hostPath: /dev/ttyS0}]",
            ),
            ("a/plain", "image: plain:v1"),
        ]);
        let yaml = |mods: &str| {
            deployment(&format!(
                "metadata: {{name: d, namespace: a}}\nspec:\n  selector: {{}}\n  modules: {mods}"
            ))
        };
        let root = crate::decide::grant::fixtures::grant(
            "root",
            "{namespaces: [a], devices: {}, hostDevices: true}",
        );
        let plain =
            crate::decide::grant::fixtures::grant("plain", "{namespaces: [a], devices: {}}");
        let both = yaml("[{name: serial}, {name: plain}]");
        let before = resolve(
            &labels(""),
            &[compile(&both, &lib, std::slice::from_ref(&root))],
            None,
        );
        assert_eq!(before.modules.len(), 2);

        // The spec breaks, and the grant loses hostDevices.
        let broken = yaml("[{name: serial}, {name: plain}, {name: x, moduleRef: gone}]");
        let held = compile(&broken, &lib, std::slice::from_ref(&plain));
        assert!(matches!(held.contribution, Contribution::Held { .. }));
        let after = resolve(&labels(""), &[held], Some(&before));
        let names: Vec<&str> = after.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            ["plain"],
            "the privileged module is gone, the other kept"
        );
    }

    /// A priority raised beyond the grant holds the deployment; held, it competes with the
    /// priority it had, so the raise outranks nobody.
    #[test]
    fn a_refused_priority_outranks_nobody() {
        let grants = [crate::decide::grant::fixtures::grant(
            "g",
            "{namespaces: [a, b], devices: {}, priority: {min: 0, max: 10}}",
        )];
        let d = |ns: &str, priority: i32| {
            compile(
                &deployment(&format!(
                    "metadata: {{name: base, namespace: {ns}}}\nspec:\n  priority: {priority}\n  selector: {{}}\n  modules: [{{name: sensor}}]"
                )),
                &lib(),
                &grants,
            )
        };
        let before = resolve(&labels(""), &[d("a", 5)], None);
        let raised = d("a", 1000000);
        assert!(matches!(raised.contribution, Contribution::Held { .. }));
        let after = resolve(&labels(""), &[raised, d("b", 7)], Some(&before));
        assert_eq!(
            outcomes(&after),
            [("b/base".to_owned(), Owner), ("a/base".to_owned(), Lost)]
        );
        assert_eq!(after.targeting[1].priority, 5, "it competed at 5");
    }

    #[test]
    fn untargeted_devices_lose_or_retain_the_modules() {
        let retaining = |yes: bool| {
            let rollout = if yes {
                "\n  rollout: {onUntarget: Retain}"
            } else {
                ""
            };
            compile(
                &deployment(&format!(
                    "metadata: {{name: base, namespace: a}}\nspec:\n  selector: {{matchLabels: {{site: berlin}}}}\n  modules: [{{name: sensor}}]{rollout}"
                )),
                &lib(),
                &open_grants(&["a"]),
            )
        };
        for retain in [false, true] {
            let d = retaining(retain);
            let before = resolve(&labels("site=berlin"), std::slice::from_ref(&d), None);
            let moved = resolve(
                &labels("site=munich"),
                std::slice::from_ref(&d),
                Some(&before),
            );
            if retain {
                assert_eq!(owned(&moved), owned(&before), "the module stays");
                assert_eq!(outcomes(&moved), [("a/base".to_owned(), Retained)]);
                // And stays on every later pass.
                let later = resolve(
                    &labels("site=munich"),
                    std::slice::from_ref(&d),
                    Some(&moved),
                );
                assert_eq!(later, moved);
            } else {
                assert!(moved.modules.is_empty() && moved.targeting.is_empty());
            }
        }
    }

    struct OneSnapshot(String, Vec<ResolvedModule>);

    impl Snapshots for OneSnapshot {
        fn modules(&self, _: &str, revision: &str) -> Option<Vec<ResolvedModule>> {
            (revision == self.0).then(|| self.1.clone())
        }
    }

    /// The test library with module `a/app` of `image`.
    fn lib_with_app(image: &str) -> BTreeMap<String, edgefleet_crds::EdgeModuleSpec> {
        let mut lib = lib();
        lib.insert(
            "a/app".into(),
            serde_yaml::from_str(&format!("image: {image}")).expect("spec"),
        );
        lib
    }

    #[test]
    fn a_staged_deployment_gives_each_device_the_revision_it_was_moved_to() {
        let staged = |image: &str| {
            let lib = lib_with_app(image);
            compile(
                &deployment(
                    "metadata: {name: app, namespace: a}\nspec:\n  modules: [{name: app}]\n  rollout: {maxUnavailable: 1}",
                ),
                &lib,
                &open_grants(&["a"]),
            )
        };
        let (v1, v2) = (staged("app:v1"), staged("app:v2"));
        assert_ne!(v1.revision, v2.revision);
        let Contribution::Fresh {
            modules: v1_modules,
            ..
        } = &v1.contribution
        else {
            panic!("v1 compiles");
        };
        let snapshots = OneSnapshot(v1.revision.clone(), v1_modules.clone());
        // The desired state `spec` gives a device moved to `moved` that has `current`.
        let under =
            |spec: &CompiledDeployment, moved: Option<&str>, current: Option<&DesiredState>| {
                let rollouts: Rollouts = moved
                    .map(|r| ("a/app".to_owned(), r.to_owned()))
                    .into_iter()
                    .collect();
                resolve_staged(
                    &BTreeMap::new(),
                    std::slice::from_ref(spec),
                    current,
                    &StagedRevisions {
                        rollouts: &rollouts,
                        snapshots: &snapshots,
                    },
                )
            };
        let at = |moved: Option<&str>, current: Option<&DesiredState>| under(&v2, moved, current);
        let image = |d: &DesiredState| {
            d.modules
                .iter()
                .map(|m| m.spec.image.clone())
                .collect::<Vec<_>>()
        };
        // Not moved yet, never had it: nothing (it waits for its wave).
        let fresh_device = at(None, None);
        assert!(fresh_device.modules.is_empty());
        assert!(
            fresh_device.targeting[0]
                .reason
                .contains(STAGED_NOTHING_YET)
        );
        // Moved to v1 (kept as a snapshot): v1, although the spec says v2.
        let on_v1 = at(Some(&v1.revision), None);
        assert_eq!(image(&on_v1), ["app:v1"]);
        assert_eq!(on_v1.targeting[0].revision, v1.revision);
        // Not moved to v2: keeps what it has.
        assert_eq!(image(&at(None, Some(&on_v1))), ["app:v1"]);
        // Word for word: a new spec rewrites no desired state of a device not moved yet.
        let up_to_date = under(&v1, Some(&v1.revision), None);
        assert_eq!(at(None, Some(&up_to_date)), up_to_date);
        // Moved to v2: v2.
        let on_v2 = at(Some(&v2.revision), Some(&on_v1));
        assert_eq!(image(&on_v2), ["app:v2"]);
        assert_eq!(on_v2.targeting[0].revision, v2.revision);
        assert!(on_v2.targeting[0].reason.is_empty());
    }

    /// A deployment made staged while its all-at-once change is still going on (or before
    /// its status says Complete): a device the change reached stays on it, though the
    /// current revision is still the older one, and the planner counts it there. Sent back
    /// to the current revision, it would restart its modules now and again in its wave.
    #[test]
    fn a_device_an_all_at_once_change_reached_keeps_it_when_the_deployment_becomes_staged() {
        let lib = lib_with_app;
        let spec = |rollout: &str| {
            deployment(&format!(
                "metadata: {{name: app, namespace: a}}\nspec:\n  modules: [{{name: app}}]\n  {rollout}"
            ))
        };
        let v1 = compile(&spec("priority: 0"), &lib("app:v1"), &open_grants(&["a"]));
        let v2 = compile(&spec("priority: 0"), &lib("app:v2"), &open_grants(&["a"]));
        let mut staged = compile(
            &spec("rollout: {maxUnavailable: 1}"),
            &lib("app:v2"),
            &open_grants(&["a"]),
        );
        staged.current = Some(v1.revision.clone());
        assert_eq!(staged.revision, v2.revision, "settings are no revision");
        let Contribution::Fresh { modules: kept, .. } = &v1.contribution else {
            panic!("v1 compiles");
        };
        let snapshots = OneSnapshot(v1.revision.clone(), kept.clone());
        let no_moves = Rollouts::new();
        let under = |d: &CompiledDeployment, current: Option<&DesiredState>| {
            resolve_staged(
                &BTreeMap::new(),
                std::slice::from_ref(d),
                current,
                &StagedRevisions {
                    rollouts: &no_moves,
                    snapshots: &snapshots,
                },
            )
        };
        let reached = resolve(&BTreeMap::new(), std::slice::from_ref(&v2), None);
        let not_yet = resolve(&BTreeMap::new(), std::slice::from_ref(&v1), None);
        // Reached: it keeps v2, word for word (no write).
        assert_eq!(under(&staged, Some(&reached)), reached);
        assert_eq!(
            staged.staged_at(&no_moves, Some(&reached.targeting)),
            Some(v2.revision.as_str())
        );
        // Not reached yet: the current revision, v1, until its wave.
        assert_eq!(under(&staged, Some(&not_yet)), not_yet);
        assert_eq!(
            staged.staged_at(&no_moves, Some(&not_yet.targeting)),
            Some(v1.revision.as_str())
        );
    }

    /// A kept revision is judged by today's grants (issue 12's least privilege): a grant
    /// narrowed after v1 was kept takes v1's privileged module off a device moved back to
    /// v1, as it does a held deployment's, and the route to it from the module that stays
    /// (the agent refuses a desired state with a route to a module it does not run).
    #[test]
    fn a_narrowed_grant_narrows_a_kept_revision_too() {
        let grant = |host_network: bool| {
            vec![crate::decide::grant::fixtures::grant(
                "a",
                &format!(
                    "{{namespaces: [a], devices: {{}}, priority: {{min: 0, max: 10}}, hostNetwork: {host_network}}}"
                ),
            )]
        };
        let compiled = |image: &str,
                        host_network: bool,
                        grants: Vec<crate::decide::grant::Grant>| {
            let mut lib = lib();
            lib.insert(
                "a/app".into(),
                serde_yaml::from_str(&format!("image: {image}\nhostNetwork: {host_network}"))
                    .expect("spec"),
            );
            lib.insert(
                "a/sensor".into(),
                serde_yaml::from_str("image: sensor:v1").expect("spec"),
            );
            compile(
                &deployment(
                    "metadata: {name: app, namespace: a}\nspec:\n  modules:\n  - name: app\n  - name: sensor\n    routes: [{output: out, to: {module: app, input: in}}, {output: out, to: {upstream: up}}]\n  rollout: {maxUnavailable: 1}",
                ),
                &lib,
                &grants,
            )
        };
        let v1 = compiled("app:v1", true, grant(true));
        let Contribution::Fresh { modules, .. } = &v1.contribution else {
            panic!("v1 is granted");
        };
        let snapshots = OneSnapshot(v1.revision.clone(), modules.clone());
        let rollouts = Rollouts::from_iter([("a/app".to_owned(), v1.revision.clone())]);
        let on_v1 = |v2: &CompiledDeployment| {
            resolve_staged(
                &BTreeMap::new(),
                std::slice::from_ref(v2),
                None,
                &StagedRevisions {
                    rollouts: &rollouts,
                    snapshots: &snapshots,
                },
            )
        };
        let still_granted = on_v1(&compiled("app:v2", false, grant(true)));
        assert_eq!(still_granted.modules.len(), 2, "v1 runs while granted");
        assert_eq!(still_granted.modules[1].routes.len(), 2);
        let narrowed = compiled("app:v2", false, grant(false));
        assert!(matches!(narrowed.contribution, Contribution::Fresh { .. }));
        let got = on_v1(&narrowed);
        let names: Vec<&str> = got.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["sensor"]);
        let routes = &got.modules[0].routes;
        assert!(
            routes.len() == 1 && routes[0].to.upstream.as_deref() == Some("up"),
            "only the route upstream stays: {routes:?}"
        );
    }

    /// A device's rollout entry lasts while its deployment is staged and gives the device
    /// something. One kept after the deployment stopped being staged would, when it is
    /// made staged again, send the device back to the earlier staged period's revision.
    #[test]
    fn a_move_of_an_earlier_staged_period_is_forgotten() {
        let spec = |rollout: &str| {
            compile(
                &deployment(&format!(
                    "metadata: {{name: app, namespace: a}}\nspec:\n  modules: [{{name: app}}]\n  {rollout}"
                )),
                &lib_with_app("app:v1"),
                &open_grants(&["a"]),
            )
        };
        let staged = spec("rollout: {maxUnavailable: 1}");
        let at_once = spec("priority: 0");
        let rollouts = Rollouts::from_iter([("a/app".to_owned(), "0123456789abcdef".to_owned())]);
        let forgotten = |catalog: &[CompiledDeployment]| {
            let desired = resolve(&BTreeMap::new(), catalog, None);
            forgotten_rollouts(&rollouts, catalog, &desired)
        };
        assert!(forgotten(std::slice::from_ref(&staged)).is_empty());
        assert_eq!(forgotten(std::slice::from_ref(&at_once)), ["a/app"]);
        assert_eq!(forgotten(&[]), ["a/app"], "the deployment is gone");
    }
}
