//! How a pod hands its load and routing state to whoever publishes it:
//!
//! - [`RedisTransport`], the default for pods that can reach Redis: the pod writes its report
//!   straight into Redis, where it is published at once under the operator's floor (one script,
//!   no Kubernetes API call, no operator work);
//! - [`AnnotationTransport`], for pods without Redis credentials: the report becomes the pod's
//!   own annotations, which the operator reads and publishes (an API server write and a watch
//!   event per report, coalesced to at most one per second).
//!
//! Either way the operator's floor (not Ready, terminating, a spec override) wins: a report can
//! never make a pod less restrictive than what Kubernetes says.

pub mod annotation;
pub mod redis;

pub use self::{annotation::AnnotationTransport, redis::RedisTransport};
/// One pod's self-reported state: the raw inputs of its weighted load, and its routing state.
pub use crate::core::PodReport as ServerReport;

/// A transport failed to publish a report.
#[derive(Debug, thiserror::Error)]
#[error("publishing the pod state failed: {message}")]
pub struct TransportError {
    /// What failed.
    pub message: String,
    /// The underlying error, if any.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl TransportError {
    /// An error with a message only.
    pub fn new(message: impl Into<String>) -> Self {
        Self { message: message.into(), source: None }
    }

    /// An error with a message and its cause.
    pub fn with_source(message: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self { message: message.into(), source: Some(Box::new(source)) }
    }
}

/// How a pod hands its load and routing state to the publisher.
pub trait StateTransport: Send + Sync + 'static {
    /// Publishes the pod's current report. Called on every change and may be called repeatedly
    /// with the same report; implementations should be idempotent.
    fn publish(&self, report: ServerReport) -> impl std::future::Future<Output = Result<(), TransportError>> + Send;
}
