//! A game server as it runs in a StatefulSet pod: the server role of routestate with the pod's
//! identity from the downward API, its load reported from the sessions it serves, and a
//! graceful drain on SIGTERM. `make image-oci` packs it as the image `localhost/routestate-game-server`;
//! [`examples/game-server.yaml`](game-server.yaml) runs it.
//!
//! Environment:
//! - `POD_NAME`, `POD_NAMESPACE` (downward API `metadata.name`, `metadata.namespace`);
//!   `POD_INDEX` (optional, the `apps.kubernetes.io/pod-index` label), checked against the name;
//! - `SERVICE`: the StatefulSet's name (default: `POD_NAME` without its ordinal);
//! - `REDIS_URL`: the Redis the service's clients place users in;
//! - `HTTP_ADDR` (default `0.0.0.0:8080`), `DRAIN_SECONDS` (default 10): how long the pod keeps
//!   serving its users in DENY_NEW_CALL after SIGTERM before it publishes SHUTDOWN and exits.
//!   `SHUTDOWN_LINGER_SECONDS` (default 2): how long it still answers after its SHUTDOWN is
//!   published, while clients notice. The pod's
//!   `terminationGracePeriodSeconds` must be longer than both together.
//!
//! HTTP: `GET /session/<uid>` serves user `uid` (it counts as a session of this pod) and answers
//! `<pod> <routing state>`; `GET /healthz`.

use routestate::core::ErrorChain;
use std::{
    collections::HashSet,
    error::Error,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::Path, extract::State, routing::get};
use routestate::{
    core::pod_index,
    server::{CancellationToken, RedisTransport, ServerConfig, ServerDriver, TransportError},
    store::{RedisOptions, Store},
};
use tokio::signal::unix::{SignalKind, signal};

/// How this server hands its load and routing state to routestate: straight to Redis, where
/// each report is published at once under the operator's floor (it needs only its Redis user).
/// The one place to change the transport: a pod without Redis credentials would use
/// `AnnotationTransport::from_env(kube_client)` (its own annotations; RBAC `pods: patch`).
fn transport(store: &Store, id: &Identity) -> Result<RedisTransport, TransportError> {
    RedisTransport::new(store.clone(), &id.namespace, &id.service, id.index)
}

/// Who this pod is, from its environment.
#[derive(Debug)]
struct Identity {
    pod: String,
    namespace: String,
    service: String,
    index: u32,
}

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set (expose it with the downward API)"))
}

impl Identity {
    fn from_env() -> Result<Self, String> {
        let pod = var("POD_NAME")?;
        let namespace = var("POD_NAMESPACE")?;
        let service = match std::env::var("SERVICE") {
            Ok(s) => s,
            Err(_) => pod
                .rsplit_once('-')
                .map(|(s, _)| s.to_owned())
                .ok_or(format!("SERVICE is not set and POD_NAME {pod:?} does not end in -<ordinal>"))?,
        };
        let label = std::env::var("POD_INDEX").ok().filter(|l| !l.is_empty());
        let index = pod_index(&pod, label.as_deref(), Some(&service)).map_err(|e| e.to_string())?;
        Ok(Self { pod, namespace, service, index })
    }
}

fn seconds(name: &str, default: u64) -> Result<Duration, String> {
    match std::env::var(name) {
        Err(_) => Ok(Duration::from_secs(default)),
        Ok(v) => {
            v.parse().map(Duration::from_secs).map_err(|_| format!("{name}={v:?} is not a whole number of seconds"))
        }
    }
}

struct App {
    pod: String,
    driver: ServerDriver<RedisTransport>,
    sessions: Mutex<HashSet<String>>,
}

/// Serves user `uid`: a new user is a new session, and the session count is the load.
async fn session(State(app): State<Arc<App>>, Path(uid): Path<String>) -> String {
    let count = {
        let mut s = app.sessions.lock().unwrap_or_else(|e| e.into_inner());
        s.insert(uid).then_some(s.len())
    };
    if let Some(n) = count
        && let Err(e) = app.driver.set_load_state(n as u64).await
    {
        tracing::warn!(error = %e.chain(), "reporting load");
    }
    format!("{} {}\n", app.pod, app.driver.routing_state().wire_name())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new("info")).init();
    let id = Identity::from_env()?;
    let redis_url = var("REDIS_URL")?;
    let drain = seconds("DRAIN_SECONDS", 10)?;
    let linger = seconds("SHUTDOWN_LINGER_SECONDS", 2)?;
    let addr: SocketAddr = std::env::var("HTTP_ADDR")
        .unwrap_or_else(|_| "0.0.0.0:8080".into())
        .parse()
        .map_err(|e| format!("HTTP_ADDR: {e}"))?;

    let mut sigterm = signal(SignalKind::terminate())?;
    let store = Store::connect(&RedisOptions::standalone(&redis_url)).await?;
    let transport = transport(&store, &id)?;
    let mut config = ServerConfig::new(&id.namespace, &id.service, id.index);
    config.drain_window = Some(drain);
    let driver = ServerDriver::new(store, transport, config)?;
    driver.start().await?;
    tracing::info!(?id, %addr, ?drain, "game server up");

    let app = Arc::new(App { pod: id.pod.clone(), driver: driver.clone(), sessions: Mutex::default() });
    let router =
        Router::new().route("/healthz", get(|| async { "ok\n" })).route("/session/{uid}", get(session)).with_state(app);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    // Serves until the process exits, through the whole drain.
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    sigterm.recv().await;
    tracing::info!(pod = id.pod, "SIGTERM: draining");
    // Returns once SHUTDOWN is published: the report goes to Redis in the call itself.
    let outcome = driver.stop(&CancellationToken::new()).await?;
    // Clients learn SHUTDOWN when their read model refreshes: users still on their way are
    // answered rather than refused.
    tokio::time::sleep(linger).await;
    tracing::info!(pod = id.pod, ?outcome, "stopped");
    server.abort();
    Ok(())
}
