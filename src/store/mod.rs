//! The thin async Redis shell over the wire contract v1 (`docs/wire-contract.md`): connections,
//! the link scripts and the pod-state hashes. All Lua lives in `src/store/lua/`.

pub mod connection;
pub mod error;

pub use connection::{DEFAULT_OP_TIMEOUT, RedisConn, RedisOptions, connect, server_time_ms};
pub use error::{StoreError, redact_url};
