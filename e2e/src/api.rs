//! Setting up the apiserver for a test, and a simulated agent that writes a device's
//! status and Lease the way the real agent does, under the device's own identity.

use std::collections::BTreeMap;
use std::time::Duration;

use edgefleet_crds::device::conditions;
use edgefleet_crds::identity::{AGENT_MANAGER, SYSTEM_NAMESPACE};
use edgefleet_crds::{EdgeDeployment, EdgeDevice, EdgeGrant};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Deserialize;
use serde_json::json;

use crate::lab::client_from;
use crate::{Lab, wait_for};

/// Installs (or updates) edgefleet's CRDs as generated from the types and the system
/// namespace, waits until the CRDs are served, then enrols the lab's devices as an
/// administrator does (their EdgeDevices with their labels, `e2e/lab enrolment`).
pub async fn install_and_enrol(client: &Client) {
    install_crds(client).await;
    enrol_lab_devices(client).await;
}

/// The field manager of the lab administrator's enrolments.
pub const ENROLMENT_MANAGER: &str = "edgefleet-lab-admin";

/// Applies the EdgeDevices `e2e/lab enrolment` prints, restoring their labels as enrolled
/// (a test that changed a device's labels leaves the next one the lab as it was).
pub async fn enrol_lab_devices(client: &Client) {
    let api: Api<EdgeDevice> = Api::all(client.clone());
    let text = Lab::get().run(&["enrolment"]);
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc).expect("e2e/lab enrolment prints YAML");
        let name = value["metadata"]["name"]
            .as_str()
            .expect("an enrolment names its device")
            .to_owned();
        api.patch(
            &name,
            &PatchParams::apply(ENROLMENT_MANAGER).force(),
            &Patch::Apply(&value),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot enrol {name}: {e}"));
    }
}

async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (file, crd) in edgefleet_crds::schema::crds() {
        let name = crd.metadata.name.clone().expect("CRDs have names");
        crds.patch(
            &name,
            &PatchParams::apply("edgefleet-e2e").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot apply {file}: {e}"));
    }
    wait_established(client).await;
    let ns: Api<Namespace> = Api::all(client.clone());
    if ns.get_opt(SYSTEM_NAMESPACE).await.ok().flatten().is_none() {
        let _ = ns
            .create(
                &PostParams::default(),
                &Namespace {
                    metadata: ObjectMeta {
                        name: Some(SYSTEM_NAMESPACE.into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            )
            .await;
    }
}

/// Waits until the apiserver serves every one of edgefleet's CRDs (Established), however
/// they were installed.
pub async fn wait_established(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for (_, crd) in edgefleet_crds::schema::crds() {
        let name = crd.metadata.name.expect("CRDs have names");
        wait_for(
            &format!("CRD {name} to be established"),
            Duration::from_secs(30),
            || async {
                let c = crds.get(&name).await.map_err(|e| e.to_string())?;
                let established = c
                    .status
                    .and_then(|s| s.conditions)
                    .into_iter()
                    .flatten()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                established
                    .then_some(())
                    .ok_or("not established yet".to_owned())
            },
        )
        .await;
    }
}

/// A test's own namespace, labelled `edgefleet.io/e2e`, empty, granted every device and
/// every privilege: a leftover from an earlier run is deleted first.
pub async fn fresh_namespace(client: &Client, name: &str) -> String {
    let ns = ungranted_namespace(client, name).await;
    grant(
        client,
        &ns,
        json!({
            "devices": {},
            "priority": {"min": -1000000, "max": 1000000},
            "hostNetwork": true,
            "hostDevices": true,
        }),
    )
    .await;
    name.to_owned()
}

/// [`fresh_namespace`] without a grant: a team the platform team has not let in yet.
pub async fn ungranted_namespace(client: &Client, name: &str) -> Namespace {
    let api: Api<Namespace> = Api::all(client.clone());
    if api.get_opt(name).await.ok().flatten().is_some() {
        let _ = api.delete(name, &DeleteParams::default()).await;
        wait_for(
            &format!("old namespace {name} to go"),
            Duration::from_secs(120),
            || async {
                match api.get_opt(name).await {
                    Ok(None) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("edgefleet.io/e2e".into(), "true".into())])),
            ..Default::default()
        },
        ..Default::default()
    };
    api.create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"))
}

/// Grants a test namespace what `spec` says (an EdgeGrant spec without `namespaces`), as
/// the platform team does; named `e2e-<namespace>`, it goes with the namespace (its owner).
pub async fn grant(client: &Client, ns: &Namespace, mut spec: serde_json::Value) {
    let name = ns.metadata.name.clone().expect("a namespace has a name");
    spec["namespaces"] = json!([name]);
    let grant = json!({
        "apiVersion": "edgefleet.io/v1alpha1",
        "kind": "EdgeGrant",
        "metadata": {
            "name": format!("e2e-{name}"),
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Namespace", "name": name,
                "uid": ns.metadata.uid.clone().expect("a created namespace has a uid"),
            }],
        },
        "spec": spec,
    });
    Api::<EdgeGrant>::all(client.clone())
        .patch(
            &format!("e2e-{name}"),
            &PatchParams::apply(ENROLMENT_MANAGER).force(),
            &Patch::Apply(&grant),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot grant namespace {name}: {e}"));
}

/// Deletes every EdgeDeployment in the cluster: a test starts from a fleet nobody targets.
pub async fn remove_every_deployment(client: &Client) {
    let all: Api<EdgeDeployment> = Api::all(client.clone());
    for d in all
        .list(&ListParams::default())
        .await
        .expect("list deployments")
        .items
    {
        let ns = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        let _ = Api::<EdgeDeployment>::namespaced(client.clone(), &ns)
            .delete(&name, &DeleteParams::default())
            .await;
    }
}

/// A device's agent, simulated: it holds only the device's own credentials.
#[derive(Clone)]
pub struct Agent {
    pub device: String,
    pub client: Client,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("device", &self.device)
            .finish()
    }
}

impl Agent {
    pub async fn new(lab: &Lab, device: &str) -> Agent {
        let info = lab.info(device);
        let path = info
            .kubeconfig
            .expect("an edge device has an agent kubeconfig");
        Agent {
            device: device.to_owned(),
            client: client_from(&path).await,
        }
    }

    pub fn devices(&self) -> Api<EdgeDevice> {
        Api::all(self.client.clone())
    }

    /// Renews the device's Lease with the agent's own heartbeat request.
    pub async fn renew(&self) -> kube::Result<Lease> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        edgefleet_agent::lease::renew(&leases, &self.device).await
    }

    /// Renews the Lease once the device's grants exist: a device enrolled a moment ago gets
    /// its RBAC from the registry shortly after, and the real agent retries the same way.
    pub async fn renew_once_granted(&self) -> Lease {
        wait_for(
            &format!("{}'s Lease to be renewable", self.device),
            Duration::from_secs(60),
            || async { self.renew().await.map_err(|e| e.to_string()) },
        )
        .await
    }

    /// Applies the device's status (the agent-owned part) under the agent's field manager.
    pub async fn report(&self, status: serde_json::Value) -> kube::Result<EdgeDevice> {
        let patch = json!({
            "apiVersion": EdgeDevice::api_version(&()),
            "kind": EdgeDevice::kind(&()),
            "metadata": { "name": self.device },
            "status": status,
        });
        self.devices()
            .patch_status(
                &self.device,
                &PatchParams::apply(AGENT_MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
    }

    /// Reports every desired module running at the current desired revision, as a healthy
    /// agent would once it applied the desired state. Returns that revision.
    pub async fn report_all_running(&self) -> String {
        let dev = self
            .devices()
            .get(&self.device)
            .await
            .expect("get own device");
        let desired = dev.spec.desired.unwrap_or_default();
        let modules: Vec<_> = desired
            .modules
            .iter()
            .map(|m| {
                json!({"namespace": m.namespace(), "name": m.name, "runtimeStatus": "running", "restartCount": 0})
            })
            .collect();
        let n = modules.len();
        self.report(json!({
            "agentVersion": "e2e-sim",
            "appliedRevision": desired.revision,
            "modulesReady": format!("{n}/{n}"),
            "modules": modules,
            "conditions": [
                {"type": conditions::APPLIED, "status": "True", "reason": "Applied"},
                {"type": conditions::READY, "status": "True", "reason": "ModulesRunning"},
            ],
        }))
        .await
        .expect("report status");
        desired.revision.clone()
    }
}

/// Applies an edgefleet object (`kind` EdgeModule or EdgeDeployment) the way a user would:
/// server-side apply under the field manager `e2e-user`.
pub async fn apply(client: &Client, ns: &str, kind: &str, name: &str, spec: serde_json::Value) {
    try_apply(client, ns, kind, name, spec, false)
        .await
        .unwrap_or_else(|e| panic!("cannot apply {kind} {name}: {e}"));
}

/// Server-side applies an edgefleet object as a team would (`dry_run`: as `kubectl apply
/// --dry-run=server`, through admission but stored nowhere); the apiserver's refusal as text.
pub async fn try_apply(
    client: &Client,
    ns: &str,
    kind: &str,
    name: &str,
    spec: serde_json::Value,
    dry_run: bool,
) -> Result<(), String> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
    let obj = serde_json::json!({
        "apiVersion": "edgefleet.io/v1alpha1", "kind": kind,
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    });
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("edgefleet.io", "v1alpha1", kind));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let mut params = PatchParams::apply("e2e-user").force();
    params.dry_run = dry_run;
    api.patch(name, &params, &Patch::Apply(&obj))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// A token of service account `account` in `namespace` bound to `pod`, as that pod holds
/// it: what the bootstrap presents when it asks for a device's certificate.
pub async fn pod_bound_token(client: &Client, namespace: &str, account: &str, pod: &Pod) -> String {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![],
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod.name_any()),
                uid: pod.uid(),
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .expect("a token for the bootstrap pod")
        .status
        .expect("a token")
        .token
}
