//! Scenario tests of single reconcile calls: the Kubernetes API is a scripted mock (tower-test)
//! that checks each request the reconcile makes and answers it; Redis is a private
//! `redis-server` on a Unix socket (it runs here, so it is not mocked). A request the script
//! does not expect leaves the reconcile waiting for an answer, which fails the test at its
//! deadline; after the script, no request may be left.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use futures::FutureExt;
use http::{Method, Request, Response};
use k8s_openapi::api::{apps::v1::StatefulSet, core::v1::Pod};
use kube::{
    client::Body,
    runtime::{
        events::Reporter,
        reflector::{self, store::Writer},
        watcher,
    },
};
use serde_json::{Value, json};

use super::*;
use crate::{
    operator::{Claim, Error},
    store::{RedisOptions, Store as Redis},
};

/// Deadline of one scripted exchange (generous: a liveness bound on a shared machine).
const DEADLINE: Duration = Duration::from_secs(10);

/// A private redis-server on a Unix socket, stopped and removed on drop.
struct PrivateRedis {
    child: Child,
    dir: PathBuf,
}

impl PrivateRedis {
    fn start() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("routestate-scenario-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the Redis directory");
        let socket = dir.join("redis.sock");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no", "--unixsocket"])
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server (installed by `make cluster-up`)");
        Self { child, dir }
    }

    fn url(&self) -> String {
        format!("unix://{}", self.dir.join("redis.sock").display())
    }

    async fn store(&self) -> Redis {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            match Redis::connect(&RedisOptions::standalone(self.url())).await {
                Ok(store) => return store,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("redis-server did not answer: {}", e.chain())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The reconciler's context over a scripted API and a private Redis, with writable caches.
struct Fixture {
    ctx: Arc<Context>,
    api: ApiServer,
    pods: Arc<PodIndex>,
    statefulsets: Writer<StatefulSet>,
    routestates: Writer<RouteState>,
    redis: Redis,
    _claims: watch::Sender<Option<Claim>>,
    _synced: [watch::Sender<bool>; 3],
    _sync_changed: mpsc::UnboundedReceiver<ObjectRef<RouteState>>,
    _server: PrivateRedis,
}

impl Fixture {
    async fn new(leading: bool) -> Self {
        let server = PrivateRedis::start();
        let redis = server.store().await;
        let (service, api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let (claims, leader) = Leadership::channel(leading.then(Claim::unlimited));
        let metrics = Arc::new(Metrics::default());
        let (sync_tx, sync_rx) = mpsc::unbounded_channel();
        let publisher = Arc::new(Publisher::new(redis.clone(), leader.clone(), metrics.clone(), sync_tx));
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: None };
        let pods = Arc::new(PodIndex::default());
        let (sts_store, statefulsets) = reflector::store();
        let (rs_store, routestates) = reflector::store();
        let flags = [watch::channel(true), watch::channel(true), watch::channel(true)];
        let synced =
            Synced { pods: flags[0].1.clone(), statefulsets: flags[1].1.clone(), routestates: flags[2].1.clone() };
        let [(a, _), (b, _), (c, _)] = flags;
        let shared = Shared { client, reporter, publisher, leader, metrics };
        let ctx = Arc::new(Context::new(shared, pods.clone(), sts_store, rs_store, synced));
        Self {
            ctx,
            api: ApiServer(api),
            pods,
            statefulsets,
            routestates,
            redis,
            _claims: claims,
            _synced: [a, b, c],
            _sync_changed: sync_rx,
            _server: server,
        }
    }

    /// Puts StatefulSet `web` with `replicas` Ready pods in the caches.
    fn with_statefulset(&mut self, replicas: u32) {
        self.with_pods("game", "web", replicas);
    }

    /// Puts StatefulSet `sts` of namespace `ns` with `replicas` Ready pods in the caches.
    fn with_pods(&mut self, ns: &str, sts: &str, replicas: u32) {
        let set: StatefulSet = serde_json::from_value(json!({
            "metadata": {"name": sts, "namespace": ns, "uid": format!("{ns}-{sts}")},
            "spec": {"replicas": replicas, "selector": {}, "serviceName": sts, "template": {}}
        }))
        .unwrap();
        self.statefulsets.apply_watcher_event(&watcher::Event::Apply(set));
        for i in 0..replicas {
            self.pods.apply(&watcher::Event::Apply(pod(ns, sts, i, true)));
        }
    }

    /// Pod `i` of `game/web` stops being Ready; its facts change.
    fn pod_unready(&mut self, i: u32) {
        assert!(!self.pods.apply(&watcher::Event::Apply(pod("game", "web", i, false))).is_empty());
    }

    /// Puts RouteState `game/web` in the cache and returns it.
    fn routestate(&mut self, finalizer: bool, status: Option<Value>) -> Arc<RouteState> {
        let mut object = json!({
            "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
            "metadata": {
                "name": "web", "namespace": "game", "uid": "rs-uid", "generation": 1,
                "resourceVersion": "1", "creationTimestamp": "2026-01-01T00:00:00Z"
            },
            "spec": {"statefulSet": "web"}
        });
        if finalizer {
            object["metadata"]["finalizers"] = json!([FINALIZER]);
        }
        if let Some(status) = status {
            object["status"] = status;
        }
        let rs: RouteState = serde_json::from_value(object).unwrap();
        self.routestates.apply_watcher_event(&watcher::Event::Apply(rs.clone()));
        Arc::new(rs)
    }

    /// Runs one reconcile while `script` answers the API requests it makes; then checks that no
    /// request is left unanswered.
    async fn reconcile(
        &mut self,
        rs: Arc<RouteState>,
        script: impl AsyncFnOnce(&mut ApiServer),
    ) -> Result<kube::runtime::controller::Action, Error> {
        let run = tokio::time::timeout(DEADLINE, reconcile::reconcile(rs, self.ctx.clone()));
        let (result, ()) = tokio::join!(run, script(&mut self.api));
        let result = result.expect("the reconcile waited for an API answer the script did not give");
        assert!(self.api.0.next_request().now_or_never().is_none(), "a request was left unanswered");
        result
    }

    /// A reconcile of RouteState `game/web` (with its finalizer and `status`) whose one request is
    /// an Event, answered; returns the reconcile's action and the Event sent.
    async fn reconcile_to_one_event(&mut self, status: &Value) -> (kube::runtime::controller::Action, Value) {
        let rs = self.routestate(true, Some(status.clone()));
        let mut event = Value::Null;
        let action = self
            .reconcile(rs, async |api: &mut ApiServer| {
                event = api.expect(Method::POST, EVENTS_PATH, json!({"metadata": {"name": "e"}})).await;
            })
            .await
            .unwrap();
        (action, event)
    }

    /// The leader's first reconcile of RouteState `game/web` (with its finalizer) over `replicas`
    /// Ready pods: its one request, the status patch, answered; returns the patch sent.
    async fn first_status_patch(&mut self, replicas: u32) -> Value {
        self.with_statefulset(replicas);
        let rs = self.routestate(true, None);
        let answer = serde_json::to_value(rs.as_ref()).unwrap();
        let mut sent = Value::Null;
        self.reconcile(rs, async |api: &mut ApiServer| {
            sent = api.expect(Method::PATCH, &format!("{RS_PATH}/status"), answer).await;
        })
        .await
        .unwrap();
        sent
    }

    async fn redis_keys(&self) -> Vec<String> {
        let mut conn = self.redis.conn();
        redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap()
    }
}

/// Pod `i` of StatefulSet `sts` in `ns`, Ready or not.
fn pod(ns: &str, sts: &str, i: u32, ready: bool) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{sts}-{i}"), "namespace": ns,
            "labels": {"apps.kubernetes.io/pod-index": i.to_string()},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts, "uid": format!("{ns}-{sts}"), "controller": true}]
        },
        "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    }))
    .unwrap()
}

/// One side of the scripted API: expects a request, checks it, answers it.
struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// Waits for the next request, which must be `method` on `path` (query ignored); answers
    /// `reply` and returns the request's JSON body.
    async fn expect(&mut self, method: Method, path: &str, reply: Value) -> Value {
        let (request, send) = tokio::time::timeout(DEADLINE, self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no {method} {path} within {DEADLINE:?}"))
            .expect("the client is gone");
        assert_eq!((request.method(), request.uri().path()), (&method, path), "unexpected request");
        let body = request.into_body().collect_bytes().await.unwrap();
        let body: Value = if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap() };
        send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&reply).unwrap())).unwrap());
        body
    }
}

const RS_PATH: &str = "/apis/routestate.dev/v1alpha1/namespaces/game/routestates/web";
const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/game/events";

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} in {status}"))
}

#[tokio::test]
async fn the_leader_adds_the_finalizer_first_and_writes_nothing_else() {
    let mut f = Fixture::new(true).await;
    f.with_statefulset(2);
    let rs = f.routestate(false, None);
    let answer = serde_json::to_value(f.routestate(true, None).as_ref()).unwrap();
    f.reconcile(rs, async |api: &mut ApiServer| {
        let patch = api.expect(Method::PATCH, RS_PATH, answer).await;
        let added =
            patch.as_array().unwrap().iter().any(|op| op["op"] == "add" && op["value"].to_string().contains(FINALIZER));
        assert!(added, "{patch}");
    })
    .await
    .unwrap();
    assert_eq!(f.redis_keys().await, Vec::<String>::new(), "nothing is published before the finalizer is there");
}

#[tokio::test]
async fn an_unchanged_status_is_not_patched_again() {
    let mut f = Fixture::new(true).await;
    let sent = f.first_status_patch(2).await;
    assert_eq!(sent["kind"], "RouteState");
    let ready = condition(&sent["status"], "Ready");
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("Unknown"), &json!("Pending")),
        "not published yet: {sent}"
    );
    // The same inputs with that status stored: no request at all.
    let rs = f.routestate(true, Some(sent["status"].clone()));
    f.reconcile(rs, async |_: &mut ApiServer| {}).await.unwrap();
}

#[tokio::test]
async fn a_standby_keeps_its_plan_and_writes_nothing() {
    let mut f = Fixture::new(false).await;
    f.with_statefulset(3);
    let rs = f.routestate(false, None);
    let key = ObjectRef::from_obj(rs.as_ref());
    let action = f.reconcile(rs, async |_: &mut ApiServer| {}).await.unwrap();
    assert_eq!(action, kube::runtime::controller::Action::await_change());
    let plan = f.ctx.publisher.plan(&key).expect("the plan is kept warm for a new term");
    assert_eq!(plan.pods.len(), 3);
    assert_eq!(f.redis_keys().await, Vec::<String>::new(), "a standby writes no key");
}

#[tokio::test]
async fn a_missing_statefulset_is_a_warning_and_ready_false() {
    let mut f = Fixture::new(true).await;
    let rs = f.routestate(true, None);
    let answer = serde_json::to_value(rs.as_ref()).unwrap();
    let (mut event, mut status) = (Value::Null, Value::Null);
    f.reconcile(rs, async |api: &mut ApiServer| {
        event = api.expect(Method::POST, EVENTS_PATH, json!({"metadata": {"name": "e"}})).await;
        status = api.expect(Method::PATCH, &format!("{RS_PATH}/status"), answer).await;
    })
    .await
    .unwrap();
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!(events::STATEFULSET_NOT_FOUND)),
        "{event}"
    );
    assert!(event["note"].as_str().unwrap().contains("StatefulSet web not found"), "{event}");
    let ready = condition(&status["status"], "Ready");
    assert_eq!((&ready["status"], &ready["reason"]), (&json!("False"), &json!("StatefulSetNotFound")), "{status}");
    // Told once: the next reconcile (same status stored) writes nothing.
    let rs = f.routestate(true, Some(status["status"].clone()));
    f.reconcile(rs, async |_: &mut ApiServer| {}).await.unwrap();
}

#[tokio::test]
async fn a_failed_reconcile_is_a_warning_event_with_its_category() {
    let mut f = Fixture::new(true).await;
    let rs = f.routestate(true, None);
    let api_error =
        || kube::Error::Api(Box::new(kube::core::Status::failure("the server is on fire", "InternalError")));
    let error = Error::Kube { op: "patching the status of RouteState game/web".into(), source: api_error() };
    let failed = Err(kube::runtime::controller::Error::ReconcilerFailed(
        error,
        Box::new(ObjectRef::from_obj(rs.as_ref()).erase()),
    ));
    let (event, ()) = tokio::join!(
        f.api.expect(Method::POST, EVENTS_PATH, json!({"metadata": {"name": "e"}})),
        tell_failure(&f.ctx, failed)
    );
    assert_eq!(
        (&event["reason"], &event["action"]),
        (&json!(reconcile::RECONCILE_FAILED), &json!("KubernetesApi")),
        "{event}"
    );
    // The message, then the cause as kube words it (its status is in it once already).
    let note = event["note"].as_str().unwrap();
    assert_eq!(note, format!("patching the status of RouteState game/web: {}", api_error()));
}

#[tokio::test]
async fn a_reconcile_reads_its_own_statefulsets_pods_only() {
    // The same RouteState, alone and among a fleet of other StatefulSets' pods (same namespace,
    // same StatefulSet name in another namespace): the same plan, read from its own pods.
    let mut alone = Fixture::new(false).await;
    alone.with_statefulset(3);
    let rs = alone.routestate(false, None);
    let key = ObjectRef::from_obj(rs.as_ref());
    alone.reconcile(rs, async |_: &mut ApiServer| {}).await.unwrap();

    let mut fleet = Fixture::new(false).await;
    fleet.with_statefulset(3);
    for i in 0..20 {
        fleet.with_pods("game", &format!("other-{i}"), 50);
    }
    fleet.with_pods("elsewhere", "web", 7);
    assert_eq!(fleet.ctx.pods.len(), 3 + 20 * 50 + 7);
    let rs = fleet.routestate(false, None);
    fleet.reconcile(rs, async |_: &mut ApiServer| {}).await.unwrap();
    let (a, b) = (alone.ctx.publisher.plan(&key).unwrap(), fleet.ctx.publisher.plan(&key).unwrap());
    assert_eq!(a, b);
    assert_eq!(a.pods.keys().copied().collect::<Vec<_>>(), [0, 1, 2]);
    // What the reconcile read is the index's entry for (game, web), not a scan of the fleet.
    assert_eq!(fleet.ctx.pods.facts("game", "web").len(), 3);
}

#[tokio::test]
async fn status_changes_under_churn_wait_for_the_minimum_interval() {
    let mut f = Fixture::new(true).await;
    let sent = f.first_status_patch(2).await;
    // Pod 1 stops being Ready right after: its Event is told at once, the status waits.
    f.pod_unready(1);
    let (action, event) = f.reconcile_to_one_event(&sent["status"]).await;
    assert_eq!((&event["reason"], &event["action"]), (&json!(events::ROUTING_CHANGED), &json!("Unpublish")), "{event}");
    assert_eq!(
        event["related"],
        json!({"apiVersion": "v1", "kind": "Pod", "namespace": "game", "name": "web-1"}),
        "{event}"
    );
    assert_ne!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(300)),
        "requeued to write the status"
    );
    assert_ne!(action, kube::runtime::controller::Action::await_change());
}

#[tokio::test]
async fn a_plan_follows_its_inputs_without_a_reconcile() {
    let mut f = Fixture::new(false).await;
    f.with_statefulset(3);
    let rs = f.routestate(false, None);
    let key = ObjectRef::from_obj(rs.as_ref());
    // Not reconciled yet: no plan is made up (the reconcile settles the finalizer and owner first).
    reconcile::follow(&f.ctx, &key);
    assert!(f.ctx.publisher.plan(&key).is_none());
    f.reconcile(rs, async |_: &mut ApiServer| {}).await.unwrap();
    assert_eq!(f.ctx.publisher.plan(&key).unwrap().pods.len(), 3);
    // Pod 1 stops being Ready: the plan drops it with no reconcile and no API request.
    f.pod_unready(1);
    reconcile::follow(&f.ctx, &key);
    assert_eq!(f.ctx.publisher.plan(&key).unwrap().pods.keys().copied().collect::<Vec<_>>(), [0, 2]);
    // A drain in the spec: the same, at once.
    let mut drained = (*f.routestate(false, None)).clone();
    drained.spec.pods = serde_json::from_value(json!([{"index": 2, "routingState": "DenyNewCall"}])).unwrap();
    f.routestates.apply_watcher_event(&watcher::Event::Apply(drained.clone()));
    reconcile::follow(&f.ctx, &key);
    let plan = f.ctx.publisher.plan(&key).unwrap();
    assert_eq!(plan.pods.keys().copied().collect::<Vec<_>>(), [0, 2]);
    assert_ne!(plan.pods[&2].floor, plan.pods[&0].floor, "pod 2 is drained: {plan:?}");
    // A renamed service waits for the reconcile (it settles the new name's owner).
    drained.spec.service_name = Some("renamed".into());
    f.routestates.apply_watcher_event(&watcher::Event::Apply(drained));
    reconcile::follow(&f.ctx, &key);
    assert_eq!(f.ctx.publisher.plan(&key).unwrap().service, "web");
    assert!(f.api.0.next_request().now_or_never().is_none(), "no API request");
    // A withdrawn plan is not brought back.
    f.ctx.publisher.forget(&key);
    reconcile::follow(&f.ctx, &key);
    assert!(f.ctx.publisher.plan(&key).is_none());
}

#[tokio::test]
async fn pods_that_come_up_together_are_one_event() {
    let mut f = Fixture::new(true).await;
    let sent = f.first_status_patch(2).await;
    // The StatefulSet scales from 2 to 6 and pods 2..=5 are Ready by the next reconcile: one
    // Event names them all (a second request would be left unanswered and fail the test).
    f.with_statefulset(6);
    let (_, event) = f.reconcile_to_one_event(&sent["status"]).await;
    assert_eq!((&event["reason"], &event["action"]), (&json!(events::ROUTING_CHANGED), &json!("PublishReady")));
    assert_eq!(event["note"], json!("4 pods of service web: not published -> READY: web-2, web-3, web-4, web-5"));
    assert_eq!(event["related"]["name"], json!("web-2"), "{event}");

    // Down to 2 and up to 8 again: the new batch starts at web-2 too, and is a new Event with its
    // own note (POST), not a repeat of the first folded into its series (PATCH, first note kept).
    f.with_statefulset(2);
    for i in 2..6 {
        f.pods.apply(&watcher::Event::Delete(pod("game", "web", i, true)));
    }
    assert_eq!(f.reconcile_to_one_event(&sent["status"]).await.1["action"], json!("Unpublish"));
    f.with_statefulset(8);
    let (_, event) = f.reconcile_to_one_event(&sent["status"]).await;
    assert_eq!(event["related"]["name"], json!("web-2"), "{event}");
    assert_eq!(
        event["note"],
        json!("6 pods of service web: not published -> READY: web-2, web-3, web-4, web-5, web-6, web-7")
    );
}
