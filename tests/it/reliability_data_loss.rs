//! Redis comes back empty between two heartbeats (a quick restart without persistence, so no
//! publish failed in between): the operator notices it by the dataset epoch, republishes every
//! service at once rather than at its next heartbeat, counts it and records a Warning Event
//! `RedisDataLost` on each RouteState.

use std::time::Duration;

use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use routestate::operator::RouteState;

use crate::{
    reliability_redis_outage::{SERVICES, create_services, start_operator_on},
    support::{
        TestNamespace,
        faults::{PrivateRedis, http_get, metric},
        kube_client,
        operator::install_crd,
        wait_for,
    },
};

/// Long, so that the republish cannot be the next heartbeat.
const PERIOD_SECS: u32 = 120;

fn stamps(conn: &mut redis::Connection, ns: &str) -> Vec<u64> {
    SERVICES
        .iter()
        .flat_map(|(svc, _)| {
            let h: std::collections::BTreeMap<String, String> =
                redis::cmd("HGETALL").arg(routestate::core::Keys::state(ns, svc).unwrap()).query(conn).unwrap();
            h.into_values()
                .filter_map(|v| routestate::core::PodState::parse(&v).ok())
                .map(|p| p.updated_at_ms)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_restart_between_heartbeats_is_republished_at_once() {
    let client = kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "data-loss").await;
    let mut redis = PrivateRedis::start();
    let operator = start_operator_on(&client, &ns.name, &redis.url()).await;
    let addr = operator.http_addr().unwrap();
    create_services(&client, &ns.name, PERIOD_SECS).await;
    let pods: usize = SERVICES.iter().map(|s| s.1 as usize).sum();
    let mut cli = redis.cli();
    wait_for("every pod published", Duration::from_secs(60), || {
        let s = stamps(&mut cli, &ns.name);
        async move { if s.len() == pods { Ok(()) } else { Err(format!("{s:?}")) } }
    })
    .await;
    // The operator has seen the dataset before the restart: it created each service's epoch.
    let metrics = || async { http_get(addr, "/metrics").await.map(|(_, b)| b).unwrap_or_default() };
    wait_for("every service's epoch created", Duration::from_secs(30), || {
        let missing: Vec<String> = SERVICES
            .iter()
            .map(|(svc, _)| routestate::core::Keys::state_epoch(&ns.name, svc).unwrap())
            .filter(|k| !redis::cmd("EXISTS").arg(k).query::<bool>(&mut cli).unwrap())
            .collect();
        async move { if missing.is_empty() { Ok(()) } else { Err(format!("{missing:?}")) } }
    })
    .await;
    assert_eq!(metric(&metrics().await, "routestate_redis_data_loss_total"), 0.0);
    let last = *stamps(&mut cli, &ns.name).iter().max().unwrap();

    redis.restart(); // SIGKILL and an empty start on the same port
    let mut cli = redis.cli();
    wait_for("every pod republished", Duration::from_secs(60), || {
        let s = stamps(&mut cli, &ns.name);
        async move { if s.len() == pods { Ok(s) } else { Err(format!("{s:?}")) } }
    })
    .await;
    // Republished because of the loss, not by the next heartbeat: stamped well before it.
    let republished = *stamps(&mut cli, &ns.name).iter().max().unwrap();
    assert!(
        republished < last + u64::from(PERIOD_SECS) * 1000 / 2,
        "republished at {republished}, the last heartbeat was at {last} with a {PERIOD_SECS} s period"
    );
    let m = metrics().await;
    assert!(metric(&m, "routestate_redis_data_loss_total") >= 1.0, "{m}");
    let rs_api = ns.api::<RouteState>();
    let names: Vec<String> =
        rs_api.list(&ListParams::default()).await.unwrap().items.into_iter().filter_map(|r| r.metadata.name).collect();
    wait_for("a RedisDataLost Warning on every RouteState", Duration::from_secs(30), || async {
        let events = ns.api::<Event>().list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let warned: Vec<String> = events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("RedisDataLost") && e.type_.as_deref() == Some("Warning"))
            .filter_map(|e| e.regarding.as_ref()?.name.clone())
            .collect();
        if names.iter().all(|n| warned.contains(n)) { Ok(()) } else { Err(format!("{warned:?} of {names:?}")) }
    })
    .await;
    operator.shutdown().await.unwrap();
}
