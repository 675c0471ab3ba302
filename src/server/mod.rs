//! The server role: code running inside a stateful pod publishes its load and routing state
//! through a [`StateTransport`] and manages the links of the users it owns ([`ServerDriver`]).

pub mod driver;
pub mod transport;

pub use driver::{OwnedLink, OwnedLinks, ReassertReport, ServerConfig, ServerDriver, ServerError, StopOutcome};
pub use tokio_util::sync::CancellationToken;
pub use transport::{AnnotationTransport, RedisTransport, ServerReport, StateTransport, TransportError};
