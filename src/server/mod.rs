//! The server role: code running inside a stateful pod publishes its load and routing state
//! through a [`StateTransport`] and manages the links of the users it owns.

pub mod transport;

pub use transport::{ServerReport, StateTransport, TransportError};
