//! The read model against real Redis: classification by the Redis clock, best pod, background
//! refresh and routing-change notifications, garbage tolerance.

use routestate::core::ErrorChain;
use std::time::Duration;

use routestate::{
    client::{ClientConfig, ReadModel, RoutingChange},
    core::{Keys, PodState, RoutingState},
    store::Store,
};

use crate::support::{unique_name, wait_for};

const SVC: &str = "game";

pub async fn publish(store: &Store, ns: &str, svc: &str, states: &[(u32, u64, u64, RoutingState)]) {
    let now = store.server_time_ms().await.unwrap();
    let states: Vec<_> = states.iter().map(|&(i, load, age, r)| (i, PodState::new(load, now - age, r))).collect();
    store.set_pod_states(ns, svc, &states).await.unwrap();
}

fn config(refresh: Duration) -> ClientConfig {
    ClientConfig { refresh_period: refresh, seed: Some(7), ..ClientConfig::default() }
}

async fn classifies_and_picks(store: Store) {
    use RoutingState::*;
    let ns = unique_name("rm");
    publish(
        &store,
        &ns,
        SVC,
        &[
            (0, 10, 0, Ready),
            (1, 20, 0, DenyNewCall),
            (2, 30, 0, Shutdown),
            (3, 2_000, 0, Ready),
            (4, 5, 40_000, Ready),
        ],
    )
    .await;
    let rm = ReadModel::new(store.clone(), config(Duration::from_secs(3600))).unwrap();
    assert_eq!(
        rm.alive_pods(&ns, SVC).await.unwrap(),
        vec![0, 1, 2, 3],
        "pod 4 is older than the 30 s fallback window"
    );
    assert_eq!(rm.routable_pods(&ns, SVC).await.unwrap(), vec![0, 3]);
    for (pod, available) in [(0, true), (1, true), (2, false), (3, true), (4, false), (9, false)] {
        assert_eq!(rm.is_available(&ns, SVC, pod).await.unwrap(), available, "pod {pod}");
    }
    for _ in 0..20 {
        assert_eq!(rm.best_pod(&ns, SVC).await.unwrap(), Some(0), "pod 3 is out of range");
    }
    assert_eq!(rm.best_pod(&ns, "empty").await.unwrap(), None);
    assert_eq!(rm.services().len(), 2, "services load lazily");

    // A per-service range makes pod 3 good too; with the seeded source both get picked.
    let wide = ReadModel::new(
        store.clone(),
        ClientConfig { ranges: [(SVC.to_owned(), 5_000)].into(), ..config(Duration::from_secs(3600)) },
    )
    .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..64 {
        seen.insert(wide.best_pod(&ns, SVC).await.unwrap().unwrap());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 3]);
}

async fn freshness_is_judged_at_server_time_without_a_refresh(store: Store) {
    let ns = unique_name("fresh");
    store.set_update_period(&ns, SVC, 1).await.unwrap(); // window 3 s
    publish(&store, &ns, SVC, &[(0, 1, 2_000, RoutingState::Ready)]).await;
    let rm = ReadModel::new(store.clone(), config(Duration::from_secs(3600))).unwrap();
    assert!(rm.is_available(&ns, SVC, 0).await.unwrap(), "2 s old in a 3 s window");
    // No refresh happens (1 h period); the kept server time offset ages the state.
    wait_for("pod 0 to age out", Duration::from_secs(5), || {
        let rm = rm.clone();
        let ns = ns.clone();
        async move { if rm.is_available(&ns, SVC, 0).await.unwrap() { Err("still available".into()) } else { Ok(()) } }
    })
    .await;
    assert_eq!(rm.best_pod(&ns, SVC).await.unwrap(), None);
}

async fn background_refresh_notifies_changes(store: Store) {
    use RoutingState::*;
    let ns = unique_name("notify");
    publish(&store, &ns, SVC, &[(0, 1, 0, Ready), (1, 1, 0, Ready)]).await;
    let rm = ReadModel::new(store.clone(), config(Duration::from_millis(100))).unwrap();
    let mut events = rm.subscribe();
    assert!(rm.is_routable(&ns, SVC, 1).await.unwrap());
    publish(&store, &ns, SVC, &[(1, 1, 0, DenyNewCall)]).await;
    let want = RoutingChange { ns: ns.clone(), svc: SVC.into(), pod: 1, previous: Some(Ready), now: Some(DenyNewCall) };
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.ns == ns {
                return e;
            }
        }
    })
    .await
    .expect("a routing change within 5 s");
    assert_eq!(got, want);
    assert!(!rm.is_routable(&ns, SVC, 1).await.unwrap());
    assert!(rm.is_available(&ns, SVC, 1).await.unwrap());

    store.remove_pod_state(&ns, SVC, 1).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = events.recv().await.unwrap();
            if e.ns == ns {
                return e;
            }
        }
    })
    .await
    .expect("a second routing change within 5 s");
    assert_eq!(got, RoutingChange { previous: Some(DenyNewCall), now: None, ..want });
}

async fn garbage_is_skipped(store: Store) {
    let ns = unique_name("rmgarbage");
    let key = Keys::state(&ns, SVC).unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("zz")
        .arg("1-1-0")
        .arg("3")
        .arg("not-a-state")
        .arg("4")
        .arg("1-2-3-4")
        .query_async(&mut store.conn())
        .await
        .unwrap();
    publish(&store, &ns, SVC, &[(5, 1, 0, RoutingState::Ready)]).await;
    let rm = ReadModel::new(store.clone(), config(Duration::from_secs(3600))).unwrap();
    assert_eq!(rm.best_pod(&ns, SVC).await.unwrap(), Some(5));
    let s = rm.service(&ns, SVC).await.unwrap();
    assert_eq!(s.snapshot.skipped.len(), 3);
}

async fn workload_readiness_uses_the_service_window(store: Store) {
    use routestate::core::{Workload, WorkloadState};
    let ns = unique_name("workload");
    let rm = ReadModel::new(store.clone(), config(Duration::from_secs(3600))).unwrap();
    assert!(!rm.is_workload_ready(&ns, SVC).await.unwrap(), "no workload value");
    let now = store.server_time_ms().await.unwrap();
    let mut w = Workload {
        state: WorkloadState::Ready,
        leader: "game-0".into(),
        replicas: 1,
        ready_pods: 1,
        routable_pods: 1,
        draining_pods: 0,
        total_weighted_load: 0,
        updated_at_millis: now,
    };
    store.set_workload(&ns, SVC, &w).await.unwrap();
    assert!(rm.is_workload_ready(&ns, SVC).await.unwrap());
    w.updated_at_millis = now - 40_000; // older than the 30 s fallback window
    store.set_workload(&ns, SVC, &w).await.unwrap();
    assert!(!rm.is_workload_ready(&ns, SVC).await.unwrap());
    w.updated_at_millis = now;
    w.state = WorkloadState::NotReady;
    store.set_workload(&ns, SVC, &w).await.unwrap();
    assert!(!rm.is_workload_ready(&ns, SVC).await.unwrap());
    let _: () = redis::cmd("SET")
        .arg(Keys::workload(&ns, SVC).unwrap())
        .arg("{oops")
        .query_async(&mut store.conn())
        .await
        .unwrap();
    let err = rm.is_workload_ready(&ns, SVC).await.unwrap_err().chain().to_string();
    assert!(err.contains("get_workload") && err.contains(&Keys::workload(&ns, SVC).unwrap()), "{err}");
}

crate::both!(
    classifies_and_picks,
    freshness_is_judged_at_server_time_without_a_refresh,
    background_refresh_notifies_changes,
    garbage_is_skipped,
    workload_readiness_uses_the_service_window
);
