//! The operator image (`make image-load`) installed by Helm on the real node, values only, against
//! a TLS-only, password-protected Redis whose password comes from a Secret and whose CA from a
//! ConfigMap: the 2 replicas elect a leader, the leader publishes a RouteState, a drain through
//! kubectl lands, a hung leader (SIGSTOP) is replaced by the standby within the lease duration and,
//! SIGKILLed, restarts as the standby,
//! `/readyz` and `/metrics` answer on the pods, the containers run as 65532 on a read-only root,
//! `helm upgrade` rolls the pods without a stale state, and `helm uninstall` after deleting the
//! RouteState leaves nothing of the release.

use std::time::{Duration, Instant};

use k8s_openapi::api::{
    apps::v1::Deployment,
    coordination::v1::Lease,
    core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount},
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use routestate::{
    core::{RoutingState, staleness_window_ms},
    store::{RedisOptions, Store},
};

use crate::{
    reliability_security::secret,
    support::{
        self, TestNamespace,
        cli::{HelmRelease, ok},
        faults::{PrivateRedis, RedisSpec, TlsFiles, http_get},
        node::{OPERATOR_IMAGE, RealNode, container_pid, pod_ip, wait_ready_pods},
    },
};

const TIMEOUT: Duration = Duration::from_secs(180);
const LEASE_SECONDS: u64 = 10;
const RENEW_SECONDS: u64 = 2;
const PERIOD_SECONDS: u32 = 2;

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// Every pod's state as (routing, age in ms) at Redis time.
async fn states(store: &Store, ns: &str) -> Vec<(u32, RoutingState, u64)> {
    let now = store.server_time_ms().await.unwrap();
    let svc = store.read_service(ns, "web").await.unwrap();
    svc.entries
        .iter()
        .filter_map(|(k, v)| {
            let s = routestate::core::PodState::parse(v).ok()?;
            Some((k.parse().ok()?, s.routing, s.age_ms(now)))
        })
        .collect()
}

fn uid_and_root_mode(pid: u32) -> (String, String) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap().to_owned();
    let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS ...; the container's "/" mount.
    let root = mounts.lines().find(|l| l.split(' ').nth(4) == Some("/")).unwrap().to_owned();
    (uid, root.split(' ').nth(5).unwrap().to_owned())
}

#[tokio::test]
async fn helm_installs_the_image_on_the_real_node_and_the_operator_works_there() {
    let node = RealNode::require_images(&[OPERATOR_IMAGE]).await;
    let client = support::kube_client().await;
    support::operator::install_crd(&client).await;
    let ns = TestNamespace::new(&client, "helm-node").await;

    // The Redis: TLS only, with a password, reachable by pods at the node's address.
    let password = secret();
    let tls = TlsFiles::for_ips(&[&node.ip]);
    let redis = PrivateRedis::start_on(
        RedisSpec {
            password: Some(password.clone()),
            tls: Some((tls.ca_cert.clone(), tls.cert.clone(), tls.key.clone())),
        },
        &[&node.ip],
    );
    let store = Store::connect(&RedisOptions {
        password: Some(password.clone()),
        ca_file: Some(tls.ca_cert.clone()),
        ..RedisOptions::standalone(redis.url())
    })
    .await
    .unwrap();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "redis-auth"}, "stringData": {"password": password}
    }))
    .unwrap();
    ns.api::<Secret>().create(&PostParams::default(), &secret).await.unwrap();
    let ca: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "redis-ca"}, "data": {"ca.crt": std::fs::read_to_string(&tls.ca_cert).unwrap()}
    }))
    .unwrap();
    ns.api::<ConfigMap>().create(&PostParams::default(), &ca).await.unwrap();

    let (repo, tag) = OPERATOR_IMAGE.rsplit_once(':').unwrap();
    let node_args = node.helm_args();
    let node_args: Vec<&str> = node_args.iter().map(String::as_str).collect();
    let sets = [
        format!("image.repository={repo}"),
        format!("image.tag={tag}"),
        "image.pullPolicy=Never".into(),
        format!("redis.urls={{rediss://{}:{}}}", node.ip, redis.port),
        "redis.existingSecret.name=redis-auth".into(),
        "redis.tls.caConfigMap.name=redis-ca".into(),
        format!("watchNamespace={}", ns.name),
        format!("leaderElection.leaseDurationSeconds={LEASE_SECONDS}"),
        format!("leaderElection.renewPeriodSeconds={RENEW_SECONDS}"),
    ];
    let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
    let release = HelmRelease::install(&support::unique_name("op"), &ns.name, &sets, &node_args).await;
    let name = release.fullname();
    ok("kubectl", &["rollout", "status", &format!("deploy/{name}"), "-n", &ns.name, "--timeout=180s"], None).await;
    let pods: Api<Pod> = ns.api();
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    let running = wait_ready_pods(&pods, &selector, 2, TIMEOUT).await;
    let names: Vec<String> = running.iter().map(|p| p.metadata.name.clone().unwrap()).collect();

    // One of the two holds the Lease.
    let leases: Api<Lease> = ns.api();
    let leader = support::wait_for("a leader", TIMEOUT, || async {
        holder(&leases, &name).await.filter(|h| names.contains(h)).ok_or("no holder among the pods".to_owned())
    })
    .await;

    // Both run as 65532 on a read-only root file system, and answer /readyz and /metrics.
    for p in &running {
        let pod = p.metadata.name.as_deref().unwrap();
        let pid = container_pid(&ns.name, pod, "operator").await;
        let (uid, root) = uid_and_root_mode(pid);
        assert!(uid.split_whitespace().skip(1).all(|u| u == "65532"), "{pod}: {uid}");
        assert!(root.split(',').any(|o| o == "ro"), "{pod}: root mounted {root}");
        let addr = format!("{}:8080", pod_ip(p)).parse().unwrap();
        let (code, body) = http_get(addr, "/readyz").await.unwrap();
        assert_eq!(code, 200, "{pod} /readyz: {body}");
        let (code, metrics) = http_get(addr, "/metrics").await.unwrap();
        assert_eq!(code, 200);
        assert!(metrics.contains("routestate_"), "{pod} /metrics: {metrics:.300}");
    }

    // A StatefulSet (on kwok) and its RouteState: the in-cluster leader publishes it.
    ok("kubectl", &["apply", "-n", &ns.name, "-f", "examples/statefulset.yaml"], None).await;
    let rs = std::fs::read_to_string("examples/routestate.yaml")
        .unwrap()
        .replace("updatePeriodSeconds: 10", &format!("updatePeriodSeconds: {PERIOD_SECONDS}"));
    ok("kubectl", &["apply", "-n", &ns.name, "-f", "-"], Some(&rs)).await;
    support::wait_for("3 pods published READY", TIMEOUT, || async {
        let s = states(&store, &ns.name).await;
        if s.len() == 3 && s.iter().all(|(_, r, _)| *r == RoutingState::Ready) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;

    // A drain through kubectl.
    ok(
        "kubectl",
        &[
            "patch",
            "routestate",
            "web",
            "-n",
            &ns.name,
            "--type=merge",
            "-p",
            r#"{"spec":{"pods":[{"index":1,"routingState":"DenyNewCall"}]}}"#,
        ],
        None,
    )
    .await;
    support::wait_for("pod 1 DENY_NEW_CALL", TIMEOUT, || async {
        let s = states(&store, &ns.name).await;
        if s.iter().any(|(i, r, _)| *i == 1 && *r == RoutingState::DenyNewCall) {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;

    // The leader hangs (SIGSTOP: it neither renews nor releases): the standby takes over within
    // the lease duration and the heartbeat goes on. Then the hung container is SIGKILLed: the
    // kubelet restarts it and it comes back as the standby.
    let pid = container_pid(&ns.name, &leader, "operator").await;
    ok("/bin/kill", &["-STOP", &pid.to_string()], None).await;
    let stopped = Instant::now();
    let stopped_ms = store.server_time_ms().await.unwrap();
    let standby = names.iter().find(|n| **n != leader).unwrap().clone();
    support::wait_for("the standby holds the Lease", TIMEOUT, || async {
        let h = holder(&leases, &name).await;
        if h.as_deref() == Some(standby.as_str()) { Ok(()) } else { Err(format!("{h:?}")) }
    })
    .await;
    let takeover = stopped.elapsed();
    eprintln!("leader {leader} hung; {standby} took over after {takeover:?} (lease {LEASE_SECONDS} s)");
    // The holder renewed at most RENEW_SECONDS before it hung; a generous poll margin on top.
    assert!(takeover <= Duration::from_secs(LEASE_SECONDS + RENEW_SECONDS + 2), "takeover took {takeover:?}");
    support::wait_for("a heartbeat by the new leader", TIMEOUT, || async {
        let now = store.server_time_ms().await.unwrap();
        let s = states(&store, &ns.name).await;
        // Written after the hang: younger than the time since it.
        if s.len() == 3 && s.iter().all(|(_, _, age)| *age < now - stopped_ms) { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
    ok("/bin/kill", &["-KILL", &pid.to_string()], None).await;
    support::wait_for("the SIGKILLed container restarted and Ready", TIMEOUT, || async {
        let p = pods.get(&leader).await.map_err(|e| e.to_string())?;
        let restarts = p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).map_or(0, |c| c[0].restart_count);
        let ready =
            support::node::ready_pods(&pods, &selector).await.iter().any(|r| r.metadata.name == p.metadata.name);
        if restarts >= 1 && ready { Ok(()) } else { Err(format!("restarts {restarts}, ready {ready}")) }
    })
    .await;
    assert_eq!(
        holder(&leases, &name).await.as_deref(),
        Some(standby.as_str()),
        "the restarted pod took the Lease back"
    );

    // helm upgrade with a changed value rolls the pods; no state goes stale meanwhile.
    let watch_store = store.clone();
    let watch_ns = ns.name.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let stop2 = stop.clone();
    let watcher = tokio::spawn(async move {
        let mut oldest = 0u64;
        while !stop2.is_cancelled() {
            let s = states(&watch_store, &watch_ns).await;
            assert_eq!(s.len(), 3, "a pod's state disappeared during the upgrade: {s:?}");
            oldest = oldest.max(s.iter().map(|(_, _, age)| *age).max().unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        oldest
    });
    let before: Vec<String> =
        wait_ready_pods(&pods, &selector, 2, TIMEOUT).await.iter().map(|p| p.metadata.name.clone().unwrap()).collect();
    ok(
        "helm",
        &["upgrade", &release.name, "charts/routestate", "-n", &ns.name, "--reuse-values", "--set", "logLevel=debug"],
        None,
    )
    .await;
    ok("kubectl", &["rollout", "status", &format!("deploy/{name}"), "-n", &ns.name, "--timeout=180s"], None).await;
    let after = support::wait_for("2 new Ready pods", TIMEOUT, || async {
        let now: Vec<String> = support::node::ready_pods(&pods, &selector)
            .await
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        if now.len() == 2 && now.iter().all(|n| !before.contains(n)) { Ok(now) } else { Err(format!("{now:?}")) }
    })
    .await;
    support::wait_for("a leader among the new pods", TIMEOUT, || async {
        holder(&leases, &name).await.filter(|h| after.contains(h)).ok_or("not yet".to_owned())
    })
    .await;
    stop.cancel();
    let oldest = watcher.await.unwrap();
    eprintln!(
        "helm upgrade: oldest state seen during the rollout {oldest} ms (stale after {} ms)",
        staleness_window_ms(PERIOD_SECONDS)
    );
    assert!(oldest < staleness_window_ms(PERIOD_SECONDS), "a state went stale during the upgrade: {oldest} ms");
    let dep = ns.api::<Deployment>().get(&name).await.unwrap();
    let env = dep.spec.template.spec.unwrap().containers[0].env.clone().unwrap_or_default();
    assert!(env.iter().any(|e| e.name == "RUST_LOG" && e.value.as_deref() == Some("debug")), "{env:?}");

    // Delete the RouteState (the operator's finalizer removes its keys), then uninstall.
    ok("kubectl", &["delete", "routestate", "web", "-n", &ns.name, "--timeout=60s"], None).await;
    assert!(states(&store, &ns.name).await.is_empty(), "Redis keys left after deleting the RouteState");
    ok("helm", &["uninstall", &release.name, "-n", &ns.name, "--wait", "--timeout=120s"], None).await;
    let lp = ListParams::default().labels(&selector);
    support::wait_for("the release's pods gone", TIMEOUT, || async {
        let n = pods.list(&lp).await.map_err(|e| e.to_string())?.items.len();
        if n == 0 { Ok(()) } else { Err(format!("{n} pods")) }
    })
    .await;
    assert!(ns.api::<Deployment>().list(&lp).await.unwrap().items.is_empty());
    assert!(ns.api::<Service>().list(&lp).await.unwrap().items.is_empty());
    assert!(ns.api::<ServiceAccount>().list(&lp).await.unwrap().items.is_empty());
    assert!(ns.api::<Role>().list(&lp).await.unwrap().items.is_empty());
    assert!(ns.api::<RoleBinding>().list(&lp).await.unwrap().items.is_empty());
    // The Lease is the operator's own object, not the chart's, so it stays. Helm deletes the Role
    // together with the Deployment, so the last holder's release on SIGTERM may be refused: then
    // the claim just expires. Either way nobody holds it within the lease duration.
    support::wait_for("the Lease released or expired", Duration::from_secs(LEASE_SECONDS + 10), || async {
        let spec = leases.get_opt(&name).await.map_err(|e| e.to_string())?.and_then(|l| l.spec);
        let Some(spec) = spec else { return Ok(()) };
        match (spec.holder_identity.as_deref(), spec.renew_time) {
            (None | Some(""), _) => Ok(()),
            (Some(h), Some(t)) => {
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0).as_secs();
                if age > LEASE_SECONDS as i64 { Ok(()) } else { Err(format!("held by {h}, renewed {age} s ago")) }
            }
            (Some(h), None) => Err(format!("held by {h}")),
        }
    })
    .await;
    drop(redis);
}
