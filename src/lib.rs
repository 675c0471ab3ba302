//! routestate: stateful routing for StatefulSets, kept in Redis.
//!
//! - [`core`]: the pure wire contract and rules (codecs, keys, selection), no I/O.

pub mod core;
