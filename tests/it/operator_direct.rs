//! The direct transport end to end with the operator: pods report straight to Redis, placements
//! see the report at once and the operator's heartbeat keeps it, and whatever Kubernetes knows
//! (a drain in the RouteState, a terminating pod, an unready pod) is a floor no report lifts.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use routestate::{
    core::{PodReport, RoutingState},
    operator::RouteState,
    server::{RedisTransport, ServerConfig, ServerDriver},
    store::{PickParams, RedisOptions, ReportOutcome, Store},
};

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        operator::{install_crd, redis_now_ms, start_operator, states, wait_routing},
        wait_for,
    },
};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (TestNamespace, routestate::operator::Operator, Store, redis::aio::ConnectionManager) {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, prefix).await;
    let operator = start_operator(&client, &ns.name, None).await;
    ns.api::<StatefulSet>().create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
        "metadata": {"name": "web"}, "spec": {"updatePeriodSeconds": 1}
    }))
    .unwrap();
    ns.api::<RouteState>().create(&PostParams::default(), &rs).await.unwrap();
    let redis = support::redis().await;
    wait_for("3 pods published", TIMEOUT, || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move {
            let s = states(&mut redis, &ns, "web").await;
            if s.len() == 3 && s.values().all(|p| p.routing == RoutingState::Ready) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    let store = Store::connect(&RedisOptions::standalone(support::redis_url())).await.unwrap();
    (ns, operator, store, redis)
}

fn driver(store: &Store, ns: &str, pod: u32) -> ServerDriver<RedisTransport> {
    let transport = RedisTransport::new(store.clone(), ns, "web", pod).unwrap();
    ServerDriver::new(store.clone(), transport, ServerConfig::new(ns, "web", pod)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reports_are_published_at_once_and_kept_by_the_heartbeat() {
    let (ns, operator, store, mut redis) = setup("direct").await;
    let d = driver(&store, &ns.name, 1);
    d.start().await.unwrap();
    // No waiting: the report is published by the call itself. 0.7 × 10 + 0.3 × 900 = 277.
    d.set_waiting_tasks(10).await.unwrap();
    d.set_load_state(900).await.unwrap();
    let s = states(&mut redis, &ns.name, "web").await;
    assert_eq!((s[&1].weighted_load, s[&1].routing), (277, RoutingState::Ready), "{s:?}");
    // A placement sees it: with range 0 only the least loaded pods are good.
    let params = |random| PickParams { temp_ttl_secs: 60, random, range: 0, fallback_window_ms: 30_000 };
    for random in 0..20 {
        let placed = store.pick_and_link(&ns.name, &format!("u{random}"), "web", params(random)).await.unwrap();
        assert!(matches!(placed.map(|p| p.pod), Some(0 | 2)), "placed on the loaded pod: {placed:?}");
    }
    // Later heartbeats of the operator keep the pod's report (they do not reset it to its
    // annotations): wait for a heartbeat stamped after the report.
    let reported_at = redis_now_ms(&mut redis).await;
    wait_for("a heartbeat after the report", TIMEOUT, || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move {
            let s = states(&mut redis, &ns, "web").await;
            if s[&0].updated_at_ms > reported_at && s[&1].updated_at_ms > reported_at {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    let s = states(&mut redis, &ns.name, "web").await;
    assert_eq!(s[&1].weighted_load, 277, "the heartbeat dropped the pod's report: {s:?}");
    // The pod drains itself: DENY_NEW_CALL at once, and the status counts it.
    d.set_routing_state(RoutingState::DenyNewCall).await.unwrap();
    assert_eq!(states(&mut redis, &ns.name, "web").await[&1].routing, RoutingState::DenyNewCall);
    let rs_api: Api<RouteState> = ns.api();
    wait_for("the status counts the self-drained pod", TIMEOUT, || async {
        let st = rs_api.get("web").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        if (st.routable_pods, st.draining_pods) == (2, 1) { Ok(()) } else { Err(format!("{st:?}")) }
    })
    .await;
    operator.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_kubernetes_knows_is_a_floor_no_report_lifts() {
    let (ns, operator, store, redis) = setup("floor").await;
    let ready = PodReport { load_state: 0, waiting_tasks: 0, routing: RoutingState::Ready };

    // 1. A drain in the RouteState while pod 1 keeps reporting READY.
    let d1 = driver(&store, &ns.name, 1);
    d1.start().await.unwrap();
    let rs_api: Api<RouteState> = ns.api();
    let drain = serde_json::json!({"spec": {"pods": [{"index": 1, "routingState": "DenyNewCall"}]}});
    rs_api.patch("web", &PatchParams::default(), &Patch::Merge(&drain)).await.unwrap();
    wait_routing(&redis, &ns.name, "web", 1, RoutingState::DenyNewCall, "pod 1 drained", TIMEOUT).await;
    assert_eq!(
        store.report_pod_state(&ns.name, "web", 1, &ready).await.unwrap(),
        ReportOutcome::Published { routing: RoutingState::DenyNewCall, weighted_load: 0 },
        "a READY report lifted the RouteState's drain"
    );

    // 2. A terminating pod (a finalizer holds it) reporting READY: DENY_NEW_CALL.
    let pods: Api<Pod> = ns.api();
    let hold = serde_json::json!({"metadata": {"finalizers": ["routestate.dev/test-hold"]}});
    pods.patch("web-2", &PatchParams::default(), &Patch::Merge(&hold)).await.unwrap();
    pods.delete("web-2", &DeleteParams::default()).await.unwrap();
    wait_routing(&redis, &ns.name, "web", 2, RoutingState::DenyNewCall, "terminating pod 2 drained", TIMEOUT).await;
    assert_eq!(
        store.report_pod_state(&ns.name, "web", 2, &ready).await.unwrap(),
        ReportOutcome::Published { routing: RoutingState::DenyNewCall, weighted_load: 0 },
        "a READY report lifted a terminating pod"
    );

    // 3. An unready pod reporting READY: not published at all (its report is only stored).
    let unready = serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}});
    pods.patch_status("web-0", &PatchParams::default(), &Patch::Merge(&unready)).await.unwrap();
    wait_for("unready pod 0 unpublished", TIMEOUT, || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move {
            let s = states(&mut redis, &ns, "web").await;
            if s.contains_key(&0) { Err(format!("{s:?}")) } else { Ok(()) }
        }
    })
    .await;
    assert_eq!(store.report_pod_state(&ns.name, "web", 0, &ready).await.unwrap(), ReportOutcome::Stored);
    let mut conn = redis.clone();
    assert!(!states(&mut conn, &ns.name, "web").await.contains_key(&0), "an unready pod's report was published");
    // None of them takes a new user.
    let params = PickParams { temp_ttl_secs: 60, random: 0, range: 500, fallback_window_ms: 30_000 };
    assert_eq!(store.pick_and_link(&ns.name, "newcomer", "web", params).await.unwrap(), None);

    let release = serde_json::json!({"metadata": {"finalizers": null}});
    pods.patch("web-2", &PatchParams::default(), &Patch::Merge(&release)).await.unwrap();
    operator.shutdown().await.unwrap();
}
