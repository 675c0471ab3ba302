//! The client role, runnable against any Redis:
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example client
//! ```
//!
//! It first writes three pod states the way the operator would (pod 1 draining), then places
//! users: a new user lands on a READY pod and keeps it; nobody lands on the draining pod.

use std::error::Error;

use routestate::{
    client::{Client, ClientConfig},
    core::{PodState, RoutingState},
    store::{RedisOptions, Store},
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    // The namespace is part of every key, so the example never touches other data.
    let ns = std::env::var("EXAMPLE_NAMESPACE").unwrap_or_else(|_| "routestate-example".into());
    let store = Store::connect(&RedisOptions::standalone(&url)).await?;

    // What the operator publishes for StatefulSet `game`: pods 0 and 2 READY, pod 1 draining.
    let now = store.server_time_ms().await?;
    let states = [
        (0, PodState::new(120, now, RoutingState::Ready)),
        (1, PodState::new(10, now, RoutingState::DenyNewCall)),
        (2, PodState::new(300, now, RoutingState::Ready)),
    ];
    store.set_pod_states(&ns, "game", &states).await?;
    store.set_update_period(&ns, "game", 10).await?;

    let client = Client::new(store, ClientConfig::default())?;
    for uid in ["alice", "bob", "carol"] {
        // One round trip: keep the user's link if its pod is available, else pick a good pod
        // and link the user to it atomically.
        let pod = client.pick_and_link(&ns, uid, "game").await?.ok_or("no routable pod")?;
        // The cached path used by gateways: the same pod again, from the local cache.
        let again = client.compute_linked_pod(&ns, uid, "game").await?;
        println!("{uid} -> game-{pod} (again: game-{again})");
        assert_eq!(pod, again, "a placed user keeps its pod");
        assert_ne!(pod, 1, "a draining pod takes no new users");
    }
    println!("best pod for a new user now: {:?}", client.best_pod(&ns, "game").await?);
    Ok(())
}
