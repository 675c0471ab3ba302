//! Pod-state hashes and `pick_and_link` against real Redis, standalone and Cluster; the Lua
//! selection is checked against `core::ServiceSnapshot::pick` on the same random inputs.

use std::sync::Arc;

use rand::{Rng, SeedableRng, rngs::StdRng};
use redis::AsyncCommands;
use routestate::{
    core::{Keys, PodState, RoutingState, SelectionPolicy, ServiceSnapshot},
    store::{LinkTtl, PickParams, Placement, Store, StoreError},
};

use crate::support::unique_name;

const SVC: &str = "game";
const MINUTE: u64 = 60_000;

fn params(random: u32) -> PickParams {
    PickParams { temp_ttl_secs: 300, random, range: 500, fallback_window_ms: MINUTE }
}

/// Random state hash entries judged at `now`; with `safe`, no age lies within 3 s of the window
/// edge (for cases judged by a live Redis clock).
fn random_entries(rng: &mut StdRng, now: u64, window: u64, safe: bool) -> Vec<(String, String)> {
    let n = rng.random_range(0..14);
    let sparse = rng.random_range(0..4) == 0;
    let mut entries = Vec::new();
    for _ in 0..n {
        // Mostly dense StatefulSet indices; sometimes sparse ones (the script's sort path).
        let index: u32 = if sparse { rng.random_range(0..5_000_000) } else { rng.random_range(0..30) };
        if entries.iter().any(|(f, _): &(String, String)| *f == index.to_string()) {
            continue;
        }
        let value = match rng.random_range(0..20) {
            0 => {
                // Near misses of the format, stamped fresh so accepting one would change the pick.
                const GARBAGE: &[&str] = &[
                    "garbage", "1-T-0-", "-T-0", "1--T-0", "1-T-00", "1-T- 0", " 1-T-0", "0x1-T-0", "1e3-T-0",
                    "1.5-T-0", "+1-T-0", "1-T-3", "1-T-", "", "nan-T-0", "1-+T-0", "1-T-0 ", "1-T-R",
                ];
                GARBAGE[rng.random_range(0..GARBAGE.len())].replace('T', &now.to_string())
            }
            1 => format!("{}-{}-7", rng.random_range(0..9), now),
            _ => {
                // Ages around the window edge, and states from the future.
                let w = window as i64;
                let age: i64 = if !safe {
                    rng.random_range(-5_000..(w + 5_000))
                } else if rng.random_range(0..10) < 7 {
                    rng.random_range(-5_000..(w - 3_000).max(-4_999))
                } else {
                    rng.random_range((w + 3_000)..(w + 8_000))
                };
                let ts = (now as i64 - age) as u64;
                PodState::new(
                    rng.random_range(0..2_000),
                    ts,
                    RoutingState::from_ordinal(rng.random_range(0..3)).unwrap(),
                )
                .encode()
            }
        };
        let field = match rng.random_range(0..40) {
            0 => format!("0{index}"),
            1 => format!("+{index}"),
            2 => format!(" {index}"),
            3 => format!("{index}.0"),
            4 => format!("0x{index}"),
            _ => index.to_string(),
        };
        entries.push((field, value));
    }
    entries
}

async fn lua_selection_agrees_with_core(store: Store) {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let ns = unique_name("agree");
    let now = 1_800_000_000_000u64;
    for i in 0..300 {
        let window = [1_000, 30_000, MINUTE][rng.random_range(0..3)];
        let range = [0, 100, 500, 5_000][rng.random_range(0..4)];
        let entries = random_entries(&mut rng, now, window, false);
        let random: u32 = rng.random();
        let uid = format!("u{i}");
        let snapshot = ServiceSnapshot::from_hash(
            entries.iter().map(|(k, v)| (k, v)),
            now,
            SelectionPolicy { window_ms: window, range },
        );
        // Half the users already have a link to some pod.
        let existing = (i % 2 == 0).then(|| rng.random_range(0..30u32));
        if let Some(p) = existing {
            store.set_linked_pod(&ns, &uid, SVC, p, LinkTtl::Persistent).await.unwrap();
        }
        let want = match existing {
            Some(p) if snapshot.is_available(p) => Some(Placement { pod: p, created: false }),
            _ => snapshot.pick(random).map(|pod| Placement { pod, created: true }),
        };
        let p = PickParams { range, ..params(random) };
        let got = store.pick_and_link_inline(&ns, &uid, SVC, p, now, window, &entries).await.unwrap();
        assert_eq!(
            got, want,
            "seed {seed} case {i}: entries {entries:?} random {random} window {window} range {range} existing {existing:?}"
        );
        let linked = store.get_linked_pod(&ns, &uid, SVC).await.unwrap();
        assert_eq!(linked, got.map(|g| g.pod).or(existing), "seed {seed} case {i}: the link");
    }
}

/// The same comparison through `pick_and_link` itself: on standalone Redis the script reads the
/// hash and TIME (and takes the one-HGET shortcut for kept links); on the cluster, the inline path.
async fn live_selection_agrees_with_core(store: Store) {
    let seed: u64 = rand::random();
    let mut rng = StdRng::seed_from_u64(seed);
    let ns = unique_name("live");
    for i in 0..80 {
        let window = [30_000, MINUTE][rng.random_range(0..2)];
        let range = [0, 100, 500][rng.random_range(0..3)];
        let now = store.server_time_ms().await.unwrap();
        let entries = random_entries(&mut rng, now, window, true);
        let svc = format!("s{i}");
        if !entries.is_empty() {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(Keys::state(&ns, &svc).unwrap());
            for (f, v) in &entries {
                cmd.arg(f).arg(v);
            }
            let _: () = cmd.query_async(&mut store.conn()).await.unwrap();
        }
        let snapshot = ServiceSnapshot::from_hash(
            entries.iter().map(|(k, v)| (k, v)),
            now,
            SelectionPolicy { window_ms: window, range },
        );
        let existing = (i % 2 == 0).then(|| rng.random_range(0..30u32));
        if let Some(p) = existing {
            store.set_linked_pod(&ns, "u", &svc, p, LinkTtl::Persistent).await.unwrap();
        }
        let random: u32 = rng.random();
        let want = match existing {
            Some(p) if snapshot.is_available(p) => Some(Placement { pod: p, created: false }),
            _ => snapshot.pick(random).map(|pod| Placement { pod, created: true }),
        };
        let p = PickParams { range, fallback_window_ms: window, ..params(random) };
        let got = store.pick_and_link(&ns, "u", &svc, p).await.unwrap();
        assert_eq!(
            got, want,
            "seed {seed} case {i}: entries {entries:?} random {random} window {window} range {range} existing {existing:?}"
        );
    }
}

/// Writes states stamped with the Redis clock minus `age_ms`.
async fn publish(store: &Store, ns: &str, states: &[(u32, u64, u64, RoutingState)]) {
    let now = store.server_time_ms().await.unwrap();
    let states: Vec<_> = states.iter().map(|&(i, load, age, r)| (i, PodState::new(load, now - age, r))).collect();
    store.set_pod_states(ns, SVC, &states).await.unwrap();
}

async fn pick_and_link_reads_states_itself(store: Store) {
    use RoutingState::*;
    let ns = unique_name("pick");
    assert_eq!(store.pick_and_link(&ns, "u", SVC, params(0)).await.unwrap(), None, "no states at all");
    assert_eq!(store.get_linked_pod(&ns, "u", SVC).await.unwrap(), None, "nothing written");

    publish(&store, &ns, &[(0, 10, 0, Ready)]).await;
    let got = store.pick_and_link(&ns, "u", SVC, params(7)).await.unwrap();
    assert_eq!(got, Some(Placement { pod: 0, created: true }), "pod 0 is a pod");
    let ttl: i64 = store.conn().ttl(Keys::link(&ns, "u", SVC).unwrap()).await.unwrap();
    assert!((1..=300).contains(&ttl), "temporary link, TTL {ttl}");
    assert_eq!(
        store.pick_and_link(&ns, "u", SVC, params(8)).await.unwrap(),
        Some(Placement { pod: 0, created: false })
    );

    // DENY_NEW_CALL keeps its users; SHUTDOWN loses them to a good pod; the load range applies.
    publish(&store, &ns, &[(0, 10, 0, DenyNewCall), (1, 10, 0, Shutdown), (2, 100, 0, Ready), (3, 900, 0, Ready)])
        .await;
    assert_eq!(
        store.pick_and_link(&ns, "u", SVC, params(0)).await.unwrap(),
        Some(Placement { pod: 0, created: false })
    );
    store.set_linked_pod(&ns, "v", SVC, 1, LinkTtl::Persistent).await.unwrap();
    for r in 0..4 {
        let uid = format!("w{r}");
        store.set_linked_pod(&ns, &uid, SVC, 1, LinkTtl::Persistent).await.unwrap();
        assert_eq!(
            store.pick_and_link(&ns, &uid, SVC, params(r)).await.unwrap(),
            Some(Placement { pod: 2, created: true }),
            "only pod 2 is good"
        );
        assert!(store.get_link_services(&ns, &uid).await.unwrap().is_empty(), "the dead pod's persistent link is gone");
    }

    // Staleness: the service's published period (1 s → 3 s window) beats the fallback (60 s).
    let stale_ns = unique_name("stale");
    publish(&store, &stale_ns, &[(4, 0, 10_000, Ready), (5, 400, 0, Ready)]).await;
    assert_eq!(
        store.pick_and_link(&stale_ns, "a", SVC, params(0)).await.unwrap().map(|p| p.pod),
        Some(4),
        "fresh under the 60 s fallback"
    );
    store.set_update_period(&stale_ns, SVC, 1).await.unwrap();
    for r in 0..3 {
        let uid = format!("b{r}");
        assert_eq!(
            store.pick_and_link(&stale_ns, &uid, SVC, params(r)).await.unwrap().map(|p| p.pod),
            Some(5),
            "pod 4 is stale"
        );
    }

    // Garbage is skipped, never an error.
    let garbage_ns = unique_name("garbage");
    let key = Keys::state(&garbage_ns, SVC).unwrap();
    let _: () = store.conn().hset_multiple(&key, &[("x", "1-1-0"), ("7", "nonsense"), ("8", "")]).await.unwrap();
    assert_eq!(store.pick_and_link(&garbage_ns, "u", SVC, params(0)).await.unwrap(), None);
    publish(&store, &garbage_ns, &[(9, 1, 0, Ready)]).await;
    assert_eq!(store.pick_and_link(&garbage_ns, "u", SVC, params(0)).await.unwrap().map(|p| p.pod), Some(9));
    let read = store.read_service(&garbage_ns, SVC).await.unwrap();
    let snap = read.snapshot(MINUTE, 500);
    assert_eq!(snap.skipped.len(), 3, "{:?}", snap.skipped);
    assert_eq!(snap.good_pods(), &[9]);
}

async fn racing_placements_have_one_winner(store: Store) {
    use RoutingState::*;
    let ns = Arc::new(unique_name("placerace"));
    publish(&store, &ns, &(0..10).map(|i| (i, 5, 0, Ready)).collect::<Vec<_>>()).await;
    let tasks: Vec<_> = (0..64u32)
        .map(|r| {
            let (store, ns) = (store.clone(), ns.clone());
            tokio::spawn(async move { store.pick_and_link(&ns, "u", SVC, params(r)).await.unwrap().unwrap() })
        })
        .collect();
    let placements: Vec<Placement> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(placements.iter().filter(|p| p.created).count(), 1, "{placements:?}");
    assert!(placements.iter().all(|p| p.pod == placements[0].pod), "{placements:?}");
    assert_eq!(store.get_linked_pod(&ns, "u", SVC).await.unwrap(), Some(placements[0].pod));
}

async fn state_hash_round_trip(store: Store) {
    let ns = unique_name("states");
    let before = store.server_time_ms().await.unwrap();
    store.set_pod_state(&ns, SVC, 0, &PodState::new(3, before, RoutingState::Ready)).await.unwrap();
    store.set_update_period(&ns, SVC, 10).await.unwrap();
    let read = store.read_service(&ns, SVC).await.unwrap();
    assert_eq!(read.entries, vec![("0".to_owned(), format!("3-{before}-0"))]);
    assert_eq!(read.update_period_secs, Some(10));
    assert_eq!(read.window_ms(1), 30_000);
    assert!(read.now_ms >= before && read.now_ms < before + 5_000, "{} vs {before}", read.now_ms);
    assert!(store.remove_pod_state(&ns, SVC, 0).await.unwrap());
    assert!(store.read_service(&ns, SVC).await.unwrap().entries.is_empty());
    let zero = store.set_update_period(&ns, SVC, 0).await;
    assert!(matches!(zero, Err(StoreError::InvalidArgument { op: "set_update_period", .. })), "{zero:?}");
}

crate::both!(
    lua_selection_agrees_with_core,
    live_selection_agrees_with_core,
    pick_and_link_reads_states_itself,
    racing_placements_have_one_winner,
    state_hash_round_trip
);
