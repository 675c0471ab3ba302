//! The operator against the real control plane and Redis: publishing, per-pod overrides, load
//! annotations, the pod lifecycle, scale-down, leader pod 0, status, Events and the finalizer.

use std::time::{Duration, Instant};

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod, events::v1::Event};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use routestate::{
    core::{Keys, RoutingState, Workload, WorkloadState},
    operator::RouteState,
};

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        operator::{install_crd, redis_now_ms, start_operator, states, wait_routing},
    },
};

const TIMEOUT: Duration = Duration::from_secs(60);
const PERIOD_SECS: u64 = 2;

fn routing_of(s: &std::collections::BTreeMap<u32, routestate::core::PodState>) -> Vec<(u32, RoutingState)> {
    s.iter().map(|(i, p)| (*i, p.routing)).collect()
}

async fn condition(api: &Api<RouteState>, name: &str, ty: &str) -> Option<String> {
    let rs = api.get(name).await.ok()?;
    rs.status?.conditions.into_iter().find(|c| c.type_ == ty).map(|c| c.status)
}

/// Holds a pod in Terminating with a finalizer of the test's own (kwok deletes pods at once).
async fn hold_and_delete(pods: &Api<Pod>, name: &str) {
    let patch = serde_json::json!({"metadata": {"finalizers": ["routestate.dev/test-hold"]}});
    pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    pods.delete(name, &DeleteParams::default()).await.unwrap();
}

async fn release(pods: &Api<Pod>, name: &str) {
    let patch = serde_json::json!({"metadata": {"finalizers": null}});
    pods.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_publishes_and_follows_the_pod_lifecycle() {
    let mut steps = support::Steps::default();
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-core").await;
    let operator = start_operator(&client, &ns.name, None).await;
    let mut redis = support::redis().await;
    let sts_api: Api<StatefulSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let rs_api: Api<RouteState> = ns.api();
    sts_api.create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
        "metadata": {"name": "web"},
        "spec": {"updatePeriodSeconds": PERIOD_SECS}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();

    steps.enter("publish: 3 READY fields with fresh timestamps and the period");
    // 3 READY fields with fresh timestamps, the period in the meta hash.
    let window_ms = 3 * PERIOD_SECS * 1000;
    let first = support::wait_for("3 READY fields", TIMEOUT, || {
        let mut redis = redis.clone();
        let ns = ns.name.clone();
        async move {
            let s = states(&mut redis, &ns, "web").await;
            let now = redis_now_ms(&mut redis).await;
            let want = vec![(0, RoutingState::Ready), (1, RoutingState::Ready), (2, RoutingState::Ready)];
            if routing_of(&s) == want && s.values().all(|p| p.is_fresh(now, window_ms)) {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;
    let meta: String = redis::cmd("HGET")
        .arg(Keys::state_meta(&ns.name, "web").unwrap())
        .arg("updatePeriodSeconds")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(meta, PERIOD_SECS.to_string());
    steps.enter("heartbeats advance the timestamps");
    // Heartbeats: timestamps advance without any change.
    support::wait_for("a heartbeat", Duration::from_secs(3 * PERIOD_SECS), || {
        let mut redis = redis.clone();
        let ns = ns.name.clone();
        let before = first[&0].updated_at_ms;
        async move {
            let s = states(&mut redis, &ns, "web").await;
            if s.get(&0).is_some_and(|p| p.updated_at_ms > before) { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;

    steps.enter("status: Ready 3/3, leader web-0");
    // Status: Ready, 3/3, leader web-0; the workload aggregate on behalf of web-0.
    support::wait_for("status Ready 3/3", TIMEOUT, || async {
        let rs = rs_api.get("web").await.map_err(|e| e.to_string())?;
        let st = rs.status.clone().ok_or("no status")?;
        let ready = st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        if ready && st.ready_summary.as_deref() == Some("3/3") && st.leader.as_deref() == Some("web-0") {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    steps.enter("no churn: heartbeats leave the RouteState untouched; the workload aggregate");
    // No churn: two more heartbeats leave the RouteState (status included) untouched.
    let rv = rs_api.get("web").await.unwrap().metadata.resource_version;
    let mut seen = states(&mut redis, &ns.name, "web").await[&0].updated_at_ms;
    for beat in 0..2 {
        seen = support::wait_for(&format!("heartbeat {beat}"), Duration::from_secs(3 * PERIOD_SECS), || {
            let mut redis = redis.clone();
            let ns = ns.name.clone();
            async move {
                let s = states(&mut redis, &ns, "web").await;
                match s.get(&0) {
                    Some(p) if p.updated_at_ms > seen => Ok(p.updated_at_ms),
                    other => Err(format!("{other:?}")),
                }
            }
        })
        .await;
    }
    assert_eq!(rs_api.get("web").await.unwrap().metadata.resource_version, rv, "heartbeats changed the RouteState");
    let workload: String =
        redis::cmd("GET").arg(Keys::workload(&ns.name, "web").unwrap()).query_async(&mut redis).await.unwrap();
    let workload = Workload::parse(&workload).unwrap();
    assert_eq!((workload.state, workload.leader.as_str(), workload.replicas), (WorkloadState::Ready, "web-0", 3));

    steps.enter("kubectl get routestates prints the columns");
    // kubectl get routestates prints the columns.
    let out = std::process::Command::new("kubectl")
        .args(["get", "routestates", "-n", &ns.name])
        .env("KUBECONFIG", std::env::var("KUBECONFIG").unwrap())
        .output()
        .expect("running kubectl (is $ROUTESTATE_TESTBIN on PATH? source .cluster/env)");
    let text = String::from_utf8_lossy(&out.stdout);
    let header: Vec<&str> = text.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "STATEFULSET", "ROUTING", "READY", "ROUTABLE", "DRAINING", "WORKLOAD", "LEADER", "AGE"],
        "{text}"
    );
    let row: Vec<&str> = text.lines().nth(1).unwrap_or_default().split_whitespace().collect();
    assert_eq!(&row[..8], ["web", "web", "Ready", "3/3", "3", "0", "Ready", "web-0"], "{text}");

    steps.enter("override: pods[1] DenyNewCall reaches Redis");
    // pods[1].routingState: DenyNewCall reaches Redis (the deadline is a liveness bound; the
    // latency itself is a benchmark figure, `make bench`, and only printed here).
    let patch = serde_json::json!({"spec": {"pods": [{"index": 1, "routingState": "DenyNewCall"}]}});
    let started = Instant::now();
    rs_api.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    wait_routing(&redis, &ns.name, "web", 1, RoutingState::DenyNewCall, "pod 1 DENY_NEW_CALL", Duration::from_secs(30))
        .await;
    eprintln!("MEASURED: spec patch -> Redis latency {:?}", started.elapsed());

    steps.enter("load annotations change the weighted load");
    // Load annotations change the weighted value: 0.7 × 10 + 0.3 × 100 = 37.
    let patch = serde_json::json!({"metadata": {"annotations": {"routestate.dev/load": "100", "routestate.dev/waiting-tasks": "10"}}});
    pods.patch("web-2", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    support::wait_for("pod 2 weighted load 37", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        let ns = ns.name.clone();
        async move {
            let s = states(&mut redis, &ns, "web").await;
            if s.get(&2).map(|p| p.weighted_load) == Some(37) { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;

    steps.enter("a malformed annotation is a Warning Event; publishing goes on");
    // A malformed annotation: a Warning Event naming the pod and value; publishing goes on.
    let patch = serde_json::json!({"metadata": {"annotations": {"routestate.dev/load": "lots"}}});
    pods.patch("web-0", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let events: Api<Event> = ns.api();
    support::wait_for("RoutingChanged event", Duration::from_secs(20), || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("RoutingChanged")
                    && e.note.as_deref() == Some("pod web-1 (index 1) of service web: READY -> DENY_NEW_CALL")
            })
            .map(|_| ())
            .ok_or_else(|| format!("{:?}", list.items.iter().map(|e| (&e.reason, &e.note)).collect::<Vec<_>>()))
    })
    .await;
    support::wait_for("MalformedAnnotation event", Duration::from_secs(20), || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        list.items
            .iter()
            .find(|e| {
                e.reason.as_deref() == Some("MalformedAnnotation")
                    && e.type_.as_deref() == Some("Warning")
                    && e.note.as_deref().is_some_and(|n| n.contains("web-0") && n.contains("\"lots\""))
            })
            .map(|_| ())
            .ok_or_else(|| format!("{:?}", list.items.iter().map(|e| (&e.reason, &e.note)).collect::<Vec<_>>()))
    })
    .await;
    assert!(states(&mut redis, &ns.name, "web").await.contains_key(&0));
    steps.enter("no ReconcileFailed Event in a healthy life");
    // A healthy life so far: no reconcile failed (a finalizer patch racing the watch right
    // after creation is retried quietly, not reported to users).
    let failures: Vec<_> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("ReconcileFailed"))
        .map(|e| e.note)
        .collect();
    assert!(failures.is_empty(), "ReconcileFailed events: {failures:?}");

    steps.enter("a terminating pod drains, READY again once recreated");
    // Deleting pod 2 (held in Terminating): DENY_NEW_CALL at once, READY again once recreated.
    let old_uid = pods.get("web-2").await.unwrap().metadata.uid;
    hold_and_delete(&pods, "web-2").await;
    wait_routing(
        &redis,
        &ns.name,
        "web",
        2,
        RoutingState::DenyNewCall,
        "terminating pod 2 DENY_NEW_CALL",
        Duration::from_secs(10),
    )
    .await;
    steps.enter("heartbeats go on while a pod terminates");
    // Still heartbeated while terminating.
    let t0 = states(&mut redis, &ns.name, "web").await[&2].updated_at_ms;
    support::wait_for("terminating pod 2 heartbeated", Duration::from_secs(3 * PERIOD_SECS), || {
        let mut redis = redis.clone();
        let ns = ns.name.clone();
        async move {
            let s = states(&mut redis, &ns, "web").await;
            match s.get(&2) {
                Some(p) if p.updated_at_ms > t0 && p.routing == RoutingState::DenyNewCall => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    release(&pods, "web-2").await;
    support::wait_for("recreated pod 2 READY", TIMEOUT, || {
        let mut redis = redis.clone();
        let ns = ns.name.clone();
        let pods = pods.clone();
        let old_uid = old_uid.clone();
        async move {
            let p = pods.get_opt("web-2").await.map_err(|e| e.to_string())?.ok_or("absent")?;
            if p.metadata.uid == old_uid {
                return Err("old pod".into());
            }
            let s = states(&mut redis, &ns, "web").await;
            if s.get(&2).map(|p| p.routing) == Some(RoutingState::Ready) { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;

    steps.enter("pod 0 terminating: LeaderAvailable False, then True");
    // Pod 0 terminating → LeaderAvailable False; recreated → True.
    hold_and_delete(&pods, "web-0").await;
    support::wait_for("LeaderAvailable False", Duration::from_secs(20), || async {
        match condition(&rs_api, "web", "LeaderAvailable").await.as_deref() {
            Some("False") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let st = rs_api.get("web").await.unwrap().status.unwrap();
    assert_eq!(st.leader, None);
    assert_eq!(st.workload_state.as_deref(), Some("Unknown"));
    release(&pods, "web-0").await;
    support::wait_for("LeaderAvailable True", TIMEOUT, || async {
        match condition(&rs_api, "web", "LeaderAvailable").await.as_deref() {
            Some("True") => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    steps.enter("scale down to 2 removes field 2");
    // Scale down to 2 → field 2 removed.
    let patch = serde_json::json!({"spec": {"replicas": 2}});
    sts_api.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    support::wait_for("field 2 removed", TIMEOUT, || {
        let mut redis = redis.clone();
        let ns = ns.name.clone();
        async move {
            let s = states(&mut redis, &ns, "web").await;
            if s.keys().copied().collect::<Vec<_>>() == [0, 1] { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;

    steps.enter("deleting the RouteState removes its keys and keeps links");
    // Deleting the RouteState removes its keys and leaves links alone.
    let link_hash = Keys::link_hash(&ns.name, "user-1").unwrap();
    let link = Keys::link(&ns.name, "user-1", "web").unwrap();
    redis::pipe()
        .cmd("HSET")
        .arg(&link_hash)
        .arg("web")
        .arg("1")
        .ignore()
        .cmd("SET")
        .arg(&link)
        .arg("1")
        .ignore()
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    rs_api.delete("web", &DeleteParams::default()).await.unwrap();
    support::wait_for("RouteState gone", Duration::from_secs(20), || async {
        match rs_api.get_opt("web").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|o| o.map(|r| r.metadata.finalizers)))),
        }
    })
    .await;
    for key in [
        Keys::state(&ns.name, "web").unwrap(),
        Keys::state_meta(&ns.name, "web").unwrap(),
        Keys::workload(&ns.name, "web").unwrap(),
    ] {
        let exists: bool = redis::cmd("EXISTS").arg(&key).query_async(&mut redis).await.unwrap();
        assert!(!exists, "{key} still exists");
    }
    let kept: (String, String) = redis::pipe()
        .cmd("HGET")
        .arg(&link_hash)
        .arg("web")
        .cmd("GET")
        .arg(&link)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(kept, ("1".to_owned(), "1".to_owned()), "links must survive the RouteState's deletion");

    let metrics = operator.metrics().render();
    assert!(metrics.contains("routestate_reconciles_total"), "{metrics}");
    operator.shutdown().await.unwrap();
}
