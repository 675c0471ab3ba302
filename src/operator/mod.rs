//! The RouteState operator: the CRD, the pure derivation of what to publish, the controller,
//! the Redis publisher, leader election and the HTTP endpoints.
//!
//! Entry points: [`Operator::start`] (in-process, with a shutdown handle, used by the tests and
//! by [`run`]) and [`run`] (until SIGTERM/SIGINT).
//!
//! RBAC of the operator's ServiceAccount:
//! - `routestate.dev` `routestates`: get, list, watch, patch, update; `routestates/status`: patch;
//!   `routestates/finalizers`: update
//! - `apps` `statefulsets`: get, list, watch; core `pods`: get, list, watch
//! - `events.k8s.io` `events`: create, patch
//! - `coordination.k8s.io` `leases`: get, create, update (in the lease namespace)

pub mod controller;
pub mod crd;
pub mod derive;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod publisher;

use std::{net::SocketAddr, sync::Arc};

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api, Client,
    api::ListParams,
    runtime::events::{Recorder, Reporter},
};
use tokio::{
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
};

pub use crd::{PodOverride, PodSummary, RouteState, RouteStateSpec, RouteStateStatus, RoutingStateName};
pub use error::{Error, Result};
pub use leader::LeaseConfig;
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
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    http_addr: Option<SocketAddr>,
}

impl Operator {
    /// Connects to Redis, checks that the CRD is installed, binds the HTTP address and starts
    /// the election, the controller and the publisher.
    pub async fn start(config: OperatorConfig) -> Result<Operator> {
        let store = store::Store::connect(&config.redis).await?;
        let routestates: Api<RouteState> = match &config.namespace {
            Some(ns) => Api::namespaced(config.client.clone(), ns),
            None => Api::all(config.client.clone()),
        };
        routestates.list(&ListParams::default().limit(1)).await.map_err(|e| Error::Kube {
            op: "listing RouteStates (is the CRD installed? `routestate crd | kubectl apply -f -`)".into(),
            source: e,
        })?;
        let (pods, statefulsets): (Api<Pod>, Api<StatefulSet>) = match &config.namespace {
            Some(ns) => (Api::namespaced(config.client.clone(), ns), Api::namespaced(config.client.clone(), ns)),
            None => (Api::all(config.client.clone()), Api::all(config.client.clone())),
        };
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
        let (lease_stop_tx, lease_stop) = watch::channel(false);
        let (leader_tx, leader) = watch::channel(config.lease.is_none());
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let publisher = Arc::new(publisher::Publisher::new(store, leader.clone(), metrics.clone(), sync_tx));
        let recorder = Recorder::new(
            config.client.clone(),
            Reporter { controller: controller::FIELD_MANAGER.into(), instance: Some(config.instance.clone()) },
        );
        let built = controller::build(
            controller::Watches { routestates, pods, statefulsets },
            config.client.clone(),
            recorder,
            publisher.clone(),
            leader.clone(),
            metrics.clone(),
            sync_rx,
            shutdown.clone(),
        );
        let synced = built.synced.clone();

        let mut work = JoinSet::new();
        work.spawn(built.future);
        work.spawn(publisher.clone().run(shutdown.clone()));
        if let Some(listener) = listener {
            let app = http::router(http::HttpState { metrics: metrics.clone(), publisher: publisher.clone(), synced });
            let mut stop = shutdown.clone();
            work.spawn(async move {
                let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                });
                if let Err(e) = serve.await {
                    tracing::error!(error = %e, "HTTP server failed");
                }
            });
        }
        let mut lease_task = JoinSet::new();
        match config.lease.clone() {
            Some(lease) => {
                lease_task.spawn(leader::run(config.client.clone(), lease, leader_tx, lease_stop));
            }
            None => {
                metrics.leader.set(1);
                lease_task.spawn(async move {
                    let mut lease_stop = lease_stop;
                    let _ = lease_stop.wait_for(|s| *s).await;
                    leader_tx.send_replace(false);
                });
            }
        }

        let mut stop = shutdown.clone();
        let task = tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            // Controller and publisher finish their in-flight work, then the lease is released.
            let mut work = work;
            let drain = async {
                // The readiness task never ends on its own.
                while let Some(r) =
                    tokio::time::timeout(std::time::Duration::from_secs(10), work.join_next()).await.ok().flatten()
                {
                    if let Err(e) = r
                        && e.is_panic()
                    {
                        tracing::error!(error = %e, "operator task panicked");
                    }
                    if work.len() == 1 {
                        break;
                    }
                }
            };
            drain.await;
            work.abort_all();
            let _ = lease_stop_tx.send(true);
            while lease_task.join_next().await.is_some() {}
            Ok(())
        });
        Ok(Operator { shutdown: shutdown_tx, task, leader, metrics, http_addr })
    }

    /// Whether this replica currently holds the lease (writes Redis and status).
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Leadership changes.
    pub fn leader(&self) -> watch::Receiver<bool> {
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
