//! The agent's errors, named after the action that failed.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("cannot read the kubeconfig {0}: {1}")]
    Kubeconfig(PathBuf, #[source] kube::config::KubeconfigError),
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot {0} {1}: {2}")]
    Io(&'static str, PathBuf, #[source] std::io::Error),
    #[error("the container runtime refused {0}: {1}")]
    Cri(&'static str, #[source] tonic::Status),
    #[error("cannot render a manifest: {0}")]
    Render(#[source] serde_yaml::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Shorthand for the IO errors of one path.
pub fn io(action: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |e| Error::Io(action, path, e)
}
