//! The reconciles against a fake apiserver (`fake/`): what each one writes, to which
//! object, under which field manager, and what it leaves alone. The tier between the pure
//! unit tests and the lab's `apiserver.rs`: every branch of the IO half in a second, no
//! cluster. What the real apiserver does with the writes (RBAC, schema validation) stays
//! the lab's to test.

mod fake;

use std::sync::Arc;
use std::time::Duration;

use edgefleet_controller::decide::renewal_pace::HOLD;
use edgefleet_controller::k8s::{apply, context::Context, written};
use edgefleet_controller::reconcile::{deployment, device, registry};
use edgefleet_crds::bounds::{CONDITION_MESSAGE_MAX, FAILURE_REASON_MAX, ROLLOUT_MESSAGE_MAX};
use edgefleet_crds::deployment::MAX_FAILURE_SAMPLES;
use edgefleet_crds::deployment::conditions::{READY, RECONCILING, STALLED};
use edgefleet_crds::identity::{CONTROLLER_MANAGER, REGISTRATION_ANNOTATION, ROLLOUT_MANAGER};
use edgefleet_crds::renewal::renew_every;
use edgefleet_crds::{
    EdgeDeployment, EdgeDeploymentStatus, EdgeDevice, EdgeGrant, EdgeModule, FailureSample,
    RolloutStatus,
};
use fake::apiserver::{self, Request};
use fake::world::{SYSTEM_NAMESPACE, World, parse, path_of};
use http::{Method, StatusCode};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Api;
use kube::runtime::controller::Action;
use serde_json::{Value, json};

/// Device `name` at the munich site.
fn munich_device(name: &str) -> String {
    format!(
        "
apiVersion: edgefleet.io/v1alpha1
kind: EdgeDevice
metadata: {{name: {name}, uid: uid-{name}, resourceVersion: '1', labels: {{site: munich}}}}
spec: {{}}"
    )
}

const MODULE: &str = "
apiVersion: edgefleet.io/v1alpha1
kind: EdgeModule
metadata: {name: sensor, namespace: team-a, uid: uid-sensor, resourceVersion: '1'}
spec: {image: localhost/sensor:v1}";

const GRANT: &str = "
apiVersion: edgefleet.io/v1alpha1
kind: EdgeGrant
metadata: {name: team-a, uid: uid-grant, resourceVersion: '1'}
spec: {namespaces: [team-a], devices: {}, priority: {min: 0, max: 100}}";

/// A deployment `team-a/munich` with `spec`.
fn deployment_with(spec: &str) -> EdgeDeployment {
    parse(&format!(
        "
apiVersion: edgefleet.io/v1alpha1
kind: EdgeDeployment
metadata: {{name: munich, namespace: team-a, uid: uid-munich, generation: 1, resourceVersion: '1'}}
spec: {spec}"
    ))
}

/// The munich site's sensor, on every device labelled `site: munich`.
fn munich() -> EdgeDeployment {
    deployment_with("{selector: {matchLabels: {site: munich}}, modules: [{name: sensor}]}")
}

/// Team A, granted every device, with its module and `deployment`; device edge-1 at munich.
fn team_a(deployment: EdgeDeployment) -> World {
    let mut world = World::new();
    world
        .add(parse::<EdgeGrant>(GRANT))
        .add(parse::<EdgeModule>(MODULE))
        .add(deployment)
        .device(&munich_device("edge-1"));
    world
}

fn edge_1() -> Arc<EdgeDevice> {
    Arc::new(parse(&munich_device("edge-1")))
}

/// Runs the device reconcile on `dev` and returns the device as the watch then shows it.
async fn resolve(world: &mut World, ctx: &Arc<Context>, dev: &EdgeDevice) -> Arc<EdgeDevice> {
    device::reconcile(world.update(dev), ctx.clone())
        .await
        .expect("device reconcile");
    world.update(dev)
}

/// The requests other than Events, which every reconcile may publish besides its writes.
fn writes(requests: &[Request]) -> Vec<&Request> {
    requests
        .iter()
        .filter(|r| !r.path.ends_with("/events"))
        .collect()
}

/// The `(type, reason)` of every Event published.
fn events(requests: &[Request]) -> Vec<(String, String)> {
    let field = |r: &Request, k: &str| r.body[k].as_str().unwrap_or_default().to_owned();
    requests
        .iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/events"))
        .map(|r| (field(r, "type"), field(r, "reason")))
        .collect()
}

/// The notes of the Events of `reason` published.
fn notes(requests: &[Request], reason: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.method == Method::POST && r.path.ends_with("/events"))
        .filter(|r| r.body["reason"] == reason)
        .map(|r| r.body["note"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The one request to `path`.
fn to<'a>(requests: &[&'a Request], path: &str) -> &'a Request {
    let mut found = requests.iter().filter(|r| r.path == path);
    match (found.next(), found.next()) {
        (Some(r), None) => r,
        _ => panic!("not exactly one request to {path}: {requests:#?}"),
    }
}

/// The condition of `type_` in a status body: [status, reason, message].
fn condition<'a>(status: &'a Value, type_: &str) -> [&'a str; 3] {
    let c = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"));
    let s = |k: &str| c[k].as_str().unwrap_or_default();
    [s("status"), s("reason"), s("message")]
}

#[tokio::test]
async fn an_enrolled_device_gets_its_lease_and_rbac_owned_by_it() {
    let mut world = World::new();
    world.device(&munich_device("edge-1"));
    registry::reconcile(edge_1(), world.context())
        .await
        .expect("registry reconcile");
    let requests = world.log.take();
    let writes = writes(&requests);
    let object = "edgefleet-device-edge-1";
    let rbac = "/apis/rbac.authorization.k8s.io/v1";
    let lease_path =
        format!("/apis/coordination.k8s.io/v1/namespaces/{SYSTEM_NAMESPACE}/leases/{object}");
    let device_path = "/apis/edgefleet.io/v1alpha1/edgedevices/edge-1";
    let mut paths: Vec<_> = writes.iter().map(|r| r.path.clone()).collect();
    paths.sort();
    let mut expected = vec![
        device_path.to_owned(),
        lease_path.clone(),
        format!("{rbac}/clusterrolebindings/{object}"),
        format!("{rbac}/clusterroles/{object}"),
        format!("{rbac}/namespaces/{SYSTEM_NAMESPACE}/rolebindings/{object}"),
        format!("{rbac}/namespaces/{SYSTEM_NAMESPACE}/roles/{object}"),
    ];
    expected.sort();
    assert_eq!(paths, expected);
    // The device's first desired state (nothing selects it yet: empty), written only over
    // the version of the EdgeDevice it was decided from.
    let desired = to(&writes, device_path);
    assert!(desired.is_apply_by(CONTROLLER_MANAGER), "{desired:#?}");
    assert_eq!(desired.body["metadata"]["resourceVersion"], "1");
    assert_eq!(desired.body["spec"]["desired"]["modules"], json!([]));
    for w in writes.iter().filter(|w| w.path != device_path) {
        assert!(w.is_apply_by(CONTROLLER_MANAGER), "{w:#?}");
        let owner = &w.body["metadata"]["ownerReferences"];
        assert_eq!(
            (&owner[0]["kind"], &owner[0]["uid"], &owner[0]["controller"]),
            (&json!("EdgeDevice"), &json!("uid-edge-1"), &json!(true)),
            "{}",
            w.path
        );
    }
    assert_eq!(
        to(&writes, &lease_path).body["spec"]["leaseDurationSeconds"],
        40,
        "the Lease lasts the offline threshold"
    );
    for binding in [
        "clusterrolebindings",
        "namespaces/edgefleet-system/rolebindings",
    ] {
        let b = &to(&writes, &format!("{rbac}/{binding}/{object}")).body;
        assert_eq!(b["roleRef"]["name"], object, "{binding}");
        assert_eq!(
            b["subjects"],
            json!([{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "edgefleet:device:edge-1"}]),
            "{binding}"
        );
    }
}

/// edge-1's Lease, as a key to a world's stored objects.
fn edge_1_lease() -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("edgefleet-device-edge-1".into()),
            namespace: Some(SYSTEM_NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// edge-1 registered by a controller: the Lease it wrote and the desired state, as a patch,
/// that a controller starting again finds.
async fn registered_edge_1() -> (Lease, Value) {
    let mut first = World::new();
    first.device(&munich_device("edge-1"));
    registry::reconcile(edge_1(), first.context())
        .await
        .expect("registry reconcile");
    // Its Lease, its RBAC and its first desired state.
    assert_eq!(writes(&first.log.take()).len(), 6);
    let lease = first.stored(&edge_1_lease());
    let desired = json!({"spec": {"desired": first.stored(edge_1().as_ref()).spec.desired}});
    (lease, desired)
}

/// A controller that starts again lists every device as new; a device whose Lease carries
/// the fingerprint of what the registry would write costs it no write at all (at 10,000
/// devices, 50,000 writes at every restart before). One whose objects should change is
/// written again.
#[tokio::test]
async fn a_controller_that_starts_again_writes_nothing_for_a_registered_device() {
    let (lease, desired) = registered_edge_1().await;

    let mut again = World::new();
    again.device(&munich_device("edge-1")).add(lease.clone());
    let ctx = again.context();
    let registered = again.write(edge_1().as_ref(), &desired);
    registry::reconcile(registered, ctx)
        .await
        .expect("registry reconcile");
    let requests = again.log.take();
    assert!(writes(&requests).is_empty(), "{requests:#?}");

    // Another offline threshold means another Lease duration: written again, its RBAC
    // before it, and nothing else.
    let mut changed = World::new();
    changed.device(&munich_device("edge-1")).add(lease);
    let ctx = changed.context_with(&["--offline-threshold", "90s"]);
    let registered = changed.write(edge_1().as_ref(), &desired);
    registry::reconcile(registered, ctx)
        .await
        .expect("registry reconcile");
    assert_eq!(writes(&changed.log.take()).len(), 5);
}

/// A fleet that outgrows its renewal budget has each Lease written again at the longer
/// interval, and nothing else: not its RBAC, which the pace is no part of. Back within the
/// budget, the Lease is written once more without the interval, as it was.
#[tokio::test]
async fn a_fleet_past_its_renewal_budget_has_its_leases_written_again_not_its_rbac() {
    let (lease, desired) = registered_edge_1().await;
    assert_eq!(renew_every(lease.metadata.annotations.as_ref()), None);

    // One device a second, renewing every 10 s, against a budget of one every 20 s.
    let mut grown = World::new();
    grown.device(&munich_device("edge-1")).add(lease);
    let ctx = grown.context_with(&["--renewal-budget", "0.05"]);
    ctx.pace.first(|| (1, None), std::time::Instant::now());
    let registered = grown.write(edge_1().as_ref(), &desired);
    registry::reconcile(registered.clone(), ctx.clone())
        .await
        .expect("registry reconcile");
    let requests = grown.log.take();
    let written = writes(&requests);
    assert_eq!(written.len(), 1, "{requests:#?}");
    assert!(written[0].path.ends_with("/leases/edgefleet-device-edge-1"));
    let paced = grown.stored(&edge_1_lease());
    let annotations = paced.metadata.annotations.as_ref();
    assert_eq!(renew_every(annotations), Some(Duration::from_secs(20)));
    let spec = paced.spec.clone().unwrap_or_default();
    assert_eq!(
        spec.lease_duration_seconds,
        Some(80),
        "twice the 40 s threshold"
    );
    assert!(annotations.is_some_and(|a| a.contains_key(REGISTRATION_ANNOTATION)));

    // Within the budget again (once agents had time to learn it): the Lease alone.
    let mut shrunk = World::new();
    shrunk.device(&munich_device("edge-1")).add(paced);
    let ctx = shrunk.context();
    let registered = shrunk.write(edge_1().as_ref(), &desired);
    registry::reconcile(registered, ctx)
        .await
        .expect("registry reconcile");
    let requests = shrunk.log.take();
    let written = writes(&requests);
    assert_eq!(written.len(), 1, "{requests:#?}");
    assert!(written[0].path.ends_with("/leases/edgefleet-device-edge-1"));
}

/// While the fleet grows past its budget, a registered device's Lease at the earlier pace
/// is left to the pass that writes every Lease once the fleet holds its size: a mass
/// enrolment writes each Lease once after it, not again at every look of the registry.
#[tokio::test]
async fn a_growing_fleet_leaves_registered_leases_to_the_pass_after_it() {
    let (lease, desired) = registered_edge_1().await;
    let mut growing = World::new();
    growing.device(&munich_device("edge-1")).add(lease);
    let ctx = growing.context_with(&["--renewal-budget", "0.05"]);
    let t0 = std::time::Instant::now();
    ctx.pace.first(|| (0, None), t0);
    assert!(!ctx.pace.follow(1, t0), "grown, not yet written");
    let registered = growing.write(edge_1().as_ref(), &desired);
    registry::reconcile(registered.clone(), ctx.clone())
        .await
        .expect("registry reconcile");
    let requests = growing.log.take();
    assert_eq!(writes(&requests).len(), 0, "{requests:#?}");

    assert!(ctx.pace.follow(1, t0 + HOLD), "the pass");
    registry::reconcile(registered, ctx)
        .await
        .expect("registry reconcile");
    let requests = growing.log.take();
    let written = writes(&requests);
    assert_eq!(written.len(), 1, "{requests:#?}");
    assert!(written[0].path.ends_with("/leases/edgefleet-device-edge-1"));
    let paced = growing.stored(&edge_1_lease());
    assert_eq!(
        renew_every(paced.metadata.annotations.as_ref()),
        Some(Duration::from_secs(20))
    );
}

/// The registry writes a device's first desired state only while it has none, and takes a
/// 409 (the EdgeDevice changed since the cache showed it) as no error: it writes nothing
/// over it, and looks again soon, since the device reconcile may have left it the write.
#[tokio::test]
async fn the_registry_leaves_a_desired_state_to_the_device_reconcile_once_there_is_one() {
    let mut world = team_a(munich());
    let ctx = world.context();
    let resolved = resolve(&mut world, &ctx, &edge_1()).await;
    assert!(resolved.spec.desired.is_some());
    // One the registry would not decide (a staged move's, say): still not its to write.
    let moved = world.write(
        &*resolved,
        &json!({"spec": {"desired": {"revision": "0123456789abcdef"}}}),
    );
    world.log.take();
    registry::reconcile(moved, ctx)
        .await
        .expect("registry reconcile");
    let requests = world.log.take();
    assert!(
        !writes(&requests)
            .iter()
            .any(|w| w.path.contains("/edgedevices/")),
        "{requests:#?}"
    );

    let mut raced = World::answering(|objects| {
        Arc::new(move |req| {
            if req.path.ends_with("/edgedevices/edge-1") && req.method == Method::PATCH {
                apiserver::failure(StatusCode::CONFLICT, "Conflict")
            } else {
                objects.answer(req)
            }
        })
    });
    raced.device(&munich_device("edge-1"));
    let action = registry::reconcile(edge_1(), raced.context())
        .await
        .expect("a 409 on the desired state is not an error");
    assert_eq!(action, Action::requeue(registry::LOOK_AGAIN));
}

#[tokio::test]
async fn a_role_is_bound_only_after_it_was_applied() {
    // Refusing both roles shows whether a binding went out before (or without) its role.
    let mut world = World::answering(|objects| {
        Arc::new(move |req| {
            if req.path.contains("roles/") {
                apiserver::failure(StatusCode::FORBIDDEN, "Forbidden")
            } else {
                objects.answer(req)
            }
        })
    });
    world.device(&munich_device("edge-1"));
    let result = registry::reconcile(edge_1(), world.context()).await;
    assert!(result.is_err(), "a refused role is an error: {result:?}");
    let bindings: Vec<_> = world
        .log
        .take()
        .into_iter()
        .filter(|r| r.path.contains("bindings/") || r.path.contains("leases/"))
        .map(|r| r.path)
        .collect();
    // Nor the Lease, whose fingerprint would say the RBAC is in place.
    assert_eq!(bindings, Vec::<String>::new());
}

#[tokio::test]
async fn a_device_whose_name_is_no_dns_label_gets_no_rights_and_is_told_why() {
    let dotted = "edge-9.example";
    let yaml = format!(
        "{{apiVersion: edgefleet.io/v1alpha1, kind: EdgeDevice, metadata: {{name: {dotted}, uid: uid-9}}, spec: {{}}}}"
    );
    let mut world = World::new();
    world.device(&yaml);
    let ctx = world.context();
    let dev: Arc<EdgeDevice> = Arc::new(parse(&yaml));

    registry::reconcile(dev.clone(), ctx.clone())
        .await
        .expect("registry reconcile");
    let registry_requests = world.log.take();
    assert!(registry_requests.is_empty(), "{registry_requests:#?}");

    device::reconcile(dev, ctx).await.expect("device reconcile");
    let requests = world.log.take();
    let writes = writes(&requests);
    let device_path = format!("/apis/edgefleet.io/v1alpha1/edgedevices/{dotted}");
    assert!(
        writes.iter().all(|w| w.object_path() == device_path),
        "{writes:#?}"
    );
    let spec = to(&writes, &device_path);
    assert!(spec.is_apply_by(CONTROLLER_MANAGER));
    assert_eq!(spec.body["spec"]["desired"]["modules"], json!([]));
    let status = to(&writes, &format!("{device_path}/status"));
    assert!(status.is_apply_by(CONTROLLER_MANAGER));
    let [registered, reason, why] = condition(&status.body["status"], "Registered");
    assert_eq!([registered, reason], ["False", "InvalidName"]);
    assert!(why.contains("DNS label"), "{why}");
    assert_eq!(
        events(&requests),
        [("Warning".to_owned(), "DeviceUnregistered".to_owned())]
    );
}

#[tokio::test]
async fn an_enrolled_device_selected_by_a_deployment_gets_its_modules_written_once() {
    let mut world = team_a(munich());
    let ctx = world.context();
    let dev = resolve(&mut world, &ctx, &edge_1()).await;
    let requests = world.log.take();
    let writes = writes(&requests);
    let spec = to(&writes, "/apis/edgefleet.io/v1alpha1/edgedevices/edge-1");
    assert!(spec.is_apply_by(CONTROLLER_MANAGER), "{spec:#?}");
    let written: Vec<_> = spec.body["spec"]
        .as_object()
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        written.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["desired"],
        "the controller writes spec.desired and nothing else of the spec"
    );
    let modules = &spec.body["spec"]["desired"]["modules"];
    assert_eq!(
        (
            &modules[0]["name"],
            &modules[0]["deployment"],
            &modules[0]["moduleRef"],
            &modules[0]["image"]
        ),
        (
            &json!("sensor"),
            &json!("team-a/munich"),
            &json!("team-a/sensor"),
            &json!("localhost/sensor:v1")
        ),
        "{modules}"
    );
    assert_eq!(modules.as_array().map(Vec::len), Some(1));

    // The watch brings the device back as written: nothing changed, nothing is written.
    device::reconcile(dev, ctx).await.expect("second pass");
    let again = world.log.take();
    assert!(again.is_empty(), "{again:#?}");
}

#[tokio::test]
async fn a_held_deployment_is_stalled_with_its_reason_and_writes_to_no_device() {
    let team_b_only = GRANT.replace("[team-a]", "[team-b]");
    let cases = [
        (
            "{selector: {matchExpressions: [{key: '-site-', operator: Exists}]}, modules: [{name: sensor}]}",
            GRANT,
            "InvalidSelector",
        ),
        (
            "{selector: {matchLabels: {site: munich}}, modules: [{name: x, moduleRef: nope}]}",
            GRANT,
            "ModuleNotFound",
        ),
        (
            "{selector: {matchLabels: {site: munich}}, modules: [{name: sensor}], priority: 1000}",
            GRANT,
            "NotGranted",
        ),
        (
            "{selector: {matchLabels: {site: munich}}, modules: [{name: sensor}]}",
            &team_b_only,
            "NoGrant",
        ),
    ];
    for (spec, grant, reason) in cases {
        let d = deployment_with(spec);
        let mut world = World::new();
        world
            .add(parse::<EdgeGrant>(grant))
            .add(parse::<EdgeModule>(MODULE))
            .add(d.clone())
            .device(&munich_device("edge-1"));
        deployment::reconcile(Arc::new(d.clone()), world.context())
            .await
            .expect("deployment reconcile");
        let requests = world.log.take();
        let writes = writes(&requests);
        assert_eq!(writes.len(), 1, "{reason}: only the status: {writes:#?}");
        let status = to(&writes, &format!("{}/status", path_of(&d)));
        assert!(status.is_apply_by(CONTROLLER_MANAGER), "{reason}");
        let status = &status.body["status"];
        assert_eq!(condition(status, STALLED)[..2], ["True", reason]);
        assert_eq!(condition(status, READY)[..2], ["False", reason]);
        assert_eq!(condition(status, RECONCILING)[..2], ["False", reason]);
        assert_eq!(status["observedGeneration"], 1, "{reason}");
        assert_eq!(
            events(&requests),
            [("Warning".to_owned(), reason.to_owned())]
        );
    }
}

/// Two Events of one reason about one deployment, moments apart, each say their own words:
/// kube's `Recorder` folded the second into the first for six minutes (a patch of its
/// series) and kept the first's note, so a rollout's second revision read as its first.
#[tokio::test]
async fn each_event_keeps_its_own_note() {
    let d = munich();
    let mut world = team_a(d.clone());
    let berlin = munich_device("edge-2").replace("munich", "berlin");
    world.device(&berlin);
    let ctx = world.context();
    resolve(&mut world, &ctx, &edge_1()).await;
    let edge_2: EdgeDevice = parse(&berlin);
    for (device, targets) in [
        (None, "targets 1 devices (was 0)"),
        (Some(&edge_2), "targets 2 devices (was 1)"),
    ] {
        if let Some(dev) = device {
            let moved = world.write(dev, &json!({"metadata": {"labels": {"site": "munich"}}}));
            resolve(&mut world, &ctx, &moved).await;
        }
        world.log.take();
        deployment::reconcile(world.update(&d), ctx.clone())
            .await
            .expect("deployment reconcile");
        let requests = world.log.take();
        // The apiserver holds an events.k8s.io/v1 name to a DNS subdomain: `munich.` is
        // refused (422), `munich-` is a prefix it completes.
        for e in requests.iter().filter(|r| r.path.ends_with("/events")) {
            assert_eq!(
                e.body["metadata"]["generateName"], "munich-",
                "{:#?}",
                e.body
            );
        }
        assert!(
            notes(&requests, "TargetsChanged")
                .iter()
                .any(|n| n.starts_with(targets)),
            "{targets}: {:#?}",
            notes(&requests, "TargetsChanged")
        );
    }
}

#[tokio::test]
async fn a_held_deployment_leaves_each_device_what_it_gave_before() {
    let mut world = team_a(munich());
    let ctx = world.context();
    let dev = resolve(&mut world, &ctx, &edge_1()).await;
    let given = dev.spec.desired.clone().expect("desired state");
    assert_eq!(given.modules.len(), 1);
    // The deployment's module now refers to no EdgeModule: its spec is held.
    world.write(
        &munich(),
        &json!({
            "metadata": {"generation": 2, "resourceVersion": "2"},
            "spec": {"modules": [{"name": "sensor", "moduleRef": "nope"}]},
        }),
    );
    world.log.take();
    device::reconcile(dev, ctx).await.expect("second pass");
    let requests = world.log.take();
    assert!(writes(&requests).is_empty(), "{requests:#?}");
}

/// A device's own words, as long as its schema lets it report them (module messages are
/// bounded at 1024 characters there); the Unicode makes characters and bytes differ.
fn words() -> String {
    "ü".repeat(1024)
}

fn chars(v: &Value) -> usize {
    v.as_str().unwrap_or_default().chars().count()
}

/// Every string `apply::status` must cut in a deployment's status, within its bound.
fn assert_within_bounds(status: &Value) {
    let failures = status["failures"].as_array().cloned().unwrap_or_default();
    assert!(failures.len() <= MAX_FAILURE_SAMPLES, "{}", failures.len());
    for f in &failures {
        assert!(
            chars(&f["reason"]) <= FAILURE_REASON_MAX,
            "{}",
            chars(&f["reason"])
        );
    }
    for c in status["conditions"].as_array().into_iter().flatten() {
        assert!(chars(&c["message"]) <= CONDITION_MESSAGE_MAX, "{c}");
    }
    assert!(chars(&status["rollout"]["message"]) <= ROLLOUT_MESSAGE_MAX);
}

#[tokio::test]
async fn apply_status_writes_a_status_cut_to_its_schema() {
    let mut world = team_a(munich());
    let ctx = world.context();
    let oversized = EdgeDeploymentStatus {
        failures: (0..20)
            .map(|i| FailureSample {
                device: format!("edge-{i}"),
                module: "sensor".to_owned(),
                reason: words().repeat(3),
            })
            .collect(),
        rollout: Some(RolloutStatus {
            message: words().repeat(3),
            ..Default::default()
        }),
        ..Default::default()
    };
    let api = Api::<EdgeDeployment>::namespaced(ctx.client.clone(), "team-a");
    apply::status(&api, "munich", &oversized)
        .await
        .expect("status applied");
    let requests = world.log.take();
    let status = &to(
        &writes(&requests),
        "/apis/edgefleet.io/v1alpha1/namespaces/team-a/edgedeployments/munich/status",
    )
    .body["status"];
    assert_within_bounds(status);
    assert_eq!(
        status["failures"].as_array().map(Vec::len),
        Some(MAX_FAILURE_SAMPLES)
    );
    assert!(
        status["failures"][0]["reason"]
            .as_str()
            .is_some_and(|r| r.ends_with('…'))
    );
}

#[tokio::test]
async fn a_devices_oversized_words_reach_a_deployment_status_cut_and_only_once() {
    // Three failing modules: their sample in the Stalled message alone exceeds its bound.
    let d = deployment_with(
        "{selector: {matchLabels: {site: munich}}, modules: [{name: sensor}, {name: sensor-2, moduleRef: sensor}, {name: sensor-3, moduleRef: sensor}]}",
    );
    let mut world = team_a(d.clone());
    let ctx = world.context();
    let dev = resolve(&mut world, &ctx, &edge_1()).await;
    let revision = dev
        .spec
        .desired
        .as_ref()
        .map(|d| d.revision.clone())
        .expect("desired state");
    let failed = |name: &str| json!({"namespace": "team-a", "name": name, "runtimeStatus": "failed", "exitCode": 1, "message": words()});
    world.write(
        &*dev,
        &json!({"status": {"appliedRevision": revision, "modules": [failed("sensor"), failed("sensor-2"), failed("sensor-3")]}}),
    );
    world.log.take();

    deployment::reconcile(Arc::new(d.clone()), ctx.clone())
        .await
        .expect("first pass");
    let requests = world.log.take();
    let writes = writes(&requests);
    let path = path_of(&d);
    let status = &to(&writes, &format!("{path}/status")).body["status"];
    assert_within_bounds(status);
    assert_eq!(condition(status, STALLED)[..2], ["True", "ModulesFailed"]);
    assert_eq!(status["failed"], 1);
    assert_eq!(chars(&status["failures"][0]["reason"]), FAILURE_REASON_MAX);
    let [_, _, message] = condition(status, STALLED);
    assert_eq!(message.chars().count(), CONDITION_MESSAGE_MAX, "cut to fit");

    // The watch brings back the status as written (and the revision kept): the same status
    // is computed again, cut alike, and not written a second time.
    let revision = writes
        .iter()
        .find(|w| w.path.contains("/controllerrevisions/"))
        .map(|w| parse::<ControllerRevision>(&w.body.to_string()))
        .expect("the revision is kept");
    world.update(&revision);
    let d = world.update(&d);
    deployment::reconcile(d, ctx).await.expect("second pass");
    let again = world.log.take();
    assert!(again.is_empty(), "{again:#?}");
}

/// A ControllerRevision under the name of the revision being rolled out, but labelled as
/// another deployment's (a team that may write ControllerRevisions in its namespace could
/// make one): the cache judged it as that other deployment's, so it is refused here too,
/// deleted (that object only) and written again, with an Event that says why.
#[tokio::test]
async fn a_revision_labelled_as_another_deployments_is_written_again() {
    let d = munich();
    let mut world = team_a(d.clone());
    let ctx = world.context();
    deployment::reconcile(world.update(&d), ctx.clone())
        .await
        .expect("first pass");
    let requests = world.log.take();
    let kept = writes(&requests)
        .into_iter()
        .find(|w| w.path.contains("/controllerrevisions/"))
        .map(|w| parse::<ControllerRevision>(&w.body.to_string()))
        .expect("the revision is kept");
    let path = path_of(&kept);
    let relabelled = json!({"metadata": {"uid": "uid-forged",
        "labels": {"edgefleet.io/deployment": "berlin"}}});
    world.write(&kept, &relabelled);

    deployment::reconcile(world.update(&d), ctx.clone())
        .await
        .expect("second pass");
    let requests = world.log.take();
    assert_replaced(
        &requests,
        &path,
        "uid-forged",
        "labelled as another deployment's",
    );
}

/// `requests` deleted the object at `path` (by UID `uid`), then wrote munich's revision
/// there again, and said once, in a RevisionRefused Event, `why`.
fn assert_replaced(requests: &[Request], path: &str, uid: &str, why: &str) {
    let deleted = requests
        .iter()
        .position(|r| r.method == Method::DELETE && r.path == path)
        .unwrap_or_else(|| panic!("{path} deleted: {requests:#?}"));
    assert_eq!(requests[deleted].body["preconditions"]["uid"], uid);
    let again = requests[deleted..]
        .iter()
        .find(|r| r.method == Method::PATCH && r.path == path)
        .unwrap_or_else(|| panic!("{path} written again: {requests:#?}"));
    assert_eq!(
        again.body["metadata"]["labels"]["edgefleet.io/deployment"],
        "munich"
    );
    let refused = notes(requests, "RevisionRefused");
    assert!(
        refused.len() == 1 && refused[0].contains(why),
        "{refused:#?}"
    );
}

/// Deployment munich's kept revision, then an object under its name as `metadata` makes it
/// (the revision cache, which selects on edgefleet's label, not shown it), then a second
/// pass against an apiserver that refuses, as the real one does, to change a
/// ControllerRevision's data (422). The second pass's outcome and requests, and the path.
async fn revision_in_the_way(metadata: Value) -> (bool, Vec<Request>, String) {
    let d = munich();
    let mut world = World::answering(|objects| {
        Arc::new(move |req: &Request| {
            let changes_data = req.method == Method::PATCH
                && req.path.contains("/controllerrevisions/")
                && objects
                    .get(req.object_path())
                    .is_some_and(|o| o["data"] != req.body["data"]);
            if changes_data {
                apiserver::failure(StatusCode::UNPROCESSABLE_ENTITY, "Invalid")
            } else {
                objects.answer(req)
            }
        })
    });
    world
        .add(parse::<EdgeGrant>(GRANT))
        .add(parse::<EdgeModule>(MODULE))
        .add(d.clone())
        .device(&munich_device("edge-1"));
    let ctx = world.context();
    deployment::reconcile(world.update(&d), ctx.clone())
        .await
        .expect("first pass");
    let requests = world.log.take();
    let path = writes(&requests)
        .into_iter()
        .find(|w| w.path.contains("/controllerrevisions/"))
        .map(|w| w.path.clone())
        .expect("the revision is kept");
    world.objects.patch(
        path.clone(),
        &json!({"metadata": metadata, "data": {"mine": 1}}),
    );
    let second = deployment::reconcile(world.update(&d), ctx.clone()).await;
    (second.is_ok(), world.log.take(), path)
}

/// A ControllerRevision under the name of the deployment's revision but without
/// edgefleet's label (a team's own, say): the revision cache never shows it, and the
/// apiserver refuses to change its data. It is deleted (that object only) and the revision
/// written again, with an Event that says why; before, the apply failed on every retry and
/// the deployment's status stood still.
#[tokio::test]
async fn an_unlabelled_revision_in_the_way_is_replaced() {
    let (ok, requests, path) =
        revision_in_the_way(json!({"uid": "uid-unlabelled", "labels": null})).await;
    assert!(ok, "{requests:#?}");
    assert_replaced(
        &requests,
        &path,
        "uid-unlabelled",
        "carries no edgefleet.io/deployment label",
    );
}

/// What the cache will judge (an object labelled as the deployment's), and an unlabelled
/// one already being deleted (a finalizer holds it), are not deleted on a 422: the write is
/// retried, and the first is judged once the cache shows it; the second is not deleted and
/// announced again at every retry.
#[tokio::test]
async fn a_refused_revision_write_deletes_nothing_else() {
    for metadata in [
        json!({"uid": "uid-labelled"}),
        json!({"uid": "uid-going", "labels": null,
               "deletionTimestamp": "2026-06-01T00:00:00Z", "finalizers": ["team/keep"]}),
    ] {
        let (ok, requests, _) = revision_in_the_way(metadata.clone()).await;
        assert!(!ok, "{metadata}: {requests:#?}");
        assert!(
            !requests.iter().any(|r| r.method == Method::DELETE),
            "{metadata}: {requests:#?}"
        );
        assert!(notes(&requests, "RevisionRefused").is_empty(), "{metadata}");
    }
}

/// Device `name`'s Lease, renewed just now: the device is online.
fn renewed_lease(name: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(format!("edgefleet-device-{name}")),
            namespace: Some(SYSTEM_NAMESPACE.to_owned()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            ..Default::default()
        }),
    }
}

/// The devices a pass moved, in order: patches of `spec.rollouts` by the rollout planner.
fn moved(requests: &[Request]) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.query.get("fieldManager").map(String::as_str) == Some(ROLLOUT_MANAGER))
        .filter(|r| !r.body["spec"]["rollouts"]["team-a/munich"].is_null())
        .filter_map(|r| {
            r.path
                .strip_prefix("/apis/edgefleet.io/v1alpha1/edgedevices/")
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_staged_rollout_moves_one_device_at_a_time_even_before_the_cache_shows_a_move() {
    let d = deployment_with(
        "{selector: {matchLabels: {site: munich}}, modules: [{name: sensor}], rollout: {maxUnavailable: 1}}",
    );
    let mut world = team_a(d.clone());
    let devices: Vec<EdgeDevice> = ["edge-1", "edge-2", "edge-3"]
        .into_iter()
        .map(|name| {
            world.device(&munich_device(name)).add(renewed_lease(name));
            parse(&munich_device(name))
        })
        .collect();
    let ctx = world.context();
    // Each device resolved once: the deployment owns it, and has given it nothing yet.
    for dev in &devices {
        resolve(&mut world, &ctx, dev).await;
    }
    world.log.take();

    let d = Arc::new(d);
    deployment::reconcile(d.clone(), ctx.clone())
        .await
        .expect("first pass");
    assert_eq!(moved(&world.log.take()), ["edge-1"]);

    // The watch has not shown edge-1's move yet: the controller remembers it (the move
    // ledger), so edge-1 is not moved a second time, and as it is unavailable nothing else
    // moves either.
    deployment::reconcile(d.clone(), ctx.clone())
        .await
        .expect("second pass");
    assert_eq!(moved(&world.log.take()), Vec::<String>::new());

    // edge-1 takes the revision and its agent reports it running: the next device moves.
    let edge_1 = resolve(&mut world, &ctx, &devices[0]).await;
    let revision = edge_1.spec.desired.as_ref().map(|s| s.revision.clone());
    let running = json!({"namespace": "team-a", "name": "sensor", "runtimeStatus": "running"});
    world.write(
        &devices[0],
        &json!({"status": {"appliedRevision": revision, "modules": [running]}}),
    );
    world.log.take();
    deployment::reconcile(world.update(&*d), ctx)
        .await
        .expect("third pass");
    assert_eq!(moved(&world.log.take()), ["edge-2"]);
}

/// The controller's writes on edge-1 at `below` its EdgeDevice: "" for the object (its
/// desired state), "/status" for its status.
fn edge_1_writes(requests: &[Request], below: &str) -> usize {
    let path = format!("/apis/edgefleet.io/v1alpha1/edgedevices/edge-1{below}");
    requests.iter().filter(|r| r.path == path).count()
}

/// A device reconcile that runs again before the watch shows its status write (its own
/// desired-state write woke it) writes the same conditions once, not twice.
#[tokio::test]
async fn conditions_on_their_way_to_the_cache_are_not_written_again() {
    let mut world = team_a(munich());
    let ctx = world.context();
    let before = world.update(edge_1().as_ref());
    device::reconcile(before.clone(), ctx.clone())
        .await
        .expect("first pass");
    assert_eq!(edge_1_writes(&world.log.take(), "/status"), 1);

    // The cache still shows the device as it was before the first pass wrote: nothing
    // written, and a look again once the write would have shown.
    let action = device::reconcile(before, ctx.clone())
        .await
        .expect("second pass");
    assert_eq!(edge_1_writes(&world.log.take(), "/status"), 0);
    assert_eq!(action, Action::requeue(written::REMEMBERED));

    // Once the cache has shown them, conditions overwritten (by the device, whose status
    // it is) are written again at once.
    let shown = world.update(edge_1().as_ref());
    device::reconcile(shown.clone(), ctx.clone())
        .await
        .expect("the cache shows the write");
    assert_eq!(edge_1_writes(&world.log.take(), "/status"), 0);
    let overwritten = world.write(shown.as_ref(), &json!({"status": {"conditions": []}}));
    device::reconcile(overwritten, ctx.clone())
        .await
        .expect("overwritten");
    assert_eq!(edge_1_writes(&world.log.take(), "/status"), 1);

    // Other conditions are written at once: here Online, as the Lease is renewed.
    let lease = renewed_lease("edge-1");
    world.write(&lease, &serde_json::to_value(&lease).expect("lease"));
    device::reconcile(shown, ctx).await.expect("renewed");
    assert_eq!(edge_1_writes(&world.log.take(), "/status"), 1);
}

/// A new device's first desired state is written once: by the registry, and not again by a
/// device reconcile that runs before the watch shows it (the registry's Lease wakes it), or
/// by the device reconcile, and not again by the registry (which found none in its cache).
#[tokio::test]
async fn a_first_desired_state_on_its_way_to_the_cache_is_written_once() {
    let mut world = team_a(munich());
    let ctx = world.context();
    let before = world.update(edge_1().as_ref());
    registry::reconcile(before.clone(), ctx.clone())
        .await
        .expect("registry reconcile");
    assert_eq!(edge_1_writes(&world.log.take(), ""), 1);
    let action = device::reconcile(before, ctx.clone())
        .await
        .expect("device reconcile before the cache shows the write");
    assert_eq!(edge_1_writes(&world.log.take(), ""), 0);
    assert_eq!(action, Action::requeue(written::REMEMBERED));
    let shown = world.update(edge_1().as_ref());
    assert!(shown.spec.desired.is_some());

    let mut world = team_a(munich());
    let ctx = world.context();
    let before = world.update(edge_1().as_ref());
    device::reconcile(before.clone(), ctx.clone())
        .await
        .expect("device reconcile");
    assert_eq!(edge_1_writes(&world.log.take(), ""), 1);
    let action = registry::reconcile(before, ctx.clone())
        .await
        .expect("registry reconcile before the cache shows the write");
    assert_eq!(edge_1_writes(&world.log.take(), ""), 0);
    // The registry looks again (that write might fail), until the cache shows it.
    assert_eq!(action, Action::requeue(registry::LOOK_AGAIN));
    let shown = world.update(edge_1().as_ref());
    let action = registry::reconcile(shown, ctx)
        .await
        .expect("registry reconcile once the cache shows the write");
    assert_eq!(edge_1_writes(&world.log.take(), ""), 0);
    assert_eq!(action, Action::await_change());
}
