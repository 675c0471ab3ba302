//! Redis failover under load: the master is SIGKILLed while an in-process operator publishes 3
//! services (`updatePeriodSeconds: 2`, staleness window 6 s) and 32 clients run the mixed link
//! workload of `reliability_links`, half of them with `Durability::Replicated { replicas: 1 }`.
//! Two private topologies: a master with two replicas behind three sentinels, and a Redis
//! Cluster of 3 masters with a replica each.
//!
//! Checked: the operator and the clients follow the new master by themselves (the same
//! handles, nothing restarted); no pod is ever seen stale (the oldest heartbeat a sampler reads
//! every 50 ms stays younger than the window); per uid, the history is linearizable with at most
//! one rollback at the failover in which no replicated write is lost
//! (`support::links_workload`). Printed (`MEASURED`): time from the kill to the first publish
//! and to the first successful link operation, the largest heartbeat age, and how many writes
//! acknowledged without the durable mode were lost.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use routestate::{
    client::{Client, ClientConfig},
    core::{Keys, PodState, RoutingState, keys::hash_slot, staleness_window_ms},
    store::{Durability, RedisOptions, Store},
};

use crate::{
    reliability_redis_outage::{SERVICES, create_services},
    support::{
        self, TestNamespace,
        links_workload::{
            Budget, PODS, SVC, Shape, final_links, linearizable, min_lost, per_uid, run_client, uid_name,
        },
        operator::{install_crd, start_operator_with},
        redis_ha::{ReplicatedCluster, SentinelSet},
        unique_name, wait_for,
    },
};

const PERIOD_SECS: u32 = 2;
const CLIENTS: usize = 32;
const SHAPE: Shape = Shape { uids: 5_000, hot_uids: 200 };
const DURABLE: Durability = Durability::Replicated { replicas: 1, timeout: Duration::from_millis(500) };

enum Topology {
    Sentinel(SentinelSet),
    Cluster(ReplicatedCluster),
}

impl Topology {
    fn options(&self, op_timeout: Duration) -> RedisOptions {
        let base = match self {
            Topology::Sentinel(s) => RedisOptions::sentinel(s.sentinel_urls(), &s.master_name),
            Topology::Cluster(c) => RedisOptions::cluster(c.urls()),
        };
        RedisOptions { op_timeout, ..base }
    }

    /// SIGKILLs the master (on a cluster, the one holding `slot`) and waits for the failover.
    fn kill_and_wait(&mut self, slot: u16) -> Failover {
        match self {
            Topology::Sentinel(s) => {
                let old = s.kill_master();
                let killed = Instant::now();
                let new = s.wait_failover(old, Duration::from_secs(60));
                Failover { old, new, killed, slots: vec![(0, 16383)] }
            }
            Topology::Cluster(c) => {
                let old = c.master_of(slot).unwrap();
                let slots = c.slots_of(old);
                c.kill_master_of(slot);
                let killed = Instant::now();
                let new = c.wait_failover(slot, old, Duration::from_secs(60));
                Failover { old, new, killed, slots }
            }
        }
    }
}

/// A failover: the ports of the old and new master, when the old one was dead, and the slots
/// it held (the links that were unreachable).
struct Failover {
    old: u16,
    new: u16,
    killed: Instant,
    slots: Vec<(u16, u16)>,
}

/// What the sampler saw: per pod the largest heartbeat age at a read, the largest gap between two
/// successive heartbeats it saw, and when a heartbeat written after the kill first appeared.
#[derive(Debug, Default)]
struct Samples {
    max_age_ms: BTreeMap<String, u64>,
    last_stamp: BTreeMap<String, u64>,
    max_gap_ms: BTreeMap<String, u64>,
    reads: usize,
    failed_reads: usize,
    first_publish_after_kill: Option<Duration>,
}

async fn sample(store: Store, ns: String, epoch: Instant, kill_ms: Arc<Mutex<Option<u64>>>, out: Arc<Mutex<Samples>>) {
    let window = staleness_window_ms(PERIOD_SECS);
    loop {
        for (svc, _) in SERVICES {
            let r = store.read_service(&ns, svc).await;
            let mut s = out.lock().unwrap();
            let Ok(states) = r else {
                s.failed_reads += 1;
                continue;
            };
            s.reads += 1;
            let killed = *kill_ms.lock().unwrap();
            for (field, value) in &states.entries {
                let Ok(p) = PodState::parse(value) else { continue };
                let age = states.now_ms.saturating_sub(p.updated_at_ms);
                let pod = format!("{svc}-{field}");
                let e = s.max_age_ms.entry(pod.clone()).or_default();
                *e = (*e).max(age);
                if let Some(prev) = s.last_stamp.insert(pod.clone(), p.updated_at_ms) {
                    let g = s.max_gap_ms.entry(pod).or_default();
                    *g = (*g).max(p.updated_at_ms.saturating_sub(prev));
                }
                if killed.is_some_and(|k| p.updated_at_ms > k) && s.first_publish_after_kill.is_none() {
                    s.first_publish_after_kill = Some(epoch.elapsed());
                }
                assert!(age <= window * 10, "{svc}-{field} is {age} ms old: the sampler reads garbage");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn failover_under_load(mut topology: Topology, name: &str) {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "redis-failover").await;
    let links_ns = Arc::new(unique_name("fo-links"));
    let operator = start_operator_with(&client, &ns.name, None, topology.options(Duration::from_secs(1))).await;
    create_services(&client, &ns.name, PERIOD_SECS).await;

    let admin = Store::connect(&topology.options(Duration::from_secs(2))).await.unwrap();
    wait_for("every pod state published", Duration::from_secs(60), || async {
        let mut missing = Vec::new();
        for (svc, replicas) in SERVICES {
            let states = admin.read_service(&ns.name, svc).await.map_err(|e| e.to_string())?;
            if states.entries.len() != replicas as usize {
                missing.push(format!("{svc}: {:?}", states.entries));
            }
        }
        if missing.is_empty() { Ok(()) } else { Err(missing.join("; ")) }
    })
    .await;
    // Pods of the link workload's service: alive and READY for the whole run.
    let now = admin.server_time_ms().await.unwrap();
    let states: Vec<(u32, PodState)> = (0..PODS).map(|p| (p, PodState::new(10, now, RoutingState::Ready))).collect();
    admin.set_pod_states(&links_ns, SVC, &states).await.unwrap();
    admin.set_update_period(&links_ns, SVC, 600).await.unwrap();

    let epoch = Instant::now();
    let kill_ms = Arc::new(Mutex::new(None));
    let samples = Arc::new(Mutex::new(Samples::default()));
    let sampler = tokio::spawn(sample(admin.clone(), ns.name.clone(), epoch, kill_ms.clone(), samples.clone()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let mut store = Store::connect(&topology.options(Duration::from_secs(2))).await.unwrap();
        if c % 2 == 0 {
            store = store.with_durability(DURABLE);
        }
        let client =
            Client::new(store.clone(), ClientConfig { seed: Some(c as u64), ..ClientConfig::default() }).unwrap();
        let budget = Budget::Until(stop.clone());
        tasks.push(tokio::spawn(run_client(client, store, links_ns.clone(), epoch, 0xFA11 + c as u64, SHAPE, budget)));
    }

    // Load before the kill, then the kill of the master holding the state of `alpha`.
    tokio::time::sleep(Duration::from_secs(3)).await; // the workload's run time, not a wait
    *kill_ms.lock().unwrap() = Some(admin.server_time_ms().await.unwrap());
    let slot = hash_slot(&Keys::state(&ns.name, "alpha").unwrap());
    let Failover { old, new, killed, slots } = tokio::task::block_in_place(|| topology.kill_and_wait(slot));
    let kill = killed - epoch;
    let failed_over = killed.elapsed();
    wait_for("a heartbeat published after the kill", Duration::from_secs(60), || {
        let s = samples.lock().unwrap().first_publish_after_kill;
        async move { s.ok_or_else(|| "none yet".to_owned()) }
    })
    .await;
    // A few more periods of load on the new master.
    tokio::time::sleep(Duration::from_secs(u64::from(2 * PERIOD_SECS))).await; // run time, not a wait
    stop.store(true, Ordering::Relaxed);
    let mut events = Vec::new();
    for t in tasks {
        events.extend(t.await.expect("a client task panicked").0);
    }
    sampler.abort();
    let samples = std::mem::take(&mut *samples.lock().unwrap());

    // Linearizable per uid, with at most a rollback at the failover that loses no replicated write.
    let checking = Instant::now();
    let finals = final_links(&admin, &links_ns, SHAPE.uids).await;
    let per_uid = per_uid(events);
    let (mut lost_writes, mut lossy_uids) = (0usize, 0usize);
    for (uid, evs) in &per_uid {
        if linearizable(evs, finals[*uid]) {
            continue;
        }
        match min_lost(evs, finals[*uid], kill, 8) {
            Some(n) => {
                lossy_uids += 1;
                lost_writes += usize::from(n);
            }
            None => panic!(
                "uid {uid}: no order of its {} operations with a failover at {kill:?} that keeps every \
                 replicated write explains their replies and the final link {:?}; history: {evs:#?}",
                evs.len(),
                finals[*uid]
            ),
        }
    }
    let all: Vec<_> = per_uid.values().flatten().collect();
    // The first operation that succeeded on a link the killed master held.
    let was_down = |uid: usize| {
        let slot = hash_slot(&Keys::link(&links_ns, &uid_name(uid), SVC).unwrap());
        slots.iter().any(|(lo, hi)| (*lo..=*hi).contains(&slot))
    };
    let after_kill = || all.iter().filter(|e| e.start >= kill && was_down(e.uid));
    let first_ok_link = after_kill().filter(|e| e.ret.is_some()).filter_map(|e| e.end).min();
    let first_ok_durable = after_kill().filter(|e| e.durable).filter_map(|e| e.end).min();
    let acked_plain = all.iter().filter(|e| e.ret.is_some() && !e.durable).count();
    let acked_durable = all.iter().filter(|e| e.durable).count();
    let failed = all.iter().filter(|e| e.ret.is_none()).count();
    let window = staleness_window_ms(PERIOD_SECS);
    let worst = |m: &BTreeMap<String, u64>| m.iter().max_by_key(|(_, a)| **a).map(|(p, a)| (p.clone(), *a)).unwrap();
    let (worst_pod, worst_age) = worst(&samples.max_age_ms);
    let (gap_pod, worst_gap) = worst(&samples.max_gap_ms);
    let since_kill = |t: Option<Duration>| t.map(|t| format!("{:?}", t.saturating_sub(kill))).unwrap_or("never".into());
    eprintln!(
        "MEASURED {name} failover (master :{old} killed, :{new} took over after {failed_over:?}): first publish \
         {} after the kill, first successful op on a link it held {} (replicated: {}); largest heartbeat gap {worst_gap} ms \
         ({gap_pod}), largest age at a read {worst_age} ms ({worst_pod}), window {window} ms ({} reads, {} failed); ops acknowledged: {acked_durable} replicated, \
         {acked_plain} not, {failed} failed; acknowledged non-replicated writes lost: {lost_writes} on {lossy_uids} \
         uids; replicated writes lost: 0 ({} uids checked in {:?})",
        since_kill(samples.first_publish_after_kill),
        since_kill(first_ok_link),
        since_kill(first_ok_durable),
        samples.reads,
        samples.failed_reads,
        per_uid.len(),
        checking.elapsed(),
    );
    assert!(worst_age < window, "{worst_pod} was seen {worst_age} ms old, beyond the staleness window {window} ms");
    assert!(worst_gap < window, "{gap_pod}: {worst_gap} ms between two heartbeats, beyond the window {window} ms");
    assert!(first_ok_link.is_some(), "no link operation succeeded after the kill");
    assert!(acked_durable > 100 && acked_plain > 100, "too little load: {acked_durable} / {acked_plain}");
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sentinel_master_sigkill_under_load() {
    failover_under_load(Topology::Sentinel(SentinelSet::start(2)), "sentinel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_master_sigkill_under_load() {
    failover_under_load(Topology::Cluster(ReplicatedCluster::start()), "cluster").await;
}
