//! The server role for code running inside a stateful pod: its load and routing state (each
//! change handed to a [`StateTransport`]), the links of the users it owns (restricted to its own
//! namespace), and start / graceful stop.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ServerReport, StateTransport, TransportError};
use crate::{
    core::{DEFAULT_UPDATE_PERIOD_SECS, Keys, RoutingState},
    store::{LinkTtl, Store, StoreError, TrySetOutcome},
};

/// An error of the server role.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store failed (the inner error names the operation and key).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The transport failed to publish a report.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A link operation named another namespace than the pod's.
    #[error("namespace {requested:?} is not local: this pod only manages links in namespace {local:?}")]
    NotLocalNamespace { requested: String, local: String },
    /// The configuration is invalid.
    #[error("invalid server configuration: {0}")]
    Config(String),
}

/// Who the pod is and how it drains.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The pod's namespace (links are restricted to it).
    pub namespace: String,
    /// The service (StatefulSet) the pod belongs to.
    pub service: String,
    /// The pod's index in the StatefulSet.
    pub pod_index: u32,
    /// The state update period: a failed publish is retried every period.
    pub update_period: Duration,
    /// How long `stop` keeps the pod in DENY_NEW_CALL before stopping; 5 × period by default.
    pub drain_window: Option<Duration>,
}

impl ServerConfig {
    /// A configuration with the default period and drain window.
    pub fn new(namespace: impl Into<String>, service: impl Into<String>, pod_index: u32) -> Self {
        Self {
            namespace: namespace.into(),
            service: service.into(),
            pod_index,
            update_period: Duration::from_secs(u64::from(DEFAULT_UPDATE_PERIOD_SECS)),
            drain_window: None,
        }
    }

    /// The drain window in effect.
    pub fn drain_window(&self) -> Duration {
        self.drain_window.unwrap_or(self.update_period * 5)
    }
}

/// How [`ServerDriver::stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The whole drain window passed.
    Drained,
    /// The caller cancelled the wait.
    Cancelled,
}

struct Inner<T> {
    config: ServerConfig,
    store: Store,
    transport: T,
    report: Mutex<ServerReport>,
    // Serialises publishes so the transport sees reports in the order they were made.
    publishing: tokio::sync::Mutex<()>,
    // Set when the last publish failed; the background task retries it every period.
    dirty: Mutex<bool>,
    stop: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The server driver; clone it freely.
pub struct ServerDriver<T: StateTransport> {
    inner: Arc<Inner<T>>,
}

impl<T: StateTransport> Clone for ServerDriver<T> {
    fn clone(&self) -> Self {
        Self { inner: self.inner.clone() }
    }
}

impl<T: StateTransport> std::fmt::Debug for ServerDriver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerDriver").field("config", &self.inner.config).field("report", &self.report()).finish()
    }
}

impl<T: StateTransport> ServerDriver<T> {
    /// A driver for the pod described by `config`. Initial state: load 0, no waiting tasks,
    /// READY (published by [`ServerDriver::start`]).
    pub fn new(store: Store, transport: T, config: ServerConfig) -> Result<Self, ServerError> {
        Keys::state(&config.namespace, &config.service).map_err(|e| ServerError::Config(e.to_string()))?;
        if config.update_period.is_zero() {
            return Err(ServerError::Config("update_period must be > 0".into()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                store,
                transport,
                report: Mutex::new(ServerReport::default()),
                publishing: tokio::sync::Mutex::new(()),
                dirty: Mutex::new(false),
                stop: CancellationToken::new(),
                task: Mutex::new(None),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.inner.transport
    }

    /// The current report.
    pub fn report(&self) -> ServerReport {
        *self.inner.report.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the current report now and retries failed publishes every period until
    /// [`ServerDriver::stop`]. Calling it twice is harmless.
    pub async fn start(&self) -> Result<(), ServerError> {
        {
            let mut task = self.inner.task.lock().unwrap_or_else(|e| e.into_inner());
            if task.is_none() {
                *task = Some(tokio::spawn(retry_loop(self.inner.clone())));
            }
        }
        tracing::info!(
            ns = self.inner.config.namespace,
            svc = self.inner.config.service,
            pod = self.inner.config.pod_index,
            "server driver started"
        );
        self.update(|_| {}).await
    }

    /// Applies `change` to the report and publishes the result.
    async fn update(&self, change: impl FnOnce(&mut ServerReport)) -> Result<(), ServerError> {
        let _publishing = self.inner.publishing.lock().await;
        let report = {
            let mut r = self.inner.report.lock().unwrap_or_else(|e| e.into_inner());
            change(&mut r);
            *r
        };
        publish(&self.inner, report).await
    }

    /// Sets the application load state (larger = busier) and publishes it.
    pub async fn set_load_state(&self, load_state: u64) -> Result<(), ServerError> {
        self.update(|r| r.load_state = load_state).await
    }

    /// The load state.
    pub fn load_state(&self) -> u64 {
        self.report().load_state
    }

    /// Sets the number of waiting tasks and publishes it.
    pub async fn set_waiting_tasks(&self, waiting_tasks: u64) -> Result<(), ServerError> {
        self.update(|r| r.waiting_tasks = waiting_tasks).await
    }

    /// The number of waiting tasks.
    pub fn waiting_tasks(&self) -> u64 {
        self.report().waiting_tasks
    }

    /// Sets the routing state and publishes it.
    pub async fn set_routing_state(&self, routing: RoutingState) -> Result<(), ServerError> {
        self.update(|r| r.routing = routing).await
    }

    /// The routing state.
    pub fn routing_state(&self) -> RoutingState {
        self.report().routing
    }

    /// Graceful stop: publishes DENY_NEW_CALL (linked users keep reaching the pod, new users go
    /// elsewhere), waits the drain window unless `cancel` fires first, publishes SHUTDOWN, and
    /// stops the background task. A failed publish is logged and does not stop the drain.
    pub async fn stop(&self, cancel: &CancellationToken) -> Result<StopOutcome, ServerError> {
        let cfg = &self.inner.config;
        if let Err(e) = self.set_routing_state(RoutingState::DenyNewCall).await {
            tracing::error!(ns = cfg.namespace, svc = cfg.service, pod = cfg.pod_index, error = %e, "publishing DENY_NEW_CALL failed");
        }
        let window = cfg.drain_window();
        tracing::info!(ns = cfg.namespace, svc = cfg.service, pod = cfg.pod_index, ?window, "draining");
        let outcome = tokio::select! {
            _ = tokio::time::sleep(window) => StopOutcome::Drained,
            _ = cancel.cancelled() => StopOutcome::Cancelled,
        };
        let last = self.set_routing_state(RoutingState::Shutdown).await;
        self.inner.stop.cancel();
        let task = self.inner.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        tracing::info!(ns = cfg.namespace, svc = cfg.service, pod = cfg.pod_index, ?outcome, "server driver stopped");
        last.map(|()| outcome)
    }

    fn check_local(&self, ns: &str) -> Result<(), ServerError> {
        let local = &self.inner.config.namespace;
        if ns.is_empty() || ns == local {
            Ok(())
        } else {
            Err(ServerError::NotLocalNamespace { requested: ns.to_owned(), local: local.clone() })
        }
    }

    fn ns<'a>(&'a self, ns: &'a str) -> Result<&'a str, ServerError> {
        self.check_local(ns)?;
        Ok(if ns.is_empty() { &self.inner.config.namespace } else { ns })
    }

    /// Links the uid persistently to `pod` (unconditionally); returns the previous pod.
    /// `ns` must be the pod's namespace or empty.
    pub async fn set_linked_pod(&self, ns: &str, uid: &str, svc: &str, pod: u32) -> Result<Option<u32>, ServerError> {
        let ns = self.ns(ns)?;
        let prev = self.inner.store.set_linked_pod(ns, uid, svc, pod, LinkTtl::Persistent).await?;
        tracing::info!(ns, uid, svc, pod, ?prev, "set linked pod");
        Ok(prev)
    }

    /// Links the uid persistently to `pod` unless another pod holds a persistent link.
    pub async fn try_set_linked_pod(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        pod: u32,
    ) -> Result<TrySetOutcome, ServerError> {
        let ns = self.ns(ns)?;
        let outcome = self.inner.store.try_set_linked_pod(ns, uid, svc, pod, LinkTtl::Persistent).await?;
        tracing::info!(ns, uid, svc, pod, ?outcome, "try-set linked pod");
        Ok(outcome)
    }

    /// Removes the uid's link; `persist_seconds > 0` keeps it readable that long.
    pub async fn remove_linked_pod(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        persist_seconds: u64,
    ) -> Result<bool, ServerError> {
        let ns = self.ns(ns)?;
        let removed = self.inner.store.remove_linked_pod(ns, uid, svc, persist_seconds).await?;
        tracing::info!(ns, uid, svc, persist_seconds, removed, "removed linked pod");
        Ok(removed)
    }

    /// Removes the uid's link only while it points to `pod`.
    pub async fn remove_linked_pod_with_id(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        pod: u32,
        persist_seconds: u64,
    ) -> Result<bool, ServerError> {
        let ns = self.ns(ns)?;
        let removed = self.inner.store.remove_linked_pod_with_id(ns, uid, svc, pod, persist_seconds).await?;
        tracing::info!(ns, uid, svc, pod, persist_seconds, removed, "removed linked pod with id");
        Ok(removed)
    }

    /// The uid's link, persistent or temporary.
    pub async fn get_linked_pod(&self, ns: &str, uid: &str, svc: &str) -> Result<Option<u32>, ServerError> {
        let ns = self.ns(ns)?;
        Ok(self.inner.store.get_linked_pod(ns, uid, svc).await?)
    }
}

async fn publish<T: StateTransport>(inner: &Inner<T>, report: ServerReport) -> Result<(), ServerError> {
    let result = inner.transport.publish(report).await;
    *inner.dirty.lock().unwrap_or_else(|e| e.into_inner()) = result.is_err();
    if let Err(e) = &result {
        let cfg = &inner.config;
        tracing::warn!(ns = cfg.namespace, svc = cfg.service, pod = cfg.pod_index, error = %e, "publishing the pod state failed; retrying every period");
    }
    Ok(result?)
}

async fn retry_loop<T: StateTransport>(inner: Arc<Inner<T>>) {
    let mut ticker = tokio::time::interval(inner.config.update_period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if !*inner.dirty.lock().unwrap_or_else(|e| e.into_inner()) {
            continue;
        }
        let _publishing = inner.publishing.lock().await;
        let report = *inner.report.lock().unwrap_or_else(|e| e.into_inner());
        let _ = publish(&inner, report).await;
    }
}
