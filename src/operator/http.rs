//! `/healthz`, `/readyz` (watches synced and Redis reachable) and `/metrics`.

use std::{sync::Arc, time::Duration};

use super::{controller::Synced, metrics::Metrics, publisher::Publisher};
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
    match tokio::time::timeout(Duration::from_secs(1), s.publisher.ping()).await {
        Ok(Ok(())) => (StatusCode::OK, "ok\n".to_owned()),
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("redis unreachable: {e}\n")),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "redis unreachable: PING timed out after 1s\n".to_owned()),
    }
}

async fn metrics(State(s): State<HttpState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.render())
}
