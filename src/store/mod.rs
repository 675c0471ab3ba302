//! The thin async Redis shell over the wire contract (`docs/wire-contract.md`): connections, the
//! link scripts, placements, the one write path of pod states and the reads of them. All Lua
//! lives in `src/store/lua/`.
//!
//! [`Store`] is the handle: a [`RedisConn`] (standalone or cluster, behind the same API) and the
//! per-operation timeout. Every operation is bounded by that timeout and fails with a
//! [`StoreError`] naming the operation and the key.

pub mod acl;
pub mod connection;
pub mod dataset;
pub mod error;
pub mod links;
pub mod placement;
pub mod publish;
pub mod scripts;
pub mod sentinel;
pub mod states;

use std::{future::Future, time::Duration};

pub use connection::{DEFAULT_OP_TIMEOUT, RedisConn, RedisOptions, SentinelOptions, connect, server_time_ms};
pub use dataset::{DatasetChange, DatasetLoss, DatasetMark, DatasetWatch};
pub use error::{StoreError, redact_url};
pub use links::{Durability, LinkTtl, PERSIST_FOREVER, TrySetOutcome};
pub use placement::{PickParams, Placement};
pub use publish::ReportOutcome;
pub use states::ServiceStates;

/// A handle on the Redis store: cheap to clone, safe to share between tasks.
#[derive(Clone, Debug)]
pub struct Store {
    conn: RedisConn,
    op_timeout: Duration,
    durability: Durability,
}

impl Store {
    /// Wraps an existing connection; link writes are [`Durability::MasterOnly`].
    pub fn new(conn: RedisConn, op_timeout: Duration) -> Self {
        Self { conn, op_timeout, durability: Durability::MasterOnly }
    }

    /// The same store (sharing its connection) whose link writes have `durability`: set it once
    /// for a client, or per call as `store.with_durability(d).set_linked_pod(…)`. A replicated
    /// write's `WAIT` holds the shared connection until the replicas answer, so heavy replicated
    /// writers are better off with a store of their own ([`Store::connect`]).
    pub fn with_durability(&self, durability: Durability) -> Self {
        Self { durability, ..self.clone() }
    }

    /// The durability of this handle's link writes.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Connects with `opts` (see [`connect`]).
    pub async fn connect(opts: &RedisOptions) -> Result<Self, StoreError> {
        Ok(Self::new(connect(opts).await?, opts.op_timeout))
    }

    /// A clone of the underlying connection, for commands outside this API.
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// The per-operation timeout.
    pub fn op_timeout(&self) -> Duration {
        self.op_timeout
    }

    /// Redis server time in epoch milliseconds.
    pub async fn server_time_ms(&self) -> Result<u64, StoreError> {
        let mut conn = self.conn.clone();
        self.timed("TIME", "-", async move { server_time_ms(&mut conn).await }).await
    }

    /// Runs one operation under the per-operation timeout, naming `op` and `key` on failure.
    pub(crate) async fn timed<T, E, F>(&self, op: &'static str, key: &str, fut: F) -> Result<T, StoreError>
    where
        F: Future<Output = Result<T, E>>,
        E: IntoStoreError,
    {
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.into_store_error(op, key, self.op_timeout)),
            Err(_) => Err(StoreError::Timeout { op, key: key.to_owned(), timeout: self.op_timeout }),
        }
    }
}

/// Decodes a stored value as text. Values are read as bytes and decoded leniently: a value that
/// is not UTF-8 (another writer's garbage) becomes text that fails to parse and is skipped with a
/// warning like any other garbage, instead of failing the whole read.
pub(crate) fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Errors an operation inside [`Store::timed`] may produce.
pub(crate) trait IntoStoreError {
    fn into_store_error(self, op: &'static str, key: &str, timeout: Duration) -> StoreError;
}

impl IntoStoreError for redis::RedisError {
    fn into_store_error(self, op: &'static str, key: &str, timeout: Duration) -> StoreError {
        // The redis crate's own response timeout (also `op_timeout`) may fire first.
        if self.is_timeout() {
            return StoreError::Timeout { op, key: key.to_owned(), timeout };
        }
        StoreError::Redis { op, key: key.to_owned(), source: self }
    }
}

impl IntoStoreError for StoreError {
    fn into_store_error(self, _op: &'static str, _key: &str, _timeout: Duration) -> StoreError {
        self
    }
}
