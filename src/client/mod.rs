//! The client role: the read model of pod states ([`ReadModel`]: a cache per (ns, svc) refreshed
//! in the background, judged with the Redis clock, with routing-change notifications) and the
//! placement of users on pods ([`Client`]: `compute_linked_pod` with a local cache and
//! single-flight, `pick_and_link` in one script, link reads).

pub mod config;
pub mod error;
mod keys;
pub mod link_cache;
pub mod read_model;
pub mod role;

pub use config::ClientConfig;
pub use error::ClientError;
pub use link_cache::LinkCache;
pub use read_model::{CachedService, ReadModel, RoutingChange};
pub use role::{Client, ClientStats};
