//! The RouteState operator: the CRD, the pure derivation of what to publish, the controller,
//! the Redis publisher, leader election and the HTTP endpoints.
//!
//! Entry points: [`Operator::start`] (in-process, with a shutdown handle, used by the tests and
//! by [`run`]) and [`run`] (until SIGTERM/SIGINT).
//!
//! Its Kubernetes permissions are listed once, in [`rbac`].

pub mod controller;
pub mod crd;
pub mod derive;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod publisher;
pub mod rbac;

use std::{net::SocketAddr, sync::Arc};

use kube::{Api, Client, api::ListParams, runtime::events::Reporter};
use tokio::{
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
};

use crate::core::ErrorChain;

pub use crd::{PodOverride, PodSummary, RouteState, RouteStateSpec, RouteStateStatus, RoutingStateName};
pub use error::{Error, Result};
pub use leader::{Claim, Leadership, LeaseConfig, LeaseConfigError};
pub use metrics::Metrics;

use crate::store::{self, RedisOptions};

/// Everything the operator needs to run.
#[derive(Clone)]
pub struct OperatorConfig {
    /// Kubernetes client.
    pub client: Client,
    /// Redis to publish to.
    pub redis: RedisOptions,
    /// Watch only this namespace; `None` = all namespaces.
    pub namespace: Option<String>,
    /// Leader election; `None` = this replica always writes (a single replica).
    pub lease: Option<LeaseConfig>,
    /// Address of `/healthz`, `/readyz` and `/metrics`; `None` = no HTTP server.
    pub http_addr: Option<SocketAddr>,
    /// Reporting instance of Events (e.g. the pod name).
    pub instance: String,
}

/// A running operator.
pub struct Operator {
    shutdown: watch::Sender<bool>,
    task: JoinHandle<Result<()>>,
    leader: Leadership,
    metrics: Arc<Metrics>,
    http_addr: Option<SocketAddr>,
}

/// The API handles of the watched objects: one namespace, or all.
fn apis(client: &Client, namespace: Option<&str>) -> controller::Watches {
    match namespace {
        Some(ns) => controller::Watches {
            routestates: Api::namespaced(client.clone(), ns),
            pods: Api::namespaced(client.clone(), ns),
            statefulsets: Api::namespaced(client.clone(), ns),
        },
        None => controller::Watches {
            routestates: Api::all(client.clone()),
            pods: Api::all(client.clone()),
            statefulsets: Api::all(client.clone()),
        },
    }
}

impl Operator {
    /// Connects to Redis, checks that the CRD is installed, binds the HTTP address and starts
    /// the election, the controller and the publisher.
    pub async fn start(config: OperatorConfig) -> Result<Operator> {
        let store = store::Store::connect(&config.redis).await?;
        let watches = apis(&config.client, config.namespace.as_deref());
        watches.routestates.list(&ListParams::default().limit(1)).await.map_err(Error::kube(
            "listing RouteStates (is the CRD installed? `routestate crd | kubectl apply -f -`)",
        ))?;
        let listener = match config.http_addr {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Io { what: format!("listening on {addr}"), source })?,
            ),
            None => None,
        };
        let http_addr = listener.as_ref().and_then(|l| l.local_addr().ok());

        let metrics = Arc::new(Metrics::default());
        let (shutdown_tx, shutdown) = watch::channel(false);
        // A single replica (no election) holds an unlimited claim from the start.
        let (claims, leader) = Leadership::channel(config.lease.is_none().then(leader::Claim::unlimited));
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let publisher = Arc::new(publisher::Publisher::new(store, leader.clone(), metrics.clone(), sync_tx));
        let reporter =
            Reporter { controller: controller::FIELD_MANAGER.into(), instance: Some(config.instance.clone()) };
        let built = controller::build(
            watches,
            controller::Shared {
                client: config.client.clone(),
                reporter,
                publisher: publisher.clone(),
                leader: leader.clone(),
                metrics: metrics.clone(),
            },
            sync_rx,
            shutdown.clone(),
        );

        let mut work = JoinSet::new();
        work.spawn(built.future);
        work.spawn(publisher.clone().run(shutdown.clone()));
        let http = listener.map(|listener| {
            let state =
                http::HttpState { metrics: metrics.clone(), publisher: publisher.clone(), synced: built.synced };
            tokio::spawn(serve_http(listener, state, shutdown.clone()))
        });
        let election = elect(config.client.clone(), config.lease.clone(), claims, &metrics);
        let task = tokio::spawn(supervise(work, http, election, shutdown.clone()));
        Ok(Operator { shutdown: shutdown_tx, task, leader, metrics, http_addr })
    }

    /// Whether this replica currently holds the lease (writes Redis and status).
    pub fn is_leader(&self) -> bool {
        self.leader.holds()
    }

    /// This replica's leadership, as its writers check it.
    pub fn leader(&self) -> Leadership {
        self.leader.clone()
    }

    /// The metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The bound HTTP address, if any (useful with port 0).
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Graceful shutdown: stops the controller, lets in-flight publishes finish, then releases
    /// the lease.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        self.task.await.unwrap_or(Ok(()))
    }

    /// Simulates a crash: stops every task at once, releasing nothing (the lease expires).
    pub fn kill(self) {
        self.task.abort();
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown`.
async fn serve_http(listener: tokio::net::TcpListener, state: http::HttpState, mut shutdown: watch::Receiver<bool>) {
    let serve = axum::serve(listener, http::router(state)).with_graceful_shutdown(async move {
        let _ = shutdown.wait_for(|s| *s).await;
    });
    if let Err(e) = serve.await {
        tracing::error!(error = %e.chain(), "HTTP server failed");
    }
}

/// The election: the lease loop with a lease, else an unlimited claim withdrawn at the end.
/// Stopped (and the lease released) by the returned sender, after the other work has drained.
fn elect(
    client: Client,
    lease: Option<LeaseConfig>,
    claims: watch::Sender<Option<leader::Claim>>,
    metrics: &Metrics,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (stop_tx, mut stop) = watch::channel(false);
    let task = match lease {
        Some(lease) => tokio::spawn(leader::run(client, lease, claims, stop)),
        None => {
            metrics.leader.set(1);
            tokio::spawn(async move {
                let _ = stop.wait_for(|s| *s).await;
                claims.send_replace(None);
            })
        }
    };
    (stop_tx, task)
}

/// Waits for `shutdown`, lets the controller and the publisher finish their in-flight work
/// (at most 10 s), then stops the HTTP server and the election, which releases the lease.
async fn supervise(
    mut work: JoinSet<()>,
    http: Option<JoinHandle<()>>,
    (stop_election, election): (watch::Sender<bool>, JoinHandle<()>),
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let _ = shutdown.wait_for(|s| *s).await;
    let drain = async {
        while let Some(r) = work.join_next().await {
            if let Err(e) = r
                && e.is_panic()
            {
                tracing::error!(error = %e.chain(), "operator task panicked");
            }
        }
    };
    if tokio::time::timeout(std::time::Duration::from_secs(10), drain).await.is_err() {
        tracing::warn!("the controller or the publisher did not stop within 10 s; aborting them");
    }
    work.abort_all();
    // An idle keep-alive connection must not hold the shutdown up.
    if let Some(http) = http {
        http.abort();
    }
    let _ = stop_election.send(true);
    let _ = election.await;
    Ok(())
}

/// Runs the operator until SIGTERM or SIGINT, then shuts it down gracefully.
pub async fn run(config: OperatorConfig) -> Result<()> {
    let operator = Operator::start(config).await?;
    tracing::info!(http = ?operator.http_addr(), "operator started");
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight publishes, releasing the lease");
    operator.shutdown().await
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
