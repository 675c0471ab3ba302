//! The client role: placing users on pods and reading their links.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use hashbrown::HashMap;

use super::{
    ClientConfig, ClientError, LinkCache, ReadModel,
    keys::{LinkKey, LinkRef},
};
use crate::store::{LinkTtl, PickParams, Store};

type Flight = Shared<BoxFuture<'static, Result<u32, Arc<ClientError>>>>;

struct Inner {
    read: ReadModel,
    cache: LinkCache,
    inflight: Mutex<HashMap<LinkKey, Flight>>,
    computations: AtomicU64,
}

/// Counters of a [`Client`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientStats {
    /// `compute_linked_pod` calls that went past the local cache and ran a computation
    /// (coalesced callers share one).
    pub computations: u64,
}

/// The client role; clone it freely.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("cached_links", &self.inner.cache.len()).finish()
    }
}

impl Client {
    /// A client over its own read model (starts the background refresh; needs a Tokio runtime).
    pub fn new(store: Store, config: ClientConfig) -> Result<Self, ClientError> {
        Ok(Self::with_read_model(ReadModel::new(store, config)?))
    }

    /// A client sharing an existing read model.
    pub fn with_read_model(read: ReadModel) -> Self {
        let cache = LinkCache::new(read.config().link_cache_ttl);
        Self { inner: Arc::new(Inner { read, cache, inflight: Mutex::default(), computations: AtomicU64::new(0) }) }
    }

    /// The read model (states, best pod, notifications).
    pub fn read_model(&self) -> &ReadModel {
        &self.inner.read
    }

    /// Counters.
    pub fn stats(&self) -> ClientStats {
        ClientStats { computations: self.inner.computations.load(Ordering::Relaxed) }
    }

    /// The local link cache.
    pub fn link_cache(&self) -> &LinkCache {
        &self.inner.cache
    }

    fn store(&self) -> &Store {
        self.inner.read.store()
    }

    fn config(&self) -> &ClientConfig {
        self.inner.read.config()
    }

    /// The pod serving (ns, uid, svc), linking one if needed:
    /// local cache (if that pod is still available) → best pod → `set_linked_pod_if_absent`
    /// with the temporary TTL → the pod actually linked if available → an existing link if
    /// available → [`ClientError::NoAvailablePod`]. Concurrent calls for the same
    /// (ns, uid, svc) share one computation.
    pub async fn compute_linked_pod(&self, ns: &str, uid: &str, svc: &str) -> Result<u32, ClientError> {
        if let Some(pod) = self.cached_available(ns, uid, svc) {
            return Ok(pod);
        }
        let key = LinkRef { ns, uid, svc };
        let flight = {
            let mut inflight = self.inner.inflight.lock().unwrap_or_else(|e| e.into_inner());
            match inflight.get(&key) {
                Some(f) => f.clone(),
                None => {
                    let this = self.clone();
                    let owned = key.to_owned();
                    let f = async move { this.compute(&owned.ns, &owned.uid, &owned.svc).await.map_err(Arc::new) }
                        .boxed()
                        .shared();
                    inflight.insert(key.to_owned(), f.clone());
                    f
                }
            }
        };
        let result = flight.clone().await;
        {
            let mut inflight = self.inner.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if inflight.get(&key).is_some_and(|f| f.ptr_eq(&flight)) {
                inflight.remove(&key);
            }
        }
        // The shared future keeps a copy of the result: drop it so a lone caller gets the error
        // itself rather than a shared reference.
        drop(flight);
        result.map_err(|e| Arc::try_unwrap(e).unwrap_or_else(ClientError::Coalesced))
    }

    /// The cache hit path: no I/O, no allocation.
    fn cached_available(&self, ns: &str, uid: &str, svc: &str) -> Option<u32> {
        // One clock read serves both the cache expiry and the freshness judgement.
        let now = std::time::Instant::now();
        let pod = self.inner.cache.get_at(ns, uid, svc, now)?;
        self.inner.read.with_cached(ns, svc, |s| s.is_available_at(pod, now)).unwrap_or(false).then_some(pod)
    }

    async fn compute(&self, ns: &str, uid: &str, svc: &str) -> Result<u32, ClientError> {
        self.inner.computations.fetch_add(1, Ordering::Relaxed);
        let read = &self.inner.read;
        if let Some(pod) = self.inner.cache.get(ns, uid, svc) {
            if read.is_available(ns, svc, pod).await? {
                return Ok(pod);
            }
            tracing::warn!(ns, uid, svc, pod, "cached pod is no longer available");
            self.inner.cache.expire(ns, uid, svc);
        }
        if let Some(best) = read.best_pod(ns, svc).await? {
            let ttl = LinkTtl::Temporary(self.config().temp_link_ttl_secs);
            let linked = self.store().set_linked_pod_if_absent(ns, uid, svc, best, ttl).await?;
            if read.is_available(ns, svc, linked).await? {
                self.inner.cache.set(ns, uid, svc, linked);
                return Ok(linked);
            }
        }
        if let Some(linked) = self.store().get_linked_pod(ns, uid, svc).await?
            && read.is_available(ns, svc, linked).await?
        {
            self.inner.cache.set(ns, uid, svc, linked);
            return Ok(linked);
        }
        Err(ClientError::NoAvailablePod { ns: ns.to_owned(), uid: uid.to_owned(), svc: svc.to_owned() })
    }

    /// Places the user in one server-side script (see [`Store::pick_and_link`]): keeps an
    /// available existing link, else links a good pod chosen with this client's random source.
    /// The result is cached locally. `None` when nothing is available.
    pub async fn pick_and_link(&self, ns: &str, uid: &str, svc: &str) -> Result<Option<u32>, ClientError> {
        let cfg = self.config();
        let params = PickParams {
            temp_ttl_secs: cfg.temp_link_ttl_secs,
            random: self.inner.read.random(),
            range: cfg.range_for(svc),
            fallback_window_ms: cfg.fallback_window_ms,
        };
        let placed = self.store().pick_and_link(ns, uid, svc, params).await?;
        if let Some(p) = placed {
            self.inner.cache.set(ns, uid, svc, p.pod);
        }
        Ok(placed.map(|p| p.pod))
    }

    /// Explains, without writing anything, what [`Client::pick_and_link`] would do for `uid` (or
    /// a pick for a new user, without one), judged with this client's range and fallback window
    /// (see [`Store::explain_pick`]). A value to log; its `Display` is the text for people.
    pub async fn explain_pick(
        &self,
        ns: &str,
        svc: &str,
        uid: Option<&str>,
    ) -> Result<crate::core::Explanation, ClientError> {
        let cfg = self.config();
        Ok(self.store().explain_pick(ns, svc, uid, cfg.range_for(svc), cfg.fallback_window_ms).await?)
    }

    /// A uniformly random good pod of the service; `None` when nothing is routable.
    pub async fn best_pod(&self, ns: &str, svc: &str) -> Result<Option<u32>, ClientError> {
        self.inner.read.best_pod(ns, svc).await
    }

    /// The linked pod: the local cache, else Redis (cached on a hit).
    pub async fn get_linked_pod(&self, ns: &str, uid: &str, svc: &str) -> Result<Option<u32>, ClientError> {
        if let Some(pod) = self.inner.cache.get(ns, uid, svc) {
            return Ok(Some(pod));
        }
        self.get_linked_pod_not_cache(ns, uid, svc).await
    }

    /// The linked pod from Redis, bypassing the cache (and refreshing it on a hit).
    pub async fn get_linked_pod_not_cache(&self, ns: &str, uid: &str, svc: &str) -> Result<Option<u32>, ClientError> {
        let pod = self.store().get_linked_pod(ns, uid, svc).await?;
        if let Some(pod) = pod {
            self.inner.cache.set(ns, uid, svc, pod);
        }
        Ok(pod)
    }

    /// The cached pod, else the persistent link from Redis (cached on a hit).
    pub async fn get_linked_pod_in_cache_or_if_persist(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
    ) -> Result<Option<u32>, ClientError> {
        if let Some(pod) = self.inner.cache.get(ns, uid, svc) {
            return Ok(Some(pod));
        }
        let pod = self.store().get_linked_pod_if_persist(ns, uid, svc).await?;
        if let Some(pod) = pod {
            self.inner.cache.set(ns, uid, svc, pod);
        }
        Ok(pod)
    }

    /// The cached pod only.
    pub fn get_linked_in_cache(&self, ns: &str, uid: &str, svc: &str) -> Option<u32> {
        self.inner.cache.get(ns, uid, svc)
    }

    /// Links (ns, uid, svc) to `pod` with the temporary TTL unless already linked; returns and
    /// caches the pod actually linked.
    pub async fn set_linked_pod_if_absent(&self, ns: &str, uid: &str, svc: &str, pod: u32) -> Result<u32, ClientError> {
        let ttl = LinkTtl::Temporary(self.config().temp_link_ttl_secs);
        let linked = self.store().set_linked_pod_if_absent(ns, uid, svc, pod, ttl).await?;
        self.inner.cache.set(ns, uid, svc, linked);
        Ok(linked)
    }

    /// A uid's persistent links, service → pod.
    pub async fn get_link_services(&self, ns: &str, uid: &str) -> Result<BTreeMap<String, u32>, ClientError> {
        Ok(self.store().get_link_services(ns, uid).await?)
    }

    /// Links of many uids to one service, pod → uids.
    pub async fn batch_get_linked_pod<S: AsRef<str>>(
        &self,
        ns: &str,
        uids: &[S],
        svc: &str,
    ) -> Result<BTreeMap<u32, Vec<String>>, ClientError> {
        Ok(self.store().batch_get_linked_pod(ns, uids, svc).await?)
    }
}
