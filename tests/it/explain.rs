//! `pick --explain` against real Redis, standalone and Cluster: states written by the store
//! (through the operator's write path with a live candidate index, and by a v1 writer without
//! one), explained, and the explanation checked against the selection and against what
//! `pick_and_link` then really does; nothing is written by an explanation. The binary's
//! `--explain` text and JSON; an older two-field state skipped by every reader; and the `:` rule
//! of keys through the binary.

use routestate::core::ErrorChain;
use std::collections::BTreeMap;

use rand::{Rng, SeedableRng, rngs::StdRng};
use routestate::{
    core::{
        CpuFactor, Explanation, Floor, Keys, LinkVerdict, PodClass, PodPlan, PodReport, PodState, RoutingState,
        ServicePlan,
    },
    store::{LinkTtl, PickParams, Placement, Store},
};
use tokio::process::Command;

use crate::support::{self, unique_name};

const BIN: &str = env!("CARGO_BIN_EXE_routestate");
const WINDOW: u64 = 60_000;

fn routing(rng: &mut StdRng) -> RoutingState {
    RoutingState::from_ordinal(rng.random_range(0..3)).unwrap()
}

/// Publishes random pods through `publish.lua` (the candidate index is then live).
async fn publish_random(store: &Store, rng: &mut StdRng, ns: &str, svc: &str) {
    let n = rng.random_range(0..12);
    let pods: BTreeMap<u32, PodPlan> = (0..n)
        .map(|i| {
            let report = PodReport { load_state: rng.random_range(0..1_500), waiting_tasks: 0, routing: routing(rng) };
            (i, PodPlan { floor: Floor { routing: RoutingState::Ready, load: None }, report })
        })
        .collect();
    let plan = ServicePlan {
        namespace: ns.to_owned(),
        service: svc.to_owned(),
        period_secs: 20,
        cpu_factor: CpuFactor::from_ppm(0).unwrap(),
        replicas: n,
        pods,
        workload: None,
    };
    store.publish(&[plan]).await.pop().unwrap().unwrap();
}

/// Writes random v1 states (raw HSET, no index): fresh ones, stale ones far from the window
/// edge, and garbage.
async fn write_v1_random(store: &Store, rng: &mut StdRng, ns: &str, svc: &str) {
    let now = store.server_time_ms().await.unwrap();
    let key = Keys::state(ns, svc).unwrap();
    let mut cmd = redis::cmd("HSET");
    cmd.arg(&key).arg("garbage-field").arg("1-1-0");
    for i in 0..rng.random_range(0..12u32) {
        let age = if rng.random_range(0..4) == 0 { WINDOW + 20_000 } else { rng.random_range(0..5_000) };
        let value = match rng.random_range(0..10) {
            0 => format!("{}-{}", rng.random_range(0..100), now),
            _ => PodState::new(rng.random_range(0..1_500), now - age, routing(rng)).encode(),
        };
        cmd.arg(i).arg(value);
    }
    let _: () = cmd.query_async(&mut store.conn()).await.unwrap();
}

async fn exists(store: &Store, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query_async::<i64>(&mut store.conn()).await.unwrap() == 1
}

/// The explanation agrees with the selection of the same read, and `pick_and_link` run right
/// after it does what the explanation says, for users with every kind of link.
async fn explanations_match_selection_and_placement(store: Store) {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let ns = unique_name("explain");
    for round in 0..30 {
        let svc = format!("s{round}");
        let indexed = round % 2 == 0;
        if indexed {
            publish_random(&store, &mut rng, &ns, &svc).await;
        } else {
            write_v1_random(&store, &mut rng, &ns, &svc).await;
        }
        let range = [0, 100, 500][rng.random_range(0..3)];
        let uid = format!("u{round}");
        match rng.random_range(0..4) {
            0 => {}
            1 => {
                let pod = rng.random_range(0..14);
                store.set_linked_pod(&ns, &uid, &svc, pod, LinkTtl::Persistent).await.unwrap();
            }
            2 => {
                let pod = rng.random_range(0..14);
                store.set_linked_pod(&ns, &uid, &svc, pod, LinkTtl::Temporary(300)).await.unwrap();
            }
            _ => {
                let link = Keys::link(&ns, &uid, &svc).unwrap();
                let _: () = redis::cmd("SET").arg(&link).arg("07").query_async(&mut store.conn()).await.unwrap();
            }
        }
        let ctx = format!("seed {seed} round {round} (indexed {indexed}, range {range})");
        let link_before: Option<String> =
            redis::cmd("GET").arg(Keys::link(&ns, &uid, &svc).unwrap()).query_async(&mut store.conn()).await.unwrap();

        let e = store.explain_pick(&ns, &svc, Some(&uid), range, WINDOW).await.unwrap();
        let snap = store.read_service(&ns, &svc).await.unwrap().snapshot(WINDOW, range);
        assert_eq!(e.candidate_index, indexed, "{ctx}");
        assert_eq!(e.candidates.as_slice(), snap.good_pods(), "{ctx}: {e}");
        let classes: Vec<(u32, Option<PodClass>)> = e.pods.iter().map(|p| (p.index, Some(p.class))).collect();
        let want: Vec<(u32, Option<PodClass>)> = snap.pods().map(|p| (p.index, snap.class(p.index))).collect();
        assert_eq!(classes, want, "{ctx}");
        assert_eq!(e.skipped.len(), snap.skipped.len(), "{ctx}");
        let want_order = if indexed { snap.good_by_load() } else { snap.good_pods().to_vec() };
        assert_eq!(e.pick_order, want_order, "{ctx}");

        // An explanation writes nothing.
        let link_after: Option<String> =
            redis::cmd("GET").arg(Keys::link(&ns, &uid, &svc).unwrap()).query_async(&mut store.conn()).await.unwrap();
        assert_eq!(link_after, link_before, "{ctx}: explaining changed the link");

        // The placement does what the explanation says.
        let random: u32 = rng.random();
        let l = e.link.as_ref().unwrap();
        let params = PickParams { temp_ttl_secs: 300, random, range, fallback_window_ms: WINDOW };
        let placed = store.pick_and_link(&ns, &uid, &svc, params).await.unwrap();
        let want = match l.verdict {
            LinkVerdict::Keep => Some(Placement { pod: l.pod.unwrap(), created: false }),
            LinkVerdict::Place => {
                Some(Placement { pod: e.pick_order[random as usize % e.pick_order.len()], created: true })
            }
            LinkVerdict::NoPod => None,
        };
        assert_eq!(placed, want, "{ctx}: explained as {}\n{e}", l.reason);
    }
}

/// With a uid and without, on a service with no states and a user with no link: an empty
/// explanation, and still nothing written.
async fn explaining_nothing_writes_nothing(store: Store) {
    let ns = unique_name("explain-empty");
    let e = store.explain_pick(&ns, "svc", Some("u"), 500, WINDOW).await.unwrap();
    assert!(e.pods.is_empty() && e.candidates.is_empty() && !e.candidate_index, "{e:?}");
    assert_eq!((e.update_period_seconds, e.window_ms), (None, WINDOW));
    let l = e.link.unwrap();
    assert_eq!((l.verdict, l.pod, l.facts.value), (LinkVerdict::NoPod, None, None));
    assert!(!exists(&store, &Keys::link(&ns, "u", "svc").unwrap()).await);
    assert!(!exists(&store, &Keys::link_hash(&ns, "u").unwrap()).await);
    assert!(!exists(&store, &Keys::state(&ns, "svc").unwrap()).await);
    let bad = store.explain_pick("a:b", "svc", None, 500, WINDOW).await.unwrap_err();
    assert!(bad.chain().to_string().contains("\"a:b\""), "{bad}");
}

crate::both!(explanations_match_selection_and_placement, explaining_nothing_writes_nothing);

async fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).env("REDIS_URL", support::redis_url()).output().await.unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `routestate pick <ns>/<svc> [uid] --explain`, text and `-o json`, never linking the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_explains_and_does_not_link() {
    use RoutingState::{DenyNewCall, Ready, Shutdown};
    let store = support::store::standalone().await;
    let ns = unique_name("explain-cli");
    let now = store.server_time_ms().await.unwrap();
    let states = [
        (0, PodState::new(100, now, Ready)),
        (1, PodState::new(5_000, now, Ready)),
        (2, PodState::new(0, now, DenyNewCall)),
        (3, PodState::new(0, now, Shutdown)),
        (4, PodState::new(0, now - 120_000, Ready)),
    ];
    store.set_pod_states(&ns, "web", &states).await.unwrap();
    store.set_update_period(&ns, "web", 10).await.unwrap();
    store.set_linked_pod(&ns, "shut", "web", 3, LinkTtl::Persistent).await.unwrap();
    let target = format!("{ns}/web");

    let (code, json, err) = cli(&["pick", &target, "new-user", "--explain", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let e: Explanation = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
    let classes: Vec<(u32, PodClass)> = e.pods.iter().map(|p| (p.index, p.class)).collect();
    let want = [
        (0, PodClass::Good),
        (1, PodClass::OverRange),
        (2, PodClass::DenyNewCall),
        (3, PodClass::Shutdown),
        (4, PodClass::Stale),
    ];
    assert_eq!(classes, want, "{json}");
    assert_eq!((e.least_load, e.limit, e.window_ms, e.candidates.clone()), (Some(100), Some(600), 30_000, vec![0]));
    assert_eq!(e.link.as_ref().map(|l| l.verdict), Some(LinkVerdict::Place));
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(value["pods"][2]["class"], "DENY_NEW_CALL", "{json}");
    assert_eq!(value["link"]["uid"], "new-user", "{json}");
    assert_eq!(store.get_linked_pod(&ns, "new-user", "web").await.unwrap(), None, "--explain linked the user");

    let (code, text, err) = cli(&["pick", &target, "shut", "--explain"]).await;
    assert_eq!(code, 0, "{err}");
    for want in
        ["good up to 600", "over the limit", "stale", "candidates: 0", "pod 3 is SHUTDOWN", "replacing the link"]
    {
        assert!(text.contains(want), "{want:?} missing in:\n{text}");
    }
    assert_eq!(store.get_linked_pod(&ns, "shut", "web").await.unwrap(), Some(3), "--explain replaced the link");
    assert_eq!(store.get_link_services(&ns, "shut").await.unwrap().get("web"), Some(&3));

    // -o without --explain is a usage error.
    let (code, _, err) = cli(&["pick", &target, "-o", "json"]).await;
    assert_eq!(code, 2, "{err}");
}

/// A state string of the original driver's older shape, `<load>-<time>` (two fields), is
/// garbage to every reader: skipped by pick (with and without a uid), listed as INVALID by
/// status and as skipped by --explain; the valid pod is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_field_state_is_skipped_by_every_reader() {
    let store = support::store::standalone().await;
    let ns = unique_name("two-field");
    let now = store.server_time_ms().await.unwrap();
    let key = Keys::state(&ns, "web").unwrap();
    // Pod 1's old-style state is far less loaded: a reader that accepted it would pick it.
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("0")
        .arg(PodState::new(900, now, RoutingState::Ready).encode())
        .arg("1")
        .arg(format!("1-{now}"))
        .query_async(&mut store.conn())
        .await
        .unwrap();
    let target = format!("{ns}/web");
    for r in 0..5u32 {
        let params = PickParams { temp_ttl_secs: 300, random: r, range: 0, fallback_window_ms: WINDOW };
        let placed = store.pick_and_link(&ns, &format!("u{r}"), "web", params).await.unwrap();
        assert_eq!(placed, Some(Placement { pod: 0, created: true }), "random {r}");
        let (code, out, err) = cli(&["pick", &target, "--range", "0"]).await;
        assert_eq!((code, out.split_whitespace().next()), (0, Some("0")), "{out}{err}");
    }
    let (code, out, err) = cli(&["status", &target]).await;
    assert_eq!(code, 0, "{err}");
    let line = out.lines().find(|l| l.starts_with("1 ")).unwrap_or_else(|| panic!("no row of pod 1:\n{out}"));
    assert!(line.contains("INVALID") && line.contains("three"), "{out}");
    let e = store.explain_pick(&ns, "web", None, 0, WINDOW).await.unwrap();
    assert_eq!(e.pods.iter().map(|p| p.index).collect::<Vec<_>>(), [0]);
    assert_eq!(e.skipped.len(), 1, "{e}");
    assert!(e.skipped[0].field == "1" && e.skipped[0].reason.contains("three"), "{e}");
}

/// The key rule through the binary: a uid may hold `:` (`state:S` in `n` is a uid, not the state
/// hash of another namespace), a namespace may not, and the refusal names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colons_are_refused_only_where_keys_would_collide() {
    let store = support::store::standalone().await;
    let ns = unique_name("colon");
    let (code, out, err) = cli(&["links", "set", &format!("{ns}/S2"), "state:S", "1", "--persistent"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(store.get_linked_pod(&ns, "state:S", "S2").await.unwrap(), Some(1));
    assert!(exists(&store, &format!("sf:{{{ns}:lk:state:S}}")).await, "the uid's persistent links");
    let other = format!("{ns}:lk");
    for args in [
        vec!["links", "set", &format!("{other}/S"), "u", "1", "--persistent"],
        vec!["pick", &format!("{other}/S")],
        vec!["pick", &format!("{other}/S"), "--explain"],
    ] {
        let (code, out, err) = cli(&args).await;
        assert_eq!(code, 1, "{args:?}: {out}{err}");
        assert!(err.contains(&format!("{other:?}")) && err.contains("':'"), "{args:?}: {err}");
    }
    assert_eq!(store.get_linked_pod(&ns, "state:S", "S2").await.unwrap(), Some(1), "nothing else changed");
}
