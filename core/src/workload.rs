//! The workload aggregate stored at `sf:{<ns>:workload:<svc>}` as a JSON object, written on
//! behalf of the leader pod (index 0).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WorkloadState {
    /// Every desired replica is Ready and at least one pod takes new users.
    Ready,
    NotReady,
}

/// The workload aggregate (wire contract v1, camelCase JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub state: WorkloadState,
    /// Name of the pod with index 0, on whose behalf the aggregate is written.
    pub leader: String,
    /// Desired replicas of the StatefulSet.
    pub replicas: u32,
    /// Pods that are Ready.
    pub ready_pods: u32,
    /// Pods published READY (take new users).
    pub routable_pods: u32,
    /// Pods published DENY_NEW_CALL (keep their users, take no new ones).
    pub draining_pods: u32,
    /// Sum of the published weighted loads.
    pub total_weighted_load: u64,
    /// Redis server time of the write, in epoch milliseconds.
    pub updated_at_millis: u64,
}

/// Longest workload value a reader accepts.
pub const MAX_WORKLOAD_LEN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    #[error("workload value {value:?} is not a valid workload JSON object")]
    Malformed {
        value: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("workload value of {len} bytes is longer than {MAX_WORKLOAD_LEN}")]
    TooLong { len: usize },
}

impl Workload {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a struct of strings and integers always serialises")
    }

    pub fn parse(value: &str) -> Result<Self, WorkloadError> {
        if value.len() > MAX_WORKLOAD_LEN {
            return Err(WorkloadError::TooLong { len: value.len() });
        }
        serde_json::from_str(value)
            .map_err(|source| WorkloadError::Malformed { value: super::pod_state::truncate(value), source })
    }

    /// Ready when its state is READY and it was written within `window_ms` of `now_ms`.
    pub fn is_ready(&self, now_ms: u64, window_ms: u64) -> bool {
        self.state == WorkloadState::Ready && now_ms.saturating_sub(self.updated_at_millis) <= window_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Workload {
        Workload {
            state: WorkloadState::Ready,
            leader: "game-0".into(),
            replicas: 3,
            ready_pods: 3,
            routable_pods: 2,
            draining_pods: 1,
            total_weighted_load: 420,
            updated_at_millis: 1_764_000_000_000,
        }
    }

    #[test]
    fn json_shape_is_the_wire_contract() {
        let v: serde_json::Value = serde_json::from_str(&sample().encode()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state": "READY", "leader": "game-0", "replicas": 3, "readyPods": 3,
                "routablePods": 2, "drainingPods": 1, "totalWeightedLoad": 420, "updatedAtMillis": 1_764_000_000_000u64})
        );
    }

    #[test]
    fn readiness_needs_state_and_freshness() {
        let w = sample();
        assert!(w.is_ready(w.updated_at_millis + 30_000, 30_000));
        assert!(!w.is_ready(w.updated_at_millis + 30_001, 30_000));
        let not = Workload { state: WorkloadState::NotReady, ..w };
        assert!(!not.is_ready(not.updated_at_millis, 30_000));
    }

    #[test]
    fn garbage_is_an_error_naming_the_value() {
        for bad in ["", "READY", "{}", "{\"state\":\"MAYBE\"}", "null", "[1]"] {
            let e = Workload::parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(matches!(Workload::parse(&" ".repeat(5000)), Err(WorkloadError::TooLong { len: 5000 })));
        // The limit is inclusive: a valid workload padded to exactly the limit parses.
        let encoded = sample().encode();
        let padded = format!("{encoded:<width$}", width = MAX_WORKLOAD_LEN);
        assert_eq!(Workload::parse(&padded).unwrap(), sample());
        let over = format!("{padded} ");
        assert!(matches!(Workload::parse(&over), Err(WorkloadError::TooLong { len }) if len == MAX_WORKLOAD_LEN + 1));
    }

    proptest! {
        #[test]
        fn round_trips(leader in "[a-z0-9-]{0,30}", r in any::<u32>(), rp in any::<u32>(), ro in any::<u32>(),
                       d in any::<u32>(), load in any::<u64>(), ts in any::<u64>(), ready in any::<bool>()) {
            let w = Workload { state: if ready { WorkloadState::Ready } else { WorkloadState::NotReady }, leader,
                replicas: r, ready_pods: rp, routable_pods: ro, draining_pods: d, total_weighted_load: load, updated_at_millis: ts };
            prop_assert_eq!(Workload::parse(&w.encode()).unwrap(), w);
        }

        #[test]
        fn parse_never_panics(value in ".{0,200}") {
            let _ = Workload::parse(&value);
        }
    }
}
