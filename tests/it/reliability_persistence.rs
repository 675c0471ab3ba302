//! Persistence: a private standalone `redis-server` with AOF (`appendfsync always` and
//! `everysec`) is SIGKILLed while a server writes persistent links one after the other, then
//! restarted on the same port and folder. Every link acknowledged before the kill must be there
//! with `always`; with `everysec` the test reports how many of the last second are missing. A
//! server without persistence loses them all, which shows the check can fail.

use std::time::{Duration, Instant};

use routestate::store::{LinkTtl, RedisOptions, Store};

use crate::support::{faults::free_port, redis_ha::RedisNode, unique_name, wait_for};

/// Writes links until the kill; returns (uid, acknowledged at) for each acknowledged write and
/// the instant of the kill.
async fn write_then_kill(node: &mut RedisNode, ns: &str) -> (Vec<(String, Instant)>, Instant) {
    let store =
        Store::connect(&RedisOptions { op_timeout: Duration::from_secs(1), ..RedisOptions::standalone(node.url()) })
            .await
            .unwrap();
    let started = Instant::now();
    let mut acked = Vec::new();
    let mut i = 0u64;
    // About two seconds of writes, the kill lands in the middle of the stream.
    while started.elapsed() < Duration::from_secs(2) {
        let uid = format!("u{i}");
        store.set_linked_pod(ns, &uid, "game", (i % 8) as u32, LinkTtl::Persistent).await.unwrap();
        acked.push((uid, Instant::now()));
        i += 1;
    }
    // The kill races a write that is in flight: that one is not acknowledged, so not counted.
    let inflight = tokio::spawn({
        let store = store.clone();
        let ns = ns.to_owned();
        async move { store.set_linked_pod(&ns, "inflight", "game", 0, LinkTtl::Persistent).await }
    });
    tokio::task::block_in_place(|| node.kill());
    let killed = Instant::now();
    let _ = inflight.await;
    (acked, killed)
}

/// Restarts the node and counts the acknowledged links that are gone; returns (missing, of
/// which in the last second before the kill).
async fn restart_and_count(
    node: &mut RedisNode,
    ns: &str,
    acked: &[(String, Instant)],
    killed: Instant,
) -> (usize, usize) {
    tokio::task::block_in_place(|| node.restart());
    let store = Store::connect(&RedisOptions::standalone(node.url())).await.unwrap();
    // Redis answers some commands (TIME among them) while it still loads the AOF, and refuses
    // scripts with BUSY/LOADING until it is done: wait for `loading:0`.
    wait_for("the restarted server to have loaded its data", Duration::from_secs(30), || async {
        let mut conn = store.conn();
        let info: String =
            redis::cmd("INFO").arg("persistence").query_async(&mut conn).await.map_err(|e| e.to_string())?;
        if info.lines().any(|l| l.trim() == "loading:0") { Ok(()) } else { Err(format!("still loading: {info:.200}")) }
    })
    .await;
    let mut missing = 0;
    let mut missing_last_second = 0;
    for (uid, at) in acked {
        if store.get_linked_pod_if_persist(ns, uid, "game").await.unwrap().is_none() {
            missing += 1;
            if killed.duration_since(*at) <= Duration::from_secs(1) {
                missing_last_second += 1;
            }
        }
    }
    (missing, missing_last_second)
}

async fn run(fsync: Option<&str>) -> (usize, usize, usize) {
    let args: Vec<&str> = match fsync {
        Some(policy) => vec!["--appendonly", "yes", "--appendfsync", policy],
        None => vec![],
    };
    let mut node = RedisNode::data(free_port(), &args);
    let ns = unique_name("aof");
    let (acked, killed) = write_then_kill(&mut node, &ns).await;
    let (missing, last_second) = restart_and_count(&mut node, &ns, &acked, killed).await;
    let last_second_total = acked.iter().filter(|(_, at)| killed.duration_since(*at) <= Duration::from_secs(1)).count();
    eprintln!(
        "MEASURED persistence {}: {} links acknowledged before SIGKILL ({last_second_total} in its last second), \
         {missing} missing after the restart ({last_second} of them from the last second)",
        fsync.map(|p| format!("appendfsync {p}")).unwrap_or("without persistence".into()),
        acked.len()
    );
    (acked.len(), missing, last_second)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aof_always_keeps_every_acknowledged_link() {
    let (acked, missing, _) = run(Some("always")).await;
    assert!(acked > 100, "too few writes to say anything: {acked}");
    assert_eq!(missing, 0, "appendfsync always lost {missing} of {acked} acknowledged links");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aof_everysec_loses_at_most_the_last_second() {
    let (acked, missing, last_second) = run(Some("everysec")).await;
    assert!(acked > 100, "too few writes to say anything: {acked}");
    assert_eq!(
        missing, last_second,
        "everysec lost links older than one second: {missing} missing, {last_second} recent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_persistence_every_link_is_lost() {
    let (acked, missing, _) = run(None).await;
    assert_eq!(missing, acked, "a server without persistence kept links across SIGKILL");
}
