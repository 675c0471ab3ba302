//! What a user sees with kubectl, tested as typed: `kubectl get routestates` columns (and the
//! `rst` short name), `kubectl describe` with conditions and Events, `kubectl explain` with the
//! field docs, and `kubectl wait --for=condition=Ready` honouring observedGeneration after a
//! spec change.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use routestate::operator::RouteState;

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        cli::{ok, run},
        operator::{install_crd, start_operator},
    },
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `kubectl get routestates -n NS` as (header, rows), split on whitespace.
async fn get_table(ns: &str, resource: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let out = ok("kubectl", &["get", resource, "-n", ns], None).await;
    let mut lines = out.lines().map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
    let header = lines.next().unwrap_or_default();
    (header, lines.collect())
}

async fn wait_row(ns: &str, want: &[&str]) {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    support::wait_for(&format!("kubectl get routestates row {want:?}"), TIMEOUT, || async {
        let (_, rows) = get_table(ns, "routestates").await;
        // The last column is the AGE, which changes.
        match rows.first() {
            Some(row) if row.len() == 9 && row[..8] == want[..] => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// A plain HTTP/1.0 GET (the operator's endpoints need nothing more); returns the whole response.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connecting {addr}: {e}"));
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap_or_else(|e| panic!("reading {path}: {e}"));
    out
}

#[tokio::test]
async fn kubectl_get_describe_explain_and_wait() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "kubectl").await;
    let operator = start_operator(&client, &ns.name, None).await;
    ns.api::<StatefulSet>().create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();
    let rs_api: Api<RouteState> = ns.api();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
        "metadata": {"name": "web"}, "spec": {"updatePeriodSeconds": 2}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();

    // kubectl wait: Ready for generation 1.
    ok("kubectl", &["wait", "--for=condition=Ready", "routestate/web", "-n", &ns.name, "--timeout=60s"], None).await;

    // kubectl get: the columns, in order, and the values of a healthy 3-pod service.
    let (header, _) = get_table(&ns.name, "routestates").await;
    assert_eq!(
        header,
        ["NAME", "STATEFULSET", "ROUTING", "READY", "ROUTABLE", "DRAINING", "WORKLOAD", "LEADER", "AGE"]
    );
    wait_row(&ns.name, &["web", "web", "Ready", "3/3", "3", "0", "Ready", "web-0"]).await;
    let (short_header, _) = get_table(&ns.name, "rst").await;
    assert_eq!(short_header, header, "the short name rst lists the same table");

    // Drain pod 1 (generation 2): kubectl wait must not be satisfied by generation 1's condition,
    // so once it returns the row already shows the drain.
    let patch = serde_json::json!({"spec": {"pods": [{"index": 1, "routingState": "DenyNewCall"}]}});
    let patched = rs_api.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    ok("kubectl", &["wait", "--for=condition=Ready", "routestate/web", "-n", &ns.name, "--timeout=60s"], None).await;
    let rs = rs_api.get("web").await.unwrap();
    let ready = rs.status.as_ref().unwrap().conditions.iter().find(|c| c.type_ == "Ready").unwrap().clone();
    assert_eq!(ready.observed_generation, Some(2), "kubectl wait returned on a stale condition: {ready:?}");
    wait_row(&ns.name, &["web", "web", "Ready", "3/3", "2", "1", "Ready", "web-0"]).await;

    // A malformed load annotation becomes a Warning Event.
    let pods: Api<Pod> = ns.api();
    let bad = serde_json::json!({"metadata": {"annotations": {"routestate.dev/load": "lots"}}});
    pods.patch("web-2", &PatchParams::default(), &Patch::Merge(&bad)).await.unwrap();

    // kubectl describe: conditions and both Events.
    support::wait_for("kubectl describe with conditions and events", TIMEOUT, || async {
        let out = run("kubectl", &["describe", "routestate", "web", "-n", &ns.name], None).await;
        let want = [
            "Conditions:",
            "Ready",
            "RedisSynced",
            "LeaderAvailable",
            "Observed Generation:",
            "Events:",
            "RoutingChanged",
            // One Event per transition and reconcile (kube's Recorder folds same reason/action/
            // related into one series), so the drain of pod 1 has its own line.
            "DENY_NEW_CALL",
            "MalformedAnnotation",
        ];
        match want.iter().find(|w| !out.stdout.contains(*w)) {
            None => Ok(()),
            Some(missing) => Err(format!("missing {missing:?} in:\n{}{}", out.stdout, out.stderr)),
        }
    })
    .await;

    // kubectl explain: the field docs come from the Rust doc comments.
    let explain = ok("kubectl", &["explain", "routestate.spec.pods"], None).await;
    for want in ["Per-pod overrides", "index", "routingState", "loadState", "StatefulSet index of the pod"] {
        assert!(explain.contains(want), "kubectl explain routestate.spec.pods lacks {want:?}:\n{explain}");
    }
    let explain = ok("kubectl", &["explain", "routestate.spec"], None).await;
    for want in ["routingState", "updatePeriodSeconds", "cpuFactor", "statefulSet", "serviceName"] {
        assert!(explain.contains(want), "kubectl explain routestate.spec lacks {want:?}:\n{explain}");
    }

    // And kubectl wait does not report Ready when it cannot hold: a RouteState whose StatefulSet
    // does not exist gets Ready=False for its generation, and the wait times out.
    let orphan: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
        "metadata": {"name": "orphan"}, "spec": {"statefulSet": "missing"}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &orphan).await.unwrap();
    support::wait_for("orphan Ready=False", TIMEOUT, || async {
        let rs = rs_api.get("orphan").await.map_err(|e| e.to_string())?;
        let ready = rs.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Ready"));
        match ready {
            Some(c) if c.status == "False" && c.observed_generation == Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let waited =
        run("kubectl", &["wait", "--for=condition=Ready", "routestate/orphan", "-n", &ns.name, "--timeout=1s"], None)
            .await;
    assert!(!waited.ok, "kubectl wait reported Ready for a RouteState without its StatefulSet");

    // The metrics and health endpoints the README documents exist under those names.
    let addr = operator.http_addr().expect("the operator serves HTTP");
    assert!(http_get(addr, "/healthz").await.starts_with("HTTP/1.0 200"));
    assert!(http_get(addr, "/readyz").await.starts_with("HTTP/1.0 200"));
    let metrics = http_get(addr, "/metrics").await;
    let readme = std::fs::read_to_string(support::cli::repo_root().join("README.md")).unwrap();
    // Rows look like "| `routestate_<name>{label,label}` | meaning |". Every documented metric
    // is served from the start, a labelled one with each documented label (the operator creates
    // the children of its bounded label sets up front, so a dashboard or an alert on them has a
    // series before the first event).
    let documented: Vec<(String, Vec<String>)> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `routestate_"))
        .map(|rest| {
            let cell = rest.split('`').next().unwrap();
            let (name, labels) = cell.split_once('{').unwrap_or((cell, ""));
            let labels = labels.trim_end_matches('}').split(',').map(str::trim).filter(|l| !l.is_empty());
            (name.to_owned(), labels.map(str::to_owned).collect())
        })
        .collect();
    assert!(documented.len() >= 5, "README documents too few metrics: {documented:?}");
    assert!(documented.iter().any(|(_, l)| !l.is_empty()), "README documents no labelled metric: {documented:?}");
    let samples: Vec<&str> = metrics.lines().filter(|l| !l.starts_with('#')).collect();
    for (name, labels) in &documented {
        let full = format!("routestate_{name}");
        // A histogram is served as its _bucket, _count and _sum series.
        let series = |l: &&&str| {
            let base = l.split([' ', '{']).next().unwrap_or_default();
            base == full || ["_bucket", "_count", "_sum"].iter().any(|s| base.strip_suffix(s) == Some(full.as_str()))
        };
        let served: Vec<&&str> = samples.iter().filter(series).collect();
        assert!(!served.is_empty(), "README metric {full} is not served:\n{metrics}");
        for label in labels {
            assert!(
                served.iter().any(|l| l.contains(&format!("{label}=\""))),
                "README metric {full} is not served with label {label}: {served:?}"
            );
        }
    }

    // Delete the RouteStates while the operator runs, so their finalizers do not block the
    // namespace's deletion.
    rs_api.delete_collection(&Default::default(), &Default::default()).await.unwrap();
    support::wait_for("RouteStates deleted", TIMEOUT, || async {
        let left = rs_api.list(&Default::default()).await.map_err(|e| e.to_string())?.items.len();
        if left == 0 { Ok(()) } else { Err(format!("{left} left")) }
    })
    .await;
    operator.shutdown().await.expect("graceful shutdown");
}
