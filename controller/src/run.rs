//! Runs the servers every replica has (health, metrics, admission, the device authorizer)
//! and, while this replica leads, the five controllers on the feeds of
//! [`crate::k8s::feeds`]: the registry (enrolled EdgeDevices), devices, deployment status,
//! module status and the approval of joining devices' certificates.

use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgefleet_crds::condition;
use edgefleet_crds::device::conditions::{ONLINE, REGISTERED};
use edgefleet_crds::identity::{LEADER_LEASE, device_of_object};
use edgefleet_crds::{EdgeDeployment, EdgeDevice, EdgeModule};
use futures::StreamExt;
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use thiserror::Error;

use crate::config::Config;
use crate::decide::{join, presence};
use crate::k8s::context::Context;
use crate::k8s::feeds::{Feeds, watch};
use crate::k8s::kept_lease::KeptLease;
use crate::k8s::leader::Elector;
use crate::k8s::throttle::throttled;
use crate::k8s::watches::{Synced, changes_of, enrolments, spec_changes};
use crate::metrics::{HubTotals, Metrics};
use crate::reconcile::{
    self, csr_approval, deployment, device, hub_accounts, module_status, registry,
};
use crate::serve::http::{self, Health};
use crate::serve::{device_authorizer, webhooks};

/// How often at most a deployment's or a module's status follows its devices: once a second
/// while they keep changing, at once after a quiet second.
const STATUS_PERIOD: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum RunError {
    #[error("cannot build a Kubernetes client (KUBECONFIG or in-cluster config): {0}")]
    Client(#[source] kube::Error),
    #[error("cannot serve health and metrics on {0}: {1}")]
    Http(std::net::SocketAddr, #[source] std::io::Error),
    #[error("lost leadership; stopping so that only one replica writes")]
    LostLeadership,
    #[error(transparent)]
    Webhook(#[from] webhooks::WebhookError),
    #[error("{0}")]
    Config(&'static str),
}

/// Runs until SIGTERM or Ctrl-C (clean exit) or lost leadership (error exit).
pub async fn run(config: Config) -> Result<(), RunError> {
    if let Some(problem) = config.problem() {
        return Err(RunError::Config(problem));
    }
    let client = Client::try_default().await.map_err(RunError::Client)?;
    let metrics = Arc::new(Metrics::default());
    let ready_flag = Arc::new(AtomicBool::new(false));
    // Every replica with a webhook port authorizes devices, from a watch of its own.
    let enrolled = config
        .webhook_addr
        .map(|_| device_authorizer::Enrolled::follow_from(client.clone()));
    let health = Health {
        metrics: metrics.clone(),
        ready: ready_flag.clone(),
        authorizer: enrolled
            .clone()
            .filter(|_| config.readiness_waits_for_authorizer()),
    };
    let addr = config.http_addr;
    let listener = tokio::spawn(http::serve(addr, health));
    // Every replica answers admission and authorizes devices, leader or not; the webhook
    // server ends only on an error.
    let webhook = {
        let serving = config.webhook_addr.zip(enrolled).map(|(a, enrolled)| {
            webhooks::serve(
                client.clone(),
                enrolled,
                a,
                config.webhook_cert.clone(),
                config.webhook_key.clone(),
                config.namespace.clone(),
            )
        });
        let task = tokio::spawn(async move {
            match serving {
                Some(s) => s.await,
                None => std::future::pending().await,
            }
        });
        async move {
            match task.await {
                Ok(Err(e)) => e,
                _ => std::future::pending().await,
            }
        }
    };
    tokio::pin!(webhook);

    let elector = config.leader_election.then(|| {
        Elector::new(
            client.clone(),
            &config.namespace,
            LEADER_LEASE,
            &config.identity,
            config.lease_duration,
        )
    });
    let mut lost = match &elector {
        Some(e) => {
            // A standby is a healthy replica: ready, so rollouts of the Deployment can proceed.
            ready_flag.store(true, Ordering::Relaxed);
            tokio::select! {
                rx = e.lead() => Some(rx),
                () = shutdown_signal() => return Ok(()),
                e = &mut webhook => return Err(e.into()),
            }
        }
        None => None,
    };
    ready_flag.store(false, Ordering::Relaxed);

    let controllers = controllers(client, config, metrics, ready_flag);
    let result = tokio::select! {
        () = controllers => Ok(()),
        e = &mut webhook => Err(e.into()),
        r = listener => match r {
            Ok(Err(e)) => Err(RunError::Http(addr, e)),
            _ => Ok(()),
        },
        () = async {
            match lost.as_mut() {
                Some(rx) => { let _ = rx.wait_for(|l| *l).await; }
                None => std::future::pending::<()>().await,
            }
        } => Err(RunError::LostLeadership),
    };
    if let (Some(e), Ok(())) = (&elector, &result) {
        drop(lost);
        e.release().await;
    }
    result
}

pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// Runs the five controllers (and the hub's accounts) on the shared caches.
async fn controllers(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    ready_flag: Arc<AtomicBool>,
) {
    let bounded = ControllerConfig::default().concurrency(config.concurrency);
    let synced = Arc::new(Synced::default());
    let (stores, feeds) = watch(&client, &config.namespace, &synced);
    let Feeds {
        devices,
        devices_for_deployments,
        devices_for_modules,
        devices_for_registry,
        devices_for_hub,
        deployments,
        deployments_for_devices,
        deployments_for_modules,
        modules,
        modules_for_devices,
        modules_for_deployments,
        grants_for_devices,
        grants_for_deployments,
        lease_changes,
        node_changes,
        revision_changes,
    } = feeds;
    let ctx = Arc::new(Context::new(
        client,
        config,
        metrics.clone(),
        stores,
        synced,
    ));

    let ready_ctx = ctx.clone();
    tokio::spawn(async move {
        ready_ctx.synced().await;
        tracing::info!("caches synced");
        ready_flag.store(true, Ordering::Relaxed);
        device_gauges(ready_ctx).await;
    });

    let catalog_changes = futures::stream::select(
        futures::stream::select(
            changes_of(
                deployments_for_devices,
                ctx.stores.deployments.clone(),
                device::reads_of_deployment,
            )
            .map(|_| ()),
            spec_changes(modules_for_devices, ctx.stores.modules.clone()).map(|_| ()),
        ),
        spec_changes(grants_for_devices, ctx.stores.grants.clone()).map(|_| ()),
    );
    let device_store = ctx.stores.devices.clone();
    let device_events = changes_of(devices, ctx.stores.devices.clone(), device::reads);
    let device_ctrl = Controller::for_shared_stream(device_events, ctx.stores.devices.clone())
        .with_config(bounded.clone())
        .reconcile_on(lease_changes.filter_map(move |l| ready(woken_by(&device_store, &l))))
        .watches_stream(node_changes, |n| {
            Some(ObjectRef::<EdgeDevice>::new(&n.name_any()))
        })
        .reconcile_all_on(catalog_changes)
        .graceful_shutdown_on(shutdown_signal())
        .run(
            device::reconcile,
            reconcile::retry(device::CONTROLLER),
            ctx.clone(),
        )
        .for_each(|_| ready(()));

    let (new_pace, paces) = futures::channel::mpsc::channel(1);
    tokio::spawn(pace_renewals(ctx.clone(), new_pace));
    let registry_ctrl = Controller::for_shared_stream(
        enrolments(devices_for_registry, ctx.stores.devices.clone()),
        ctx.stores.devices.clone(),
    )
    .with_config(bounded.clone())
    .reconcile_all_on(paces)
    .graceful_shutdown_on(shutdown_signal())
    .run(
        registry::reconcile,
        reconcile::retry(registry::CONTROLLER),
        ctx.clone(),
    )
    .for_each(|_| ready(()));

    let dep_store = ctx.stores.deployments.clone();
    let dep_store_for_grants = ctx.stores.deployments.clone();
    let deployment_ctrl = Controller::for_shared_stream(
        spec_changes(deployments, ctx.stores.deployments.clone()),
        ctx.stores.deployments.clone(),
    )
    .with_config(bounded.clone())
    .watches_shared_stream(devices_for_deployments, |d: Arc<EdgeDevice>| {
        deployment::deployments_of_device(&d)
    })
    .watches_shared_stream(modules_for_deployments, move |m: Arc<EdgeModule>| {
        deployment::deployments_using_module(&dep_store, &m)
    })
    .watches_shared_stream(
        spec_changes(grants_for_deployments, ctx.stores.grants.clone()),
        move |_| deployment::every_deployment(&dep_store_for_grants),
    )
    .reconcile_on(revision_changes)
    .graceful_shutdown_on(shutdown_signal())
    .run(
        throttled(STATUS_PERIOD, deployment::reconcile),
        reconcile::retry(deployment::CONTROLLER),
        ctx.clone(),
    )
    .for_each(|_| ready(()));

    let module_ctrl = Controller::for_shared_stream(
        spec_changes(modules, ctx.stores.modules.clone()),
        ctx.stores.modules.clone(),
    )
    .with_config(bounded.clone())
    .watches_shared_stream(devices_for_modules, |d: Arc<EdgeDevice>| {
        module_status::modules_of_device(&d)
    })
    .watches_shared_stream(deployments_for_modules, |d: Arc<EdgeDeployment>| {
        module_status::modules_of_deployment(&d)
    })
    .graceful_shutdown_on(shutdown_signal())
    .run(
        throttled(STATUS_PERIOD, module_status::reconcile),
        reconcile::retry(module_status::CONTROLLER),
        ctx.clone(),
    )
    .for_each(|_| ready(()));

    let csr_ctrl = Controller::new(
        Api::<CertificateSigningRequest>::all(ctx.client.clone()),
        join::watch_config(),
    )
    .with_config(bounded)
    .graceful_shutdown_on(shutdown_signal())
    .run(
        csr_approval::reconcile,
        reconcile::retry(csr_approval::CONTROLLER),
        ctx.clone(),
    )
    .for_each(|_| ready(()));

    // The cloud hub's accounts follow the enrolled devices (when the chart runs a hub).
    // Without a hub the subscription goes: an unread one would hold up the devices' watch.
    let hub_accounts = if ctx.config.cloud_hub {
        futures::future::Either::Left(hub_accounts::run(ctx.clone(), devices_for_hub.map(|_| ())))
    } else {
        drop(devices_for_hub);
        futures::future::Either::Right(ready(()))
    };

    futures::join!(
        hub_accounts,
        device_ctrl,
        registry_ctrl,
        deployment_ctrl,
        module_ctrl,
        csr_ctrl
    );
}

/// The device a renewal of Lease `l` wakes, if any: only one the controller does not
/// report online can be changed by it (`presence::hearing_may_change`).
fn woken_by(devices: &Store<EdgeDevice>, l: &KeptLease) -> Option<ObjectRef<EdgeDevice>> {
    let device = ObjectRef::<EdgeDevice>::new(device_of_object(&l.name_any())?);
    let reported = devices.get(&device);
    presence::hearing_may_change(reported.as_ref().and_then(|d| d.status.as_ref()))
        .then_some(device)
}

/// Every 10 s, sets the fleet's renewal pace by its size (`decide::renewal_pace`); when
/// every Lease is to be written at it, has the registry do so, at most one pass pending at
/// a time (and each online device's Online condition, which names the threshold, changes
/// once).
async fn pace_renewals(ctx: Arc<Context>, mut new_pace: futures::channel::mpsc::Sender<()>) {
    ctx.synced().await;
    loop {
        let now = std::time::Instant::now();
        let was = ctx.pace.every();
        let devices = ctx.stores.devices.state().len();
        let write = ctx.pace.follow(devices, now);
        let every = ctx.pace.every();
        if every != was {
            tracing::info!(
                devices,
                renew_every_s = every.as_secs(),
                was_s = was.as_secs(),
                offline_after_s = ctx.pace.lease_duration().as_secs(),
                "the fleet's renewal interval changes"
            );
        }
        if write {
            tracing::info!(
                renew_every_s = every.as_secs(),
                "writing the fleet's renewal interval on every device's Lease"
            );
            // Full: a pass is pending, and it reads the pace when it runs.
            let _ = new_pace.try_send(());
        }
        ctx.metrics.set_pace(every, ctx.pace.offline_threshold(now));
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

/// Keeps the devices-by-state and the fleet's hub gauges current.
async fn device_gauges(ctx: Arc<Context>) {
    loop {
        let (mut online, mut offline, mut unregistered) = (0, 0, 0);
        let mut hubs = HubTotals::default();
        for d in ctx.stores.devices.state() {
            if let Some(h) = d.status.as_ref().and_then(|s| s.hub.as_ref()) {
                hubs.add(h);
            }
            let conds = d
                .status
                .as_ref()
                .map(|s| s.conditions.as_slice())
                .unwrap_or_default();
            let is = |t| condition::find(conds, t).is_some_and(|c| c.is_true());
            if !is(REGISTERED) && ctx.node(&d.name_any()).is_none() {
                unregistered += 1;
            } else if is(ONLINE) {
                online += 1;
            } else {
                offline += 1;
            }
        }
        ctx.metrics.set_devices("online", online);
        ctx.metrics.set_devices("offline", offline);
        ctx.metrics.set_devices("unregistered", unregistered);
        ctx.metrics.set_hubs(&hubs);
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}
