//! Presence on the lab's real apiserver: the controller hears a device in what the apiserver
//! records, not in what the device claims. With a device's own certificate (no agent
//! running, so nothing else writes for it): a status write alone brings it online (the time
//! the apiserver records for the agent's apply; `StatusWritten`), silence takes it offline,
//! managed fields the device sends along with its status are not kept, and a renewal of its
//! Lease dated in the future keeps it online for one threshold from when the controller saw
//! it, not until then. And a fleet past its renewal budget renews at the longer interval
//! the controller writes on its Leases. Needs the lab and `cargo build -p
//! edgefleet-controller`.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_agent::apiserver::Protocol;
use edgefleet_agent::lease;
use edgefleet_crds::EdgeDevice;
use edgefleet_crds::device::conditions::ONLINE;
use edgefleet_crds::identity::{AGENT_MANAGER, SYSTEM_NAMESPACE, device_object_name};
use edgefleet_crds::renewal::renew_every;
use edgefleet_crds::status_written::{APPLY_OPERATION, STATUS_SUBRESOURCE, status_written};
use edgefleet_e2e::hollow_fleet::{Cluster, LabCa, register, unregister_labelled};
use edgefleet_e2e::{ControllerProcess, Lab, controller_binary, install_and_enrol, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Resource};
use serde_json::json;
use tokio::sync::watch;

const DEVICE: &str = "presence-1";
const LABEL: &str = "e2e-presence";
const PORT: u16 = 18180;
/// Short, so that silence shows within the test.
const THRESHOLD: &str = "20s";
/// Long enough for a threshold and the reconcile's recheck after it.
const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
#[ignore = "needs the lab: e2e/lab up"]
async fn a_device_is_heard_in_what_the_apiserver_records_not_in_what_it_claims() {
    let lab = Lab::get();
    let admin = lab.client().await;
    install_and_enrol(&admin).await;
    unregister_labelled(&admin, LABEL).await;
    // An earlier run's Lease, dated 2099, may outlive its EdgeDevice until the garbage
    // collector comes by: the new registration would take it over.
    let leases: Api<Lease> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let lease_name = device_object_name(DEVICE);
    let _ = leases.delete(&lease_name, &DeleteParams::default()).await;
    wait_for("an earlier run's Lease to go", WAIT, || async {
        match leases.get_opt(&lease_name).await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|l| l.map(|_| "still there")))),
        }
    })
    .await;
    let ctrl = ControllerProcess::start(
        &controller_binary(),
        &lab,
        PORT,
        &[
            "--leader-election",
            "false",
            "--offline-threshold",
            THRESHOLD,
        ],
    );
    let labels = BTreeMap::from([(LABEL.to_owned(), "yes".to_owned())]);
    register(&admin, DEVICE, &labels)
        .await
        .expect("register the device");
    let device = Cluster::of(&lab)
        .device_client(DEVICE, &LabCa::open().credential(DEVICE), Protocol::Http1)
        .await;
    let devices: Api<EdgeDevice> = Api::all(admin.clone());
    let online = |want: bool, reason: &'static str, what: &'static str| {
        let devices = devices.clone();
        async move {
            wait_for(what, WAIT, || async {
                let d = devices.get(DEVICE).await.map_err(|e| e.to_string())?;
                let c = d
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == ONLINE));
                let now = c.map(|c| (c.is_true(), c.reason.clone()));
                (now == Some((want, reason.to_owned())))
                    .then_some(())
                    .ok_or(format!("{now:?}"))
            })
            .await
        }
    };
    online(false, "NeverSeen", "the registered device never heard from").await;

    // A status write alone is heard: the device has never renewed its Lease.
    let own: Api<EdgeDevice> = Api::all(device.clone());
    apply_status(&own, json!({"agentVersion": "e2e", "os": "linux"}))
        .await
        .expect("the device applies its status");
    online(
        true,
        "StatusWritten",
        "the device online from its status write",
    )
    .await;
    let lease = leases.get(&lease_name).await.expect("its Lease");
    assert_eq!(
        lease.spec.and_then(|s| s.renew_time),
        None,
        "online with no renewal"
    );

    // Silent: offline a threshold later.
    online(false, "LeaseExpired", "the silent device offline").await;

    // Managed fields the device sends with its status are not kept: the apiserver refuses
    // them in an apply, and keeps its own in a patch of the status.
    let forged = json!([{
        "manager": AGENT_MANAGER, "operation": APPLY_OPERATION,
        "subresource": STATUS_SUBRESOURCE, "time": "2099-01-01T00:00:00Z",
        "apiVersion": EdgeDevice::api_version(&()), "fieldsType": "FieldsV1",
        "fieldsV1": {"f:status": {}},
    }]);
    let in_apply = own
        .patch_status(
            DEVICE,
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": EdgeDevice::api_version(&()), "kind": EdgeDevice::kind(&()),
                "metadata": {"name": DEVICE, "managedFields": forged},
                "status": {"agentVersion": "forged"},
            })),
        )
        .await;
    assert!(
        matches!(&in_apply, Err(kube::Error::Api(s)) if s.code == 400),
        "an apply carrying managed fields: {in_apply:?}"
    );
    let patched = own
        .patch_status(
            DEVICE,
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"managedFields": forged},
                "status": {"agentVersion": "forged"},
            })),
        )
        .await
        .expect("the device patches its status");
    let forged_kept = |t: &jiff::Timestamp| *t > "2098-01-01T00:00:00Z".parse().expect("ts");
    let times: Vec<_> = patched
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|e| e.time.as_ref().map(|t| t.0))
        .collect();
    assert!(
        !times.iter().any(forged_kept),
        "managed fields' times: {times:?}"
    );
    // The agent's entry still holds the OS, at the time of its apply.
    let written = status_written(&patched.metadata).map(|t| t.0);
    assert!(written.is_some_and(|t| !forged_kept(&t)), "{written:?}");

    // A renewal dated in the future is heard when the controller sees it, and runs out a
    // threshold later, not in 2099.
    let own_leases: Api<Lease> = Api::namespaced(device.clone(), SYSTEM_NAMESPACE);
    own_leases
        .patch(
            &device_object_name(DEVICE),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"renewTime": "2099-01-01T00:00:00.000000Z"}})),
        )
        .await
        .expect("the device renews its Lease");
    online(true, "LeaseRenewed", "the device online from its renewal").await;
    online(
        false,
        "LeaseExpired",
        "the device offline a threshold later",
    )
    .await;

    drop(ctrl);
    unregister_labelled(&admin, LABEL).await;
}

/// Applies `status` to the device's EdgeDevice as its agent does.
async fn apply_status(devices: &Api<EdgeDevice>, status: serde_json::Value) -> kube::Result<()> {
    devices
        .patch_status(
            DEVICE,
            &PatchParams::apply(AGENT_MANAGER).force(),
            &Patch::Apply(json!({
                "apiVersion": EdgeDevice::api_version(&()), "kind": EdgeDevice::kind(&()),
                "metadata": {"name": DEVICE}, "status": status,
            })),
        )
        .await
        .map(|_| ())
}

const PACED: &str = "pace-1";
const PACED_LABEL: &str = "e2e-pace";
const PACED_PORT: u16 = 18185;

/// A fleet past its renewal budget renews less often, and is judged by the longer interval:
/// the controller writes on each device's Lease the interval its budget allows for the
/// fleet it sees, with a duration to match, and the agent's own heartbeat (its code, with
/// the device's certificate) renews at that interval instead of its own 2 s, and stays
/// online though its renewals are further apart than the 8 s threshold it was given.
#[tokio::test]
#[ignore = "needs the lab: e2e/lab up"]
async fn a_fleet_past_its_renewal_budget_renews_at_the_interval_the_controller_writes() {
    let lab = Lab::get();
    let admin = lab.client().await;
    install_and_enrol(&admin).await;
    unregister_labelled(&admin, PACED_LABEL).await;
    // Enrolled first: a controller takes its first pace from the whole fleet at once (a
    // later one waits until the fleet has needed it for a minute).
    let labels = BTreeMap::from([(PACED_LABEL.to_owned(), "yes".to_owned())]);
    register(&admin, PACED, &labels)
        .await
        .expect("register the device");
    // Agents every 2 s, offline after 8 s, the fleet at most one renewal every 4 s: n
    // devices renew every 4n s (a stretch of 2n), offline after 16n s.
    let ctrl = ControllerProcess::start(
        &controller_binary(),
        &lab,
        PACED_PORT,
        &[
            "--leader-election",
            "false",
            "--lease-interval",
            "2s",
            "--offline-threshold",
            "8s",
            "--renewal-budget",
            "0.25",
        ],
    );
    let devices: Api<EdgeDevice> = Api::all(admin.clone());
    let leases: Api<Lease> = Api::namespaced(admin.clone(), SYSTEM_NAMESPACE);
    let lease_name = device_object_name(PACED);
    let every = wait_for("the device's Lease at the fleet's pace", WAIT, || async {
        let fleet = devices
            .list_metadata(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        let stretch = 2 * u32::try_from(fleet).expect("a lab's fleet");
        let lease = leases.get(&lease_name).await.map_err(|e| e.to_string())?;
        let every = renew_every(lease.metadata.annotations.as_ref());
        let lasts = lease.spec.and_then(|s| s.lease_duration_seconds);
        let want = Duration::from_secs(2) * stretch;
        (every == Some(want) && lasts == Some(8 * i32::try_from(stretch).expect("small")))
            .then_some(want)
            .ok_or(format!(
                "{fleet} devices: every {every:?}, lasting {lasts:?} s"
            ))
    })
    .await;

    let device = Cluster::of(&lab)
        .device_client(PACED, &LabCa::open().credential(PACED), Protocol::Http1)
        .await;
    let (link_tx, _link_rx) = watch::channel(false);
    let (_reported_tx, reported_rx) = watch::channel(());
    let heart = tokio::spawn(lease::heartbeat(
        device,
        PACED.to_owned(),
        SYSTEM_NAMESPACE.to_owned(),
        Duration::from_secs(2),
        Duration::from_secs(2),
        link_tx,
        reported_rx,
    ));
    // Two and a half intervals: three renewals or four (the interval jittered), not one
    // every 2 s.
    let window = every * 5 / 2;
    let started = tokio::time::Instant::now();
    let mut renewals = std::collections::BTreeSet::new();
    while started.elapsed() < window {
        let lease = leases.get(&lease_name).await.expect("the device's Lease");
        renewals.extend(lease.spec.and_then(|s| s.renew_time).map(|t| t.0));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let n = renewals.len();
    assert!(
        (2..=4).contains(&n),
        "{n} renewals in {window:?} at every {every:?}: {renewals:?}"
    );
    let d = devices.get(PACED).await.expect("the device");
    let online = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == ONLINE))
        .map(|c| (c.is_true(), c.reason.clone()));
    assert_eq!(
        online,
        Some((true, "LeaseRenewed".to_owned())),
        "online at renewals {every:?} apart, past the 8 s threshold it was given"
    );
    heart.abort();
    drop(ctrl);
    unregister_labelled(&admin, PACED_LABEL).await;
}
