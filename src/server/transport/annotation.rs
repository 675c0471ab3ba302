//! The annotation transport: a pod's [`ServerReport`]s become annotations on its own object
//! (`routestate.dev/load`, `routestate.dev/waiting-tasks`, `routestate.dev/routing-state`,
//! [`crate::core::annotations`]), which the operator reads and publishes. Patches are coalesced:
//! at most one per second, and only the latest report is written.
//!
//! RBAC the pod's ServiceAccount needs (a Role in the pod's namespace; `resourceNames` may
//! list the StatefulSet's pod names to restrict it to them):
//!
//! ```yaml
//! - apiGroups: [""]
//!   resources: ["pods"]
//!   verbs: ["patch"]
//! ```
//!
//! The pod learns its name and namespace through the downward API (`POD_NAME`, `POD_NAMESPACE`).

use crate::core::ErrorChain;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use tokio::sync::watch;

use super::{ServerReport, StateTransport, TransportError};
use crate::core::annotations;

/// Minimum time between two patches.
pub const MIN_PATCH_INTERVAL: Duration = Duration::from_secs(1);

/// The merge patch that writes a report.
fn patch(report: &ServerReport) -> serde_json::Value {
    let annotations: serde_json::Map<String, serde_json::Value> =
        annotations::encode(report).into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
    serde_json::json!({"metadata": {"annotations": annotations}})
}

struct Shared {
    /// The last error of a patch, returned by the next `publish`; cleared by a success.
    last_error: Mutex<Option<String>>,
}

/// A [`StateTransport`] that patches the pod's own annotations.
#[derive(Clone)]
pub struct AnnotationTransport {
    latest: watch::Sender<Option<ServerReport>>,
    written: watch::Receiver<Option<ServerReport>>,
    shared: Arc<Shared>,
    pod: String,
}

impl AnnotationTransport {
    /// A transport for pod `namespace`/`pod`; spawns its patch task (it ends when every clone of
    /// the transport is dropped).
    pub fn new(client: Client, namespace: &str, pod: &str) -> Self {
        let (latest, rx) = watch::channel(None);
        let (written_tx, written) = watch::channel(None);
        let shared = Arc::new(Shared { last_error: Mutex::new(None) });
        let api: Api<Pod> = Api::namespaced(client, namespace);
        tokio::spawn(patch_loop(api, pod.to_owned(), rx, written_tx, shared.clone()));
        Self { latest, written, shared, pod: format!("{namespace}/{pod}") }
    }

    /// A transport for the pod named by `POD_NAME` and `POD_NAMESPACE` (downward API).
    pub fn from_env(client: Client) -> Result<Self, TransportError> {
        let var = |name: &str| {
            std::env::var(name)
                .map_err(|_| TransportError::new(format!("{name} is not set (expose it with the downward API)")))
        };
        Ok(Self::new(client, &var("POD_NAMESPACE")?, &var("POD_NAME")?))
    }

    /// Waits until the latest report is on the pod (e.g. before the process exits after
    /// `ServerDriver::stop`), or `timeout` passes.
    pub async fn flush(&self, timeout: Duration) -> Result<(), TransportError> {
        let want = *self.latest.borrow();
        let mut written = self.written.clone();
        match tokio::time::timeout(timeout, written.wait_for(|w| *w == want)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(TransportError::new(format!("the patch task of pod {} has stopped", self.pod))),
            Err(_) => {
                let last = self.shared.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                Err(TransportError::new(format!(
                    "the latest report was not written to pod {} within {timeout:?}{}",
                    self.pod,
                    last.map(|e| format!(" (last error: {e})")).unwrap_or_default()
                )))
            }
        }
    }
}

impl StateTransport for AnnotationTransport {
    /// Queues the report (latest wins) and returns at once; returns the previous patch's error
    /// if it failed (the report is still queued and retried).
    fn publish(&self, report: ServerReport) -> impl std::future::Future<Output = Result<(), TransportError>> + Send {
        self.latest.send_replace(Some(report));
        let last = self.shared.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let pod = self.pod.clone();
        async move {
            match last {
                None => Ok(()),
                Some(e) => Err(TransportError::new(format!("patching the annotations of pod {pod}: {e}"))),
            }
        }
    }
}

async fn patch_loop(
    api: Api<Pod>,
    pod: String,
    mut rx: watch::Receiver<Option<ServerReport>>,
    written: watch::Sender<Option<ServerReport>>,
    shared: Arc<Shared>,
) {
    let mut last_written: Option<ServerReport> = None;
    loop {
        if rx.changed().await.is_err() {
            return;
        }
        // Coalesce: keep patching the latest value until it is written, at most once a second.
        loop {
            let report = *rx.borrow_and_update();
            let Some(r) = report.filter(|r| Some(*r) != last_written) else { break };
            match api.patch(&pod, &PatchParams::default(), &Patch::Merge(&patch(&r))).await {
                Ok(_) => {
                    last_written = Some(r);
                    *shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    written.send_replace(Some(r));
                }
                Err(e) => {
                    tracing::warn!(pod, error = %e.chain(), "patching the pod's routestate annotations failed; retrying");
                    *shared.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                }
            }
            tokio::time::sleep(MIN_PATCH_INTERVAL).await;
            if written.is_closed() && rx.has_changed().is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::RoutingState;

    #[test]
    fn the_patch_carries_the_report_in_the_documented_annotations() {
        let report = ServerReport { load_state: 100, waiting_tasks: 10, routing: RoutingState::DenyNewCall };
        assert_eq!(
            patch(&report),
            serde_json::json!({"metadata": {"annotations": {
                "routestate.dev/load": "100",
                "routestate.dev/waiting-tasks": "10",
                "routestate.dev/routing-state": "DenyNewCall",
            }}})
        );
    }
}
