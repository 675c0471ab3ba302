//! The pod annotations that carry a pod's report through the Kubernetes API — the annotation
//! transport writes them, the operator reads them — in one place: their names and the codec.

use std::collections::BTreeMap;

use super::{pod_state::parse_decimal, report::PodReport, routing::RoutingState};

/// Prefix of every routestate annotation; the operator's pod cache keeps only these.
pub const PREFIX: &str = "routestate.dev/";
/// The routing state the pod asks for (Ready | DenyNewCall | Shutdown, or the wire names).
pub const ROUTING: &str = "routestate.dev/routing-state";
/// The pod's load state (a non-negative integer).
pub const LOAD: &str = "routestate.dev/load";
/// The number of tasks waiting in the pod (a non-negative integer).
pub const WAITING: &str = "routestate.dev/waiting-tasks";

/// An annotation that does not parse; it is ignored (counts as absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnnotation {
    /// The annotation's name.
    pub annotation: &'static str,
    /// Its value.
    pub value: String,
    /// What it should have been.
    pub expected: &'static str,
}

/// The annotations that carry `report`.
pub fn encode(report: &PodReport) -> [(&'static str, String); 3] {
    [
        (LOAD, report.load_state.to_string()),
        (WAITING, report.waiting_tasks.to_string()),
        (ROUTING, report.routing.kube_name().to_owned()),
    ]
}

/// The report carried by a pod's annotations: absent or invalid annotations count as the
/// default (no load, nothing waiting, READY); each invalid one is returned so it can be reported.
/// Numbers are strict (digits only), so `+5`, ` 5` and `5.0` are reported rather than
/// half-accepted.
pub fn decode(annotations: &BTreeMap<String, String>) -> (PodReport, Vec<BadAnnotation>) {
    let mut bad = Vec::new();
    let mut number = |annotation: &'static str| {
        let value = annotations.get(annotation)?;
        let n = parse_decimal(value);
        if n.is_none() {
            bad.push(BadAnnotation { annotation, value: value.clone(), expected: "a non-negative integer" });
        }
        n
    };
    let load_state = number(LOAD).unwrap_or(0);
    let waiting_tasks = number(WAITING).unwrap_or(0);
    let routing = match annotations.get(ROUTING) {
        None => RoutingState::Ready,
        Some(value) => value.parse().unwrap_or_else(|_| {
            bad.push(BadAnnotation {
                annotation: ROUTING,
                value: value.clone(),
                expected: "Ready, DenyNewCall or Shutdown",
            });
            RoutingState::Ready
        }),
    };
    (PodReport { load_state, waiting_tasks, routing }, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn names_are_the_documented_ones() {
        assert_eq!([LOAD, WAITING, ROUTING].map(|a| a.starts_with(PREFIX)), [true; 3]);
        assert_eq!(
            encode(&PodReport { load_state: 100, waiting_tasks: 10, routing: RoutingState::DenyNewCall }),
            [(LOAD, "100".to_owned()), (WAITING, "10".to_owned()), (ROUTING, "DenyNewCall".to_owned())]
        );
    }

    #[test]
    fn absent_annotations_are_the_default_report() {
        assert_eq!(decode(&BTreeMap::new()), (PodReport::default(), vec![]));
        let (r, bad) = decode(&map(&[(ROUTING, "SHUTDOWN"), (LOAD, "007")]));
        assert_eq!((r.routing, r.load_state, r.waiting_tasks), (RoutingState::Shutdown, 7, 0));
        assert!(bad.is_empty());
    }

    #[test]
    fn invalid_annotations_are_named_and_ignored() {
        for value in ["", "-1", "+5", " 5", "5.0", "abc", "99999999999999999999999"] {
            let (r, bad) = decode(&map(&[(LOAD, value), (WAITING, "10")]));
            assert_eq!((r.load_state, r.waiting_tasks), (0, 10), "{value:?}");
            assert_eq!(
                bad,
                [BadAnnotation { annotation: LOAD, value: value.into(), expected: "a non-negative integer" }]
            );
        }
        let (r, bad) = decode(&map(&[(ROUTING, "Drain")]));
        assert_eq!(r.routing, RoutingState::Ready);
        assert_eq!(bad[0].annotation, ROUTING);
        assert_eq!(bad[0].expected, "Ready, DenyNewCall or Shutdown");
    }

    proptest! {
        #[test]
        fn reports_round_trip(l in any::<u64>(), w in any::<u64>(), r in 0u8..3) {
            let report = PodReport { load_state: l, waiting_tasks: w, routing: RoutingState::from_ordinal(r).unwrap() };
            let annotations: BTreeMap<String, String> =
                encode(&report).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            prop_assert_eq!(decode(&annotations), (report, vec![]));
        }
    }
}
