//! Link integrity under contention (issue 6, item 4): 32 concurrent clients, each with its own
//! connection and read model, over 10,000 uids, mixing `compute_linked_pod`, `pick_and_link`,
//! `try_set_linked_pod` (temporary and persistent), `remove_linked_pod` and
//! `remove_linked_pod_with_id` (both with and without delayed removal).
//!
//! # Why the check is sound
//!
//! Each uid's link (string + its field in the uid's hash) lives in one hash slot and every write is
//! one Lua script, so each uid is an independent register and Redis executes the scripts on it in
//! some total order that respects real time: a script that returned before another was *sent*
//! ran first. We do not see that order, so we log, per operation, the instant before sending and
//! after the reply, and what it returned. The check is then a linearizability check per uid
//! (linearizability is compositional, so per-uid checks make a whole-history check): search for an
//! order of that uid's operations that (a) respects those real-time bounds, (b) makes every
//! operation's *returned value* equal what a sequential model of the link (none / temporary(pod) /
//! persistent(pod)) returns, and (c) ends in the state actually found in Redis afterwards. An
//! operation that failed with an error may or may not have run, so it may be placed anywhere after
//! its start, or left out. A `compute_linked_pod` answered from the local cache sent nothing and
//! is not logged (the client's `computations` counter tells the two apart).
//!
//! "No persistent link is ever stolen" is part of the model: only the removes change a persistent
//! link, so a history where a placement or a `try_set` to another pod overrode one has no valid
//! order. "At most one link" is checked on the raw keys: the hash field exists exactly when the
//! string exists without a TTL, with the same pod, and no other link key exists in the namespace.
//!
//! All pods stay alive and READY for the whole run (published once with a long period), so a
//! placement never replaces an existing link because its pod died: that rule is covered by the
//! store's own tests, and keeping it out here makes the model exact rather than approximate.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use routestate::{
    client::{Client, ClientConfig},
    core::{Keys, PodState, RoutingState},
    store::{LinkTtl, Placement, Store, TrySetOutcome},
};

use crate::support::unique_name;

const SVC: &str = "game";
const CLIENTS: usize = 32;
const UIDS: usize = 10_000;
/// A few uids get a large share of the traffic, so concurrent operations on one uid are common.
const HOT_UIDS: usize = 48;
const PODS: u32 = 8;

/// The model of one uid's link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Link {
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
}

#[derive(Debug, Clone, Copy)]
enum Call {
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
enum Ret {
    Pod(u32),
    Placed(Option<Placement>),
    TrySet(TrySetOutcome),
    Removed(bool),
}

#[derive(Debug, Clone)]
struct Event {
    uid: usize,
    start: Duration,
    /// `None` when the call failed: it may or may not have taken effect.
    end: Option<Duration>,
    call: Call,
    ret: Option<Ret>,
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

/// Searches an order of `events` (one uid's operations) that respects real time, explains every
/// reply and ends in `last`. Depth-first with a memo of dead (done-set, state) pairs.
fn linearizable(events: &[Event], last: Link) -> bool {
    fn search(
        events: &[Event],
        done: &mut Vec<bool>,
        s: Link,
        last: Link,
        dead: &mut HashSet<(Vec<bool>, Link)>,
    ) -> bool {
        if done.iter().all(|d| *d) {
            return s == last;
        }
        if dead.contains(&(done.clone(), s)) {
            return false;
        }
        // An operation may go next only if no pending operation completed before it started.
        let horizon = events.iter().zip(done.iter()).filter(|(_, d)| !**d).filter_map(|(e, _)| e.end).min();
        for i in 0..events.len() {
            if done[i] || horizon.is_some_and(|h| events[i].start > h) {
                continue;
            }
            for next in successors(s, &events[i]) {
                done[i] = true;
                let ok = search(events, done, next, last, dead);
                done[i] = false;
                if ok {
                    return true;
                }
            }
        }
        dead.insert((done.clone(), s));
        false
    }
    let mut done = vec![false; events.len()];
    search(events, &mut done, Link::None, last, &mut HashSet::new())
}

fn uid_name(i: usize) -> String {
    format!("u{i}")
}

/// Counts that show the run exercised what it claims to.
#[derive(Debug, Default)]
struct Coverage {
    ops: usize,
    failed: usize,
    cache_hits: usize,
    refused_try_sets: usize,
    overlapping_pairs: usize,
}

/// One client's run: `ops` random operations, each timed and logged.
async fn run_client(
    client: Client,
    store: Store,
    ns: Arc<String>,
    epoch: Instant,
    seed: u64,
    ops: usize,
) -> (Vec<Event>, usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::with_capacity(ops);
    let mut cache_hits = 0;
    for _ in 0..ops {
        let uid = if rng.random_bool(0.4) { rng.random_range(0..HOT_UIDS) } else { rng.random_range(0..UIDS) };
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
        log.push(Event { uid, start, end, call, ret });
    }
    (log, cache_hits)
}

/// Reads every uid's final link and checks the raw keys agree with each other. One pipeline per
/// uid (its keys share a slot, so this works on Redis Cluster too), 64 in flight.
async fn final_links(store: &Store, ns: &str) -> Vec<Link> {
    use futures::StreamExt;
    let reads = futures::stream::iter(0..UIDS)
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
    let mut out = Vec::with_capacity(UIDS);
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

async fn contention(make_store: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Store> + Send>>) {
    let ns = Arc::new(unique_name("contend"));
    let admin = make_store().await;
    // Every pod alive and READY with equal load for the whole run (window 3 × 600 s).
    let now = admin.server_time_ms().await.unwrap();
    let states: Vec<(u32, PodState)> = (0..PODS).map(|p| (p, PodState::new(10, now, RoutingState::Ready))).collect();
    admin.set_pod_states(&ns, SVC, &states).await.unwrap();
    admin.set_update_period(&ns, SVC, 600).await.unwrap();

    let ops_per_client = 600;
    let epoch = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let store = make_store().await;
        let client =
            Client::new(store.clone(), ClientConfig { seed: Some(c as u64), ..ClientConfig::default() }).unwrap();
        tasks.push(tokio::spawn(run_client(client, store, ns.clone(), epoch, 0xC0FFEE + c as u64, ops_per_client)));
    }
    let mut events = Vec::new();
    let mut cov = Coverage::default();
    for t in tasks {
        let (log, hits) = t.await.expect("a client task panicked");
        cov.cache_hits += hits;
        events.extend(log);
    }
    let elapsed = epoch.elapsed();
    cov.ops = events.len();
    cov.failed = events.iter().filter(|e| e.ret.is_none()).count();
    cov.refused_try_sets =
        events.iter().filter(|e| matches!(e.ret, Some(Ret::TrySet(TrySetOutcome { success: false, .. })))).count();

    let checking = Instant::now();
    let finals = final_links(&admin, &ns).await;
    let mut per_uid: HashMap<usize, Vec<Event>> = HashMap::new();
    for e in events {
        per_uid.entry(e.uid).or_default().push(e);
    }
    for (uid, evs) in &mut per_uid {
        evs.sort_by_key(|e| e.start);
        for (a, b) in evs.iter().zip(evs.iter().skip(1)) {
            if a.end.is_none_or(|end| end > b.start) {
                cov.overlapping_pairs += 1;
            }
        }
        assert!(
            linearizable(evs, finals[*uid]),
            "uid {uid}: no order of its {} operations explains their replies and the final link {:?}; history: {evs:#?}",
            evs.len(),
            finals[*uid]
        );
    }
    // Untouched uids must have no link at all.
    for (i, l) in finals.iter().enumerate() {
        if !per_uid.contains_key(&i) {
            assert_eq!(*l, Link::None, "uid {i} was never touched but has a link");
        }
    }
    // No stray link keys in the namespace (e.g. a second link under another name).
    let mut conn = admin.conn();
    let pattern = format!("sf:{{{ns}:lk:*");
    let keys: Vec<String> = if admin.conn().is_cluster() {
        Vec::new() // SCAN is per node on a cluster; the per-uid checks above cover the known keys.
    } else {
        redis::cmd("KEYS").arg(&pattern).query_async(&mut conn).await.unwrap()
    };
    let known: HashSet<String> = (0..UIDS)
        .flat_map(|i| [Keys::link(&ns, &uid_name(i), SVC).unwrap(), Keys::link_hash(&ns, &uid_name(i)).unwrap()])
        .collect();
    for k in &keys {
        assert!(known.contains(k), "unexpected link key {k}");
    }

    eprintln!(
        "link contention on {ns}: {cov:?} in {elapsed:?}, {} uids touched, checked in {:?}",
        per_uid.len(),
        checking.elapsed()
    );
    // The run must actually have contended, or the check proves little.
    assert!(cov.overlapping_pairs > 100, "too little contention: {cov:?}");
    assert!(cov.refused_try_sets > 10, "no persistent link was ever defended: {cov:?}");
    assert!(cov.failed * 100 <= cov.ops, "more than 1% of operations failed on a healthy Redis: {cov:?}");
    // Clean up the namespace's keys (standalone only; the cluster run leaves them, unique ns).
    if !admin.conn().is_cluster() {
        for chunk in keys.chunks(1000) {
            let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standalone_links_survive_32_contending_clients() {
    contention(|| Box::pin(crate::support::store::standalone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_links_survive_32_contending_clients() {
    contention(|| Box::pin(crate::support::store::cluster())).await;
}

#[test]
fn the_checker_rejects_a_stolen_persistent_link() {
    // Sequential: try_set persistent 1, then a pick "created" a link to 2: impossible.
    let t = |ms| Duration::from_millis(ms);
    let evs = vec![
        Event {
            uid: 0,
            start: t(0),
            end: Some(t(1)),
            call: Call::TrySet { pod: 1, persistent: true },
            ret: Some(Ret::TrySet(TrySetOutcome { success: true, current: 1, previous: None })),
        },
        Event {
            uid: 0,
            start: t(2),
            end: Some(t(3)),
            call: Call::TrySet { pod: 2, persistent: false },
            ret: Some(Ret::TrySet(TrySetOutcome { success: true, current: 2, previous: Some(1) })),
        },
    ];
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
    ok.push(Event { uid: 0, start: t(4), end: None, call: Call::Remove { persist_secs: 0 }, ret: None });
    assert!(linearizable(&ok, Link::Persist(1)) && linearizable(&ok, Link::None));
}
