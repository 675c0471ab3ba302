//! The client role against real Redis: compute_linked_pod (cache, fallbacks, single-flight),
//! pick_and_link, link reads.

use routestate::core::ErrorChain;
use std::{sync::Arc, time::Duration};

use routestate::{
    client::{Client, ClientConfig, ClientError},
    core::{Keys, RoutingState},
    store::{LinkTtl, Store},
};

use crate::{
    client_read_model::publish,
    support::{unique_name, wait_for},
};

const SVC: &str = "game";

fn client(store: &Store, cache_ttl: Duration) -> Client {
    let config = ClientConfig {
        refresh_period: Duration::from_secs(3600),
        link_cache_ttl: cache_ttl,
        seed: Some(1),
        ..ClientConfig::default()
    };
    Client::new(store.clone(), config).unwrap()
}

async fn compute_places_and_caches(store: Store) {
    use RoutingState::*;
    let ns = unique_name("compute");
    let c = client(&store, Duration::from_secs(240));
    let err = c.compute_linked_pod(&ns, "u", SVC).await.unwrap_err();
    assert!(matches!(&err, ClientError::NoAvailablePod { uid, .. } if uid == "u"), "{err}");

    publish(&store, &ns, SVC, &[(0, 1, 0, Ready)]).await;
    c.read_model().refresh(&ns, SVC).await.unwrap();
    assert_eq!(c.compute_linked_pod(&ns, "u", SVC).await.unwrap(), 0, "pod 0 is a pod");
    let ttl: i64 =
        redis::cmd("TTL").arg(Keys::link(&ns, "u", SVC).unwrap()).query_async(&mut store.conn()).await.unwrap();
    assert!((1..=300).contains(&ttl), "a temporary link, TTL {ttl}");
    assert_eq!(c.get_linked_in_cache(&ns, "u", SVC), Some(0));

    // An existing link wins over the best pod, even to a DENY_NEW_CALL pod (it keeps its users).
    publish(&store, &ns, SVC, &[(1, 1, 0, DenyNewCall)]).await;
    c.read_model().refresh(&ns, SVC).await.unwrap();
    store.set_linked_pod(&ns, "v", SVC, 1, LinkTtl::Persistent).await.unwrap();
    assert_eq!(c.compute_linked_pod(&ns, "v", SVC).await.unwrap(), 1);

    // A link to a SHUTDOWN pod while nothing is routable: no available pod.
    publish(&store, &ns, SVC, &[(0, 1, 0, Shutdown), (1, 1, 0, Shutdown)]).await;
    c.read_model().refresh(&ns, SVC).await.unwrap();
    let err = c.compute_linked_pod(&ns, "v", SVC).await.unwrap_err();
    assert!(matches!(err, ClientError::NoAvailablePod { .. }), "{err}");
    assert_eq!(c.get_linked_in_cache(&ns, "v", SVC), None, "the unavailable cached pod was expired");
}

async fn cache_hits_until_expiry(store: Store) {
    let ns = unique_name("cache");
    publish(&store, &ns, SVC, &[(0, 1, 0, RoutingState::Ready), (1, 1, 0, RoutingState::Ready)]).await;
    let c = client(&store, Duration::from_millis(500));
    let pod = c.compute_linked_pod(&ns, "u", SVC).await.unwrap();
    let other = 1 - pod;
    store.set_linked_pod(&ns, "u", SVC, other, LinkTtl::Temporary(60)).await.unwrap();
    assert_eq!(c.compute_linked_pod(&ns, "u", SVC).await.unwrap(), pod, "served from the local cache");
    assert_eq!(c.stats().computations, 1);
    wait_for("the cache entry to expire", Duration::from_secs(5), || {
        let (c, ns) = (c.clone(), ns.clone());
        async move {
            match c.compute_linked_pod(&ns, "u", SVC).await {
                Ok(p) if p == other => Ok(()),
                r => Err(format!("{r:?}")),
            }
        }
    })
    .await;
    assert!(c.stats().computations >= 2);
}

async fn concurrent_computes_share_one_flight(store: Store) {
    let ns = Arc::new(unique_name("flight"));
    publish(&store, &ns, SVC, &(0..10).map(|i| (i, 1, 0, RoutingState::Ready)).collect::<Vec<_>>()).await;
    let c = client(&store, Duration::from_secs(240));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (c, ns) = (c.clone(), ns.clone());
            tokio::spawn(async move { c.compute_linked_pod(&ns, "u", SVC).await.unwrap() })
        })
        .collect();
    let pods: Vec<u32> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert!(pods.iter().all(|&p| p == pods[0]), "{pods:?}");
    assert_eq!(c.stats().computations, 1, "64 concurrent callers, one computation");
    assert_eq!(store.get_linked_pod(&ns, "u", SVC).await.unwrap(), Some(pods[0]));

    // Different clients (other processes) race through Redis: still one pod for everyone.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (c, ns) = (client(&store, Duration::from_secs(240)), ns.clone());
            tokio::spawn(async move { c.compute_linked_pod(&ns, "w", SVC).await.unwrap() })
        })
        .collect();
    let pods: Vec<u32> = futures::future::join_all(tasks).await.into_iter().map(Result::unwrap).collect();
    assert!(pods.iter().all(|&p| p == pods[0]), "{pods:?}");
}

async fn pick_and_link_and_reads(store: Store) {
    let ns = unique_name("clientpick");
    let c = client(&store, Duration::from_secs(240));
    assert_eq!(c.pick_and_link(&ns, "u", SVC).await.unwrap(), None);
    publish(&store, &ns, SVC, &[(3, 1, 0, RoutingState::Ready)]).await;
    assert_eq!(c.pick_and_link(&ns, "u", SVC).await.unwrap(), Some(3));
    assert_eq!(c.get_linked_in_cache(&ns, "u", SVC), Some(3));
    assert_eq!(c.get_linked_pod(&ns, "u", SVC).await.unwrap(), Some(3));
    assert_eq!(c.get_linked_pod_in_cache_or_if_persist(&ns, "x", SVC).await.unwrap(), None);
    store.set_linked_pod(&ns, "x", SVC, 0, LinkTtl::Persistent).await.unwrap();
    assert_eq!(c.get_linked_pod_in_cache_or_if_persist(&ns, "x", SVC).await.unwrap(), Some(0));
    assert_eq!(c.set_linked_pod_if_absent(&ns, "x", SVC, 3).await.unwrap(), 0);
    assert_eq!(c.get_link_services(&ns, "x").await.unwrap().get(SVC), Some(&0));
    let batch = c.batch_get_linked_pod(&ns, &["u", "x", "nobody"], SVC).await.unwrap();
    assert_eq!(batch, [(0, vec!["x".to_owned()]), (3, vec!["u".to_owned()])].into());
    assert_eq!(c.get_linked_pod_not_cache(&ns, "nobody", SVC).await.unwrap(), None);
}

crate::both!(
    compute_places_and_caches,
    cache_hits_until_expiry,
    concurrent_computes_share_one_flight,
    pick_and_link_and_reads
);

#[tokio::test]
async fn bad_configuration_is_named() {
    let store = crate::support::store::standalone().await;
    let config = ClientConfig { link_cache_ttl: Duration::from_secs(400), ..ClientConfig::default() };
    let err = Client::new(store, config).unwrap_err().chain().to_string();
    assert!(err.contains("link_cache_ttl"), "{err}");
}
