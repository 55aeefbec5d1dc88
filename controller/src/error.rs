//! Errors named after the action that failed. A bad spec is not an error here: it is
//! reported on the object and waits for a change. These are the transient failures that
//! back off per object and retry.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot apply EdgeDevice {0}: {1}")]
    ApplyDevice(String, #[source] kube::Error),
    #[error("cannot apply the status of EdgeDevice {0}: {1}")]
    ApplyDeviceStatus(String, #[source] kube::Error),
    #[error("cannot create EdgeDevice {0}: {1}")]
    CreateDevice(String, #[source] kube::Error),
    #[error("cannot apply the Lease of device {0}: {1}")]
    ApplyLease(String, #[source] kube::Error),
    #[error("cannot apply the RBAC of device {0}: {1}")]
    ApplyRbac(String, #[source] kube::Error),
    #[error("cannot apply the status of EdgeDeployment {0}: {1}")]
    ApplyDeploymentStatus(String, #[source] kube::Error),
    #[error("cannot apply the status of EdgeModule {0}: {1}")]
    ApplyModuleStatus(String, #[source] kube::Error),
    #[error("cannot move device {0} to a new revision: {1}")]
    MoveDevice(String, #[source] kube::Error),
    #[error("cannot write the ControllerRevision {0}: {1}")]
    ApplyRevision(String, #[source] kube::Error),
    #[error("cannot delete the ControllerRevision {0}, which edgefleet did not write: {1}")]
    DeleteRevision(String, #[source] kube::Error),
    #[error("cannot read the pod {0} behind a certificate request: {1}")]
    ReadPod(String, #[source] kube::Error),
    #[error("cannot approve or deny the certificate request {0}: {1}")]
    DecideCsr(String, #[source] kube::Error),
}

impl Error {
    /// A bounded category for metrics: never error text or object names.
    pub fn category(&self) -> &'static str {
        match self {
            Error::ApplyDevice(..) | Error::CreateDevice(..) => "device_write",
            Error::ApplyDeviceStatus(..) => "device_status_write",
            Error::ApplyLease(..) => "lease_write",
            Error::ApplyRbac(..) => "rbac_write",
            Error::ApplyDeploymentStatus(..) => "deployment_status_write",
            Error::ApplyModuleStatus(..) => "module_status_write",
            Error::MoveDevice(..) => "device_move",
            Error::ApplyRevision(..) => "revision_write",
            Error::DeleteRevision(..) => "revision_delete",
            Error::ReadPod(..) => "pod_read",
            Error::DecideCsr(..) => "csr_write",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
