//! A Redis outage (a redis-server of this test's own, stopped and restarted): RedisSynced and
//! Ready turn False with the failing operation in the message, /readyz answers 503, and once
//! Redis is back the operator republishes everything on its own.

use std::{process::Stdio, time::Duration};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, api::PostParams};
use routestate::{operator::RouteState, store::RedisOptions};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::{Child, Command},
};

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        faults::free_port,
        operator::{install_crd, start_operator_with, states},
    },
};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn redis_server(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting redis-server");
    support::wait_for("redis-server up", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    child
}

async fn readyz(addr: std::net::SocketAddr) -> Result<u16, String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.map_err(|e| e.to_string())?;
    buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(buf)
}

async fn condition(api: &Api<RouteState>, ty: &str) -> Result<(String, String), String> {
    let rs = api.get("web").await.map_err(|e| e.to_string())?;
    let c = rs.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == ty)).ok_or("no condition")?;
    Ok((c.status, c.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_shows_in_status_and_readiness_and_heals() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-outage").await;
    let port = free_port();
    let mut server = redis_server(port).await;
    let url = format!("redis://127.0.0.1:{port}");
    let mut opts = RedisOptions::standalone(&url);
    opts.op_timeout = Duration::from_millis(500);
    let operator = start_operator_with(&client, &ns.name, None, opts).await;
    let http = operator.http_addr().unwrap();
    let redis = redis::aio::ConnectionManager::new(redis::Client::open(url.as_str()).unwrap()).await.unwrap();

    let sts_api: Api<StatefulSet> = ns.api();
    let rs_api: Api<RouteState> = ns.api();
    sts_api.create(&PostParams::default(), &statefulset("web", 2)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "metadata": {"name": "web"},
        "spec": {"updatePeriodSeconds": 1}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();
    support::wait_for("Ready True", TIMEOUT, || async {
        match condition(&rs_api, "Ready").await? {
            (s, _) if s == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(readyz(http).await.unwrap(), 200);

    // Outage.
    server.kill().await.unwrap();
    let (_, message) = support::wait_for("RedisSynced False", TIMEOUT, || async {
        match condition(&rs_api, "RedisSynced").await? {
            (s, m) if s == "False" => Ok((s, m)),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eprintln!("RedisSynced message during the outage: {message}");
    assert!(message.contains(&format!("publishing service {}/web", ns.name)), "{message}");
    assert_eq!(condition(&rs_api, "Ready").await.unwrap().0, "False");
    support::wait_for("/readyz 503", Duration::from_secs(10), || async {
        match readyz(http).await? {
            503 => Ok(()),
            other => Err(other.to_string()),
        }
    })
    .await;

    // Redis comes back empty: the operator republishes on its own.
    let _server = redis_server(port).await;
    support::wait_for("republished after the outage", TIMEOUT, || {
        let mut redis = redis.clone();
        let ns = ns.name.clone();
        async move {
            // This test's own connection also lived through the outage: its first call may fail.
            let key = routestate::core::Keys::state(&ns, "web").unwrap();
            let n: usize = redis::cmd("HLEN").arg(&key).query_async(&mut redis).await.map_err(|e| e.to_string())?;
            if n == 2 { Ok(states(&mut redis, &ns, "web").await) } else { Err(format!("{n} fields")) }
        }
    })
    .await;
    support::wait_for("Ready True again", TIMEOUT, || async {
        match condition(&rs_api, "Ready").await? {
            (s, _) if s == "True" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(readyz(http).await.unwrap(), 200);
    operator.shutdown().await.unwrap();
}
