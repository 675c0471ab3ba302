//! The server role after Redis lost its data: a private `redis-server` (no persistence) is
//! SIGKILLed and restarted empty; the driver notices the missing dataset epoch within a period
//! and re-asserts, set-if-absent, the persistent links its hook lists.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use routestate::{
    server::{OwnedLink, ServerConfig, ServerDriver, ServerReport, StateTransport, TransportError},
    store::{DatasetChange, LinkTtl, RedisOptions, Store},
};

use crate::support::{faults::PrivateRedis, unique_name, wait_for};

struct Silent;

impl StateTransport for Silent {
    async fn publish(&self, _: ServerReport) -> Result<(), TransportError> {
        Ok(())
    }
}

async fn store(url: &str) -> Store {
    Store::connect(&RedisOptions { op_timeout: Duration::from_secs(1), ..RedisOptions::standalone(url) }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_restart_gets_the_owned_links_back() {
    let mut redis = PrivateRedis::start();
    let ns = unique_name("reassert");
    let config = ServerConfig { update_period: Duration::from_millis(300), ..ServerConfig::new(&ns, "game", 2) };
    let driver = ServerDriver::new(store(&redis.url()).await, Silent, config).unwrap();
    let owned = Arc::new(Mutex::new(Vec::new()));
    driver.on_data_loss_reassert({
        let owned = owned.clone();
        move || owned.lock().unwrap().clone()
    });
    driver.start().await.unwrap();
    for (uid, svc) in [("ann", "game"), ("ben", "game"), ("cat", "chat")] {
        driver.set_linked_pod("", uid, svc, 2).await.unwrap();
        owned.lock().unwrap().push(OwnedLink::new(uid, svc));
    }
    // Released before the loss: not owned any more, so not recreated.
    driver.set_linked_pod("", "dan", "game", 2).await.unwrap();
    driver.remove_linked_pod("", "dan", "game", 0).await.unwrap();
    assert_eq!(driver.last_reassert(), None, "nothing lost yet");

    tokio::task::block_in_place(|| redis.restart());
    let check = store(&redis.url()).await;
    wait_for("the owned links re-asserted after the empty restart", Duration::from_secs(20), || async {
        let mut got = Vec::new();
        let links = owned.lock().unwrap().clone();
        for l in links {
            got.push(check.get_linked_pod_if_persist(&ns, &l.uid, &l.svc).await.map_err(|e| e.to_string())?);
        }
        if got.iter().all(|p| *p == Some(2)) { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await;
    let report = driver.last_reassert().expect("the driver re-asserted");
    assert_eq!((report.linked, report.failed, report.taken.len()), (3, 0, 0), "{report:?}");
    assert_eq!(check.get_linked_pod(&ns, "dan", "game").await.unwrap(), None);
    assert_eq!(driver.check_dataset().await.unwrap(), DatasetChange::Same, "the new dataset is the known one now");

    // Set-if-absent: a link another pod (or a client) wrote since the loss is left alone.
    check.set_linked_pod(&ns, "eve", "game", 5, LinkTtl::Persistent).await.unwrap();
    let report = driver.reassert_links(&[OwnedLink::new("eve", "game"), OwnedLink::new("ann", "game")]).await;
    assert_eq!(report.taken, vec![("eve".to_owned(), "game".to_owned(), 5)]);
    assert_eq!(report.linked, 1);
    assert_eq!(check.get_linked_pod(&ns, "eve", "game").await.unwrap(), Some(5));
}
