//! The client layer's error type.

use std::sync::Arc;

use crate::store::StoreError;

/// An error of the read model or the client role.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The store failed (the inner error names the operation and key).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No pod can take the user: nothing is routable and no existing link is available.
    #[error("no available pod for uid {uid:?} in service {svc:?} of namespace {ns:?}")]
    NoAvailablePod { ns: String, uid: String, svc: String },
    /// The configuration is inconsistent.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// The shared outcome of a computation another caller started for the same (ns, uid, svc).
    #[error(transparent)]
    Coalesced(Arc<ClientError>),
}
