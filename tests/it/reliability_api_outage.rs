//! API server outage on a private control plane (`hack/cluster.sh up` in a folder of its own,
//! so the shared cluster is never touched). The operator reaches the API server through a
//! [`TcpProxy`], and the outage has two layers: the proxy is cut (the operator loses the API
//! server) and the kube-apiserver itself is stopped for 20 s. The operator keeps heartbeating
//! what it knows. Then the API server comes back while the operator is still cut off, and the
//! RouteStates and pods change: changes the operator can only learn after its own return. Once
//! the proxy is restored, Redis shows them within a generous deadline, and later changes flow
//! too (the watches resumed). No panic: the operator's task ends cleanly on shutdown.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use redis::Commands;
use routestate::{
    core::{Keys, PodState, RoutingState, staleness_window_ms},
    operator::RouteState,
};

use crate::{
    reliability_redis_outage::{SERVICES, all_published, create_services, start_operator_on},
    support::{
        faults::{PrivateCluster, TcpProxy, http_get},
        operator::install_crd,
        wait_for,
    },
};

const PERIOD_SECS: u32 = 2;
const OUTAGE: Duration = Duration::from_secs(20);

fn states(conn: &mut redis::Connection, ns: &str, svc: &str) -> std::collections::BTreeMap<u32, PodState> {
    let raw: std::collections::BTreeMap<String, String> = conn.hgetall(Keys::state(ns, svc).unwrap()).unwrap();
    raw.into_iter().map(|(k, v)| (k.parse().unwrap(), PodState::parse(&v).unwrap())).collect()
}

fn redis_now(conn: &mut redis::Connection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(conn).unwrap();
    s * 1000 + us / 1000
}

/// The state the API objects call for after the changes made during the outage.
fn converged(conn: &mut redis::Connection, ns: &str) -> Result<(), String> {
    let (a, b, g) = (states(conn, ns, "alpha"), states(conn, ns, "beta"), states(conn, ns, "gamma"));
    let ok = a.get(&1).map(|p| (p.routing, p.weighted_load)) == Some((RoutingState::Ready, 50))
        && b.get(&0).map(|p| p.routing) == Some(RoutingState::DenyNewCall)
        && g.get(&0).map(|p| p.routing) == Some(RoutingState::Shutdown);
    if ok { Ok(()) } else { Err(format!("alpha {a:?} beta {b:?} gamma {g:?}")) }
}

/// Retries an API call while a restarted API server settles (its first requests may be refused).
async fn settled<T, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) if Instant::now() < deadline => {
                eprintln!("{what} after the restart: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("{what}: the API server did not come back: {e}"),
        }
    }
}

/// The deadlines below are liveness bounds, generous on purpose (a loaded CI machine); the
/// measured times are printed and recorded in docs/reliability.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_apiserver_stopped_for_20s() {
    let cluster = PrivateCluster::up();
    let client = cluster.client().await;
    install_crd(&client).await;
    let ns = "api-outage";
    let nsobj: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &nsobj).await.unwrap();
    let mut conn = redis::Client::open(cluster.redis_url()).unwrap().get_connection().unwrap();

    let mut proxy = TcpProxy::start(cluster.api_addr().await).await;
    let operator = start_operator_on(&cluster.client_via(proxy.addr).await, ns, cluster.redis_url()).await;
    let addr = operator.http_addr().unwrap();
    create_services(&client, ns, PERIOD_SECS).await;
    wait_for("every state and workload published", Duration::from_secs(60), || {
        let r = all_published(&mut conn, ns, &SERVICES);
        async move { r }
    })
    .await;

    proxy.cut().await;
    cluster.stop("kube-apiserver");
    let stopped = Instant::now();
    // During the outage the operator keeps heartbeating from its caches: sample freshness every
    // period (the outage itself is the fixed wait here, not a synchronisation).
    let window = staleness_window_ms(PERIOD_SECS);
    let mut samples = 0;
    while stopped.elapsed() < OUTAGE {
        tokio::time::sleep(Duration::from_secs(u64::from(PERIOD_SECS))).await;
        let now = redis_now(&mut conn);
        for (svc, replicas) in SERVICES {
            let s = states(&mut conn, ns, svc);
            assert_eq!(s.len(), replicas as usize, "{svc} lost pods during the API outage: {s:?}");
            let oldest = s.values().map(|p| p.age_ms(now)).max().unwrap_or(0);
            assert!(oldest <= window, "{svc}: a state is {oldest} ms old during the API outage");
        }
        assert_eq!(http_get(addr, "/healthz").await.map(|r| r.0), Ok(200), "operator down during the API outage");
        samples += 1;
    }
    assert!(samples >= 5);

    // The API server is back, the operator still cut off: these changes are made while it
    // cannot see them — a spec override, a routing annotation, a load annotation.
    cluster.start("kube-apiserver");
    let rs_api: Api<RouteState> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pp = PatchParams::default();
    let drain = Patch::Merge(serde_json::json!({"spec": {"pods": [{"index": 0, "routingState": "DenyNewCall"}]}}));
    settled("patching RouteState beta", || rs_api.patch("beta", &pp, &drain)).await;
    let shutdown =
        Patch::Merge(serde_json::json!({"metadata": {"annotations": {"routestate.dev/routing-state": "Shutdown"}}}));
    settled("annotating gamma-0", || pods.patch("gamma-0", &pp, &shutdown)).await;
    let load = Patch::Merge(
        serde_json::json!({"metadata": {"annotations": {"routestate.dev/load": "50", "routestate.dev/waiting-tasks": "50"}}}),
    );
    settled("annotating alpha-1", || pods.patch("alpha-1", &pp, &load)).await;
    // Redis cannot show them yet: otherwise the convergence below would prove nothing.
    let before = converged(&mut conn, ns);
    assert!(before.is_err(), "Redis shows changes the operator cannot have seen");

    proxy.restore().await;
    let back = Instant::now();
    wait_for("Redis converged to the changes made during the outage", Duration::from_secs(60), || {
        let r = converged(&mut conn, ns);
        async move { r }
    })
    .await;
    let converged_in = back.elapsed();
    eprintln!(
        "MEASURED api outage ({OUTAGE:?} stopped, then changes while cut off): converged {converged_in:?} \
         after the operator could reach the API server again (period {PERIOD_SECS} s)"
    );

    // The watches resumed: a change made now reaches Redis.
    let patch = serde_json::json!({"spec": {"pods": [{"index": 0, "routingState": "DenyNewCall"}, {"index": 1, "routingState": "Shutdown"}]}});
    rs_api.patch("beta", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let patched = Instant::now();
    wait_for("a post-outage change in Redis (watches resumed)", Duration::from_secs(60), || {
        let s = states(&mut conn, ns, "beta");
        async move {
            if s.get(&1).map(|p| p.routing) == Some(RoutingState::Shutdown) { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;
    eprintln!("MEASURED a change made after the API outage reached Redis in {:?}", patched.elapsed());
    operator.shutdown().await.expect("the operator shut down cleanly (no panic)");
}
