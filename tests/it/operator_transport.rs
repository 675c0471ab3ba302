//! The server role end to end: a Rust service drives `ServerDriver` over the annotation
//! transport, and the operator publishes what it reports. Bursts are coalesced into few patches.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{Api, api::PostParams, runtime::watcher};
use routestate::{
    core::RoutingState,
    operator::RouteState,
    server::{AnnotationTransport, ServerConfig, ServerDriver, ServerReport, StateTransport},
    store::{RedisOptions, Store},
};
use tokio_util::sync::CancellationToken;

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        operator::{install_crd, start_operator, states},
    },
};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn wait_pod1(
    redis: &redis::aio::ConnectionManager,
    ns: &str,
    what: &str,
    want: impl Fn(&routestate::core::PodState) -> bool,
) {
    let want = &want;
    support::wait_for(what, Duration::from_secs(15), || {
        let mut redis = redis.clone();
        let ns = ns.to_owned();
        async move {
            let s = states(&mut redis, &ns, "web").await;
            match s.get(&1) {
                Some(p) if want(p) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_reports_through_pod_annotations_and_the_operator_publishes_it() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-transport").await;
    let operator = start_operator(&client, &ns.name, None).await;
    let redis = support::redis().await;
    let sts_api: Api<StatefulSet> = ns.api();
    let rs_api: Api<RouteState> = ns.api();
    let pods: Api<Pod> = ns.api();
    sts_api.create(&PostParams::default(), &statefulset("web", 2)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "metadata": {"name": "web"}, "spec": {}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();
    wait_pod1(&redis, &ns.name, "pod 1 READY", |p| p.routing == RoutingState::Ready).await;

    let transport = AnnotationTransport::new(client.clone(), &ns.name, "web-1");
    let store = Store::connect(&RedisOptions::standalone(support::redis_url())).await.unwrap();
    let mut config = ServerConfig::new(&ns.name, "web", 1);
    config.drain_window = Some(Duration::from_millis(1500));
    let driver = ServerDriver::new(store, transport.clone(), config).unwrap();
    driver.start().await.unwrap();
    driver.set_waiting_tasks(10).await.unwrap();
    driver.set_load_state(100).await.unwrap();
    wait_pod1(&redis, &ns.name, "weighted load 37", |p| p.weighted_load == 37).await;
    driver.set_routing_state(RoutingState::DenyNewCall).await.unwrap();
    wait_pod1(&redis, &ns.name, "DENY_NEW_CALL", |p| p.routing == RoutingState::DenyNewCall).await;

    // A burst of 50 reports becomes at most a few patches, and the last one wins. The watch is
    // established (its initial list delivered) before the burst starts, so it sees every patch
    // of the burst: without coalescing it would count about 50 changes.
    let watch = watcher(pods.clone(), watcher::Config::default().fields("metadata.name=web-1"));
    let (established_tx, established) = tokio::sync::oneshot::channel();
    let counter = tokio::spawn(async move {
        let load = |p: &Pod| p.metadata.annotations.as_ref().and_then(|a| a.get("routestate.dev/load").cloned());
        let mut watch = std::pin::pin!(watch);
        let mut established_tx = Some(established_tx);
        let mut seen: Vec<Option<String>> = Vec::new();
        while let Some(Ok(event)) = watch.next().await {
            match event {
                watcher::Event::InitApply(p) => seen = vec![load(&p)],
                watcher::Event::InitDone => {
                    if let Some(tx) = established_tx.take() {
                        let _ = tx.send(seen.clone());
                    }
                }
                watcher::Event::Apply(p) => {
                    let v = load(&p);
                    if seen.last() != Some(&v) {
                        seen.push(v.clone());
                    }
                    if v.as_deref() == Some("1049") {
                        break;
                    }
                }
                _ => {}
            }
        }
        seen
    });
    let initial = tokio::time::timeout(TIMEOUT, established).await.unwrap().unwrap();
    assert_eq!(initial, [Some("100".to_owned())], "the watch's initial list");
    for i in 1000..1050u64 {
        transport
            .publish(ServerReport { load_state: i, waiting_tasks: 10, routing: RoutingState::DenyNewCall })
            .await
            .unwrap();
    }
    transport.flush(Duration::from_secs(10)).await.unwrap();
    let seen = tokio::time::timeout(TIMEOUT, counter).await.unwrap().unwrap();
    // The initial value, then at most the first and the last value of the burst.
    assert!(seen.len() <= 3, "{} annotation values for a burst of 50 reports: {seen:?}", seen.len() - 1);
    assert_eq!(seen.last(), Some(&Some("1049".to_owned())), "the last report wins: {seen:?}");
    // 0.7 × 10 waiting tasks + 0.3 × 1049 = 321.7, truncated.
    wait_pod1(&redis, &ns.name, "latest load published", |p| p.weighted_load == 321).await;

    // stop(): DENY_NEW_CALL, then SHUTDOWN after the drain window.
    driver.stop(&CancellationToken::new()).await.unwrap();
    transport.flush(Duration::from_secs(10)).await.unwrap();
    wait_pod1(&redis, &ns.name, "SHUTDOWN", |p| p.routing == RoutingState::Shutdown).await;
    operator.shutdown().await.unwrap();
}
