//! Sanity checks on what an agent reported. The schema rejects wrong types and values at
//! admission; these catch what is well-formed but makes no sense against the desired state.
//! A device with such a status is flagged (StatusValid=False and an Event) and does not
//! count as ready anywhere. Pure.

use std::collections::BTreeSet;

use edgefleet_crds::{DesiredState, EdgeDeviceStatus};

pub fn problems(status: &EdgeDeviceStatus, desired: Option<&DesiredState>) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    // Until the agent has applied the current desired state it may still report modules
    // that are on their way out; once it claims the revision, it may not.
    let claims_current =
        desired.filter(|d| status.applied_revision.as_deref() == Some(d.revision.as_str()));
    // A module is `namespace/name` (an agent older than module namespaces reports none).
    for m in &status.modules {
        if !seen.insert(m.key()) {
            out.push(format!("module {:?} is reported more than once", m.key()));
        }
        if let Some(d) = claims_current
            && !d.modules.iter().any(|dm| {
                dm.name == m.name && (m.namespace.is_empty() || dm.namespace() == m.namespace)
            })
        {
            out.push(format!("module {:?} is reported but not desired", m.key()));
        }
    }
    for (field, rev) in [
        ("appliedRevision", &status.applied_revision),
        ("rejectedRevision", &status.rejected_revision),
    ] {
        if let Some(r) = rev
            && !(r.len() == 16 && r.chars().all(|c| c.is_ascii_hexdigit()))
        {
            out.push(format!("{field} {r:?} is not a revision"));
        }
    }
    if let Some(mr) = &status.modules_ready {
        let ok = mr
            .split_once('/')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            .is_some_and(|(a, b)| a <= b);
        if !ok {
            out.push(format!("modulesReady {mr:?} is not ready/total"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(yaml: &str) -> EdgeDeviceStatus {
        serde_yaml::from_str(yaml).expect("status fixture")
    }

    #[test]
    fn a_sane_status_has_no_problems() {
        let s = status(
            "appliedRevision: 0123456789abcdef\nmodulesReady: 1/1\nmodules: [{name: a, runtimeStatus: running}]",
        );
        assert!(problems(&s, None).is_empty());
    }

    #[test]
    fn garbage_is_named() {
        let desired = DesiredState::default();
        let s = status(
            "appliedRevision: lol\nmodulesReady: 5/2\nmodules: [{name: a, runtimeStatus: running}, {name: a, runtimeStatus: failed}]",
        );
        let p = problems(&s, Some(&desired));
        assert_eq!(
            p,
            [
                "module \"a\" is reported more than once",
                "appliedRevision \"lol\" is not a revision",
                "modulesReady \"5/2\" is not ready/total",
            ]
        );
    }

    #[test]
    fn undesired_modules_count_only_once_the_revision_is_claimed() {
        let desired = DesiredState::new(vec![], vec![]);
        let stale = status(
            "appliedRevision: 0123456789abcdef\nmodules: [{name: old, runtimeStatus: running}]",
        );
        assert!(
            problems(&stale, Some(&desired)).is_empty(),
            "still catching up"
        );
        let claimed = status(&format!(
            "appliedRevision: {}\nmodules: [{{name: old, runtimeStatus: running}}]",
            desired.revision
        ));
        assert_eq!(
            problems(&claimed, Some(&desired)),
            ["module \"old\" is reported but not desired"]
        );
    }

    /// Two teams' modules of one name are two modules, not one reported twice.
    #[test]
    fn one_name_in_two_namespaces_is_two_modules() {
        let s = status(
            "modules: [{namespace: a, name: filter, runtimeStatus: running}, {namespace: b, name: filter, runtimeStatus: running}]",
        );
        assert!(problems(&s, None).is_empty());
    }
}
