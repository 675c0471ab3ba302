//! The store on highly available Redis (private topologies, see `support::redis_ha`): a
//! Sentinel connection follows the master across a failover, replicated link writes wait on
//! the node that owns the link and say so when replicas did not confirm, and the dataset epoch
//! tells a restart that kept the data from one that lost it.

use routestate::core::ErrorChain;
use std::time::{Duration, Instant};

use routestate::{
    core::{Keys, keys::hash_slot},
    store::{DatasetChange, DatasetLoss, DatasetWatch, Durability, LinkTtl, RedisOptions, Store, StoreError},
};

use crate::support::{
    redis_ha::{RedisNode, ReplicatedCluster, SentinelSet},
    unique_name, wait_for,
};

// How long a replicated write waits for its replica: a liveness bound, generous because a loaded
// 2-core machine delayed a healthy replica's acknowledgement past 300 ms.
const REPLICATED: Durability = Durability::Replicated { replicas: 1, timeout: Duration::from_millis(1500) };

fn opts(base: RedisOptions) -> RedisOptions {
    RedisOptions { op_timeout: Duration::from_secs(5), ..base }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_store_follows_the_master_across_a_failover_and_back() {
    let mut set = SentinelSet::start(1);
    let store = Store::connect(&opts(RedisOptions::sentinel(set.sentinel_urls(), &set.master_name))).await.unwrap();
    let durable = store.with_durability(REPLICATED);
    let ns = unique_name("sentinel");
    assert_eq!(durable.set_linked_pod(&ns, "alice", "game", 3, LinkTtl::Persistent).await.unwrap(), None);
    let mut watch = DatasetWatch::new(&ns, "game");
    assert_eq!(watch.check(&store).await.unwrap(), DatasetChange::First);

    let old = tokio::task::block_in_place(|| set.kill_master());
    let killed = Instant::now();
    // The same store, nothing reconnected by hand, writes again once a replica is promoted.
    wait_for("a write through the same store after the failover", Duration::from_secs(60), || async {
        store.set_linked_pod(&ns, "bob", "game", 1, LinkTtl::Temporary(60)).await.map_err(|e| e.to_string())
    })
    .await;
    let first_write = killed.elapsed();
    let new = set.master_port().unwrap();
    assert_ne!(new, old, "the sentinels still name the killed master");
    // The replicated write from before the kill survived; the dataset is the one known, on
    // another server.
    assert_eq!(store.get_linked_pod(&ns, "alice", "game").await.unwrap(), Some(3));
    assert!(matches!(watch.check(&store).await.unwrap(), DatasetChange::Restarted { .. }));
    // The only replica is the master now: nothing can confirm a replicated write. It is
    // written, and says it was not confirmed.
    let err = durable.set_linked_pod(&ns, "carol", "game", 1, LinkTtl::Persistent).await.unwrap_err();
    assert!(
        matches!(err, StoreError::NotReplicated { confirmed: 0, wanted: 1, .. }),
        "expected NotReplicated, got {err}"
    );
    assert!(err.chain().to_string().contains("confirmed by only 0 of 1 replicas"), "{err}");
    assert_eq!(store.get_linked_pod(&ns, "carol", "game").await.unwrap(), Some(1), "written on the master");

    // The old master comes back and the sentinels turn it into a replica: replicated writes
    // are confirmed again.
    let node = set.nodes.iter_mut().find(|n| n.port == old).unwrap();
    tokio::task::block_in_place(|| node.restart());
    wait_for("a replicated write confirmed by the returned node", Duration::from_secs(60), || async {
        durable.set_linked_pod(&ns, "dave", "game", 2, LinkTtl::Persistent).await.map_err(|e| e.to_string())
    })
    .await;
    // Whichever node the sentinels name master now (on a loaded machine they may fail over once
    // more, down-after being 1 s), the store wrote there: the link is on it.
    let master = set.master_port().expect("the sentinels name a master");
    let mut on_master = set.node(master).expect("a node of the set").cli();
    let link: Option<String> =
        redis::cmd("GET").arg(Keys::link(&ns, "dave", "game").unwrap()).query(&mut on_master).unwrap();
    assert_eq!(link.as_deref(), Some("2"), "the replicated write is on the master {master} (before: {new})");
    eprintln!("MEASURED sentinel store: first write {first_write:?} after SIGKILL of the master (down-after 1 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_writes_wait_on_the_node_owning_the_link() {
    let mut cluster = ReplicatedCluster::start();
    let store = Store::connect(&opts(RedisOptions::cluster(cluster.urls()))).await.unwrap();
    let durable = store.with_durability(REPLICATED);
    let ns = unique_name("wait");
    // Two users whose links live on different shards.
    let shard = |uid: &str| cluster.master_of(hash_slot(&Keys::link(&ns, uid, "game").unwrap())).unwrap();
    let a = "a".to_owned();
    let b = (0..).map(|i| format!("b{i}")).find(|b| shard(b) != shard(&a)).unwrap();
    assert_eq!(durable.set_linked_pod(&ns, &a, "game", 1, LinkTtl::Persistent).await.unwrap(), None);
    assert_eq!(durable.set_linked_pod(&ns, &b, "game", 1, LinkTtl::Persistent).await.unwrap(), None);

    // Without the replica of a's shard, only a's replicated writes go unconfirmed: WAIT went to
    // the node that ran the script, not to any node.
    let master_a = shard(&a);
    tokio::task::block_in_place(|| cluster.kill_replica_of(master_a));
    let err = durable.set_linked_pod(&ns, &a, "game", 2, LinkTtl::Persistent).await.unwrap_err();
    assert!(matches!(err, StoreError::NotReplicated { confirmed: 0, .. }), "expected NotReplicated, got {err}");
    assert_eq!(store.get_linked_pod(&ns, &a, "game").await.unwrap(), Some(2), "written on the master");
    assert_eq!(durable.set_linked_pod(&ns, &b, "game", 2, LinkTtl::Persistent).await.unwrap(), Some(1));
    // Every link write goes through the same path: try-set, removal, placement.
    let err = durable.try_set_linked_pod(&ns, &a, "game", 2, LinkTtl::Persistent).await.unwrap_err();
    assert!(err.is_not_replicated(), "{err}");
    let err = durable.remove_linked_pod(&ns, &a, "game", 0).await.unwrap_err();
    assert!(err.is_not_replicated(), "{err}");
    assert_eq!(store.get_linked_pod(&ns, &a, "game").await.unwrap(), None, "removed on the master");
}

#[tokio::test]
async fn replicated_writes_on_a_lone_server_are_written_but_not_confirmed() {
    let store = crate::support::store::standalone().await;
    let ns = unique_name("lone");
    let err =
        store.with_durability(REPLICATED).set_linked_pod(&ns, "u", "game", 4, LinkTtl::Persistent).await.unwrap_err();
    assert!(matches!(err, StoreError::NotReplicated { confirmed: 0, wanted: 1, .. }), "{err}");
    assert_eq!(store.get_linked_pod(&ns, "u", "game").await.unwrap(), Some(4));
    // A mode that can never be confirmed, or outlives the operation, is refused up front.
    for bad in [
        Durability::Replicated { replicas: 0, timeout: Duration::from_millis(10) },
        Durability::Replicated { replicas: 1, timeout: Duration::ZERO },
        Durability::Replicated { replicas: 1, timeout: store.op_timeout() },
    ] {
        let err =
            store.with_durability(bad).set_linked_pod(&ns, "v", "game", 1, LinkTtl::Persistent).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidArgument { .. }), "{bad:?}: {err}");
        assert!(err.chain().to_string().contains("durability"), "{err}");
    }
    assert_eq!(store.get_linked_pod(&ns, "v", "game").await.unwrap(), None, "nothing sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dataset_epoch_tells_a_kept_dataset_from_a_lost_one() {
    // AOF on, so a restart keeps the data; then the folder is emptied for an empty restart.
    let mut node = RedisNode::data(crate::support::faults::free_port(), &["--appendonly", "yes"]);
    let store = Store::connect(&opts(RedisOptions::standalone(node.url()))).await.unwrap();
    let ns = unique_name("epoch");
    let mut watch = DatasetWatch::new(&ns, "game");
    assert_eq!(watch.check(&store).await.unwrap(), DatasetChange::First);
    assert_eq!(watch.check(&store).await.unwrap(), DatasetChange::Same);
    let known = watch.known().unwrap().clone();
    assert!(known.run_id.is_some(), "run_id read from INFO server");
    // Another watcher (the server role next to the operator) sees the same epoch.
    let mut other = DatasetWatch::new(&ns, "game");
    other.check(&store).await.unwrap();
    assert_eq!(other.known().unwrap().epoch, known.epoch);

    tokio::task::block_in_place(|| node.restart());
    let change = wait_for("the store back after a restart", Duration::from_secs(30), || {
        let mut w = watch.clone();
        let store = store.clone();
        async move { w.check(&store).await.map(|c| (c, w)).map_err(|e| e.to_string()) }
    })
    .await;
    watch = change.1;
    assert!(matches!(change.0, DatasetChange::Restarted { .. }), "AOF kept the data: {:?}", change.0);

    tokio::task::block_in_place(|| {
        node.kill();
        for f in std::fs::read_dir(node.dir.path()).unwrap().flatten() {
            if f.file_name().to_string_lossy().starts_with("appendonly") {
                let p = f.path();
                if p.is_dir() { std::fs::remove_dir_all(p).unwrap() } else { std::fs::remove_file(p).unwrap() }
            }
        }
        node.restart();
    });
    let (change, _) = wait_for("the store back after an empty restart", Duration::from_secs(30), || {
        let mut w = watch.clone();
        let store = store.clone();
        async move { w.check(&store).await.map(|c| (c, w)).map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(change, DatasetChange::Lost(DatasetLoss::Empty));
}

#[tokio::test]
async fn the_dataset_epoch_on_a_cluster_lives_with_the_service_state() {
    let store = crate::support::store::cluster().await;
    let ns = unique_name("epoch-c");
    let mut watch = DatasetWatch::new(&ns, "game");
    assert_eq!(watch.check(&store).await.unwrap(), DatasetChange::First);
    assert_eq!(watch.check(&store).await.unwrap(), DatasetChange::Same);
    assert!(watch.known().unwrap().run_id.is_some(), "INFO routed to the node owning the epoch key");
    // Another dataset behind the same address: the key replaced.
    let key = routestate::store::dataset::epoch_key(&ns, "game").unwrap();
    let mut conn = store.conn();
    let _: () = redis::cmd("SET").arg(&key).arg("another").query_async(&mut conn).await.unwrap();
    assert!(matches!(watch.check(&store).await.unwrap(), DatasetChange::Lost(DatasetLoss::Replaced { .. })));
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();
    assert_eq!(watch.check(&store).await.unwrap(), DatasetChange::Lost(DatasetLoss::Empty));
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await.unwrap();

    // Many services at once, over several slots: one loss is told apart from the rest.
    let mut watches: Vec<DatasetWatch> = (0..12).map(|i| DatasetWatch::new(&ns, format!("svc{i}"))).collect();
    let first = store.check_datasets(&mut watches).await.unwrap();
    assert!(first.iter().all(|c| *c == DatasetChange::First), "{first:?}");
    let lost = routestate::store::dataset::epoch_key(&ns, "svc7").unwrap();
    let _: () = redis::cmd("DEL").arg(&lost).query_async(&mut conn).await.unwrap();
    let next = store.check_datasets(&mut watches).await.unwrap();
    for (i, c) in next.iter().enumerate() {
        let want = if i == 7 { DatasetChange::Lost(DatasetLoss::Empty) } else { DatasetChange::Same };
        assert_eq!(*c, want, "svc{i}");
    }
    assert!(watches.iter().all(|w| w.known().unwrap().run_id.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reaches_a_password_protected_master_through_password_protected_sentinels() {
    use crate::support::{cli::run, faults::TempDir};
    let (data_pw, sentinel_pw) = ("data-7f3a9c", "sentinel-41be02");
    let set = tokio::task::block_in_place(|| SentinelSet::start_with(1, Some((data_pw, sentinel_pw)), None));
    let dir = TempDir::new("sentinel-pw");
    let (data_file, sentinel_file) = (dir.path().join("data"), dir.path().join("sentinel"));
    std::fs::write(&data_file, format!("{data_pw}\n")).unwrap();
    std::fs::write(&sentinel_file, sentinel_pw).unwrap();
    // The sentinels' addresses without passwords: both come from the files.
    let urls = set.sentinels.iter().map(|s| format!("redis://127.0.0.1:{}", s.port)).collect::<Vec<_>>().join(",");
    let bin = env!("CARGO_BIN_EXE_routestate");
    let ns = unique_name("cli-sentinel");
    let target = format!("{ns}/game");
    let flags = |data: &std::path::Path, sentinel: &std::path::Path| {
        vec![
            format!("--redis-url={urls}"),
            format!("--redis-sentinel-master={}", set.master_name),
            format!("--redis-password-file={}", data.display()),
            format!("--redis-sentinel-password-file={}", sentinel.display()),
        ]
    };
    let with = |base: &[&str], extra: Vec<String>| {
        let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        v.extend(extra);
        v
    };
    let good = flags(&data_file, &sentinel_file);
    let set_args = with(&["links", "set", &target, "ann", "3", "--persistent"], good.clone());
    let o = run(bin, &set_args.iter().map(String::as_str).collect::<Vec<_>>(), None).await;
    assert!(o.ok, "links set through the sentinels: {}", o.stderr);
    let get_args = with(&["links", "get", &target, "ann"], good);
    let o = run(bin, &get_args.iter().map(String::as_str).collect::<Vec<_>>(), None).await;
    assert!(o.ok && o.stdout.trim() == "3", "links get: {o:?}");

    // A wrong password for the sentinels or for the data nodes fails, naming the master, and
    // never shows a password.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not-it").unwrap();
    for bad in [flags(&data_file, &wrong), flags(&wrong, &sentinel_file)] {
        let args = with(&["links", "get", &target, "ann", "--redis-timeout-ms=1500"], bad);
        let o = run(bin, &args.iter().map(String::as_str).collect::<Vec<_>>(), None).await;
        assert!(!o.ok, "a wrong password worked: {o:?}");
        assert!(o.stderr.contains(&set.master_name), "the error names the master: {}", o.stderr);
        for pw in [data_pw, sentinel_pw, "not-it"] {
            assert!(!o.stderr.contains(pw), "a password in the error: {}", o.stderr);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_over_tls_with_passwords_follows_a_failover() {
    use routestate::store::SentinelOptions;
    let tls = crate::support::faults::TlsFiles::new();
    let (data_pw, sentinel_pw) = ("tls-data-5d21", "tls-sentinel-9e07");
    let mut set = tokio::task::block_in_place(|| SentinelSet::start_with(1, Some((data_pw, sentinel_pw)), Some(&tls)));
    let opts = RedisOptions {
        urls: set.sentinels.iter().map(|s| s.plain_url()).collect(),
        password: Some(data_pw.into()),
        ca_file: Some(tls.ca_cert.clone()),
        sentinel: Some(SentinelOptions { master: set.master_name.clone(), password: Some(sentinel_pw.into()) }),
        ..opts(RedisOptions::standalone(""))
    };
    assert!(opts.urls.iter().all(|u| u.starts_with("rediss://")), "{:?}", opts.urls);
    let store =
        Store::connect(&opts).await.unwrap_or_else(|e| panic!("connecting over TLS through the sentinels: {e}"));
    let ns = unique_name("sentinel-tls");
    store.with_durability(REPLICATED).set_linked_pod(&ns, "ann", "game", 6, LinkTtl::Persistent).await.unwrap();
    tokio::task::block_in_place(|| set.kill_master());
    wait_for("a write over TLS after the failover", Duration::from_secs(60), || async {
        store.set_linked_pod(&ns, "ben", "game", 1, LinkTtl::Persistent).await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(store.get_linked_pod(&ns, "ann", "game").await.unwrap(), Some(6));
    // Without the CA the sentinels' certificate is not trusted: a clear error, no password.
    let err = Store::connect(&RedisOptions { ca_file: None, ..opts.clone() }).await.unwrap_err().chain().to_string();
    assert!(err.contains(&set.master_name), "{err}");
    assert!(!err.contains(data_pw) && !err.contains(sentinel_pw), "{err}");
}
