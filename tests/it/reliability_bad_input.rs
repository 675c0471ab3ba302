//! Bad input: what operator_crd and operator_core do not already cover.
//! - more invalid RouteStates, rejected by the API server naming the field;
//! - garbage pod annotations of every kind: a Warning Event each, reconcile goes on;
//! - garbage and oversized values in the state hash, workload key and link keys: readers skip
//!   or report them naming the key, nothing panics, nothing stored is changed by a reader;
//! - CLI misuse: a clear message naming the bad input, exit code 2.

use routestate::core::ErrorChain;
use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod, events::v1::Event};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams},
};
use routestate::{
    client::{Client, ClientConfig},
    core::{Keys, PodState, RoutingState},
    operator::RouteState,
    store::{PickParams, Store},
};

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        operator::{install_crd, start_operator, states},
        unique_name,
    },
};

#[tokio::test]
async fn more_invalid_routestates_are_rejected_naming_the_field() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "bad-rs").await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &ApiResource::erase::<RouteState>(&()));
    let long = "a".repeat(254);
    let cases = [
        // Types.
        (serde_json::json!({"cpuFactor": "high"}), "spec.cpuFactor"),
        (serde_json::json!({"updatePeriodSeconds": 1.5}), "spec.updatePeriodSeconds"),
        (serde_json::json!({"updatePeriodSeconds": "10"}), "spec.updatePeriodSeconds"),
        (serde_json::json!({"routingState": 1}), "spec.routingState"),
        (serde_json::json!({"routingState": "ready"}), "spec.routingState"),
        (serde_json::json!({"pods": {"index": 1}}), "spec.pods"),
        (serde_json::json!({"pods": [{"routingState": "Ready"}]}), "spec.pods[0].index"),
        // Ranges beyond the upper bounds.
        (serde_json::json!({"pods": [{"index": 1_000_001, "routingState": "Ready"}]}), "spec.pods[0].index"),
        (serde_json::json!({"pods": [{"index": 1, "loadState": 1_000_000_000_001_i64}]}), "spec.pods[0].loadState"),
        // Names: empty, too long, whitespace.
        (serde_json::json!({"statefulSet": ""}), "spec.statefulSet"),
        (serde_json::json!({"statefulSet": long}), "spec.statefulSet"),
        (serde_json::json!({"serviceName": ""}), "spec.serviceName"),
        (serde_json::json!({"serviceName": "a b"}), "spec.serviceName"),
        (serde_json::json!({"serviceName": "{x"}), "spec.serviceName"),
    ];
    for (i, (spec, field)) in cases.into_iter().enumerate() {
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "metadata": {"name": format!("bad-{i}")}, "spec": spec
        }))
        .unwrap();
        let err = api
            .create(&PostParams::default(), &obj)
            .await
            .map(|_| ())
            .expect_err(&format!("the API server accepted {spec}"))
            .to_string();
        assert!(err.contains(field), "rejection of {spec} does not name {field}: {err}");
    }
}

/// Stored values a reader must survive: empty, signs, overflow, wrong shapes, huge, and with
/// `non_utf8` also bytes that are not UTF-8.
fn garbage_values(non_utf8: bool) -> Vec<Vec<u8>> {
    let mut v = vec![
        b"".to_vec(),
        b"-1".to_vec(),
        b"abc".to_vec(),
        b"1-2".to_vec(),
        b"1-2-9".to_vec(),
        b"99999999999999999999999-1-0".to_vec(),
        b"007".to_vec(),
        b"{\"not\":\"a pod\"}".to_vec(),
        vec![b'7'; 1 << 20],
        "ünïcødé-☃-0".as_bytes().to_vec(),
    ];
    if non_utf8 {
        v.push(vec![0xff, 0xfe, 0x00, b'1']);
    }
    v
}

async fn raw_dump(store: &Store, keys: &[String]) -> BTreeMap<String, redis::Value> {
    let mut conn = store.conn();
    let mut out = BTreeMap::new();
    for k in keys {
        let v: redis::Value = redis::cmd("DUMP").arg(k).query_async(&mut conn).await.unwrap();
        out.insert(k.clone(), v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_redis_is_skipped_and_nothing_stored_is_lost() {
    garbage_in_redis(false).await;
}

/// One state-hash entry that is not UTF-8 must be skipped like any other garbage, not make
/// `read_service` fail as a whole (which would blind every client of the service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_garbage_in_redis_is_skipped() {
    garbage_in_redis(true).await;
}

async fn garbage_in_redis(non_utf8: bool) {
    let store = support::store::standalone().await;
    let ns = unique_name("garbage");
    let mut conn = store.conn();
    let now = store.server_time_ms().await.unwrap();
    let (state, meta, workload) =
        (Keys::state(&ns, "svc").unwrap(), Keys::state_meta(&ns, "svc").unwrap(), Keys::workload(&ns, "svc").unwrap());

    // Two good pods, and garbage both as fields and as values.
    store
        .set_pod_states(
            &ns,
            "svc",
            &[(1, PodState::new(5, now, RoutingState::Ready)), (2, PodState::new(9, now, RoutingState::Ready))],
        )
        .await
        .unwrap();
    for (i, v) in garbage_values(non_utf8).into_iter().enumerate() {
        let _: () = redis::cmd("HSET").arg(&state).arg(100 + i).arg(&v).query_async(&mut conn).await.unwrap();
        let _: () =
            redis::cmd("HSET").arg(&state).arg(&v).arg(format!("1-{now}-0")).query_async(&mut conn).await.unwrap();
    }
    let _: () =
        redis::cmd("HSET").arg(&meta).arg("updatePeriodSeconds").arg("ten").query_async(&mut conn).await.unwrap();
    let _: () = redis::cmd("SET").arg(&workload).arg(vec![b'{'; 1 << 20]).query_async(&mut conn).await.unwrap();
    // Garbage links: one per garbage value, for uid g<i>, plus garbage in a persistent hash.
    let mut link_keys = Vec::new();
    for (i, v) in garbage_values(non_utf8).into_iter().enumerate() {
        let k = Keys::link(&ns, &format!("g{i}"), "svc").unwrap();
        let _: () = redis::cmd("SET").arg(&k).arg(&v).query_async(&mut conn).await.unwrap();
        link_keys.push(k);
        let h = Keys::link_hash(&ns, &format!("g{i}")).unwrap();
        let _: () =
            redis::cmd("HSET").arg(&h).arg("svc").arg(&v).arg("other").arg("3").query_async(&mut conn).await.unwrap();
        link_keys.push(h);
    }
    let mut all_keys = vec![state.clone(), meta.clone(), workload.clone()];
    all_keys.extend(link_keys.iter().cloned());
    let before = raw_dump(&store, &all_keys).await;

    // The state readers: good pods classified, garbage skipped, the pick is a good pod.
    let read = store.read_service(&ns, "svc").await.unwrap_or_else(|e| panic!("read_service over garbage: {e}"));
    let snap = read.snapshot(30_000, 500);
    assert_eq!(snap.good_pods(), &[1, 2], "garbage must not be routable");
    assert!(!snap.skipped.is_empty(), "garbage entries are reported as skipped");
    let params = PickParams { temp_ttl_secs: 60, random: 1, range: 500, fallback_window_ms: 30_000 };
    let placed = store.pick_and_link(&ns, "fresh-user", "svc", params).await.unwrap();
    assert!(matches!(placed.map(|p| p.pod), Some(1 | 2)), "{placed:?}");
    let client = Client::new(store.clone(), ClientConfig::default()).unwrap();
    let best = client.best_pod(&ns, "svc").await.unwrap_or_else(|e| panic!("best_pod over garbage: {e}"));
    assert!(matches!(best, Some(1 | 2)), "{best:?}");
    // Workload: an error naming the key, no panic.
    let err = store.get_workload(&ns, "svc").await.unwrap_err().chain().to_string();
    assert!(err.contains(&workload) && err.len() < 2000, "workload error: {err:.300}");

    // Link readers, each with one exact outcome per garbage link (every one of them exists, so
    // none reads as "no link"; "007" and a million 7s look numeric but are not canonical):
    // - GET: an error naming the key, bounded in size;
    // - the persistent hash: the garbage entry skipped, the good one next to it kept;
    // - get-if-persist (a script): -1, i.e. no persistent link;
    // - the batch read: every garbage link skipped.
    for i in 0..garbage_values(non_utf8).len() {
        let uid = format!("g{i}");
        let key = Keys::link(&ns, &uid, "svc").unwrap();
        match store.get_linked_pod(&ns, &uid, "svc").await {
            Err(e) => {
                let m = e.to_string();
                assert!(m.contains(&key) && m.len() < 2000, "link error for {uid}: {m:.300}");
            }
            other => panic!("garbage link of {uid} read as {other:?}"),
        }
        let services = store.get_link_services(&ns, &uid).await.unwrap_or_else(|e| panic!("{uid}: {e}"));
        assert_eq!(services, BTreeMap::from([("other".to_owned(), 3)]), "persistent hash of {uid}");
        let persist = store.get_linked_pod_if_persist(&ns, &uid, "svc").await;
        assert_eq!(persist.unwrap_or_else(|e| panic!("{uid}: {e}")), None, "get-if-persist of {uid}");
    }
    let uids: Vec<String> = (0..garbage_values(non_utf8).len()).map(|i| format!("g{i}")).collect();
    let batch = store.batch_get_linked_pod(&ns, &uids, "svc").await.unwrap_or_else(|e| panic!("batch read: {e}"));
    assert!(batch.is_empty(), "garbage links read as pods by the batch read: {batch:?}");

    // Readers changed nothing (the new placement wrote only its own key).
    assert_eq!(raw_dump(&store, &all_keys).await, before, "a reader modified stored data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_pod_annotations_warn_and_reconcile_goes_on() {
    garbage_pod_annotations(false).await;
}

/// kube's `Recorder` keys its event cache on (type, action, reason, reporter, regarding,
/// related), not on the note: unless each pod gets an Event of its own, every MalformedAnnotation
/// after the first would only bump the first Event's series and users would never see which other
/// pods are bad.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_with_garbage_annotations_is_named_in_a_warning() {
    garbage_pod_annotations(true).await;
}

async fn garbage_pod_annotations(every_pod_named: bool) {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "bad-ann").await;
    let operator = start_operator(&client, &ns.name, None).await;
    let mut redis = support::redis().await;
    let sts_api: Api<StatefulSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    let rs_api: Api<RouteState> = ns.api();
    sts_api.create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
        "metadata": {"name": "web"}, "spec": {"updatePeriodSeconds": 2}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();
    support::wait_for("3 pods published", Duration::from_secs(60), || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move {
            let s = states(&mut redis, &ns, "web").await;
            if s.len() == 3 { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;

    // Each pod gets a different kind of garbage; pod 2 also a valid load next to it.
    let big = "9".repeat(100_000);
    let garbage = [
        ("web-0", serde_json::json!({"routestate.dev/routing-state": "Drain", "routestate.dev/waiting-tasks": "-3"})),
        ("web-1", serde_json::json!({"routestate.dev/load": big, "routestate.dev/routing-state": "☃"})),
        ("web-2", serde_json::json!({"routestate.dev/waiting-tasks": "1e9", "routestate.dev/load": "40"})),
    ];
    for (pod, ann) in &garbage {
        let patch = serde_json::json!({"metadata": {"annotations": ann}});
        pods.patch(pod, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }
    let events: Api<Event> = ns.api();
    let wanted = if every_pod_named { 3 } else { 1 };
    support::wait_for("MalformedAnnotation Warnings", Duration::from_secs(30), || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let warned: Vec<&str> = ["web-0", "web-1", "web-2"]
            .into_iter()
            .filter(|p| {
                list.items.iter().any(|e| {
                    e.reason.as_deref() == Some("MalformedAnnotation")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note.as_deref().is_some_and(|n| n.contains(&format!("pod {p}:")))
                })
            })
            .collect();
        if warned.len() >= wanted {
            Ok(())
        } else {
            let notes: Vec<String> = list
                .items
                .iter()
                .map(|e| {
                    format!(
                        "{:?} x{:?}: {:.300}",
                        e.reason,
                        e.series.as_ref().map(|s| s.count),
                        e.note.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            Err(format!("warned about {warned:?}; events: {notes:#?}"))
        }
    })
    .await;
    // Event notes stay short even for a 100 kB value.
    let list = events.list(&ListParams::default()).await.unwrap();
    for e in &list.items {
        let n = e.note.as_deref().unwrap_or_default();
        assert!(n.len() <= 1024, "event note of {} bytes: {:.200}", n.len(), n);
    }
    // Reconcile goes on: every pod still heartbeated, the valid load used, a later valid change
    // still reaches Redis.
    let patch = serde_json::json!({"spec": {"pods": [{"index": 1, "routingState": "Shutdown"}]}});
    rs_api.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    support::wait_for("pod 1 SHUTDOWN, 3 pods fresh", Duration::from_secs(20), || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move {
            let s = states(&mut redis, &ns, "web").await;
            let now = support::operator::redis_now_ms(&mut redis).await;
            let ok = s.len() == 3
                && s.values().all(|p| p.is_fresh(now, 6000))
                && s.get(&1).map(|p| p.routing) == Some(RoutingState::Shutdown);
            if ok { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;
    let s = states(&mut redis, &ns.name, "web").await;
    // web-2: waiting-tasks unparsable → 0, load 40: trunc(0.3 × 40) = 12.
    assert_eq!(s[&2].weighted_load, 12, "{s:?}");
    operator.shutdown().await.unwrap();
}

#[tokio::test]
async fn cli_misuse_is_a_clear_error_with_exit_code_2() {
    let bin = env!("CARGO_BIN_EXE_routestate");
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["frobnicate"], "frobnicate"),
        (&["crd", "--no-such-flag"], "--no-such-flag"),
        (&["run", "--http-addr", "not-an-address"], "not-an-address"),
        (&["run", "--redis-url", "redis://x", "--lease-duration-seconds", "1"], "lease-duration-seconds"),
        (&["run", "--redis-url", "redis://x", "--redis-timeout-ms", "0"], "redis-timeout-ms"),
        (&["run", "--redis-url", "redis://x", "--log-format", "xml"], "xml"),
        (&["links", "get", "no-slash-here", "u1", "--redis-url", "redis://x"], "no-slash-here"),
        (&["links", "set", "ns/svc", "u1", "-3", "--redis-url", "redis://x"], "-3"),
        (&["links", "set", "ns/svc", "u1", "4294967296", "--redis-url", "redis://x"], "4294967296"),
        (&["links", "set", "ns/svc", "u1", "1", "--persistent", "--ttl", "5", "--redis-url", "redis://x"], "--ttl"),
        (&["pick", "ns/svc"], "--redis-url"),
    ];
    for (args, named) in cases {
        let out = std::process::Command::new(bin)
            .args(*args)
            .env_remove("REDIS_URL")
            .env_remove("KUBECONFIG")
            .output()
            .expect("running routestate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "routestate {args:?}: exit {:?}, stderr: {stderr}", out.status);
        assert!(stderr.contains(named), "routestate {args:?}: stderr does not name {named:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "routestate {args:?} panicked: {stderr}");
    }
}
