//! The rollout step of the deployment reconcile. Every revision of a deployment is kept as
//! a ControllerRevision (its spec and the modules it gives devices), so that devices can
//! be moved back to it; for a staged deployment the planner (`rollout`) decides which
//! devices move next, and each move is written to the device's `spec.rollouts` (field
//! manager `edgefleet-rollout`). The device reconcile then takes the deployment's modules
//! from that revision (a device not moved yet runs the current revision: no write). Moves
//! are remembered until the cache shows them, so that a quick second pass never moves more
//! devices than the budget allows.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgefleet_crds::identity::{
    CONTROLLER_MANAGER, DEPLOYMENT_LABEL, REVISION_LABEL, ROLLOUT_MANAGER,
};
use edgefleet_crds::writes;
use edgefleet_crds::{EdgeDeployment, EdgeDevice, ResolvedModule, RolloutPhase, RolloutStatus};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{DeleteParams, ObjectMeta, Patch, Preconditions};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::decide::catalog::{self, CompiledDeployment, Contribution};
use crate::decide::rollout::{self, Plan, Policy};
use crate::decide::rollup::Rollup;
use crate::decide::snapshot::{self, KeptRevision};
use crate::decide::targeting::Snapshots;
use crate::error::{Error, Result};
use crate::k8s::context::Context;
use crate::k8s::events::reference;

/// Revisions kept per deployment, besides those still in use.
const KEEP: usize = 5;
/// How often a rollout with devices on the move is looked at.
const WHILE_MOVING: Duration = Duration::from_secs(3);

/// A deployment's ControllerRevision for one revision.
pub fn revision_name(deployment: &str, revision: &str) -> String {
    format!("{deployment}-{revision}")
}

/// The deployment a ControllerRevision is labelled as a revision of.
pub fn deployment_of_revision(cr: &KeptRevision) -> Option<ObjectRef<EdgeDeployment>> {
    let name = cr.labels().get(DEPLOYMENT_LABEL)?;
    Some(ObjectRef::new(name).within(&cr.namespace()?))
}

impl Snapshots for Context {
    fn modules(&self, key: &str, revision: &str) -> Option<Vec<ResolvedModule>> {
        let (ns, name) = key.split_once('/')?;
        let cr = self
            .stores
            .revisions
            .get(&ObjectRef::new(&revision_name(name, revision)).within(ns))?;
        cr.modules_of(name).ok().map(|m| m.to_vec())
    }
}

/// Runs the rollout step and returns the rollout status, or `None` for a held spec (whose
/// rollout stands still). `r` is the deployment's rollup; its planner view is taken, not
/// copied: at 10,000 devices a copy held across a wave's writes was megabytes.
pub async fn step(
    ctx: &Context,
    d: &EdgeDeployment,
    compiled: &CompiledDeployment,
    r: &mut Rollup,
) -> Result<Option<(RolloutStatus, Option<Duration>)>> {
    let Contribution::Fresh { modules, .. } = &compiled.contribution else {
        return Ok(None);
    };
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let last = d
        .status
        .as_ref()
        .and_then(|s| s.rollout.clone())
        .unwrap_or_default();
    // One look at the deployment's revisions for the whole pass: what it writes or deletes
    // reaches the cache later anyway.
    let mine = revisions_of(ctx, &ns, &name);
    ensure_revision(ctx, d, compiled, modules, &mine).await?;
    refuse_forged(ctx, d, compiled, &mine).await?;

    let Some(spec) = d.spec.rollout.as_ref() else {
        let status = all_at_once(&compiled.revision, r, &last);
        prune(ctx, &ns, &mine, &status).await;
        return Ok(Some((status, None)));
    };
    let mut policy = Policy::from_spec(spec);
    policy.spec_changed =
        d.status.as_ref().and_then(|s| s.observed_generation) != d.metadata.generation;
    let mut devices = std::mem::take(&mut r.rollout);
    ctx.moves
        .recall(&compiled.key, &mut devices, Instant::now());
    let plan = rollout::plan(
        &policy,
        &compiled.revision,
        &devices,
        &last,
        jiff::Timestamp::now(),
    );
    move_devices(ctx, &compiled.key, &plan).await?;
    prune(ctx, &ns, &mine, &plan.status).await;
    // Agents report only changes, and a module becoming ready by running long enough is no
    // change: while devices are on the move, look again soon.
    let moving = !plan.moves.is_empty()
        || matches!(
            plan.status.phase,
            RolloutPhase::Progressing | RolloutPhase::Canary | RolloutPhase::RollingBack
        );
    let recheck_in = match plan.recheck_in {
        Some(d) if moving => Some(d.min(WHILE_MOVING)),
        None if moving => Some(WHILE_MOVING),
        other => other,
    };
    Ok(Some((plan.status, recheck_in)))
}

/// Without `spec.rollout` every device gets a change at once: the rollout status only
/// says which revision is current.
fn all_at_once(revision: &str, r: &Rollup, last: &RolloutStatus) -> RolloutStatus {
    let done = r.pending == 0 && r.ready == r.targeted;
    RolloutStatus {
        current_revision: if done {
            revision.to_owned()
        } else {
            last.current_revision.clone()
        },
        update_revision: revision.to_owned(),
        target_revision: revision.to_owned(),
        phase: if done {
            RolloutPhase::Complete
        } else {
            RolloutPhase::Progressing
        },
        wave: 1,
        waves: 1,
        updated: r.targeted.saturating_sub(r.pending),
        unavailable: r.targeted.saturating_sub(r.ready),
        message: if done {
            format!("every device runs revision {revision}")
        } else {
            format!("all {} devices at once (no staged rollout)", r.targeted)
        },
        ..Default::default()
    }
}

/// Writes a wave's moves side by side, up to the controller's concurrency: one after
/// another, a wave of thousands took as many round trips. Each move written is remembered
/// even if another fails; the failed ones are tried again with the reconcile.
async fn move_devices(ctx: &Context, key: &str, plan: &Plan) -> Result<()> {
    let revision = &plan.status.target_revision;
    let api = Api::<EdgeDevice>::all(ctx.client.clone());
    let params = writes::patch(ROLLOUT_MANAGER);
    let wave = plan.status.wave;
    let moved = plan.moves.iter().cloned().map(|device| {
        let (api, params) = (api.clone(), params.clone());
        async move {
            let patch = json!({"spec": {"rollouts": {key: revision}}});
            api.patch(&device, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| Error::MoveDevice(device.clone(), e))?;
            ctx.moves.remember(key, &device, revision, Instant::now());
            tracing::info!(deployment = key, device, %revision, wave, "moved");
            Ok(())
        }
    });
    let results: Vec<Result<()>> = futures::stream::iter(moved)
        .buffer_unordered(usize::from(ctx.config.concurrency))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Creates the ControllerRevision of `revision` unless it exists with these modules. One
/// that keeps other modules under this name was forged (see [`snapshot`]), or written by a
/// controller that resolved modules differently: either way it is replaced, with a Warning
/// Event, before any device could read it. `mine` are the deployment's revisions, for the
/// next revision number.
async fn ensure_revision(
    ctx: &Context,
    d: &EdgeDeployment,
    compiled: &CompiledDeployment,
    modules: &[ResolvedModule],
    mine: &[Arc<KeptRevision>],
) -> Result<()> {
    let ns = d.namespace().unwrap_or_default();
    let name = d.name_any();
    let revision = compiled.revision.as_str();
    let cr_name = revision_name(&name, revision);
    // By name, not among `mine`: one under this name labelled as another deployment's is
    // in the way too.
    if let Some(existing) = ctx
        .stores
        .revisions
        .get(&ObjectRef::new(&cr_name).within(&ns))
    {
        let why = match existing.modules_of(&name) {
            Ok(kept) if **kept == *modules => return Ok(()),
            Ok(_) => "its modules are not this revision's",
            Err(why) => why,
        };
        if existing.metadata.deletion_timestamp.is_none() {
            remove_forged(ctx, d, existing.as_ref(), why, "written again").await?;
        }
    }
    // A forged revision number must not overflow the next one.
    let number = mine
        .iter()
        .map(|c| c.revision)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let cr = ControllerRevision {
        metadata: ObjectMeta {
            name: Some(cr_name.clone()),
            namespace: Some(ns.clone()),
            labels: Some(BTreeMap::from([
                (DEPLOYMENT_LABEL.to_owned(), name.clone()),
                (REVISION_LABEL.to_owned(), revision.to_owned()),
            ])),
            owner_references: d.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        data: Some(RawExtension(snapshot::data(&d.spec, modules))),
        revision: number,
    };
    let mut patch = serde_json::to_value(&cr).unwrap_or_default();
    patch["apiVersion"] = json!("apps/v1");
    patch["kind"] = json!("ControllerRevision");
    let api = Api::<ControllerRevision>::namespaced(ctx.client.clone(), &ns);
    let params = writes::apply(CONTROLLER_MANAGER);
    let refused = match api.patch(&cr_name, &params, &Patch::Apply(&patch)).await {
        Ok(_) => return Ok(()),
        Err(kube::Error::Api(e)) if e.code == 422 => kube::Error::Api(e),
        Err(e) => return Err(Error::ApplyRevision(cr_name, e)),
    };
    // Refused as invalid: a revision's data can't change, so an object under this name
    // keeps other data. One the cache does not show is one without edgefleet's label
    // (the watch selects on it), which no reconcile would ever judge: it is removed like
    // a forgery, and this revision written again. Any other refusal is retried, and so is
    // this one while the object is being deleted (a finalizer holds it): deleted once,
    // said once.
    let in_the_way = api
        .get_opt(&cr_name)
        .await
        .map_err(|e| Error::ApplyRevision(cr_name.clone(), e))?;
    let Some(unlabelled) = in_the_way.filter(|cr| {
        !cr.labels().contains_key(DEPLOYMENT_LABEL) && cr.metadata.deletion_timestamp.is_none()
    }) else {
        return Err(Error::ApplyRevision(cr_name, refused));
    };
    let why = format!("it carries no {DEPLOYMENT_LABEL} label");
    remove_forged(ctx, d, &unlabelled, &why, "written again").await?;
    api.patch(&cr_name, &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| Error::ApplyRevision(cr_name, e))?;
    Ok(())
}

/// The ControllerRevisions labelled as deployment `ns/name`'s.
fn revisions_of(ctx: &Context, ns: &str, name: &str) -> Vec<Arc<KeptRevision>> {
    ctx.stores
        .revisions
        .state()
        .into_iter()
        .filter(|c| {
            c.namespace().as_deref() == Some(ns)
                && c.labels().get(DEPLOYMENT_LABEL).map(String::as_str) == Some(name)
        })
        .collect()
}

/// Deletes the deployment's earlier revisions whose modules edgefleet would not have
/// written ([`snapshot`]). Targeting never uses them; deleting them says so once, and
/// leaves the devices at such a revision with what they run.
async fn refuse_forged(
    ctx: &Context,
    d: &EdgeDeployment,
    compiled: &CompiledDeployment,
    mine: &[Arc<KeptRevision>],
) -> Result<()> {
    for cr in mine {
        if cr.metadata.deletion_timestamp.is_some()
            || cr.labels().get(REVISION_LABEL) == Some(&compiled.revision)
        {
            continue;
        }
        if let Err(why) = &cr.modules {
            remove_forged(
                ctx,
                d,
                cr.as_ref(),
                why,
                "deleted; devices at its revision keep what they run",
            )
            .await?;
        }
    }
    Ok(())
}

/// Deletes one ControllerRevision edgefleet did not write (that object only: its UID is a
/// precondition) and says why in a Warning Event on the deployment.
async fn remove_forged<K: Resource<DynamicType = ()>>(
    ctx: &Context,
    d: &EdgeDeployment,
    cr: &K,
    why: &str,
    then: &str,
) -> Result<()> {
    let ns = d.namespace().unwrap_or_default();
    let name = cr.name_any();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: cr.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match Api::<ControllerRevision>::namespaced(ctx.client.clone(), &ns)
        .delete(&name, &params)
        .await
    {
        Ok(_) => {}
        // Gone, or another object by now (the one written again, seen before the cache
        // caught up): nothing of what was judged is left to refuse.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Ok(()),
        Err(e) => return Err(Error::DeleteRevision(name, e)),
    }
    tracing::warn!(
        deployment = %catalog::key(&ns, &d.name_any()),
        revision = %name,
        why,
        "refused a ControllerRevision"
    );
    let note = format!("ControllerRevision {name} is not what edgefleet keeps ({why}): {then}");
    ctx.event_related(
        &reference(d),
        Some(reference(cr)),
        EventType::Warning,
        "RevisionRefused",
        "Rollout",
        note,
    )
    .await;
    Ok(())
}

/// Keeps the newest of the deployment's revisions (`mine`) and every one still in use; a
/// failure only waits for the next pass.
async fn prune(ctx: &Context, ns: &str, mine: &[Arc<KeptRevision>], status: &RolloutStatus) {
    let in_use: BTreeSet<&str> = [
        status.current_revision.as_str(),
        status.update_revision.as_str(),
        status.target_revision.as_str(),
    ]
    .into_iter()
    .chain(status.revisions.iter().map(|r| r.revision.as_str()))
    .collect();
    let mut mine = mine.to_vec();
    mine.sort_by_key(|c| std::cmp::Reverse(c.revision));
    let api = Api::<ControllerRevision>::namespaced(ctx.client.clone(), ns);
    for old in mine.iter().skip(KEEP) {
        let rev = old
            .labels()
            .get(REVISION_LABEL)
            .map(String::as_str)
            .unwrap_or_default();
        if in_use.contains(rev) {
            continue;
        }
        match api.delete(&old.name_any(), &DeleteParams::default()).await {
            // Refused as forged earlier in this pass.
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                tracing::warn!(revision = %old.name_any(), error = %e, "cannot delete an old revision");
            }
        }
    }
}

/// An Event for each phase the rollout enters.
pub async fn publish_phase(
    ctx: &Context,
    d: &EdgeDeployment,
    old: Option<&RolloutStatus>,
    new: &RolloutStatus,
) {
    let same =
        old.is_some_and(|o| o.phase == new.phase && o.update_revision == new.update_revision);
    if same {
        return;
    }
    let type_ = match new.phase {
        RolloutPhase::Stalled | RolloutPhase::RollingBack | RolloutPhase::RolledBack => {
            EventType::Warning
        }
        _ => EventType::Normal,
    };
    let reason = format!("Rollout{}", new.phase.as_str());
    let note = format!("revision {}: {}", new.update_revision, new.message);
    ctx.event(&reference(d), type_, &reason, "Rollout", note)
        .await;
}
