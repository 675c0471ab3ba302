//! The test cluster itself: StatefulSet pods really become Running and Ready with IPs, come
//! back with a new UID when deleted, and go away when scaled down; Redis answers through the
//! `redis` crate's ConnectionManager.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};

use crate::support::{self, TestNamespace};

const TIMEOUT: Duration = Duration::from_secs(60);

pub fn statefulset(name: &str, replicas: i32) -> StatefulSet {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
            }
        }
    }))
    .unwrap()
}

fn is_ready(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status.and_then(|s| s.pod_ip.as_deref()).is_some_and(|ip| !ip.is_empty())
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && pod.metadata.deletion_timestamp.is_none()
}

async fn ready_pod(pods: &Api<Pod>, name: &str) -> Result<Pod, String> {
    match pods.get_opt(name).await {
        Ok(Some(p)) if is_ready(&p) => Ok(p),
        Ok(Some(p)) => Err(format!("{name} not ready: {:?}", p.status.and_then(|s| s.phase))),
        Ok(None) => Err(format!("{name} absent")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn statefulset_pods_become_ready_restart_and_scale_down() {
    let client = support::kube_client().await;
    let ns = TestNamespace::new(&client, "smoke").await;
    let sts_api: Api<StatefulSet> = ns.api();
    let pods: Api<Pod> = ns.api();
    sts_api.create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();

    // (a) pods -0, -1, -2 Running and Ready, with an IP and the pod-index label.
    for i in 0..3 {
        let name = format!("web-{i}");
        let pod = support::wait_for(&format!("{name} ready"), TIMEOUT, || ready_pod(&pods, &name)).await;
        let label = pod.metadata.labels.as_ref().and_then(|l| l.get("apps.kubernetes.io/pod-index")).cloned();
        assert_eq!(label.as_deref(), Some(i.to_string().as_str()), "{name} pod-index label");
        assert!(pod.status.unwrap().pod_ip.unwrap().starts_with("10.244."));
    }

    // (b) deleting pod -1 brings back a pod -1 with a new UID that becomes Ready.
    let old_uid = pods.get("web-1").await.unwrap().metadata.uid.unwrap();
    pods.delete("web-1", &DeleteParams::default()).await.unwrap();
    let new = support::wait_for("web-1 recreated and ready", TIMEOUT, || async {
        let p = ready_pod(&pods, "web-1").await?;
        if p.metadata.uid.as_deref() == Some(old_uid.as_str()) { Err("still the old pod".into()) } else { Ok(p) }
    })
    .await;
    assert_ne!(new.metadata.uid.unwrap(), old_uid);

    // (c) scaling to 2 removes pod -2.
    sts_api
        .patch("web", &PatchParams::default(), &Patch::Merge(serde_json::json!({"spec": {"replicas": 2}})))
        .await
        .unwrap();
    support::wait_for("web-2 gone", TIMEOUT, || async {
        match pods.get_opt("web-2").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("web-2 still exists".into()),
        }
    })
    .await;
    assert!(pods.get_opt("web-0").await.unwrap().is_some() && pods.get_opt("web-1").await.unwrap().is_some());
}

#[tokio::test]
async fn redis_round_trip_through_connection_manager() {
    use redis::AsyncCommands;
    let mut conn = support::redis().await;
    let key = format!("smoke:{}", support::unique_name("rt"));
    let _: () = conn.set_ex(&key, "hello", 60).await.unwrap();
    let got: Option<String> = conn.get(&key).await.unwrap();
    assert_eq!(got.as_deref(), Some("hello"));
    let ttl: i64 = conn.ttl(&key).await.unwrap();
    assert!((1..=60).contains(&ttl), "ttl {ttl}");
    let _: () = conn.del(&key).await.unwrap();
    let gone: Option<String> = conn.get(&key).await.unwrap();
    assert_eq!(gone, None);
}
