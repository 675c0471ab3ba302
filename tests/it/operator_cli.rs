//! The `routestate` binary as typed: `run` (readiness, metrics, SIGTERM), `status`, `links`,
//! `pick`, `crd`, and exit code 2 on usage errors.

use std::{process::Stdio, time::Duration};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, api::PostParams};
use routestate::{core::RoutingState, operator::RouteState};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    process::Command,
};

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        faults::free_port,
        operator::{install_crd, states},
    },
};

const BIN: &str = env!("CARGO_BIN_EXE_routestate");
const TIMEOUT: Duration = Duration::from_secs(60);

async fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env("REDIS_URL", support::redis_url()).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A plain HTTP/1.0 GET (no HTTP client dependency needed): (status code, body).
async fn get(addr: &str, path: &str) -> Result<(u16, String), String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.map_err(|e| e.to_string())?;
    let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(buf.clone())?;
    Ok((code, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_the_operator_and_serves_the_tools() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-cli").await;

    // Usage errors exit 2 with a message naming the problem.
    let (code, _, err) = cli(&["pick", "no-slash"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("<namespace>/<name>"), "{err}");
    let (code, _, err) = cli(&["run", "--leader-elect", "--lease-duration-seconds=4", "--lease-renew-seconds=2"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--lease-renew-seconds"), "{err}");
    // `crd` prints exactly the committed CRD.
    let (code, yaml, _) = cli(&["crd"]).await;
    assert_eq!(code, 0);
    assert_eq!(yaml, std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/routestate.yaml")).unwrap());

    // `routestate run` as a process, scoped to the test namespace, with leader election.
    let addr = format!("127.0.0.1:{}", free_port());
    let mut op = Command::new(BIN)
        .args(["run", "--namespace", &ns.name, "--http-addr", &addr, "--log-format", "json", "--leader-elect"])
        .args(["--lease-namespace", &ns.name, "--lease-identity", "cli-test"])
        .env("REDIS_URL", support::redis_url())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    support::wait_for("/readyz 200", TIMEOUT, || async {
        match get(&addr, "/readyz").await? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(get(&addr, "/healthz").await.unwrap().0, 200);

    let sts_api: Api<StatefulSet> = ns.api();
    let rs_api: Api<RouteState> = ns.api();
    sts_api.create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "metadata": {"name": "web"},
        "spec": {"updatePeriodSeconds": 2, "pods": [{"index": 2, "routingState": "DenyNewCall"}]}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();
    let redis = support::redis().await;
    support::wait_for("3 fields published by the binary", TIMEOUT, || {
        let mut redis = redis.clone();
        let ns = ns.name.clone();
        async move {
            let s = states(&mut redis, &ns, "web").await;
            let got: Vec<_> = s.iter().map(|(i, p)| (*i, p.routing)).collect();
            let want = vec![(0, RoutingState::Ready), (1, RoutingState::Ready), (2, RoutingState::DenyNewCall)];
            if got == want { Ok(()) } else { Err(format!("{got:?}")) }
        }
    })
    .await;
    let (_, metrics) = get(&addr, "/metrics").await.unwrap();
    for name in ["routestate_reconciles_total", "routestate_leader 1", "routestate_published_pods{routing=\"READY\"} 2"]
    {
        assert!(metrics.contains(name), "{name} missing from\n{metrics}");
    }

    // status: a table with index, pod, routing, load, age.
    let target = format!("{}/web", ns.name);
    let (code, out, err) = cli(&["status", &target]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].contains("service web") && lines[0].contains("period 2s"), "{out}");
    assert!(lines[1].starts_with("INDEX") && lines[1].contains("HEARTBEAT AGE"), "{out}");
    assert!(lines[2].starts_with("0") && lines[2].contains("web-0") && lines[2].contains("READY"), "{out}");
    assert!(lines[4].contains("web-2") && lines[4].contains("DENY_NEW_CALL"), "{out}");

    // links and pick through the library.
    let svc = format!("{}/web", ns.name);
    assert_eq!(cli(&["links", "get", &svc, "u1"]).await.1.trim(), "none");
    let (code, out, _) = cli(&["links", "set", &svc, "u1", "1", "--persistent"]).await;
    assert_eq!((code, out.trim()), (0, "linked u1 to pod 1 (previous: none)"));
    assert_eq!(cli(&["links", "get", &svc, "u1"]).await.1.trim(), "1");
    let (code, out, _) = cli(&["links", "try-set", &svc, "u1", "0"]).await;
    assert_eq!((code, out.trim()), (1, "not linked: u1 stays on pod 1"));
    assert_eq!(cli(&["links", "remove-with-id", &svc, "u1", "0"]).await.1.trim(), "no link to that pod");
    assert_eq!(cli(&["links", "remove", &svc, "u1"]).await.1.trim(), "removed");
    let (code, out, err) = cli(&["pick", &svc, "u2"]).await;
    assert_eq!(code, 0, "{err}");
    let pod: u32 = out.split_whitespace().next().unwrap().parse().unwrap();
    assert!(pod < 2, "picked a pod that takes no new users: {out}");
    assert!(out.contains("new link"), "{out}");
    assert_eq!(cli(&["links", "get", &svc, "u2"]).await.1.trim(), pod.to_string());
    let (code, out, _) = cli(&["pick", &svc]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with('0') || out.starts_with('1'), "{out}");
    let (code, _, err) = cli(&["pick", &format!("{}/nothing", ns.name)]).await;
    assert_eq!(code, 1);
    assert!(err.contains("no pod"), "{err}");

    // SIGTERM: a clean exit that releases the lease.
    let pid = op.id().unwrap().to_string();
    let status = std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), op.wait())
        .await
        .expect("exit within 15 s after SIGTERM")
        .unwrap();
    let mut logs = String::new();
    op.stderr.take().unwrap().read_to_string(&mut logs).await.unwrap();
    assert!(exit.success(), "exit {exit:?}; logs:\n{logs}");
    assert!(logs.lines().any(|l| l.starts_with('{') && l.contains("shutting down")), "{logs}");
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), &ns.name)
        .get("routestate-operator")
        .await
        .unwrap();
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), None, "the lease was not released");
}
