//! The pure, I/O-free core: wire codecs, key layout, pod index parsing, state derivation and
//! pod selection. Nothing here touches the network, the clock or a random source directly, so
//! every rule is tested exhaustively (unit and property tests) and shared by the library, the
//! operator and the Lua scripts' reference model.

pub mod annotations;
pub mod error_chain;
pub mod keys;
pub mod load;
pub mod plan;
pub mod pod_index;
pub mod pod_state;
pub mod report;
pub mod routing;
pub mod selection;
pub mod workload;

pub use error_chain::ErrorChain;
pub use keys::{KeyError, Keys, ServiceKeys};
pub use load::{CpuFactor, MAX_LOAD, weighted_load};
pub use plan::{PodPlan, Published, ServicePlan, WorkloadPlan};
pub use pod_index::{PodIndexError, pod_index};
pub use pod_state::{PodState, PodStateError};
pub use report::{Floor, PodReport, ReportError, published};
pub use routing::{RoutingState, RoutingStateError};
pub use selection::{Classified, PodView, SelectionPolicy, ServiceSnapshot};
pub use workload::{Workload, WorkloadError, WorkloadState};

/// Default range above the least-loaded READY pod within which a pod still counts as "good"
/// for new users (the original's `homo.service.state.range.default`).
pub const DEFAULT_GOOD_RANGE: u64 = 500;
/// Default publish period of pod states, in seconds.
pub const DEFAULT_UPDATE_PERIOD_SECS: u32 = 10;
/// A pod is alive while its state is at most this many update periods old.
pub const STALENESS_PERIODS: u64 = 3;
/// TTL of a temporary (client-created) link, in seconds (the original's TEMP_LINK_INFO_CACHE_TIME_SECS).
pub const TEMP_LINK_TTL_SECS: u64 = 300;
/// Local link-cache TTL of clients: shorter than the temporary link so a cached pod never
/// outlives its link in Redis.
pub const LINK_CACHE_TTL_SECS: u64 = 240;
/// Default weighting between waiting tasks and load state (as the CRD spells it; the arithmetic
/// uses [`CpuFactor::DEFAULT`]).
pub const DEFAULT_CPU_FACTOR: f64 = 0.7;

/// A Redis `TIME` reply (seconds, microseconds) as epoch milliseconds, as every writer stamps
/// and every reader judges states: `sec × 1000 + floor(usec / 1000)`.
pub fn redis_time_ms(secs: u64, micros: u64) -> u64 {
    secs.saturating_mul(1000).saturating_add(micros / 1000)
}

/// The staleness window for a service published with `update_period_secs`.
pub fn staleness_window_ms(update_period_secs: u32) -> u64 {
    u64::from(update_period_secs) * 1000 * STALENESS_PERIODS
}

#[cfg(test)]
mod tests {
    #[test]
    fn redis_time_is_milliseconds_truncated() {
        assert_eq!(super::redis_time_ms(1_764_000_000, 123_999), 1_764_000_000_123);
        assert_eq!(super::redis_time_ms(0, 999), 0);
        assert_eq!(super::redis_time_ms(u64::MAX, 0), u64::MAX, "saturates");
    }

    #[test]
    fn the_staleness_window_is_three_periods_in_milliseconds() {
        assert_eq!(super::staleness_window_ms(10), 30_000);
        assert_eq!(super::staleness_window_ms(1), 3_000);
        assert_eq!(super::staleness_window_ms(0), 0);
        assert_eq!(super::staleness_window_ms(u32::MAX), u64::from(u32::MAX) * 3_000);
    }
}
