//! A pod's own report and the operator's floor (wire contract v1.1, §2.1).
//!
//! - A **report** is what a pod says about itself: its load state, its waiting tasks and the
//!   routing state it asks for. It reaches Redis either directly (the pod writes
//!   `sf:{<ns>:state:<svc>}report`) or through the pod's annotations, which the operator reads.
//! - The **floor** is what the operator knows about the pod from Kubernetes: whether it may be
//!   published at all (Ready, not removed), the least restrictive routing state it may have
//!   (terminating, spec overrides, the service-wide state) and the spec's load override. It is
//!   written to `sf:{<ns>:state:<svc>}floor` by the operator only.
//! - The published state is [`published`]: the most restrictive of the two routing states, and
//!   the override or else the report's weighted load. A report can never lift the floor.

use std::fmt;

use super::{
    load::{CpuFactor, weighted_load},
    pod_state::{BadTriple, parse_decimal, parse_triple, truncate},
    routing::RoutingState,
};

/// A pod's report: the raw inputs of its weighted load and the routing state it asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PodReport {
    /// Application-defined load state; larger means busier.
    pub load_state: u64,
    /// Tasks waiting in the pod's queues.
    pub waiting_tasks: u64,
    /// Whether the pod takes new users, keeps its users, or takes nothing.
    pub routing: RoutingState,
}

impl Default for PodReport {
    /// No load, nothing waiting, READY: what a pod that never reported counts as.
    fn default() -> Self {
        Self { load_state: 0, waiting_tasks: 0, routing: RoutingState::Ready }
    }
}

/// A report or a floor value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("pod report {value:?} is not of the form <loadState>-<waitingTasks>-<routingState>: {reason}")]
    Report { value: String, reason: &'static str },
    #[error("floor {value:?} is not of the form <routingState>[-<loadOverride>]: {reason}")]
    Floor { value: String, reason: &'static str },
}

impl PodReport {
    /// The wire encoding, `<loadState>-<waitingTasks>-<routingOrdinal>`.
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// Parses the wire encoding strictly (the grammar of pod states).
    pub fn parse(value: &str) -> Result<Self, ReportError> {
        let (load_state, waiting_tasks, routing) = parse_triple(value).map_err(|bad| {
            let reason = match bad {
                BadTriple::TooLong => "too long",
                BadTriple::Shape => "expected exactly three '-'-separated fields",
                BadTriple::First => "load state is not a non-negative integer",
                BadTriple::Second => "waiting tasks is not a non-negative integer",
                BadTriple::Routing => "routing state is not 0, 1 or 2",
            };
            ReportError::Report { value: truncate(value), reason }
        })?;
        Ok(Self { load_state, waiting_tasks, routing })
    }
}

impl fmt::Display for PodReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.load_state, self.waiting_tasks, self.routing.ordinal())
    }
}

/// What the operator allows a published pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Floor {
    /// The least restrictive routing state the pod may be published with.
    pub routing: RoutingState,
    /// The spec's load override: published as the weighted load, whatever the pod reports.
    pub load: Option<u64>,
}

impl Floor {
    /// The wire encoding, `<routingOrdinal>` or `<routingOrdinal>-<loadOverride>`.
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// Parses the wire encoding strictly.
    pub fn parse(value: &str) -> Result<Self, ReportError> {
        let bad = |reason| ReportError::Floor { value: truncate(value), reason };
        let (routing, load) = match value.split_once('-') {
            Some((r, l)) => (r, Some(l)),
            None => (value, None),
        };
        let routing = RoutingState::parse_ordinal(routing).map_err(|_| bad("routing state is not 0, 1 or 2"))?;
        let load = load
            .map(|l| parse_decimal(l).ok_or_else(|| bad("load override is not a non-negative integer")))
            .transpose()?;
        Ok(Self { routing, load })
    }
}

impl fmt::Display for Floor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.load {
            Some(l) => write!(f, "{}-{l}", self.routing.ordinal()),
            None => write!(f, "{}", self.routing.ordinal()),
        }
    }
}

/// What is published for a pod with `floor` and `report`: (weighted load, routing state).
/// `publish.lua` and `report.lua` compute exactly this (a test checks them against it).
pub fn published(floor: &Floor, report: &PodReport, cpu: CpuFactor) -> (u64, RoutingState) {
    let load = floor
        .load
        .map(|l| l.min(super::load::MAX_LOAD))
        .unwrap_or_else(|| weighted_load(cpu, report.waiting_tasks, report.load_state));
    (load, floor.routing.most_restrictive(report.routing))
}

#[cfg(test)]
mod tests {
    use super::*;
    use RoutingState::{DenyNewCall as D, Ready as R, Shutdown as S};
    use proptest::prelude::*;

    #[test]
    fn reports_and_floors_encode_the_wire_format() {
        let r = PodReport { load_state: 100, waiting_tasks: 10, routing: D };
        assert_eq!(r.encode(), "100-10-1");
        assert_eq!(PodReport::parse("100-10-1"), Ok(r));
        assert_eq!(PodReport::default().encode(), "0-0-0");
        assert_eq!(Floor { routing: S, load: None }.encode(), "2");
        assert_eq!(Floor { routing: R, load: Some(250) }.encode(), "0-250");
        assert_eq!(Floor::parse("0-250"), Ok(Floor { routing: R, load: Some(250) }));
        assert_eq!(Floor::parse("1"), Ok(Floor { routing: D, load: None }));
    }

    #[test]
    fn garbage_is_rejected_naming_the_value_and_the_part() {
        for (bad, part) in [
            ("", "three"),
            ("1-2", "three"),
            ("a-2-0", "load state"),
            ("1-b-0", "waiting tasks"),
            ("1-2-3", "routing state"),
            ("-1-2-0", "three"),
        ] {
            let e = PodReport::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains(part), "{bad:?}: {e}");
        }
        for (bad, part) in
            [("", "routing"), ("3", "routing"), ("0-", "load override"), ("0-x", "load override"), ("01", "routing")]
        {
            let e = Floor::parse(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")) && e.contains(part), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_floor_is_never_lifted() {
        // (floor, report) → published routing, every combination written out.
        let table = [(R, R, R), (R, D, D), (R, S, S), (D, R, D), (D, D, D), (D, S, S), (S, R, S), (S, D, S), (S, S, S)];
        for (floor, report, want) in table {
            let got = published(
                &Floor { routing: floor, load: None },
                &PodReport { routing: report, ..Default::default() },
                CpuFactor::DEFAULT,
            );
            assert_eq!(got.1, want, "floor {floor:?} report {report:?}");
        }
    }

    #[test]
    fn the_override_replaces_the_reported_load() {
        let report = PodReport { load_state: 100, waiting_tasks: 10, routing: R };
        assert_eq!(published(&Floor { routing: R, load: None }, &report, CpuFactor::DEFAULT).0, 37);
        assert_eq!(published(&Floor { routing: R, load: Some(250) }, &report, CpuFactor::DEFAULT).0, 250);
        let huge = Floor { routing: R, load: Some(u64::MAX) };
        assert_eq!(published(&huge, &report, CpuFactor::DEFAULT).0, crate::MAX_LOAD);
    }

    proptest! {
        #[test]
        fn round_trips(l in any::<u64>(), w in any::<u64>(), r in 0u8..3, o in proptest::option::of(any::<u64>())) {
            let routing = RoutingState::from_ordinal(r).unwrap();
            let report = PodReport { load_state: l, waiting_tasks: w, routing };
            prop_assert_eq!(PodReport::parse(&report.encode()), Ok(report));
            let floor = Floor { routing, load: o };
            prop_assert_eq!(Floor::parse(&floor.encode()), Ok(floor));
        }

        #[test]
        fn parsing_never_panics(value in ".{0,80}") {
            let _ = PodReport::parse(&value);
            let _ = Floor::parse(&value);
        }
    }
}
