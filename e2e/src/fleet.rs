//! The fleet as the apiserver shows it once edgefleet is installed: which devices the
//! bootstrap joined, and how far the deployments rolled out. The checks are for
//! [`wait_for`](crate::wait_for): `Ok` when done, otherwise `Err` saying what they saw.

use edgefleet_crds::device::conditions::ONLINE;
use edgefleet_crds::identity::{
    AGENT_NAME, APP_NAME_LABEL, DEVICE_LABEL, DEVICE_LABEL_VALUE, SYSTEM_NAMESPACE,
};
use edgefleet_crds::{EdgeDeployment, EdgeDevice, RuntimeStatus, condition, deployment};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

/// The lab's edge devices (the Nodes carrying the device label), sorted by name.
pub async fn edge_devices(client: &Client) -> Vec<String> {
    let selector = format!("{DEVICE_LABEL}={DEVICE_LABEL_VALUE}");
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default().labels(&selector))
        .await
        .unwrap_or_else(|e| panic!("cannot list the device nodes: {e}"));
    let mut names: Vec<String> = nodes.iter().map(ResourceExt::name_any).collect();
    names.sort();
    names
}

/// `Ok` once every one of `devices` has joined: its agent runs (its static pod's mirror is
/// Running), has reported, and keeps the device online.
pub async fn all_joined(client: &Client, devices: &[String]) -> Result<(), String> {
    let joined = joined(client).await.map_err(|e| e.to_string())?;
    if joined == devices {
        Ok(())
    } else {
        Err(format!(
            "joined {}/{}: {joined:?}",
            joined.len(),
            devices.len()
        ))
    }
}

async fn joined(client: &Client) -> kube::Result<Vec<String>> {
    let agents = Api::<Pod>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .list(&ListParams::default().labels(&format!("{APP_NAME_LABEL}={AGENT_NAME}")))
        .await?;
    let running: Vec<String> = agents
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()))
        .collect();
    let devices = Api::<EdgeDevice>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    let mut joined: Vec<String> = devices
        .iter()
        .filter(|d| running.contains(&d.name_any()))
        .filter(|d| {
            d.status.as_ref().is_some_and(|s| {
                s.agent_version.is_some()
                    && condition::find(&s.conditions, ONLINE).is_some_and(|c| c.is_true())
            })
        })
        .map(ResourceExt::name_any)
        .collect();
    joined.sort();
    Ok(joined)
}

/// `Ok` once there are EdgeDeployments and every one is Ready; otherwise how many are,
/// and how many of the devices' modules run.
pub async fn all_ready(client: &Client) -> Result<(), String> {
    let deployments = Api::<EdgeDeployment>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let ready = deployments
        .iter()
        .filter(|d| {
            d.status.as_ref().is_some_and(|s| {
                condition::find(&s.conditions, deployment::conditions::READY)
                    .is_some_and(|c| c.is_true())
            })
        })
        .count();
    if ready == deployments.items.len() && ready > 0 {
        return Ok(());
    }
    let devices = Api::<EdgeDevice>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?;
    let modules: Vec<RuntimeStatus> = devices
        .iter()
        .filter_map(|d| d.status.as_ref())
        .flat_map(|s| s.modules.iter().map(|m| m.runtime_status))
        .collect();
    let running = modules
        .iter()
        .filter(|s| **s == RuntimeStatus::Running)
        .count();
    Err(format!(
        "deployments Ready {ready}/{}, modules running {running}/{}",
        deployments.items.len(),
        modules.len()
    ))
}
