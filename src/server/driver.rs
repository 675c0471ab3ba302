//! The server role for code running inside a stateful pod: its load and routing state (each
//! change handed to a [`StateTransport`]), the links of the users it owns (restricted to its own
//! namespace, written with the configured [`Durability`]), re-asserting those links when Redis
//! lost its data, and start / graceful stop.

use crate::core::ErrorChain;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{ServerReport, StateTransport, TransportError};
use crate::{
    core::{DEFAULT_UPDATE_PERIOD_SECS, Keys, RoutingState},
    store::{DatasetChange, DatasetWatch, Durability, LinkTtl, Store, StoreError, TrySetOutcome},
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
    /// When the pod's link writes count as done ([`Durability::MasterOnly`] by default; with
    /// replicas, [`Durability::Replicated`] keeps a claim on a user across a failover). `WAIT`
    /// holds the store's connection while it waits, so give a driver with replicated writes a
    /// [`Store`] of its own.
    pub durability: Durability,
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
            durability: Durability::MasterOnly,
        }
    }

    /// The drain window in effect.
    pub fn drain_window(&self) -> Duration {
        self.drain_window.unwrap_or(self.update_period * 5)
    }
}

/// A persistent link the pod owns: the user `uid` linked to this pod for service `svc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedLink {
    /// The user.
    pub uid: String,
    /// The service the link is for.
    pub svc: String,
}

impl OwnedLink {
    /// The link of `uid` for `svc`.
    pub fn new(uid: impl Into<String>, svc: impl Into<String>) -> Self {
        Self { uid: uid.into(), svc: svc.into() }
    }
}

/// The application's list of the persistent links it owns, asked for after a data loss.
pub type OwnedLinks = Arc<dyn Fn() -> Vec<OwnedLink> + Send + Sync>;

/// What [`ServerDriver::reassert_links`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReassertReport {
    /// Links that point to this pod now (written again, or still there).
    pub linked: usize,
    /// Links another pod holds now (left as they are): (uid, svc, pod).
    pub taken: Vec<(String, String, u32)>,
    /// Links that could not be written (the errors were logged).
    pub failed: usize,
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
    owned_links: Mutex<Option<OwnedLinks>>,
    dataset: tokio::sync::Mutex<DatasetWatch>,
    last_reassert: Mutex<Option<ReassertReport>>,
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
        config.durability.check("server config", store.op_timeout()).map_err(|e| ServerError::Config(e.to_string()))?;
        let store = store.with_durability(config.durability);
        let dataset = tokio::sync::Mutex::new(DatasetWatch::new(&config.namespace, &config.service));
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
                owned_links: Mutex::new(None),
                dataset,
                last_reassert: Mutex::new(None),
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
        // Learn the dataset now, so a loss within the first period is noticed too.
        if let Err(e) = check_dataset(&self.inner).await {
            tracing::debug!(ns = self.inner.config.namespace, error = %e.chain(), "checking the Redis dataset failed; next period");
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
            tracing::error!(ns = cfg.namespace, svc = cfg.service, pod = cfg.pod_index, error = %e.chain(), "publishing DENY_NEW_CALL failed");
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

    /// Registers the hook that lists the persistent links this pod owns. Every period the
    /// driver checks whether Redis still holds the dataset it knew (the service's epoch key,
    /// see [`DatasetWatch`]); when it came back empty or as another dataset, the driver asks the
    /// hook and re-asserts each link with set-if-absent ([`ServerDriver::reassert_links`]).
    pub fn on_data_loss_reassert(&self, owned: impl Fn() -> Vec<OwnedLink> + Send + Sync + 'static) {
        *self.inner.owned_links.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(owned));
    }

    /// Writes each of `links` to this pod persistently unless a link exists (set-if-absent:
    /// a link another pod or a client wrote since the loss is left alone and reported).
    pub async fn reassert_links(&self, links: &[OwnedLink]) -> ReassertReport {
        reassert(&self.inner, links).await
    }

    /// What the last automatic re-assertion did, if one ran.
    pub fn last_reassert(&self) -> Option<ReassertReport> {
        self.inner.last_reassert.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Looks at the dataset now (the background task does it every period) and, when it was
    /// lost, re-asserts the owned links. Returns what the look found.
    pub async fn check_dataset(&self) -> Result<DatasetChange, ServerError> {
        Ok(check_dataset(&self.inner).await?)
    }

    /// The uid's link, persistent or temporary.
    pub async fn get_linked_pod(&self, ns: &str, uid: &str, svc: &str) -> Result<Option<u32>, ServerError> {
        let ns = self.ns(ns)?;
        Ok(self.inner.store.get_linked_pod(ns, uid, svc).await?)
    }
}

async fn reassert<T: StateTransport>(inner: &Inner<T>, links: &[OwnedLink]) -> ReassertReport {
    let cfg = &inner.config;
    let mut report = ReassertReport::default();
    for l in links {
        let r =
            inner.store.set_linked_pod_if_absent(&cfg.namespace, &l.uid, &l.svc, cfg.pod_index, LinkTtl::Persistent);
        match r.await {
            // The script returns the pod linked now; it cannot tell "was there" from "written",
            // but a link to this pod is what the owner wants either way.
            Ok(pod) if pod == cfg.pod_index => report.linked += 1,
            Ok(pod) => report.taken.push((l.uid.clone(), l.svc.clone(), pod)),
            Err(e) => {
                report.failed += 1;
                tracing::warn!(ns = cfg.namespace, uid = l.uid, svc = l.svc, error = %e.chain(), "re-asserting a persistent link failed");
            }
        }
    }
    report
}

async fn check_dataset<T: StateTransport>(inner: &Inner<T>) -> Result<DatasetChange, StoreError> {
    let change = inner.dataset.lock().await.check(&inner.store).await?;
    let cfg = &inner.config;
    match &change {
        DatasetChange::Lost(loss) => {
            let hook = inner.owned_links.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let links = hook.map(|h| h()).unwrap_or_default();
            tracing::warn!(ns = cfg.namespace, svc = cfg.service, pod = cfg.pod_index, %loss, links = links.len(), "Redis lost its data; re-asserting the persistent links this pod owns and its report");
            // The report went with the data: publish it again this period.
            *inner.dirty.lock().unwrap_or_else(|e| e.into_inner()) = true;
            let report = reassert(inner, &links).await;
            tracing::info!(
                ns = cfg.namespace,
                svc = cfg.service,
                pod = cfg.pod_index,
                ?report,
                "persistent links re-asserted"
            );
            *inner.last_reassert.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
        }
        DatasetChange::Restarted { previous, current } => {
            tracing::info!(
                ns = cfg.namespace,
                svc = cfg.service,
                previous,
                current,
                "Redis restarted or failed over with its data"
            );
        }
        DatasetChange::First | DatasetChange::Same => {}
    }
    Ok(change)
}

async fn publish<T: StateTransport>(inner: &Inner<T>, report: ServerReport) -> Result<(), ServerError> {
    let result = inner.transport.publish(report).await;
    *inner.dirty.lock().unwrap_or_else(|e| e.into_inner()) = result.is_err();
    if let Err(e) = &result {
        let cfg = &inner.config;
        tracing::warn!(ns = cfg.namespace, svc = cfg.service, pod = cfg.pod_index, error = %e.chain(), "publishing the pod state failed; retrying every period");
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
        if let Err(e) = check_dataset(&inner).await {
            tracing::debug!(ns = inner.config.namespace, svc = inner.config.service, error = %e.chain(), "checking the Redis dataset failed; next period");
        }
        if !*inner.dirty.lock().unwrap_or_else(|e| e.into_inner()) {
            continue;
        }
        let _publishing = inner.publishing.lock().await;
        let report = *inner.report.lock().unwrap_or_else(|e| e.into_inner());
        let _ = publish(&inner, report).await;
    }
}
