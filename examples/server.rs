//! The server role, as code inside a stateful pod uses it, runnable against any Redis:
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example server
//! ```
//!
//! The pod reports through `RedisTransport`, the default: each report is one script in Redis,
//! published at once under the operator's floor. Without an operator the example plays its part
//! for one tick (a floor for pod 2, as the operator writes it while the pod is Ready), so the
//! reports are published; a pod without a floor has its reports stored, not published. Pods
//! without Redis credentials use `AnnotationTransport::from_env(client)` instead (the reports go
//! through the pod's annotations).

use std::{
    collections::BTreeMap,
    error::Error,
    sync::{Arc, Mutex},
    time::Duration,
};

use routestate::{
    core::{CpuFactor, Floor, PodPlan, PodReport, RoutingState, ServicePlan},
    server::{CancellationToken, OwnedLink, RedisTransport, ServerConfig, ServerDriver, StopOutcome},
    store::{RedisOptions, Store},
};

/// What the operator publishes for a service whose pod 2 is Ready: its floor (READY).
async fn operator_tick(store: &Store, ns: &str) -> Result<(), Box<dyn Error>> {
    let pod = PodPlan { floor: Floor { routing: RoutingState::Ready, load: None }, report: PodReport::default() };
    let plan = ServicePlan {
        namespace: ns.into(),
        service: "game".into(),
        period_secs: 10,
        cpu_factor: CpuFactor::DEFAULT,
        replicas: 3,
        pods: BTreeMap::from([(2, pod)]),
        workload: None,
    };
    for result in store.publish(&[plan]).await {
        result?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ns = std::env::var("EXAMPLE_NAMESPACE").unwrap_or_else(|_| "routestate-example".into());
    let store = Store::connect(&RedisOptions::standalone(&url)).await?;
    operator_tick(&store, &ns).await?;

    // This process plays pod game-2 of namespace `ns`, with a short drain for the example.
    let mut config = ServerConfig::new(&ns, "game", 2);
    config.drain_window = Some(Duration::from_millis(500));
    let transport = RedisTransport::new(store.clone(), &ns, "game", 2)?;
    let driver = ServerDriver::new(store.clone(), transport, config)?;
    // The users this pod owns, as the application tracks them. Should Redis come back empty (a
    // restart without persistence), the driver notices within a period and writes these links
    // again, set-if-absent, from this list.
    let owned: Arc<Mutex<Vec<OwnedLink>>> = Arc::default();
    driver.on_data_loss_reassert({
        let owned = owned.clone();
        move || owned.lock().unwrap_or_else(|e| e.into_inner()).clone()
    });
    driver.start().await?;
    driver.set_load_state(250).await?;
    driver.set_waiting_tasks(4).await?;
    // Published at once: 0.7 × 4 + 0.3 × 250 = 77.
    let states = store.read_service(&ns, "game").await?;
    println!("published: {:?}", states.entries);
    assert!(states.entries.iter().any(|(pod, state)| pod == "2" && state.starts_with("77-")));

    // Claim a user for this pod: a persistent link, which clients never move elsewhere.
    let previous = driver.set_linked_pod(&ns, "dave", "game", 2).await?;
    owned.lock().unwrap_or_else(|e| e.into_inner()).push(OwnedLink::new("dave", "game"));
    println!("dave linked to game-2 (previous: {previous:?})");
    // What the background task does every period: is this still the dataset the pod knew?
    println!("dataset check: {:?}", driver.check_dataset().await?);
    // Another pod cannot steal it.
    let other = driver.try_set_linked_pod(&ns, "dave", "game", 0).await?;
    println!("try-set dave -> game-0: {other:?}");
    assert_eq!(driver.get_linked_pod(&ns, "dave", "game").await?, Some(2));

    // Links are limited to the pod's own namespace.
    let err = driver.set_linked_pod("elsewhere", "dave", "game", 2).await.unwrap_err();
    println!("other namespace refused: {err}");

    // Release the user, then drain: DENY_NEW_CALL for the drain window, then stop.
    driver.remove_linked_pod(&ns, "dave", "game", 0).await?;
    owned.lock().unwrap_or_else(|e| e.into_inner()).clear();
    driver.set_routing_state(RoutingState::DenyNewCall).await?;
    let outcome = driver.stop(&CancellationToken::new()).await?;
    println!("stopped: {outcome:?}");
    assert_eq!(outcome, StopOutcome::Drained);
    store.remove_service(&ns, "game").await?;
    Ok(())
}
