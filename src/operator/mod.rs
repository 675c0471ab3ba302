//! The RouteState operator: the CRD, the pure derivation of what to publish, the controller,
//! the Redis publisher, leader election, the server-role transport and the HTTP endpoints.

pub mod crd;
pub mod derive;

pub use crd::{
    PodOverride, PodSummary, RouteState, RouteStateSpec, RouteStateStatus, RoutingStateName,
};
