//! Reading module containers from the container runtime over CRI (v1), on the node's own
//! socket: this works with no apiserver, which is the point. Only pods the agent wrote are
//! looked at (found by their managed-by label).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use edgefleet_crds::identity::AGENT_NAME;
use edgefleet_crds::identity::pods::{MANAGED_BY_LABEL, MODULE_LABEL, SPEC_HASH_LABEL};
use edgefleet_crds::module_key;
use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerFilter, ContainerState, ContainerStatusRequest, ListContainersRequest,
    ListPodSandboxRequest, PodSandboxFilter,
};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};
use crate::observe::{ContainerSeen, PodSeen, State};

/// How many of a module's newest containers are asked for details: the current one and
/// the one before it (for the last exit while the current one runs).
const DETAILED: usize = 2;

#[derive(Debug, Clone)]
pub struct Cri {
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// Connects lazily: after a reboot the agent may start before the runtime's socket.
    pub fn new(socket: &Path) -> Cri {
        let path: PathBuf = socket.to_path_buf();
        // The URI is a placeholder: the connector dials the socket.
        let endpoint = Endpoint::from_static("http://localhost");
        let channel = endpoint.connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }));
        Cri {
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// The agent's module pods by module key (`namespace/name`), containers newest first.
    pub async fn observe(&self) -> Result<BTreeMap<String, PodSeen>> {
        let mut client = self.client.clone();
        let sandboxes = client
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    label_selector: HashMap::from([(
                        MANAGED_BY_LABEL.to_owned(),
                        AGENT_NAME.to_owned(),
                    )]),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|e| Error::Cri("listing pod sandboxes", e))?
            .into_inner()
            .items;
        // Sandbox -> (module key, the spec hash its pod carries).
        let module_of: HashMap<String, (String, String)> = sandboxes
            .into_iter()
            .filter_map(|s| {
                let namespace = &s.metadata.as_ref()?.namespace;
                let module = module_key(namespace, s.labels.get(MODULE_LABEL)?);
                let hash = s.labels.get(SPEC_HASH_LABEL).cloned().unwrap_or_default();
                Some((s.id, (module, hash)))
            })
            .collect();
        let containers = client
            .list_containers(ListContainersRequest {
                filter: Some(ContainerFilter::default()),
            })
            .await
            .map_err(|e| Error::Cri("listing containers", e))?
            .into_inner()
            .containers;
        let mut by_module: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for c in containers {
            if let Some((module, hash)) = module_of.get(&c.pod_sandbox_id) {
                by_module
                    .entry(module.clone())
                    .or_default()
                    .push((c, hash.clone()));
            }
        }
        let mut pods = BTreeMap::new();
        for (module, mut cs) in by_module {
            cs.sort_by_key(|(c, _)| std::cmp::Reverse(c.created_at));
            let mut seen = Vec::with_capacity(cs.len());
            for (i, (c, spec_hash)) in cs.into_iter().enumerate() {
                let attempt = c.metadata.as_ref().map_or(0, |m| m.attempt);
                let mut s = ContainerSeen {
                    attempt,
                    state: state(c.state),
                    created_at: c.created_at,
                    started_at: 0,
                    finished_at: 0,
                    exit_code: 0,
                    reason: String::new(),
                    message: String::new(),
                    image_ref: c.image_ref,
                    spec_hash,
                };
                if i < DETAILED {
                    let status = client
                        .container_status(ContainerStatusRequest {
                            container_id: c.id,
                            verbose: false,
                        })
                        .await
                        .map_err(|e| Error::Cri("container status", e))?
                        .into_inner()
                        .status;
                    if let Some(st) = status {
                        s.state = state(st.state);
                        s.started_at = st.started_at;
                        s.finished_at = st.finished_at;
                        s.exit_code = st.exit_code;
                        s.reason = st.reason;
                        s.message = st.message;
                    }
                }
                seen.push(s);
            }
            pods.insert(module, PodSeen { containers: seen });
        }
        Ok(pods)
    }
}

fn state(raw: i32) -> State {
    match ContainerState::try_from(raw) {
        Ok(ContainerState::ContainerCreated) => State::Created,
        Ok(ContainerState::ContainerRunning) => State::Running,
        Ok(ContainerState::ContainerExited) => State::Exited,
        _ => State::Unknown,
    }
}
