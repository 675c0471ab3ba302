//! Reading pod states (wire contract §1–§4): `sf:{<ns>:state:<svc>}` maps pod index → pod state
//! string, `sf:{<ns>:state:<svc>}meta` holds `updatePeriodSeconds`, `sf:{<ns>:workload:<svc>}`
//! holds the workload JSON.
//!
//! The writes here are the raw v1 ones (`HSET` of a state, of the period, `SET` of the
//! workload) for clients that publish states themselves under wire contract v1 and for tests:
//! they bypass the floor and the candidate index. routestate's own writers — the operator and
//! the server role's direct transport — use the one write path of [`super::publish`].

use super::{Store, StoreError};
use crate::core::{
    Keys, PodState, SelectionPolicy, ServiceSnapshot, Workload, pod_index::parse_index, staleness_window_ms,
};

/// The meta hash field holding the service's publish period in seconds.
pub const UPDATE_PERIOD_FIELD: &str = "updatePeriodSeconds";

/// Parses `updatePeriodSeconds`: a canonical decimal u32 > 0 (anything else is ignored, as the
/// Lua reader ignores it).
pub fn parse_update_period(value: &str) -> Option<u32> {
    parse_index(value).filter(|&p| p > 0)
}

/// One service's raw states, its published period and the Redis time, read in one round trip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStates {
    /// The `HGETALL` entries of the state hash, unparsed.
    pub entries: Vec<(String, String)>,
    /// The service's published `updatePeriodSeconds`, when valid.
    pub update_period_secs: Option<u32>,
    /// The Redis server time of the read, in epoch milliseconds.
    pub now_ms: u64,
}

impl ServiceStates {
    /// The staleness window: 3 × the published period, else `fallback_ms`.
    pub fn window_ms(&self, fallback_ms: u64) -> u64 {
        self.update_period_secs.map(staleness_window_ms).unwrap_or(fallback_ms)
    }

    /// Judges the states at the read's server time. Garbage entries end up in `skipped`.
    pub fn snapshot(&self, fallback_window_ms: u64, range: u64) -> ServiceSnapshot {
        let policy = SelectionPolicy { window_ms: self.window_ms(fallback_window_ms), range };
        ServiceSnapshot::from_hash(self.entries.iter().map(|(k, v)| (k, v)), self.now_ms, policy)
    }
}

/// Writes a pod state as one argument straight into the command buffer (no temporary String:
/// state writes are the operator's hot path).
struct StateArg<'a>(&'a PodState);

impl redis::ToRedisArgs for StateArg<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self.0);
    }
}

impl Store {
    /// Reads a service's state hash, its period and the Redis time in one pipeline (one slot:
    /// the state and meta hashes share a hash tag, and TIME has no key).
    pub async fn read_service(&self, ns: &str, svc: &str) -> Result<ServiceStates, StoreError> {
        const OP: &str = "read_service";
        let state = Keys::state(ns, svc).map_err(StoreError::key(OP))?;
        let meta = Keys::state_meta(ns, svc).map_err(StoreError::key(OP))?;
        let mut pipe = redis::pipe();
        pipe.cmd("HGETALL").arg(&state).cmd("HGET").arg(&meta).arg(UPDATE_PERIOD_FIELD).cmd("TIME");
        let mut conn = self.conn.clone();
        type Reply = (Vec<(Vec<u8>, Vec<u8>)>, Option<Vec<u8>>, (u64, u64));
        let (entries, period, (secs, micros)): Reply = self.timed(OP, &state, pipe.query_async(&mut conn)).await?;
        let entries: Vec<(String, String)> =
            entries.into_iter().map(|(f, v)| (super::lossy(f), super::lossy(v))).collect();
        let period = period.map(super::lossy);
        let update_period_secs = period.as_deref().and_then(|p| {
            let parsed = parse_update_period(p);
            if parsed.is_none() {
                tracing::warn!(key = meta, value = %crate::core::pod_state::truncate(p), "ignoring an invalid updatePeriodSeconds");
            }
            parsed
        });
        Ok(ServiceStates { entries, update_period_secs, now_ms: crate::core::redis_time_ms(secs, micros) })
    }

    /// Writes one pod's state (`HSET`).
    pub async fn set_pod_state(&self, ns: &str, svc: &str, pod: u32, state: &PodState) -> Result<(), StoreError> {
        self.set_pod_states(ns, svc, &[(pod, *state)]).await
    }

    /// Writes several pods' states of one service in one `HSET`.
    pub async fn set_pod_states(&self, ns: &str, svc: &str, states: &[(u32, PodState)]) -> Result<(), StoreError> {
        const OP: &str = "set_pod_states";
        let key = Keys::state(ns, svc).map_err(StoreError::key(OP))?;
        if states.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("HSET");
        cmd.arg(&key);
        for (pod, state) in states {
            cmd.arg(pod).arg(StateArg(state));
        }
        let mut conn = self.conn.clone();
        self.timed(OP, &key, cmd.exec_async(&mut conn)).await
    }

    /// Removes one pod's state (`HDEL`); returns whether it existed.
    pub async fn remove_pod_state(&self, ns: &str, svc: &str, pod: u32) -> Result<bool, StoreError> {
        const OP: &str = "remove_pod_state";
        let key = Keys::state(ns, svc).map_err(StoreError::key(OP))?;
        let mut conn = self.conn.clone();
        let n: i64 = self.timed(OP, &key, redis::cmd("HDEL").arg(&key).arg(pod).query_async(&mut conn)).await?;
        Ok(n == 1)
    }

    /// Publishes the service's state update period (the meta hash).
    pub async fn set_update_period(&self, ns: &str, svc: &str, secs: u32) -> Result<(), StoreError> {
        const OP: &str = "set_update_period";
        let key = Keys::state_meta(ns, svc).map_err(StoreError::key(OP))?;
        if secs == 0 {
            return Err(StoreError::InvalidArgument { op: OP, reason: "update period must be > 0 seconds".into() });
        }
        let mut conn = self.conn.clone();
        self.timed(OP, &key, redis::cmd("HSET").arg(&key).arg(UPDATE_PERIOD_FIELD).arg(secs).exec_async(&mut conn))
            .await
    }

    /// Writes the workload aggregate (`SET`, no TTL).
    pub async fn set_workload(&self, ns: &str, svc: &str, workload: &Workload) -> Result<(), StoreError> {
        const OP: &str = "set_workload";
        let key = Keys::workload(ns, svc).map_err(StoreError::key(OP))?;
        let mut conn = self.conn.clone();
        self.timed(OP, &key, redis::cmd("SET").arg(&key).arg(workload.encode()).exec_async(&mut conn)).await
    }

    /// Reads the workload aggregate; an unparsable value is an error naming the key and value.
    pub async fn get_workload(&self, ns: &str, svc: &str) -> Result<Option<Workload>, StoreError> {
        const OP: &str = "get_workload";
        let key = Keys::workload(ns, svc).map_err(StoreError::key(OP))?;
        let mut conn = self.conn.clone();
        let v: Option<Vec<u8>> = self.timed(OP, &key, redis::cmd("GET").arg(&key).query_async(&mut conn)).await?;
        v.map(super::lossy)
            .map(|v| {
                Workload::parse(&v)
                    .map_err(|e| StoreError::reply(OP, &key, crate::core::ErrorChain::chain(&e).to_string()))
            })
            .transpose()
    }
}
