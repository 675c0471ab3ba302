//! Real game-server pods (examples/game_server.rs in its image, examples/game-server/) on the
//! real node, published by an operator watching their namespace, while a client keeps placing
//! new users and linked users keep calling their pods:
//!
//! - a rolling update (`kubectl rollout restart`) and a scale-down drain every pod they stop:
//!   DENY_NEW_CALL for the drain window, then SHUTDOWN, then the process exits by itself,
//!   well within `terminationGracePeriodSeconds`;
//! - **no new user is placed on a terminating pod**: no placement returns pod `i` when, for the
//!   whole time the placement ran (Redis `TIME` before and after the call), the state hash showed
//!   `i` as not READY (polled every 20 ms with Redis `TIME`, in one MULTI). The Lua placement
//!   reads the hash atomically, so any such placement is a bug;
//! - **linked users keep reaching a draining pod until it stops**: every call of a user linked
//!   to pod `i` made between `i`'s DENY_NEW_CALL and its SHUTDOWN reaches `game-i`, which answers
//!   that it is draining, and the user's link still names `i`.
//!
//! It prints, per drained pod, the time from its deletionTimestamp (seen by a watch) to the
//! DENY_NEW_CALL publish (seen in Redis): the window in which a client could still have placed
//! a user there.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{WatchStreamExt, watcher},
};
use routestate::{
    client::{Client, ClientConfig},
    core::{Keys, PodState, RoutingState},
    store::{RedisOptions, Store},
};
use tokio_util::sync::CancellationToken;

use crate::support::{
    self, TestNamespace,
    cli::ok,
    node::{GAME_SERVER_IMAGE, RealNode, game_server_manifests, wait_ready_pods},
    operator::{start_operator, wait_routing},
};

const TIMEOUT: Duration = Duration::from_secs(180);
const DRAIN_SECONDS: u64 = 4;
const GRACE_SECONDS: i64 = 30;
const POLL: Duration = Duration::from_millis(20);

/// What the state hash said at one Redis time.
#[derive(Debug, Clone)]
struct Snapshot {
    at_ms: u64,
    routing: BTreeMap<u32, RoutingState>,
}

/// One placement: its pod and the Redis times just before and after the call.
#[derive(Debug, Clone)]
struct Placement {
    uid: String,
    pod: u32,
    before_ms: u64,
    after_ms: u64,
}

/// The placements that chose a pod the hash showed as not READY from the last snapshot at or
/// before the call to the first snapshot at or after it (so during the whole call).
fn violations<'a>(snapshots: &[Snapshot], placements: &'a [Placement]) -> Vec<&'a Placement> {
    let ready = |s: &Snapshot, pod| s.routing.get(&pod) == Some(&RoutingState::Ready);
    placements
        .iter()
        .filter(|p| {
            let Some(first) = snapshots.iter().rposition(|s| s.at_ms <= p.before_ms) else { return false };
            let Some(last) = snapshots.iter().position(|s| s.at_ms >= p.after_ms) else { return false };
            snapshots[first..=last].iter().all(|s| !ready(s, p.pod))
        })
        .collect()
}

/// The first Redis time at or after `from_ms` at which pod `pod` was in `want`.
fn first_seen(snapshots: &[Snapshot], pod: u32, want: RoutingState, from_ms: u64) -> Option<u64> {
    snapshots.iter().find(|s| s.at_ms >= from_ms && s.routing.get(&pod) == Some(&want)).map(|s| s.at_ms)
}

#[test]
fn the_placement_check_can_fail() {
    let snap = |at_ms, r: &[(u32, RoutingState)]| Snapshot { at_ms, routing: r.iter().copied().collect() };
    let snaps = [
        snap(100, &[(0, RoutingState::Ready), (1, RoutingState::Ready)]),
        snap(120, &[(0, RoutingState::Ready), (1, RoutingState::DenyNewCall)]),
        snap(140, &[(0, RoutingState::Ready), (1, RoutingState::DenyNewCall)]),
        snap(160, &[(0, RoutingState::Ready)]),
    ];
    let place = |pod, before_ms, after_ms| Placement { uid: format!("u{before_ms}"), pod, before_ms, after_ms };
    let placements =
        [place(1, 105, 110), place(1, 115, 125), place(1, 125, 135), place(0, 125, 135), place(1, 141, 150)];
    let bad: Vec<u64> = violations(&snaps, &placements).iter().map(|p| p.before_ms).collect();
    // Before the DENY (and straddling it) is fine; after it, pod 1 must never be chosen.
    assert_eq!(bad, [125, 141]);
}

/// Everything the background tasks record.
#[derive(Default)]
struct Record {
    snapshots: Vec<Snapshot>,
    placements: Vec<Placement>,
    /// (pod index, Redis ms, answer) of linked users' calls.
    calls: Vec<(u32, u64, Result<String, String>)>,
    /// Linked users whose link moved: (uid, expected pod, found).
    moved: Vec<(String, u32, Option<u32>)>,
    /// Pod name → (local ms of the first deletionTimestamp seen, local ms it was gone).
    deletions: BTreeMap<String, (u64, Option<u64>)>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

async fn redis_time(redis: &mut redis::aio::ConnectionManager) -> u64 {
    support::operator::redis_now_ms(redis).await
}

async fn snapshot(redis: &mut redis::aio::ConnectionManager, key: &str) -> Snapshot {
    let ((s, us), raw): ((u64, u64), BTreeMap<String, String>) =
        redis::pipe().atomic().cmd("TIME").cmd("HGETALL").arg(key).query_async(redis).await.unwrap();
    let routing =
        raw.into_iter().filter_map(|(k, v)| Some((k.parse().ok()?, PodState::parse(&v).ok()?.routing))).collect();
    Snapshot { at_ms: s * 1000 + us / 1000, routing }
}

/// A user's call: `GET /session/<uid>` on the pod's current IP; the answer's first line.
async fn call(pods: &Api<Pod>, pod: &str, uid: &str) -> Result<String, String> {
    let p = pods.get(pod).await.map_err(|e| format!("get pod {pod}: {e}"))?;
    let ip = p.status.and_then(|s| s.pod_ip).ok_or(format!("{pod} has no IP"))?;
    let addr = format!("{ip}:8080").parse().unwrap();
    let (code, body) = support::faults::http_get(addr, &format!("/session/{uid}")).await?;
    if code == 200 { Ok(body.trim().to_owned()) } else { Err(format!("HTTP {code}: {body}")) }
}

struct Scenario {
    ns: TestNamespace,
    pods: Api<Pod>,
    client: Client,
    redis: redis::aio::ConnectionManager,
    record: Arc<Mutex<Record>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Users linked to each pod before the disruption.
    linked: BTreeMap<u32, Vec<String>>,
    _operator: routestate::operator::Operator,
}

impl Scenario {
    /// The example game server as a 3-replica StatefulSet on the real node, Ready and published.
    async fn start(prefix: &str) -> Self {
        let node = RealNode::require_images(&[GAME_SERVER_IMAGE]).await;
        let kube = support::kube_client().await;
        support::operator::install_crd(&kube).await;
        let ns = TestNamespace::new(&kube, prefix).await;
        let operator = start_operator(&kube, &ns.name, None).await;
        ok("kubectl", &["apply", "-n", &ns.name, "-f", "-"], Some(&node.game_server_env(&node.redis_url))).await;
        // The example's manifests, with a short drain and period so the test runs in seconds.
        let dir = game_server_manifests();
        ok("kubectl", &["apply", "-n", &ns.name, "-f", dir.join("rbac.yaml").to_str().unwrap()], None).await;
        let sts = std::fs::read_to_string(dir.join("statefulset.yaml")).unwrap();
        let sts = sts.replace(
            r#"{name: DRAIN_SECONDS, value: "10"}"#,
            &format!(r#"{{name: DRAIN_SECONDS, value: "{DRAIN_SECONDS}"}}"#),
        );
        assert!(sts.contains(&format!("value: \"{DRAIN_SECONDS}\"")), "DRAIN_SECONDS not found in statefulset.yaml");
        ok("kubectl", &["apply", "-n", &ns.name, "-f", "-"], Some(&sts)).await;
        let rs = std::fs::read_to_string(dir.join("routestate.yaml"))
            .unwrap()
            .replace("updatePeriodSeconds: 10", "updatePeriodSeconds: 2");
        ok("kubectl", &["apply", "-n", &ns.name, "-f", "-"], Some(&rs)).await;

        let pods: Api<Pod> = ns.api();
        wait_ready_pods(&pods, "app=game", 3, TIMEOUT).await;
        let mut redis = support::redis().await;
        for i in 0..3 {
            wait_routing(&redis, &ns.name, "game", i, RoutingState::Ready, "game pods READY", TIMEOUT).await;
        }
        let store = Store::connect(&RedisOptions::standalone(support::redis_url())).await.unwrap();
        let client = Client::new(store, ClientConfig::default()).unwrap();

        // Users linked to every pod, each having reached its pod once.
        let mut linked: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        let mut n = 0;
        while linked.values().map(Vec::len).min().unwrap_or(0) < 3 || linked.len() < 3 {
            let uid = format!("linked-{n}");
            n += 1;
            let pod = client.pick_and_link(&ns.name, &uid, "game").await.unwrap().expect("a READY pod");
            call(&pods, &format!("game-{pod}"), &uid).await.unwrap();
            linked.entry(pod).or_default().push(uid);
            assert!(n < 200, "placements never reached every pod: {linked:?}");
        }
        let _ = redis_time(&mut redis).await;
        Self {
            ns,
            pods,
            client,
            redis,
            record: Arc::default(),
            stop: CancellationToken::new(),
            tasks: Vec::new(),
            linked,
            _operator: operator,
        }
    }

    /// Starts the watcher of the state hash, the placing client, the linked users' calls and a
    /// watch of pod deletions.
    fn observe(&mut self) {
        let key = Keys::state(&self.ns.name, "game").unwrap();
        let (rec, stop, mut redis) = (self.record.clone(), self.stop.clone(), self.redis.clone());
        self.tasks.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let s = snapshot(&mut redis, &key).await;
                rec.lock().unwrap().snapshots.push(s);
                tokio::time::sleep(POLL).await;
            }
        }));

        let (rec, stop, mut redis, client, ns) =
            (self.record.clone(), self.stop.clone(), self.redis.clone(), self.client.clone(), self.ns.name.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let uid = format!("new-{n}");
                n += 1;
                let before_ms = redis_time(&mut redis).await;
                let placed = client.pick_and_link(&ns, &uid, "game").await.unwrap();
                let after_ms = redis_time(&mut redis).await;
                if let Some(pod) = placed {
                    rec.lock().unwrap().placements.push(Placement { uid, pod, before_ms, after_ms });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));

        for (&pod, uids) in &self.linked {
            let (rec, stop, mut redis, client, ns, pods) = (
                self.record.clone(),
                self.stop.clone(),
                self.redis.clone(),
                self.client.clone(),
                self.ns.name.clone(),
                self.pods.clone(),
            );
            let uids = uids.clone();
            self.tasks.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    for uid in &uids {
                        let link = client.get_linked_pod_not_cache(&ns, uid, "game").await.unwrap();
                        if link != Some(pod) {
                            rec.lock().unwrap().moved.push((uid.clone(), pod, link));
                        }
                        let at = redis_time(&mut redis).await;
                        let answer = call(&pods, &format!("game-{pod}"), uid).await;
                        rec.lock().unwrap().calls.push((pod, at, answer));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }));
        }

        let (rec, stop, pods) = (self.record.clone(), self.stop.clone(), self.pods.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut events = watcher(pods, watcher::Config::default().labels("app=game")).default_backoff().boxed();
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => return,
                    e = events.next() => e,
                };
                let Some(Ok(event)) = event else { continue };
                let mut r = rec.lock().unwrap();
                match event {
                    watcher::Event::Apply(p) | watcher::Event::InitApply(p)
                        if p.metadata.deletion_timestamp.is_some() =>
                    {
                        let name = p.metadata.name.clone().unwrap_or_default();
                        r.deletions.entry(name).or_insert((now_ms(), None));
                    }
                    watcher::Event::Delete(p) => {
                        let name = p.metadata.name.clone().unwrap_or_default();
                        let t = now_ms();
                        r.deletions.entry(name).or_insert((t, None)).1.get_or_insert(t);
                    }
                    _ => {}
                }
            }
        }));
    }

    async fn finish(mut self) -> (Record, BTreeMap<u32, Vec<String>>, TestNamespace) {
        self.stop.cancel();
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
        let record = std::mem::take(&mut *self.record.lock().unwrap());
        (record, self.linked, self.ns)
    }
}

/// Checks the record for every drained pod; returns the windows (ms) from deletionTimestamp to
/// the DENY_NEW_CALL publish.
fn check_drains(record: &Record, linked: &BTreeMap<u32, Vec<String>>, drained: &[u32]) -> Vec<(u32, i64)> {
    let bad: Vec<String> = violations(&record.snapshots, &record.placements)
        .iter()
        .map(|p| format!("{} on pod {} at [{}, {}] ms", p.uid, p.pod, p.before_ms, p.after_ms))
        .collect();
    assert!(bad.is_empty(), "new users placed on pods that were not READY: {bad:?}");
    assert!(record.moved.is_empty(), "links of linked users moved: {:?}", record.moved);
    let mut windows = Vec::new();
    for &i in drained {
        let name = format!("game-{i}");
        let (deleted_ms, gone_ms) =
            record.deletions.get(&name).copied().unwrap_or_else(|| panic!("no deletion of {name} seen"));
        let deny = first_seen(&record.snapshots, i, RoutingState::DenyNewCall, deleted_ms.saturating_sub(1000))
            .unwrap_or_else(|| panic!("{name} was never published DENY_NEW_CALL after its deletion"));
        let shutdown = first_seen(&record.snapshots, i, RoutingState::Shutdown, deny)
            .unwrap_or_else(|| panic!("{name} was never published SHUTDOWN after its DENY_NEW_CALL"));
        // The drain window is the pod's own: it starts when the pod publishes DENY_NEW_CALL, at
        // the latest when it is first seen (the poll adds ≤ 20 ms).
        assert!(
            shutdown + 100 >= deny + DRAIN_SECONDS * 1000,
            "{name}: SHUTDOWN {} ms after DENY_NEW_CALL, before the {DRAIN_SECONDS} s drain window",
            shutdown - deny
        );
        let gone_ms = gone_ms.unwrap_or_else(|| panic!("{name} was never gone"));
        assert!(
            (gone_ms - deleted_ms) < (GRACE_SECONDS as u64) * 1000,
            "{name} took {} ms to stop: it was killed at the grace period instead of exiting after its drain",
            gone_ms - deleted_ms
        );
        // New users kept coming during the drain, and none landed here (checked above).
        let during = record.placements.iter().filter(|p| p.before_ms > deny && p.after_ms < shutdown).count();
        assert!(during > 0, "{name}: no placement ran during its drain, so the check proved nothing");
        // Its linked users reached it, draining, until the SHUTDOWN.
        let calls: Vec<_> =
            record.calls.iter().filter(|(p, at, _)| *p == i && *at > deny + 50 && *at + 50 < shutdown).collect();
        assert!(!calls.is_empty(), "{name}: no linked user called it during its drain");
        // The operator publishes DENY_NEW_CALL when it sees the deletion, the pod when its
        // SIGTERM arrives (a few ms apart): its first answers may still say READY.
        for (_, at, answer) in &calls {
            match answer {
                Ok(a) => assert!(a.starts_with(&format!("{name} ")), "{name} at {at}: answered {a:?}"),
                Err(e) => panic!("{name}: a linked user could not reach it during its drain ({at}): {e}"),
            }
        }
        let draining = format!("{name} DENY_NEW_CALL");
        assert!(
            calls.iter().any(|(_, _, a)| a.as_deref() == Ok(draining.as_str())),
            "{name} never said it was draining"
        );
        assert!(linked.get(&i).is_some_and(|u| !u.is_empty()));
        windows.push((i, deny as i64 - deleted_ms as i64));
    }
    windows
}

#[tokio::test]
async fn rolling_update_drains_every_pod_and_places_no_new_user_on_a_terminating_one() {
    let mut s = Scenario::start("game-roll").await;
    s.observe();
    let ns = s.ns.name.clone();
    ok("kubectl", &["rollout", "restart", "statefulset/game", "-n", &ns], None).await;
    ok("kubectl", &["rollout", "status", "statefulset/game", "-n", &ns, "--timeout=240s"], None).await;
    let pods = s.pods.clone();
    wait_ready_pods(&pods, "app=game", 3, TIMEOUT).await;
    let redis = s.redis.clone();
    for i in 0..3 {
        wait_routing(&redis, &ns, "game", i, RoutingState::Ready, "the new pods READY", TIMEOUT).await;
    }
    let (record, linked, _ns) = s.finish().await;
    let windows = check_drains(&record, &linked, &[0, 1, 2]);
    eprintln!(
        "rolling update: {} placements, {} linked calls; deletionTimestamp -> DENY_NEW_CALL published (ms): {windows:?}",
        record.placements.len(),
        record.calls.len()
    );
    // Placements resumed on the new pods.
    let last = record.snapshots.last().unwrap().at_ms;
    assert!(record.placements.iter().any(|p| p.before_ms > last - 2000), "no placement after the rollout");
}

#[tokio::test]
async fn scale_down_drains_the_removed_pod_the_same_way() {
    let mut s = Scenario::start("game-scale").await;
    s.observe();
    let ns = s.ns.name.clone();
    ok("kubectl", &["scale", "statefulset/game", "-n", &ns, "--replicas=2"], None).await;
    let pods = s.pods.clone();
    support::wait_for("game-2 gone", TIMEOUT, || async {
        match pods.get_opt("game-2").await {
            Ok(None) => Ok(()),
            other => Err(format!("{:?}", other.map(|p| p.map(|p| p.metadata.deletion_timestamp)))),
        }
    })
    .await;
    let (record, linked, _ns) = s.finish().await;
    let windows = check_drains(&record, &linked, &[2]);
    eprintln!("scale-down: deletionTimestamp -> DENY_NEW_CALL published (ms): {windows:?}");
    // The others never left READY.
    for i in [0, 1] {
        assert!(
            record.snapshots.iter().all(|s| s.routing.get(&i) == Some(&RoutingState::Ready)),
            "game-{i} left READY during the scale-down"
        );
    }
}
