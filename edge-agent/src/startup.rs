//! startupOrder: a module starts only once every module of a lower order runs. Modules of
//! one order start together. A module already started stays: a lower module that crashes
//! later does not take the modules above it down with it.

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_crds::{DesiredStatus, ResolvedModule};

/// The plan for one pass: which modules (keys) may have a manifest now, and the lowest
/// order still being waited for (if any).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub admitted: BTreeSet<String>,
    pub waiting_for: Option<u32>,
}

/// `placed` are the modules (keys) that have a manifest already; `up` says whether a module
/// runs (or, for a run-to-completion module, finished successfully), by key.
pub fn plan(
    modules: &[ResolvedModule],
    placed: &BTreeSet<String>,
    up: impl Fn(&str) -> bool,
) -> Plan {
    let mut orders: BTreeMap<u32, Vec<&ResolvedModule>> = BTreeMap::new();
    for m in modules
        .iter()
        .filter(|m| m.desired_status == DesiredStatus::Running)
    {
        orders.entry(m.spec.startup_order).or_default().push(m);
    }
    let mut plan = Plan::default();
    for (order, group) in orders {
        let open = plan.waiting_for.is_none();
        for m in &group {
            if open || placed.contains(&m.key()) {
                plan.admitted.insert(m.key());
            }
        }
        if open && !group.iter().all(|m| up(&m.key())) {
            plan.waiting_for = Some(order);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(name: &str, order: u32, status: &str) -> ResolvedModule {
        serde_json::from_value(json!({
            "name": name, "deployment": "ns/d", "moduleRef": format!("ns/{name}"),
            "image": "app:1", "startupOrder": order, "desiredStatus": status,
        }))
        .expect("module")
    }

    /// The admitted modules' names (all in namespace `ns`).
    fn names(p: &Plan) -> Vec<&str> {
        p.admitted
            .iter()
            .filter_map(|k| k.strip_prefix("ns/"))
            .collect()
    }

    #[test]
    fn starts_orders_one_after_another() {
        let modules = [
            m("db", 0, "running"),
            m("cache", 0, "running"),
            m("api", 10, "running"),
            m("ui", 20, "running"),
            m("old", 0, "stopped"),
        ];
        let none = BTreeSet::new();
        let cases: [(&[&str], Vec<&str>, Option<u32>); 4] = [
            (&[], vec!["cache", "db"], Some(0)),
            (&["db"], vec!["cache", "db"], Some(0)),
            (&["db", "cache"], vec!["api", "cache", "db"], Some(10)),
            (
                &["db", "cache", "api", "ui"],
                vec!["api", "cache", "db", "ui"],
                None,
            ),
        ];
        for (up, admitted, waiting) in cases {
            let p = plan(&modules, &none, |k| {
                up.iter().any(|n| k == format!("ns/{n}"))
            });
            assert_eq!(names(&p), admitted, "up: {up:?}");
            assert_eq!(p.waiting_for, waiting, "up: {up:?}");
        }
    }

    #[test]
    fn started_modules_stay_when_a_lower_one_fails() {
        let modules = [
            m("db", 0, "running"),
            m("api", 10, "running"),
            m("ui", 20, "running"),
        ];
        let placed: BTreeSet<String> = ["ns/db", "ns/api", "ns/ui"].map(String::from).into();
        let p = plan(&modules, &placed, |k| k != "ns/db");
        assert_eq!(names(&p), ["api", "db", "ui"]);
        assert_eq!(p.waiting_for, Some(0));
    }

    #[test]
    fn no_modules_no_plan() {
        assert_eq!(plan(&[], &BTreeSet::new(), |_| true), Plan::default());
    }
}
