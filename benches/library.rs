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
//! 2. placements at 10 / 200 / 1 000 / 10 000 pods through the candidate index: the
//!    pick_and_link script run by `redis-benchmark -c 50` vs a trivial EVALSHA with the same
//!    keys (goal ≥ 0.5), with the Redis server time per call of both (`INFO commandstats`); the
//!    library's placements/s (goal ≥ 50 000/s, constant); the v1 full judgement beside it;
//! 3. compute_linked_pod cache hits/s on one core (goal ≥ 5 M/s);
//! 4. the cost of durable links: persistent try_set_linked_pod on a master with one replica,
//!    with `Durability::Replicated { replicas: 1 }` (script + WAIT in one pipeline) vs without,
//!    on one shared connection and on one connection per task (no goal: it is the trade-off
//!    the README documents);
//! 5. pods reporting straight to Redis: 10 000 pods' reports/s vs `redis-benchmark` of the same
//!    script at the same concurrency (goal ≥ 0.5), and report → visible to a placement at 5 000
//!    reports/s, p50/p99 (goal p99 ≤ 50 ms, constant).

mod support;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use support::{RedisServer, median};

use routestate::{
    client::{Client, ClientConfig},
    core::{CpuFactor, Floor, Keys, PodPlan, PodReport, RoutingState, ServicePlan},
    store::{Durability, LinkTtl, PickParams, RedisOptions, ReportOutcome, Store},
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

    // 2. Placements at every service size, through the candidate index (v1.1): the script at the
    // server vs a trivial EVALSHA with the same keys (ratio and server time per call), and through
    // the library; the v1 full judgement (index deleted) beside it for scale.
    let trivial = redis.cli(&["SCRIPT", "LOAD", "return 1"]);
    let pick_sha =
        redis.cli_stdin(&["-x", "SCRIPT", "LOAD"], &script_text(&["common.lua", "states.lua", "pick_and_link.lua"]));
    for pods in [10u32, 200, 1_000, 10_000] {
        let svc = format!("svc{pods}");
        rt.block_on(publish_service(&store, "bench", &svc, pods));
        let k = Keys::service("bench", &svc).expect("keys");
        let keys = |sha: &str| -> Vec<String> {
            let mut c: Vec<String> = vec!["EVALSHA".into(), sha.into(), "5".into()];
            c.extend(["sf:{bench:lk:__rand_int__}".to_owned() + &svc, "sf:{bench:lk:__rand_int__}".to_owned()]);
            c.extend([&k.state, &k.meta, &k.index].map(|x| x.to_string()));
            c.extend([&svc, "300", "12345", "500", "redis", "30000"].map(String::from));
            c
        };
        let (pick_cmd, trivial_cmd) = (keys(&pick_sha), keys(&trivial));
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            let (pick, pick_us) = redis.rps_and_usec(CONCURRENCY, OPS / 2, &pick_cmd);
            let (limit, limit_us) = redis.rps_and_usec(CONCURRENCY, OPS / 2, &trivial_cmd);
            runs.push((pick / limit, pick, limit, pick_us, limit_us));
        }
        runs.sort_by(|a, b| a.0.total_cmp(&b.0));
        let (ratio, pick, limit, pick_us, limit_us) = runs[RUNS / 2];
        println!(
            "{:<48} {pick:>14.0} placements/s  limit EVALSHA \"return 1\" {limit:>9.0}/s  ratio {ratio:>5.2}  goal ratio ≥ 0.5;  server {pick_us:.1} µs vs {limit_us:.1} µs per call",
            format!("pick_and_link script, {pods}-pod service")
        );
        let placements = median(
            (0..RUNS)
                .map(|run| {
                    let (s, svc) = (store.clone(), svc.clone());
                    rt.block_on(throughput(move |i| {
                        let (s, svc) = (s.clone(), svc.clone());
                        async move {
                            let uid = format!("p{pods}-{run}-{i}");
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
            &format!("pick_and_link via the library, {pods} pods"),
            placements,
            "placements/s",
            "goal (constant)",
            50_000.0,
            "ratio ≥ 1 (idle machine)",
        );
        // v1: the same script without the index judges every state (fewer requests: it is slow).
        let _: () =
            rt.block_on(redis::cmd("DEL").arg(&k.index).query_async(&mut store.conn())).expect("deleting the index");
        let v1_ops = if pods >= 1_000 { 2_000 } else { OPS / 10 };
        let (v1, v1_us) = redis.rps_and_usec(CONCURRENCY, v1_ops, &pick_cmd);
        println!(
            "{:<48} {v1:>14.0} placements/s  (server {v1_us:.1} µs per call; for scale, no goal)",
            format!("  v1 full judgement (no index), {pods} pods")
        );
    }

    // 5. Pods reporting straight to Redis (the direct transport, report.lua): 10 000 pods in 100
    // services, 50 in flight, vs redis-benchmark running the same script at the same concurrency;
    // and, at 5 000 reports/s, how long until a reader (the placements' view, the candidate index)
    // sees a report. The operator is not on this path: no API server call, no watch event.
    rt.block_on(async {
        for s in 0..100 {
            publish_service(&store, "reports", &format!("r{s}"), 100).await;
        }
    });
    let report_sha =
        redis.cli_stdin(&["-x", "SCRIPT", "LOAD"], &script_text(&["common.lua", "states.lua", "report.lua"]));
    let rk = Keys::service("reports", "r7").expect("keys");
    let report_cmd: Vec<String> =
        ["EVALSHA", &report_sha, "3", &rk.state, &rk.report, &rk.index, "42", "100-10-0"].map(String::from).to_vec();
    let report_limit = median((0..RUNS).map(|_| redis.rps(CONCURRENCY, OPS, 1, &report_cmd)).collect());
    let reports = median(
        (0..RUNS)
            .map(|run| {
                let s = store.clone();
                rt.block_on(throughput(move |i| {
                    let s = s.clone();
                    async move {
                        let report = PodReport {
                            load_state: (i + run) as u64 % 1000,
                            waiting_tasks: 0,
                            routing: RoutingState::Ready,
                        };
                        let out = s
                            .report_pod_state("reports", &format!("r{}", i % 100), ((i / 100) % 100) as u32, &report)
                            .await
                            .expect("report_pod_state");
                        assert!(matches!(out, ReportOutcome::Published { .. }), "{out:?}");
                    }
                }))
            })
            .collect(),
    );
    report("direct reports, 10 000 pods", reports, "reports/s", "redis-benchmark", report_limit, "ratio ≥ 0.5");
    let lags: Vec<(f64, f64)> = (0..RUNS).map(|run| rt.block_on(report_visibility(&redis, run))).collect();
    let (p50, p99) = (median(lags.iter().map(|l| l.0).collect()), median(lags.iter().map(|l| l.1).collect()));
    println!(
        "{:<48} p50 {:.2} ms, p99 {:.2} ms  goal p99 ≤ 50 ms (constant)",
        "report → visible to a placement, 5 000 reports/s",
        p50 * 1e3,
        p99 * 1e3
    );

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

    // 4. Durable links: the same persistent try_set with and without WAIT, on a master with one
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

/// The text of a script as the store sends it: its parts concatenated.
fn script_text(parts: &[&str]) -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/lua/");
    parts.iter().map(|f| std::fs::read_to_string(format!("{dir}{f}")).expect("reading the Lua scripts")).collect()
}

/// Publishes a service of `pods` READY pods (loads 0–60) through the operator's write path, with
/// a long period so the states and the index stay fresh for the whole bench.
async fn publish_service(store: &Store, ns: &str, svc: &str, pods: u32) {
    let plan = ServicePlan {
        namespace: ns.into(),
        service: svc.into(),
        period_secs: 300,
        cpu_factor: CpuFactor::from_ppm(0).expect("0"),
        replicas: pods,
        pods: (0..pods)
            .map(|p| {
                let report =
                    PodReport { load_state: u64::from(p % 7) * 10, waiting_tasks: 0, routing: RoutingState::Ready };
                (p, PodPlan { floor: Floor { routing: RoutingState::Ready, load: None }, report })
            })
            .collect(),
        workload: None,
    };
    store.publish(&[plan]).await.pop().expect("one result").expect("publishing the bench service");
}

/// Report → visible: reports at 5 000/s for 2 s (batches of 25 every 5 ms); every 20th report is
/// followed, on another connection, by a read of the candidate index until it shows the report's
/// load. Returns (p50, p99) seconds from sending the report to that read's reply.
async fn report_visibility(redis: &RedisServer, run: usize) -> (f64, f64) {
    const RATE_BATCH: usize = 25;
    const BATCHES: usize = 400;
    let store = Store::connect(&RedisOptions::standalone(redis.url())).await.expect("connecting");
    let reader = Store::connect(&RedisOptions::standalone(redis.url())).await.expect("connecting");
    let lags = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut ticker = tokio::time::interval(Duration::from_millis(5));
    let mut tasks = Vec::new();
    for batch in 0..BATCHES {
        ticker.tick().await;
        for j in 0..RATE_BATCH {
            let n = batch * RATE_BATCH + j;
            let (store, reader, lags) = (store.clone(), reader.clone(), lags.clone());
            tasks.push(tokio::spawn(async move {
                let (svc, pod) = (format!("r{}", n % 100), ((n / 100) % 100) as u32);
                let load = 1_000 + (n + run) as u64 % 5_000;
                let sent = Instant::now();
                let report = PodReport { load_state: load, waiting_tasks: 0, routing: RoutingState::Ready };
                store.report_pod_state("reports", &svc, pod, &report).await.expect("report_pod_state");
                if n.is_multiple_of(20) {
                    let index = Keys::state_index("reports", &svc).expect("key");
                    loop {
                        let score: Option<f64> = redis::cmd("ZSCORE")
                            .arg(&index)
                            .arg(pod)
                            .query_async(&mut reader.conn())
                            .await
                            .expect("ZSCORE");
                        if score == Some(load as f64) {
                            break;
                        }
                    }
                    lags.lock().unwrap().push(sent.elapsed().as_secs_f64());
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("report task");
    }
    let mut v = lags.lock().unwrap().clone();
    v.sort_by(f64::total_cmp);
    let pct = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (pct(0.5), pct(0.99))
}
