//! The kube-runtime controller: watches RouteStates, the StatefulSets they target and those
//! StatefulSets' pods (trimmed caches), derives what to publish, hands it to the publisher,
//! writes the status with server-side apply and emits Events. Level-triggered and idempotent.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ObjectReference, Pod},
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::Action,
        events::{Event, EventType, Recorder},
        finalizer::{Event as Finalizer, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::sync::{mpsc, watch};

use super::{
    crd::RouteState,
    derive::{self, Derived, Finding, PodFacts},
    error::{Error, Result},
    metrics::Metrics,
    publisher::Publisher,
};
use crate::core::{PodPlan, ServicePlan, annotations, pod_index::POD_INDEX_LABEL};

/// The finalizer that makes deleting a RouteState remove its Redis keys first.
pub const FINALIZER: &str = "routestate.dev/cleanup";
/// Field manager of the operator's status patches.
pub const FIELD_MANAGER: &str = "routestate-operator";
/// Level-triggered safety net: every RouteState is re-reconciled at least this often.
const RESYNC: Duration = Duration::from_secs(300);

/// Shared state of the reconciler.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Event recorder.
    pub recorder: Recorder,
    /// Trimmed pod cache.
    pub pods: Store<Pod>,
    /// Trimmed StatefulSet cache.
    pub statefulsets: Store<StatefulSet>,
    /// The Redis publisher.
    pub publisher: Arc<Publisher>,
    /// True while this replica holds the lease.
    pub leader: watch::Receiver<bool>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Cache readiness.
    pub synced: Synced,
    /// The RouteState cache (who owns which service name).
    pub routestates: Store<RouteState>,
    /// What was last derived per RouteState (for Events on changes only).
    seen: Mutex<HashMap<ObjectRef<RouteState>, Seen>>,
}

#[derive(Default)]
struct Seen {
    publish: Option<BTreeMap<u32, PodPlan>>,
    /// (reason, pod, message) of the findings last reported.
    findings: BTreeSet<(&'static str, String, String)>,
    /// The service name and its owner last seen.
    service: Option<(String, Option<String>)>,
}

/// Drops what the operator does not need from a pod: managed fields, spec, foreign annotations
/// and labels, and every status field but the Ready condition.
pub fn trim_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k.starts_with(annotations::PREFIX));
    }
    if let Some(l) = meta.labels.as_mut() {
        l.retain(|k, _| k == POD_INDEX_LABEL);
    }
    if let Some(o) = meta.owner_references.as_mut() {
        o.retain(|o| o.controller == Some(true));
    }
    pod.spec = None;
    if let Some(status) = pod.status.as_mut() {
        let conditions = status.conditions.take().map(|cs| cs.into_iter().filter(|c| c.type_ == "Ready").collect());
        *status = Default::default();
        status.conditions = conditions;
    }
}

/// Drops the pod template, managed fields and annotations of a StatefulSet.
pub fn trim_statefulset(sts: &mut StatefulSet) {
    sts.metadata.managed_fields = None;
    sts.metadata.annotations = None;
    sts.spec.template = Default::default();
    sts.spec.volume_claim_templates = None;
}

fn controlling_statefulset(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "StatefulSet")
        .map(|o| o.name.clone())
}

fn routestates_for(
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

/// The controller's inputs that are not RouteStates.
pub struct Watches {
    /// RouteState API (namespaced or all).
    pub routestates: Api<RouteState>,
    /// Pod API.
    pub pods: Api<Pod>,
    /// StatefulSet API.
    pub statefulsets: Api<StatefulSet>,
}

/// The controller future plus the caches it fills (for readiness).
pub struct Built {
    /// Runs the controller until `shutdown`.
    pub future: futures::future::BoxFuture<'static, ()>,
    /// Pod cache.
    pub pods: Store<Pod>,
    /// StatefulSet cache.
    pub statefulsets: Store<StatefulSet>,
    /// RouteState cache.
    pub routestates: Store<RouteState>,
    /// Whether the three caches have been filled.
    pub synced: Synced,
}

/// Whether the pod, StatefulSet and RouteState caches have completed their initial list.
#[derive(Clone)]
pub struct Synced {
    pods: watch::Receiver<bool>,
    statefulsets: watch::Receiver<bool>,
    routestates: watch::Receiver<bool>,
}

impl Synced {
    /// All three caches are filled.
    pub fn is_synced(&self) -> bool {
        *self.pods.borrow() && *self.statefulsets.borrow() && *self.routestates.borrow()
    }

    /// Waits until the pod and StatefulSet caches are filled (any number of waiters).
    async fn dependents(&self) {
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
fn retried<K, S>(what: &'static str, stream: S) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>
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
                    tracing::debug!(watch = what, error = %e, "watch expired; relisting");
                    None
                }
                Err(e) => {
                    let delay = backoff.next().unwrap_or(CappedBackoff::MAX);
                    tracing::warn!(watch = what, error = %e, retry_in = ?delay, "watch failed");
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

/// Builds the controller. `resync_on` re-reconciles everything (a new lease term);
/// `sync_changed` re-reconciles one RouteState (its Redis sync state changed).
#[allow(clippy::too_many_arguments)]
pub fn build(
    watches: Watches,
    client: Client,
    recorder: Recorder,
    publisher: Arc<Publisher>,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    sync_changed: mpsc::UnboundedReceiver<ObjectRef<RouteState>>,
    shutdown: watch::Receiver<bool>,
) -> Built {
    // Cache readiness comes from each watch's InitDone event, observed in the stream itself:
    // `Store::wait_until_ready` wakes only one of several concurrent waiters (kube 5), so
    // reconciles must never wait on it.
    let (pods_synced, pods_ready) = watch::channel(false);
    let (sts_synced, sts_ready) = watch::channel(false);
    let (rs_synced, rs_ready) = watch::channel(false);
    let (pod_store, pod_writer) = reflector::store();
    let pod_stream = retried("pods", watcher(watches.pods, watcher::Config::default().any_semantic()))
        .modify(trim_pod)
        .inspect(mark_synced(pods_synced))
        .reflect(pod_writer)
        .touched_objects();
    let (sts_store, sts_writer) = reflector::store();
    let sts_stream = retried("statefulsets", watcher(watches.statefulsets, watcher::Config::default().any_semantic()))
        .modify(trim_statefulset)
        .inspect(mark_synced(sts_synced))
        .reflect(sts_writer)
        .touched_objects();
    let (rs_store, rs_writer) = reflector::store();
    let rs_stream = retried("routestates", watcher(watches.routestates, watcher::Config::default().any_semantic()))
        .modify(|rs: &mut RouteState| rs.metadata.managed_fields = None)
        .inspect(mark_synced(rs_synced))
        .reflect(rs_writer)
        .touched_objects();
    let synced = Synced { pods: pods_ready, statefulsets: sts_ready, routestates: rs_ready };

    let controller = Controller::for_stream(rs_stream, rs_store.clone()).trigger_backoff(CappedBackoff::default());
    publisher.set_routestate_store(rs_store.clone());
    let (for_pods, for_sts) = (rs_store.clone(), rs_store.clone());
    let ctx = Arc::new(Context {
        client,
        recorder,
        pods: pod_store.clone(),
        statefulsets: sts_store.clone(),
        publisher,
        leader: leader.clone(),
        metrics,
        synced: synced.clone(),
        routestates: rs_store.clone(),
        seen: Mutex::default(),
    });
    let mut shutdown_signal = shutdown.clone();
    let future = controller
        .watches_stream(pod_stream, move |pod: Pod| match controlling_statefulset(&pod) {
            Some(sts) => routestates_for(&for_pods, pod.namespace(), &sts),
            None => Vec::new(),
        })
        .watches_stream(sts_stream, move |sts: StatefulSet| routestates_for(&for_sts, sts.namespace(), &sts.name_any()))
        .reconcile_all_on(new_terms(leader))
        .reconcile_on(futures::stream::unfold(sync_changed, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) }))
        .graceful_shutdown_on(async move {
            let _ = shutdown_signal.wait_for(|s| *s).await;
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .boxed();
    Built { future, pods: pod_store, statefulsets: sts_store, routestates: rs_store, synced }
}

/// A `()` whenever this replica is (again) the lease holder: at start if it holds the lease,
/// then on every observed change after which it holds it. A quick lose-and-regain that the
/// watch channel coalesces still fires; an extra firing only costs a reconcile of everything.
fn new_terms(leader: watch::Receiver<bool>) -> impl Stream<Item = ()> + Send {
    futures::stream::unfold((leader, true), |(mut rx, first)| async move {
        let mut first = first;
        loop {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            first = false;
            if *rx.borrow_and_update() {
                return Some(((), (rx, false)));
            }
        }
    })
}

/// A finalizer patch refused because the reconcile saw an object older than the server's (its
/// JSON-patch `test` failed): routine right after creation, when another trigger reconciles
/// before the watch delivers the object with the finalizer just added. Retried at once, quietly.
fn is_stale_finalizer_patch(error: &Error) -> bool {
    use kube::runtime::finalizer::Error as F;
    let Error::Finalizer(e) = error else { return false };
    matches!(e.as_ref(), F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s))
        if s.code == 422 || s.is_conflict())
}

fn error_policy(rs: Arc<RouteState>, error: &Error, ctx: Arc<Context>) -> Action {
    if is_stale_finalizer_patch(error) {
        tracing::debug!(routestate = %ObjectRef::from_obj(rs.as_ref()), error = %error, "finalizer patch on a stale object; retrying");
        return Action::requeue(Duration::from_millis(200));
    }
    ctx.metrics.error(error.metric_label());
    tracing::warn!(routestate = %ObjectRef::from_obj(rs.as_ref()), error = %error, "reconcile failed");
    if *ctx.leader.borrow() && !matches!(error, Error::NotLeader(_)) {
        // The Recorder deduplicates repeats into an Event series.
        let (reference, note) = (rs.object_ref(&()), error.to_string());
        tokio::spawn(async move {
            publish_event(&ctx, &reference, None, EventType::Warning, "ReconcileFailed", "Reconcile", note).await;
        });
    }
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(rs: Arc<RouteState>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    let ns = rs.namespace().ok_or_else(|| Error::Incomplete {
        kind: "RouteState",
        name: rs.name_any(),
        field: "metadata.namespace",
    })?;
    // Reconciling before the caches are filled would publish an empty pod set.
    ctx.synced.dependents().await;

    if !*ctx.leader.borrow() {
        // Standby: keep the plan warm so a new term publishes at once; write nothing.
        let key = ObjectRef::from_obj(rs.as_ref());
        let owns = owner_of(&ctx, &ns, &rs.service_name()).is_some_and(|o| o == rs.name_any());
        if rs.meta().deletion_timestamp.is_none() && owns {
            let (plan, _) = plan_for(&rs, &ns, &ctx);
            ctx.publisher.set_plan(key, plan);
        } else {
            ctx.publisher.forget(&key);
        }
        return Ok(Action::await_change());
    }
    let api: Api<RouteState> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, rs, |event| async {
        match event {
            Finalizer::Apply(rs) => apply(rs, &ns, &ctx).await,
            Finalizer::Cleanup(rs) => cleanup(rs, &ns, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// The plan for a RouteState and its derivation (`None` when its StatefulSet is missing: then
/// the plan publishes no pod).
fn plan_for(rs: &RouteState, ns: &str, ctx: &Context) -> (ServicePlan, Option<(Derived, Vec<Finding>)>) {
    let sts_name = rs.stateful_set_name();
    let service = rs.service_name();
    let sts = ctx.statefulsets.get(&ObjectRef::new(&sts_name).within(ns));
    let derived = sts.map(|sts| {
        let replicas = sts.spec.replicas.unwrap_or(1).max(0) as u32;
        let mut findings = Vec::new();
        let facts: Vec<PodFacts> = ctx
            .pods
            .state()
            .iter()
            .filter(|p| p.namespace().as_deref() == Some(ns) && derive::owned_by(p, &sts_name))
            .filter_map(|p| derive::pod_facts(p, &sts_name).map_err(|f| findings.push(f)).ok())
            .collect();
        (derive::derive(&rs.spec, replicas, &facts), findings)
    });
    let plan = match &derived {
        Some((d, _)) => d.plan(ns, &service, &rs.spec),
        None => derive::Derived::empty(0).plan(ns, &service, &rs.spec),
    };
    (plan, derived)
}

/// The RouteState of namespace `ns` that publishes Redis service `service` (see
/// [`derive::service_owner`]), from the cache.
fn owner_of(ctx: &Context, ns: &str, service: &str) -> Option<String> {
    let all = ctx.routestates.state();
    let named: Vec<&Arc<RouteState>> =
        all.iter().filter(|rs| rs.namespace().as_deref() == Some(ns) && rs.service_name() == service).collect();
    let claims: Vec<derive::Claim<'_>> = named
        .iter()
        .map(|rs| derive::Claim {
            name: rs.meta().name.as_deref().unwrap_or_default(),
            created: rs.meta().creation_timestamp.as_ref(),
            deleting: rs.meta().deletion_timestamp.is_some(),
        })
        .collect();
    derive::service_owner(&claims).map(str::to_owned)
}

/// Reconciles again every other RouteState of `ns` naming `service`: its owner changed, so one
/// of them may have to take it over or stop.
fn retrigger_service(ctx: &Context, ns: &str, service: &str, except: &ObjectRef<RouteState>) {
    for rs in ctx.routestates.state() {
        let key = ObjectRef::from_obj(rs.as_ref());
        if rs.namespace().as_deref() == Some(ns) && rs.service_name() == service && &key != except {
            ctx.publisher.retrigger(key);
        }
    }
}

async fn apply(rs: Arc<RouteState>, ns: &str, ctx: &Context) -> Result<Action> {
    let key = ObjectRef::from_obj(rs.as_ref());
    let service = rs.service_name();
    let owner = owner_of(ctx, ns, &service);
    // The owner of this service, or of the one this RouteState named before, changed: the other
    // RouteStates naming them reconcile again.
    let before = {
        let mut seen = ctx.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.entry(key.clone()).or_default().service.replace((service.clone(), owner.clone()))
    };
    if before.as_ref() != Some(&(service.clone(), owner.clone())) {
        retrigger_service(ctx, ns, &service, &key);
        if let Some((old, _)) = before.filter(|(old, _)| *old != service) {
            retrigger_service(ctx, ns, &old, &key);
        }
    }
    if let Some(owner) = owner.filter(|o| *o != rs.name_any()) {
        return apply_conflict(&rs, ns, ctx, &service, &owner).await;
    }

    let (plan, derived) = plan_for(&rs, ns, ctx);
    tracing::debug!(routestate = %key, pods = plan.pods.len(), statefulset_found = derived.is_some(), "reconciling");
    ctx.publisher.set_plan(key.clone(), plan.clone());
    if let Some(loss) = ctx.publisher.take_data_loss(&key) {
        let note = format!("{loss}; republished every pod state of service {service} at once");
        publish_event(ctx, &rs.object_ref(&()), None, EventType::Warning, "RedisDataLost", "Republish", note).await;
    }
    let derived = derived.map(|(mut d, mut findings)| {
        findings.append(&mut d.findings);
        d.findings = findings;
        d
    });

    // Events: new findings (Warning) and routing changes (Normal), each once.
    let (new_findings, changes) = {
        let mut seen = ctx.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(key.clone()).or_default();
        let findings: BTreeSet<(&'static str, String, String)> = derived
            .iter()
            .flat_map(|d| d.findings.iter().map(|f| (f.reason(), f.pod().to_owned(), f.to_string())))
            .collect();
        let new: Vec<_> = findings.difference(&entry.findings).cloned().collect();
        entry.findings = findings;
        let changes = match &entry.publish {
            Some(before) => derive::routing_changes(before, &plan.pods),
            None => Vec::new(),
        };
        entry.publish = Some(plan.pods.clone());
        (new, changes)
    };
    let reference = rs.object_ref(&());
    // kube's Recorder folds Events with the same reason, action and related object into one
    // series (keeping the first note), so each Event names its pod as the related object and
    // its outcome as the action.
    for (reason, pod, note) in new_findings {
        let related = pod_ref(ns, &pod);
        publish_event(ctx, &reference, Some(related), EventType::Warning, reason, reason, note).await;
    }
    let pod_name = |index: u32| {
        derived
            .as_ref()
            .and_then(|d| d.pods.iter().find(|p| p.index == index).map(|p| p.name.clone()))
            .unwrap_or_else(|| format!("{}-{index}", rs.stateful_set_name()))
    };
    for (index, before, after) in changes {
        let name = |s: Option<crate::core::RoutingState>| s.map_or("not published", |s| s.wire_name());
        let pod = pod_name(index);
        let note = format!("pod {pod} (index {index}) of service {service}: {} -> {}", name(before), name(after));
        let action = after.map_or("Unpublish".to_owned(), |s| format!("Publish{}", s.kube_name()));
        publish_event(ctx, &reference, Some(pod_ref(ns, &pod)), EventType::Normal, "RoutingChanged", &action, note)
            .await;
    }

    // Status: server-side apply, skipped when nothing changed (no self-triggering).
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let status = derive::compute_status(
        rs.status.as_ref(),
        rs.meta().generation,
        &rs.stateful_set_name(),
        &service,
        derived.as_ref(),
        &ctx.publisher.sync_state(&key),
        &now,
    );
    patch_status(&rs, ns, ctx, status).await?;
    Ok(Action::requeue(RESYNC))
}

/// A RouteState whose service another, older RouteState publishes: it publishes nothing (its
/// keys, if it published before, go unless the owner publishes them), says so in its status, and
/// once in a Warning Event.
async fn apply_conflict(rs: &RouteState, ns: &str, ctx: &Context, service: &str, owner: &str) -> Result<Action> {
    let key = ObjectRef::from_obj(rs);
    ctx.publisher.withdraw(&key);
    // After the withdrawal, so no tick re-creates them: its service's series are the owner's.
    ctx.metrics.forget(&key);
    let new_conflict = {
        let mut seen = ctx.seen.lock().unwrap_or_else(|e| e.into_inner());
        let entry = seen.entry(key.clone()).or_default();
        entry.publish = None;
        let finding = ("ServiceNameConflict", owner.to_owned(), service.to_owned());
        entry.findings.insert(finding)
    };
    if new_conflict {
        let note = format!(
            "RouteState {owner} also names service {service} and is older: it publishes the service, this one publishes nothing until it goes away"
        );
        publish_event(ctx, &rs.object_ref(&()), None, EventType::Warning, "ServiceNameConflict", "Skip", note).await;
    }
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let (_, derived) = plan_for(rs, ns, ctx);
    let status = derive::compute_status_with(
        rs.status.as_ref(),
        rs.meta().generation,
        &rs.stateful_set_name(),
        service,
        derived.map(|(d, _)| d).as_ref(),
        &derive::SyncState::Pending,
        Some(owner),
        &now,
    );
    patch_status(rs, ns, ctx, status).await?;
    Ok(Action::requeue(RESYNC))
}

/// Writes the status with server-side apply, unless it is unchanged.
async fn patch_status(
    rs: &RouteState,
    ns: &str,
    ctx: &Context,
    status: crate::operator::RouteStateStatus,
) -> Result<()> {
    ctx.metrics.observe_status(&ObjectRef::from_obj(rs), &status.conditions);
    if rs.status.as_ref() != Some(&status) {
        if !*ctx.leader.borrow() {
            return Err(Error::NotLeader("patch status"));
        }
        let api: Api<RouteState> = Api::namespaced(ctx.client.clone(), ns);
        let patch = serde_json::json!({
            "apiVersion": RouteState::api_version(&()),
            "kind": RouteState::kind(&()),
            "status": status,
        });
        api.patch_status(&rs.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube(format!("patching the status of RouteState {ns}/{}", rs.name_any())))?;
    }
    Ok(())
}

async fn cleanup(rs: Arc<RouteState>, ns: &str, ctx: &Context) -> Result<Action> {
    let key = ObjectRef::from_obj(rs.as_ref());
    let service = rs.service_name();
    ctx.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
    // Another RouteState naming the service (this one is being deleted, so it is not a
    // candidate) publishes it from now on: the keys stay for it.
    let note = match owner_of(ctx, ns, &service) {
        Some(successor) => {
            ctx.publisher.forget(&key);
            retrigger_service(ctx, ns, &service, &key);
            format!("service {service} is published by RouteState {successor} from now on; its keys stay")
        }
        None => {
            ctx.publisher.remove(&key, ns, &service).await?;
            format!("deleted the Redis keys of service {service} (links are kept)")
        }
    };
    publish_event(ctx, &rs.object_ref(&()), None, EventType::Normal, "Cleanup", "Delete", note).await;
    Ok(Action::await_change())
}

fn pod_ref(ns: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

async fn publish_event(
    ctx: &Context,
    reference: &ObjectReference,
    related: Option<ObjectReference>,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: related };
    // An Event that cannot be written must not fail the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        ctx.metrics.error("event");
        tracing::warn!(error = %e, reason, "publishing an Event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_everything_the_derivation_reads() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "web-1", "namespace": "ns",
                "labels": {"apps.kubernetes.io/pod-index": "1", "app": "web", "controller-revision-hash": "x"},
                "annotations": {"routestate.dev/load": "5", "routestate.dev/routing-state": "DenyNewCall", "big": "x".repeat(10_000)},
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "u", "controller": true},
                    {"apiVersion": "v1", "kind": "Other", "name": "o", "uid": "v"}
                ],
                "managedFields": [{"manager": "kubelet", "operation": "Update"}],
                "deletionTimestamp": "2026-01-01T00:00:00Z"
            },
            "spec": {"containers": [{"name": "app", "image": "pause"}]},
            "status": {"phase": "Running", "podIP": "10.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}]}
        }))
        .unwrap();
        let before = derive::pod_facts(&pod, "web").unwrap();
        let mut trimmed = pod.clone();
        trim_pod(&mut trimmed);
        assert_eq!(derive::pod_facts(&trimmed, "web").unwrap(), before);
        assert!(derive::owned_by(&trimmed, "web"));
        assert_eq!(controlling_statefulset(&trimmed).as_deref(), Some("web"));
        assert!(trimmed.spec.is_none() && trimmed.metadata.managed_fields.is_none());
        assert_eq!(trimmed.metadata.annotations.as_ref().unwrap().len(), 2);
        assert_eq!(trimmed.metadata.labels.as_ref().unwrap().len(), 1);
        assert_eq!(trimmed.metadata.owner_references.as_ref().unwrap().len(), 1);
        let status = trimmed.status.unwrap();
        assert_eq!((status.phase, status.conditions.unwrap().len()), (None, 1));
    }

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

    #[tokio::test]
    async fn new_terms_fire_on_each_acquisition_only() {
        let (tx, rx) = watch::channel(false);
        let mut terms = std::pin::pin!(new_terms(rx));
        tx.send_replace(true);
        assert_eq!(terms.next().await, Some(()));
        // Lost and regained before the stream looked: still a new term.
        tx.send_replace(false);
        tx.send_replace(true);
        assert_eq!(terms.next().await, Some(()));
        // Losing alone does not fire.
        tx.send_replace(false);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(50), terms.next()).await;
        assert!(pending.is_err(), "fired without leadership");
        drop(tx);
        assert_eq!(terms.next().await, None);
    }
}
