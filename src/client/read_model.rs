//! The read model: a state cache per (ns, svc), created by the first question about the service,
//! refreshed in the background every period, judged with the Redis clock, and broadcasting a
//! [`RoutingChange`] whenever a refresh sees a pod's routing state change.
//!
//! Each refresh is one pipelined round trip (HGETALL state hash, HGET period, TIME). The server
//! time of the read is kept with a local monotonic instant, so later questions judge freshness
//! at "server time now" without another round trip.

use crate::core::ErrorChain;
use std::{
    sync::{Arc, Mutex, RwLock, Weak},
    time::Instant,
};

use hashbrown::HashMap;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::sync::broadcast;

use super::{
    ClientConfig, ClientError,
    keys::{SvcKey, SvcRef},
};
use crate::{
    core::{PodState, RoutingState, ServiceSnapshot, Workload, selection::Classified},
    store::Store,
};

/// A pod's routing state as seen by two consecutive refreshes (`None`: absent or stale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingChange {
    pub ns: String,
    pub svc: String,
    pub pod: u32,
    pub previous: Option<RoutingState>,
    pub now: Option<RoutingState>,
}

/// One service's states as of its last refresh.
#[derive(Debug, Clone)]
pub struct CachedService {
    /// The states judged at the Redis time of the read.
    pub snapshot: ServiceSnapshot,
    fetched_at: Instant,
}

impl CachedService {
    /// The Redis server time now, estimated from the last read (no round trip).
    pub fn server_now_ms(&self) -> u64 {
        self.server_ms_at(Instant::now())
    }

    /// The Redis server time at a local instant, estimated from the last read.
    pub fn server_ms_at(&self, at: Instant) -> u64 {
        self.snapshot.now_ms.saturating_add(at.saturating_duration_since(self.fetched_at).as_millis() as u64)
    }

    fn state_at(&self, pod: u32, at: Instant) -> Option<PodState> {
        match self.snapshot.classify(pod) {
            Classified::Absent => None,
            Classified::Stale(s) | Classified::Alive(s) => {
                s.is_fresh(self.server_ms_at(at), self.snapshot.policy.window_ms).then_some(s)
            }
        }
    }

    fn state_now(&self, pod: u32) -> Option<PodState> {
        self.state_at(pod, Instant::now())
    }

    /// Alive and not SHUTDOWN at the local instant `at`.
    pub fn is_available_at(&self, pod: u32, at: Instant) -> bool {
        self.state_at(pod, at).is_some_and(|s| s.routing.keeps_linked())
    }

    /// Alive now: the pod's state is within the staleness window.
    pub fn is_alive(&self, pod: u32) -> bool {
        self.state_now(pod).is_some()
    }

    /// Alive and READY now.
    pub fn is_routable(&self, pod: u32) -> bool {
        self.state_now(pod).is_some_and(|s| s.routing.accepts_new())
    }

    /// Alive and not SHUTDOWN now: its linked users keep reaching it.
    pub fn is_available(&self, pod: u32) -> bool {
        self.state_now(pod).is_some_and(|s| s.routing.keeps_linked())
    }

    /// The snapshot re-judged at the current server time (only rebuilt when a state aged out).
    pub fn current(&self) -> std::borrow::Cow<'_, ServiceSnapshot> {
        let now = self.server_now_ms();
        let window = self.snapshot.policy.window_ms;
        if self.snapshot.alive_pods().all(|p| p.state.is_fresh(now, window)) {
            return std::borrow::Cow::Borrowed(&self.snapshot);
        }
        std::borrow::Cow::Owned(ServiceSnapshot::from_states(
            self.snapshot.pods().map(|p| (p.index, p.state)),
            now,
            self.snapshot.policy,
            self.snapshot.skipped.clone(),
        ))
    }
}

#[derive(Default)]
struct Slot {
    current: RwLock<Option<Arc<CachedService>>>,
    // Serialises the first fetch and refreshes of one service.
    fetch: tokio::sync::Mutex<()>,
}

struct Inner {
    store: Store,
    config: ClientConfig,
    services: RwLock<HashMap<SvcKey, Arc<Slot>>>,
    events: broadcast::Sender<RoutingChange>,
    rng: Mutex<StdRng>,
}

/// The shared read model; clone it freely. The background refresh stops when the last clone is
/// dropped.
#[derive(Clone)]
pub struct ReadModel {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel").field("services", &self.services().len()).finish()
    }
}

impl ReadModel {
    /// Creates the read model and starts its background refresh (needs a Tokio runtime).
    pub fn new(store: Store, config: ClientConfig) -> Result<Self, ClientError> {
        config.validate()?;
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_rng(&mut rand::rng()),
        };
        let (events, _) = broadcast::channel(config.notify_capacity);
        let inner = Arc::new(Inner { store, config, services: RwLock::default(), events, rng: Mutex::new(rng) });
        tokio::spawn(refresh_loop(Arc::downgrade(&inner)));
        Ok(Self { inner })
    }

    /// The store it reads from.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Its configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Receives every routing change seen by a refresh from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RoutingChange> {
        self.inner.events.subscribe()
    }

    /// The services cached so far.
    pub fn services(&self) -> Vec<(String, String)> {
        let map = self.inner.services.read().unwrap_or_else(|e| e.into_inner());
        map.keys().map(|k| (k.ns.clone(), k.svc.clone())).collect()
    }

    /// Runs `f` on the cached service if it was loaded already (no I/O, no allocation).
    pub fn with_cached<R>(&self, ns: &str, svc: &str, f: impl FnOnce(&CachedService) -> R) -> Option<R> {
        let map = self.inner.services.read().unwrap_or_else(|e| e.into_inner());
        let slot = map.get(&SvcRef { ns, svc })?;
        let current = slot.current.read().unwrap_or_else(|e| e.into_inner());
        current.as_deref().map(f)
    }

    /// The cached service, loading it on first use.
    pub async fn service(&self, ns: &str, svc: &str) -> Result<Arc<CachedService>, ClientError> {
        let slot = self.slot(ns, svc);
        if let Some(c) = slot.current.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(c);
        }
        let _fetching = slot.fetch.lock().await;
        if let Some(c) = slot.current.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(c);
        }
        self.inner.fetch(ns, svc, &slot).await
    }

    /// Re-reads the service now (and notifies changes), loading it if needed.
    pub async fn refresh(&self, ns: &str, svc: &str) -> Result<Arc<CachedService>, ClientError> {
        let slot = self.slot(ns, svc);
        let _fetching = slot.fetch.lock().await;
        self.inner.fetch(ns, svc, &slot).await
    }

    fn slot(&self, ns: &str, svc: &str) -> Arc<Slot> {
        if let Some(slot) = self.inner.services.read().unwrap_or_else(|e| e.into_inner()).get(&SvcRef { ns, svc }) {
            return slot.clone();
        }
        let mut map = self.inner.services.write().unwrap_or_else(|e| e.into_inner());
        map.entry(SvcRef { ns, svc }.to_owned()).or_default().clone()
    }

    /// Whether `pod` is alive and not SHUTDOWN (its linked users keep reaching it).
    pub async fn is_available(&self, ns: &str, svc: &str, pod: u32) -> Result<bool, ClientError> {
        Ok(self.service(ns, svc).await?.is_available(pod))
    }

    /// Whether `pod` is alive and READY.
    pub async fn is_routable(&self, ns: &str, svc: &str, pod: u32) -> Result<bool, ClientError> {
        Ok(self.service(ns, svc).await?.is_routable(pod))
    }

    /// Alive pods, ascending.
    pub async fn alive_pods(&self, ns: &str, svc: &str) -> Result<Vec<u32>, ClientError> {
        let s = self.service(ns, svc).await?;
        Ok(s.current().alive_pods().map(|p| p.index).collect())
    }

    /// Routable pods, ascending.
    pub async fn routable_pods(&self, ns: &str, svc: &str) -> Result<Vec<u32>, ClientError> {
        let s = self.service(ns, svc).await?;
        Ok(s.current().routable_pods().collect())
    }

    /// A uniformly random good pod; `None` when nothing is routable.
    pub async fn best_pod(&self, ns: &str, svc: &str) -> Result<Option<u32>, ClientError> {
        let s = self.service(ns, svc).await?;
        let random = self.random();
        Ok(s.current().pick(random))
    }

    /// A random u32 from the (possibly seeded) source.
    pub fn random(&self) -> u32 {
        self.inner.rng.lock().unwrap_or_else(|e| e.into_inner()).random()
    }

    /// Whether the service's workload aggregate is READY and fresh (by the service's window).
    pub async fn is_workload_ready(&self, ns: &str, svc: &str) -> Result<bool, ClientError> {
        let s = self.service(ns, svc).await?;
        let workload: Option<Workload> = self.inner.store.get_workload(ns, svc).await?;
        Ok(workload.is_some_and(|w| w.is_ready(s.server_now_ms(), s.snapshot.policy.window_ms)))
    }
}

impl Inner {
    async fn fetch(&self, ns: &str, svc: &str, slot: &Slot) -> Result<Arc<CachedService>, ClientError> {
        let read = self.store.read_service(ns, svc).await?;
        let snapshot = read.snapshot(self.config.fallback_window_ms, self.config.range_for(svc));
        for s in &snapshot.skipped {
            tracing::warn!(ns, svc, field = %s.field, reason = %s.reason, "skipping an unparsable pod state");
        }
        let fresh = Arc::new(CachedService { snapshot, fetched_at: Instant::now() });
        let previous = slot.current.write().unwrap_or_else(|e| e.into_inner()).replace(fresh.clone());
        if let Some(previous) = previous {
            self.notify(ns, svc, &previous.snapshot, &fresh.snapshot);
        }
        Ok(fresh)
    }

    fn notify(&self, ns: &str, svc: &str, before: &ServiceSnapshot, after: &ServiceSnapshot) {
        let mut pods: Vec<u32> = before.pods().chain(after.pods()).map(|p| p.index).collect();
        pods.sort_unstable();
        pods.dedup();
        for pod in pods {
            let (previous, now) = (before.routing_of(pod), after.routing_of(pod));
            if previous != now {
                tracing::info!(ns, svc, pod, ?previous, ?now, "routing state changed");
                // No subscriber is fine: the event is only logged then.
                let _ = self.events.send(RoutingChange { ns: ns.to_owned(), svc: svc.to_owned(), pod, previous, now });
            }
        }
    }
}

async fn refresh_loop(inner: Weak<Inner>) {
    let period = match inner.upgrade() {
        Some(i) => i.config.refresh_period,
        None => return,
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; services load on first use
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let slots: Vec<(SvcKey, Arc<Slot>)> = {
            let map = inner.services.read().unwrap_or_else(|e| e.into_inner());
            map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let inner = &inner;
        futures::future::join_all(slots.iter().map(|(key, slot)| async move {
            let _fetching = slot.fetch.lock().await;
            if let Err(e) = inner.fetch(&key.ns, &key.svc, slot).await {
                // Keep the last good view; the next period retries.
                tracing::warn!(ns = key.ns, svc = key.svc, error = %e.chain(), "refreshing pod states failed");
            }
        }))
        .await;
    }
}
