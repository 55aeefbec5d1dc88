//! Judging a deployment against its namespace's EdgeGrants. Pure: the grants come in as
//! data, so the whole tenancy rule is unit-tested here and the reconcilers only look up.
//!
//! Two answers for each deployment: its *reach* (the devices any grant naming its
//! namespace covers: it never touches a device outside them, held or not) and whether a
//! grant *admits* its spec (priority in range, every module asking only for what that
//! grant allows). Admitted, it reaches the devices of the grants that admit it; refused,
//! it is held with every grant's reason.

use std::collections::BTreeMap;

use edgefleet_crds::{EdgeGrantSpec, ResolvedModule};
use thiserror::Error;

use crate::decide::selector::Selector;

/// A grant as targeting uses it: its name, spec and parsed device selector (`None` when
/// the selector does not parse: such a grant covers no device).
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub name: String,
    pub spec: EdgeGrantSpec,
    pub devices: Option<Selector>,
}

impl Grant {
    pub fn new(name: &str, spec: EdgeGrantSpec) -> Self {
        Grant {
            name: name.to_owned(),
            devices: Selector::parse(&spec.devices).ok(),
            spec,
        }
    }

    fn names(&self, namespace: &str) -> bool {
        self.spec.namespaces.iter().any(|n| n == namespace)
    }

    /// Whether this grant covers a device with these labels.
    pub fn covers(&self, labels: &BTreeMap<String, String>) -> bool {
        self.devices.as_ref().is_some_and(|s| s.matches(labels))
    }

    /// Why this grant does not admit a deployment of `priority` running `modules`; `None`
    /// when it does.
    fn refusal(&self, priority: i32, modules: &[ResolvedModule]) -> Option<String> {
        let g = &self.spec;
        if self.devices.is_none() {
            return Some("its device selector is invalid".to_owned());
        }
        if !g.priority.contains(priority) {
            return Some(format!(
                "priority {priority} is outside {}..{}",
                g.priority.min, g.priority.max
            ));
        }
        modules.iter().find_map(|m| self.module_refusal(m))
    }

    /// Why this grant does not let one module run; `None` when it does.
    fn module_refusal(&self, m: &ResolvedModule) -> Option<String> {
        let (g, s) = (&self.spec, &m.spec);
        if s.host_network && !g.host_network {
            return Some(format!("module {:?} asks for hostNetwork", m.name));
        }
        if !s.devices.is_empty() && !g.host_devices {
            return Some(format!("module {:?} asks for host devices", m.name));
        }
        if !g.images.is_empty() && !g.images.iter().any(|p| image_under(&s.image, p)) {
            return Some(format!(
                "module {:?}: image {:?} is not under {}",
                m.name,
                s.image,
                g.images.join(", ")
            ));
        }
        None
    }

    /// Whether this grant lets a module run on a device with these labels: what a held
    /// deployment keeps is judged again, so narrowing a grant takes privileges away at once.
    pub fn allows(&self, labels: &BTreeMap<String, String>, m: &ResolvedModule) -> bool {
        self.covers(labels) && self.module_refusal(m).is_none()
    }
}

/// Whether `image` is under the grant's image `prefix`, at a boundary of the reference:
/// `lab/team-a` allows `lab/team-a/app:1` but not `lab/team-ab/app:1`, and a host alone
/// (`registry`) does not allow another port of it (`registry:5000/app`). A prefix that
/// names a repository (`lab/team-a/app`) allows its tags and digests.
fn image_under(image: &str, prefix: &str) -> bool {
    let Some(rest) = image.strip_prefix(prefix) else {
        return false;
    };
    let names_a_path = prefix.contains('/');
    rest.is_empty()
        || prefix.ends_with('/')
        || rest.starts_with('/')
        || (names_a_path && (rest.starts_with(':') || rest.starts_with('@')))
}

/// What a deployment's namespace is granted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GrantProblem {
    #[error(
        "no EdgeGrant names namespace {0:?}: an administrator grants namespaces devices and privileges"
    )]
    NoGrant(String),
    #[error("no EdgeGrant admits it: {}", .0.join("; "))]
    NotGranted(Vec<String>),
}

/// The grants naming `namespace`: a deployment there never touches a device outside them.
pub fn reach(namespace: &str, grants: &[Grant]) -> Vec<Grant> {
    grants
        .iter()
        .filter(|g| g.names(namespace) && g.devices.is_some())
        .cloned()
        .collect()
}

/// The device selectors of the grants that admit a deployment in `namespace` at
/// `priority` running `modules`, or why none does.
pub fn admit(
    namespace: &str,
    priority: i32,
    modules: &[ResolvedModule],
    grants: &[Grant],
) -> Result<Vec<Selector>, GrantProblem> {
    let mut admitting = Vec::new();
    let mut refusals = Vec::new();
    for g in grants.iter().filter(|g| g.names(namespace)) {
        match (g.refusal(priority, modules), &g.devices) {
            (None, Some(devices)) => admitting.push(devices.clone()),
            (Some(why), _) => refusals.push(format!("grant {}: {why}", g.name)),
            (None, None) => {}
        }
    }
    match (admitting.is_empty(), refusals.is_empty()) {
        (false, _) => Ok(admitting),
        (true, true) => Err(GrantProblem::NoGrant(namespace.to_owned())),
        (true, false) => Err(GrantProblem::NotGranted(refusals)),
    }
}

/// Whether some grant naming `namespace` lets module `m` run (its capabilities and image;
/// which devices is the deployment's business): what admission asks of an EdgeModule.
pub fn admit_module(
    namespace: &str,
    m: &ResolvedModule,
    grants: &[Grant],
) -> Result<(), GrantProblem> {
    let naming: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.names(namespace) && g.devices.is_some())
        .collect();
    if naming.is_empty() {
        return Err(GrantProblem::NoGrant(namespace.to_owned()));
    }
    let refusals: Vec<String> = naming
        .iter()
        .map(|g| {
            g.module_refusal(m)
                .map(|why| format!("grant {}: {why}", g.name))
        })
        .collect::<Option<_>>()
        .unwrap_or_default();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(GrantProblem::NotGranted(refusals))
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;

    /// A grant from inline YAML, as an administrator writes its spec.
    pub fn grant(name: &str, yaml: &str) -> Grant {
        let spec = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad grant: {e}"));
        Grant::new(name, spec)
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::grant;
    use super::*;

    fn module(yaml: &str) -> ResolvedModule {
        serde_yaml::from_str(&format!(
            "{{name: m, deployment: team-a/d, moduleRef: team-a/m, {yaml}}}"
        ))
        .expect("module")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_namespace_without_a_grant_reaches_nothing() {
        let other = grant("b", "{namespaces: [team-b], devices: {}}");
        let plain = module("image: app:1");
        assert_eq!(
            admit("team-a", 0, &[plain], std::slice::from_ref(&other)),
            Err(GrantProblem::NoGrant("team-a".into()))
        );
        assert!(reach("team-a", &[other]).is_empty());
    }

    #[test]
    fn host_network_devices_and_images_need_the_grant() {
        let plain = grant(
            "plain",
            "{namespaces: [team-a], devices: {}, images: [lab/team-a/]}",
        );
        let cases = [
            ("image: lab/team-a/app:1, hostNetwork: true", "hostNetwork"),
            (
                "image: lab/team-a/app:1, devices: [{hostPath: /dev/ttyS0}]",
                "host devices",
            ),
            ("image: lab/team-b/app:1", "is not under lab/team-a/"),
        ];
        for (m, why) in cases {
            let err = admit("team-a", 0, &[module(m)], std::slice::from_ref(&plain))
                .expect_err(m)
                .to_string();
            assert!(err.contains(why), "{err}");
            assert!(err.contains("grant plain"), "{err}");
        }
        let root = grant(
            "root",
            "{namespaces: [team-a], devices: {}, hostNetwork: true, hostDevices: true}",
        );
        for (m, _) in cases {
            assert!(admit("team-a", 0, &[module(m)], std::slice::from_ref(&root)).is_ok());
        }
    }

    /// An image prefix matches at a boundary of the reference, so a team granted
    /// `lab/team-a` can't run `lab/team-ab`'s images, nor a host's other port.
    #[test]
    fn image_prefixes_end_at_a_boundary() {
        let allowed = [
            ("lab/team-a/app:1", "lab/team-a"),
            ("lab/team-a/app:1", "lab/team-a/"),
            ("lab/team-a/app:1", "lab/team-a/app"),
            ("lab/team-a/app@sha256:00", "lab/team-a/app"),
            ("lab/team-a", "lab/team-a"),
            ("registry:5000/app", "registry:5000"),
        ];
        for (image, prefix) in allowed {
            assert!(image_under(image, prefix), "{image} under {prefix}");
        }
        let refused = [
            ("lab/team-ab/app:1", "lab/team-a"),
            ("lab/team-a/application:1", "lab/team-a/app"),
            ("registry:5000/app", "registry"),
            ("registry.evil/app", "registry"),
            ("other/lab/team-a/app", "lab/team-a"),
        ];
        for (image, prefix) in refused {
            assert!(!image_under(image, prefix), "{image} not under {prefix}");
        }
    }

    #[test]
    fn priority_must_be_in_range() {
        let g = grant(
            "g",
            "{namespaces: [team-a], devices: {}, priority: {min: 10, max: 20}}",
        );
        let m = [module("image: app:1")];
        assert!(admit("team-a", 15, &m, std::slice::from_ref(&g)).is_ok());
        let err = admit("team-a", 1000000, &m, std::slice::from_ref(&g)).expect_err("too high");
        assert!(
            err.to_string()
                .contains("priority 1000000 is outside 10..20")
        );
        // The default range is exactly 0.
        let zero = grant("z", "{namespaces: [team-a], devices: {}}");
        assert!(admit("team-a", 1, &m, std::slice::from_ref(&zero)).is_err());
    }

    #[test]
    fn admitting_grants_give_their_devices_and_others_only_reach() {
        let site_a = grant(
            "a",
            "{namespaces: [team-a], devices: {matchLabels: {site: a}}}",
        );
        let site_b_root = grant(
            "b",
            "{namespaces: [team-a], devices: {matchLabels: {site: b}}, hostNetwork: true}",
        );
        let grants = [site_a, site_b_root];
        let host = [module("image: app:1, hostNetwork: true")];
        let admitted = admit("team-a", 0, &host, &grants).expect("grant b admits it");
        assert_eq!(admitted.len(), 1);
        assert!(admitted[0].matches(&labels(&[("site", "b")])));
        assert!(!admitted[0].matches(&labels(&[("site", "a")])));
        let reach = reach("team-a", &grants);
        assert_eq!(reach.len(), 2, "held, it still keeps devices on both sites");
    }

    #[test]
    fn an_invalid_grant_selector_covers_no_device() {
        let bad = grant(
            "bad",
            "{namespaces: [team-a], devices: {matchLabels: {'not a key': x}}}",
        );
        let err = admit(
            "team-a",
            0,
            &[module("image: app:1")],
            std::slice::from_ref(&bad),
        )
        .expect_err("refused");
        assert!(err.to_string().contains("device selector is invalid"));
        assert!(reach("team-a", &[bad]).is_empty());
    }
}
