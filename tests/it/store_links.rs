//! Link scripts against real Redis, standalone and Cluster (the same suite runs on both).

use routestate::core::ErrorChain;
use std::{collections::BTreeMap, sync::Arc, time::Duration};

use redis::AsyncCommands;
use routestate::{
    core::Keys,
    store::{LinkTtl, RedisOptions, Store, StoreError, TrySetOutcome},
};

use crate::support::{unique_name, wait_for};

const SVC: &str = "game";

async fn ttl_of(store: &Store, key: &str) -> i64 {
    store.conn().ttl(key).await.unwrap()
}

async fn hash_of(store: &Store, ns: &str, uid: &str) -> BTreeMap<String, String> {
    store.conn().hgetall(Keys::link_hash(ns, uid).unwrap()).await.unwrap()
}

async fn set_semantics(store: Store) {
    let ns = unique_name("links");
    let link = Keys::link(&ns, "u1", SVC).unwrap();
    assert_eq!(store.set_linked_pod(&ns, "u1", SVC, 0, LinkTtl::Persistent).await.unwrap(), None, "no previous link");
    assert_eq!(store.get_linked_pod(&ns, "u1", SVC).await.unwrap(), Some(0), "pod 0 is a pod");
    assert_eq!(ttl_of(&store, &link).await, -1, "persistent: no TTL");
    assert_eq!(hash_of(&store, &ns, "u1").await.get(SVC).map(String::as_str), Some("0"), "persistent: in the uid hash");

    assert_eq!(store.set_linked_pod(&ns, "u1", SVC, 3, LinkTtl::Temporary(100)).await.unwrap(), Some(0));
    let ttl = ttl_of(&store, &link).await;
    assert!((1..=100).contains(&ttl), "temporary TTL {ttl}");
    assert!(hash_of(&store, &ns, "u1").await.is_empty(), "temporary: removed from the uid hash");
    assert_eq!(store.get_linked_pod_if_persist(&ns, "u1", SVC).await.unwrap(), None);

    assert_eq!(store.set_linked_pod(&ns, "u1", SVC, 4, LinkTtl::Persistent).await.unwrap(), Some(3));
    assert_eq!(ttl_of(&store, &link).await, -1, "a persistent set clears the TTL");
    assert_eq!(store.get_linked_pod_if_persist(&ns, "u1", SVC).await.unwrap(), Some(4));

    let err = store.set_linked_pod(&ns, "u1", SVC, 1, LinkTtl::Temporary(0)).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidArgument { op: "set_linked_pod", .. }), "{err}");
    assert_eq!(store.get_linked_pod(&ns, "u1", SVC).await.unwrap(), Some(4), "a rejected call changes nothing");
    assert_eq!(store.get_linked_pod(&ns, "nobody", SVC).await.unwrap(), None, "missing key");
    let err = store.get_linked_pod(&ns, "bad{uid", SVC).await.unwrap_err();
    assert!(err.chain().to_string().contains("get_linked_pod") && err.chain().to_string().contains("bad{uid"), "{err}");
}

async fn set_if_absent_never_touches_an_existing_link(store: Store) {
    let ns = unique_name("absent");
    let link = Keys::link(&ns, "u", SVC).unwrap();
    assert_eq!(store.set_linked_pod_if_absent(&ns, "u", SVC, 0, LinkTtl::Temporary(100)).await.unwrap(), 0);
    // A persistent request over an existing temporary link: returns it, TTL kept (not made
    // persistent, not deleted as the original's EXPIRE -1 did), nothing in the hash.
    assert_eq!(store.set_linked_pod_if_absent(&ns, "u", SVC, 5, LinkTtl::Persistent).await.unwrap(), 0);
    let ttl = ttl_of(&store, &link).await;
    assert!((1..=100).contains(&ttl), "TTL {ttl}");
    assert!(hash_of(&store, &ns, "u").await.is_empty());
    // A temporary request over a persistent link keeps it persistent.
    store.set_linked_pod(&ns, "p", SVC, 2, LinkTtl::Persistent).await.unwrap();
    assert_eq!(store.set_linked_pod_if_absent(&ns, "p", SVC, 7, LinkTtl::Temporary(10)).await.unwrap(), 2);
    assert_eq!(ttl_of(&store, &Keys::link(&ns, "p", SVC).unwrap()).await, -1);
    assert_eq!(hash_of(&store, &ns, "p").await.get(SVC).map(String::as_str), Some("2"));
    // Garbage in the link key counts as no link and is replaced.
    let garbage = Keys::link(&ns, "g", SVC).unwrap();
    let _: () = store.conn().set(&garbage, "not-a-pod").await.unwrap();
    let err = store.get_linked_pod(&ns, "g", SVC).await.unwrap_err();
    assert!(err.chain().to_string().contains(&garbage) && err.chain().to_string().contains("not-a-pod"), "{err}");
    assert_eq!(store.set_linked_pod_if_absent(&ns, "g", SVC, 1, LinkTtl::Temporary(10)).await.unwrap(), 1);
}

async fn try_set_semantics(store: Store) {
    let ns = unique_name("tryset");
    let t = |success, current, previous| TrySetOutcome { success, current, previous };
    assert_eq!(store.try_set_linked_pod(&ns, "u", SVC, 0, LinkTtl::Temporary(100)).await.unwrap(), t(true, 0, None));
    // A temporary link to another pod is overridden.
    assert_eq!(store.try_set_linked_pod(&ns, "u", SVC, 1, LinkTtl::Persistent).await.unwrap(), t(true, 1, Some(0)));
    // A persistent link to another pod is never overridden.
    assert_eq!(store.try_set_linked_pod(&ns, "u", SVC, 2, LinkTtl::Persistent).await.unwrap(), t(false, 1, Some(1)));
    assert_eq!(store.try_set_linked_pod(&ns, "u", SVC, 2, LinkTtl::Temporary(5)).await.unwrap(), t(false, 1, Some(1)));
    assert_eq!(ttl_of(&store, &Keys::link(&ns, "u", SVC).unwrap()).await, -1);
    // The same pod re-sets its own persistent link.
    assert_eq!(store.try_set_linked_pod(&ns, "u", SVC, 1, LinkTtl::Persistent).await.unwrap(), t(true, 1, Some(1)));
    assert_eq!(hash_of(&store, &ns, "u").await.get(SVC).map(String::as_str), Some("1"));
}

async fn remove_semantics(store: Store) {
    let ns = unique_name("remove");
    assert!(!store.remove_linked_pod(&ns, "none", SVC, 0).await.unwrap(), "missing link");
    store.set_linked_pod(&ns, "u", SVC, 0, LinkTtl::Persistent).await.unwrap();
    store.set_linked_pod(&ns, "u", "other", 9, LinkTtl::Persistent).await.unwrap();
    assert!(store.remove_linked_pod(&ns, "u", SVC, 0).await.unwrap());
    assert_eq!(store.get_linked_pod(&ns, "u", SVC).await.unwrap(), None, "removed now");
    assert_eq!(store.get_link_services(&ns, "u").await.unwrap(), BTreeMap::from([("other".to_owned(), 9)]));

    // remove_with_id: only while the link points to the pod.
    assert!(!store.remove_linked_pod_with_id(&ns, "u", "other", 8, 0).await.unwrap());
    assert_eq!(store.get_linked_pod(&ns, "u", "other").await.unwrap(), Some(9));
    assert!(!store.remove_linked_pod_with_id(&ns, "nobody", "other", 9, 0).await.unwrap());
    assert!(store.remove_linked_pod_with_id(&ns, "u", "other", 9, 0).await.unwrap());
    assert_eq!(store.get_linked_pod(&ns, "u", "other").await.unwrap(), None);
    let exists: bool = store.conn().exists(Keys::link_hash(&ns, "u").unwrap()).await.unwrap();
    assert!(!exists, "the uid hash goes away with its last field");
}

async fn delayed_removal_keeps_the_link_then_expires(store: Store) {
    let ns = unique_name("delayed");
    let link = Keys::link(&ns, "u", SVC).unwrap();
    store.set_linked_pod(&ns, "u", SVC, 0, LinkTtl::Persistent).await.unwrap();
    assert!(store.remove_linked_pod(&ns, "u", SVC, 2).await.unwrap());
    assert_eq!(store.get_linked_pod(&ns, "u", SVC).await.unwrap(), Some(0), "still readable during the delay");
    let ttl = ttl_of(&store, &link).await;
    assert!((1..=2).contains(&ttl), "temporary for the delay, TTL {ttl}");
    assert_eq!(store.get_linked_pod_if_persist(&ns, "u", SVC).await.unwrap(), None, "no longer persistent");
    assert!(store.get_link_services(&ns, "u").await.unwrap().is_empty(), "out of the persistent hash now");
    wait_for("the delayed removal to expire", Duration::from_secs(6), || {
        let (store, ns) = (store.clone(), ns.clone());
        async move {
            match store.get_linked_pod(&ns, "u", SVC).await.map_err(|e| e.to_string())? {
                None => Ok(()),
                Some(p) => Err(format!("still linked to {p}")),
            }
        }
    })
    .await;

    // With id, delayed too.
    store.set_linked_pod(&ns, "v", SVC, 3, LinkTtl::Persistent).await.unwrap();
    assert!(store.remove_linked_pod_with_id(&ns, "v", SVC, 3, 100).await.unwrap());
    let ttl = ttl_of(&store, &Keys::link(&ns, "v", SVC).unwrap()).await;
    assert!((1..=100).contains(&ttl), "TTL {ttl}");
}

async fn reads(store: Store) {
    let ns = unique_name("reads");
    store.set_linked_pod(&ns, "u", "a", 0, LinkTtl::Persistent).await.unwrap();
    store.set_linked_pod(&ns, "u", "b", 7, LinkTtl::Persistent).await.unwrap();
    store.set_linked_pod(&ns, "u", "c", 8, LinkTtl::Temporary(50)).await.unwrap();
    let _: () = store.conn().hset(Keys::link_hash(&ns, "u").unwrap(), "junk", "x1").await.unwrap();
    assert_eq!(
        store.get_link_services(&ns, "u").await.unwrap(),
        BTreeMap::from([("a".to_owned(), 0), ("b".to_owned(), 7)]),
        "persistent links only, garbage skipped"
    );
    assert!(store.get_link_services(&ns, "nobody").await.unwrap().is_empty());

    // 60 uids spread over many slots (and, on the cluster, over all three masters).
    let uids: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut want: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (i, uid) in uids.iter().enumerate() {
        if i % 5 == 4 {
            continue; // no link
        }
        let pod = (i % 3) as u32;
        store.set_linked_pod(&ns, uid, SVC, pod, LinkTtl::Temporary(60)).await.unwrap();
        want.entry(pod).or_default().push(uid.clone());
    }
    let _: () = store.conn().set(Keys::link(&ns, "user-4", SVC).unwrap(), "garbage").await.unwrap();
    let mut got = store.batch_get_linked_pod(&ns, &uids, SVC).await.unwrap();
    got.values_mut().for_each(|v| v.sort());
    want.values_mut().for_each(|v| v.sort());
    assert_eq!(got, want);
    assert!(store.batch_get_linked_pod::<&str>(&ns, &[], SVC).await.unwrap().is_empty());
}

async fn scripts_reload_after_flush(store: Store) {
    let ns = unique_name("noscript");
    store.set_linked_pod(&ns, "u", SVC, 1, LinkTtl::Persistent).await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut store.conn()).await.unwrap();
    assert_eq!(
        store.set_linked_pod(&ns, "u", SVC, 2, LinkTtl::Persistent).await.unwrap(),
        Some(1),
        "EVALSHA reloads on NOSCRIPT"
    );
}

async fn racing_writers_have_one_winner(store: Store) {
    let ns = Arc::new(unique_name("race"));
    let tasks: Vec<_> = (0..64u32)
        .map(|pod| {
            let (store, ns) = (store.clone(), ns.clone());
            tokio::spawn(
                async move { store.try_set_linked_pod(&ns, "u", SVC, pod, LinkTtl::Persistent).await.unwrap() },
            )
        })
        .collect();
    let outcomes: Vec<TrySetOutcome> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    let winners: Vec<_> = outcomes.iter().filter(|o| o.success).collect();
    assert_eq!(winners.len(), 1, "{outcomes:?}");
    assert!(outcomes.iter().all(|o| o.current == winners[0].current), "{outcomes:?}");
    assert_eq!(store.get_linked_pod(&ns, "u", SVC).await.unwrap(), Some(winners[0].current));

    let tasks: Vec<_> = (0..64u32)
        .map(|pod| {
            let (store, ns) = (store.clone(), ns.clone());
            tokio::spawn(async move {
                store.set_linked_pod_if_absent(&ns, "v", SVC, pod, LinkTtl::temporary()).await.unwrap()
            })
        })
        .collect();
    let linked: Vec<u32> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert!(linked.iter().all(|&p| p == linked[0]), "{linked:?}");
}

crate::both!(
    set_semantics,
    set_if_absent_never_touches_an_existing_link,
    try_set_semantics,
    remove_semantics,
    delayed_removal_keeps_the_link_then_expires,
    reads,
    scripts_reload_after_flush,
    racing_writers_have_one_winner,
);

#[tokio::test]
async fn connection_errors_name_the_server_but_never_the_password() {
    let opts =
        RedisOptions { op_timeout: Duration::from_secs(1), ..RedisOptions::standalone("redis://:hunter2@127.0.0.1:1") };
    assert!(!format!("{opts:?}").contains("hunter2"));
    let err = Store::connect(&opts).await.unwrap_err().chain().to_string();
    assert!(err.contains("127.0.0.1:1") && !err.contains("hunter2"), "{err}");
    let err = Store::connect(&RedisOptions::standalone("nonsense://x")).await.unwrap_err();
    assert!(matches!(err, StoreError::InvalidUrl { .. }), "{err}");
}

#[tokio::test]
async fn password_option_overrides_the_url() {
    use crate::support::faults::{PrivateRedis, RedisSpec};
    let redis = PrivateRedis::start_with(RedisSpec { password: Some("right-secret".into()), ..Default::default() });
    let with = |url: String, password: Option<&str>| RedisOptions {
        password: password.map(str::to_owned),
        ..RedisOptions::standalone(url)
    };
    // A wrong password in the URL, the right one as the option: the option is used.
    let store = Store::connect(&with(format!("redis://:wrong-secret@127.0.0.1:{}", redis.port), Some("right-secret")))
        .await
        .unwrap_or_else(|e| panic!("the option's password was not used: {e}"));
    store.server_time_ms().await.unwrap();
    // The right password in the URL, a wrong one as the option: refused by AUTH, so the option
    // really replaced it; the error says so and does not show the password.
    let err = Store::connect(&with(format!("redis://:right-secret@127.0.0.1:{}", redis.port), Some("wrong-secret")))
        .await
        .unwrap_err()
        .chain()
        .to_string();
    assert!(err.contains("WRONGPASS") || err.contains("authentication failed"), "not an AUTH error: {err}");
    assert!(!err.contains("wrong-secret") && !err.contains("right-secret"), "{err}");
}

#[tokio::test]
async fn operations_time_out_naming_operation_and_key() {
    // A server that accepts connections and never answers: connecting times out.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://:hunter2@{}", listener.local_addr().unwrap());
    let opts = RedisOptions { op_timeout: Duration::from_millis(300), ..RedisOptions::standalone(url) };
    let err = Store::connect(&opts).await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(!err.chain().to_string().contains("hunter2"), "{err}");
    drop(listener);

    // A connected server that stalls (CLIENT PAUSE, on a private server): the operation times
    // out with its name and key, and works again once the server answers.
    let redis = crate::support::faults::PrivateRedis::start();
    let store = Store::connect(&RedisOptions {
        op_timeout: Duration::from_millis(300),
        ..RedisOptions::standalone(redis.url())
    })
    .await
    .unwrap();
    store.set_linked_pod("ns", "u", SVC, 4, LinkTtl::Persistent).await.unwrap();
    let _: () = redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("ALL").query(&mut redis.cli()).unwrap();
    let err = store.get_linked_pod("ns", "u", SVC).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Timeout { op: "get_linked_pod", key, .. } if key == "sf:{ns:lk:u}game"),
        "{err}"
    );
    assert!(
        err.chain().to_string().contains("get_linked_pod") && err.chain().to_string().contains("sf:{ns:lk:u}game"),
        "{err}"
    );
    wait_for("the paused server to answer again", Duration::from_secs(10), || {
        let store = store.clone();
        async move { store.get_linked_pod("ns", "u", SVC).await.map_err(|e| e.to_string()) }
    })
    .await;
}
