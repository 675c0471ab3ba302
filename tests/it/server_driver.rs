//! The server role: reports through a recording transport (a fake of our own trait), drain and
//! cancellation, and link operations against real Redis (standalone and Cluster).

use routestate::core::ErrorChain;
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use routestate::{
    core::RoutingState,
    server::{
        CancellationToken, ServerConfig, ServerDriver, ServerError, ServerReport, StateTransport, StopOutcome,
        TransportError,
    },
    store::{Store, TrySetOutcome},
};

use crate::support::{unique_name, wait_for};

/// Records every report; fails while `failing` is set.
#[derive(Default, Clone)]
struct Recorder {
    reports: Arc<Mutex<Vec<ServerReport>>>,
    failing: Arc<AtomicBool>,
}

impl Recorder {
    fn reports(&self) -> Vec<ServerReport> {
        self.reports.lock().unwrap().clone()
    }
}

impl StateTransport for Recorder {
    async fn publish(&self, report: ServerReport) -> Result<(), TransportError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(TransportError::new("annotations unreachable"));
        }
        self.reports.lock().unwrap().push(report);
        Ok(())
    }
}

fn report(load_state: u64, waiting_tasks: u64, routing: RoutingState) -> ServerReport {
    ServerReport { load_state, waiting_tasks, routing }
}

fn driver(store: Store, ns: &str, period: Duration, drain: Duration) -> (ServerDriver<Recorder>, Recorder) {
    let rec = Recorder::default();
    let config = ServerConfig { update_period: period, drain_window: Some(drain), ..ServerConfig::new(ns, "game", 0) };
    (ServerDriver::new(store, rec.clone(), config).unwrap(), rec)
}

#[tokio::test]
async fn every_change_is_published_in_order() {
    use RoutingState::*;
    let (d, rec) =
        driver(crate::support::store::standalone().await, "ns", Duration::from_secs(10), Duration::from_secs(1));
    assert_eq!(d.config().drain_window(), Duration::from_secs(1));
    assert_eq!(ServerConfig::new("a", "b", 0).drain_window(), Duration::from_secs(50), "5 × the 10 s default period");
    d.start().await.unwrap();
    d.set_load_state(120).await.unwrap();
    d.set_waiting_tasks(7).await.unwrap();
    d.set_routing_state(DenyNewCall).await.unwrap();
    assert_eq!((d.load_state(), d.waiting_tasks(), d.routing_state()), (120, 7, DenyNewCall));
    assert_eq!(
        rec.reports(),
        vec![report(0, 0, Ready), report(120, 0, Ready), report(120, 7, Ready), report(120, 7, DenyNewCall)]
    );
}

#[tokio::test]
async fn failed_publishes_are_reported_and_retried() {
    let (d, rec) =
        driver(crate::support::store::standalone().await, "ns", Duration::from_millis(100), Duration::from_secs(1));
    d.start().await.unwrap();
    rec.failing.store(true, Ordering::SeqCst);
    let err = d.set_load_state(9).await.unwrap_err();
    assert!(
        matches!(err, ServerError::Transport(_)) && err.chain().to_string().contains("annotations unreachable"),
        "{err}"
    );
    assert_eq!(d.load_state(), 9, "the state is kept for the retry");
    rec.failing.store(false, Ordering::SeqCst);
    wait_for("the retry to publish load 9", Duration::from_secs(5), || {
        let rec = rec.clone();
        async move {
            if rec.reports().last() == Some(&report(9, 0, RoutingState::Ready)) {
                Ok(())
            } else {
                Err(format!("{:?}", rec.reports()))
            }
        }
    })
    .await;
}

#[tokio::test]
async fn stop_drains_then_shuts_down() {
    use RoutingState::*;
    let (d, rec) =
        driver(crate::support::store::standalone().await, "ns", Duration::from_secs(10), Duration::from_millis(300));
    d.start().await.unwrap();
    let started = Instant::now();
    assert_eq!(d.stop(&CancellationToken::new()).await.unwrap(), StopOutcome::Drained);
    assert!(started.elapsed() >= Duration::from_millis(300), "waited the drain window");
    assert_eq!(rec.reports(), vec![report(0, 0, Ready), report(0, 0, DenyNewCall), report(0, 0, Shutdown)]);
}

#[tokio::test]
async fn the_drain_is_cancellable() {
    use RoutingState::*;
    let (d, rec) =
        driver(crate::support::store::standalone().await, "ns", Duration::from_secs(10), Duration::from_secs(3600));
    d.start().await.unwrap();
    let cancel = CancellationToken::new();
    let stopping = tokio::spawn({
        let (d, cancel) = (d.clone(), cancel.clone());
        async move { d.stop(&cancel).await.unwrap() }
    });
    wait_for("DENY_NEW_CALL to be published", Duration::from_secs(5), || {
        let rec = rec.clone();
        async move {
            if rec.reports().last().map(|r| r.routing) == Some(DenyNewCall) {
                Ok(())
            } else {
                Err(format!("{:?}", rec.reports()))
            }
        }
    })
    .await;
    cancel.cancel();
    let outcome =
        tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("stop returns once cancelled").unwrap();
    assert_eq!(outcome, StopOutcome::Cancelled);
    assert_eq!(rec.reports().last(), Some(&report(0, 0, Shutdown)));
}

async fn links_are_restricted_to_the_local_namespace(store: Store) {
    let ns = unique_name("server");
    let (d, _) = driver(store.clone(), &ns, Duration::from_secs(10), Duration::from_secs(1));
    let err = d.set_linked_pod("elsewhere", "u", "game", 0).await.unwrap_err();
    assert!(
        matches!(&err, ServerError::NotLocalNamespace { requested, local } if requested == "elsewhere" && *local == ns),
        "{err}"
    );
    assert!(err.chain().to_string().contains("elsewhere") && err.chain().to_string().contains(&ns), "{err}");
    let not_local = |r: Result<(), ServerError>| matches!(r, Err(ServerError::NotLocalNamespace { requested, local }) if requested == "elsewhere" && local == ns);
    assert!(not_local(d.try_set_linked_pod("elsewhere", "u", "game", 0).await.map(drop)), "try-set");
    assert!(not_local(d.remove_linked_pod("elsewhere", "u", "game", 0).await.map(drop)), "remove");
    assert!(not_local(d.remove_linked_pod_with_id("elsewhere", "u", "game", 0, 0).await.map(drop)), "remove-with-id");
    assert!(not_local(d.get_linked_pod("elsewhere", "u", "game").await.map(drop)), "get");

    assert_eq!(d.set_linked_pod(&ns, "u", "game", 0).await.unwrap(), None);
    assert_eq!(
        store.get_linked_pod_if_persist(&ns, "u", "game").await.unwrap(),
        Some(0),
        "server links are persistent"
    );
    assert_eq!(
        d.try_set_linked_pod("", "u", "game", 1).await.unwrap(),
        TrySetOutcome { success: false, current: 0, previous: Some(0) },
        "empty ns = local"
    );
    assert!(!d.remove_linked_pod_with_id(&ns, "u", "game", 1, 0).await.unwrap());
    assert!(d.remove_linked_pod_with_id(&ns, "u", "game", 0, 0).await.unwrap());
    assert_eq!(d.get_linked_pod("", "u", "game").await.unwrap(), None);
    assert_eq!(
        d.try_set_linked_pod(&ns, "u", "game", 1).await.unwrap(),
        TrySetOutcome { success: true, current: 1, previous: None }
    );
    assert!(d.remove_linked_pod(&ns, "u", "game", 0).await.unwrap());
}

crate::both!(links_are_restricted_to_the_local_namespace);
