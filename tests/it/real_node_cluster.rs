//! The local cluster's real node beside kwok: a real kubelet runs the pods that ask for it (by
//! label and toleration) and only those; kwok keeps every other pod; the control plane has what
//! a normal cluster has (ServiceAccount tokens in pods, `kube-root-ca.crt`, ClusterRole
//! aggregation) and the API server reaches the kubelet with its client certificate.

use std::time::Duration;

use k8s_openapi::api::{
    core::v1::{ConfigMap, Node, Pod},
    rbac::v1::ClusterRole,
};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};

use crate::support::{
    self, TestNamespace,
    cli::ok,
    node::{RealNode, container_pid, wait_ready_pods},
};

const TIMEOUT: Duration = Duration::from_secs(60);

fn pod(name: &str, image: &str, on_real_node: bool) -> Pod {
    let mut spec = serde_json::json!({
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never"}],
        "terminationGracePeriodSeconds": 1,
    });
    if on_real_node {
        spec["nodeSelector"] = serde_json::json!({"routestate.dev/node": "real"});
        spec["tolerations"] =
            serde_json::json!([{"key": "routestate.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]);
    }
    serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": {"app": name}}, "spec": spec}))
        .unwrap()
}

#[tokio::test]
async fn real_node_runs_the_pods_that_ask_for_it_and_kwok_the_rest() {
    let node = RealNode::require();
    let pause = std::env::var("ROUTESTATE_NODE_PAUSE_IMAGE").expect("ROUTESTATE_NODE_PAUSE_IMAGE");
    let client = support::kube_client().await;
    let nodes: Api<Node> = Api::all(client.clone());

    // A kubelet of the control plane's version runs it, and kwok does not manage it.
    let n = nodes.get(&node.name).await.unwrap();
    let info = n.status.as_ref().and_then(|s| s.node_info.as_ref()).unwrap();
    assert_eq!(info.kubelet_version, "v1.37.2");
    assert!(info.container_runtime_version.starts_with("containerd://2."), "{}", info.container_runtime_version);
    let annotations = n.metadata.annotations.clone().unwrap_or_default();
    assert!(!annotations.contains_key("kwok.x-k8s.io/node"), "{annotations:?}");
    let taints = n.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    assert!(taints.iter().any(|t| t.key == "routestate.dev/real-node" && t.effect == "NoSchedule"), "{taints:?}");

    let ns = TestNamespace::new(&client, "node").await;
    let pods: Api<Pod> = ns.api();
    // The ServiceAccount admission needs the namespace's default account.
    support::wait_for("the default ServiceAccount", TIMEOUT, || async {
        ok("kubectl", &["get", "serviceaccount", "default", "-n", &ns.name], None).await;
        Ok::<_, String>(())
    })
    .await;
    pods.create(&PostParams::default(), &pod("real", &pause, true)).await.unwrap();
    pods.create(&PostParams::default(), &pod("fake", &pause, false)).await.unwrap();
    let real = wait_ready_pods(&pods, "app=real", 1, TIMEOUT).await.remove(0);
    let fake = wait_ready_pods(&pods, "app=fake", 1, TIMEOUT).await.remove(0);
    assert_eq!(real.spec.as_ref().unwrap().node_name.as_deref(), Some(node.name.as_str()));
    assert_eq!(fake.spec.as_ref().unwrap().node_name.as_deref(), Some("kwok-node-0"));
    // The real pod has an address on the node's bridge; kwok's come from its fake CIDR.
    let ip = support::node::pod_ip(&real);
    assert_eq!(ip.rsplit_once('.').unwrap().0, node.ip.rsplit_once('.').unwrap().0, "pod IP {ip}");

    // A real process in the node's cgroups, with a projected ServiceAccount token.
    let pid = container_pid(&ns.name, "real", "main").await;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(cgroups.contains("/routestate-") && cgroups.contains("/kubepods/"), "{cgroups}");
    let volumes = real.spec.as_ref().unwrap().volumes.clone().unwrap_or_default();
    assert!(volumes.iter().any(|v| v.name.starts_with("kube-api-access-")), "no token volume: {volumes:?}");
    let token = std::fs::read_to_string(format!("/proc/{pid}/root/var/run/secrets/kubernetes.io/serviceaccount/token"));
    assert!(token.is_ok_and(|t| t.split('.').count() == 3), "no JWT in the container");

    // The API server calls the kubelet (logs) with its client certificate.
    ok("kubectl", &["logs", "real", "-n", &ns.name], None).await;

    // The root CA publisher fills every namespace.
    support::wait_for("kube-root-ca.crt", TIMEOUT, || async {
        let cm = ns.api::<ConfigMap>().get_opt("kube-root-ca.crt").await.map_err(|e| e.to_string())?;
        let data = cm.and_then(|c| c.data).unwrap_or_default();
        if data.get("ca.crt").is_some_and(|c| c.contains("BEGIN CERTIFICATE")) {
            Ok(())
        } else {
            Err(format!("{data:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn clusterroles_are_aggregated() {
    let client = support::kube_client().await;
    let roles: Api<ClusterRole> = Api::all(client);
    let name = support::unique_name("agg");
    let label = format!("routestate.dev/aggregate-to-{name}");
    let parent: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{name}-parent")},
        "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {&label: "true"}}]},
    }))
    .unwrap();
    let child: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": format!("{name}-child"), "labels": {&label: "true"}},
        "rules": [{"apiGroups": ["routestate.dev"], "resources": ["routestates"], "verbs": ["get"]}],
    }))
    .unwrap();
    roles.create(&PostParams::default(), &parent).await.unwrap();
    roles.create(&PostParams::default(), &child).await.unwrap();
    let result = support::wait_for("the aggregated rules", TIMEOUT, || async {
        let p = roles.get(&format!("{name}-parent")).await.map_err(|e| e.to_string())?;
        let rules = p.rules.unwrap_or_default();
        if rules.iter().any(|r| r.resources.as_deref() == Some(&["routestates".to_owned()])) {
            Ok(())
        } else {
            Err(format!("{rules:?}"))
        }
    })
    .await;
    for n in ["parent", "child"] {
        let _ = roles.delete(&format!("{name}-{n}"), &DeleteParams::default()).await;
    }
    result
}
