//! The Redis publisher: heartbeats every service's pod states every `updatePeriodSeconds`, and
//! immediately when a plan changes. One tick = one Redis `TIME` + one pipeline (per hash slot on
//! Redis Cluster) holding, per due service, an `HDEL` of vanished pods, one `HSET` of all fields,
//! the meta hash's `updatePeriodSeconds` and the workload aggregate (only while pod 0 is Ready).
//!
//! Only the lease holder writes: the leader flag is checked right before every write, and a
//! replica that loses the lease forgets what it knew about Redis, re-reading it next term.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::future::join_all;
use kube::runtime::reflector::ObjectRef;
use redis::Pipeline;
use tokio::{
    sync::{Notify, mpsc, watch},
    time::Instant,
};

use super::{
    crd::RouteState,
    derive::{PodPublish, SyncState},
    error::{Error, Result},
    metrics::Metrics,
};
use crate::{
    core::{Keys, PodState, Workload, keys::hash_slot},
    store::{RedisConn, server_time_ms},
};

/// Field of the meta hash holding the publish period, read by clients to judge staleness.
pub const META_UPDATE_PERIOD: &str = "updatePeriodSeconds";

/// Retry delay after a failed publish: short, so that a Redis that comes back (empty) gets every
/// state again well within one period, whatever the period.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// How long Redis must keep failing before `/readyz` reports it: one slow PING on a busy machine
/// must not take the operator out of its Service.
pub const REDIS_READY_GRACE: Duration = Duration::from_secs(3);

/// What to publish for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    /// Redis namespace (the RouteState's Kubernetes namespace).
    pub namespace: String,
    /// Redis service name.
    pub service: String,
    /// Heartbeat period.
    pub period_secs: u32,
    /// Fields of the state hash; indexes not here are removed.
    pub pods: BTreeMap<u32, PodPublish>,
    /// The workload aggregate, `None` while pod 0 is missing (the key is then not refreshed).
    pub workload: Option<Workload>,
}

impl ServicePlan {
    fn keys(&self) -> Result<(String, String, String)> {
        let what = || format!("{}/{}", self.namespace, self.service);
        let key = |source| Error::Key { what: what(), source };
        Ok((
            Keys::state(&self.namespace, &self.service).map_err(key)?,
            Keys::state_meta(&self.namespace, &self.service).map_err(key)?,
            Keys::workload(&self.namespace, &self.service).map_err(key)?,
        ))
    }
}

/// A service due for publishing: its RouteState, plan and the fields known to be in Redis.
type Due = (ObjectRef<RouteState>, ServicePlan, Option<BTreeSet<String>>);

struct Entry {
    plan: ServicePlan,
    dirty: bool,
    next_due: Instant,
    /// Fields present in Redis as far as this replica knows; `None` = read them first.
    known: Option<BTreeSet<String>>,
    sync: SyncState,
}

/// The publisher, shared by the controller (which sets plans) and its own tick task.
pub struct Publisher {
    conn: RedisConn,
    entries: Mutex<HashMap<ObjectRef<RouteState>, Entry>>,
    /// Services whose keys must be deleted (their RouteState now points elsewhere).
    orphans: Mutex<Vec<ServicePlan>>,
    /// Serialises Redis writes: a tick and a finalizer's delete never interleave.
    writes: tokio::sync::Mutex<()>,
    wake: Notify,
    leader: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    sync_changed: mpsc::UnboundedSender<ObjectRef<RouteState>>,
    routestates: std::sync::OnceLock<kube::runtime::reflector::Store<RouteState>>,
    /// Since when Redis has been failing (publishes or PINGs); `None` while it answers.
    redis_down_since: Mutex<Option<Instant>>,
}

impl Publisher {
    /// A publisher writing through `conn` while `leader` is true; sync-state changes are sent to
    /// `sync_changed` (the controller re-reconciles those RouteStates to update their status).
    pub fn new(
        conn: RedisConn,
        leader: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
        sync_changed: mpsc::UnboundedSender<ObjectRef<RouteState>>,
    ) -> Self {
        Self {
            conn,
            entries: Mutex::default(),
            orphans: Mutex::default(),
            writes: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            leader,
            metrics,
            sync_changed,
            routestates: std::sync::OnceLock::new(),
            redis_down_since: Mutex::default(),
        }
    }

    /// Records whether the last Redis operation succeeded.
    fn note_redis(&self, ok: bool) {
        let mut down = self.redis_down_since.lock().unwrap_or_else(|e| e.into_inner());
        match (ok, *down) {
            (true, _) => *down = None,
            (false, None) => *down = Some(Instant::now()),
            (false, Some(_)) => {}
        }
    }

    /// How long Redis has been failing without a success in between, if it is failing.
    pub fn redis_down_for(&self) -> Option<Duration> {
        self.redis_down_since.lock().unwrap_or_else(|e| e.into_inner()).map(|since| since.elapsed())
    }

    /// Gives the publisher the controller's RouteState cache: plans of RouteStates missing from
    /// it are dropped before each tick.
    pub fn set_routestate_store(&self, store: kube::runtime::reflector::Store<RouteState>) {
        let _ = self.routestates.set(store);
    }

    fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Sets the plan of a RouteState; a changed plan is published at once.
    pub fn set_plan(&self, key: ObjectRef<RouteState>, plan: ServicePlan) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match entries.get_mut(&key) {
            Some(e) if e.plan == plan => false,
            Some(e) => {
                if (e.plan.namespace.as_str(), e.plan.service.as_str())
                    != (plan.namespace.as_str(), plan.service.as_str())
                {
                    self.orphans.lock().unwrap_or_else(|e| e.into_inner()).push(e.plan.clone());
                    e.known = None;
                }
                e.plan = plan;
                e.dirty = true;
                true
            }
            None => {
                entries.insert(
                    key,
                    Entry { plan, dirty: true, next_due: Instant::now(), known: None, sync: SyncState::Pending },
                );
                true
            }
        };
        drop(entries);
        if changed {
            self.wake.notify_one();
        }
    }

    /// Whether the last publish of this RouteState's service reached Redis.
    pub fn sync_state(&self, key: &ObjectRef<RouteState>) -> SyncState {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).map(|e| e.sync.clone()).unwrap_or_default()
    }

    /// Stops publishing a RouteState and deletes its state hash, meta hash and workload key
    /// (never links). `namespace`/`service` are computed from the object, so the keys go even when
    /// this replica has no plan for it (e.g. after a restart); a plan under another service name
    /// (the spec changed) is deleted too. Only the lease holder may call it.
    pub async fn remove(&self, key: &ObjectRef<RouteState>, namespace: &str, service: &str) -> Result<()> {
        let _w = self.writes.lock().await;
        let removed = self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        let mut targets = vec![(namespace.to_owned(), service.to_owned())];
        if let Some(e) = removed
            && (e.plan.namespace.as_str(), e.plan.service.as_str()) != (namespace, service)
        {
            targets.push((e.plan.namespace, e.plan.service));
        }
        if !self.is_leader() {
            return Err(Error::NotLeader("delete Redis keys"));
        }
        let mut conn = self.conn.clone();
        for (ns, svc) in targets {
            let plan =
                ServicePlan { namespace: ns, service: svc, period_secs: 0, pods: BTreeMap::new(), workload: None };
            let (state, meta, workload) = plan.keys()?;
            // One DEL per key: the workload key lives in another hash slot.
            for k in [&state, &meta, &workload] {
                redis::cmd("DEL").arg(k).query_async::<()>(&mut conn).await.map_err(|source| Error::Redis {
                    op: "DEL",
                    key: k.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Redis answers PING (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.conn.clone();
        let result = redis::cmd("PING").query_async::<()>(&mut conn).await.map_err(|source| Error::Redis {
            op: "PING",
            key: String::new(),
            source,
        });
        self.note_redis(result.is_ok());
        result
    }

    fn next_wake(&self) -> Instant {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        entries
            .values()
            .map(|e| if e.dirty { now } else { e.next_due })
            .min()
            .unwrap_or(now + Duration::from_secs(3600))
    }

    /// Runs ticks until `shutdown` turns true. A tick in flight always completes first.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut leader = self.leader.clone();
        // Every observed leadership change starts a term (a coalesced lose-and-regain too):
        // forget what this replica knew about Redis and, if leading, publish everything now.
        let mut term_changed = true;
        loop {
            let is_leader = *leader.borrow_and_update();
            if term_changed {
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                for e in entries.values_mut() {
                    e.known = None;
                    e.dirty = is_leader;
                    e.sync = SyncState::Pending;
                }
                drop(entries);
                self.metrics.set_leader(is_leader);
                term_changed = false;
            }
            if is_leader {
                self.tick().await;
            }
            let next = if is_leader { self.next_wake() } else { Instant::now() + Duration::from_secs(3600) };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(next) => {}
                r = leader.changed() => {
                    if r.is_err() {
                        return;
                    }
                    term_changed = true;
                }
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Publishes every due service once.
    async fn tick(&self) {
        let _w = self.writes.lock().await;
        let now = Instant::now();
        let due: Vec<Due> = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            // A replica may hold plans of RouteStates deleted while it was a standby (it never
            // saw their cleanup): drop plans whose RouteState is gone from the cache.
            if let Some(store) = self.routestates.get() {
                entries.retain(|k, _| store.get(k).is_some());
            }
            entries
                .iter()
                .filter(|(_, e)| e.dirty || e.next_due <= now)
                .map(|(k, e)| (k.clone(), e.plan.clone(), e.known.clone()))
                .collect()
        };
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        if due.is_empty() && orphans.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        tracing::debug!(services = due.len(), orphans = orphans.len(), "publishing");
        let results = self.publish(&due, &orphans).await;
        self.metrics.publish_duration.observe(started.elapsed().as_secs_f64());

        let mut changed = Vec::new();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for ((key, plan, _), result) in due.into_iter().zip(results) {
            let Some(e) = entries.get_mut(&key) else { continue };
            self.metrics.observe_publish(&key, plan.period_secs, plan.pods.values(), result.is_ok());
            let sync = match result {
                Ok(fields) => {
                    self.note_redis(true);
                    if e.plan == plan {
                        e.dirty = false;
                        e.known = Some(fields);
                    } else {
                        e.known = None;
                    }
                    e.next_due = now + Duration::from_secs(u64::from(plan.period_secs.max(1)));
                    SyncState::Synced
                }
                Err(err) => {
                    self.note_redis(false);
                    self.metrics.publish_errors.inc();
                    tracing::warn!(routestate = %key, error = %err, "publishing to Redis failed");
                    e.known = None;
                    e.dirty = false;
                    e.next_due = now + RETRY_AFTER;
                    SyncState::Failed(err)
                }
            };
            if e.sync != sync {
                e.sync = sync;
                changed.push(key);
            }
        }
        let mut counts = [0i64; 3];
        for e in entries.values() {
            for p in e.plan.pods.values() {
                counts[usize::from(p.routing.ordinal())] += 1;
            }
        }
        drop(entries);
        self.metrics.set_published(counts);
        for key in changed {
            let _ = self.sync_changed.send(key);
        }
    }

    /// Writes the due plans; per plan, the fields now in Redis or what failed.
    async fn publish(
        &self,
        due: &[Due],
        orphans: &[ServicePlan],
    ) -> Vec<std::result::Result<BTreeSet<String>, String>> {
        match self.try_publish(due, orphans).await {
            Ok(results) => results,
            Err(e) => due
                .iter()
                .map(|(_, plan, _)| Err(format!("publishing service {}/{}: {e}", plan.namespace, plan.service)))
                .collect(),
        }
    }

    async fn try_publish(
        &self,
        due: &[Due],
        orphans: &[ServicePlan],
    ) -> Result<Vec<std::result::Result<BTreeSet<String>, String>>> {
        let mut conn = self.conn.clone();
        let cluster = conn.is_cluster();
        let slot = |key: &str| if cluster { hash_slot(key) } else { 0 };

        // Learn which fields exist for services this replica has not written yet this term: one
        // pipeline of HKEYS per hash slot (after a restart or an outage that is every service).
        let plan_keys: Vec<_> = due.iter().map(|(_, plan, _)| plan.keys()).collect();
        let mut known: Vec<BTreeSet<String>> = due.iter().map(|(_, _, k)| k.clone().unwrap_or_default()).collect();
        let mut lookups: BTreeMap<u16, (Pipeline, Vec<usize>)> = BTreeMap::new();
        for (i, ((_, _, k), keys)) in due.iter().zip(&plan_keys).enumerate() {
            if let (None, Ok((state, _, _))) = (k, keys) {
                let (pipe, which) = lookups.entry(slot(state)).or_insert_with(|| (redis::pipe(), Vec::new()));
                pipe.cmd("HKEYS").arg(state);
                which.push(i);
            }
        }
        let lookups = lookups.into_values().map(|(pipe, which)| {
            let mut conn = conn.clone();
            async move { (pipe.query_async::<Vec<Vec<String>>>(&mut conn).await, which) }
        });
        for (fields, which) in join_all(lookups).await {
            // Named by the first key of the failed pipeline, as the publish errors are.
            let key = match &plan_keys[which[0]] {
                Ok((state, _, _)) => state.clone(),
                Err(_) => String::new(),
            };
            let fields = fields.map_err(|source| Error::Redis { op: "HKEYS", key, source })?;
            for (i, f) in which.into_iter().zip(fields) {
                known[i] = f.into_iter().collect();
            }
        }
        let now_ms = server_time_ms(&mut conn).await?;

        // Group commands by hash slot (a Redis Cluster pipeline must stay within one slot).
        let mut groups: BTreeMap<u16, (Pipeline, Vec<String>)> = BTreeMap::new();
        let mut slots_of: Vec<Vec<u16>> = vec![Vec::new(); due.len()];
        let mut desired_of: Vec<BTreeSet<String>> = vec![BTreeSet::new(); due.len()];
        for (i, ((_, plan, _), keys)) in due.iter().zip(&plan_keys).enumerate() {
            let Ok((state, meta, workload_key)) = keys else { continue };
            let desired: BTreeMap<String, String> = plan
                .pods
                .iter()
                .map(|(idx, p)| (idx.to_string(), PodState::new(p.weighted_load, now_ms, p.routing).encode()))
                .collect();
            let stale: Vec<&String> = known[i].iter().filter(|f| !desired.contains_key(*f)).collect();
            let s = slot(state);
            let (pipe, names) = groups.entry(s).or_insert_with(|| (redis::pipe(), Vec::new()));
            if !stale.is_empty() {
                pipe.cmd("HDEL").arg(state).arg(&stale).ignore();
            }
            if !desired.is_empty() {
                pipe.cmd("HSET").arg(state).arg(&desired).ignore();
            }
            pipe.cmd("HSET").arg(meta).arg(META_UPDATE_PERIOD).arg(plan.period_secs).ignore();
            names.push(state.clone());
            slots_of[i].push(s);
            if let Some(w) = &plan.workload {
                let w = Workload { updated_at_millis: now_ms, ..w.clone() };
                let s = slot(workload_key);
                let (pipe, names) = groups.entry(s).or_insert_with(|| (redis::pipe(), Vec::new()));
                pipe.cmd("SET").arg(workload_key).arg(w.encode()).ignore();
                names.push(workload_key.clone());
                slots_of[i].push(s);
            }
            desired_of[i] = desired.into_keys().collect();
        }
        for plan in orphans {
            if let Ok((state, meta, workload_key)) = plan.keys() {
                for k in [state, meta, workload_key] {
                    let (pipe, names) = groups.entry(slot(&k)).or_insert_with(|| (redis::pipe(), Vec::new()));
                    pipe.cmd("DEL").arg(&k).ignore();
                    names.push(k);
                }
            }
        }
        // Stop at once if the lease was lost while we prepared.
        if !self.is_leader() {
            return Err(Error::NotLeader("publish pod states"));
        }
        let runs = groups.iter().map(|(s, (pipe, names))| {
            let mut conn = conn.clone();
            async move {
                let r = pipe.query_async::<()>(&mut conn).await;
                (*s, r.map_err(|e| (names.join(" "), e)))
            }
        });
        let outcomes: HashMap<u16, std::result::Result<(), (String, redis::RedisError)>> =
            join_all(runs).await.into_iter().collect();

        Ok(plan_keys
            .into_iter()
            .enumerate()
            .map(|(i, keys)| {
                keys.map_err(|e| e.to_string())?;
                for s in &slots_of[i] {
                    if let Some(Err((key, e))) = outcomes.get(s) {
                        return Err(format!(
                            "publishing service {}/{}: pipeline on {key}: {e}",
                            due[i].1.namespace, due[i].1.service
                        ));
                    }
                }
                Ok(std::mem::take(&mut desired_of[i]))
            })
            .collect())
    }
}
