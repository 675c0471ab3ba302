//! The operator publishing to a 3-master Redis Cluster: the state hash, its meta hash and the
//! workload key (another hash slot) are written by per-slot pipelines, and cleaned up.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use routestate::{
    core::{Keys, PodState, RoutingState, Workload, keys::hash_slot},
    operator::RouteState,
    store::{RedisOptions, connect},
};

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        operator::{install_crd, start_operator_with},
    },
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_to_redis_cluster_across_slots() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-rc").await;
    let opts = RedisOptions::cluster(support::redis_cluster_urls());
    let operator = start_operator_with(&client, &ns.name, None, opts.clone()).await;
    let conn = connect(&opts).await.unwrap();
    let (state, meta, workload) = (
        Keys::state(&ns.name, "web").unwrap(),
        Keys::state_meta(&ns.name, "web").unwrap(),
        Keys::workload(&ns.name, "web").unwrap(),
    );
    assert_ne!(hash_slot(&state), hash_slot(&workload), "the test needs keys in two slots");

    let sts_api: Api<StatefulSet> = ns.api();
    let rs_api: Api<RouteState> = ns.api();
    sts_api.create(&PostParams::default(), &statefulset("web", 2)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "metadata": {"name": "web"},
        "spec": {"updatePeriodSeconds": 3}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();

    support::wait_for("states, meta and workload in the cluster", Duration::from_secs(60), || {
        let mut conn = conn.clone();
        let (state, meta, workload) = (state.clone(), meta.clone(), workload.clone());
        async move {
            let s: Vec<(String, String)> =
                redis::cmd("HGETALL").arg(&state).query_async(&mut conn).await.map_err(|e| e.to_string())?;
            let period: Option<String> = redis::cmd("HGET")
                .arg(&meta)
                .arg("updatePeriodSeconds")
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            let w: Option<String> =
                redis::cmd("GET").arg(&workload).query_async(&mut conn).await.map_err(|e| e.to_string())?;
            let routing: Vec<_> = s.iter().map(|(k, v)| (k.clone(), PodState::parse(v).map(|p| p.routing))).collect();
            let ok = routing == [("0".into(), Ok(RoutingState::Ready)), ("1".into(), Ok(RoutingState::Ready))]
                || routing == [("1".into(), Ok(RoutingState::Ready)), ("0".into(), Ok(RoutingState::Ready))];
            match (ok, period.as_deref(), w.as_deref().map(Workload::parse)) {
                (true, Some("3"), Some(Ok(w))) if w.ready_pods == 2 => Ok(()),
                other => Err(format!("{routing:?} {other:?}")),
            }
        }
    })
    .await;

    rs_api.delete("web", &DeleteParams::default()).await.unwrap();
    support::wait_for("keys deleted", Duration::from_secs(30), || {
        let mut conn = conn.clone();
        let keys = [state.clone(), meta.clone(), workload.clone()];
        async move {
            let mut left = Vec::new();
            for k in keys {
                let n: i64 = redis::cmd("EXISTS").arg(&k).query_async(&mut conn).await.map_err(|e| e.to_string())?;
                if n > 0 {
                    left.push(k);
                }
            }
            if left.is_empty() { Ok(()) } else { Err(format!("{left:?}")) }
        }
    })
    .await;
    operator.shutdown().await.unwrap();
}
