//! What a module's containers, as the container runtime reports them, mean for its status.
//! Pure: `cri` gathers the facts, this decides running / backoff / stopped / failed /
//! pending, so every case is a unit test.

use edgefleet_crds::module::RestartPolicy;
use edgefleet_crds::{DesiredStatus, ModuleStatus, ResolvedModule, RuntimeStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// The longest message that goes into status.
const MAX_MESSAGE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Created,
    Running,
    Exited,
    Unknown,
}

/// One container of a module's pod, as CRI reports it. Times are nanoseconds since the
/// epoch, 0 when not (yet) set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSeen {
    pub attempt: u32,
    pub state: State,
    pub created_at: i64,
    pub started_at: i64,
    pub finished_at: i64,
    pub exit_code: i32,
    pub reason: String,
    pub message: String,
    pub image_ref: String,
    /// The spec hash of the container's pod (`render::spec_hash`).
    pub spec_hash: String,
}

/// A module's containers, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodSeen {
    pub containers: Vec<ContainerSeen>,
}

/// Why a module has no containers yet, when it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Its manifest is in place: kubelet starts it (or pulls its image).
    Placed,
    /// It waits for the modules of a lower startupOrder.
    WaitingFor(u32),
    /// Its manifest could not be written; the message says why.
    Blocked,
}

pub fn module_status(
    m: &ResolvedModule,
    seen: Option<&PodSeen>,
    placement: Placement,
) -> ModuleStatus {
    let all = seen.map(|p| p.containers.as_slice()).unwrap_or_default();
    // Only the containers of the current spec tell how the module does; a previous spec's
    // container that still runs while kubelet replaces the pod must not pass for it.
    let current = crate::render::spec_hash(m);
    let containers: Vec<&ContainerSeen> = all.iter().filter(|c| c.spec_hash == current).collect();
    let replacing = containers.is_empty() && !all.is_empty();
    let newest = containers.first().copied();
    let last_exited = containers
        .iter()
        .copied()
        .find(|c| c.state == State::Exited);
    let mut status = ModuleStatus {
        namespace: m.namespace().to_owned(),
        name: m.name.clone(),
        runtime_status: RuntimeStatus::Pending,
        exit_code: last_exited.map(|c| c.exit_code),
        restart_count: newest.map_or(0, |c| c.attempt),
        last_start_time: containers
            .iter()
            .find(|c| c.started_at > 0)
            .and_then(|c| time(c.started_at)),
        last_exit_time: last_exited.and_then(|c| time(c.finished_at)),
        image_id: newest
            .map(|c| c.image_ref.clone())
            .filter(|r| !r.is_empty()),
        message: String::new(),
    };
    // Stopping concerns whatever still runs, of any spec.
    let running = all.first().is_some_and(|c| c.state == State::Running);
    let (runtime_status, message) = match (m.desired_status, newest) {
        (DesiredStatus::Stopped, _) if running => (RuntimeStatus::Running, "stopping".to_owned()),
        (DesiredStatus::Stopped, _) => (RuntimeStatus::Stopped, "stopped as desired".to_owned()),
        (DesiredStatus::Running, None) if replacing => (
            RuntimeStatus::Pending,
            "the previous version is being replaced".to_owned(),
        ),
        (DesiredStatus::Running, None) => (
            RuntimeStatus::Pending,
            match placement {
                Placement::Placed => "waiting for the runtime to start it".to_owned(),
                Placement::WaitingFor(order) => {
                    format!("waiting for the modules of startupOrder {order} to run")
                }
                Placement::Blocked => String::new(),
            },
        ),
        (DesiredStatus::Running, Some(c)) => match c.state {
            State::Running => (RuntimeStatus::Running, String::new()),
            State::Created | State::Unknown => (
                RuntimeStatus::Pending,
                "container created, not started".to_owned(),
            ),
            State::Exited => exited(m.spec.restart_policy, c),
        },
    };
    status.runtime_status = runtime_status;
    status.message = truncate(message);
    status
}

fn exited(policy: RestartPolicy, c: &ContainerSeen) -> (RuntimeStatus, String) {
    let detail = [c.reason.as_str(), c.message.as_str()]
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(": ");
    let with_detail = |s: String| {
        if detail.is_empty() {
            s
        } else {
            format!("{s} ({detail})")
        }
    };
    let code = c.exit_code;
    match (policy, code) {
        (RestartPolicy::OnFailure | RestartPolicy::Never, 0) => {
            (RuntimeStatus::Stopped, with_detail("completed".to_owned()))
        }
        (RestartPolicy::Never, _) => (
            RuntimeStatus::Failed,
            with_detail(format!("exited with code {code}")),
        ),
        _ => (
            RuntimeStatus::Backoff,
            with_detail(format!(
                "exited with code {code}, restarted {} times",
                c.attempt
            )),
        ),
    }
}

/// Whether a module counts as up for startupOrder: running, or finished successfully.
pub fn is_up(s: &ModuleStatus) -> bool {
    s.runtime_status == RuntimeStatus::Running
        || (s.runtime_status == RuntimeStatus::Stopped && s.exit_code == Some(0))
}

fn time(nanos: i64) -> Option<Time> {
    jiff::Timestamp::from_nanosecond(i128::from(nanos))
        .ok()
        .map(Time)
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn module(policy: &str, desired: &str) -> ResolvedModule {
        serde_json::from_value(json!({
            "name": "app", "deployment": "ns/d", "moduleRef": "ns/app", "image": "app:1",
            "restartPolicy": policy, "desiredStatus": desired,
        }))
        .expect("module")
    }

    /// The status of `m` from containers that all run its current spec.
    fn status(m: &ResolvedModule, seen: Option<&PodSeen>, placement: Placement) -> ModuleStatus {
        let mut seen = seen.cloned();
        for c in seen.iter_mut().flat_map(|p| p.containers.iter_mut()) {
            c.spec_hash = crate::render::spec_hash(m);
        }
        module_status(m, seen.as_ref(), placement)
    }

    #[test]
    fn a_previous_spec_still_running_is_not_the_module_running() {
        let m = module("Always", "running");
        let old = pod(vec![c(0, State::Running, 0)]);
        let s = module_status(&m, old.as_ref(), Placement::Placed);
        assert_eq!(s.runtime_status, RuntimeStatus::Pending);
        assert!(s.message.contains("previous version"), "{}", s.message);
        assert!(!is_up(&s));
    }

    fn c(attempt: u32, state: State, exit_code: i32) -> ContainerSeen {
        ContainerSeen {
            attempt,
            state,
            created_at: 1_000 + i64::from(attempt),
            started_at: if state == State::Created {
                0
            } else {
                2_000_000_000
            },
            finished_at: if state == State::Exited {
                3_000_000_000
            } else {
                0
            },
            exit_code,
            reason: if state == State::Exited {
                "Error".into()
            } else {
                String::new()
            },
            message: String::new(),
            image_ref: "sha256:abc".into(),
            spec_hash: String::new(),
        }
    }

    fn pod(containers: Vec<ContainerSeen>) -> Option<PodSeen> {
        Some(PodSeen { containers })
    }

    #[test]
    fn runtime_status_table() {
        use RuntimeStatus::*;
        use State::{Created, Exited, Running as Up};
        let cases = [
            (
                "Always",
                "running",
                None,
                Pending,
                "waiting for the runtime",
            ),
            ("Always", "running", pod(vec![c(0, Up, 0)]), Running, ""),
            (
                "Always",
                "running",
                pod(vec![c(0, Created, 0)]),
                Pending,
                "not started",
            ),
            (
                "Always",
                "running",
                pod(vec![c(3, Exited, 1), c(2, Exited, 1)]),
                Backoff,
                "code 1, restarted 3",
            ),
            (
                "Always",
                "running",
                pod(vec![c(1, Exited, 0)]),
                Backoff,
                "code 0",
            ),
            (
                "OnFailure",
                "running",
                pod(vec![c(0, Exited, 2)]),
                Backoff,
                "code 2",
            ),
            (
                "OnFailure",
                "running",
                pod(vec![c(0, Exited, 0)]),
                Stopped,
                "completed",
            ),
            (
                "Never",
                "running",
                pod(vec![c(0, Exited, 1)]),
                Failed,
                "exited with code 1 (Error)",
            ),
            (
                "Never",
                "running",
                pod(vec![c(0, Exited, 0)]),
                Stopped,
                "completed",
            ),
            (
                "Always",
                "stopped",
                pod(vec![c(0, Up, 0)]),
                Running,
                "stopping",
            ),
            ("Always", "stopped", None, Stopped, "stopped as desired"),
        ];
        for (policy, desired, seen, expected, message) in cases {
            let s = status(&module(policy, desired), seen.as_ref(), Placement::Placed);
            assert_eq!(s.runtime_status, expected, "{policy} {desired} {seen:?}");
            assert!(
                s.message.contains(message),
                "{:?} lacks {message:?}",
                s.message
            );
        }
    }

    #[test]
    fn counts_restarts_and_keeps_the_last_exit() {
        let seen = pod(vec![c(2, State::Running, 0), c(1, State::Exited, 137)]);
        let s = status(
            &module("Always", "running"),
            seen.as_ref(),
            Placement::Placed,
        );
        assert_eq!(s.runtime_status, RuntimeStatus::Running);
        assert_eq!(s.restart_count, 2);
        assert_eq!(s.exit_code, Some(137));
        assert_eq!(s.last_exit_time.as_ref().map(|t| t.0.as_second()), Some(3));
        assert_eq!(s.last_start_time.as_ref().map(|t| t.0.as_second()), Some(2));
        assert_eq!(s.image_id.as_deref(), Some("sha256:abc"));
        assert!(is_up(&s));
    }

    #[test]
    fn waiting_modules_say_for_what() {
        let s = status(
            &module("Always", "running"),
            None,
            Placement::WaitingFor(10),
        );
        assert_eq!(s.runtime_status, RuntimeStatus::Pending);
        assert!(s.message.contains("startupOrder 10"));
        assert!(!is_up(&s));
    }

    #[test]
    fn long_messages_are_cut() {
        let mut long = c(0, State::Exited, 1);
        long.message = "é".repeat(400);
        let s = status(
            &module("Never", "running"),
            pod(vec![long]).as_ref(),
            Placement::Placed,
        );
        assert!(s.message.len() <= MAX_MESSAGE && s.message.ends_with("..."));
    }
}
