//! The Redis publisher: heartbeats every service's write plan every `updatePeriodSeconds`, and
//! at once when a plan changes, through the store's one write path ([`Store::publish`]: per
//! service one atomic script that applies the floors, writes the states stamped with Redis time,
//! rebuilds the candidate index and the meta hash; then the workload aggregate).
//!
//! Only the lease holder writes: its claim is checked against the clock right before every write.
//!
//! Every second (whatever the periods) it also checks that Redis still holds the dataset it
//! published ([`DatasetWatch`]: the services' epoch keys): when Redis came back empty or as
//! another dataset, every service is republished at once, the loss is counted
//! (`routestate_redis_data_loss_total`) and each RouteState gets a Warning Event.

use crate::core::ErrorChain;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::runtime::reflector::ObjectRef;
use tokio::{
    sync::{Notify, mpsc, watch},
    time::Instant,
};

use super::{
    crd::RouteState,
    derive::SyncState,
    error::{Error, Result},
    leader::Leadership,
    metrics::Metrics,
};
use crate::{
    core::{Published, ServicePlan},
    store::{DatasetChange, DatasetWatch, Store},
};

/// Retry delay after a failed publish: short, so that a Redis that comes back (empty) gets every
/// state again well within one period, whatever the period.
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// How long Redis must keep failing before `/readyz` reports it: one slow PING on a busy machine
/// must not take the operator out of its Service.
pub const REDIS_READY_GRACE: Duration = Duration::from_secs(3);

/// How often the datasets are checked: a Redis that comes back empty is republished within this,
/// however long the services' periods are.
const DATASET_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Heartbeats are spread over each period in this many slots, a service in the slot its
/// RouteState hashes to: a tick writes a twentieth of the fleet, not all of it at once, so a
/// changed plan never waits behind the whole fleet's heartbeat (and Redis sees no burst).
const HEARTBEAT_SLOTS: u32 = 20;

/// The heartbeat slot of a RouteState (stable for the life of the process).
fn heartbeat_slot(key: &ObjectRef<RouteState>) -> u32 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % u64::from(HEARTBEAT_SLOTS)) as u32
}

/// When a service published at `now` is next due: the first start of its `slot` (periods
/// counted from `epoch`) at least half a `period` away. In steady state that is exactly one
/// period later; after an out-of-turn publish (a changed plan, a new term) between half a period
/// and one and a half, well inside the three periods after which clients call a state stale.
fn heartbeat_due(epoch: Instant, now: Instant, period: Duration, slot: u32) -> Instant {
    let period_ns = period.as_nanos().max(1);
    let offset_ns = period_ns * u128::from(slot % HEARTBEAT_SLOTS) / u128::from(HEARTBEAT_SLOTS);
    let earliest_ns = now.saturating_duration_since(epoch).as_nanos() + period_ns / 2;
    let periods = earliest_ns.saturating_sub(offset_ns).div_ceil(period_ns);
    let due_ns = offset_ns + periods * period_ns;
    epoch + Duration::from_nanos(u64::try_from(due_ns).unwrap_or(u64::MAX))
}

struct Entry {
    plan: ServicePlan,
    dirty: bool,
    next_due: Instant,
    /// Its heartbeat slot ([`heartbeat_slot`] of its RouteState).
    slot: u32,
    sync: SyncState,
    dataset: DatasetWatch,
    /// A data loss seen and not yet reported as an Event (the controller takes it).
    loss: Option<String>,
}

/// The publisher, shared by the controller (which sets plans) and its own tick task.
pub struct Publisher {
    store: Store,
    entries: Mutex<HashMap<ObjectRef<RouteState>, Entry>>,
    /// Services whose keys must be deleted (their RouteState now points elsewhere).
    orphans: Mutex<Vec<(String, String)>>,
    /// Serialises Redis writes: a tick and a finalizer's delete never interleave.
    writes: tokio::sync::Mutex<()>,
    wake: Notify,
    leader: Leadership,
    metrics: Arc<Metrics>,
    sync_changed: mpsc::UnboundedSender<ObjectRef<RouteState>>,
    routestates: std::sync::OnceLock<kube::runtime::reflector::Store<RouteState>>,
    /// Since when Redis has been failing (publishes or PINGs); `None` while it answers.
    redis_down_since: Mutex<Option<Instant>>,
    /// Where the heartbeat slots' periods are counted from.
    epoch: Instant,
}

impl Publisher {
    /// A publisher writing through `store` while this replica holds `leader`; sync-state changes are sent
    /// to `sync_changed` (the controller re-reconciles those RouteStates to update their status).
    pub fn new(
        store: Store,
        leader: Leadership,
        metrics: Arc<Metrics>,
        sync_changed: mpsc::UnboundedSender<ObjectRef<RouteState>>,
    ) -> Self {
        Self {
            store,
            entries: Mutex::default(),
            orphans: Mutex::default(),
            writes: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            leader,
            metrics,
            sync_changed,
            routestates: std::sync::OnceLock::new(),
            redis_down_since: Mutex::default(),
            epoch: Instant::now(),
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
        self.leader.holds()
    }

    /// Whether the publisher holds a plan for a RouteState.
    pub fn holds_plan(&self, key: &ObjectRef<RouteState>) -> bool {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).contains_key(key)
    }

    /// The plan held for a RouteState.
    #[cfg(test)]
    pub(crate) fn plan(&self, key: &ObjectRef<RouteState>) -> Option<ServicePlan> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).get(key).map(|e| e.plan.clone())
    }

    /// Sets the plan of a RouteState; a changed plan is published at once. Returns whether it
    /// changed.
    pub fn set_plan(&self, key: ObjectRef<RouteState>, plan: ServicePlan) -> bool {
        self.put_plan(key, plan, true)
    }

    /// Replaces the plan of a RouteState the publisher holds one for, of the same service, and
    /// does nothing otherwise (a plan withdrawn, forgotten or never set is not brought back, and
    /// a renamed service waits for the reconcile that settles its owner); returns whether the
    /// plan changed. A changed plan is published at once.
    pub fn replace_plan(&self, key: ObjectRef<RouteState>, plan: ServicePlan) -> bool {
        self.put_plan(key, plan, false)
    }

    fn put_plan(&self, key: ObjectRef<RouteState>, plan: ServicePlan, insert: bool) -> bool {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match entries.get_mut(&key) {
            Some(e) if !insert && (&e.plan.namespace, &e.plan.service) != (&plan.namespace, &plan.service) => {
                return false;
            }
            Some(e) if e.plan == plan => false,
            Some(e) => {
                if (e.plan.namespace.as_str(), e.plan.service.as_str())
                    != (plan.namespace.as_str(), plan.service.as_str())
                {
                    let old = (e.plan.namespace.clone(), e.plan.service.clone());
                    self.orphans.lock().unwrap_or_else(|e| e.into_inner()).push(old);
                    e.dataset = DatasetWatch::new(&plan.namespace, &plan.service);
                }
                e.plan = plan;
                e.dirty = true;
                true
            }
            None if !insert => return false,
            None => {
                let dataset = DatasetWatch::new(&plan.namespace, &plan.service);
                let slot = heartbeat_slot(&key);
                entries.insert(
                    key,
                    Entry {
                        plan,
                        dirty: true,
                        next_due: Instant::now(),
                        slot,
                        sync: SyncState::Pending,
                        dataset,
                        loss: None,
                    },
                );
                true
            }
        };
        drop(entries);
        if changed {
            self.wake.notify_one();
        }
        changed
    }

    /// Stops publishing a RouteState without deleting anything now: its service's keys are
    /// deleted by the next tick unless another RouteState publishes that service (it then takes
    /// them over).
    pub fn withdraw(&self, key: &ObjectRef<RouteState>) {
        let removed = self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        if let Some(e) = removed {
            self.orphans.lock().unwrap_or_else(|e| e.into_inner()).push((e.plan.namespace, e.plan.service));
            self.wake.notify_one();
        }
    }

    /// Stops publishing a RouteState and keeps its service's keys as they are: another
    /// RouteState takes the service over and republishes it.
    pub fn forget(&self, key: &ObjectRef<RouteState>) {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// Asks the controller to reconcile a RouteState again (its service's owner changed).
    pub fn retrigger(&self, key: ObjectRef<RouteState>) {
        let _ = self.sync_changed.send(key);
    }

    /// A data loss seen for this RouteState's service and not reported yet (taken once).
    pub fn take_data_loss(&self, key: &ObjectRef<RouteState>) -> Option<String> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).get_mut(key).and_then(|e| e.loss.take())
    }

    /// Whether the last publish of this RouteState's service reached Redis, and what it published.
    pub fn sync_state(&self, key: &ObjectRef<RouteState>) -> SyncState {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).map(|e| e.sync.clone()).unwrap_or_default()
    }

    /// Stops publishing a RouteState and deletes its service's keys (never links).
    /// `namespace`/`service` are computed from the object, so the keys go even when this
    /// replica has no plan for it (e.g. after a restart); a plan under another service name (the
    /// spec changed) is deleted too. Only the lease holder may call it.
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
        for (ns, svc) in targets {
            self.store.remove_service(&ns, &svc).await?;
        }
        Ok(())
    }

    /// Redis answers PING (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        let mut conn = self.store.conn();
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
        // if leading, publish everything now.
        let mut term_changed = true;
        let mut was_leader = false;
        let mut datasets = tokio::time::interval(DATASET_CHECK_EVERY);
        datasets.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A claim that ran out without a message also ends the term.
            let is_leader = leader.holds_and_update();
            if term_changed || is_leader != was_leader {
                let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
                for e in entries.values_mut() {
                    e.dirty = is_leader;
                    e.sync = SyncState::Pending;
                }
                drop(entries);
                self.metrics.set_leader(is_leader);
                term_changed = false;
                was_leader = is_leader;
            }
            if is_leader {
                self.tick().await;
            }
            let next = if is_leader { self.next_wake() } else { Instant::now() + Duration::from_secs(3600) };
            let check_datasets = tokio::select! {
                _ = self.wake.notified() => false,
                _ = tokio::time::sleep_until(next) => false,
                _ = datasets.tick() => true,
                r = leader.changed() => {
                    if r.is_err() {
                        return;
                    }
                    term_changed = true;
                    false
                }
                _ = shutdown.wait_for(|s| *s) => return,
            };
            if check_datasets && is_leader {
                self.check_datasets().await;
            }
        }
    }

    /// Publishes every due service once.
    async fn tick(&self) {
        let _w = self.writes.lock().await;
        let now = Instant::now();
        // What is due, the changed plans apart: they are published first, in a publish of their
        // own, so a drain does not wait behind the heartbeats of a whole fleet.
        let (mut changed, mut heartbeats) = (Vec::new(), Vec::new());
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            // A replica may hold plans of RouteStates deleted while it was a standby (it never
            // saw their cleanup): drop plans whose RouteState is gone from the cache.
            if let Some(store) = self.routestates.get() {
                entries.retain(|k, _| store.get(k).is_some());
            }
            for (k, e) in entries.iter().filter(|(_, e)| e.dirty || e.next_due <= now) {
                let batch = if e.dirty { &mut changed } else { &mut heartbeats };
                batch.push((k.clone(), e.plan.clone()));
            }
        }
        let mut orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        {
            // A service another RouteState publishes now is not an orphan: it took it over.
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            orphans.retain(|(ns, svc)| !entries.values().any(|e| (&e.plan.namespace, &e.plan.service) == (ns, svc)));
            orphans.sort();
            orphans.dedup();
        }
        if changed.is_empty() && heartbeats.is_empty() && orphans.is_empty() {
            return;
        }
        // Stop at once if the lease was lost meanwhile.
        if !self.is_leader() {
            return;
        }
        let started = std::time::Instant::now();
        tracing::debug!(changed = changed.len(), heartbeats = heartbeats.len(), orphans = orphans.len(), "publishing");
        for (ns, svc) in orphans {
            if let Err(e) = self.store.remove_service(&ns, &svc).await {
                tracing::warn!(service = %format!("{ns}/{svc}"), error = %e.chain(), "deleting the keys of a renamed service failed");
            }
        }
        for batch in [changed, heartbeats] {
            if batch.is_empty() {
                continue;
            }
            if !self.is_leader() {
                return;
            }
            let plans: Vec<ServicePlan> = batch.iter().map(|(_, p)| p.clone()).collect();
            let results = self.store.publish(&plans).await;
            // Since the tick chose what is due: a plan set before then is in this tick.
            tracing::debug!(services = plans.len(), tick_us = now.elapsed().as_micros() as u64, "published");
            self.record(now, batch, results);
        }
        self.metrics.publish_duration.observe(started.elapsed().as_secs_f64());
        // A service published for the first time: learn its dataset now, not a second later, so
        // a loss right after the first publish is noticed too.
        let unknown = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.values().any(|e| e.dataset.known().is_none() && matches!(e.sync, SyncState::Synced(_)))
        };
        if unknown {
            self.check_datasets().await;
        }
    }

    /// Looks at every published service's dataset (one pipeline per slot); when Redis lost one
    /// (came back empty, or holds another dataset), republishes everything at once.
    async fn check_datasets(&self) {
        let mut watches: Vec<(ObjectRef<RouteState>, DatasetWatch)> = {
            let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.iter().map(|(k, e)| (k.clone(), e.dataset.clone())).collect()
        };
        if watches.is_empty() {
            return;
        }
        let mut only: Vec<DatasetWatch> = watches.iter().map(|(_, w)| w.clone()).collect();
        let changes = match self.store.check_datasets(&mut only).await {
            Ok(changes) => changes,
            // Redis is failing: the publishes report it; look again next time.
            Err(e) => return tracing::debug!(error = %e.chain(), "checking the Redis datasets failed"),
        };
        tracing::trace!(?changes, "datasets checked");
        for ((_, w), checked) in watches.iter_mut().zip(only) {
            *w = checked;
        }
        let lost: Vec<(ObjectRef<RouteState>, String)> = watches
            .iter()
            .zip(&changes)
            .filter_map(|((k, _), c)| match c {
                DatasetChange::Lost(loss) => Some((k.clone(), loss.to_string())),
                _ => None,
            })
            .collect();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for (k, w) in watches {
                if let Some(e) = entries.get_mut(&k) {
                    e.dataset = w;
                }
            }
            if !lost.is_empty() {
                for e in entries.values_mut() {
                    e.dirty = true;
                }
                for (k, loss) in &lost {
                    if let Some(e) = entries.get_mut(k) {
                        e.loss = Some(loss.clone());
                    }
                }
            }
        }
        if lost.is_empty() {
            return;
        }
        self.metrics.data_loss.inc();
        tracing::warn!(services = lost.len(), loss = %lost[0].1, "Redis lost the published data; republishing every service now");
        self.wake.notify_one();
        for (k, _) in lost {
            let _ = self.sync_changed.send(k);
        }
    }

    /// Records the outcome of a tick: sync states (a change re-reconciles the RouteState, which
    /// updates its status), next due times and the metrics.
    fn record(
        &self,
        now: Instant,
        due: Vec<(ObjectRef<RouteState>, ServicePlan)>,
        results: Vec<std::result::Result<Published, crate::store::StoreError>>,
    ) {
        let mut changed = Vec::new();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        for ((key, plan), result) in due.into_iter().zip(results) {
            let Some(e) = entries.get_mut(&key) else { continue };
            self.metrics.observe_publish(&key, plan.period_secs, result.as_ref().ok());
            let sync = match result {
                Ok(published) => {
                    self.note_redis(true);
                    // A plan changed while it was being published is published again at once.
                    e.dirty = e.plan != plan;
                    let period = Duration::from_secs(u64::from(plan.period_secs.max(1)));
                    e.next_due = heartbeat_due(self.epoch, now, period, e.slot);
                    SyncState::Synced(published.pods.iter().map(|(i, (_, r))| (*i, *r)).collect())
                }
                Err(err) => {
                    self.note_redis(false);
                    self.metrics.publish_errors.inc();
                    tracing::warn!(routestate = %key, error = %err.chain(), "publishing to Redis failed");
                    e.dirty = false;
                    e.next_due = now + RETRY_AFTER;
                    SyncState::Failed(format!(
                        "publishing service {}/{}: {}",
                        plan.namespace,
                        plan.service,
                        err.chain()
                    ))
                }
            };
            if e.sync != sync {
                e.sync = sync;
                changed.push(key);
            }
        }
        let mut counts = [0i64; 3];
        for e in entries.values() {
            if let SyncState::Synced(pods) = &e.sync {
                for r in pods.values() {
                    counts[usize::from(r.ordinal())] += 1;
                }
            }
        }
        drop(entries);
        self.metrics.set_published(counts);
        for key in changed {
            let _ = self.sync_changed.send(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: Duration = Duration::from_secs(2);
    const SLOT: Duration = Duration::from_millis(100); // P / HEARTBEAT_SLOTS

    #[test]
    fn a_heartbeat_in_its_slot_is_next_due_one_period_later() {
        let epoch = Instant::now();
        // Slot 3 starts 300 ms into each period.
        let at = epoch + 5 * P + 3 * SLOT;
        assert_eq!(heartbeat_due(epoch, at, P, 3), at + P);
        // A tick a little late keeps the slot.
        assert_eq!(heartbeat_due(epoch, at + Duration::from_millis(40), P, 3), at + P);
    }

    #[test]
    fn an_out_of_turn_publish_is_next_due_in_its_slot_at_least_half_a_period_on() {
        let epoch = Instant::now();
        // Published 1.5 s into period 5 (a changed plan): slot 3 of period 6 is only 0.8 s on,
        // so period 7's.
        let at = epoch + 5 * P + Duration::from_millis(1500);
        assert_eq!(heartbeat_due(epoch, at, P, 3), epoch + 7 * P + 3 * SLOT);
        // Slot 19 of period 6 is 2.4 s on.
        assert_eq!(heartbeat_due(epoch, at, P, 19), epoch + 6 * P + 19 * SLOT);
        // At the epoch itself (a new term): slot 0 waits one period, slot 19 0.95 of one.
        assert_eq!(heartbeat_due(epoch, epoch, P, 0), epoch + P);
        assert_eq!(heartbeat_due(epoch, epoch, P, 19), epoch + 19 * SLOT);
    }

    #[test]
    fn slots_spread_a_fleet_over_the_period() {
        let mut per_slot = [0u32; HEARTBEAT_SLOTS as usize];
        for i in 0..1000 {
            per_slot[heartbeat_slot(&ObjectRef::new(&format!("svc-{i}")).within("bench")) as usize] += 1;
        }
        // 50 a slot on average; no slot empty or holding a large share.
        assert!(per_slot.iter().all(|&n| (20..=90).contains(&n)), "{per_slot:?}");
    }

    proptest! {
        #[test]
        fn the_next_heartbeat_is_in_its_slot_between_half_and_one_and_a_half_periods_on(
            since_ms in 0u64..10_000_000, period_s in 1u64..3600, slot in 0u32..HEARTBEAT_SLOTS,
        ) {
            let epoch = Instant::now();
            let (now, period) = (epoch + Duration::from_millis(since_ms), Duration::from_secs(period_s));
            let due = heartbeat_due(epoch, now, period, slot);
            prop_assert!(due >= now + period / 2, "{:?} after now", due - now);
            prop_assert!(due < now + period * 3 / 2, "{:?} after now", due - now);
            let offset = period.as_nanos() * u128::from(slot) / u128::from(HEARTBEAT_SLOTS);
            prop_assert_eq!(((due - epoch).as_nanos() + period.as_nanos() - offset) % period.as_nanos(), 0);
        }
    }
}
