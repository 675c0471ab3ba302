//! How a pod hands its load and routing state to whoever publishes it (the operator's
//! implementation patches the pod's annotations; tests record the reports).
//!
//! Final signatures (others depend on them):
//! ```text
//! pub struct ServerReport { pub load_state: u64, pub waiting_tasks: u64, pub routing: RoutingState }
//! pub trait StateTransport: Send + Sync + 'static {
//!     fn publish(&self, report: ServerReport) -> impl Future<Output = Result<(), TransportError>> + Send;
//! }
//! pub struct TransportError { pub message: String, pub source: Option<Box<dyn Error + Send + Sync>> }
//! ```

use crate::core::RoutingState;

/// One pod's self-reported state: the raw inputs of the weighted load, and its routing state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerReport {
    /// Application-defined load state; larger means busier.
    pub load_state: u64,
    /// Tasks waiting in the pod's queues.
    pub waiting_tasks: u64,
    /// Whether the pod takes new users, keeps its users, or takes nothing.
    pub routing: crate::core::RoutingState,
}

impl Default for ServerReport {
    fn default() -> Self {
        Self { load_state: 0, waiting_tasks: 0, routing: RoutingState::Ready }
    }
}

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

/// How a pod hands its load and routing state to the operator (the operator's implementation patches the pod's annotations).
pub trait StateTransport: Send + Sync + 'static {
    /// Publishes the pod's current report. Called on every change and may be called repeatedly
    /// with the same report; implementations should be idempotent.
    fn publish(&self, report: ServerReport) -> impl std::future::Future<Output = Result<(), TransportError>> + Send;
}
