//! routestate: stateful routing for StatefulSets, kept in Redis.
//!
//! - [`core`]: the pure wire contract and rules (codecs, keys, selection), no I/O.
//! - [`store`]: the async Redis shell: connections, link scripts, pod-state hashes.
//! - [`client`]: the read model (state cache, notifications) and the client role (placement).
//! - [`operator`]: the RouteState operator (CRD, controller, Redis publisher, leader election).
//! - [`cli`]: the `routestate` command line.
//! - [`server`]: the server role for code inside a pod (state reports, own links, drain).

pub mod cli;
pub mod client;
/// The pure core, a crate of its own (`core/`), re-exported so the whole API stays under
/// `routestate::`.
pub use routestate_core as core;
pub mod operator;
pub mod server;
pub mod store;
