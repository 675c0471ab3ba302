//! The mixed link workload of `reliability_links` and its per-uid linearizability checker,
//! shared by the contention test and the failover tests.
//!
//! Clients mix `compute_linked_pod`, `pick_and_link`, `try_set_linked_pod` (temporary and
//! persistent), `remove_linked_pod` and `remove_linked_pod_with_id` (with and without delayed
//! removal) over a set of uids, a few of them hot. Each operation is logged with the instant
//! before sending, the instant after the reply, and the reply.
//!
//! # Why the check is sound
//!
//! Each uid's link (string + its field in the uid's hash) lives in one hash slot and every write is
//! one Lua script, so each uid is an independent register and Redis executes the scripts on it in
//! some total order that respects real time: a script that returned before another was *sent*
//! ran first. The check is a linearizability check per uid (linearizability is compositional, so
//! per-uid checks make a whole-history check): search for an order of that uid's operations that
//! (a) respects those real-time bounds, (b) makes every operation's *returned value* equal what a
//! sequential model of the link (none / temporary(pod) / persistent(pod)) returns, and (c) ends in
//! the state actually found in Redis afterwards. An operation that failed with an error may or
//! may not have run, so it may be placed anywhere after its start, or left out. A
//! `compute_linked_pod` answered from the local cache sent nothing and is not logged.
//!
//! # Failover: what may be lost
//!
//! Redis replicates asynchronously and in order: a promoted replica holds a prefix of the old
//! master's writes. So across a failover at `kill`, the per-uid history may contain one
//! *rollback*: the operations that ran on the old master (started before `kill`) come first, then
//! the state jumps back to what it was at an earlier point of that order (the replica's prefix),
//! then the operations that ran on the new master (ended after `kill`). The operations between the
//! two points are lost. A write acknowledged with `Durability::Replicated` was confirmed by a
//! replica, and with it every write the master ran before it, so it is never in the lost part;
//! everything else may be. The checker finds, per uid, the fewest acknowledged non-durable writes
//! that must have been lost for the history to be explained ([`min_lost`]).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use routestate::{
    client::Client,
    core::Keys,
    store::{Durability, LinkTtl, Placement, Store, TrySetOutcome},
};

pub const SVC: &str = "game";
pub const PODS: u32 = 8;

/// The model of one uid's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    None,
    Temp(u32),
    Persist(u32),
}

impl Link {
    fn pod(self) -> Option<u32> {
        match self {
            Link::None => None,
            Link::Temp(p) | Link::Persist(p) => Some(p),
        }
    }

    /// A dense index (for the candidate table of the failover search).
    fn index(self) -> usize {
        match self {
            Link::None => 0,
            Link::Temp(p) => 1 + p as usize,
            Link::Persist(p) => 1 + PODS as usize + p as usize,
        }
    }

    fn from_index(i: usize) -> Link {
        match i {
            0 => Link::None,
            i if i <= PODS as usize => Link::Temp(i as u32 - 1),
            i => Link::Persist((i - 1 - PODS as usize) as u32),
        }
    }
}

const LINKS: usize = 1 + 2 * PODS as usize;

#[derive(Debug, Clone, Copy)]
pub enum Call {
    /// `compute_linked_pod` that went to Redis: `set_linked_pod_if_absent(best, temporary)`.
    Compute,
    Pick,
    TrySet {
        pod: u32,
        persistent: bool,
    },
    Remove {
        persist_secs: u64,
    },
    RemoveWithId {
        pod: u32,
        persist_secs: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    Pod(u32),
    Placed(Option<Placement>),
    TrySet(TrySetOutcome),
    Removed(bool),
}

#[derive(Debug, Clone)]
pub struct Event {
    pub uid: usize,
    pub start: Duration,
    /// `None` when the call failed: it may or may not have taken effect.
    pub end: Option<Duration>,
    pub call: Call,
    pub ret: Option<Ret>,
    /// Acknowledged with `Durability::Replicated` (confirmed by the replicas asked for).
    pub durable: bool,
}

/// The sequential model: the state after `call` from `s` and what it returns.
fn apply(s: Link, call: Call) -> Vec<(Link, Ret)> {
    let removed = |persist_secs: u64, p: u32| if persist_secs > 0 { Link::Temp(p) } else { Link::None };
    match (call, s) {
        // Which pod a computation picks is the client's choice; the reply names it.
        (Call::Compute, Link::None) => (0..PODS).map(|p| (Link::Temp(p), Ret::Pod(p))).collect(),
        (Call::Compute, s) => vec![(s, Ret::Pod(s.pod().unwrap_or_default()))],
        (Call::Pick, Link::None) => {
            (0..PODS).map(|p| (Link::Temp(p), Ret::Placed(Some(Placement { pod: p, created: true })))).collect()
        }
        (Call::Pick, s) => {
            vec![(s, Ret::Placed(Some(Placement { pod: s.pod().unwrap_or_default(), created: false })))]
        }
        (Call::TrySet { pod, .. }, Link::Persist(c)) if c != pod => {
            vec![(s, Ret::TrySet(TrySetOutcome { success: false, current: c, previous: Some(c) }))]
        }
        (Call::TrySet { pod, persistent }, s) => {
            let next = if persistent { Link::Persist(pod) } else { Link::Temp(pod) };
            vec![(next, Ret::TrySet(TrySetOutcome { success: true, current: pod, previous: s.pod() }))]
        }
        (Call::Remove { .. }, Link::None) => vec![(s, Ret::Removed(false))],
        (Call::Remove { persist_secs }, s) => {
            vec![(removed(persist_secs, s.pod().unwrap_or_default()), Ret::Removed(true))]
        }
        (Call::RemoveWithId { pod, persist_secs }, s) if s.pod() == Some(pod) => {
            vec![(removed(persist_secs, pod), Ret::Removed(true))]
        }
        (Call::RemoveWithId { .. }, s) => vec![(s, Ret::Removed(false))],
    }
}

/// The states `e` may lead to from `s` given what it returned (empty: impossible from `s`).
fn successors(s: Link, e: &Event) -> Vec<Link> {
    match e.ret {
        Some(ret) => apply(s, e.call).into_iter().filter(|(_, r)| *r == ret).map(|(n, _)| n).collect(),
        // A failed call: either it never ran, or it ran with any reply.
        None => std::iter::once(s).chain(apply(s, e.call).into_iter().map(|(n, _)| n)).collect(),
    }
}

/// Where the search is relative to the failover.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Phase {
    /// On the old master. `cand[i]` = the fewest acknowledged writes lost by rolling back to
    /// link `i` (as it was at some earlier point of the order), `u8::MAX` = not possible.
    Old([u8; LINKS]),
    /// On the new master.
    New,
}

struct Search<'a> {
    events: &'a [Event],
    last: Link,
    kill: Option<Duration>,
    budget: u8,
    dead: HashSet<(Vec<bool>, Link, Phase)>,
}

impl Search<'_> {
    fn run(&mut self, done: &mut Vec<bool>, s: Link, phase: Phase) -> bool {
        if done.iter().all(|d| *d) {
            return match &phase {
                Phase::New => s == self.last,
                Phase::Old(cand) => s == self.last || (self.kill.is_some() && cand[self.last.index()] <= self.budget),
            };
        }
        let key = (done.clone(), s, phase.clone());
        if self.dead.contains(&key) {
            return false;
        }
        // An operation may go next only if no pending operation completed before it started.
        let horizon = self.events.iter().zip(done.iter()).filter(|(_, d)| !**d).filter_map(|(e, _)| e.end).min();
        for i in 0..self.events.len() {
            let e = &self.events[i];
            if done[i] || horizon.is_some_and(|h| e.start > h) {
                continue;
            }
            let allowed = match (&phase, self.kill) {
                (_, None) => true,
                (Phase::Old(_), Some(k)) => e.start < k,
                (Phase::New, Some(k)) => e.end.is_none_or(|end| end > k),
            };
            if !allowed {
                continue;
            }
            for next in successors(s, e) {
                let next_phase = match &phase {
                    Phase::New => Phase::New,
                    Phase::Old(cand) => Phase::Old(self.advance(cand, e, s, next)),
                };
                done[i] = true;
                let ok = self.run(done, next, next_phase);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        // The failover: continue on the new master from a state of the replica's prefix.
        if let (Phase::Old(cand), Some(_)) = (&phase, self.kill) {
            for (i, lost) in cand.iter().enumerate() {
                if *lost <= self.budget && self.run(done, Link::from_index(i), Phase::New) {
                    return true;
                }
            }
        }
        self.dead.insert(key);
        false
    }

    /// The rollback candidates after `e` took the link from `s` to `next` on the old master.
    fn advance(&self, cand: &[u8; LINKS], e: &Event, s: Link, next: Link) -> [u8; LINKS] {
        let wrote = next != s;
        let mut out = [u8::MAX; LINKS];
        // A replicated write, once confirmed, is in the replica with everything before it.
        if !(e.durable && e.ret.is_some() && wrote) {
            let lost = u8::from(e.ret.is_some() && !e.durable && wrote);
            for (o, c) in out.iter_mut().zip(cand) {
                let l = c.saturating_add(lost);
                *o = if l <= self.budget { l } else { u8::MAX };
            }
        }
        out[next.index()] = 0;
        out
    }
}

fn start_phase() -> Phase {
    let mut cand = [u8::MAX; LINKS];
    cand[Link::None.index()] = 0;
    Phase::Old(cand)
}

/// Searches an order of `events` (one uid's operations) that respects real time, explains every
/// reply and ends in `last`, without any loss. Depth-first with a memo of dead states.
pub fn linearizable(events: &[Event], last: Link) -> bool {
    let mut s = Search { events, last, kill: None, budget: 0, dead: HashSet::new() };
    s.run(&mut vec![false; events.len()], Link::None, start_phase())
}

/// Like [`linearizable`], across a failover at `kill`: the fewest acknowledged non-durable
/// writes that must have been lost to explain the history (up to `max`), or `None` when even
/// that many do not explain it — which includes any history where a replicated write was lost.
pub fn min_lost(events: &[Event], last: Link, kill: Duration, max: u8) -> Option<u8> {
    (0..=max).find(|&budget| {
        let mut s = Search { events, last, kill: Some(kill), budget, dead: HashSet::new() };
        s.run(&mut vec![false; events.len()], Link::None, start_phase())
    })
}

pub fn uid_name(i: usize) -> String {
    format!("u{i}")
}

/// The shape of a run.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub uids: usize,
    /// A few uids get 40 % of the traffic, so concurrent operations on one uid are common.
    pub hot_uids: usize,
}

/// When a client stops.
#[derive(Clone)]
pub enum Budget {
    Ops(usize),
    /// Until the flag is set; after a failed operation the client pauses 20 ms (as a real
    /// client would), so an outage does not turn into a flood of failures.
    Until(Arc<AtomicBool>),
}

/// One client's run, each operation timed and logged; also returns its cache hits.
pub async fn run_client(
    client: Client,
    store: Store,
    ns: Arc<String>,
    epoch: Instant,
    seed: u64,
    shape: Shape,
    budget: Budget,
) -> (Vec<Event>, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    let mut cache_hits = 0;
    let durable = store.durability() != Durability::MasterOnly;
    let mut n = 0;
    loop {
        match &budget {
            Budget::Ops(max) if n >= *max => break,
            Budget::Until(stop) if stop.load(Ordering::Relaxed) => break,
            _ => {}
        }
        n += 1;
        let uid =
            if rng.random_bool(0.4) { rng.random_range(0..shape.hot_uids) } else { rng.random_range(0..shape.uids) };
        let name = uid_name(uid);
        let pod = rng.random_range(0..PODS);
        let persist_secs = if rng.random_bool(0.3) { 60 } else { 0 };
        let roll = rng.random_range(0..100);
        let start = epoch.elapsed();
        let (call, ret) = match roll {
            0..25 => {
                let before = client.stats().computations;
                let r = client.compute_linked_pod(&ns, &name, SVC).await;
                if client.stats().computations == before {
                    // Answered from the local cache: nothing was sent to Redis.
                    cache_hits += 1;
                    continue;
                }
                (Call::Compute, r.ok().map(Ret::Pod))
            }
            25..45 => {
                // The client's pick_and_link reports only the pod; the store's also says whether
                // it created the link, which the model needs.
                let params = routestate::store::PickParams {
                    temp_ttl_secs: 300,
                    random: rng.random(),
                    range: 500,
                    fallback_window_ms: 30_000,
                };
                (Call::Pick, store.pick_and_link(&ns, &name, SVC, params).await.ok().map(Ret::Placed))
            }
            45..70 => {
                let persistent = rng.random_bool(0.5);
                let ttl = if persistent { LinkTtl::Persistent } else { LinkTtl::Temporary(300) };
                let r = store.try_set_linked_pod(&ns, &name, SVC, pod, ttl).await;
                (Call::TrySet { pod, persistent }, r.ok().map(Ret::TrySet))
            }
            70..85 => {
                let r = store.remove_linked_pod(&ns, &name, SVC, persist_secs).await;
                (Call::Remove { persist_secs }, r.ok().map(Ret::Removed))
            }
            _ => {
                let r = store.remove_linked_pod_with_id(&ns, &name, SVC, pod, persist_secs).await;
                (Call::RemoveWithId { pod, persist_secs }, r.ok().map(Ret::Removed))
            }
        };
        let end = ret.is_some().then(|| epoch.elapsed());
        log.push(Event { uid, start, end, call, ret, durable: durable && ret.is_some() });
        if ret.is_none() && matches!(budget, Budget::Until(_)) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    (log, cache_hits)
}

/// Reads every uid's final link and checks the raw keys agree with each other. One pipeline per
/// uid (its keys share a slot, so this works on Redis Cluster too), 64 in flight.
pub async fn final_links(store: &Store, ns: &str, uids: usize) -> Vec<Link> {
    use futures::StreamExt;
    let reads = futures::stream::iter(0..uids)
        .map(|i| {
            let mut conn = store.conn();
            let (link, hash) = (Keys::link(ns, &uid_name(i), SVC).unwrap(), Keys::link_hash(ns, &uid_name(i)).unwrap());
            async move {
                let mut pipe = redis::pipe();
                pipe.cmd("GET").arg(&link).cmd("TTL").arg(&link).cmd("HGETALL").arg(&hash);
                let r: (Option<String>, i64, HashMap<String, String>) =
                    pipe.query_async(&mut conn).await.unwrap_or_else(|e| panic!("reading {link}: {e}"));
                r
            }
        })
        .buffered(64)
        .collect::<Vec<_>>()
        .await;
    let mut out = Vec::with_capacity(uids);
    for (i, (get, ttl, hash)) in reads.into_iter().enumerate() {
        let pod = get.map(|v| v.parse::<u32>().unwrap_or_else(|_| panic!("uid {i}: link value {v:?} is not a pod")));
        let link = match (pod, ttl) {
            (None, _) => Link::None,
            (Some(p), -1) => Link::Persist(p),
            (Some(p), t) if t > 0 => Link::Temp(p),
            (Some(p), t) => panic!("uid {i}: link to {p} with TTL {t}"),
        };
        // At most one link: the persistent hash mirrors exactly the persistent string.
        let expected_hash: HashMap<String, String> = match link {
            Link::Persist(p) => [(SVC.to_owned(), p.to_string())].into(),
            _ => HashMap::new(),
        };
        assert_eq!(hash, expected_hash, "uid {i}: persistent hash disagrees with the link {link:?}");
        out.push(link);
    }
    out
}

/// Groups events per uid, sorted by start.
pub fn per_uid(events: Vec<Event>) -> HashMap<usize, Vec<Event>> {
    let mut out: HashMap<usize, Vec<Event>> = HashMap::new();
    for e in events {
        out.entry(e.uid).or_default().push(e);
    }
    for evs in out.values_mut() {
        evs.sort_by_key(|e| e.start);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn try_set(start: u64, end: u64, pod: u32, persistent: bool, prev: Option<u32>, durable: bool) -> Event {
        Event {
            uid: 0,
            start: t(start),
            end: Some(t(end)),
            call: Call::TrySet { pod, persistent },
            ret: Some(Ret::TrySet(TrySetOutcome { success: true, current: pod, previous: prev })),
            durable,
        }
    }

    #[test]
    fn the_checker_rejects_a_stolen_persistent_link() {
        // Sequential: try_set persistent 1, then a temporary try_set "succeeded" over it.
        let evs = vec![try_set(0, 1, 1, true, None, false), try_set(2, 3, 2, false, Some(1), false)];
        assert!(!linearizable(&evs, Link::Temp(2)), "a temporary try_set over a persistent link must be refused");
        // Overlapping, the same replies are still impossible in either order.
        let mut overl = evs.clone();
        overl[1].start = t(0);
        assert!(!linearizable(&overl, Link::Temp(2)));
        // A refused try_set is fine, and the final state must match.
        let mut ok = evs.clone();
        ok[1].ret = Some(Ret::TrySet(TrySetOutcome { success: false, current: 1, previous: Some(1) }));
        assert!(linearizable(&ok, Link::Persist(1)));
        assert!(!linearizable(&ok, Link::None), "final state must be explained too");
        // A failed (unknown) remove may or may not have happened.
        ok.push(Event {
            uid: 0,
            start: t(4),
            end: None,
            call: Call::Remove { persist_secs: 0 },
            ret: None,
            durable: false,
        });
        assert!(linearizable(&ok, Link::Persist(1)) && linearizable(&ok, Link::None));
    }

    #[test]
    fn a_lost_acknowledged_write_is_counted_and_a_lost_replicated_one_is_rejected() {
        // Before the kill at 10 ms: temporary 1 (acknowledged), then persistent 2 over it. After
        // the failover the link is temporary 1 again: the second write was lost.
        let evs = vec![try_set(0, 1, 1, false, None, false), try_set(2, 3, 2, true, Some(1), false)];
        assert!(!linearizable(&evs, Link::Temp(1)), "without a failover, losing a write is a violation");
        assert_eq!(min_lost(&evs, Link::Persist(2), t(10), 3), Some(0), "nothing lost");
        assert_eq!(min_lost(&evs, Link::Temp(1), t(10), 3), Some(1), "the second write lost");
        assert_eq!(min_lost(&evs, Link::None, t(10), 3), Some(2), "both lost");
        assert_eq!(min_lost(&evs, Link::None, t(10), 1), None, "more lost than allowed");
        // The same with replicated writes: no loss may explain it.
        let durable = vec![try_set(0, 1, 1, false, None, true), try_set(2, 3, 2, true, Some(1), true)];
        assert_eq!(min_lost(&durable, Link::Temp(1), t(10), 3), None, "a replicated write was lost");
        assert_eq!(min_lost(&durable, Link::Persist(2), t(10), 3), Some(0));
        // A replicated write keeps the non-durable one before it (the replica has a prefix).
        let mixed = vec![try_set(0, 1, 1, false, None, false), try_set(2, 3, 2, true, Some(1), true)];
        assert_eq!(min_lost(&mixed, Link::None, t(10), 3), None);
        // An operation that ended before the kill ran on the old master: it cannot be placed
        // after the failover to explain a state.
        let after = vec![try_set(0, 1, 1, true, None, false), try_set(20, 21, 3, false, None, false)];
        assert_eq!(min_lost(&after, Link::Temp(3), t(10), 3), Some(1), "3 ran on the new master after 1 was lost");
        assert_eq!(min_lost(&after, Link::Persist(1), t(10), 3), None, "3 ran after the failover");
    }
}
