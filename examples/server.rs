//! The server role, as code inside a stateful pod uses it, runnable against any Redis:
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example server
//! ```
//!
//! In a real pod the transport is `routestate::operator::AnnotationTransport::from_env(client)`,
//! which hands the reports to the operator through the pod's annotations. Here a transport that
//! prints stands in for it, which also shows how small the [`StateTransport`] trait is.

use std::{
    error::Error,
    sync::{Arc, Mutex},
    time::Duration,
};

use routestate::{
    core::RoutingState,
    server::{
        CancellationToken, OwnedLink, ServerConfig, ServerDriver, ServerReport, StateTransport, StopOutcome,
        TransportError,
    },
    store::{RedisOptions, Store},
};

/// Prints every report instead of patching pod annotations.
struct PrintTransport;

impl StateTransport for PrintTransport {
    async fn publish(&self, report: ServerReport) -> Result<(), TransportError> {
        println!("report: load {} waiting {} routing {}", report.load_state, report.waiting_tasks, report.routing);
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let ns = std::env::var("EXAMPLE_NAMESPACE").unwrap_or_else(|_| "routestate-example".into());
    let store = Store::connect(&RedisOptions::standalone(&url)).await?;

    // This process plays pod game-2 of namespace `ns`, with a short drain for the example.
    let mut config = ServerConfig::new(&ns, "game", 2);
    config.drain_window = Some(Duration::from_millis(500));
    let driver = ServerDriver::new(store, PrintTransport, config)?;
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
    Ok(())
}
