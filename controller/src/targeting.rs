//! Which deployments apply to a device, and the device's resulting desired state.
//!
//! Rules (as in Azure IoT Edge's automatic deployments):
//! - Among the non-layered deployments that select the device, the highest `priority`
//!   wins and owns the device's base module set. Equal priorities are broken by
//!   `namespace/name`, ascending: the first wins. The rule depends only on names, so
//!   deleting and re-creating a deployment (as GitOps tools do) never changes the winner.
//! - Layered deployments that select the device apply on top of the base, in ascending
//!   priority (then `namespace/name`): each adds its modules, and a module with the same name
//!   as one already there replaces it, so the highest-priority layer has the last word.
//!   Layers apply even when no base deployment selects the device.
//! - Every selecting deployment appears in the device's `targeting` list: the owner, each
//!   layer, and each loser with the reason it lost.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_crds::{DesiredState, ResolvedModule, TargetingDecision, TargetingOutcome};

use crate::catalog::{CompiledDeployment, Contribution};

impl CompiledDeployment {
    /// Whether this deployment selects the device. A held deployment selects exactly the
    /// devices it already contributed to.
    fn selects(&self, labels: &BTreeMap<String, String>, current: Option<&DesiredState>) -> bool {
        match &self.contribution {
            Contribution::Fresh { selector, .. } => selector.matches(labels),
            Contribution::Held { .. } => current.is_some_and(|c| {
                c.targeting
                    .iter()
                    .any(|t| t.deployment == self.key && t.outcome != TargetingOutcome::Lost)
            }),
        }
    }

    fn modules_for<'a>(&'a self, current: Option<&'a DesiredState>) -> Vec<&'a ResolvedModule> {
        match &self.contribution {
            Contribution::Fresh { modules, .. } => modules.iter().collect(),
            Contribution::Held { .. } => current
                .map(|c| {
                    c.modules
                        .iter()
                        .filter(|m| m.deployment == self.key)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

/// The desired state of one device with these labels. `current` is the device's present
/// desired state, read only for held deployments.
pub fn resolve(
    labels: &BTreeMap<String, String>,
    catalog: &[CompiledDeployment],
    current: Option<&DesiredState>,
) -> DesiredState {
    let mut base: Vec<&CompiledDeployment> = Vec::new();
    let mut layers: Vec<&CompiledDeployment> = Vec::new();
    for d in catalog.iter().filter(|d| d.selects(labels, current)) {
        if d.layered {
            layers.push(d);
        } else {
            base.push(d);
        }
    }
    base.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.key.cmp(&b.key)));
    layers.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.key.cmp(&b.key)));

    let mut modules: BTreeMap<&str, &ResolvedModule> = BTreeMap::new();
    let mut targeting = Vec::with_capacity(base.len() + layers.len());
    if let Some((winner, losers)) = base.split_first() {
        for m in winner.modules_for(current) {
            modules.insert(&m.name, m);
        }
        targeting.push(decision(winner, TargetingOutcome::Owner, String::new()));
        for l in losers {
            let reason = if l.priority == winner.priority {
                format!(
                    "tie at priority {} with {}, which wins because its namespace/name sorts first",
                    l.priority, winner.key
                )
            } else {
                format!(
                    "priority {} is lower than {}'s {}",
                    l.priority, winner.key, winner.priority
                )
            };
            targeting.push(decision(l, TargetingOutcome::Lost, reason));
        }
    }
    for layer in layers {
        let mut added = BTreeSet::new();
        let mut replaced = BTreeSet::new();
        for m in layer.modules_for(current) {
            if modules.insert(&m.name, m).is_some() {
                replaced.insert(m.name.as_str());
            } else {
                added.insert(m.name.as_str());
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
        targeting.push(decision(
            layer,
            TargetingOutcome::Layered,
            reason.join("; "),
        ));
    }
    DesiredState::new(modules.into_values().cloned().collect(), targeting)
}

fn decision(
    d: &CompiledDeployment,
    outcome: TargetingOutcome,
    reason: String,
) -> TargetingDecision {
    TargetingDecision {
        deployment: d.key.clone(),
        priority: d.priority,
        layered: d.layered,
        outcome,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::TargetingOutcome::*;

    use super::*;
    use crate::catalog::compile;
    use crate::catalog::fixtures::{deployment, modules};

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
}
