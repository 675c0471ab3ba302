//! The watches that feed the controller: the pod index and trimmed caches of StatefulSets and RouteStates,
//! each retried on its own with a short capped backoff and reporting when its first list is in.

use std::{sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use super::pods::PodIndex;
use crate::{core::ErrorChain, operator::crd::RouteState};

/// A cache of `api`'s objects (each trimmed by `trim` before it is stored), the stream of the
/// objects it touched, and a flag that turns true once the first list is in. Cache readiness is
/// observed in the stream itself: `Store::wait_until_ready` wakes only one of several concurrent
/// waiters (kube 5), so reconciles must never wait on it.
pub fn cached<K>(
    what: &'static str,
    api: Api<K>,
    trim: impl FnMut(&mut K) + Send + 'static,
) -> (Store<K>, impl Stream<Item = Result<K, watcher::Error>> + Send + 'static, watch::Receiver<bool>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (synced_tx, synced) = watch::channel(false);
    let (store, writer) = reflector::store();
    let stream = retried(what, watcher(api, watcher::Config::default().any_semantic()))
        .modify(trim)
        .inspect(mark_synced(synced_tx))
        .reflect(writer)
        .touched_objects();
    (store, stream, synced)
}

/// The pod watch, feeding `index`: a stream of the RouteStates to reconcile because facts of
/// their StatefulSet's pods changed (resolved by the RouteState cache `routestates`), and a flag
/// that turns true once the first list is in the index.
pub fn pod_triggers(
    api: Api<Pod>,
    index: Arc<PodIndex>,
    routestates: Store<RouteState>,
) -> (impl Stream<Item = ObjectRef<RouteState>> + Send + 'static, watch::Receiver<bool>) {
    let (synced_tx, synced) = watch::channel(false);
    let stream = retried("pods", watcher(api, watcher::Config::default().any_semantic())).flat_map(move |event| {
        let changed = match &event {
            Ok(event) => index.apply(event),
            Err(_) => Default::default(),
        };
        // Ready once the index holds the whole first list (not before: a reconcile would read a part).
        if let Ok(watcher::Event::InitDone) = event {
            synced_tx.send_replace(true);
        }
        let targets: Vec<ObjectRef<RouteState>> =
            changed.into_iter().flat_map(|(ns, sts)| routestates_for(&routestates, Some(ns), &sts)).collect();
        futures::stream::iter(targets)
    });
    (stream, synced)
}

/// Drops what the operator does not need from a RouteState (its managed fields).
pub fn trim_routestate(rs: &mut RouteState) {
    rs.metadata.managed_fields = None;
}

/// Drops the pod template, managed fields and annotations of a StatefulSet.
pub fn trim_statefulset(sts: &mut StatefulSet) {
    sts.metadata.managed_fields = None;
    sts.metadata.annotations = None;
    sts.spec.template = Default::default();
    sts.spec.volume_claim_templates = None;
}

pub(super) fn routestates_for(
    store: &Store<RouteState>,
    namespace: Option<String>,
    statefulset: &str,
) -> Vec<ObjectRef<RouteState>> {
    store
        .state()
        .iter()
        .filter(|rs| rs.namespace() == namespace && rs.stateful_set_name() == statefulset)
        .map(|rs| ObjectRef::from_obj(rs.as_ref()))
        .collect()
}

/// Whether the pod, StatefulSet and RouteState caches have completed their initial list.
#[derive(Clone)]
pub struct Synced {
    pub(super) pods: watch::Receiver<bool>,
    pub(super) statefulsets: watch::Receiver<bool>,
    pub(super) routestates: watch::Receiver<bool>,
}

impl Synced {
    /// All three caches are filled.
    pub fn is_synced(&self) -> bool {
        *self.pods.borrow() && *self.statefulsets.borrow() && *self.routestates.borrow()
    }

    /// Waits until the pod and StatefulSet caches are filled (any number of waiters).
    pub(super) async fn dependents(&self) {
        let (mut p, mut s) = (self.pods.clone(), self.statefulsets.clone());
        let _ = p.wait_for(|v| *v).await;
        let _ = s.wait_for(|v| *v).await;
    }
}

/// Watch retry backoff: 250 ms doubling to at most 5 s, ±20 % jitter, reset after a success.
///
/// kube's default (800 ms → 30 s) is applied both per watch and again on the controller's merged
/// triggers, and every failing watch advances the shared one: after a 20 s API server outage the
/// watches resumed only 60–160 s later. Routing changes must flow within seconds of recovery.
#[derive(Debug, Clone)]
pub struct CappedBackoff {
    next: Duration,
}

impl CappedBackoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for CappedBackoff {
    fn default() -> Self {
        Self { next: Self::MIN }
    }
}

impl Iterator for CappedBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        let jitter = rand::random_range(0.8..1.2);
        Some(base.mul_f64(jitter))
    }
}

impl kube::runtime::utils::Backoff for CappedBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// Whether a watch error is the API server's "resource version too old" (410 Gone): the normal
/// signal to relist, e.g. after an API server restart emptied its watch cache. The watcher
/// relists by itself on its next poll, so it is retried at once, as client-go does.
fn is_expired(error: &watcher::Error) -> bool {
    matches!(error, watcher::Error::WatchError(status) if status.code == 410)
}

/// Retries a failing watch after [`CappedBackoff`] (at once after a 410, see [`is_expired`]) and
/// consumes its errors, logging each once: the controller never sees them. kube's controller
/// applies a backoff of its own to errors of any of its trigger streams, so one watch's error
/// would delay every other watch as well; after an API server restart each of the three watches
/// met a 410 in turn and the operator learned of changes only about 20 s after the return.
pub fn retried<K, S>(what: &'static str, stream: S) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    use kube::runtime::utils::Backoff;
    let mut backoff = CappedBackoff::default();
    stream
        .then(move |item| {
            let delay = match &item {
                Ok(_) => {
                    backoff.reset();
                    None
                }
                Err(e) if is_expired(e) => {
                    tracing::debug!(watch = what, error = %e.chain(), "watch expired; relisting");
                    None
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(CappedBackoff::MAX);
                    tracing::warn!(watch = what, error = %e.chain(), retry_in = ?delay, "watch failed");
                    Some(delay)
                }
            };
            async move {
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                item
            }
        })
        .filter(|item| futures::future::ready(item.is_ok()))
}

fn mark_synced<K>(flag: watch::Sender<bool>) -> impl FnMut(&Result<watcher::Event<K>, watcher::Error>) {
    move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            flag.send_replace(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut b = CappedBackoff::default();
        let delays: Vec<Duration> = (&mut b).take(8).collect();
        for (d, base_ms) in delays.iter().zip([250u64, 500, 1000, 2000, 4000, 5000, 5000, 5000]) {
            let base = Duration::from_millis(base_ms);
            assert!(*d >= base.mul_f64(0.8) && *d <= base.mul_f64(1.2), "{d:?} vs {base:?}");
        }
        b.reset();
        assert!(b.next().unwrap() <= Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn watch_errors_are_retried_after_a_backoff_except_expiry() {
        use kube::core::Status;
        let status = |code| watcher::Error::WatchError(Box::new(Status { code, ..Default::default() }));
        let items: Vec<Result<watcher::Event<Pod>, watcher::Error>> =
            vec![Err(status(500)), Ok(watcher::Event::InitDone), Err(status(410)), Ok(watcher::Event::Init)];
        let started = tokio::time::Instant::now();
        let mut out = std::pin::pin!(retried("test", futures::stream::iter(items)));
        // The 500 costs one backoff step (250 ms ± 20 %) before the next event is read...
        assert!(matches!(out.next().await, Some(Ok(watcher::Event::InitDone))));
        let after_500 = started.elapsed();
        assert!(after_500 >= Duration::from_millis(200) && after_500 <= Duration::from_millis(300), "{after_500:?}");
        // ...the 410 none, and no error reaches the controller.
        assert!(matches!(out.next().await, Some(Ok(watcher::Event::Init))));
        assert_eq!(started.elapsed(), after_500);
        assert!(out.next().await.is_none());
    }
}
