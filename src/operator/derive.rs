//! Pure derivation: from a RouteState's spec, its StatefulSet's replicas and the facts about
//! its pods, compute what to publish to Redis, the status, the workload aggregate and the
//! findings that become Warning Events. No I/O, no clock: `now` is a parameter.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};

use super::crd::{PodSummary, RouteStateSpec, RouteStateStatus, RoutingStateName};
use crate::core::{RoutingState, Workload, WorkloadState, pod_index, pod_index::POD_INDEX_LABEL, weighted_load};

/// Pod annotation with the routing state the application asks for (Ready | DenyNewCall | Shutdown).
pub const ANNOTATION_ROUTING: &str = "routestate.dev/routing-state";
/// Pod annotation with the application's load state (a non-negative integer).
pub const ANNOTATION_LOAD: &str = "routestate.dev/load";
/// Pod annotation with the number of tasks waiting in the application (a non-negative integer).
pub const ANNOTATION_WAITING: &str = "routestate.dev/waiting-tasks";
/// Prefix of every annotation the operator reads; the controller's pod cache keeps only these.
pub const ANNOTATION_PREFIX: &str = "routestate.dev/";

/// Condition types of `RouteState.status.conditions`.
pub const CONDITION_READY: &str = "Ready";
/// The last publish of this service reached Redis.
pub const CONDITION_REDIS_SYNCED: &str = "RedisSynced";
/// Pod 0 exists and is Ready, so the workload aggregate is written.
pub const CONDITION_LEADER: &str = "LeaderAvailable";

/// What the operator needs to know about one pod of the target StatefulSet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    /// Pod name.
    pub name: String,
    /// StatefulSet index.
    pub index: u32,
    /// The pod's Ready condition is True.
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// The pod's `routestate.dev/*` annotations.
    pub annotations: BTreeMap<String, String>,
}

/// Something wrong with a pod's input that does not stop the reconcile; it becomes a Warning Event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Finding {
    /// An annotation value could not be parsed; it is treated as absent.
    #[error("pod {pod}: annotation {annotation}={value:?} is invalid ({expected}); ignoring it")]
    MalformedAnnotation { pod: String, annotation: &'static str, value: String, expected: &'static str },
    /// The pod's index could not be determined; the pod is not published.
    #[error("{0}; the pod is not published")]
    BadPodIndex(#[from] pod_index::PodIndexError),
    /// Two pods claim the same index; the first by name is used.
    #[error("pods {first} and {second} both have index {index}; publishing {first} only")]
    DuplicateIndex { index: u32, first: String, second: String },
}

impl Finding {
    /// The pod the finding is about.
    pub fn pod(&self) -> &str {
        match self {
            Finding::MalformedAnnotation { pod, .. } => pod,
            Finding::BadPodIndex(e) => match e {
                pod_index::PodIndexError::BadLabel { pod, .. }
                | pod_index::PodIndexError::Mismatch { pod, .. }
                | pod_index::PodIndexError::NoOrdinal { pod } => pod,
            },
            Finding::DuplicateIndex { second, .. } => second,
        }
    }

    /// The Event reason for this finding.
    pub fn reason(&self) -> &'static str {
        match self {
            Finding::MalformedAnnotation { .. } => "MalformedAnnotation",
            Finding::BadPodIndex(_) => "BadPodIndex",
            Finding::DuplicateIndex { .. } => "DuplicateIndex",
        }
    }
}

/// Is `pod` controlled by the StatefulSet `statefulset`? Only such pods are published.
pub fn owned_by(pod: &Pod, statefulset: &str) -> bool {
    pod.metadata.owner_references.as_deref().unwrap_or_default().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "StatefulSet"
            && o.api_version.starts_with("apps/")
            && o.name == statefulset
    })
}

/// The facts of a pod of `statefulset`, or a finding when its index cannot be determined.
pub fn pod_facts(pod: &Pod, statefulset: &str) -> Result<PodFacts, Finding> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let label = pod.metadata.labels.as_ref().and_then(|l| l.get(POD_INDEX_LABEL)).map(String::as_str);
    let index = pod_index(&name, label, Some(statefulset))?;
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let annotations = pod
        .metadata
        .annotations
        .as_ref()
        .map(|a| {
            a.iter().filter(|(k, _)| k.starts_with(ANNOTATION_PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect()
        })
        .unwrap_or_default();
    Ok(PodFacts { name, index, ready, terminating: pod.metadata.deletion_timestamp.is_some(), annotations })
}

/// The lifecycle rule: what a pod with `effective` routing publishes, `None` = field removed.
///
/// | pod | published |
/// |---|---|
/// | Ready, not terminating | `effective` |
/// | not Ready, not terminating | removed |
/// | terminating | DENY_NEW_CALL, or SHUTDOWN when that is effective (heartbeated until gone) |
pub fn published_routing(effective: RoutingState, ready: bool, terminating: bool) -> Option<RoutingState> {
    if terminating {
        Some(effective.most_restrictive(RoutingState::DenyNewCall))
    } else if ready {
        Some(effective)
    } else {
        None
    }
}

/// One pod's published value, before the heartbeat timestamp is added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPublish {
    /// The published routing state.
    pub routing: RoutingState,
    /// The published weighted load.
    pub weighted_load: u64,
}

/// Everything derived for one RouteState.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// Fields of the state hash: pod index → value. Indexes absent here are removed from Redis.
    pub publish: BTreeMap<u32, PodPublish>,
    /// The status' per-pod summary, by index.
    pub pods: Vec<PodSummary>,
    /// Problems with individual pods (Warning Events).
    pub findings: Vec<Finding>,
    /// Desired replicas.
    pub replicas: u32,
    /// Pods Ready and not terminating.
    pub ready_pods: u32,
    /// Pods published READY.
    pub routable_pods: u32,
    /// Pods published DENY_NEW_CALL.
    pub draining_pods: u32,
    /// Pod 0 while it exists, is Ready and is not terminating.
    pub leader: Option<String>,
    /// Why there is no leader, when there is none.
    pub leader_missing: Option<String>,
    /// The workload aggregate to write on behalf of pod 0 (`updated_at_millis` is 0: the
    /// publisher stamps it with Redis time), or `None` while pod 0 is missing or not Ready.
    pub workload: Option<Workload>,
}

fn annotation_routing(pod: &PodFacts, findings: &mut Vec<Finding>) -> Option<RoutingState> {
    let value = pod.annotations.get(ANNOTATION_ROUTING)?;
    match value.parse::<RoutingState>() {
        Ok(state) => Some(state),
        Err(_) => {
            findings.push(Finding::MalformedAnnotation {
                pod: pod.name.clone(),
                annotation: ANNOTATION_ROUTING,
                value: value.clone(),
                expected: "Ready, DenyNewCall or Shutdown",
            });
            None
        }
    }
}

fn annotation_number(pod: &PodFacts, annotation: &'static str, findings: &mut Vec<Finding>) -> Option<u64> {
    let value = pod.annotations.get(annotation)?;
    // Strict: digits only, so "+5", " 5" and "5.0" are reported rather than half-accepted.
    if !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = value.parse::<u64>()
    {
        return Some(n);
    }
    findings.push(Finding::MalformedAnnotation {
        pod: pod.name.clone(),
        annotation,
        value: value.clone(),
        expected: "a non-negative integer",
    });
    None
}

/// The weighted load of a pod: the spec override (which counts as both the load state and the
/// waiting tasks, so it is published as is), else the annotations, else 0.
pub fn pod_load(cpu_factor: f64, override_load: Option<u64>, pod: &PodFacts, findings: &mut Vec<Finding>) -> u64 {
    let load = annotation_number(pod, ANNOTATION_LOAD, findings);
    let waiting = annotation_number(pod, ANNOTATION_WAITING, findings);
    match override_load {
        Some(l) => weighted_load(cpu_factor, l, l),
        None => weighted_load(cpu_factor, waiting.unwrap_or(0), load.unwrap_or(0)),
    }
}

/// Derives what to publish for the pods of a StatefulSet with `replicas` desired replicas.
/// `pods` may come in any order and may hold pods above `replicas` (still terminating).
pub fn derive(spec: &RouteStateSpec, replicas: u32, pods: &[PodFacts]) -> Derived {
    let mut findings = Vec::new();
    let overrides: BTreeMap<u32, _> = spec.pods.iter().map(|o| (o.index, o)).collect();
    let service = RoutingState::from(spec.routing_state);

    let mut by_index: BTreeMap<u32, &PodFacts> = BTreeMap::new();
    let mut sorted: Vec<&PodFacts> = pods.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for pod in sorted {
        if let Some(first) = by_index.get(&pod.index) {
            findings.push(Finding::DuplicateIndex {
                index: pod.index,
                first: first.name.clone(),
                second: pod.name.clone(),
            });
            continue;
        }
        by_index.insert(pod.index, pod);
    }

    let mut d = Derived {
        publish: BTreeMap::new(),
        pods: Vec::new(),
        findings: Vec::new(),
        replicas,
        ready_pods: 0,
        routable_pods: 0,
        draining_pods: 0,
        leader: None,
        leader_missing: None,
        workload: None,
    };
    for (&index, pod) in &by_index {
        let over = overrides.get(&index);
        let mut effective = service;
        if let Some(r) = over.and_then(|o| o.routing_state) {
            effective = effective.most_restrictive(r.into());
        }
        if let Some(r) = annotation_routing(pod, &mut findings) {
            effective = effective.most_restrictive(r);
        }
        let load = pod_load(spec.cpu_factor, over.and_then(|o| o.load_state), pod, &mut findings);
        let published = published_routing(effective, pod.ready, pod.terminating);
        if let Some(routing) = published {
            d.publish.insert(index, PodPublish { routing, weighted_load: load });
            match routing {
                RoutingState::Ready => d.routable_pods += 1,
                RoutingState::DenyNewCall => d.draining_pods += 1,
                RoutingState::Shutdown => {}
            }
        }
        if pod.ready && !pod.terminating {
            d.ready_pods += 1;
        }
        d.pods.push(PodSummary {
            index,
            name: pod.name.clone(),
            ready: pod.ready,
            routing_state: published.map(RoutingStateName::from),
        });
    }

    match by_index.get(&0) {
        Some(p) if p.ready && !p.terminating => d.leader = Some(p.name.clone()),
        Some(p) if p.terminating => d.leader_missing = Some(format!("pod {} (index 0) is terminating", p.name)),
        Some(p) => d.leader_missing = Some(format!("pod {} (index 0) is not Ready", p.name)),
        None => d.leader_missing = Some("no pod with index 0 exists".into()),
    }
    if let Some(leader) = &d.leader {
        let all_ready = replicas > 0 && d.ready_pods >= replicas;
        d.workload = Some(Workload {
            state: if all_ready && d.routable_pods > 0 { WorkloadState::Ready } else { WorkloadState::NotReady },
            leader: leader.clone(),
            replicas,
            ready_pods: d.ready_pods,
            routable_pods: d.routable_pods,
            draining_pods: d.draining_pods,
            total_weighted_load: d.publish.values().map(|p| p.weighted_load).fold(0u64, u64::saturating_add),
            updated_at_millis: 0,
        });
    }
    d.findings = findings;
    d
}

/// Routing changes between two publish sets: (index, before, after), `None` = not published.
pub fn routing_changes(
    before: &BTreeMap<u32, PodPublish>,
    after: &BTreeMap<u32, PodPublish>,
) -> Vec<(u32, Option<RoutingState>, Option<RoutingState>)> {
    let mut indexes: Vec<u32> = before.keys().chain(after.keys()).copied().collect();
    indexes.sort_unstable();
    indexes.dedup();
    indexes
        .into_iter()
        .filter_map(|i| {
            let (b, a) = (before.get(&i).map(|p| p.routing), after.get(&i).map(|p| p.routing));
            (b != a).then_some((i, b, a))
        })
        .collect()
}

/// Tri-state condition status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CondStatus {
    /// "True"
    True,
    /// "False"
    False,
    /// "Unknown"
    Unknown,
}

impl CondStatus {
    fn as_str(self) -> &'static str {
        match self {
            CondStatus::True => "True",
            CondStatus::False => "False",
            CondStatus::Unknown => "Unknown",
        }
    }
}

/// A condition as computed, before merging with the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCondition {
    /// Condition type.
    pub type_: &'static str,
    /// Status.
    pub status: CondStatus,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
}

/// Merges computed conditions into the previous ones: `lastTransitionTime` moves to `now` only
/// when a condition's status changes (or it is new); conditions of other types are kept.
pub fn merge_conditions(
    old: &[Condition],
    new: &[NewCondition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = old.iter().filter(|c| !new.iter().any(|n| n.type_ == c.type_)).cloned().collect();
    for n in new {
        let prev = old.iter().find(|c| c.type_ == n.type_);
        let last_transition_time = match prev {
            Some(p) if p.status == n.status.as_str() => p.last_transition_time.clone(),
            _ => now.clone(),
        };
        out.push(Condition {
            type_: n.type_.to_owned(),
            status: n.status.as_str().to_owned(),
            reason: n.reason.to_owned(),
            message: n.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// Whether the last publish of a service reached Redis.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SyncState {
    /// Not published yet (or this replica is not the lease holder).
    #[default]
    Pending,
    /// The last publish succeeded.
    Synced,
    /// The last publish failed with this message.
    Failed(String),
}

/// The status for a RouteState: `derived` is `None` when its StatefulSet does not exist.
pub fn compute_status(
    old: Option<&RouteStateStatus>,
    generation: Option<i64>,
    statefulset: &str,
    service: &str,
    derived: Option<&Derived>,
    sync: &SyncState,
    now: &Time,
) -> RouteStateStatus {
    let redis = match sync {
        SyncState::Pending => NewCondition {
            type_: CONDITION_REDIS_SYNCED,
            status: CondStatus::Unknown,
            reason: "Pending",
            message: "not published yet".into(),
        },
        SyncState::Synced => NewCondition {
            type_: CONDITION_REDIS_SYNCED,
            status: CondStatus::True,
            reason: "Published",
            message: format!("pod states of service {service} are published"),
        },
        SyncState::Failed(e) => NewCondition {
            type_: CONDITION_REDIS_SYNCED,
            status: CondStatus::False,
            reason: "PublishFailed",
            message: e.clone(),
        },
    };
    let (ready, leader) = match derived {
        None => {
            let message = format!("StatefulSet {statefulset} does not exist");
            (
                NewCondition {
                    type_: CONDITION_READY,
                    status: CondStatus::False,
                    reason: "StatefulSetNotFound",
                    message: message.clone(),
                },
                NewCondition {
                    type_: CONDITION_LEADER,
                    status: CondStatus::False,
                    reason: "StatefulSetNotFound",
                    message,
                },
            )
        }
        Some(d) => {
            let ready = match sync {
                SyncState::Synced => NewCondition {
                    type_: CONDITION_READY,
                    status: CondStatus::True,
                    reason: "Published",
                    message: format!("{} of {} pods published", d.publish.len(), d.replicas),
                },
                SyncState::Pending => NewCondition {
                    type_: CONDITION_READY,
                    status: CondStatus::Unknown,
                    reason: "Pending",
                    message: "waiting for the first publish to Redis".into(),
                },
                SyncState::Failed(_) => NewCondition {
                    type_: CONDITION_READY,
                    status: CondStatus::False,
                    reason: "RedisNotSynced",
                    message: "the last publish to Redis failed (see RedisSynced)".into(),
                },
            };
            let leader = match (&d.leader, &d.leader_missing) {
                (Some(name), _) => NewCondition {
                    type_: CONDITION_LEADER,
                    status: CondStatus::True,
                    reason: "Pod0Ready",
                    message: format!("pod {name} is Ready; the workload aggregate is written on its behalf"),
                },
                (None, why) => NewCondition {
                    type_: CONDITION_LEADER,
                    status: CondStatus::False,
                    reason: "Pod0Unavailable",
                    message: format!(
                        "{}; the workload aggregate is not refreshed",
                        why.as_deref().unwrap_or("pod 0 is unavailable")
                    ),
                },
            };
            (ready, leader)
        }
    };
    let old_conditions = old.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let conditions = merge_conditions(old_conditions, &[ready, redis, leader], generation, now);
    let d = derived;
    RouteStateStatus {
        observed_generation: generation,
        conditions,
        stateful_set: Some(statefulset.to_owned()),
        service_name: Some(service.to_owned()),
        replicas: d.map_or(0, |d| d.replicas),
        ready_pods: d.map_or(0, |d| d.ready_pods),
        ready_summary: Some(format!("{}/{}", d.map_or(0, |d| d.ready_pods), d.map_or(0, |d| d.replicas))),
        routable_pods: d.map_or(0, |d| d.routable_pods),
        draining_pods: d.map_or(0, |d| d.draining_pods),
        leader: d.and_then(|d| d.leader.clone()),
        workload_state: Some(match d.and_then(|d| d.workload.as_ref()) {
            Some(w) if w.state == WorkloadState::Ready => "Ready".into(),
            Some(_) => "NotReady".into(),
            None => "Unknown".into(),
        }),
        pods: d.map(|d| d.pods.clone()).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::PodOverride;
    use RoutingState::{DenyNewCall as D, Ready as R, Shutdown as S};

    fn spec(routing: RoutingStateName, pods: Vec<PodOverride>) -> RouteStateSpec {
        RouteStateSpec {
            stateful_set: None,
            service_name: None,
            routing_state: routing,
            pods,
            cpu_factor: 0.7,
            update_period_seconds: 10,
        }
    }

    fn pod(index: u32, ready: bool, terminating: bool, ann: &[(&str, &str)]) -> PodFacts {
        PodFacts {
            name: format!("web-{index}"),
            index,
            ready,
            terminating,
            annotations: ann.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn over(index: u32, routing: Option<RoutingStateName>, load: Option<u64>) -> PodOverride {
        PodOverride { index, routing_state: routing, load_state: load }
    }

    #[test]
    fn lifecycle_table_is_exhaustive() {
        // (effective, ready, terminating) → published; every combination, written out.
        let table = [
            (R, false, false, None),
            (R, true, false, Some(R)),
            (R, false, true, Some(D)),
            (R, true, true, Some(D)),
            (D, false, false, None),
            (D, true, false, Some(D)),
            (D, false, true, Some(D)),
            (D, true, true, Some(D)),
            (S, false, false, None),
            (S, true, false, Some(S)),
            (S, false, true, Some(S)),
            (S, true, true, Some(S)),
        ];
        for (effective, ready, terminating, want) in table {
            let got = published_routing(effective, ready, terminating);
            assert_eq!(got, want, "effective {effective:?} ready {ready} terminating {terminating}");
        }
    }

    #[test]
    fn most_restrictive_wins_across_spec_override_and_annotation() {
        use RoutingStateName::{DenyNewCall as ND, Ready as NR, Shutdown as NS};
        // The model, stated differently from the code's `max`: SHUTDOWN if any source asks for
        // it, else DENY_NEW_CALL if any asks for it, else READY.
        let model = |sources: &[&str]| {
            if sources.iter().any(|s| s.eq_ignore_ascii_case("shutdown")) {
                S
            } else if sources.iter().any(|s| matches!(*s, "DenyNewCall" | "DENY_NEW_CALL")) {
                D
            } else {
                R
            }
        };
        let name = |n: RoutingStateName| match n {
            NR => "Ready",
            ND => "DenyNewCall",
            NS => "Shutdown",
        };
        for svc in [NR, ND, NS] {
            for o in [None, Some(NR), Some(ND), Some(NS)] {
                for ann in [None, Some("Ready"), Some("DenyNewCall"), Some("Shutdown"), Some("SHUTDOWN")] {
                    let anns: Vec<(&str, &str)> = ann.map(|a| (ANNOTATION_ROUTING, a)).into_iter().collect();
                    let d = derive(
                        &spec(svc, o.map(|o| over(0, Some(o), None)).into_iter().collect()),
                        1,
                        &[pod(0, true, false, &anns)],
                    );
                    let sources: Vec<&str> = [Some(name(svc)), o.map(name), ann].into_iter().flatten().collect();
                    assert_eq!(d.publish[&0].routing, model(&sources), "svc {svc:?} override {o:?} annotation {ann:?}");
                    assert!(d.findings.is_empty());
                }
            }
        }
    }

    #[test]
    fn override_applies_to_its_index_only() {
        let d = derive(
            &spec(RoutingStateName::Ready, vec![over(1, Some(RoutingStateName::DenyNewCall), None)]),
            3,
            &[pod(0, true, false, &[]), pod(1, true, false, &[]), pod(2, true, false, &[])],
        );
        let routing: Vec<_> = d.publish.values().map(|p| p.routing).collect();
        assert_eq!(routing, [R, D, R]);
        assert_eq!((d.routable_pods, d.draining_pods, d.ready_pods), (2, 1, 3));
    }

    #[test]
    fn not_ready_pods_are_removed_and_terminating_pods_drain() {
        let d = derive(
            &spec(RoutingStateName::Ready, vec![]),
            3,
            &[pod(0, true, false, &[]), pod(1, false, false, &[]), pod(2, true, true, &[])],
        );
        assert_eq!(d.publish.keys().copied().collect::<Vec<_>>(), [0, 2]);
        assert_eq!(d.publish[&2].routing, D);
        assert_eq!(d.ready_pods, 1);
        assert_eq!(d.pods[1], PodSummary { index: 1, name: "web-1".into(), ready: false, routing_state: None });
        assert_eq!(d.pods[2].routing_state, Some(RoutingStateName::DenyNewCall));
    }

    #[test]
    fn load_comes_from_override_else_annotations_else_zero() {
        let mut f = Vec::new();
        let p = pod(0, true, false, &[(ANNOTATION_LOAD, "100"), (ANNOTATION_WAITING, "10")]);
        // 0.7 × 10 + 0.3 × 100 = 37
        assert_eq!(pod_load(0.7, None, &p, &mut f), 37);
        assert_eq!(pod_load(0.7, Some(250), &p, &mut f), 250);
        assert_eq!(pod_load(0.0, None, &p, &mut f), 100);
        assert_eq!(pod_load(1.0, None, &p, &mut f), 10);
        assert_eq!(pod_load(0.7, None, &pod(0, true, false, &[]), &mut f), 0);
        assert_eq!(pod_load(0.7, None, &pod(0, true, false, &[(ANNOTATION_LOAD, "10")]), &mut f), 3);
        assert!(f.is_empty());
    }

    #[test]
    fn malformed_annotations_are_findings_and_treated_as_absent() {
        for bad in ["", "-1", "+5", " 5", "5.0", "abc", "99999999999999999999999"] {
            let p = pod(1, true, false, &[(ANNOTATION_LOAD, bad), (ANNOTATION_WAITING, "10")]);
            let d = derive(&spec(RoutingStateName::Ready, vec![]), 2, &[p]);
            assert_eq!(d.publish[&1].weighted_load, 7, "value {bad:?}");
            assert_eq!(
                d.findings,
                [Finding::MalformedAnnotation {
                    pod: "web-1".into(),
                    annotation: ANNOTATION_LOAD,
                    value: bad.into(),
                    expected: "a non-negative integer"
                }]
            );
            let msg = d.findings[0].to_string();
            assert!(msg.contains("web-1") && msg.contains(&format!("{bad:?}")), "{msg}");
        }
        let d = derive(
            &spec(RoutingStateName::DenyNewCall, vec![]),
            1,
            &[pod(0, true, false, &[(ANNOTATION_ROUTING, "Drain")])],
        );
        assert_eq!(d.publish[&0].routing, D);
        assert_eq!(d.findings.len(), 1);
        assert_eq!(d.findings[0].reason(), "MalformedAnnotation");
        assert!(d.findings[0].to_string().contains("\"Drain\""));
    }

    #[test]
    fn pod_facts_reads_index_readiness_and_only_our_annotations() {
        let p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-2", "namespace": "ns", "labels": {POD_INDEX_LABEL: "2"},
                "annotations": {"routestate.dev/load": "5", "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                "deletionTimestamp": "2026-01-01T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "web", "uid": "u", "controller": true}]},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap();
        assert!(owned_by(&p, "web"));
        assert!(!owned_by(&p, "other"));
        let f = pod_facts(&p, "web").unwrap();
        assert_eq!((f.index, f.ready, f.terminating), (2, true, true));
        assert_eq!(f.annotations.keys().collect::<Vec<_>>(), ["routestate.dev/load"]);

        let p: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "web-7"}})).unwrap();
        let f = pod_facts(&p, "web").unwrap();
        assert_eq!((f.index, f.ready, f.terminating), (7, false, false));

        let p: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "web-x"}})).unwrap();
        let bad = pod_facts(&p, "web").unwrap_err();
        assert!(matches!(bad, Finding::BadPodIndex(_)));
        assert_eq!((bad.pod(), bad.reason()), ("web-x", "BadPodIndex"));
        let p: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "web-1", "labels": {POD_INDEX_LABEL: "2"}}}),
        )
        .unwrap();
        assert!(pod_facts(&p, "web").unwrap_err().to_string().contains("disagree"));
    }

    #[test]
    fn duplicate_indexes_publish_the_first_by_name() {
        let mut a = pod(0, true, false, &[]);
        a.name = "web-0".into();
        let mut b = pod(0, true, false, &[]);
        b.name = "web-0b".into();
        let d = derive(&spec(RoutingStateName::Ready, vec![]), 1, &[b, a]);
        assert_eq!(d.publish.len(), 1);
        assert_eq!(d.pods[0].name, "web-0");
        assert!(matches!(&d.findings[..], [Finding::DuplicateIndex { index: 0, .. }]));
        assert_eq!(d.findings[0].pod(), "web-0b");
    }

    #[test]
    fn leader_and_workload_follow_pod_zero() {
        let s = spec(RoutingStateName::Ready, vec![]);
        let d = derive(
            &s,
            3,
            &[pod(0, true, false, &[(ANNOTATION_LOAD, "10")]), pod(1, true, false, &[]), pod(2, true, false, &[])],
        );
        assert_eq!(d.leader.as_deref(), Some("web-0"));
        let w = d.workload.unwrap();
        assert_eq!(w.state, WorkloadState::Ready);
        assert_eq!((w.replicas, w.ready_pods, w.routable_pods, w.total_weighted_load), (3, 3, 3, 3));

        let d = derive(&s, 3, &[pod(0, true, false, &[]), pod(1, true, false, &[])]);
        assert_eq!(d.workload.unwrap().state, WorkloadState::NotReady);

        let d = derive(&spec(RoutingStateName::DenyNewCall, vec![]), 1, &[pod(0, true, false, &[])]);
        assert_eq!(d.workload.unwrap().state, WorkloadState::NotReady, "no pod takes new users");

        for (pods, why) in [
            (vec![pod(1, true, false, &[])], "no pod with index 0"),
            (vec![pod(0, false, false, &[])], "not Ready"),
            (vec![pod(0, true, true, &[])], "terminating"),
        ] {
            let d = derive(&s, 2, &pods);
            assert_eq!(d.leader, None);
            assert!(d.workload.is_none());
            assert!(d.leader_missing.as_deref().unwrap().contains(why), "{:?}", d.leader_missing);
        }
    }

    #[test]
    fn routing_changes_lists_transitions_only() {
        let p = |r| PodPublish { routing: r, weighted_load: 0 };
        let before = BTreeMap::from([(0, p(R)), (1, p(R)), (2, p(R))]);
        let after = BTreeMap::from([(0, PodPublish { routing: R, weighted_load: 9 }), (1, p(D)), (3, p(R))]);
        assert_eq!(routing_changes(&before, &after), [(1, Some(R), Some(D)), (2, Some(R), None), (3, None, Some(R))]);
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn conditions_move_transition_time_only_on_status_change() {
        let c = |status, reason: &'static str, msg: &str| NewCondition {
            type_: CONDITION_READY,
            status,
            reason,
            message: msg.into(),
        };
        let first = merge_conditions(&[], &[c(CondStatus::Unknown, "Pending", "a")], Some(1), &t(100));
        assert_eq!(first[0].last_transition_time, t(100));
        let same = merge_conditions(&first, &[c(CondStatus::Unknown, "Pending", "other message")], Some(2), &t(200));
        assert_eq!(same[0].last_transition_time, t(100), "same status keeps the time");
        assert_eq!((same[0].message.as_str(), same[0].observed_generation), ("other message", Some(2)));
        let flipped = merge_conditions(&same, &[c(CondStatus::True, "Published", "b")], Some(2), &t(300));
        assert_eq!(flipped[0].last_transition_time, t(300));
        assert_eq!(flipped[0].status, "True");
        // Conditions of other types survive, output is sorted by type.
        let other = Condition { type_: "Custom".into(), ..flipped[0].clone() };
        let merged =
            merge_conditions(&[other, flipped[0].clone()], &[c(CondStatus::True, "Published", "b")], Some(2), &t(400));
        assert_eq!(merged.iter().map(|c| c.type_.as_str()).collect::<Vec<_>>(), ["Custom", "Ready"]);
        assert_eq!(merged[1].last_transition_time, t(300));
    }

    #[test]
    fn status_is_stable_when_nothing_changes() {
        let s = spec(RoutingStateName::Ready, vec![]);
        let d = derive(&s, 2, &[pod(0, true, false, &[]), pod(1, true, false, &[(ANNOTATION_LOAD, "5")])]);
        let st1 = compute_status(None, Some(1), "web", "web", Some(&d), &SyncState::Synced, &t(100));
        // A load change alone does not change the status (loads are not in it).
        let d2 = derive(&s, 2, &[pod(0, true, false, &[]), pod(1, true, false, &[(ANNOTATION_LOAD, "50")])]);
        let st2 = compute_status(Some(&st1), Some(1), "web", "web", Some(&d2), &SyncState::Synced, &t(200));
        assert_eq!(st1, st2);
        assert_eq!(st1.ready_summary.as_deref(), Some("2/2"));
        assert_eq!(st1.leader.as_deref(), Some("web-0"));
        assert_eq!(st1.workload_state.as_deref(), Some("Ready"));
        let cond =
            |st: &RouteStateStatus, ty: &str| st.conditions.iter().find(|c| c.type_ == ty).unwrap().status.clone();
        assert_eq!(cond(&st1, CONDITION_READY), "True");
        assert_eq!(cond(&st1, CONDITION_LEADER), "True");

        // Pod 0 gone: LeaderAvailable False with a reason, workload Unknown.
        let d3 = derive(&s, 2, &[pod(1, true, false, &[])]);
        let st3 = compute_status(Some(&st2), Some(1), "web", "web", Some(&d3), &SyncState::Synced, &t(300));
        assert_eq!(cond(&st3, CONDITION_LEADER), "False");
        assert_eq!(st3.workload_state.as_deref(), Some("Unknown"));
        assert_eq!(st3.leader, None);

        let missing = compute_status(None, Some(1), "nope", "nope", None, &SyncState::Pending, &t(1));
        assert_eq!(cond(&missing, CONDITION_READY), "False");
        assert_eq!(cond(&missing, CONDITION_REDIS_SYNCED), "Unknown");
        let failed = compute_status(None, Some(1), "web", "web", Some(&d), &SyncState::Failed("boom".into()), &t(1));
        assert_eq!(cond(&failed, CONDITION_READY), "False");
        assert_eq!(cond(&failed, CONDITION_REDIS_SYNCED), "False");
    }
}
