//! System benchmark of the operator's heartbeat (`make bench`): the real `operator::publisher`
//! ticking against a private `redis-server`, each figure next to a limit measured in the same run
//! (median of RUNS runs). Never asserted: the figures go to docs/performance.md ("System").
//!
//! 7. One heartbeat period of 10 000 pods in 100 services (per service one `publish.lua`, then
//!    the workload SETs) against two limits measured in the same run from one connection at the
//!    same pipeline depth: `redis-benchmark` running the same script with the same arguments (the
//!    period's own cost at the server, in one pipeline), and plain `HSET`s of the same 100 fields
//!    per service (what the state hash alone would cost written raw, as v1 writers do).
//! 10. The scaling curve: publish time per period and the publisher's live heap at 100, 1 000
//!     and 10 000 pods (100 pods per service), with the per-pod slope between points.
//!
//! The publish time is the publisher's own `routestate_redis_publish_duration_seconds` histogram
//! (the script pipelines and the workload pipeline) summed over a window of steady-state periods,
//! per period: the publisher spreads each period's heartbeats over 20 slots, so a period is
//! several smaller publishes.

mod support;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use kube::runtime::reflector::ObjectRef;
use routestate::{
    core::{CpuFactor, Floor, PodPlan, PodReport, RoutingState, ServicePlan, WorkloadPlan},
    operator::{Metrics, RouteState, publisher::Publisher},
    store::{RedisOptions, Store},
};
use support::{RedisServer, median};
use tokio::sync::{mpsc, watch};

/// Counts live heap bytes, so the publisher's own memory is measured exactly (a process' RSS
/// does not shrink when memory is freed, so it cannot tell runs apart).
struct Counting;

static LIVE: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting sizes.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live_kib() -> i64 {
    (LIVE.load(std::sync::atomic::Ordering::Relaxed) / 1024) as i64
}

const RUNS: usize = 5;
const PODS_PER_SERVICE: u32 = 100;
/// Steady-state heartbeat periods (1 s) measured per run.
const PERIODS: u64 = 5;

fn histogram(metrics: &Metrics) -> (f64, f64) {
    let text = metrics.render();
    let get = |suffix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("routestate_redis_publish_duration_seconds_{suffix} ")))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (get("sum"), get("count"))
}

fn plan(ns: &str, svc: &str, n: u32) -> ServicePlan {
    let pods: BTreeMap<u32, PodPlan> = (0..n)
        .map(|i| {
            let report = PodReport { load_state: u64::from(i % 50), waiting_tasks: 0, routing: RoutingState::Ready };
            (i, PodPlan { floor: Floor { routing: RoutingState::Ready, load: None }, report })
        })
        .collect();
    ServicePlan {
        namespace: ns.into(),
        service: svc.into(),
        period_secs: 1,
        cpu_factor: CpuFactor::DEFAULT,
        replicas: n,
        pods,
        workload: Some(WorkloadPlan { leader: format!("{svc}-0"), replicas: n, ready_pods: n }),
    }
}

/// Seconds of publishing per steady-state heartbeat period (every pod once) and the live heap it
/// holds (KiB), for `services` × 100 pods.
async fn publisher_run(url: &str, run: usize, services: u32) -> (f64, i64) {
    let live0 = live_kib();
    let store = Store::connect(&RedisOptions::standalone(url)).await.expect("connecting");
    let (_leader_tx, leader) =
        routestate::operator::Leadership::channel(Some(routestate::operator::Claim::unlimited()));
    let (sync_tx, mut sync_rx) = mpsc::unbounded_channel::<ObjectRef<RouteState>>();
    tokio::spawn(async move { while sync_rx.recv().await.is_some() {} });
    let metrics = Arc::new(Metrics::default());
    let publisher = Arc::new(Publisher::new(store, leader, metrics.clone(), sync_tx));
    let ns = format!("bench-{run}-{services}");
    for s in 0..services {
        let name = format!("svc{s}");
        publisher.set_plan(ObjectRef::new(&name).within(&ns), plan(&ns, &name, PODS_PER_SERVICE));
    }
    let (stop_tx, stop) = watch::channel(false);
    let task = tokio::spawn(publisher.clone().run(stop));
    // The first tick publishes every service at once; within one and a half periods each is in
    // its slot. Then PERIODS steady periods.
    let deadline = Instant::now() + Duration::from_secs(60);
    while histogram(&metrics).1 < 1.0 {
        assert!(Instant::now() < deadline, "the publisher did not tick");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // settling into the slots (a warm-up window)
    let (s1, c1) = histogram(&metrics);
    let t1 = Instant::now();
    tokio::time::sleep(Duration::from_secs(PERIODS)).await; // the measurement window
    let (s2, c2) = histogram(&metrics);
    let periods = t1.elapsed().as_secs_f64(); // of 1 s
    assert!(c2 > c1, "the publisher did not tick in {periods:.1} s");
    let rss = live_kib() - live0;
    let _ = stop_tx.send(true);
    let _ = task.await;
    ((s2 - s1) / periods, rss)
}

fn main() {
    let redis = RedisServer::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    // 7: one heartbeat period of 10 000 pods in 100 services vs redis-benchmark.
    let services = 100usize;
    let example = plan("bench", "b", PODS_PER_SERVICE);
    let keys = example.keys().expect("keys");
    let sha = redis.cli_stdin(&["-x", "SCRIPT", "LOAD"], &script_text());
    let mut script: Vec<String> = vec!["EVALSHA".into(), sha, "5".into()];
    script.extend([&keys.state, &keys.meta, &keys.floor, &keys.report, &keys.index].map(|k| k.to_string()));
    script.extend(example.script_args());
    let value = "25-1795632661457-0"; // a pod state of the usual length
    let mut hset: Vec<String> = vec!["HSET".into(), "sf:{bench:state:__rand_int__}".into()];
    for i in 0..PODS_PER_SERVICE {
        hset.push(i.to_string());
        hset.push(value.into());
    }
    let mut ours = Vec::new();
    let (mut same_script, mut raw) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        ours.push(rt.block_on(publisher_run(&url, run, services as u32)).0);
        // Seconds for `requests` from one client at pipeline depth 2 × services (the script
        // pipeline, then the workload SETs), per period of `services` services.
        let per_period = |command: &[String]| {
            let requests = services * 20;
            requests as f64 / redis.rps(1, requests, 2 * services, command) / 20.0
        };
        let set = per_period(&["SET".into(), "sf:{bench:workload:__rand_int__}".into(), "x".repeat(160)]);
        same_script.push(per_period(&script) + set);
        raw.push(per_period(&hset) + set);
    }
    let (t, l, r) = (median(ours), median(same_script), median(raw));
    println!(
        "system/heartbeat_period 10000 pods in 100 services: {:.2} ms of publishing per period (20 slots); \
         redis-benchmark, same script and arguments, one pipeline of depth {}: {:.2} ms (ratio {:.2}); raw HSETs of \
         the same fields: {:.2} ms (ratio {:.2}) (median of {RUNS})",
        t * 1e3,
        2 * services,
        l * 1e3,
        t / l,
        r * 1e3,
        t / r
    );

    // 10: scaling curve.
    let mut points = Vec::new();
    for pods in [100u32, 1_000, 10_000] {
        let services = pods / PODS_PER_SERVICE;
        let mut times = Vec::new();
        let mut rss = Vec::new();
        for run in 0..RUNS {
            let (period, mem) = rt.block_on(publisher_run(&url, 100 + run, services));
            times.push(period);
            rss.push(mem as f64);
        }
        let (t, m) = (median(times), median(rss));
        println!(
            "system/scaling {pods:>6} pods: publishing {:.3} ms per period ({:.2} µs/pod), publisher live heap {:.0} KiB \
             ({:.0} B/pod)",
            t * 1e3,
            t * 1e6 / f64::from(pods),
            m,
            m * 1024.0 / f64::from(pods)
        );
        points.push((pods, t, m));
    }
    for w in points.windows(2) {
        let ((p0, t0, m0), (p1, t1, m1)) = (w[0], w[1]);
        println!(
            "system/scaling slope {p0}->{p1} pods: {:.2} µs/pod publishing, {:.0} B/pod memory",
            (t1 - t0) * 1e6 / f64::from(p1 - p0),
            (m1 - m0) * 1024.0 / f64::from(p1 - p0)
        );
    }
}

/// The text of `publish.lua` as the store sends it (common.lua, states.lua, the body).
fn script_text() -> String {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/store/lua/");
    ["common.lua", "states.lua", "publish.lua"]
        .map(|f| std::fs::read_to_string(format!("{dir}{f}")).expect("reading the Lua scripts"))
        .concat()
}
