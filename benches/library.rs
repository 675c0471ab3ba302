//! Library benchmarks (`make bench`): every figure is printed with what it is compared to (median
//! of RUNS runs each). Redis-bound figures are compared with a limit measured in the same run on
//! the same machine (`redis-benchmark`); two figures have constant goals instead, and say so in
//! their line ("goal (constant)"): placements/s and cache hits/s.
//!
//! The bench starts its own `redis-server` on a free loopback port (and stops it), so it never
//! disturbs other Redis users. Needs `redis-server` and `redis-benchmark` on PATH.
//!
//! Figures:
//! 1. link operations (set_linked_pod_if_absent, try_set_linked_pod) ops/s vs `redis-benchmark`
//!    EVALSHA of a trivial 2-key script at the same concurrency and pipeline depth (goal ≥ 0.8);
//! 2. pick_and_link placements/s for a 10-pod and a 200-pod service (goals ≥ 50 000/s and
//!    ≥ 10 000/s), also shown against the EVALSHA limit;
//! 3. compute_linked_pod cache hits/s on one core (goal ≥ 5 M/s);
//! 4. writing 10 000 pod states over 100 services, one HSET per service pipelined, vs
//!    `redis-benchmark` running the same HSETs (100 fields each) with the same pipeline depth
//!    (goal ≤ 2 × its time);
//! 5. the cost of durable links: persistent try_set_linked_pod on a master with one replica,
//!    with `Durability::Replicated { replicas: 1 }` (script + WAIT in one pipeline) vs without,
//!    on one shared connection and on one connection per task (no goal: it is the trade-off
//!    the README documents).

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use support::{RedisServer, median};

use routestate::{
    client::{Client, ClientConfig},
    core::{PodState, RoutingState},
    store::{Durability, LinkTtl, PickParams, RedisOptions, Store},
};

const RUNS: usize = 5;
/// Requests in flight, for us and for redis-benchmark (`-c`).
const CONCURRENCY: usize = 50;
/// Operations per run of the Redis-bound figures.
const OPS: usize = 100_000;

/// ops/s of `op(i)` for i in 0..OPS with CONCURRENCY tasks.
async fn throughput<F, Fut>(op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    throughput_of(OPS, op).await
}

/// ops/s of `op(i)` for i in 0..ops with CONCURRENCY tasks.
async fn throughput_of<F, Fut>(ops: usize, op: F) -> f64
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|t| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut i = t;
                while i < ops {
                    op(i).await;
                    i += CONCURRENCY;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("bench task");
    }
    ops as f64 / started.elapsed().as_secs_f64()
}

fn report(name: &str, value: f64, unit: &str, limit_name: &str, limit: f64, goal: &str) {
    println!(
        "{name:<48} {value:>14.0} {unit:<12} limit {limit_name} {limit:>12.0}  ratio {:>6.2}  goal {goal}",
        value / limit
    );
}

fn main() {
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let store =
        rt.block_on(Store::connect(&RedisOptions::standalone(redis.url()))).expect("connecting to the bench redis");
    println!(
        "routestate library benchmarks: median of {RUNS} runs, concurrency {CONCURRENCY}, pipeline 1, {OPS} ops per run"
    );

    // 1. Link operations vs EVALSHA of a trivial script with the same key count.
    let sha = redis.cli(&["SCRIPT", "LOAD", "return 1"]);
    let evalsha: Vec<String> =
        ["EVALSHA", &sha, "2", "sf:{bench:lk:__rand_int__}game", "sf:{bench:lk:__rand_int__}", "game", "1", "300"]
            .map(String::from)
            .to_vec();
    let limit = median((0..RUNS).map(|_| redis.rps(CONCURRENCY, OPS, 1, &evalsha)).collect());
    let s = store.clone();
    let if_absent = median(
        (0..RUNS)
            .map(|run| {
                let s = s.clone();
                rt.block_on(throughput(move |i| {
                    let s = s.clone();
                    async move {
                        let uid = format!("u{}", (i * 7919 + run) % 100_000);
                        s.set_linked_pod_if_absent("bench", &uid, "game", (i % 10) as u32, LinkTtl::temporary())
                            .await
                            .expect("set_linked_pod_if_absent");
                    }
                }))
            })
            .collect(),
    );
    report("set_linked_pod_if_absent", if_absent, "ops/s", "EVALSHA", limit, "ratio ≥ 0.8");
    let try_set = median(
        (0..RUNS)
            .map(|_| {
                let s = s.clone();
                rt.block_on(throughput(move |i| {
                    let s = s.clone();
                    async move {
                        let uid = format!("t{}", i % 100_000);
                        s.try_set_linked_pod("bench", &uid, "game", (i % 10) as u32, LinkTtl::Persistent)
                            .await
                            .expect("try_set_linked_pod");
                    }
                }))
            })
            .collect(),
    );
    report("try_set_linked_pod", try_set, "ops/s", "EVALSHA", limit, "ratio ≥ 0.8");

    // 2. pick_and_link placements (every call places a new uid).
    for (pods, goal) in [(10u32, 50_000.0), (200, 10_000.0)] {
        let svc = format!("svc{pods}");
        rt.block_on(async {
            let now = store.server_time_ms().await.expect("TIME");
            // Far in the future so the states stay fresh for the whole bench.
            let states: Vec<_> = (0..pods)
                .map(|p| (p, PodState::new(u64::from(p % 7) * 10, now + 3_600_000, RoutingState::Ready)))
                .collect();
            store.set_pod_states("bench", &svc, &states).await.expect("writing states");
        });
        let placements = median(
            (0..RUNS)
                .map(|run| {
                    let (s, svc) = (store.clone(), svc.clone());
                    rt.block_on(throughput(move |i| {
                        let (s, svc) = (s.clone(), svc.clone());
                        async move {
                            let uid = format!("p{run}-{i}");
                            let params = PickParams {
                                temp_ttl_secs: 300,
                                random: i as u32,
                                range: 500,
                                fallback_window_ms: 30_000,
                            };
                            let placed = s.pick_and_link("bench", &uid, &svc, params).await.expect("pick_and_link");
                            assert!(placed.is_some_and(|p| p.created), "a new placement");
                        }
                    }))
                })
                .collect(),
        );
        report(
            &format!("pick_and_link, {pods}-pod service"),
            placements,
            "placements/s",
            "EVALSHA",
            limit,
            &format!("≥ {goal:.0}/s"),
        );
        println!("{:<48} {:>14.2}", format!("  placements/s ÷ goal (constant) {goal:.0}"), placements / goal);
    }

    // 3. compute_linked_pod cache hits on one core (current-thread runtime, one task).
    let hits = {
        let local = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        local.block_on(async {
            let client = Client::new(
                store.clone(),
                ClientConfig { refresh_period: Duration::from_secs(3600), ..ClientConfig::default() },
            )
            .expect("client");
            let uids: Vec<String> = (0..10_000).map(|i| format!("hit{i}")).collect();
            for uid in &uids {
                client.compute_linked_pod("bench", uid, "svc10").await.expect("warm-up compute");
            }
            let rounds: Vec<f64> = (0..RUNS)
                .map(|_| {
                    let n = 2_000_000usize;
                    let started = Instant::now();
                    let waker = futures::task::noop_waker();
                    let mut cx = std::task::Context::from_waker(&waker);
                    for i in 0..n {
                        // A hit completes on first poll; anything else would be a miss.
                        let mut fut =
                            std::pin::pin!(client.compute_linked_pod("bench", &uids[i % uids.len()], "svc10"));
                        match fut.as_mut().poll(&mut cx) {
                            std::task::Poll::Ready(Ok(pod)) => {
                                std::hint::black_box(pod);
                            }
                            other => panic!("expected a cache hit, got {other:?}"),
                        }
                    }
                    n as f64 / started.elapsed().as_secs_f64()
                })
                .collect();
            assert_eq!(client.stats().computations, 10_000, "every timed call was a cache hit");
            median(rounds)
        })
    };
    report("compute_linked_pod cache hits, one core", hits, "hits/s", "goal (constant)", 5_000_000.0, "ratio ≥ 1");

    // 4. 10 000 pod states over 100 services, one HSET (100 fields) per service, pipelined.
    let services: Vec<(String, Vec<(u32, PodState)>)> = (0..100)
        .map(|s| {
            (
                format!("w{s}"),
                (0..100)
                    .map(|p| (p, PodState::new(u64::from(p), 1_764_000_000_000 + u64::from(p), RoutingState::Ready)))
                    .collect(),
            )
        })
        .collect();
    let rounds = 20;
    let ours = median(
        (0..RUNS)
            .map(|_| {
                rt.block_on(async {
                    let started = Instant::now();
                    for _ in 0..rounds {
                        store.set_services_pod_states("bench", &services).await.expect("writing states");
                    }
                    started.elapsed().as_secs_f64() / rounds as f64
                })
            })
            .collect(),
    );
    let mut hset: Vec<String> = vec!["HSET".into(), "sf:{bench:state:w__rand_int__}".into()];
    for (p, s) in &services[0].1 {
        hset.push(p.to_string());
        hset.push(s.encode());
    }
    let limit_rps = median((0..RUNS).map(|_| redis.rps(1, 100 * rounds, 100, &hset)).collect());
    let limit_time = 100.0 / limit_rps;
    println!(
        "{:<48} {:>11.3} ms   limit redis-benchmark {:>9.3} ms  ratio {:>6.2}  goal ratio ≤ 2",
        "write 10k states / 100 services (pipelined)",
        ours * 1e3,
        limit_time * 1e3,
        ours / limit_time
    );

    // 5. Durable links: the same persistent try_set with and without WAIT, on a master with one
    // replica; fewer operations per run (a replicated write waits for the replica).
    let master = RedisServer::start();
    let replica = RedisServer::replica_of(&master);
    let opts = RedisOptions::standalone(master.url());
    let plain = rt.block_on(Store::connect(&opts)).expect("connecting to the bench master");
    let durable_mode = Durability::Replicated { replicas: 1, timeout: Duration::from_millis(500) };
    let durable_ops = OPS / 10;
    let persistent_try_set = |stores: Arc<Vec<Store>>, prefix: &'static str| {
        move |i: usize| {
            let s = stores[i % stores.len()].clone();
            async move {
                let uid = format!("{prefix}{}", i % 100_000);
                s.try_set_linked_pod("bench", &uid, "game", (i % 10) as u32, LinkTtl::Persistent)
                    .await
                    .expect("try_set_linked_pod");
            }
        }
    };
    let run = |stores: Vec<Store>, prefix: &'static str| {
        let stores = Arc::new(stores);
        median(
            (0..RUNS)
                .map(|_| rt.block_on(throughput_of(durable_ops, persistent_try_set(stores.clone(), prefix))))
                .collect(),
        )
    };
    let own = |d: Durability| {
        (0..CONCURRENCY)
            .map(|_| rt.block_on(Store::connect(&opts)).expect("connecting to the bench master").with_durability(d))
            .collect::<Vec<_>>()
    };
    let base = run(vec![plain.clone()], "p");
    report("try_set persistent, 1 replica, shared conn", base, "ops/s", "itself", base, "(the limit below)");
    let shared = run(vec![plain.with_durability(durable_mode)], "d");
    report("  + Replicated{1}, shared connection", shared, "ops/s", "plain", base, "(trade-off)");
    let base_own = run(own(Durability::MasterOnly), "q");
    report("try_set persistent, 1 replica, conn per task", base_own, "ops/s", "itself", base_own, "(the limit below)");
    let spread = run(own(durable_mode), "e");
    report("  + Replicated{1}, connection per task", spread, "ops/s", "plain", base_own, "(trade-off)");
    drop(replica);
    drop(master);
    drop(rt);
    drop(redis);
}

use std::future::Future as _;
