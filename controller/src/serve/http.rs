//! /healthz, /readyz and /metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::serve::device_authorizer::Enrolled;

#[derive(Clone, Debug)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Set once the caches have synced (or this replica stands by as a healthy follower).
    pub ready: Arc<AtomicBool>,
    /// Where devices are authorized here: what the authorizer knows, which must be listed
    /// before the replica is ready. A replica started in a rolling update that was ready
    /// before could answer the apiserver's reviews only with 503, and each device request
    /// whose decision the apiserver had not cached failed (a 500 to the agent, an outage
    /// to it, and its status written again after).
    pub authorizer: Option<Enrolled>,
}

pub async fn serve(addr: SocketAddr, health: Health) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
    axum::serve(listener, app).await
}

async fn readyz(State(h): State<Health>) -> (StatusCode, &'static str) {
    if !h.ready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
    } else if h.authorizer.as_ref().is_some_and(|a| !a.listed()) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the device authorizer has not listed the enrolled devices",
        )
    } else {
        (StatusCode::OK, "ready")
    }
}

async fn metrics(State(h): State<Health>) -> ([(&'static str, &'static str); 1], String) {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(synced: bool, authorizer: Option<Enrolled>) -> Health {
        Health {
            metrics: Arc::default(),
            ready: Arc::new(AtomicBool::new(synced)),
            authorizer,
        }
    }

    /// Where devices are authorized here, a replica is ready only once its authorizer can
    /// decide: before, the webhook Service would send it reviews it answers with 503.
    #[tokio::test]
    async fn a_replica_is_not_ready_before_its_authorizer_can_decide() {
        let (status, _) = readyz(State(health(true, Some(Enrolled::default())))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let listed = || Some(Enrolled::listing(&["edge-1"]));
        let (status, _) = readyz(State(health(true, listed()))).await;
        assert_eq!(status, StatusCode::OK, "caches synced, the fleet listed");
        let (status, _) = readyz(State(health(true, Some(Enrolled::listing(&[]))))).await;
        assert_eq!(status, StatusCode::OK, "a fleet listed empty is listed");
        let (status, _) = readyz(State(health(false, listed()))).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "listed, caches not synced"
        );
        let (status, _) = readyz(State(health(true, None))).await;
        assert_eq!(status, StatusCode::OK, "devices authorized by RBAC");
        let (status, _) = readyz(State(health(false, None))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "caches not synced");
    }
}
