//! `make run` (hack/run.sh) as a newcomer uses it, against the already-running local cluster
//! (so it neither starts nor stops the shared one): it reaches its "ready" line with the example
//! RouteState Ready and published, the next steps it prints work as written, and Ctrl-C (SIGINT)
//! stops the operator it started, removes the example's Redis keys and leaves the cluster running.
//!
//! Two ways: on the real node (the operator installed by Helm from the local image, real
//! game-server pods), and with `RUN_REAL_NODE=0` as on a machine without one (the operator as a
//! local process, kwok's pods).
//!
//! Started again while the previous run's namespace is still Terminating, it waits for the
//! namespace to go (and gives up after a deadline, saying what holds it).

use std::{path::PathBuf, process::Stdio, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use routestate::core::RoutingState;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
    sync::Mutex,
};

use crate::support::{
    self,
    cli::{ok, repo_root, run},
    faults::TempDir,
    node::{GAME_SERVER_IMAGE, OPERATOR_IMAGE, RealNode},
    operator::{states, wait_routing},
};

const TIMEOUT: Duration = Duration::from_secs(300);

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would show state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// hack/run.sh running in its own process group, its output collected.
struct MakeRun {
    child: Child,
    pid: u32,
    out: Arc<Mutex<String>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
    ns: String,
    run_dir: PathBuf,
}

impl MakeRun {
    fn start(real_node: bool) -> Self {
        Self::start_in(support::unique_name("run"), real_node)
    }

    fn start_in(ns: String, real_node: bool) -> Self {
        let run_dir = std::env::temp_dir().join(&ns);
        // Started as a terminal starts a foreground job: with SIGINT at its default disposition
        // (a suite launched in the background inherits it ignored, and bash cannot trap a
        // signal ignored at entry).
        let script = repo_root().join("hack/run.sh");
        let mut child = Command::new("python3")
            .args(["-c", "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"])
            .arg(&script)
            .env("RUN_NAMESPACE", &ns)
            .env("RUN_DIR", &run_dir)
            .env("RUN_REAL_NODE", if real_node { "1" } else { "0" })
            // make test imported them; a cargo build here would wait on this test run's own lock.
            .env("RUN_BUILD_IMAGES", "0")
            .env("ROUTESTATE_BIN", env!("CARGO_BIN_EXE_routestate"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, like a terminal's foreground job, so Ctrl-C can be sent to the
            // whole group as a terminal does.
            .process_group(0)
            .spawn()
            .expect("starting hack/run.sh");
        let pid = child.id().expect("pid of hack/run.sh");
        let out = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut o = out.lock().await;
                    o.push_str(&line);
                    o.push('\n');
                }
            }));
        }
        Self { child, pid, out, readers, ns, run_dir }
    }

    /// Waits until it has printed `needle`; returns all it printed.
    async fn wait_printed(&self, what: &str, needle: &str) -> String {
        support::wait_for(what, TIMEOUT, || {
            let out = self.out.clone();
            async move {
                let o = out.lock().await;
                if o.contains(needle) { Ok(()) } else { Err(o.clone()) }
            }
        })
        .await;
        self.out.lock().await.clone()
    }

    async fn wait_ready(&self) -> String {
        let printed = self.wait_printed("hack/run.sh's ready line", "run: ready:").await;
        assert!(!printed.contains("starting the local control plane"), "it must use the running cluster:\n{printed}");
        printed
    }

    /// Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group.
    async fn ctrl_c(mut self) -> String {
        ok("/bin/kill", &["-INT", "--", &format!("-{}", self.pid)], None).await;
        let status = tokio::time::timeout(Duration::from_secs(120), self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "hack/run.sh still running 120s after SIGINT:\n{}",
                    self.out.try_lock().map(|o| o.clone()).unwrap_or_default()
                )
            })
            .unwrap();
        for r in self.readers.drain(..) {
            let _ = r.await;
        }
        let printed = self.out.lock().await.clone();
        assert_eq!(status.code(), Some(130), "exit status after SIGINT:\n{printed}");
        assert!(printed.contains("run: stopped"), "{printed}");
        assert!(
            !printed.contains("stopping the local cluster"),
            "it must not stop a cluster it did not start:\n{printed}"
        );
        // The shared cluster is still up.
        let readyz = run("kubectl", &["get", "--raw=/readyz"], None).await;
        assert!(readyz.ok, "the cluster must still be running: {}", readyz.stderr);
        printed
    }
}

impl Drop for MakeRun {
    /// Its run folder (logs, the operator's pid) goes with it.
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A ConfigMap finalizer that keeps a deleted namespace Terminating until it is removed.
const HOLD: &str = "routestate.dev/test-hold";

/// Creates namespace `name` holding a ConfigMap with a finalizer, deletes it, and waits until it
/// is Terminating (as a previous run's namespace is while its objects are still being deleted).
async fn terminating_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": "hold", "finalizers": [HOLD]}})).unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), name).create(&PostParams::default(), &cm).await.unwrap();
    namespaces.delete(name, &DeleteParams::background()).await.unwrap();
    support::wait_for(&format!("namespace {name} Terminating"), TIMEOUT, || async {
        let phase = namespaces.get(name).await.map_err(|e| e.to_string())?.status.and_then(|s| s.phase);
        if phase.as_deref() == Some("Terminating") { Ok(()) } else { Err(format!("{phase:?}")) }
    })
    .await;
}

/// Removes the finalizer that holds the namespace: the namespace controller then finishes.
async fn release_namespace(client: &Client, name: &str) {
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), name);
    let patch = serde_json::json!({"metadata": {"finalizers": null}});
    cms.patch("hold", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

#[tokio::test]
async fn make_run_gives_up_on_a_namespace_that_stays_terminating() {
    let client = support::kube_client().await;
    let ns = support::unique_name("run-stuck");
    let run_dir = TempDir::new("run-stuck");
    terminating_namespace(&client, &ns).await;
    // The namespace controller says what holds it (once it has deleted what it could).
    let namespaces: Api<Namespace> = Api::all(client.clone());
    support::wait_for("NamespaceFinalizersRemaining", TIMEOUT, || async {
        let ns = namespaces.get(&ns).await.map_err(|e| e.to_string())?;
        let conditions = ns.status.and_then(|s| s.conditions).unwrap_or_default();
        if conditions.iter().any(|c| c.type_ == "NamespaceFinalizersRemaining" && c.status == "True") {
            Ok(())
        } else {
            Err(format!("{conditions:?}"))
        }
    })
    .await;
    let out = tokio::time::timeout(
        TIMEOUT,
        Command::new(repo_root().join("hack/run.sh"))
            .env("RUN_NAMESPACE", &ns)
            .env("RUN_DIR", run_dir.path())
            .env("RUN_REAL_NODE", "0")
            .env("RUN_NAMESPACE_WAIT_SECONDS", "2")
            .env("ROUTESTATE_BIN", env!("CARGO_BIN_EXE_routestate"))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("hack/run.sh gives up within its deadline")
    .unwrap();
    release_namespace(&client, &ns).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for want in [
        format!("namespace {ns} is still being deleted"),
        format!("namespace {ns} is still Terminating after 2s"),
        // The namespace's own condition says what holds it.
        "NamespaceFinalizersRemaining".to_owned(),
        HOLD.to_owned(),
    ] {
        assert!(stderr.contains(&want), "stderr lacks {want:?}:\n{stderr}");
    }
    assert!(!stderr.contains("because it is being terminated"), "{stderr}");
    assert!(!stderr.contains("starting the operator"), "it must stop before starting anything:\n{stderr}");
}

/// The printed command line that contains every one of `words`, run as written by bash with the
/// printed environment (`source .cluster/env`).
async fn run_printed(printed: &str, words: &[&str]) -> String {
    let line = printed
        .lines()
        .map(str::trim)
        .find(|l| !l.starts_with('#') && words.iter().all(|w| l.contains(w)))
        .unwrap_or_else(|| panic!("no printed command with {words:?}:\n{printed}"));
    let env = PathBuf::from(std::env::var("ROUTESTATE_CLUSTER_DIR").unwrap()).join("env");
    let script = format!("source {} && {line}", env.display());
    ok("/bin/bash", &["-c", &script], None).await
}

#[tokio::test]
async fn make_run_on_the_real_node_installs_the_image_with_helm_and_runs_real_game_servers() {
    RealNode::require_images(&[OPERATOR_IMAGE, GAME_SERVER_IMAGE]).await;
    let make_run = MakeRun::start(true);
    let printed = make_run.wait_ready().await;
    let ns = make_run.ns.clone();
    for want in ["helm release routestate", "game", "DenyNewCall", "rollout restart", "scale", "status", "/session/"] {
        assert!(printed.contains(want), "output lacks {want:?}:\n{printed}");
    }
    // The operator runs in pods of the local image, the game servers on the real node.
    let pods = ok("kubectl", &["get", "pods", "-n", &ns, "-o", "json"], None).await;
    let pods: serde_json::Value = serde_json::from_str(&pods).unwrap();
    let items = pods["items"].as_array().unwrap();
    let node = RealNode::require().name;
    for (prefix, image, want) in [("routestate-", OPERATOR_IMAGE, 2), ("game-", GAME_SERVER_IMAGE, 3)] {
        let mine: Vec<_> =
            items.iter().filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with(prefix)).collect();
        assert_eq!(mine.len(), want, "{prefix} pods: {mine:?}");
        for p in mine {
            assert_eq!(p["spec"]["containers"][0]["image"], image);
            assert_eq!(p["spec"]["nodeName"], node.as_str());
        }
    }
    let mut redis = support::redis().await;
    let s = states(&mut redis, &ns, "game").await;
    assert_eq!(s.values().map(|p| p.routing).collect::<Vec<_>>(), [RoutingState::Ready; 3], "{s:?}");

    // The printed steps, as written: a session on pod 1, the state hash, a drain.
    let answer = run_printed(&printed, &["curl", "/session/alice"]).await;
    assert!(answer.starts_with("game-1 READY"), "{answer}");
    let hash = run_printed(&printed, &["redis-cli", "HGETALL"]).await;
    assert_eq!(hash.lines().count(), 6, "3 fields and values:\n{hash}");
    run_printed(&printed, &["patch", "DenyNewCall"]).await;
    wait_routing(&redis, &ns, "game", 1, RoutingState::DenyNewCall, "pod 1 drained", TIMEOUT).await;
    run_printed(&printed, &["patch", r#""pods":[]"#]).await;
    wait_routing(&redis, &ns, "game", 1, RoutingState::Ready, "pod 1 back", TIMEOUT).await;

    let printed = make_run.ctrl_c().await;
    assert!(printed.contains("helm uninstall"), "{printed}");
    assert!(states(&mut redis, &ns, "game").await.is_empty(), "Redis keys left behind");
    let releases = ok("helm", &["list", "-n", &ns, "-q"], None).await;
    assert!(releases.trim().is_empty(), "helm releases left in {ns}: {releases}");
    // The namespace it created goes, with whatever still drains in it.
    let phase = run("kubectl", &["get", "namespace", &ns, "-o", "jsonpath={.status.phase}"], None).await;
    assert!(!phase.ok || phase.stdout == "Terminating", "namespace {ns}: {phase:?}");
}

#[tokio::test]
async fn make_run_without_a_real_node_runs_the_operator_locally_and_ctrl_c_stops_what_it_started() {
    let client = support::kube_client().await;
    let ns = support::unique_name("run");
    // A previous run's namespace, still Terminating: make run waits for it to go.
    terminating_namespace(&client, &ns).await;
    let make_run = MakeRun::start_in(ns.clone(), false);
    make_run.wait_printed("hack/run.sh waiting for the Terminating namespace", "is still being deleted").await;
    release_namespace(&client, &ns).await;
    let printed = make_run.wait_ready().await;
    assert!(printed.contains(&format!("namespace {ns} is gone")), "{printed}");
    assert!(!printed.contains("because it is being terminated"), "{printed}");
    // It printed `kubectl get routestates` and the next commands to try.
    for want in ["STATEFULSET", "ROUTING", "READY", "web", "DenyNewCall", "routestate.dev/load", "scale", "status"] {
        assert!(printed.contains(want), "output lacks {want:?}:\n{printed}");
    }
    if std::env::var_os("ROUTESTATE_NODE").is_some() {
        assert!(printed.contains("RUN_REAL_NODE=0"), "it must say why it runs without the node:\n{printed}");
    }

    // The example RouteState is Ready and its 3 pods are published READY.
    let json = ok("kubectl", &["get", "routestate", "web", "-n", &ns, "-o", "json"], None).await;
    let rs: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ready = rs["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").cloned();
    assert_eq!(ready.as_ref().map(|c| c["status"].clone()), Some("True".into()), "{rs}");
    let mut redis = support::redis().await;
    let s = states(&mut redis, &ns, "web").await;
    assert_eq!(s.values().map(|p| p.routing).collect::<Vec<_>>(), [RoutingState::Ready; 3], "{s:?}");

    let op_pid: u32 = std::fs::read_to_string(make_run.run_dir.join("operator.pid"))
        .expect("hack/run.sh writes the operator's pid")
        .trim()
        .parse()
        .unwrap();
    assert!(alive(op_pid), "operator {op_pid} should be running");

    let printed = make_run.ctrl_c().await;
    assert!(!alive(op_pid), "the operator {op_pid} survived Ctrl-C:\n{printed}");
    // The finalizer ran before the operator stopped: no keys left behind.
    assert!(states(&mut redis, &ns, "web").await.is_empty(), "Redis keys left behind");
}
