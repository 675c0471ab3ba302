//! The kube-runtime controller: watches RouteStates, the StatefulSets they target and those
//! StatefulSets' pods (trimmed caches, [`watches`]), reconciles each RouteState
//! ([`reconcile`]: plan, Events, status) and hands the plans to the publisher. Level-triggered
//! and idempotent.

pub mod events;
pub mod pods;
pub mod reconcile;
pub mod watches;

#[cfg(test)]
mod scenarios;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        Controller,
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use tokio::sync::{mpsc, watch};

pub use pods::PodIndex;
pub use watches::{CappedBackoff, Synced, trim_statefulset};

use super::{crd::RouteState, leader::Leadership, metrics::Metrics, publisher::Publisher};
use crate::core::ErrorChain;

/// The finalizer that makes deleting a RouteState remove its Redis keys first.
pub const FINALIZER: &str = "routestate.dev/cleanup";
/// Field manager of the operator's status patches.
pub const FIELD_MANAGER: &str = "routestate-operator";

/// What the reconciler shares with the rest of the operator.
pub struct Shared {
    /// Kubernetes client.
    pub client: Client,
    /// Who records the Events.
    pub reporter: Reporter,
    /// The Redis publisher.
    pub publisher: Arc<Publisher>,
    /// This replica's leadership, checked before every write.
    pub leader: Leadership,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// State of the reconciler: the shared parts and the caches.
pub struct Context {
    client: Client,
    reporter: Reporter,
    recorder: Recorder,
    publisher: Arc<Publisher>,
    leader: Leadership,
    metrics: Arc<Metrics>,
    pods: Arc<PodIndex>,
    statefulsets: Store<StatefulSet>,
    routestates: Store<RouteState>,
    synced: Synced,
    /// What was last derived per RouteState (for Events on changes only).
    seen: Mutex<HashMap<ObjectRef<RouteState>, events::Seen>>,
    /// When each RouteState's status was last patched (to bound the patch rate).
    status_patched: Mutex<HashMap<ObjectRef<RouteState>, tokio::time::Instant>>,
}

impl Context {
    fn new(
        shared: Shared,
        pods: Arc<PodIndex>,
        statefulsets: Store<StatefulSet>,
        routestates: Store<RouteState>,
        synced: Synced,
    ) -> Self {
        let Shared { client, reporter, publisher, leader, metrics } = shared;
        Self {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            client,
            reporter,
            publisher,
            leader,
            metrics,
            pods,
            statefulsets,
            routestates,
            synced,
            seen: Mutex::default(),
            status_patched: Mutex::default(),
        }
    }

    /// Runs `f` on what was seen of `key` (created empty).
    fn seen<T>(&self, key: &ObjectRef<RouteState>, f: impl FnOnce(&mut events::Seen) -> T) -> T {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        f(seen.entry(key.clone()).or_default())
    }

    fn forget_seen(&self, key: &ObjectRef<RouteState>) {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        self.status_patched.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    fn status_patched(&self, key: &ObjectRef<RouteState>) -> Option<tokio::time::Instant> {
        self.status_patched.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied()
    }

    fn set_status_patched(&self, key: ObjectRef<RouteState>, at: tokio::time::Instant) {
        self.status_patched.lock().unwrap_or_else(|e| e.into_inner()).insert(key, at);
    }
}

/// The controller's inputs that are not RouteStates.
pub struct Watches {
    /// RouteState API (namespaced or all).
    pub routestates: Api<RouteState>,
    /// Pod API.
    pub pods: Api<Pod>,
    /// StatefulSet API.
    pub statefulsets: Api<StatefulSet>,
}

/// The controller future and the readiness of its caches.
pub struct Built {
    /// Runs the controller until `shutdown`.
    pub future: futures::future::BoxFuture<'static, ()>,
    /// Whether the three caches have been filled.
    pub synced: Synced,
}

/// Builds the controller. A new lease term re-reconciles everything; `sync_changed` re-reconciles
/// one RouteState (its Redis sync state changed).
pub fn build(
    watches: Watches,
    shared: Shared,
    sync_changed: mpsc::UnboundedReceiver<ObjectRef<RouteState>>,
    mut shutdown: watch::Receiver<bool>,
) -> Built {
    let (statefulsets, sts_stream, sts_synced) =
        watches::cached("statefulsets", watches.statefulsets, trim_statefulset);
    let (routestates, rs_stream, rs_synced) =
        watches::cached("routestates", watches.routestates, watches::trim_routestate);
    let pods = Arc::new(PodIndex::default());
    let (pod_triggers, pods_synced) = watches::pod_triggers(watches.pods, pods.clone(), routestates.clone());
    let synced = Synced { pods: pods_synced, statefulsets: sts_synced, routestates: rs_synced };

    shared.publisher.set_routestate_store(routestates.clone());
    let terms = new_terms(shared.leader.clone());
    let ctx = Arc::new(Context::new(shared, pods, statefulsets, routestates.clone(), synced.clone()));
    let for_sts = routestates.clone();
    let failures = ctx.clone();
    // A plan follows a changed spec or changed pod facts at once; the reconcile they trigger
    // (Events, status) comes after.
    let (by_spec, by_pods) = (ctx.clone(), ctx.clone());
    let rs_stream = rs_stream.inspect(move |rs| {
        if let Ok(rs) = rs {
            reconcile::follow(&by_spec, &ObjectRef::from_obj(rs));
        }
    });
    let pod_triggers = pod_triggers.inspect(move |key| reconcile::follow(&by_pods, key));
    let future = Controller::for_stream(rs_stream, routestates)
        .trigger_backoff(CappedBackoff::default())
        .watches_stream(sts_stream, move |sts: StatefulSet| {
            watches::routestates_for(&for_sts, sts.namespace(), &sts.name_any())
        })
        .reconcile_on(pod_triggers)
        .reconcile_all_on(terms)
        .reconcile_on(futures::stream::unfold(sync_changed, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) }))
        .graceful_shutdown_on(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(move |result| {
            let ctx = failures.clone();
            async move { tell_failure(&ctx, result).await }
        })
        .boxed();
    Built { future, synced }
}

type RunResult = Result<
    (ObjectRef<RouteState>, kube::runtime::controller::Action),
    kube::runtime::controller::Error<super::Error, kube::runtime::watcher::Error>,
>;

/// Records a failed reconcile as a `ReconcileFailed` Warning Event on its RouteState (the
/// Recorder folds repeats into a series), from the controller's own stream: in order, and never
/// after the controller has stopped.
async fn tell_failure(ctx: &Context, result: RunResult) {
    use kube::runtime::controller::Error as C;
    let (error, object) = match result {
        Ok(_) => return,
        Err(C::ReconcilerFailed(error, object)) => (error, object),
        Err(other) => return tracing::debug!(error = %other.chain(), "controller error"),
    };
    if !reconcile::tells_failure(&error, ctx.leader.holds()) {
        return;
    }
    let key = ObjectRef::<RouteState>::new(&object.name);
    let key = match &object.namespace {
        Some(ns) => key.within(ns),
        None => key,
    };
    let Some(rs) = ctx.routestates.get(&key) else { return };
    let event = Event {
        type_: EventType::Warning,
        reason: reconcile::RECONCILE_FAILED.into(),
        note: Some(error.chain().to_string()),
        action: error.category().into(),
        secondary: None,
    };
    reconcile::publish_event(ctx, &rs.object_ref(&()), event).await;
}

/// A `()` whenever this replica is (again) the lease holder: at start if it holds the lease,
/// then on every observed change after which it holds it. A quick lose-and-regain that the
/// watch channel coalesces still fires; an extra firing only costs a reconcile of everything.
fn new_terms(leader: Leadership) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold((leader, true), |(mut rx, first)| async move {
        let mut first = first;
        loop {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            first = false;
            if rx.holds_and_update() {
                return Some(((), (rx, false)));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn new_terms_fire_on_each_acquisition_only() {
        let claim = || Some(crate::operator::Claim::unlimited());
        let (tx, rx) = Leadership::channel(None);
        let mut terms = std::pin::pin!(new_terms(rx));
        tx.send_replace(claim());
        assert_eq!(terms.next().await, Some(()));
        // Lost and regained before the stream looked: still a new term.
        tx.send_replace(None);
        tx.send_replace(claim());
        assert_eq!(terms.next().await, Some(()));
        // Losing alone does not fire.
        tx.send_replace(None);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), terms.next()).await;
        assert!(pending.is_err(), "fired without leadership");
        drop(tx);
        assert_eq!(terms.next().await, None);
    }
}
