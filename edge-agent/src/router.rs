//! The device's router: carries each module's output messages where its routes say, to
//! other modules' inputs or upstream, when their condition holds. It is a client of the
//! device's hub (the agent's own user, which alone may publish into modules' inputs), so
//! routing keeps working offline, and a module can only ever reach the inputs a route
//! gives it.

use std::time::Duration;

use edgefleet_crds::ResolvedModule;
use edgefleet_crds::hub::{AGENT_USER, NATS_PORT, module_inputs, module_outputs, upstream_subject};
use edgefleet_crds::route::{Condition, Destination};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One route as the router runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hop {
    /// The NATS subject the route reads.
    pub from: String,
    /// Where matching messages go.
    pub to: String,
    pub when: Option<Condition>,
}

/// The hops of every route of `modules` on `device`. A route the agent's validation would
/// have refused (it never gets here) is skipped, not guessed at.
pub fn plan(device: &str, modules: &[ResolvedModule]) -> Vec<Hop> {
    let mut hops = Vec::new();
    for m in modules {
        let ns = m.namespace();
        for r in &m.routes {
            let Ok(dest) = r.check() else { continue };
            let to = match dest {
                Destination::Input { module, input } => {
                    format!("{}.{input}", module_inputs(ns, module))
                }
                Destination::Upstream(name) => upstream_subject(device, ns, name),
            };
            let when = match r.when.as_deref().map(Condition::parse) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(_)) => continue,
            };
            hops.push(Hop {
                from: format!("{}.{}", module_outputs(ns, &m.name), r.output),
                to,
                when,
            });
        }
    }
    hops
}

/// Runs the hops `plan` sends, replacing them whenever the plan changes. Connects to the
/// hub with the agent's user, and keeps reconnecting for as long as the agent runs.
pub async fn run(password: String, mut plan: watch::Receiver<Vec<Hop>>) {
    let client = loop {
        let connected =
            async_nats::ConnectOptions::with_user_and_password(AGENT_USER.into(), password.clone())
                .retry_on_initial_connect()
                .connect(format!("127.0.0.1:{NATS_PORT}"))
                .await;
        match connected {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(error = %e, "the router cannot reach the hub yet");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    };
    loop {
        let hops = plan.borrow_and_update().clone();
        let mut tasks = JoinSet::new();
        for hop in hops {
            tasks.spawn(forward(client.clone(), hop));
        }
        tracing::info!(routes = tasks.len(), "routing");
        if plan.changed().await.is_err() {
            return;
        }
        tasks.shutdown().await;
    }
}

/// Forwards one route's matching messages, headers and all.
async fn forward(client: async_nats::Client, hop: Hop) {
    let mut sub = match client.subscribe(hop.from.clone()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(from = hop.from, error = %e, "cannot subscribe a route");
            return;
        }
    };
    while let Some(msg) = sub.next().await {
        if let Some(when) = &hop.when {
            let header = |name: &str| {
                msg.headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            if !when.holds(&msg.payload, &header) {
                continue;
            }
        }
        let sent = match msg.headers {
            Some(h) => {
                client
                    .publish_with_headers(hop.to.clone(), h, msg.payload)
                    .await
            }
            None => client.publish(hop.to.clone(), msg.payload).await,
        };
        if let Err(e) = sent {
            tracing::warn!(to = hop.to, error = %e, "a routed message was not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_become_hops_between_the_modules_subjects() {
        let sensor: ResolvedModule = serde_json::from_value(serde_json::json!({
            "name": "sensor", "deployment": "team-a/d", "moduleRef": "team-a/sensor",
            "image": "app:1",
            "routes": [
                {"output": "readings", "to": {"module": "filter", "input": "in"}},
                {"output": "readings", "when": "$body.t > 30", "to": {"upstream": "alerts"}},
            ],
        }))
        .expect("in the test setup");
        let hops = plan("edge-1", &[sensor]);
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0].from, "edgefleet.mod.team-a.sensor.out.readings");
        assert_eq!(hops[0].to, "edgefleet.mod.team-a.filter.in.in");
        assert_eq!(hops[0].when, None);
        assert_eq!(hops[1].to, "edgefleet.dev.edge-1.up.team-a.alerts");
        assert!(hops[1].when.is_some());
    }
}
