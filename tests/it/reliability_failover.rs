//! Operator failover with real processes: two `routestate run --leader-elect`
//! processes, the leader SIGKILLed (no lease release, no goodbye), the standby publishes before
//! any pod's heartbeat gap exceeds the staleness window. operator_ha covers the same with
//! in-process instances (task abort); this one kills a process and reports the largest gap.

use std::{
    collections::BTreeMap,
    process::Stdio,
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::StatefulSet;
use kube::{Api, api::PostParams};
use routestate::{core::staleness_window_ms, operator::RouteState};
use tokio::process::{Child, Command};

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        faults::{free_port, http_get, metric},
        operator::{install_crd, states},
        wait_for,
    },
};

const PERIOD_SECS: u32 = 2;

fn operator_process(ns: &str, identity: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_routestate"))
        .args(["run", "--namespace", ns, "--leader-elect", "--lease-namespace", ns, "--lease-identity", identity])
        .args(["--lease-duration-seconds", "4", "--lease-renew-seconds", "1"])
        .args(["--redis-url", &support::redis_url(), "--http-addr", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting routestate run")
}

async fn is_leader(port: u16) -> Option<bool> {
    let (_, body) = http_get(([127, 0, 0, 1], port).into(), "/metrics").await.ok()?;
    Some(metric(&body, "routestate_leader") == 1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_the_leader_process_and_measure_the_heartbeat_gap() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "failover").await;
    let mut redis = support::redis().await;
    let ports = [free_port(), free_port()];
    let mut procs = [operator_process(&ns.name, "a", ports[0]), operator_process(&ns.name, "b", ports[1])];
    ns.api::<StatefulSet>().create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
        "metadata": {"name": "web"}, "spec": {"updatePeriodSeconds": PERIOD_SECS}
    }))
    .unwrap();
    Api::<RouteState>::namespaced(client.clone(), &ns.name).create(&PostParams::default(), &rs).await.unwrap();
    wait_for("3 pods published", Duration::from_secs(60), || {
        let (mut redis, ns) = (redis.clone(), ns.name.clone());
        async move {
            let s = states(&mut redis, &ns, "web").await;
            if s.len() == 3 { Ok(()) } else { Err(format!("{s:?}")) }
        }
    })
    .await;
    let leader = wait_for("exactly one leader", Duration::from_secs(30), || async {
        let l = [is_leader(ports[0]).await, is_leader(ports[1]).await];
        match l {
            [Some(true), Some(false)] => Ok(0),
            [Some(false), Some(true)] => Ok(1),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Sample the heartbeats every 50 ms from a little before the kill until the standby has
    // published several periods; the gap of a pod is the time between two successive stamps.
    let window = staleness_window_ms(PERIOD_SECS);
    let mut last: BTreeMap<u32, u64> = BTreeMap::new();
    let mut largest_gap = 0u64;
    let mut killed_at: Option<Instant> = None;
    let mut took_over: Option<Duration> = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(u64::from(6 * PERIOD_SECS) + 8) {
        if killed_at.is_none() && started.elapsed() >= Duration::from_secs(u64::from(PERIOD_SECS)) {
            procs[leader].start_kill().expect("SIGKILL the leader"); // Child::start_kill sends SIGKILL
            killed_at = Some(Instant::now());
        }
        for (pod, st) in states(&mut redis, &ns.name, "web").await {
            if let Some(prev) = last.insert(pod, st.updated_at_ms)
                && st.updated_at_ms > prev
            {
                largest_gap = largest_gap.max(st.updated_at_ms - prev);
                if let Some(k) = killed_at
                    && took_over.is_none()
                    && is_leader(ports[1 - leader]).await == Some(true)
                {
                    took_over = Some(k.elapsed());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = took_over.expect("the standby never published after the leader was killed");
    eprintln!(
        "MEASURED process failover: standby publishing {took_over:?} after SIGKILL; largest heartbeat gap \
         {largest_gap} ms (staleness window {window} ms, lease 4 s, period {PERIOD_SECS} s)"
    );
    assert!(largest_gap < window, "a heartbeat gap of {largest_gap} ms reached the staleness window {window} ms");
    assert!(procs[1 - leader].try_wait().unwrap().is_none(), "the standby exited");
}
