//! The chart's alert rules and Grafana dashboard, proven on a real Prometheus (the Debian package
//! `prometheus`, which `hack/cluster.sh up` installs): a private server on a free loopback port
//! with its own data folder scrapes an in-process operator publishing to a private Redis, with the
//! rules rendered from the chart by `helm template` (short `for:` durations set through values).
//! `promtool check rules` accepts them, every dashboard query returns data for the scenario's
//! RouteState, and the alerts fire when their cause is induced and resolve when it goes: the
//! Redis ones when the private Redis is killed, the lease one when the operator stops.
//!
//! A static test checks the dashboard alone: valid JSON, every query parses (promtool) and names
//! only metrics the operator serves.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    runtime::reflector::ObjectRef,
};
use routestate::{
    core::{Published, RoutingState},
    operator::{RouteState, metrics::Metrics},
    store::RedisOptions,
};
use serde_json::Value as Json;

use crate::{
    chart_static::render,
    cluster_smoke::statefulset,
    kubectl_experience::http_get,
    support::{
        self, TestNamespace,
        cli::chart_dir,
        faults::{PrivateRedis, TempDir, free_port},
        operator::{install_crd, start_operator_at, start_operator_with},
    },
};

/// The chart release the rules are rendered for; its operator job is `<release>-routestate-metrics`.
const RELEASE: &str = "obs";
const JOB: &str = "obs-routestate-metrics";
/// Generous liveness deadline for each step (Prometheus evaluates every second).
const TIMEOUT: Duration = Duration::from_secs(60);
/// The alerts the chart must define.
const ALERTS: [&str; 6] = [
    "RoutestateNoLeader",
    "RoutestateRedisUnreachable",
    "RoutestatePublishFailing",
    "RoutestateHeartbeatStale",
    "RoutestateNotReady",
    "RoutestateReconcileErrors",
];

fn dashboard_path() -> PathBuf {
    chart_dir().join("dashboards/routestate.json")
}

/// Every panel of the dashboard (rows' nested panels included), in order.
fn panels(dashboard: &Json) -> Vec<&Json> {
    fn walk<'a>(list: &'a Json, out: &mut Vec<&'a Json>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// (panel title, query) of every query of the dashboard.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let dashboard: Json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut out = Vec::new();
    for p in panels(&dashboard).into_iter().filter(|p| p["type"] != "row") {
        let title = p["title"].as_str().unwrap_or_default().to_owned();
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or_default();
        assert!(!title.is_empty() && !targets.is_empty(), "panel {p} needs a title and queries");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "panel {title:?} has a target without expr: {t}");
            out.push((title.clone(), expr.to_owned()));
        }
    }
    out
}

/// A dashboard query with Grafana's variables replaced as for one RouteState.
fn substitute(expr: &str, namespace: &str, routestate: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$job", JOB)
        .replace("$namespace", namespace)
        .replace("$routestate", routestate)
}

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// ranges and grouping lists that are neither functions, aggregations nor keywords. Enough for
/// the queries of our own dashboard and rules, which the tests keep that simple.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const KEYWORDS: [&str; 19] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
    ];
    const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    let chars: Vec<char> = expr.chars().collect();
    // Index just past the end of the region opened at `i` by `open` (quotes inside are skipped).
    let skip = |mut i: usize, close: char| {
        i += 1;
        while i < chars.len() && chars[i] != close {
            if chars[i] == '"' {
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
            }
            i += 1;
        }
        i + 1
    };
    let mut names = BTreeSet::new();
    let (mut i, mut list_follows) = (0, false);
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i = skip(i, '"');
        } else if c == '{' {
            i = skip(i, '}');
        } else if c == '[' {
            i = skip(i, ']');
        } else if c == '(' && list_follows {
            i = skip(i, ')');
            list_follows = false;
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let ident: String = chars[start..i].iter().collect();
            let next = chars[i..].iter().find(|c| !c.is_whitespace());
            if GROUPING.contains(&ident.as_str()) {
                list_follows = true;
            } else if !KEYWORDS.contains(&ident.as_str()) && next != Some(&'(') {
                names.insert(ident);
            }
        } else {
            i += 1;
        }
    }
    names
}

/// The sample names `/metrics` serves once a RouteState has been published and reconciled.
fn served_metric_names() -> BTreeSet<String> {
    let m = Metrics::default();
    let rs = ObjectRef::<RouteState>::new("web").within("apps");
    let published = Published { now_ms: 1, pods: [(0, (1, RoutingState::Ready))].into() };
    m.observe_publish(&rs, 1, Some(&published));
    m.observe_status(&rs, &[]);
    drop(m.reconcile_timer());
    m.render()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

/// Writes `exprs` as recording rules and runs `promtool check rules` on them: it parses each.
fn promtool_check(dir: &Path, name: &str, rules_yaml: &str) -> String {
    let file = dir.join(name);
    std::fs::write(&file, rules_yaml).unwrap();
    let out = Command::new("promtool").args(["check", "rules"]).arg(&file).output().unwrap_or_else(|e| {
        panic!("running promtool ({e}): hack/cluster.sh up installs it (Debian package prometheus)")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules {name} failed:\n{text}\n{rules_yaml}");
    text
}

#[test]
fn metric_names_skips_functions_labels_and_grouping() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"x|y",q="}"}[5m]))) / on (ns) group_left (z) b_total or vector(0) > bool 1e3"#,
    );
    assert_eq!(names, BTreeSet::from(["a_bucket".to_owned(), "b_total".to_owned()]));
    assert_eq!(metric_names("time() - max by (n) (c)"), BTreeSet::from(["c".to_owned()]));
}

#[test]
fn dashboard_is_json_whose_queries_parse_and_name_served_metrics() {
    let path = dashboard_path();
    let dashboard: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vars: Vec<&str> =
        dashboard["templating"]["list"].as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(vars, ["datasource", "job", "namespace", "routestate"]);
    let all = panels(&dashboard);
    let ids: BTreeSet<u64> = all.iter().map(|p| p["id"].as_u64().expect("every panel has an id")).collect();
    assert_eq!(ids.len(), all.len(), "panel ids repeat");
    for p in all.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {:?} does not use the datasource variable",
            p["title"]
        );
    }

    let queries = dashboard_queries();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        let expr = substitute(expr, "apps", "web");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = TempDir::new("dashboard");
    promtool_check(dir.path(), "dashboard.yml", &rules);

    let served = served_metric_names();
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "panel {title:?}: {expr} selects no metric");
        let unknown: Vec<&String> = names.difference(&served).collect();
        assert!(
            unknown.is_empty(),
            "panel {title:?} queries {unknown:?}, which the operator does not serve: {served:?}"
        );
    }
}

/// A private Prometheus: its own data folder and config, a free loopback port, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Prometheus {
    /// Scrapes `target` as job [`JOB`] every second and evaluates `rules` every second.
    fn start(target: SocketAddr, rules: &str) -> Self {
        let dir = TempDir::new("prometheus");
        std::fs::write(dir.path().join("rules.yml"), rules).unwrap();
        // honor_labels as the chart's ServiceMonitor: the RouteStates' `namespace` label stays.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: {JOB}\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting prometheus ({e}): hack/cluster.sh up installs the Debian package prometheus")
            });
        Self { child, addr, dir }
    }

    /// Waits until it serves its API (`/-/ready`: the TSDB is open and the rules are loaded).
    async fn wait_ready(&self) {
        support::wait_for("Prometheus ready", TIMEOUT, || async {
            tokio::net::TcpStream::connect(self.addr).await.map_err(|e| format!("{e}; log:\n{}", self.log()))?;
            let raw = http_get(self.addr, "/-/ready").await;
            if raw.split_whitespace().nth(1) == Some("200") { Ok(()) } else { Err(raw) }
        })
        .await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `data` of a GET on the HTTP API, or why not.
    async fn api(&self, path: &str) -> Result<Json, String> {
        let raw = http_get(self.addr, path).await;
        let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).ok_or_else(|| format!("no body: {raw}"))?;
        let v: Json = serde_json::from_str(body).map_err(|e| format!("{e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("GET {path}: {body}"));
        }
        Ok(v["data"].clone())
    }

    /// The instant vector of `expr` now.
    async fn query(&self, expr: &str) -> Result<Vec<Json>, String> {
        let data = self.api(&format!("/api/v1/query?query={}", url_encode(expr))).await?;
        Ok(data["result"].as_array().cloned().unwrap_or_default())
    }

    /// Alerting rule name → (state, health, active alerts' labels).
    async fn alerts(&self) -> Result<BTreeMap<String, (String, String, Vec<Json>)>, String> {
        let data = self.api("/api/v1/rules?type=alert").await?;
        let mut out = BTreeMap::new();
        for g in data["groups"].as_array().into_iter().flatten() {
            for r in g["rules"].as_array().into_iter().flatten() {
                let labels = r["alerts"].as_array().into_iter().flatten().map(|a| a["labels"].clone()).collect();
                let state = r["state"].as_str().unwrap_or_default().to_owned();
                let health = format!(
                    "{} {}",
                    r["health"].as_str().unwrap_or_default(),
                    r["lastError"].as_str().unwrap_or_default()
                );
                out.insert(
                    r["name"].as_str().unwrap_or_default().to_owned(),
                    (state, health.trim().to_owned(), labels),
                );
            }
        }
        Ok(out)
    }

    /// Waits until each of `firing` fires (for a RouteState alert: for `routestate`) and each of
    /// `inactive` is inactive.
    async fn wait_alerts(&self, what: &str, firing: &[&str], inactive: &[&str], routestate: Option<(&str, &str)>) {
        support::wait_for(what, TIMEOUT, || async {
            let alerts = self.alerts().await?;
            for name in firing {
                let (state, _, labels) = alerts.get(*name).ok_or(format!("no rule {name}: {alerts:?}"))?;
                let ours = |l: &Json| {
                    l["namespace"].is_null()
                        || routestate.is_none_or(|(ns, rs)| l["namespace"] == ns && l["routestate"] == rs)
                };
                if state != "firing" || !labels.iter().any(ours) {
                    return Err(format!("{name} is {state} with {labels:?}; all: {alerts:?}"));
                }
            }
            for name in inactive {
                let (state, ..) = alerts.get(*name).ok_or(format!("no rule {name}"))?;
                if state != "inactive" {
                    return Err(format!("{name} is {state}; all: {alerts:?}"));
                }
            }
            Ok(())
        })
        .await;
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The chart's alert rules for release [`RELEASE`], as a Prometheus rule file, with `for:`
/// durations and the rate window short enough for a test (values, not template edits).
async fn rendered_rules() -> String {
    let mut sets =
        vec!["metrics.prometheusRule.enabled=true".to_owned(), "metrics.prometheusRule.rateWindow=10s".to_owned()];
    for key in ["noLeader", "redisUnreachable", "publishFailing", "heartbeatStale", "notReady", "reconcileErrors"] {
        sets.push(format!("metrics.prometheusRule.for.{key}=2s"));
    }
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let docs = render(RELEASE, "ops", &sets).await;
    let rule = docs.iter().find(|d| d["kind"] == "PrometheusRule").expect("a PrometheusRule when enabled=true");
    serde_yaml::to_string(&rule["spec"]).unwrap()
}

/// Whether a sample's value is a finite number.
fn finite(sample: &Json) -> bool {
    sample["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboard_work_on_a_real_prometheus() {
    let rules = rendered_rules().await;
    let dir = TempDir::new("rules");
    let checked = promtool_check(dir.path(), "rules.yml", &rules);
    assert!(checked.contains(&format!("SUCCESS: {} rules found", ALERTS.len())), "{checked}");
    let served = served_metric_names();
    for expr in rules.lines().filter_map(|l| l.trim().strip_prefix("expr: ")) {
        let unknown: Vec<String> = metric_names(expr).difference(&served).cloned().collect();
        assert!(unknown.is_empty(), "alert expr {expr} queries {unknown:?}, which the operator does not serve");
    }

    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "observe").await;
    let mut redis = PrivateRedis::start();
    let mut redis_opts = RedisOptions::standalone(redis.url());
    redis_opts.op_timeout = Duration::from_millis(500);
    let operator = start_operator_with(&client, &ns.name, None, redis_opts.clone()).await;
    let http = operator.http_addr().expect("the operator serves HTTP");
    let prometheus = Prometheus::start(http, &rules);
    prometheus.wait_ready().await;

    ns.api::<StatefulSet>().create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();
    let rs_api: Api<RouteState> = ns.api();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "metadata": {"name": "web"},
        "spec": {"updatePeriodSeconds": 1}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();
    let ready = format!(
        r#"routestate_service_pods{{job="{JOB}",namespace="{}",routestate="web",routing="READY"}} == 3"#,
        ns.name
    );
    support::wait_for("Prometheus to scrape 3 READY pods of web", TIMEOUT, || async {
        if prometheus.query(&ready).await?.is_empty() { Err(prometheus.log()) } else { Ok(()) }
    })
    .await;
    // Changes after Prometheus' first scrapes (so the reconcile rate and latency panels have
    // reconciles inside their window): a load on one pod and pod 1 draining, which also give the
    // load and draining panels something to show.
    let pods: Api<Pod> = ns.api();
    support::wait_for("pod web-2", TIMEOUT, || async {
        let load = serde_json::json!({"metadata": {"annotations": {"routestate.dev/load": "40"}}});
        pods.patch("web-2", &PatchParams::default(), &Patch::Merge(&load)).await.map(|_| ()).map_err(|e| e.to_string())
    })
    .await;
    let drain = serde_json::json!({"spec": {"pods": [{"index": 1, "routingState": "DenyNewCall"}]}});
    rs_api.patch("web", &PatchParams::default(), &Patch::Merge(&drain)).await.unwrap();
    let scraped = format!(
        r#"routestate_service_pods{{job="{JOB}",namespace="{}",routestate="web",routing="DENY_NEW_CALL"}} == 1 and on () routestate_service_pods{{job="{JOB}",namespace="{}",routestate="web",routing="READY"}} == 2"#,
        ns.name, ns.name
    );
    support::wait_for("Prometheus to scrape 2 READY and 1 draining pod of web", TIMEOUT, || async {
        if prometheus.query(&scraped).await?.is_empty() { Err(prometheus.log()) } else { Ok(()) }
    })
    .await;

    // Healthy: every rule loaded and evaluates, none is active.
    support::wait_for("every alert rule evaluated", TIMEOUT, || async {
        let alerts = prometheus.alerts().await?;
        let names: BTreeSet<&str> = alerts.keys().map(String::as_str).collect();
        assert_eq!(names, BTreeSet::from(ALERTS), "the rules Prometheus loaded");
        match alerts.iter().find(|(_, (_, health, _))| health != "ok") {
            None => Ok(()),
            Some((name, (_, health, _))) => Err(format!("{name}: {health}")),
        }
    })
    .await;
    prometheus.wait_alerts("every alert inactive on a healthy service", &[], &ALERTS, None).await;

    // Every dashboard query returns data for this RouteState, from metrics Prometheus scraped.
    for (title, expr) in dashboard_queries() {
        let q = substitute(&expr, &ns.name, "web");
        support::wait_for(&format!("data for panel {title:?}: {q}"), TIMEOUT, || async {
            let result = prometheus.query(&q).await?;
            let per_service = expr.contains("$routestate");
            let ours = |s: &Json| {
                !per_service || (s["metric"]["namespace"] == ns.name.as_str() && s["metric"]["routestate"] == "web")
            };
            if !result.is_empty() && result.iter().all(|s| finite(s) && ours(s)) {
                Ok(())
            } else {
                Err(format!("{result:?}"))
            }
        })
        .await;
    }
    let names = prometheus.api("/api/v1/label/__name__/values").await.unwrap();
    let scraped_names: BTreeSet<String> =
        names.as_array().unwrap().iter().filter_map(|n| n.as_str().map(str::to_owned)).collect();
    for (title, expr) in dashboard_queries() {
        let missing: Vec<String> = metric_names(&expr).difference(&scraped_names).cloned().collect();
        assert!(missing.is_empty(), "panel {title:?} queries {missing:?}, which Prometheus never scraped");
    }

    // Redis dies: the Redis, publish, staleness and readiness alerts fire for this service; the
    // lease alert does not (the operator still leads).
    redis.kill();
    let service = Some((ns.name.as_str(), "web"));
    let redis_alerts =
        ["RoutestateRedisUnreachable", "RoutestatePublishFailing", "RoutestateHeartbeatStale", "RoutestateNotReady"];
    prometheus.wait_alerts("the Redis alerts firing", &redis_alerts, &["RoutestateNoLeader"], service).await;
    redis.restart();
    prometheus.wait_alerts("the Redis alerts resolved", &[], &redis_alerts, None).await;

    // The operator stops: no replica leads, the lease alert fires; a new operator resolves it.
    operator.shutdown().await.expect("graceful shutdown");
    prometheus.wait_alerts("the lease alert firing", &["RoutestateNoLeader"], &[], None).await;
    let operator = start_operator_at(&client, &ns.name, None, redis_opts, http).await;
    prometheus.wait_alerts("every alert resolved after the restart", &[], &ALERTS, None).await;

    rs_api.delete("web", &Default::default()).await.unwrap();
    support::wait_for("RouteState web deleted", TIMEOUT, || async {
        match rs_api.get_opt("web").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    operator.shutdown().await.expect("graceful shutdown");
}
