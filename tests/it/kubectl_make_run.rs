//! `make run` (hack/run.sh) as a newcomer uses it, against the already-running local cluster
//! (so it neither starts nor stops the shared one): it reaches its "ready" line with the example
//! RouteState Ready and published, and Ctrl-C (SIGINT) stops the operator it started, removes the
//! example's Redis keys and leaves the cluster running.

use std::{process::Stdio, sync::Arc, time::Duration};

use routestate::core::RoutingState;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::Mutex,
};

use crate::support::{
    self,
    cli::{ok, repo_root, run},
    operator::states,
};

const TIMEOUT: Duration = Duration::from_secs(180);

fn alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would show state Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[tokio::test]
async fn make_run_reaches_ready_and_ctrl_c_stops_what_it_started() {
    let ns = support::unique_name("run");
    let run_dir = std::env::temp_dir().join(&ns);
    let mut child = Command::new(repo_root().join("hack/run.sh"))
        .env("RUN_NAMESPACE", &ns)
        .env("RUN_DIR", &run_dir)
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
    let script_pid = child.id().expect("pid of hack/run.sh");
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

    support::wait_for("hack/run.sh's ready line", TIMEOUT, || {
        let out = out.clone();
        async move {
            let o = out.lock().await;
            if o.contains("run: ready:") { Ok(()) } else { Err(o.clone()) }
        }
    })
    .await;
    let printed = out.lock().await.clone();
    // It printed `kubectl get routestates` and the next commands to try.
    for want in ["STATEFULSET", "ROUTING", "READY", "web", "DenyNewCall", "routestate.dev/load", "scale", "status"] {
        assert!(printed.contains(want), "output lacks {want:?}:\n{printed}");
    }
    assert!(!printed.contains("starting the local control plane"), "it must use the running cluster:\n{printed}");

    // The example RouteState is Ready and its 3 pods are published READY.
    let json = ok("kubectl", &["get", "routestate", "web", "-n", &ns, "-o", "json"], None).await;
    let rs: serde_json::Value = serde_json::from_str(&json).unwrap();
    let ready = rs["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").cloned();
    assert_eq!(ready.as_ref().map(|c| c["status"].clone()), Some("True".into()), "{rs}");
    let mut redis = support::redis().await;
    let s = states(&mut redis, &ns, "web").await;
    assert_eq!(s.values().map(|p| p.routing).collect::<Vec<_>>(), [RoutingState::Ready; 3], "{s:?}");

    let op_pid: u32 = std::fs::read_to_string(run_dir.join("operator.pid"))
        .expect("hack/run.sh writes the operator's pid")
        .trim()
        .parse()
        .unwrap();
    assert!(alive(op_pid), "operator {op_pid} should be running");

    // Ctrl-C as a terminal sends it: SIGINT to the whole foreground process group.
    ok("/bin/kill", &["-INT", "--", &format!("-{script_pid}")], None).await;
    let status = tokio::time::timeout(Duration::from_secs(90), child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "hack/run.sh still running 90s after SIGINT:\n{}",
                out.try_lock().map(|o| o.clone()).unwrap_or_default()
            )
        })
        .unwrap();
    for r in readers {
        let _ = r.await;
    }
    let printed = out.lock().await.clone();
    assert_eq!(status.code(), Some(130), "exit status after SIGINT:\n{printed}");
    assert!(!alive(op_pid), "the operator {op_pid} survived Ctrl-C:\n{printed}");
    assert!(printed.contains("run: stopped"), "{printed}");
    assert!(!printed.contains("stopping the local cluster"), "it must not stop a cluster it did not start:\n{printed}");
    // The finalizer ran before the operator stopped: no keys left behind.
    assert!(states(&mut redis, &ns, "web").await.is_empty(), "Redis keys left behind");
    // The shared cluster is still up.
    let readyz = run("kubectl", &["get", "--raw=/readyz"], None).await;
    assert!(readyz.ok, "the cluster must still be running: {}", readyz.stderr);
}
