//! Least privilege, proven: the operator runs with nothing but a token of the chart's
//! ServiceAccount (`kubectl create token`) and still does its whole job (publish, follow an
//! override, status, Events, finalizer, Lease), and `kubectl auth can-i` shows the account is
//! refused what it must not do. Once for the default cluster-wide install, once for a namespaced
//! install (`watchNamespace`).

use std::time::Duration;

use k8s_openapi::api::{apps::v1::StatefulSet, coordination::v1::Lease, events::v1::Event};
use kube::{
    Api,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use routestate::{
    core::RoutingState,
    operator::{LeaseConfig, RouteState},
};

use crate::{
    cluster_smoke::statefulset,
    support::{
        self, TestNamespace,
        cli::{HelmRelease, can_i, token_client},
        operator::{install_crd, start_operator, states},
    },
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// The operator's end-to-end scenario in `apps`, with a client holding only the release's
/// ServiceAccount token and the chart's Lease.
async fn scenario_with_token(release: &HelmRelease, apps: &TestNamespace) {
    let admin = support::kube_client().await;
    let sa_client = token_client(&release.token().await).await;
    let identity = support::unique_name("rbac-op");
    let lease = LeaseConfig::new(&release.namespace, release.fullname(), &identity);
    let operator = start_operator(&sa_client, &apps.name, Some(lease)).await;
    support::wait_for("the operator holds the chart's Lease", TIMEOUT, || async {
        if operator.is_leader() { Ok(()) } else { Err("not leader".into()) }
    })
    .await;
    let holder = Api::<Lease>::namespaced(admin.clone(), &release.namespace)
        .get(&release.fullname())
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some(identity.as_str()));

    // As the cluster admin: a 3-replica StatefulSet and its RouteState.
    let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), &apps.name);
    let rs_api: Api<RouteState> = Api::namespaced(admin.clone(), &apps.name);
    sts.create(&PostParams::default(), &statefulset("web", 3)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
        "metadata": {"name": "web"}, "spec": {"updatePeriodSeconds": 2}
    }))
    .unwrap();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();

    let redis = support::redis().await;
    let routing = |want: [RoutingState; 3]| {
        let redis = redis.clone();
        let ns = apps.name.clone();
        move || {
            let mut redis = redis.clone();
            let ns = ns.clone();
            async move {
                let s = states(&mut redis, &ns, "web").await;
                let got: Vec<(u32, RoutingState)> = s.iter().map(|(i, p)| (*i, p.routing)).collect();
                let want: Vec<(u32, RoutingState)> = (0..3).zip(want).collect();
                if got == want { Ok(()) } else { Err(format!("{got:?}")) }
            }
        }
    };
    support::wait_for("3 READY fields in Redis", TIMEOUT, routing([RoutingState::Ready; 3])).await;

    // Status (server-side apply on the status subresource) reached the API server.
    support::wait_for("RouteState Ready=True with observedGeneration", TIMEOUT, || async {
        let rs = rs_api.get("web").await.map_err(|e| e.to_string())?;
        let generation = rs.metadata.generation;
        let ready = rs.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready").cloned());
        match ready {
            Some(c) if c.status == "True" && c.observed_generation == generation => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // A per-pod override: pod 1 drains, Redis follows.
    let patch = serde_json::json!({"spec": {"pods": [{"index": 1, "routingState": "DenyNewCall"}]}});
    rs_api.patch("web", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    support::wait_for(
        "pod 1 DENY_NEW_CALL in Redis",
        TIMEOUT,
        routing([RoutingState::Ready, RoutingState::DenyNewCall, RoutingState::Ready]),
    )
    .await;

    // Events were recorded with the account's permissions.
    support::wait_for("an Event about the RouteState", TIMEOUT, || async {
        let events: Api<Event> = Api::namespaced(admin.clone(), &apps.name);
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let ours =
            list.items.iter().any(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("RouteState"));
        if ours { Ok(()) } else { Err(format!("{} events, none about the RouteState", list.items.len())) }
    })
    .await;

    // Deleting runs the finalizer (a patch of the account's) and removes the keys.
    rs_api.delete("web", &DeleteParams::default()).await.unwrap();
    support::wait_for("RouteState gone, Redis keys removed", TIMEOUT, || async {
        let gone = rs_api.get_opt("web").await.map_err(|e| e.to_string())?.is_none();
        let s = states(&mut redis.clone(), &apps.name, "web").await;
        if gone && s.is_empty() { Ok(()) } else { Err(format!("gone={gone} fields={}", s.len())) }
    })
    .await;
    let metrics = operator.metrics();
    operator.shutdown().await.expect("graceful shutdown");
    drop(metrics);
    // The graceful shutdown released the Lease (an `update` on it).
    let holder = Api::<Lease>::namespaced(admin, &release.namespace)
        .get(&release.fullname())
        .await
        .unwrap()
        .spec
        .and_then(|s| s.holder_identity)
        .unwrap_or_default();
    assert!(holder.is_empty(), "lease still held by {holder:?} after shutdown");
}

/// What the account may and may not do in `apps` (a watched namespace).
async fn assert_can_i(release: &HelmRelease, apps: &str) {
    let (sa_ns, sa) = (release.namespace.as_str(), release.fullname());
    let lease = format!("leases/{}", release.fullname());
    let allowed: &[&[&str]] = &[
        &["list", "pods", "-n", apps],
        &["watch", "pods", "-n", apps],
        &["list", "statefulsets.apps", "-n", apps],
        &["watch", "routestates.routestate.dev", "-n", apps],
        &["patch", "routestates.routestate.dev", "-n", apps],
        &["patch", "routestates.routestate.dev", "--subresource=status", "-n", apps],
        &["update", "routestates.routestate.dev", "--subresource=finalizers", "-n", apps],
        &["create", "events.events.k8s.io", "-n", apps],
        &["patch", "events.events.k8s.io", "-n", apps],
        &["create", "leases.coordination.k8s.io", "-n", sa_ns],
        &["update", &lease, "-n", sa_ns],
    ];
    let refused: &[&[&str]] = &[
        &["delete", "pods", "-n", apps],
        &["patch", "pods", "-n", apps],
        &["create", "pods/eviction", "-n", apps],
        &["get", "secrets", "-n", apps],
        &["get", "secrets", "-n", sa_ns],
        &["list", "secrets", "-n", sa_ns],
        &["create", "statefulsets.apps", "-n", apps],
        &["update", "statefulsets.apps", "-n", apps],
        &["patch", "statefulsets.apps", "-n", apps],
        &["patch", "statefulsets.apps", "--subresource=scale", "-n", apps],
        &["delete", "statefulsets.apps", "-n", apps],
        &["create", "routestates.routestate.dev", "-n", apps],
        &["delete", "routestates.routestate.dev", "-n", apps],
        &["update", "routestates.routestate.dev", "-n", apps],
        &["update", "routestates.routestate.dev", "--subresource=status", "-n", apps],
        &["delete", "events.events.k8s.io", "-n", apps],
        &["create", "customresourcedefinitions.apiextensions.k8s.io"],
        &["update", "leases/someone-elses-lease", "-n", sa_ns],
        &["get", "leases.coordination.k8s.io", "-n", apps],
        &["create", "serviceaccounts/token", "-n", sa_ns],
    ];
    for args in allowed {
        assert!(can_i(sa_ns, &sa, args).await, "{sa} must be allowed to {args:?}");
    }
    for args in refused {
        assert!(!can_i(sa_ns, &sa, args).await, "{sa} must be refused {args:?}");
    }
}

#[tokio::test]
async fn cluster_wide_install_runs_the_operator_with_its_token_and_nothing_more() {
    let admin = support::kube_client().await;
    install_crd(&admin).await;
    let system = TestNamespace::new(&admin, "rbac-sys").await;
    let apps = TestNamespace::new(&admin, "rbac-apps").await;
    let release = HelmRelease::install(&support::unique_name("rc"), &system.name, &[], &[]).await;
    assert_can_i(&release, &apps.name).await;
    // Cluster-wide: the same in any namespace, and listing across all of them.
    let (sa_ns, sa) = (release.namespace.as_str(), release.fullname());
    assert!(can_i(sa_ns, &sa, &["list", "pods", "--all-namespaces"]).await);
    assert!(!can_i(sa_ns, &sa, &["get", "secrets", "--all-namespaces"]).await);
    scenario_with_token(&release, &apps).await;
}

#[tokio::test]
async fn namespaced_install_is_confined_to_the_watched_namespace() {
    let admin = support::kube_client().await;
    install_crd(&admin).await;
    let system = TestNamespace::new(&admin, "rbacn-sys").await;
    let apps = TestNamespace::new(&admin, "rbacn-apps").await;
    let other = TestNamespace::new(&admin, "rbacn-other").await;
    let watch = format!("watchNamespace={}", apps.name);
    let release = HelmRelease::install(&support::unique_name("rn"), &system.name, &[&watch], &[]).await;
    assert_can_i(&release, &apps.name).await;
    let (sa_ns, sa) = (release.namespace.as_str(), release.fullname());
    for args in [
        &["list", "pods", "-n", other.name.as_str()][..],
        &["list", "pods", "--all-namespaces"][..],
        &["list", "routestates.routestate.dev", "-n", other.name.as_str()][..],
        &["list", "statefulsets.apps", "-n", other.name.as_str()][..],
        &["create", "events.events.k8s.io", "-n", other.name.as_str()][..],
    ] {
        assert!(!can_i(sa_ns, &sa, args).await, "namespaced {sa} must be refused {args:?}");
    }
    scenario_with_token(&release, &apps).await;
}
