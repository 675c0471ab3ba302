//! The direct transport: a pod writes its report to Redis itself (`report.lua`, wire contract
//! v1.1), where it is published at once under the operator's floor — one script per report, no
//! Kubernetes API call and no work for the operator.
//!
//! A report of a pod the operator does not publish (not Ready yet, or not seen yet) is stored
//! and published by the operator's next tick once it may be. A pod that stops reporting keeps
//! its last report for as long as Kubernetes says it is Ready: readiness is the liveness
//! authority, as with the annotation transport, and pods report on change only. The pod's Redis
//! user needs the ACL of `docs/operations.md` ("Redis ACL for pods").

use super::{ServerReport, StateTransport, TransportError};
use crate::{
    core::Keys,
    store::{ReportOutcome, Store},
};

/// A [`StateTransport`] that writes the pod's reports to Redis.
#[derive(Clone, Debug)]
pub struct RedisTransport {
    store: Store,
    namespace: String,
    service: String,
    pod: u32,
}

impl RedisTransport {
    /// A transport for pod `pod` of service `service` in namespace `namespace`; an error names a
    /// namespace or service the key layout rejects.
    pub fn new(
        store: Store,
        namespace: impl Into<String>,
        service: impl Into<String>,
        pod: u32,
    ) -> Result<Self, TransportError> {
        let (namespace, service) = (namespace.into(), service.into());
        Keys::state(&namespace, &service)
            .map_err(|e| TransportError::with_source(format!("pod {pod} of {namespace}/{service}"), e))?;
        Ok(Self { store, namespace, service, pod })
    }
}

impl StateTransport for RedisTransport {
    async fn publish(&self, report: ServerReport) -> Result<(), TransportError> {
        match self.store.report_pod_state(&self.namespace, &self.service, self.pod, &report).await {
            Ok(ReportOutcome::Published { routing, weighted_load }) => {
                tracing::debug!(ns = self.namespace, svc = self.service, pod = self.pod, %routing, weighted_load, "report published");
                Ok(())
            }
            Ok(ReportOutcome::Stored) => {
                tracing::debug!(
                    ns = self.namespace,
                    svc = self.service,
                    pod = self.pod,
                    "report stored; the operator does not publish this pod (yet)"
                );
                Ok(())
            }
            Err(e) => Err(TransportError::with_source(
                format!("reporting pod {} of {}/{} to Redis", self.pod, self.namespace, self.service),
                e,
            )),
        }
    }
}
