//! The one write path of pod states (wire contract v1.1) against real Redis, standalone and
//! Cluster: `publish.lua` (the operator's tick) and `report.lua` (a pod's own report) against
//! the pure model `core::published`, the floor under concurrent ticks and reports, placements
//! through the candidate index against the full judgement, and the v1 fallback.

use routestate::core::ErrorChain;
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::{Rng, SeedableRng, rngs::StdRng};
use routestate::{
    core::{
        CpuFactor, Floor, Keys, MAX_LOAD, PodPlan, PodReport, PodState, RoutingState, ServicePlan, Workload,
        WorkloadPlan, published,
    },
    store::{PickParams, ReportOutcome, Store, StoreError},
};

use crate::support::unique_name;

const SVC: &str = "game";

fn routing(rng: &mut StdRng) -> RoutingState {
    RoutingState::from_ordinal(rng.random_range(0..3)).unwrap()
}

fn report(rng: &mut StdRng) -> PodReport {
    // Loads around the exactness bound too.
    let big = |rng: &mut StdRng| {
        if rng.random_range(0..8) == 0 { MAX_LOAD - 2 + rng.random_range(0..4) } else { rng.random_range(0..2_000) }
    };
    PodReport { load_state: big(rng), waiting_tasks: big(rng), routing: routing(rng) }
}

/// A random plan of up to 40 pods (dense indices, sometimes sparse ones).
fn random_plan(rng: &mut StdRng, ns: &str) -> ServicePlan {
    let n = rng.random_range(0..40);
    let pods: BTreeMap<u32, PodPlan> = (0..n)
        .map(|_| {
            let index =
                if rng.random_range(0..5) == 0 { rng.random_range(0..100_000) } else { rng.random_range(0..50) };
            let load = (rng.random_range(0..4) == 0).then(|| rng.random_range(0..1_500));
            (index, PodPlan { floor: Floor { routing: routing(rng), load }, report: report(rng) })
        })
        .collect();
    let replicas = pods.keys().next_back().map_or(0, |m| m + 1);
    ServicePlan {
        namespace: ns.to_owned(),
        service: SVC.to_owned(),
        period_secs: 60,
        cpu_factor: CpuFactor::from_ppm(rng.random_range(0..=1_000_000)).unwrap(),
        replicas,
        pods,
        workload: Some(WorkloadPlan { leader: "game-0".into(), replicas, ready_pods: replicas }),
    }
}

async fn hash(store: &Store, key: &str) -> BTreeMap<String, String> {
    redis::cmd("HGETALL").arg(key).query_async(&mut store.conn()).await.unwrap()
}

/// The candidate index as (member, score), in its order.
async fn index(store: &Store, key: &str) -> Vec<(String, f64)> {
    let flat: Vec<String> =
        redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut store.conn()).await.unwrap();
    flat.chunks(2).map(|c| (c[0].clone(), c[1].parse().unwrap())).collect()
}

/// What the model says a plan and the pods' own reports publish, pod by pod.
fn model(plan: &ServicePlan, own: &BTreeMap<u32, PodReport>) -> BTreeMap<u32, (u64, RoutingState)> {
    plan.pods.iter().map(|(i, p)| (*i, published(&p.floor, own.get(i).unwrap_or(&p.report), plan.cpu_factor))).collect()
}

async fn publish_one(store: &Store, plan: &ServicePlan) -> routestate::core::Published {
    store.publish(std::slice::from_ref(plan)).await.pop().unwrap().unwrap_or_else(|e| panic!("publish: {e}"))
}

/// Random plans, with random own reports of some pods, published twice in a row: the state hash,
/// the floor, the index, the meta hash and the workload are exactly what the model says.
async fn publish_agrees_with_the_model(store: Store) {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let ns = unique_name("publish");
    let k = Keys::service(&ns, SVC).unwrap();
    // The pods' own reports as they should be in Redis, across rounds.
    let mut own = BTreeMap::new();
    for round in 0..30 {
        let plan = random_plan(&mut rng, &ns);
        // Some pods reported themselves (published or not), some indices no longer in the plan.
        for _ in 0..rng.random_range(0..10) {
            let i = if rng.random_range(0..2) == 0 && !plan.pods.is_empty() {
                *plan.pods.keys().nth(rng.random_range(0..plan.pods.len())).unwrap()
            } else {
                rng.random_range(0..60)
            };
            let r = report(&mut rng);
            store.report_pod_state(&ns, SVC, i, &r).await.unwrap();
            own.insert(i, r);
        }
        let got = publish_one(&store, &plan).await;
        let want = model(&plan, &own);
        own.retain(|i, _| plan.pods.contains_key(i) || *i < plan.replicas);
        let ctx = format!("seed {seed} round {round}");
        assert_eq!(got.pods, want, "{ctx}: the reply");
        let states = hash(&store, &k.state).await;
        let parsed: BTreeMap<u32, (u64, RoutingState)> = states
            .iter()
            .map(|(f, v)| {
                let s = PodState::parse(v).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                assert_eq!(s.updated_at_ms, got.now_ms, "{ctx}: every state is stamped with the tick's time");
                (f.parse().unwrap(), (s.weighted_load, s.routing))
            })
            .collect();
        assert_eq!(parsed, want, "{ctx}: the state hash");
        let floors = hash(&store, &k.floor).await;
        let want_floors: BTreeMap<String, String> =
            plan.pods.iter().map(|(i, p)| (i.to_string(), p.floor.encode())).collect();
        assert_eq!(floors, want_floors, "{ctx}: the floor hash");
        let mut want_index: Vec<(String, f64)> = want
            .iter()
            .filter(|(_, (_, r))| *r == RoutingState::Ready)
            .map(|(i, (l, _))| (i.to_string(), *l as f64))
            .collect();
        want_index.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        want_index.push(("~".into(), f64::INFINITY));
        assert_eq!(index(&store, &k.index).await, want_index, "{ctx}: the candidate index");
        let ttl: i64 = redis::cmd("PTTL").arg(&k.index).query_async(&mut store.conn()).await.unwrap();
        assert!(ttl > 170_000 && ttl <= 180_000, "{ctx}: the index lives one staleness window, PTTL {ttl}");
        let meta = hash(&store, &k.meta).await;
        assert_eq!(meta["updatePeriodSeconds"], "60");
        assert_eq!(meta["cpuFactorPpm"], plan.cpu_factor.ppm().to_string());
        // Reports of pods gone for good (index ≥ replicas, unpublished) are dropped, others kept.
        let reports: BTreeMap<u32, PodReport> = hash(&store, &k.report)
            .await
            .iter()
            .map(|(f, v)| (f.parse().unwrap(), PodReport::parse(v).unwrap()))
            .collect();
        assert_eq!(reports, own, "{ctx}: the report hash");
        let workload: String = redis::cmd("GET").arg(&k.workload).query_async(&mut store.conn()).await.unwrap();
        assert_eq!(Workload::parse(&workload).unwrap(), got.workload(plan.workload.as_ref().unwrap()), "{ctx}");
        // Reports published against the floor of this plan: what the model says.
        for (&i, p) in plan.pods.iter().take(5) {
            let r = report(&mut rng);
            own.insert(i, r);
            let (load, routing) = published(&p.floor, &r, plan.cpu_factor);
            assert_eq!(
                store.report_pod_state(&ns, SVC, i, &r).await.unwrap(),
                ReportOutcome::Published { routing, weighted_load: load },
                "{ctx}: report of pod {i}"
            );
            let s = PodState::parse(&hash(&store, &k.state).await[&i.to_string()]).unwrap();
            assert_eq!((s.weighted_load, s.routing), (load, routing), "{ctx}: the state after the report");
            let member: Option<f64> =
                redis::cmd("ZSCORE").arg(&k.index).arg(i).query_async(&mut store.conn()).await.unwrap();
            assert_eq!(member, (routing == RoutingState::Ready).then_some(load as f64), "{ctx}: the index entry");
        }
        // A pod without a floor: stored, not published.
        let absent = (0..).find(|i| !plan.pods.contains_key(i)).unwrap();
        let r = report(&mut rng);
        own.insert(absent, r);
        assert_eq!(store.report_pod_state(&ns, SVC, absent, &r).await.unwrap(), ReportOutcome::Stored);
        assert!(!hash(&store, &k.state).await.contains_key(&absent.to_string()), "{ctx}: published without a floor");
    }
    store.remove_service(&ns, SVC).await.unwrap();
    for key in k.all() {
        let exists: bool = redis::cmd("EXISTS").arg(key).query_async(&mut store.conn()).await.unwrap();
        assert!(!exists, "{key} left after remove_service");
    }
}

/// Bad input to the scripts is an error naming it, and changes nothing.
async fn bad_reports_and_plans_are_refused(store: Store) {
    let ns = unique_name("bad-publish");
    let k = Keys::service(&ns, SVC).unwrap();
    let mut plan = ServicePlan {
        namespace: ns.clone(),
        service: SVC.into(),
        period_secs: 0,
        cpu_factor: CpuFactor::DEFAULT,
        replicas: 1,
        pods: BTreeMap::from([(
            0,
            PodPlan { floor: Floor { routing: RoutingState::Ready, load: None }, report: PodReport::default() },
        )]),
        workload: None,
    };
    let err = store.publish(std::slice::from_ref(&plan)).await.pop().unwrap().unwrap_err();
    assert!(err.chain().to_string().contains("bad period") && err.chain().to_string().contains(&k.state), "{err}");
    assert!(hash(&store, &k.state).await.is_empty(), "a refused plan wrote states");
    plan.period_secs = 10;
    plan.namespace = "a:b".into();
    let err = store.publish(std::slice::from_ref(&plan)).await.pop().unwrap().unwrap_err();
    assert!(matches!(err, StoreError::Key { .. }) && err.chain().to_string().contains("\"a:b\""), "{err}");
    let err = store.report_pod_state("a{b", SVC, 0, &PodReport::default()).await.unwrap_err();
    assert!(err.chain().to_string().contains("a{b"), "{err}");
}

/// Operator ticks with changing floors and pods' reports, interleaved at full speed: an observer
/// reading the state, floor and index hashes atomically never sees a state less restrictive
/// than its floor, a state without a floor, or an index that disagrees with the states.
async fn ticks_and_reports_never_lift_the_floor(store: Store) {
    const PODS: u32 = 8;
    let ns = unique_name("race");
    let k = Keys::service(&ns, SVC).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ticks, reports, checks) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    {
        let (store, ns, stop, ticks) = (store.clone(), ns.clone(), stop.clone(), ticks.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(rand::random());
            while !stop.load(Ordering::Relaxed) {
                // Floors change every tick; some pods are not published at all.
                let mut pods = BTreeMap::new();
                for i in 0..PODS {
                    if rng.random_range(0..5) != 0 {
                        let floor = Floor { routing: routing(&mut rng), load: None };
                        pods.insert(i, PodPlan { floor, report: PodReport::default() });
                    }
                }
                let plan = ServicePlan {
                    namespace: ns.clone(),
                    service: SVC.into(),
                    period_secs: 30,
                    cpu_factor: CpuFactor::DEFAULT,
                    replicas: PODS,
                    pods,
                    workload: None,
                };
                publish_one(&store, &plan).await;
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for pod in 0..PODS {
        let (store, ns, stop, reports) = (store.clone(), ns.clone(), stop.clone(), reports.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(rand::random());
            while !stop.load(Ordering::Relaxed) {
                // Mostly READY: the report that would lift a floor if anything could.
                let r = if rng.random_range(0..4) == 0 {
                    report(&mut rng)
                } else {
                    PodReport { routing: RoutingState::Ready, ..report(&mut rng) }
                };
                if let ReportOutcome::Published { routing, .. } =
                    store.report_pod_state(&ns, SVC, pod, &r).await.unwrap()
                {
                    assert!(routing >= r.routing, "a report published {routing} for a report of {}", r.routing);
                }
                reports.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The observer: one read-only script, so the three reads see one moment.
    let read = redis::Script::new(
        "return {redis.call('HGETALL', KEYS[1]), redis.call('HGETALL', KEYS[2]), redis.call('ZRANGE', KEYS[3], 0, -1)}",
    );
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut conn = store.conn();
    while Instant::now() < deadline {
        let pairs = |v: Vec<String>| -> BTreeMap<String, String> {
            v.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect()
        };
        let (states, floors, idx): (Vec<String>, Vec<String>, Vec<String>) =
            read.key(&k.state).key(&k.floor).key(&k.index).invoke_async(&mut conn).await.unwrap();
        let (states, floors) = (pairs(states), pairs(floors));
        let mut ready = BTreeSet::new();
        for (pod, value) in &states {
            let s = PodState::parse(value).unwrap();
            let floor =
                floors.get(pod).unwrap_or_else(|| panic!("pod {pod} published without a floor: {states:?} {floors:?}"));
            let floor = Floor::parse(floor).unwrap();
            assert!(s.routing >= floor.routing, "pod {pod} published {} under floor {}", s.routing, floor.routing);
            if s.routing == RoutingState::Ready {
                ready.insert(pod.clone());
            }
        }
        if !idx.is_empty() {
            let members: BTreeSet<String> = idx.into_iter().filter(|m| m != "~").collect();
            assert_eq!(members, ready, "the index disagrees with the states");
        }
        checks.fetch_add(1, Ordering::Relaxed);
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let (t, r, c) = (ticks.load(Ordering::Relaxed), reports.load(Ordering::Relaxed), checks.load(Ordering::Relaxed));
    eprintln!("MEASURED race: {t} ticks, {r} reports, {c} atomic checks, no state above its floor");
    assert!(
        t > 50 && r > 500 && c > 50,
        "too little interleaving to prove anything: {t} ticks, {r} reports, {c} checks"
    );
}

fn params(random: u32, range: u64) -> PickParams {
    PickParams { temp_ttl_secs: 300, random, range, fallback_window_ms: 60_000 }
}

/// Placements through the live index, across random plans and reports: every pick is in the
/// good set of the full judgement (states read back and judged by `core`), and is exactly the
/// indexed rule's pick; a kept link is one the full judgement calls available.
async fn index_picks_are_in_the_full_judgement_set(store: Store) {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let ns = unique_name("index-pick");
    for round in 0..40 {
        let plan = random_plan(&mut rng, &ns);
        publish_one(&store, &plan).await;
        let range = [0, 1, 50, 500, 1 << 53][rng.random_range(0..5)];
        let snap = store.read_service(&ns, SVC).await.unwrap().snapshot(60_000, range);
        for n in 0..8 {
            let random: u32 = rng.random();
            let uid = format!("u{round}-{n}");
            let placed = store.pick_and_link(&ns, &uid, SVC, params(random, range)).await.unwrap();
            let ctx = format!("seed {seed} round {round} uid {uid}: good {:?}", snap.good_pods());
            match placed {
                Some(p) => {
                    assert!(p.created && snap.good_pods().contains(&p.pod), "{ctx}: placed on {p:?}");
                    assert_eq!(Some(p.pod), snap.pick_indexed(random), "{ctx}");
                }
                None => assert!(snap.good_pods().is_empty(), "{ctx}: nothing placed"),
            }
        }
        // A user already linked keeps an available pod, and only such a pod.
        if let Some(&pod) = plan.pods.keys().next() {
            let uid = format!("linked-{round}");
            store.set_linked_pod(&ns, &uid, SVC, pod, routestate::store::LinkTtl::Temporary(300)).await.unwrap();
            let placed = store.pick_and_link(&ns, &uid, SVC, params(rng.random(), range)).await.unwrap();
            if snap.is_available(pod) {
                assert_eq!(placed.map(|p| (p.pod, p.created)), Some((pod, false)), "seed {seed}: kept link");
            } else {
                assert!(
                    placed.is_none_or(|p| p.created && p.pod != pod),
                    "seed {seed}: {placed:?} for an unavailable link"
                );
            }
        }
    }
}

/// States written only by a v1 writer (raw HSET, no floor, no index), and a service whose index
/// expired: placements judge the whole hash, with the v1 rule (ascending pod index).
async fn v1_only_states_fall_back_to_the_full_judgement(store: Store) {
    let ns = unique_name("v1");
    let now = store.server_time_ms().await.unwrap();
    let states: Vec<(u32, PodState)> = (0..12)
        .map(|i| {
            (
                i,
                PodState::new(
                    u64::from(i % 3) * 100,
                    now,
                    if i == 4 { RoutingState::DenyNewCall } else { RoutingState::Ready },
                ),
            )
        })
        .collect();
    store.set_pod_states(&ns, SVC, &states).await.unwrap();
    store.set_update_period(&ns, SVC, 60).await.unwrap();
    let snap = store.read_service(&ns, SVC).await.unwrap().snapshot(60_000, 150);
    assert_ne!(
        snap.good_pods(),
        snap.good_by_load().as_slice(),
        "the two orders must differ for the test to tell them apart"
    );
    for random in 0..20u32 {
        let placed = store.pick_and_link(&ns, &format!("v1-{random}"), SVC, params(random, 150)).await.unwrap();
        assert_eq!(placed.map(|p| p.pod), snap.pick(random), "v1 rule for random {random}");
    }
    // Published by a v1.1 writer, then the index goes (expiry, simulated): the v1 rule again.
    let plan = ServicePlan {
        namespace: ns.clone(),
        service: SVC.into(),
        period_secs: 60,
        cpu_factor: CpuFactor::from_ppm(0).unwrap(),
        replicas: 12,
        pods: states
            .iter()
            .map(|(i, s)| {
                let report = PodReport { load_state: s.weighted_load, waiting_tasks: 0, routing: s.routing };
                (*i, PodPlan { floor: Floor { routing: RoutingState::Ready, load: None }, report })
            })
            .collect(),
        workload: None,
    };
    publish_one(&store, &plan).await;
    let indexed = store.read_service(&ns, SVC).await.unwrap().snapshot(60_000, 150);
    let placed = store.pick_and_link(&ns, "indexed", SVC, params(1, 150)).await.unwrap().unwrap();
    assert_eq!(Some(placed.pod), indexed.pick_indexed(1), "the live index's rule");
    let _: () =
        redis::cmd("DEL").arg(Keys::state_index(&ns, SVC).unwrap()).query_async(&mut store.conn()).await.unwrap();
    let placed = store.pick_and_link(&ns, "expired", SVC, params(1, 150)).await.unwrap().unwrap();
    assert_eq!(Some(placed.pod), indexed.pick(1), "without the index: the v1 rule");
}

crate::both!(
    publish_agrees_with_the_model,
    bad_reports_and_plans_are_refused,
    ticks_and_reports_never_lift_the_floor,
    index_picks_are_in_the_full_judgement_set,
    v1_only_states_fall_back_to_the_full_judgement
);
