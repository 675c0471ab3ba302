//! `routestate` as a kubectl plugin, run by the cluster's real kubectl: a `kubectl-routestate`
//! symlink on `PATH` makes `kubectl routestate …` the routestate command (kubectl finds it and
//! passes the arguments on), with kubectl's kubeconfig flags: `--kubeconfig`, `--context` (and
//! its namespace), `-n`; `$KUBECONFIG` as kubectl reads it.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, api::PostParams};
use routestate::{core::RoutingState, operator::RouteState};
use tokio::process::Command;

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        cli::{ok, testbin},
        faults::TempDir,
        operator::{install_crd, start_operator, states},
    },
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// `kubectl args…` with `bin` first on PATH and, if given, KUBECONFIG set to `kubeconfig`:
/// (exit code, stdout, stderr).
async fn kubectl(bin: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new(testbin("kubectl"));
    cmd.args(args).env("PATH", path).kill_on_drop(true);
    if let Some(k) = kubeconfig {
        cmd.env("KUBECONFIG", k);
    }
    let out = tokio::time::timeout(TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {} still running after {TIMEOUT:?}", args.join(" ")))
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

/// A copy of the test cluster's kubeconfig with two more contexts on its cluster and user:
/// `plugin-test` (namespace `ns`) and `elsewhere` (namespace `default`, the current one).
async fn kubeconfig_with_contexts(dir: &Path, ns: &str) -> PathBuf {
    let file = dir.join("kubeconfig");
    let cluster_kubeconfig =
        std::env::var("KUBECONFIG").expect("KUBECONFIG names the test cluster (source .cluster/env)");
    std::fs::copy(cluster_kubeconfig, &file).unwrap();
    let f = format!("--kubeconfig={}", file.display());
    let cluster = ok("kubectl", &[&f, "config", "view", "-o", "jsonpath={.contexts[0].context.cluster}"], None).await;
    let user = ok("kubectl", &[&f, "config", "view", "-o", "jsonpath={.contexts[0].context.user}"], None).await;
    for (context, namespace) in [("plugin-test", ns), ("elsewhere", "default")] {
        let (c, u, n) = (format!("--cluster={cluster}"), format!("--user={user}"), format!("--namespace={namespace}"));
        ok("kubectl", &[&f, "config", "set-context", context, &c, &u, &n], None).await;
    }
    ok("kubectl", &[&f, "config", "use-context", "elsewhere"], None).await;
    file
}

#[tokio::test]
async fn kubectl_runs_routestate_as_a_plugin_with_kubeconfig_flags() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "plugin").await;
    let operator = start_operator(&client, &ns.name, None).await;
    ns.api::<StatefulSet>().create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "metadata": {"name": "web"}, "spec": {}
    }))
    .unwrap();
    let rs_api: Api<RouteState> = ns.api();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();
    let mut redis = support::redis().await;
    support::wait_for("3 READY pods of web", TIMEOUT, || {
        let mut redis = redis.clone();
        let ns = ns.name.clone();
        async move {
            let s = states(&mut redis, &ns, "web").await;
            if s.values().filter(|p| p.routing == RoutingState::Ready).count() == 3 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        }
    })
    .await;

    let dir = TempDir::new("plugin");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_routestate"), bin.join("kubectl-routestate")).unwrap();
    let (code, out, err) = kubectl(&bin, None, &["plugin", "list"]).await;
    let listed = bin.join("kubectl-routestate").display().to_string();
    assert!(code == 0 && out.contains(&listed), "kubectl plugin list lacks {listed}: {out}{err}");

    // The RouteState's table, found by name in the -n namespace.
    let mine = format!("routestate {}/web → service web", ns.name);
    let (code, out, err) = kubectl(&bin, None, &["routestate", "status", "web", "-n", &ns.name]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&mine), "{out}");
    for pod in ["web-0", "web-1", "web-2"] {
        assert!(out.lines().any(|l| l.contains(pod) && l.contains("READY")), "{pod} not READY in:\n{out}");
    }

    // The namespace of --context, from --kubeconfig or $KUBECONFIG; -n overrides it.
    let dir_path = dir.path().to_owned();
    let kc = kubeconfig_with_contexts(&dir_path, &ns.name).await;
    let kc_flag = format!("--kubeconfig={}", kc.display());
    for (kubeconfig, args, want) in [
        (None, vec!["status", "web", &kc_flag, "--context", "plugin-test"], mine.clone()),
        (None, vec!["status", &kc_flag, "--context=plugin-test"], mine.clone()),
        (Some(kc.as_path()), vec!["status", "web", "--context", "plugin-test"], mine.clone()),
        // The current context's namespace holds no RouteState web: its service name is used.
        (None, vec!["status", "web", &kc_flag], "service default/web".to_owned()),
        (
            None,
            vec!["status", "web", &kc_flag, "--context", "plugin-test", "-n", "default"],
            "service default/web".to_owned(),
        ),
    ] {
        let mut all = vec!["routestate"];
        all.extend(&args);
        let (code, out, err) = kubectl(&bin, kubeconfig, &all).await;
        assert!(code == 0 && out.contains(&want), "kubectl {} (KUBECONFIG={kubeconfig:?}): {out}{err}", all.join(" "));
    }
    let (code, _, err) = kubectl(&bin, None, &["routestate", "status", "web", &kc_flag, "--context", "nope"]).await;
    assert!(code != 0 && err.contains("nope"), "an unknown context must fail naming it: {code} {err}");

    // Help and usage errors name the command as typed.
    let (code, out, _) = kubectl(&bin, None, &["routestate", "--help"]).await;
    assert!(code == 0 && out.contains("Usage: kubectl routestate"), "{out}");
    let (code, _, err) = kubectl(&bin, None, &["routestate", "statuz"]).await;
    assert!(code == 2 && err.contains("kubectl routestate"), "{code} {err}");

    // kubectl waits until the operator's finalizer has run.
    ok("kubectl", &["delete", "routestate", "web", "-n", &ns.name, "--timeout=60s"], None).await;
    assert!(states(&mut redis, &ns.name, "web").await.is_empty(), "the finalizer left Redis keys");
    operator.shutdown().await.expect("graceful shutdown");
}
