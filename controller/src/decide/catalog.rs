//! Compiles EdgeDeployments into what targeting needs: a parsed selector and the fully
//! resolved modules (EdgeModule spec plus the deployment's overrides). Compiling once per
//! change of any deployment or module, not once per device, keeps a fleet-wide resolve cheap.
//! A deployment that does not compile is *held*: see [`Contribution::Held`].

use std::collections::{BTreeMap, BTreeSet};

use edgefleet_crds::names::{NameError, check_dns_label, check_env_name, check_image};
use edgefleet_crds::route::Destination;
use edgefleet_crds::{
    DeploymentModule, DeviceSelector, EdgeDeployment, EdgeModuleSpec, ModuleOverrides, OnUntarget,
    ResolvedModule, Rollouts, TargetingDecision, TargetingOutcome,
};
use edgefleet_crds::{deployment, limits};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::decide::grant::{self, Grant, GrantProblem};
use crate::decide::selector::{Selector, SelectorError};

/// What is wrong with a deployment's spec. Each one is reported on the deployment (Stalled
/// condition and a Warning Event) and never stops other deployments.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SpecProblem {
    #[error("invalid selector: {0}")]
    InvalidSelector(#[from] SelectorError),
    #[error("module {module:?} refers to EdgeModule {namespace}/{reference}, which does not exist")]
    ModuleNotFound {
        module: String,
        namespace: String,
        reference: String,
    },
    #[error("module name {0:?} appears more than once")]
    DuplicateModule(String),
    #[error("invalid module name: {0}")]
    InvalidModuleName(NameError),
    #[error("module {module:?}: invalid override: {error}")]
    InvalidOverride { module: String, error: NameError },
    #[error("module {module:?} can't run on a device: {why}")]
    OverLimit { module: String, why: String },
    #[error("module {module:?}: {why}")]
    InvalidRoute { module: String, why: String },
    #[error(
        "its name is {0} characters long; at most {max} are allowed, since it labels the ControllerRevisions that keep its revisions",
        max = deployment::MAX_NAME
    )]
    NameTooLong(usize),
    #[error(transparent)]
    Grant(#[from] GrantProblem),
}

impl SpecProblem {
    /// A bounded reason for conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SpecProblem::InvalidSelector(_) => "InvalidSelector",
            SpecProblem::ModuleNotFound { .. } => "ModuleNotFound",
            SpecProblem::DuplicateModule(_) => "DuplicateModule",
            SpecProblem::InvalidModuleName(_) => "InvalidModuleName",
            SpecProblem::InvalidOverride { .. } => "InvalidOverride",
            SpecProblem::OverLimit { .. } => "ModuleOverLimit",
            SpecProblem::InvalidRoute { .. } => "InvalidRoute",
            SpecProblem::NameTooLong(_) => "NameTooLong",
            SpecProblem::Grant(GrantProblem::NoGrant(_)) => "NoGrant",
            SpecProblem::Grant(GrantProblem::NotGranted(_)) => "NotGranted",
        }
    }
}

/// `namespace/name`, the key a deployment or module is known by on devices.
pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What a deployment contributes to the devices it targets.
#[derive(Debug, Clone, PartialEq)]
pub enum Contribution {
    /// A valid spec its namespace's grants admit: the devices its selector and one of
    /// `granted` match get these modules (sorted by name).
    Fresh {
        selector: Selector,
        granted: Vec<Selector>,
        modules: Vec<ResolvedModule>,
        /// What `modules` cost a device's budget, in bytes ([`limits::module_bytes`]).
        bytes: usize,
        /// The grants naming its namespace: an earlier revision's modules, which today's
        /// grants did not admit, run only where one of them allows them (as `Held`'s).
        reach: Vec<Grant>,
    },
    /// An invalid spec, or one no grant admits. Bad input must lose nothing, so every device
    /// keeps exactly what this deployment gave it before (read back from the device's own
    /// desired state), and no other device gains anything from it, until the spec is fixed.
    /// Only within `reach`, the grants naming its namespace: a revoked grant takes the
    /// modules off the devices it no longer covers, and a narrowed one the modules it no
    /// longer allows there.
    Held {
        problems: Vec<SpecProblem>,
        reach: Vec<Grant>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct CompiledDeployment {
    pub key: String,
    pub priority: i32,
    pub layered: bool,
    pub contribution: Contribution,
    /// What its devices run, hashed: see [`revision`].
    pub revision: String,
    /// Whether changes reach devices in a staged rollout (the planner moves devices one
    /// by one) instead of all at once.
    pub staged: bool,
    /// `onUntarget: Retain`: a device the selector no longer selects keeps the modules.
    pub retain: bool,
    /// How long a module must have been running to count as ready (staged rollouts).
    pub min_ready: std::time::Duration,
    /// A staged deployment's current revision: see [`current_revision`].
    pub current: Option<String>,
    /// The devices a staged rollout moves first: its canary's selector, parsed (none when
    /// it does not parse: the deployment is held then, and nothing moves).
    pub prefer: Option<Selector>,
}

impl CompiledDeployment {
    /// The revision a staged rollout has a device at: the one it moved the device to (the
    /// device's `spec.rollouts` entry); else the revision being rolled out, when the
    /// device's desired state (`decisions`) already has it from this deployment; else the
    /// current revision.
    ///
    /// The second case is a device an all-at-once change reached before the deployment
    /// became staged (the change still going on, or its Complete not yet in the status):
    /// at the current revision it would be given the older modules, and moved forward again
    /// in waves, every such device restarting its modules twice.
    pub fn staged_at<'a>(
        &'a self,
        rollouts: &'a Rollouts,
        decisions: Option<&[TargetingDecision]>,
    ) -> Option<&'a str> {
        let runs_update = || {
            decisions
                .into_iter()
                .flatten()
                .any(|t| t.deployment == self.key && t.revision == self.revision)
        };
        rollouts
            .get(&self.key)
            .or_else(|| runs_update().then_some(self.revision.as_str()))
            .or(self.current.as_deref())
    }

    /// Whether this deployment selects a device with these labels and these targeting
    /// decisions (the device's present desired state). Never a device outside its grants'
    /// devices; a held deployment selects exactly the devices it already contributed to.
    pub fn selects(
        &self,
        labels: &BTreeMap<String, String>,
        decisions: Option<&[TargetingDecision]>,
    ) -> bool {
        match &self.contribution {
            Contribution::Fresh {
                selector, granted, ..
            } => selector.matches(labels) && granted.iter().any(|g| g.matches(labels)),
            Contribution::Held { reach, .. } => {
                reach.iter().any(|g| g.covers(labels))
                    && decisions.is_some_and(|ds| {
                        ds.iter().any(|t| {
                            t.deployment == self.key
                                && matches!(
                                    t.outcome,
                                    TargetingOutcome::Owner
                                        | TargetingOutcome::Layered
                                        | TargetingOutcome::OverBudget
                                )
                        })
                    })
            }
        }
    }

    /// Whether a staged rollout moves a device with these labels among the first.
    pub fn prefers(&self, labels: &BTreeMap<String, String>) -> bool {
        self.prefer.as_ref().is_some_and(|s| s.matches(labels))
    }

    /// The priority this deployment competes with on a device. A held one competes with
    /// the priority it had there when it was last admitted, so a priority its grants
    /// refuse (raised to outrank another team, say) outranks nobody.
    pub fn priority_on(&self, decisions: Option<&[TargetingDecision]>) -> i32 {
        match &self.contribution {
            Contribution::Fresh { .. } => self.priority,
            Contribution::Held { .. } => decisions
                .and_then(|ds| ds.iter().find(|t| t.deployment == self.key))
                .map_or(self.priority, |t| t.priority),
        }
    }
}

/// The revision of a deployment: a 16-hex-digit hash of what its devices run, its modules
/// (with their overrides and routes) and the specs of the EdgeModules they refer to (in
/// the spec's order; a missing one hashes as null). Its selector, priority and rollout
/// settings are not part of it: changing them changes what devices run nowhere, and a new
/// revision would roll the same modules out to the whole fleet again, in waves.
pub fn revision(d: &EdgeDeployment, modules: &impl ModuleLookup) -> String {
    let namespace = d.metadata.namespace.as_deref().unwrap_or_default();
    let referenced: Vec<Option<&EdgeModuleSpec>> = d
        .spec
        .modules
        .iter()
        .map(|m| modules.module(namespace, m.module_name()))
        .collect();
    let bytes = serde_json::to_vec(&(&d.spec.modules, referenced)).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Looks EdgeModules up by `namespace/name`.
pub trait ModuleLookup {
    fn module(&self, namespace: &str, name: &str) -> Option<&EdgeModuleSpec>;
}

impl ModuleLookup for BTreeMap<String, EdgeModuleSpec> {
    fn module(&self, namespace: &str, name: &str) -> Option<&EdgeModuleSpec> {
        self.get(&key(namespace, name))
    }
}

fn apply_overrides(spec: &mut EdgeModuleSpec, o: &ModuleOverrides) {
    if let Some(image) = &o.image {
        spec.image.clone_from(image);
    }
    if let Some(args) = &o.args {
        spec.args.clone_from(args);
    }
    for var in &o.env {
        match spec.env.iter_mut().find(|e| e.name == var.name) {
            Some(existing) => existing.value.clone_from(&var.value),
            None => spec.env.push(var.clone()),
        }
    }
    if let Some(order) = o.startup_order {
        spec.startup_order = order;
    }
}

fn check_overrides(m: &DeploymentModule) -> Result<(), SpecProblem> {
    let Some(o) = &m.overrides else { return Ok(()) };
    let wrap = |error| SpecProblem::InvalidOverride {
        module: m.name.clone(),
        error,
    };
    if let Some(image) = &o.image {
        check_image(image).map_err(wrap)?;
    }
    for var in &o.env {
        check_env_name(&var.name).map_err(wrap)?;
    }
    Ok(())
}

/// Every problem of a deployment's spec, in spec order; empty when it is valid.
pub fn problems(d: &EdgeDeployment, modules: &impl ModuleLookup) -> Vec<SpecProblem> {
    let namespace = d.metadata.namespace.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(p) = name_problem(d) {
        out.push(p);
    }
    if let Err(e) = Selector::parse(&d.spec.selector) {
        out.push(e.into());
    }
    if let Some(Err(e)) = canary_selector(d).map(Selector::parse) {
        out.push(e.into());
    }
    let mut seen = BTreeSet::new();
    for m in &d.spec.modules {
        if let Err(e) = check_dns_label(&m.name) {
            out.push(SpecProblem::InvalidModuleName(e));
        }
        if !seen.insert(m.name.as_str()) {
            out.push(SpecProblem::DuplicateModule(m.name.clone()));
        }
        if modules.module(namespace, m.module_name()).is_none() {
            out.push(SpecProblem::ModuleNotFound {
                module: m.name.clone(),
                namespace: namespace.to_owned(),
                reference: m.module_name().to_owned(),
            });
        }
        if let Err(p) = check_overrides(m) {
            out.push(p);
        }
    }
    out.extend(route_problems(d));
    out
}

/// A name too long to label the deployment's kept revisions with.
pub fn name_problem(d: &EdgeDeployment) -> Option<SpecProblem> {
    let chars = d
        .metadata
        .name
        .as_deref()
        .unwrap_or_default()
        .chars()
        .count();
    (chars > deployment::MAX_NAME).then_some(SpecProblem::NameTooLong(chars))
}

/// Routes that do not parse, or that go to a module this deployment does not run: a route
/// connects modules of one deployment, so what it names is always on the device with it.
pub fn route_problems(d: &EdgeDeployment) -> Vec<SpecProblem> {
    let names: BTreeSet<&str> = d.spec.modules.iter().map(|m| m.name.as_str()).collect();
    d.spec
        .modules
        .iter()
        .flat_map(|m| m.routes.iter().map(move |r| (m, r)))
        .filter_map(|(m, r)| {
            let why = match r.check() {
                Err(why) => why,
                Ok(Destination::Input { module, .. }) if !names.contains(module) => format!(
                    "route from output {:?} goes to module {module:?}, which this deployment does not run",
                    r.output
                ),
                Ok(_) => return None,
            };
            Some(SpecProblem::InvalidRoute {
                module: m.name.clone(),
                why,
            })
        })
        .collect()
}

/// A deployment's modules as devices get them (the EdgeModule's spec with the deployment's
/// overrides), sorted by name; a module whose EdgeModule does not exist is left out.
pub fn resolve_modules(d: &EdgeDeployment, modules: &impl ModuleLookup) -> Vec<ResolvedModule> {
    let namespace = d.metadata.namespace.as_deref().unwrap_or_default();
    let deployment = key(namespace, d.metadata.name.as_deref().unwrap_or_default());
    let mut resolved: Vec<ResolvedModule> = d
        .spec
        .modules
        .iter()
        .filter_map(|m| {
            let mut spec = modules.module(namespace, m.module_name())?.clone();
            if let Some(o) = &m.overrides {
                apply_overrides(&mut spec, o);
            }
            Some(ResolvedModule {
                name: m.name.clone(),
                deployment: deployment.clone(),
                module_ref: key(namespace, m.module_name()),
                desired_status: m.desired_status,
                routes: m.routes.clone(),
                spec,
            })
        })
        .collect();
    resolved.sort_by(|a, b| a.name.cmp(&b.name));
    resolved
}

/// A staged deployment's current revision (its rollout status's `currentRevision`): the
/// last one every targeted device ran ready. A device the rollout has not moved (no entry
/// in its `spec.rollouts`: new to the deployment, or the deployment was not staged before)
/// runs this one. Pinning each such device with a write of its own cost one write per
/// device before the first wave: minutes at 10,000 devices, with the rollout standing still.
pub fn current_revision(d: &EdgeDeployment) -> Option<String> {
    d.spec.rollout.as_ref()?;
    let current = &d.status.as_ref()?.rollout.as_ref()?.current_revision;
    (!current.is_empty()).then(|| current.clone())
}

/// The selector of the devices a staged deployment's canary prefers.
fn canary_selector(d: &EdgeDeployment) -> Option<&DeviceSelector> {
    d.spec.rollout.as_ref()?.canary.as_ref()?.selector.as_ref()
}

/// Compiles a deployment against the modules and grants as they are now.
pub fn compile(
    d: &EdgeDeployment,
    modules: &impl ModuleLookup,
    grants: &[Grant],
) -> CompiledDeployment {
    let namespace = d.metadata.namespace.as_deref().unwrap_or_default();
    let key = key(namespace, d.metadata.name.as_deref().unwrap_or_default());
    let problems = problems(d, modules);
    let held = |problems| Contribution::Held {
        problems,
        reach: grant::reach(namespace, grants),
    };
    let contribution = match Selector::parse(&d.spec.selector) {
        Ok(selector) if problems.is_empty() => {
            let resolved = resolve_modules(d, modules);
            // What a device would refuse is never shipped: refused there, it would fail
            // every deployment on the device, other teams' too.
            let over: Vec<SpecProblem> = resolved
                .iter()
                .filter_map(|m| {
                    let why = limits::check_module(&m.spec).err()?;
                    Some(SpecProblem::OverLimit {
                        module: m.name.clone(),
                        why,
                    })
                })
                .collect();
            if !over.is_empty() {
                held(over)
            } else {
                match grant::admit(namespace, d.spec.priority, &resolved, grants) {
                    Ok(granted) => Contribution::Fresh {
                        selector,
                        granted,
                        reach: grant::reach(namespace, grants),
                        bytes: resolved.iter().map(limits::module_bytes).sum(),
                        modules: resolved,
                    },
                    Err(refused) => held(vec![refused.into()]),
                }
            }
        }
        _ => held(problems),
    };
    CompiledDeployment {
        key,
        priority: d.spec.priority,
        layered: d.spec.layered,
        contribution,
        revision: revision(d, modules),
        staged: d.spec.rollout.is_some(),
        retain: d
            .spec
            .rollout
            .as_ref()
            .is_some_and(|r| r.on_untarget == OnUntarget::Retain),
        min_ready: std::time::Duration::from_secs(u64::from(
            d.spec.rollout.as_ref().map_or(0, |r| r.min_ready_seconds),
        )),
        current: current_revision(d),
        prefer: canary_selector(d).and_then(|s| Selector::parse(s).ok()),
    }
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Deployments and modules from inline YAML, as a user would write them.

    use super::*;

    pub fn deployment(yaml: &str) -> EdgeDeployment {
        serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad fixture: {e}\n{yaml}"))
    }

    /// A grant that admits anything from these namespaces on every device: for tests about
    /// something other than tenancy.
    pub fn open_grants(namespaces: &[&str]) -> Vec<Grant> {
        vec![crate::decide::grant::fixtures::grant(
            "open",
            &format!(
                "{{namespaces: [{}], devices: {{}}, priority: {{min: -1000000, max: 1000000}}, hostNetwork: true, hostDevices: true}}",
                namespaces.join(", ")
            ),
        )]
    }

    pub fn modules(specs: &[(&str, &str)]) -> BTreeMap<String, EdgeModuleSpec> {
        specs
            .iter()
            .map(|(k, yaml)| {
                let spec = serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("bad module: {e}"));
                (k.to_string(), spec)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::*;
    use super::*;

    fn lib() -> BTreeMap<String, EdgeModuleSpec> {
        modules(&[
            (
                "ns/sensor",
                "image: sensor:v1\nenv: [{name: RATE, value: '1'}, {name: UNIT, value: C}]",
            ),
            ("ns/filter", "image: filter:v1\nstartupOrder: 1"),
            (
                "ns/hoard",
                &format!(
                    "image: hoard:v1\nconfig: [{}]",
                    (0..5)
                        .map(|i| format!("{{name: f{i}, content: '{}'}}", "x".repeat(60 * 1024)))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        ])
    }

    /// A revision is what devices run: the selector, the priority and the rollout's
    /// settings are not part of it (changing them would roll the same modules out again),
    /// a module's override, route or EdgeModule is.
    #[test]
    fn a_revision_changes_with_what_devices_run_only() {
        let lib = modules(&[("ns/app", "image: app:v1"), ("ns/db", "image: db:v1")]);
        let rev = |spec: &str| {
            revision(
                &deployment(&format!(
                    "metadata: {{name: d, namespace: ns}}\nspec: {spec}"
                )),
                &lib,
            )
        };
        let base = rev("{modules: [{name: app}, {name: db}]}");
        for same in [
            "{modules: [{name: app}, {name: db}], selector: {matchLabels: {site: x}}}",
            "{modules: [{name: app}, {name: db}], priority: 7, layered: true}",
            "{modules: [{name: app}, {name: db}], rollout: {maxUnavailable: 2, paused: true}}",
        ] {
            assert_eq!(rev(same), base, "{same}");
        }
        for other in [
            "{modules: [{name: app, overrides: {image: app:v2}}, {name: db}]}",
            "{modules: [{name: app, routes: [{output: o, to: {module: db, input: i}}]}, {name: db}]}",
            "{modules: [{name: app}]}",
        ] {
            assert_ne!(rev(other), base, "{other}");
        }
        let newer = modules(&[("ns/app", "image: app:v2"), ("ns/db", "image: db:v1")]);
        let d = deployment(
            "metadata: {name: d, namespace: ns}\nspec: {modules: [{name: app}, {name: db}]}",
        );
        assert_ne!(revision(&d, &newer), base);
    }

    /// Only a staged deployment's devices follow its current revision, and only once it
    /// has one.
    #[test]
    fn the_current_revision_is_a_staged_deployments_last_good_one() {
        let with = |rollout: &str, current: &str| {
            current_revision(&deployment(&format!(
                "metadata: {{name: d, namespace: ns}}\nspec:\n  modules: []\n  {rollout}\nstatus:\n  rollout: {{currentRevision: '{current}'}}"
            )))
        };
        assert_eq!(with("rollout: {}", "r1").as_deref(), Some("r1"));
        assert_eq!(with("rollout: {}", ""), None);
        assert_eq!(with("priority: 0", "r1"), None);
    }

    /// A route is tenant input the device acts on: one to a module the deployment does not
    /// run (perhaps another team's) or with a condition that does not parse holds the
    /// deployment with the reason; good routes reach the device with their module.
    #[test]
    fn a_route_outside_its_deployment_or_with_a_bad_condition_holds_it() {
        let spec = |routes: &str| {
            deployment(&format!(
                "metadata: {{name: d, namespace: ns}}\nspec:\n  modules:\n  - name: sensor\n    routes: {routes}\n  - name: filter"
            ))
        };
        let good = spec(
            "[{output: out, to: {module: filter, input: in}}, {output: out, when: '$body.t > 30', to: {upstream: alerts}}]",
        );
        let c = compile(&good, &lib(), &open_grants(&["ns"]));
        let Contribution::Fresh { modules, .. } = c.contribution else {
            panic!("should compile: {:?}", c.contribution)
        };
        let sensor = modules
            .iter()
            .find(|m| m.name == "sensor")
            .expect("resolved");
        assert_eq!(sensor.routes.len(), 2, "routes travel with their module");
        for (routes, says) in [
            (
                "[{output: out, to: {module: other-team, input: in}}]",
                "does not run",
            ),
            (
                "[{output: out, when: '$body.t >', to: {upstream: x}}]",
                "value",
            ),
            ("[{output: out, to: {module: filter}}]", "nothing else"),
        ] {
            let p = problems(&spec(routes), &lib());
            assert_eq!(p.len(), 1, "{routes}: {p:?}");
            assert_eq!(p[0].reason(), "InvalidRoute");
            assert!(p[0].to_string().contains(says), "{routes}: {}", p[0]);
            let c = compile(&spec(routes), &lib(), &open_grants(&["ns"]));
            assert!(
                matches!(c.contribution, Contribution::Held { .. }),
                "{routes}"
            );
        }
    }

    #[test]
    fn overrides_apply_per_deployment() {
        let d = deployment(
            r#"
metadata: {name: base, namespace: ns}
spec:
  priority: 5
  modules:
  - name: sensor
    overrides:
      image: sensor:v2
      args: ["--fast"]
      env: [{name: RATE, value: "10"}, {name: EXTRA, value: x}]
      startupOrder: 3
  - name: f
    moduleRef: filter
    desiredStatus: stopped
"#,
        );
        let c = compile(&d, &lib(), &open_grants(&["ns"]));
        assert_eq!(c.key, "ns/base");
        assert_eq!(c.priority, 5);
        let Contribution::Fresh { modules, .. } = c.contribution else {
            panic!("should compile: {:?}", c.contribution)
        };
        let names: Vec<_> = modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["f", "sensor"], "sorted by name");
        let f = &modules[0];
        assert_eq!(f.module_ref, "ns/filter");
        assert_eq!(f.desired_status, edgefleet_crds::DesiredStatus::Stopped);
        let s = &modules[1];
        assert_eq!(s.deployment, "ns/base");
        assert_eq!(s.spec.image, "sensor:v2");
        assert_eq!(s.spec.args, ["--fast"]);
        assert_eq!(s.spec.startup_order, 3);
        let env: Vec<_> = s
            .spec
            .env
            .iter()
            .map(|e| (e.name.as_str(), e.value.as_str()))
            .collect();
        assert_eq!(env, [("RATE", "10"), ("UNIT", "C"), ("EXTRA", "x")]);
    }

    #[test]
    fn bad_specs_are_held_with_every_problem() {
        let cases = [
            (
                "selector: {matchExpressions: [{key: site, operator: In}]}\n  modules: [{name: sensor}]",
                vec!["InvalidSelector"],
            ),
            (
                "modules: [{name: sensor, moduleRef: nope}]",
                vec!["ModuleNotFound"],
            ),
            (
                "modules: [{name: sensor}, {name: sensor}]",
                vec!["DuplicateModule"],
            ),
            (
                "modules: [{name: Sensor_1, moduleRef: sensor}]",
                vec!["InvalidModuleName"],
            ),
            (
                "modules: [{name: sensor, overrides: {image: 'NOT VALID'}}]",
                vec!["InvalidOverride"],
            ),
            (
                "modules: [{name: sensor, overrides: {env: [{name: BIG, value: x}]}}, {name: hoard}]",
                vec!["ModuleOverLimit"],
            ),
            (
                "modules: [{name: x}, {name: x}]",
                vec!["ModuleNotFound", "DuplicateModule", "ModuleNotFound"],
            ),
        ];
        for (spec, want) in cases {
            let d = deployment(&format!(
                "metadata: {{name: d, namespace: ns}}\nspec:\n  {spec}"
            ));
            let c = compile(&d, &lib(), &open_grants(&["ns"]));
            let Contribution::Held { problems, .. } = &c.contribution else {
                panic!("{spec} should be held")
            };
            let reasons: Vec<_> = problems.iter().map(SpecProblem::reason).collect();
            assert_eq!(reasons, want, "{spec}");
        }
    }

    /// A name that can't label the deployment's kept revisions: held, with the reason,
    /// before any revision is written (the apiserver would refuse every one).
    #[test]
    fn a_name_too_long_for_a_label_holds_the_deployment() {
        let named = |name: &str| {
            let d = deployment(&format!(
                "metadata: {{name: {name}, namespace: ns}}\nspec:\n  modules: [{{name: sensor}}]"
            ));
            compile(&d, &lib(), &open_grants(&["ns"]))
        };
        let longest = named(&"d".repeat(deployment::MAX_NAME));
        assert!(matches!(longest.contribution, Contribution::Fresh { .. }));
        let Contribution::Held { problems, .. } =
            named(&"d".repeat(deployment::MAX_NAME + 1)).contribution
        else {
            panic!("a name of 64 characters is held")
        };
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .to_string()
                .starts_with("its name is 64 characters long; at most 63"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn missing_module_message_names_the_reference() {
        let d = deployment(
            "metadata: {name: d, namespace: ns}\nspec:\n  modules: [{name: a, moduleRef: gone}]",
        );
        let p = problems(&d, &lib());
        assert_eq!(
            p[0].to_string(),
            "module \"a\" refers to EdgeModule ns/gone, which does not exist"
        );
    }
}
