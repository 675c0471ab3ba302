//! The local cluster's real node (hack/node.sh): where it is, how pods reach the API server and
//! Redis from it, and the images `make image-load` imported into it. A test that needs the node
//! calls [`RealNode::require`], which fails (never skips) with the reason when it is absent.

use std::{path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::ListParams};

/// The operator image and the example game-server image (`make image-load`).
pub const OPERATOR_IMAGE: &str = "localhost/routestate:dev";
pub const GAME_SERVER_IMAGE: &str = "localhost/routestate-game-server:dev";

/// Where the real node is and how its pods reach the cluster.
#[derive(Debug, Clone)]
pub struct RealNode {
    /// The Node's name.
    pub name: String,
    /// The node's address on its bridge; pods reach host services here.
    pub ip: String,
    /// `host:port` of the API server as pods reach it.
    pub api: String,
    /// The shared Redis as pods reach it.
    pub redis_url: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// A binary of the node (`ctr`, `crictl`), as a path for [`super::cli::ok`].
pub fn node_bin(name: &str) -> String {
    let dir = var("ROUTESTATE_NODE_BIN").expect("ROUTESTATE_NODE_BIN is not set: the real node is not up");
    format!("{dir}/{name}")
}

impl RealNode {
    /// The real node, or a panic saying why it is absent.
    pub fn require() -> Self {
        if let Some(why) = var("ROUTESTATE_NODE_ABSENT") {
            panic!(
                "this test needs the local cluster's real node, which is absent: {why}. `make cluster-up` starts it \
                 as root (docs/test-cluster.md)"
            );
        }
        let get = |n: &str| {
            var(n).unwrap_or_else(|| {
                panic!("{n} is not set: run the tests with `make test`, or `make cluster-up` and `source .cluster/env`")
            })
        };
        Self {
            name: get("ROUTESTATE_NODE"),
            ip: get("ROUTESTATE_NODE_IP"),
            api: get("ROUTESTATE_NODE_API"),
            redis_url: get("ROUTESTATE_NODE_REDIS_URL"),
        }
    }

    /// The real node plus a check that `images` were imported into its containerd.
    pub async fn require_images(images: &[&str]) -> Self {
        let node = Self::require();
        let listed = super::cli::ok(&node_bin("ctr"), &["-n", "k8s.io", "images", "list", "-q"], None).await;
        for image in images {
            assert!(
                listed.lines().any(|l| l == *image),
                "image {image} is not in the real node's containerd: run `make image-load` (make test does)"
            );
        }
        node
    }

    /// Helm arguments that put a chart's pods on this node and let them reach the API server
    /// without kube-proxy (values only: nodeSelector, tolerations, extraEnv).
    pub fn helm_args(&self) -> Vec<String> {
        let (host, port) = self.api.rsplit_once(':').expect("host:port");
        [
            "nodeSelector.routestate\\.dev/node=real",
            "tolerations[0].key=routestate.dev/real-node",
            "tolerations[0].operator=Exists",
            "tolerations[0].effect=NoSchedule",
            "extraEnv[0].name=KUBERNETES_SERVICE_HOST",
            "extraEnv[1].name=KUBERNETES_SERVICE_PORT",
        ]
        .iter()
        .flat_map(|s| ["--set".to_owned(), (*s).to_owned()])
        // Strings even when they look like numbers.
        .chain(["--set-string".into(), format!("extraEnv[0].value={host}")])
        .chain(["--set-string".into(), format!("extraEnv[1].value={port}")])
        .collect()
    }

    /// The ConfigMap the example game server reads (examples/game-server/statefulset.yaml).
    pub fn game_server_env(&self, redis_url: &str) -> String {
        let (host, port) = self.api.rsplit_once(':').expect("host:port");
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: game-server-env\ndata:\n  \
             KUBERNETES_SERVICE_HOST: \"{host}\"\n  KUBERNETES_SERVICE_PORT: \"{port}\"\n  REDIS_URL: \"{redis_url}\"\n"
        )
    }
}

/// The repository's examples/game-server/ folder.
pub fn game_server_manifests() -> PathBuf {
    super::cli::repo_root().join("examples/game-server")
}

/// The host PID of container `container` of pod `ns/pod` (from the CRI).
pub async fn container_pid(ns: &str, pod: &str, container: &str) -> u32 {
    let filter = [
        "ps",
        "-q",
        "--label",
        &format!("io.kubernetes.pod.namespace={ns}"),
        "--label",
        &format!("io.kubernetes.pod.name={pod}"),
        "--name",
        &format!("^{container}$"),
        "--state",
        "running",
    ]
    .map(str::to_owned);
    let args: Vec<&str> = filter.iter().map(String::as_str).collect();
    let id = super::cli::ok(&node_bin("crictl"), &args, None).await;
    let id = id.lines().next().unwrap_or_else(|| panic!("no running container {container} in pod {ns}/{pod}"));
    let info = super::cli::ok(&node_bin("crictl"), &["inspect", "-o", "json", id], None).await;
    let info: serde_json::Value = serde_json::from_str(&info).expect("crictl inspect JSON");
    info["info"]["pid"].as_u64().unwrap_or_else(|| panic!("crictl inspect {id}: no pid in {info}")) as u32
}

/// Pods of `selector` that are Running, Ready and not terminating.
pub async fn ready_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    let list = pods.list(&ListParams::default().labels(selector)).await.map(|l| l.items).unwrap_or_default();
    list.into_iter()
        .filter(|p| {
            let s = p.status.as_ref();
            p.metadata.deletion_timestamp.is_none()
                && s.and_then(|s| s.phase.as_deref()) == Some("Running")
                && s.and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .collect()
}

/// Waits until `want` pods of `selector` are Running and Ready; returns them.
pub async fn wait_ready_pods(pods: &Api<Pod>, selector: &str, want: usize, timeout: Duration) -> Vec<Pod> {
    super::wait_for(&format!("{want} Ready pods of {selector}"), timeout, || async {
        let ready = ready_pods(pods, selector).await;
        if ready.len() == want { Ok(ready) } else { Err(format!("{} ready", ready.len())) }
    })
    .await
}

/// The pod's IP on the node's bridge.
pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_else(|| panic!("pod {:?} has no IP", pod.metadata.name))
}
