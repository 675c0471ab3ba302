//! Two RouteStates of one namespace naming the same Redis service (StatefulSets `a` and `b`,
//! both `spec.serviceName: game`): the older one publishes, the other publishes nothing, says so
//! (Ready=False, `ServiceNameConflict` naming the owner, and a Warning Event), and takes over
//! when the owner goes away.

use std::{collections::BTreeSet, time::Duration};

use k8s_openapi::api::{apps::v1::StatefulSet, events::v1::Event};
use kube::api::{DeleteParams, ListParams, PostParams};
use routestate::operator::RouteState;

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        operator::{install_crd, redis_now_ms, start_operator, states},
        wait_for,
    },
};

const TIMEOUT: Duration = Duration::from_secs(60);

fn routestate(name: &str) -> RouteState {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
        "metadata": {"name": name}, "spec": {"serviceName": "game", "updatePeriodSeconds": 1}
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_routestate_owns_a_service_name_and_the_other_takes_over_after_it() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "conflict").await;
    let operator = start_operator(&client, &ns.name, None).await;
    let mut redis = support::redis().await;
    let sts = ns.api::<StatefulSet>();
    sts.create(&PostParams::default(), &statefulset("a", 2)).await.unwrap();
    sts.create(&PostParams::default(), &statefulset("b", 3)).await.unwrap();
    let rs_api = ns.api::<RouteState>();
    rs_api.create(&PostParams::default(), &routestate("a")).await.unwrap();
    // Created a second later at least, so `a` is the older by creation time, not only by name.
    let created = rs_api.get("a").await.unwrap().metadata.creation_timestamp.unwrap();
    wait_for("a second after a's creation", TIMEOUT, || async {
        let now = k8s_openapi::jiff::Timestamp::now();
        if now.as_second() > created.0.as_second() { Ok(()) } else { Err("same second".to_owned()) }
    })
    .await;
    rs_api.create(&PostParams::default(), &routestate("b")).await.unwrap();

    let fields =
        |s: &std::collections::BTreeMap<u32, routestate::core::PodState>| s.keys().copied().collect::<BTreeSet<_>>();
    wait_for("b says a owns the service", TIMEOUT, || async {
        let st = rs_api.get("b").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
        match ready {
            Some(c)
                if c.status == "False" && c.reason == "ServiceNameConflict" && c.message.contains("RouteState a") =>
            {
                Ok(())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Several heartbeats later the state hash still holds a's two pods only.
    let since = redis_now_ms(&mut redis).await;
    wait_for("3 heartbeats of a's pods", TIMEOUT, || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move {
            let s = states(&mut redis, &ns, "game").await;
            assert_eq!(fields(&s), BTreeSet::from([0, 1]), "b's pods are in a's service: {s:?}");
            if s.values().all(|p| p.updated_at_ms > since + 2_000) { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;
    let a_status = rs_api.get("a").await.unwrap().status.unwrap();
    assert!(a_status.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"), "{a_status:?}");
    let events = ns.api::<Event>().list(&ListParams::default()).await.unwrap();
    let warned = events.items.iter().any(|e| {
        e.reason.as_deref() == Some("ServiceNameConflict")
            && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("b")
            && e.note.as_deref().is_some_and(|n| n.contains("RouteState a"))
    });
    assert!(
        warned,
        "no ServiceNameConflict Warning on b: {:?}",
        events.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );

    // The owner goes away: b takes the service over (its three pods, Ready).
    rs_api.delete("a", &DeleteParams::default()).await.unwrap();
    wait_for("b publishes the service", TIMEOUT, || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move {
            let s = states(&mut redis, &ns, "game").await;
            if fields(&s) == BTreeSet::from([0, 1, 2]) { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;
    wait_for("b Ready", TIMEOUT, || async {
        let st = rs_api.get("b").await.map_err(|e| e.to_string())?.status.unwrap_or_default();
        if st.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True") {
            Ok(())
        } else {
            Err(format!("{st:?}"))
        }
    })
    .await;
    rs_api.delete("b", &DeleteParams::default()).await.unwrap();
    wait_for("the service's keys deleted with its last RouteState", TIMEOUT, || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move {
            let s = states(&mut redis, &ns, "game").await;
            if s.is_empty() { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;
    operator.shutdown().await.unwrap();
}
