//! Client configuration: refresh period, staleness fallback, good ranges, TTLs.

use std::{collections::HashMap, time::Duration};

use super::ClientError;
use crate::core::{
    DEFAULT_GOOD_RANGE, DEFAULT_UPDATE_PERIOD_SECS, LINK_CACHE_TTL_SECS, TEMP_LINK_TTL_SECS, staleness_window_ms,
};

/// How the read model and the client role behave.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How often each cached service is re-read from Redis.
    pub refresh_period: Duration,
    /// Staleness window used when a service has no published `updatePeriodSeconds`.
    pub fallback_window_ms: u64,
    /// Good range above the least-loaded READY pod, unless `ranges` overrides it.
    pub default_range: u64,
    /// Per-service good ranges.
    pub ranges: HashMap<String, u64>,
    /// TTL of the temporary links written when placing users.
    pub temp_link_ttl_secs: u64,
    /// TTL of the local link cache; must be shorter than the temporary link.
    pub link_cache_ttl: Duration,
    /// Seed of the random source used to pick among good pods (tests); entropy when `None`.
    pub seed: Option<u64>,
    /// Buffer of the routing-change broadcast; slow subscribers miss the oldest events.
    pub notify_capacity: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            refresh_period: Duration::from_secs(u64::from(DEFAULT_UPDATE_PERIOD_SECS)),
            fallback_window_ms: staleness_window_ms(DEFAULT_UPDATE_PERIOD_SECS),
            default_range: DEFAULT_GOOD_RANGE,
            ranges: HashMap::new(),
            temp_link_ttl_secs: TEMP_LINK_TTL_SECS,
            link_cache_ttl: Duration::from_secs(LINK_CACHE_TTL_SECS),
            seed: None,
            notify_capacity: 1024,
        }
    }
}

impl ClientConfig {
    /// The good range of `svc`.
    pub fn range_for(&self, svc: &str) -> u64 {
        self.ranges.get(svc).copied().unwrap_or(self.default_range)
    }

    /// Rejects inconsistent settings, naming them.
    pub fn validate(&self) -> Result<(), ClientError> {
        let bad = |m: String| Err(ClientError::Config(m));
        if self.refresh_period.is_zero() {
            return bad("refresh_period must be > 0".into());
        }
        if self.temp_link_ttl_secs == 0 {
            return bad("temp_link_ttl_secs must be > 0".into());
        }
        if self.link_cache_ttl >= Duration::from_secs(self.temp_link_ttl_secs) {
            return bad(format!(
                "link_cache_ttl {:?} must be shorter than the temporary link TTL {} s, or a cached pod could outlive its link",
                self.link_cache_ttl, self.temp_link_ttl_secs
            ));
        }
        if self.notify_capacity == 0 {
            return bad("notify_capacity must be > 0".into());
        }
        Ok(())
    }
}
