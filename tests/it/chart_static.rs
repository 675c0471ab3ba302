//! The Helm chart without installing it: CRDs identical to the generated ones, `helm lint`,
//! the schema rejecting typos and password values, the rendered security settings and RBAC, and
//! `helm template | kubectl apply --dry-run=server` accepted by the real API server.

use serde::Deserialize;
use serde_yaml::Value;

use crate::support::{
    self, TestNamespace,
    cli::{chart_dir, ok, repo_root, run},
};

/// Renders the chart with `--set` pairs into its documents.
pub async fn render(release: &str, ns: &str, sets: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec!["template", release, chart.to_str().unwrap(), "-n", ns];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = ok("helm", &args, None).await;
    serde_yaml::Deserializer::from_str(&out)
        .map(|d| Value::deserialize(d).expect("helm template output is YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name_suffix: &str) -> Option<&'a Value> {
    docs.iter().find(|d| {
        d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str().is_some_and(|n| n.ends_with(name_suffix))
    })
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut k: Vec<String> = docs.iter().filter_map(|d| d["kind"].as_str().map(str::to_owned)).collect();
    k.sort();
    k
}

/// (apiGroup, resource, sorted verbs) of every rule, for exact comparison.
pub fn rules(role: &Value) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for r in role["rules"].as_sequence().expect("rules") {
        let verbs = {
            let mut v: Vec<String> =
                r["verbs"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect();
            v.sort();
            v
        };
        for g in r["apiGroups"].as_sequence().unwrap() {
            for res in r["resources"].as_sequence().unwrap() {
                out.push((g.as_str().unwrap().to_owned(), res.as_str().unwrap().to_owned(), verbs.clone()));
            }
        }
    }
    out.sort();
    out
}

/// The operator's rules as `routestate::operator::rbac` lists them (one home for RBAC).
pub fn expected(list: &[routestate::operator::rbac::Rule]) -> Vec<(String, String, Vec<String>)> {
    let mut all: Vec<_> = list
        .iter()
        .map(|r| {
            let mut v: Vec<String> = r.verbs.iter().map(|s| s.to_string()).collect();
            v.sort();
            (r.group.to_owned(), r.resource.to_owned(), v)
        })
        .collect();
    all.sort();
    all
}

#[test]
fn chart_crds_are_the_generated_crds_byte_for_byte() {
    let top = repo_root().join("crds");
    let chart = chart_dir().join("crds");
    let names = |dir: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(&top),
        names(&chart),
        "crds/ and charts/routestate/crds/ hold different files; run hack/sync-chart-crds.sh"
    );
    for name in names(&top) {
        let a = std::fs::read(top.join(&name)).unwrap();
        let b = std::fs::read(chart.join(&name)).unwrap();
        assert!(
            a == b,
            "charts/routestate/crds/{name} differs from crds/{name}: run `make crd` (or hack/sync-chart-crds.sh)"
        );
    }
}

#[tokio::test]
async fn helm_lint_passes_for_default_and_full_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for sets in [
        &[][..],
        &[
            "watchNamespace=apps",
            "redis.urls={rediss://a:6379,rediss://b:6379}",
            "redis.cluster=true",
            "redis.existingSecret.name=redis-auth",
            "redis.tls.caConfigMap.name=redis-ca",
            "metrics.serviceMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
            "metrics.grafanaDashboard.enabled=true",
            "replicaCount=1",
            "leaderElection.enabled=false",
        ][..],
        // Redis behind Sentinel, with the sentinels' own password.
        &[
            "redis.urls={rediss://redis-node-0.redis-headless:26379,rediss://redis-node-1.redis-headless:26379}",
            "redis.sentinel.masterName=mymaster",
            "redis.sentinel.existingSecret.name=redis-sentinel-auth",
            "redis.existingSecret.name=redis-auth",
            "redis.tls.caSecret.name=redis-ca",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        for s in sets {
            args.extend(["--set", s]);
        }
        ok("helm", &args, None).await;
    }
}

#[tokio::test]
async fn schema_rejects_typos_and_password_values() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for (set, must_name) in [
        ("replicaCont=3", "replicaCont"),
        ("redis.password=hunter2", "password"),
        ("redis.url=redis://x:6379", "url"),
        ("redis.existingSecret.passwrd=x", "passwrd"),
        ("metrics.serviceMonitor.enable=true", "enable"),
        ("securityContext.runAsRoot=true", "runAsRoot"),
        ("logFormat=xml", "logFormat"),
        ("redis.urls={http://x:6379}", "urls"),
        ("redis.sentinel.master=x", "master"),
        ("redis.sentinel.password=hunter2", "password"),
    ] {
        let o = run("helm", &["template", "t", chart, "--set", set], None).await;
        assert!(!o.ok, "helm template accepted --set {set}:\n{}", o.stdout);
        assert!(
            o.stderr.contains("schema") && o.stderr.contains(must_name),
            "--set {set}: error does not name {must_name}: {}",
            o.stderr
        );
    }
    // Combinations the schema cannot express are refused by the templates, with a reason.
    for (sets, reason) in [
        (&["replicaCount=2", "leaderElection.enabled=false"][..], "leaderElection"),
        (&["redis.urls={redis://a:1,redis://b:1}"][..], "redis.cluster"),
        (&["leaderElection.renewPeriodSeconds=8"][..], "less than half"),
        (&["redis.tls.caSecret.name=a", "redis.tls.caConfigMap.name=b"][..], "at most one"),
        (&["redis.cluster=true", "redis.sentinel.masterName=m"][..], "exclude each other"),
        (&["redis.sentinel.existingSecret.name=s"][..], "masterName is empty"),
    ] {
        let mut args = vec!["template", "t", chart];
        for s in sets {
            args.extend(["--set", s]);
        }
        let o = run("helm", &args, None).await;
        assert!(!o.ok && o.stderr.contains(reason), "{sets:?}: expected a refusal naming {reason}: {}", o.stderr);
    }
}

#[tokio::test]
async fn rendered_deployment_is_hardened_and_rbac_is_exact() {
    let docs = render("rel", "ops", &[]).await;
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let dep = find(&docs, "Deployment", "rel-routestate").expect("Deployment");
    assert_eq!(dep["spec"]["replicas"].as_u64(), Some(2));
    let pod = &dep["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"].as_str(), Some("rel-routestate"));
    assert!(
        pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 15,
        "grace must cover the ~10 s drain + lease release"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"].as_str(), Some("/healthz"));
    assert_eq!(c["readinessProbe"]["httpGet"]["path"].as_str(), Some("/readyz"));
    assert!(c["resources"]["requests"]["memory"].is_string() && c["resources"]["limits"]["memory"].is_string());
    let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args[0], "run");
    assert!(args.contains(&"--leader-elect"), "{args:?}");

    // The operator's rules, nothing more; no Secrets anywhere; Leases only in the release namespace.
    let cr = find(&docs, "ClusterRole", "rel-routestate").unwrap();
    assert_eq!(rules(cr), expected(routestate::operator::rbac::RULES));
    let lease = find(&docs, "Role", "-leader-election").unwrap();
    assert_eq!(lease["metadata"]["namespace"].as_str(), Some("ops"));
    assert_eq!(rules(lease), expected(routestate::operator::rbac::LEASE_RULES));
    let all = serde_yaml::to_string(&docs).unwrap();
    assert!(!all.contains("secrets"), "no rule may name Secrets");

    // Namespaced install: a Role in the watched namespace instead of the ClusterRole.
    let docs = render("rel", "ops", &["watchNamespace=apps", "replicaCount=1", "redis.existingSecret.name=auth"]).await;
    assert!(find(&docs, "ClusterRole", "").is_none() && find(&docs, "ClusterRoleBinding", "").is_none());
    assert!(find(&docs, "PodDisruptionBudget", "").is_none(), "no PDB for a single replica");
    let role = docs
        .iter()
        .find(|d| d["kind"].as_str() == Some("Role") && d["metadata"]["name"].as_str() == Some("rel-routestate"))
        .unwrap();
    assert_eq!(role["metadata"]["namespace"].as_str(), Some("apps"));
    assert_eq!(rules(role), expected(routestate::operator::rbac::RULES));
    let dep = find(&docs, "Deployment", "rel-routestate").unwrap();
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let args = serde_yaml::to_string(&c["args"]).unwrap();
    assert!(args.contains("--namespace=apps") && args.contains("--redis-password-file="), "{args}");
    let vol = &dep["spec"]["template"]["spec"]["volumes"][0];
    assert_eq!(
        vol["secret"]["secretName"].as_str(),
        Some("auth"),
        "the password Secret is mounted, not read via the API"
    );

    // The optional ServiceMonitor scrapes the metrics Service's named port.
    let docs =
        render("rel", "ops", &["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prom"])
            .await;
    let sm = find(&docs, "ServiceMonitor", "rel-routestate").expect("ServiceMonitor");
    assert_eq!(sm["spec"]["endpoints"][0]["port"].as_str(), Some("metrics"));
    assert_eq!(sm["metadata"]["labels"]["release"].as_str(), Some("prom"));
    let svc = find(&docs, "Service", "rel-routestate-metrics").expect("metrics Service");
    assert_eq!(svc["spec"]["ports"][0]["name"].as_str(), Some("metrics"));
}

#[tokio::test]
async fn rendered_chart_is_accepted_by_the_api_server() {
    let client = support::kube_client().await;
    crate::support::operator::install_crd(&client).await;
    let ns = TestNamespace::new(&client, "chart-dry").await;
    let release = support::unique_name("dry");
    let watch = format!("watchNamespace={}", ns.name);
    for sets in [&[][..], &[watch.as_str(), "redis.existingSecret.name=auth", "redis.tls.caSecret.name=ca"][..]] {
        let chart = chart_dir();
        let mut args = vec!["template", release.as_str(), chart.to_str().unwrap(), "-n", ns.name.as_str()];
        for s in sets {
            args.extend(["--set", s]);
        }
        let manifest = ok("helm", &args, None).await;
        let out = ok("kubectl", &["apply", "--dry-run=server", "-f", "-"], Some(&manifest)).await;
        assert!(out.contains("deployment.apps/") && out.contains("(server dry run)"), "{sets:?}: {out}");
    }
}

/// The chart's container args, with `$(POD_NAMESPACE)` expanded as the kubelet would.
async fn rendered_args(sets: &[&str]) -> Vec<String> {
    let docs = render("rel", "ops", sets).await;
    let dep = find(&docs, "Deployment", "rel-routestate").expect("Deployment");
    dep["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace("$(POD_NAMESPACE)", "ops"))
        .collect()
}

#[tokio::test]
async fn chart_args_are_accepted_by_the_routestate_binary() {
    // Every flag the chart passes must parse: with a missing kubeconfig the binary gets past
    // argument parsing and fails at runtime (exit 1, "reading kubeconfig"), whereas an unknown
    // flag or bad value would exit 2 with clap's message.
    let bin = env!("CARGO_BIN_EXE_routestate");
    let kubeconfig = "--kubeconfig=/nonexistent/routestate-test/kubeconfig";
    for sets in [
        &[][..],
        &[
            "watchNamespace=apps",
            "redis.urls={rediss://a:6379,rediss://b:6379}",
            "redis.cluster=true",
            "redis.tls.caSecret.name=ca",
            "leaderElection.leaseDurationSeconds=30",
            "leaderElection.renewPeriodSeconds=5",
            "logFormat=text",
        ][..],
        &["redis.urls={redis://s0:26379,redis://s1:26379,redis://s2:26379}", "redis.sentinel.masterName=mymaster"][..],
    ] {
        let mut args = rendered_args(sets).await;
        args.push(kubeconfig.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(bin, &args, None).await;
        assert!(
            !o.ok && o.stderr.contains("reading kubeconfig /nonexistent/routestate-test/kubeconfig"),
            "{sets:?}: routestate {args:?} did not get past argument parsing:\n{}",
            o.stderr
        );
    }
    // With the password Secrets: the mounted file's path reaches the binary (which reads it first).
    for (sets, read) in [
        (
            &["redis.existingSecret.name=auth"][..],
            "reading the Redis password file /etc/routestate/redis-password/password",
        ),
        (
            &["redis.sentinel.masterName=m", "redis.sentinel.existingSecret.name=s"][..],
            "reading the Redis Sentinel password file /etc/routestate/redis-sentinel-password/password",
        ),
    ] {
        let mut args = rendered_args(sets).await;
        args.push(kubeconfig.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(bin, &args, None).await;
        assert!(o.stderr.contains(read), "routestate {args:?}:\n{}", o.stderr);
    }
}

#[tokio::test]
async fn alert_rules_and_dashboard_are_opt_in() {
    let count = |docs: &[Value], kind: &str| docs.iter().filter(|d| d["kind"].as_str() == Some(kind)).count();
    // The PrometheusRule: off by default; "auto" only where the cluster serves the API; true always.
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    for (mode, api, want) in [("false", true, 0), ("auto", false, 0), ("auto", true, 1), ("true", false, 1)] {
        let set = format!("metrics.prometheusRule.enabled={mode}");
        let mut args = vec!["template", "rel", chart, "-n", "ops", "--set", set.as_str()];
        if api {
            args.extend(["--api-versions", "monitoring.coreos.com/v1/PrometheusRule"]);
        }
        let out = ok("helm", &args, None).await;
        let docs: Vec<Value> =
            serde_yaml::Deserializer::from_str(&out).map(|d| Value::deserialize(d).unwrap()).collect();
        assert_eq!(count(&docs, "PrometheusRule"), want, "enabled={mode}, API served: {api}");
    }
    let docs = render(
        "rel",
        "ops",
        &[
            "metrics.prometheusRule.enabled=true",
            "metrics.prometheusRule.labels.release=prom",
            "metrics.prometheusRule.alertLabels.team=games",
            "metrics.prometheusRule.for.noLeader=3m",
        ],
    )
    .await;
    let rule = find(&docs, "PrometheusRule", "rel-routestate").expect("PrometheusRule");
    assert_eq!(rule["metadata"]["labels"]["release"].as_str(), Some("prom"));
    let alerts = rule["spec"]["groups"][0]["rules"].as_sequence().unwrap();
    for a in alerts {
        let name = a["alert"].as_str().unwrap();
        assert_eq!(a["labels"]["team"].as_str(), Some("games"), "{name}");
        assert!(a["labels"]["severity"].is_string(), "{name} has no severity");
        assert!(a["expr"].as_str().unwrap().contains(r#"job="rel-routestate-metrics""#), "{name}: {:?}", a["expr"]);
        for key in ["summary", "description", "runbook_url"] {
            assert!(a["annotations"][key].as_str().is_some_and(|s| !s.is_empty()), "{name} lacks {key}");
        }
        // Each alert has its runbook section in docs/operations.md.
        let section = format!("### {name}");
        let ops = std::fs::read_to_string(repo_root().join("docs/operations.md")).unwrap();
        assert!(ops.contains(&section), "docs/operations.md has no {section:?}");
    }
    let no_leader = alerts.iter().find(|a| a["alert"] == "RoutestateNoLeader").unwrap();
    assert_eq!(no_leader["for"].as_str(), Some("3m"));
    let sm = render("rel", "ops", &["metrics.serviceMonitor.enabled=true"]).await;
    let sm = find(&sm, "ServiceMonitor", "rel-routestate").unwrap();
    assert_eq!(
        sm["spec"]["endpoints"][0]["honorLabels"].as_bool(),
        Some(true),
        "per-RouteState namespace labels are kept"
    );

    // The dashboard ConfigMap: the sidecar's label, the namespace it watches, the JSON file as is.
    assert_eq!(count(&render("rel", "ops", &[]).await, "ConfigMap"), 0);
    let docs = render(
        "rel",
        "ops",
        &[
            "metrics.grafanaDashboard.enabled=true",
            "metrics.grafanaDashboard.namespace=monitoring",
            "metrics.grafanaDashboard.label=grafana_dashboard_custom",
            "metrics.grafanaDashboard.annotations.grafana_folder=Games",
        ],
    )
    .await;
    let cm = find(&docs, "ConfigMap", "rel-routestate-dashboard").expect("dashboard ConfigMap");
    assert_eq!(cm["metadata"]["namespace"].as_str(), Some("monitoring"));
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard_custom"].as_str(), Some("1"));
    assert_eq!(cm["metadata"]["annotations"]["grafana_folder"].as_str(), Some("Games"));
    let json = std::fs::read_to_string(chart_dir().join("dashboards/routestate.json")).unwrap();
    assert_eq!(cm["data"]["routestate.json"].as_str(), Some(json.trim_end()));

    // Values the schema refuses.
    for (set, must_name) in [
        ("metrics.prometheusRule.enabled=yes", "enabled"),
        ("metrics.prometheusRule.for.noLeader=soon", "noLeader"),
        ("metrics.prometheusRule.for.noleader=1m", "noleader"),
        ("metrics.grafanaDashboard.lable=x", "lable"),
    ] {
        let o = run("helm", &["template", "t", chart, "--set", set], None).await;
        assert!(!o.ok && o.stderr.contains(must_name), "--set {set}: {}", o.stderr);
    }
}
