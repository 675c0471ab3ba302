//! `/healthz`, `/readyz` (watches synced and Redis reachable) and `/metrics`.

use std::{sync::Arc, time::Duration};

use crate::core::ErrorChain;

use super::{
    controller::Synced,
    metrics::Metrics,
    publisher::{Publisher, REDIS_READY_GRACE},
};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};

/// What the endpoints read.
#[derive(Clone)]
pub struct HttpState {
    /// Metrics to render.
    pub metrics: Arc<Metrics>,
    /// Pinged by `/readyz`.
    pub publisher: Arc<Publisher>,
    /// Whether the RouteState, StatefulSet and pod caches are filled.
    pub synced: Synced,
}

/// The router with the three endpoints.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(s): State<HttpState>) -> impl IntoResponse {
    if !s.synced.is_synced() {
        return (StatusCode::SERVICE_UNAVAILABLE, "watches not synced yet\n".to_owned());
    }
    let failure = match tokio::time::timeout(Duration::from_secs(1), s.publisher.ping()).await {
        Ok(Ok(())) => return (StatusCode::OK, "ok\n".to_owned()),
        Ok(Err(e)) => format!("redis unreachable: {}", e.chain()),
        Err(_) => "redis unreachable: PING timed out after 1s".to_owned(),
    };
    // Not ready only once Redis has been failing for the grace period (publishes count too).
    match s.publisher.redis_down_for() {
        Some(down) if down >= REDIS_READY_GRACE => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{failure} (failing for {:.1}s)\n", down.as_secs_f64()))
        }
        _ => (StatusCode::OK, format!("ok ({failure}; within the {}s grace period)\n", REDIS_READY_GRACE.as_secs())),
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    // As of the last Redis operation: publishes on the lease holder, `/readyz`'s PING on every replica.
    s.metrics.redis_up.set(i64::from(s.publisher.redis_down_for().is_none()));
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render())
}
