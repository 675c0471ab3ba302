//! Test support: the cluster's kubeconfig and Redis, a unique namespace per test, and waiting
//! on conditions with a deadline (never fixed sleeps).

#![allow(dead_code)]

use std::{
    future::Future,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

pub mod cli;
pub mod faults;
pub mod links_workload;
pub mod node;
pub mod operator;
pub mod redis_ha;
pub mod store;

use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the integration tests with `make test`, or `make cluster-up` and `source .cluster/env`")
    })
}

/// A kube client for the test cluster named by $KUBECONFIG.
pub async fn kube_client() -> Client {
    let path = env("KUBECONFIG");
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("reading kubeconfig {path}: {e}"));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("loading kubeconfig {path}: {e}"));
    Client::try_from(config).expect("building a kube client")
}

/// The standalone Redis of the test cluster.
pub fn redis_url() -> String {
    env("REDIS_URL")
}

/// The seed nodes of the test cluster's 3-master Redis Cluster.
pub fn redis_cluster_urls() -> Vec<String> {
    env("REDIS_CLUSTER_URLS").split(',').map(str::to_owned).collect()
}

pub async fn redis() -> redis::aio::ConnectionManager {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| panic!("redis url {url}: {e}"));
    redis::aio::ConnectionManager::new(client).await.unwrap_or_else(|e| panic!("connecting to {url}: {e}"))
}

/// A name unique across tests and runs: `<prefix>-<pid>-<counter>-<random>`, DNS-1123 safe.
/// Redis tests use it as their namespace, which is part of every key, so tests never share keys.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}-{:04x}", std::process::id(), rand::random::<u16>())
}

/// A Kubernetes namespace created for one test and deleted when dropped.
pub struct TestNamespace {
    pub name: String,
    pub client: Client,
}

impl TestNamespace {
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = unique_name(prefix);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"routestate.dev/test": "true"}}
        }))
        .unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        Self { name, client: client.clone() }
    }

    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Deletion is asynchronous (the namespace controller finishes it); we only ask for it.
        // It runs on a thread with its own runtime and its own client: the test's client has a
        // background task on the test's runtime, which is blocked while we wait here.
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = kube_client().await;
                release_routestates(&client, &name).await;
                let _ = Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()).await;
            });
        })
        .join();
    }
}

/// Drops the finalizers of the namespace's RouteStates: a test that failed while its operator
/// was running leaves them behind, and no operator is left to remove them, which would keep the
/// namespace Terminating forever.
async fn release_routestates(client: &Client, ns: &str) {
    use kube::{
        api::{DynamicObject, ListParams, Patch, PatchParams},
        core::{ApiResource, GroupVersionKind},
    };
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("routestate.dev", "v1alpha1", "RouteState"),
        "routestates",
    );
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let Ok(list) = api.list(&ListParams::default()).await else { return };
    for rs in list.items.iter().filter(|rs| !rs.metadata.finalizers.as_deref().unwrap_or_default().is_empty()) {
        if let Some(name) = rs.metadata.name.as_deref() {
            let patch = serde_json::json!({"metadata": {"finalizers": null}});
            let _ = api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await;
        }
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `timeout` naming `what`
/// and the last observation.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The named steps of a long scenario test: a failure (a panic anywhere in the test) names the
/// step it happened in and the steps passed before it.
#[derive(Default)]
pub struct Steps {
    done: Vec<&'static str>,
    current: Option<&'static str>,
}

impl Steps {
    /// Starts step `name` (the previous one passed).
    pub fn enter(&mut self, name: &'static str) {
        if let Some(previous) = self.current.replace(name) {
            self.done.push(previous);
        }
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("FAILED in step {:?} (passed: {:?})", self.current.unwrap_or("setup"), self.done);
        }
    }
}
