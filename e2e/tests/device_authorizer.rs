//! The device authorizer on the lab's real apiserver. The controller runs with
//! `--device-authorization webhook`, so it gives devices no RBAC, and the apiserver's
//! authorization config (e2e/lib/controlplane.sh) asks the controller's `/authorize` about
//! every device user. Two hollow devices (certificates from the lab CA, the real agent loop
//! on an in-memory runtime) bring a deployment to Ready on what the authorizer allows them;
//! with one device's certificate, the other device's objects, the fleet and its own spec
//! stay out of reach; and retiring a device takes its rights away. Needs the lab and
//! `cargo build -p edgefleet-controller`.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_agent::apiserver::Protocol;
use edgefleet_crds::identity::{SYSTEM_NAMESPACE, device_object_name};
use edgefleet_crds::{EdgeDeployment, EdgeDevice};
use edgefleet_e2e::hollow::Behaviour;
use edgefleet_e2e::hollow_fleet::{
    Cluster, HollowFleet, LabCa, Timing, register, roll_out_app, unregister_labelled,
};
use edgefleet_e2e::{
    ControllerProcess, Lab, controller_binary, fresh_namespace, install_and_enrol, wait_for,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

const DEVICES: [&str; 2] = ["authz-1", "authz-2"];
const LABEL: &str = "e2e-device-authorizer";
const PORT: u16 = 18175;

#[tokio::test]
#[ignore = "needs the lab: e2e/lab up"]
async fn devices_authorized_by_the_webhook_reach_only_their_own_objects() {
    let lab = Lab::get();
    let admin = lab.client().await;
    install_and_enrol(&admin).await;
    unregister_labelled(&admin, LABEL).await;
    let ns = fresh_namespace(&admin, "e2e-authz").await;
    let info = lab.info("edge-1");
    let addr = format!("127.0.0.1:{}", info.webhook_port);
    let (cert, key) = (
        info.authorizer_cert.to_string_lossy(),
        info.authorizer_key.to_string_lossy(),
    );
    let ctrl = ControllerProcess::start(
        &controller_binary(),
        &lab,
        PORT,
        &[
            "--leader-election",
            "false",
            "--device-authorization",
            "webhook",
            "--webhook-addr",
            &addr,
            "--webhook-cert",
            &cert,
            "--webhook-key",
            &key,
        ],
    );
    let labels = BTreeMap::from([(LABEL.to_owned(), "yes".to_owned())]);
    let (cluster, ca) = (Cluster::of(&lab), LabCa::open());
    let mut fleet = HollowFleet::new("authz");
    let mut clients = BTreeMap::new();
    for device in DEVICES {
        register(&admin, device, &labels)
            .await
            .unwrap_or_else(|e| panic!("cannot register {device}: {e}"));
        let credential = ca.credential_in(device, Some(&info.authorizer_group));
        let client = cluster
            .device_client(device, &credential, Protocol::Http1)
            .await;
        let behaviour = Behaviour {
            start_delay: Duration::from_millis(500),
            fail: None,
            ..Behaviour::default()
        };
        fleet.start(device, client.clone(), behaviour, &Timing::default());
        clients.insert(device, client);
    }
    roll_out_app(&admin, &ns, "authz", LABEL).await;
    let deployments: Api<EdgeDeployment> = Api::namespaced(admin.clone(), &ns);
    wait_for(
        "both devices Ready on what the device authorizer allows them",
        Duration::from_secs(120),
        || async {
            let d = deployments.get("authz").await.map_err(|e| e.to_string())?;
            let s = d.status.unwrap_or_default();
            (s.targeted == 2 && s.ready == 2)
                .then_some(())
                .ok_or(format!("{}/{} ready", s.ready, s.targeted))
        },
    )
    .await;
    // Nothing else could have authorized them: the controller wrote no bindings.
    let name = device_object_name(DEVICES[0]);
    let crb = Api::<ClusterRoleBinding>::all(admin.clone())
        .get_opt(&name)
        .await;
    let rb = Api::<RoleBinding>::namespaced(admin.clone(), SYSTEM_NAMESPACE)
        .get_opt(&name)
        .await;
    assert!(
        matches!((&crb, &rb), (Ok(None), Ok(None))),
        "no per-device RBAC with the device authorizer: {crb:?} {rb:?}"
    );

    let one = &clients[DEVICES[0]];
    a_device_reaches_only_its_own_objects(one).await;

    // Retiring: the EdgeDevice goes, and the certificate it had authorizes nothing once the
    // apiserver's cached decisions expire (`authorizedTTL`, 60 s in the lab).
    fleet.stop().await;
    Api::<EdgeDevice>::all(admin.clone())
        .delete(DEVICES[0], &DeleteParams::default())
        .await
        .expect("retire the device");
    let own: Api<EdgeDevice> = Api::all(one.clone());
    wait_for(
        "the retired device's certificate to be refused",
        Duration::from_secs(120),
        || async {
            match own.get(DEVICES[0]).await {
                Err(kube::Error::Api(s)) if s.code == 403 => Ok(()),
                other => Err(format!("still answered: {:?}", other.map(|_| "the device"))),
            }
        },
    )
    .await;
    drop(ctrl);
    unregister_labelled(&admin, LABEL).await;
}

/// With `device`'s certificate: its own EdgeDevice is readable, and another device's
/// EdgeDevice (by name or by a list of that name), status and Lease, the fleet's list, and
/// its own spec are refused by the apiserver.
async fn a_device_reaches_only_its_own_objects(device: &Client) {
    let devices: Api<EdgeDevice> = Api::all(device.clone());
    devices
        .get(DEVICES[0])
        .await
        .expect("a device reads its own EdgeDevice");
    let refused = |what: &str, r: kube::Result<()>| match r {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("{what}: expected 403, got {other:?}"),
    };
    refused(
        "another device's EdgeDevice",
        devices.get(DEVICES[1]).await.map(|_| ()),
    );
    refused(
        "the fleet's EdgeDevices",
        devices.list(&ListParams::default()).await.map(|_| ()),
    );
    let other = format!("metadata.name={}", DEVICES[1]);
    refused(
        "another device's EdgeDevice by a list",
        devices
            .list(&ListParams::default().fields(&other))
            .await
            .map(|_| ()),
    );
    let merge = |v| Patch::Merge(v);
    refused(
        "its own spec",
        devices
            .patch(
                DEVICES[0],
                &PatchParams::default(),
                &merge(json!({"spec": {"desired": null}})),
            )
            .await
            .map(|_| ()),
    );
    refused(
        "another device's status",
        devices
            .patch_status(
                DEVICES[1],
                &PatchParams::default(),
                &merge(json!({"status": {}})),
            )
            .await
            .map(|_| ()),
    );
    let leases: Api<Lease> = Api::namespaced(device.clone(), SYSTEM_NAMESPACE);
    refused(
        "another device's Lease",
        leases
            .patch(
                &device_object_name(DEVICES[1]),
                &PatchParams::default(),
                &merge(json!({"spec": {"renewTime": null}})),
            )
            .await
            .map(|_| ()),
    );
}
