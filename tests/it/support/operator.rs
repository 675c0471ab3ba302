//! Helpers for the operator's integration tests: CRD installation, an in-process operator
//! scoped to one test namespace, and reading the published state from Redis.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt,
    api::{Patch, PatchParams},
};
use routestate::{
    core::{Keys, PodState, RoutingState},
    operator::{LeaseConfig, Operator, OperatorConfig, RouteState},
    store::RedisOptions,
};

/// Installs (server-side applies) the RouteState CRD and waits until it is Established.
pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = RouteState::crd();
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(&name, &PatchParams::apply("routestate-tests").force(), &Patch::Apply(&crd))
        .await
        .unwrap_or_else(|e| panic!("applying CRD {name}: {e}"));
    super::wait_for("CRD established", Duration::from_secs(30), || async {
        let crd = crds.get(&name).await.map_err(|e| e.to_string())?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        if established { Ok(()) } else { Err("not established".into()) }
    })
    .await;
}

/// Logs of the operator to stderr when `RUST_LOG` is set (shown for failing tests).
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_ansi(false)
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
    }
}

/// Starts an operator watching only `namespace`, with an optional lease, on the standalone Redis.
pub async fn start_operator(client: &Client, namespace: &str, lease: Option<LeaseConfig>) -> Operator {
    start_operator_with(client, namespace, lease, RedisOptions::standalone(super::redis_url())).await
}

/// Starts an operator watching only `namespace` on the given Redis.
pub async fn start_operator_with(
    client: &Client,
    namespace: &str,
    lease: Option<LeaseConfig>,
    redis: RedisOptions,
) -> Operator {
    start_operator_at(client, namespace, lease, redis, "127.0.0.1:0".parse().unwrap()).await
}

/// Starts an operator watching only `namespace` on the given Redis, serving HTTP on `http_addr`
/// (e.g. the address of an operator stopped before, so a scraper finds its successor).
pub async fn start_operator_at(
    client: &Client,
    namespace: &str,
    lease: Option<LeaseConfig>,
    redis: RedisOptions,
    http_addr: std::net::SocketAddr,
) -> Operator {
    init_logs();
    let config = OperatorConfig {
        client: client.clone(),
        redis,
        namespace: Some(namespace.to_owned()),
        lease,
        http_addr: Some(http_addr),
        instance: super::unique_name("op"),
    };
    Operator::start(config).await.unwrap_or_else(|e| panic!("starting the operator: {e}"))
}

/// Redis server time in ms.
pub async fn redis_now_ms(redis: &mut redis::aio::ConnectionManager) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(redis).await.unwrap();
    s * 1000 + us / 1000
}

/// The parsed state hash of `ns`/`svc` (panics on a malformed value: the operator must never
/// write one).
pub async fn states(redis: &mut redis::aio::ConnectionManager, ns: &str, svc: &str) -> BTreeMap<u32, PodState> {
    let raw: BTreeMap<String, String> =
        redis::cmd("HGETALL").arg(Keys::state(ns, svc).unwrap()).query_async(redis).await.unwrap();
    raw.into_iter()
        .map(|(k, v)| {
            let idx = k.parse().unwrap_or_else(|_| panic!("field {k:?} is not an index"));
            (idx, PodState::parse(&v).unwrap_or_else(|e| panic!("field {k}: {e}")))
        })
        .collect()
}

/// Waits until pod `pod` of `ns`/`svc` is published with routing state `want`.
pub async fn wait_routing(
    redis: &redis::aio::ConnectionManager,
    ns: &str,
    svc: &str,
    pod: u32,
    want: RoutingState,
    what: &str,
    timeout: Duration,
) {
    crate::support::wait_for(what, timeout, || {
        let mut redis = redis.clone();
        async move {
            let s = states(&mut redis, ns, svc).await;
            if s.get(&pod).map(|p| p.routing) == Some(want) { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;
}
