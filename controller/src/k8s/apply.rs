//! Server-side apply of the parts the controller owns, under its field manager, forcing
//! ownership: the controller is the only writer of what it applies.

use edgefleet_crds::bounds::Bounded;
use edgefleet_crds::identity::CONTROLLER_MANAGER;
use edgefleet_crds::writes;
use kube::api::Patch;
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

/// Applies `status` as the whole controller-owned status of object `name`, fitted within
/// the schema's bounds first: a string quoted from a device must never make the apiserver
/// refuse the write (callers that compare with the current status bound it before, too).
pub async fn status<K, S>(api: &Api<K>, name: &str, status: &S) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
    S: Bounded + Serialize + Clone,
{
    let mut status = status.clone();
    status.bound();
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": { "name": name },
        "status": status,
    });
    api.patch_status(
        name,
        &writes::apply(CONTROLLER_MANAGER),
        &Patch::Apply(patch),
    )
    .await
}

/// Applies a whole object the controller owns (a device's Lease or RBAC), named by its
/// own metadata.
pub async fn object<K>(api: &Api<K>, obj: &K) -> kube::Result<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let mut value = serde_json::to_value(obj).map_err(kube::Error::SerdeError)?;
    value["apiVersion"] = K::api_version(&()).into();
    value["kind"] = K::kind(&()).into();
    let name = obj.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &writes::apply(CONTROLLER_MANAGER),
        &Patch::Apply(value),
    )
    .await
}
