//! A real `helm install` and `helm upgrade` of the chart into the local control plane. kwok plays
//! the kubelet, so the Deployment's pods become Running and Ready without a container running:
//! this proves the objects are valid and wired (selectors, ServiceAccount, probes' ports, PDB),
//! not the image.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service, ServiceAccount},
    policy::v1::PodDisruptionBudget,
};
use kube::{Api, api::ListParams};

use crate::support::{
    self, TestNamespace,
    cli::{HelmRelease, ok},
};

const TIMEOUT: Duration = Duration::from_secs(120);

fn running_and_ready(p: &Pod) -> bool {
    let s = p.status.as_ref();
    s.and_then(|s| s.phase.as_deref()) == Some("Running")
        && s.and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && p.metadata.deletion_timestamp.is_none()
}

async fn wait_pods(pods: &Api<Pod>, selector: &str, want: usize) -> Vec<Pod> {
    support::wait_for(&format!("{want} Running+Ready pods of {selector}"), TIMEOUT, || async {
        let list = pods.list(&ListParams::default().labels(selector)).await.map_err(|e| e.to_string())?;
        let ready: Vec<Pod> = list.items.into_iter().filter(running_and_ready).collect();
        if ready.len() == want { Ok(ready) } else { Err(format!("{} ready", ready.len())) }
    })
    .await
}

fn container_args(d: &Deployment) -> Vec<String> {
    d.spec.template.spec.as_ref().unwrap().containers[0].args.clone().unwrap_or_default()
}

#[tokio::test]
async fn helm_install_then_upgrade_changes_the_deployment() {
    let client = support::kube_client().await;
    support::operator::install_crd(&client).await;
    let ns = TestNamespace::new(&client, "chart-inst").await;
    let release = HelmRelease::install(&support::unique_name("ri"), &ns.name, &[], &["--wait", "--timeout=120s"]).await;
    let name = release.fullname();
    let selector = format!("app.kubernetes.io/instance={}", release.name);

    let deployments: Api<Deployment> = ns.api();
    let pods: Api<Pod> = ns.api();
    let dep = deployments.get(&name).await.unwrap();
    assert_eq!(dep.spec.replicas, Some(2));
    let running = wait_pods(&pods, &selector, 2).await;
    for p in &running {
        assert_eq!(p.spec.as_ref().unwrap().service_account_name.as_deref(), Some(name.as_str()));
    }
    ns.api::<ServiceAccount>().get(&name).await.expect("ServiceAccount");
    let svc = ns.api::<Service>().get(&format!("{name}-metrics")).await.expect("metrics Service");
    assert_eq!(svc.spec.unwrap().ports.unwrap()[0].name.as_deref(), Some("metrics"));
    let pdb = ns.api::<PodDisruptionBudget>().get(&name).await.expect("PodDisruptionBudget");
    // The disruption controller sees the Deployment's pods through the PDB's selector.
    support::wait_for("PDB observes 2 healthy pods", TIMEOUT, || async {
        let pdb = ns.api::<PodDisruptionBudget>().get(&name).await.map_err(|e| e.to_string())?;
        let healthy = pdb.status.as_ref().and_then(|s| s.current_healthy).unwrap_or(0);
        if healthy == 2 { Ok(()) } else { Err(format!("currentHealthy {healthy}")) }
    })
    .await;
    drop(pdb);
    assert!(container_args(&dep).contains(&"--log-format=json".to_owned()));

    // Upgrade: one replica (so no PDB any more), text logs; every change must land.
    ok(
        "helm",
        &[
            "upgrade",
            &release.name,
            "charts/routestate",
            "-n",
            &ns.name,
            "--reuse-values",
            "--set",
            "replicaCount=1",
            "--set",
            "logFormat=text",
            "--wait",
            "--timeout=120s",
        ],
        None,
    )
    .await;
    let dep = deployments.get(&name).await.unwrap();
    assert_eq!(dep.spec.replicas, Some(1));
    let args = container_args(&dep);
    assert!(args.contains(&"--log-format=text".to_owned()), "{args:?}");
    assert!(ns.api::<PodDisruptionBudget>().get_opt(&name).await.unwrap().is_none(), "PDB must go with 1 replica");
    wait_pods(&pods, &selector, 1).await;
    let history = ok("helm", &["history", &release.name, "-n", &ns.name, "-o", "json"], None).await;
    let history: serde_json::Value = serde_json::from_str(&history).unwrap();
    let revisions: Vec<(i64, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["revision"].as_i64().unwrap(), r["status"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(revisions, [(1, "superseded".to_owned()), (2, "deployed".to_owned())]);
}
