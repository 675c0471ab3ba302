//! Operator restart: an operator that starts while
//! RouteStates already exist — every restart, upgrade or failover to a fresh process — must
//! publish all of them, not only the first.

use std::time::Duration;

use routestate::core::staleness_window_ms;

use crate::{
    reliability_redis_outage::{SERVICES, create_services, start_operator_on},
    support::{self, TestNamespace, operator::install_crd, wait_for},
};

const PERIOD_SECS: u32 = 2;

/// Every service of [`SERVICES`] has all its pods, heartbeated within the window.
async fn all_fresh(redis: &mut redis::aio::ConnectionManager, ns: &str) -> Result<(), String> {
    let now = support::operator::redis_now_ms(redis).await;
    let mut missing = Vec::new();
    for (svc, replicas) in SERVICES {
        let s = support::operator::states(redis, ns, svc).await;
        let fresh = s.values().filter(|p| p.is_fresh(now, staleness_window_ms(PERIOD_SECS))).count();
        if fresh != replicas as usize {
            missing.push(format!("{svc}: {fresh}/{replicas} fresh"));
        }
    }
    if missing.is_empty() { Ok(()) } else { Err(missing.join(", ")) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_started_after_the_routestates_publishes_all_of_them() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "restart").await;
    let mut redis = support::redis().await;
    // The RouteStates and StatefulSets exist first; the operator comes later.
    create_services(&client, &ns.name, PERIOD_SECS).await;
    crate::support::wait_for("the StatefulSets' pods", Duration::from_secs(60), || async {
        use k8s_openapi::api::core::v1::Pod;
        let pods = ns.api::<Pod>().list(&Default::default()).await.map_err(|e| e.to_string())?;
        let want: i32 = SERVICES.iter().map(|s| s.1).sum();
        if pods.items.len() == want as usize { Ok(()) } else { Err(format!("{} pods", pods.items.len())) }
    })
    .await;
    let first = start_operator_on(&client, &ns.name, &support::redis_url()).await;
    wait_for("every service published by an operator started after them", Duration::from_secs(30), || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move { all_fresh(&mut redis, &ns).await }
    })
    .await;
    // A restart: the second process finds everything in place and must re-stamp all of it. The
    // first one has stopped writing once shutdown returns, so every stamp later than the start
    // of the second process is the second's.
    first.shutdown().await.unwrap();
    let restarted_at = support::operator::redis_now_ms(&mut redis).await;
    let second = start_operator_on(&client, &ns.name, &support::redis_url()).await;
    wait_for("every state re-stamped by the restarted operator", Duration::from_secs(30), || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move { all_stamped_after(&mut redis, &ns, restarted_at).await }
    })
    .await;
    second.shutdown().await.unwrap();
}

/// Every pod of [`SERVICES`] has a state stamped later than `after_ms`.
async fn all_stamped_after(redis: &mut redis::aio::ConnectionManager, ns: &str, after_ms: u64) -> Result<(), String> {
    let mut missing = Vec::new();
    for (svc, replicas) in SERVICES {
        let s = support::operator::states(redis, ns, svc).await;
        let restamped = s.values().filter(|p| p.updated_at_ms > after_ms).count();
        if restamped != replicas as usize {
            missing.push(format!("{svc}: {restamped}/{replicas} re-stamped"));
        }
    }
    if missing.is_empty() { Ok(()) } else { Err(missing.join(", ")) }
}
