//! Pure derivation: from a RouteState's spec, its StatefulSet's replicas and the facts about
//! its pods, compute what to publish to Redis, the status, the workload aggregate and the
//! findings that become Warning Events. No I/O, no clock: `now` is a parameter.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
};

use super::crd::{PodSummary, RouteStateSpec, RouteStateStatus, RoutingStateName};
use crate::core::{
    CpuFactor, Floor, PodPlan, RoutingState, ServicePlan, WorkloadPlan, WorkloadState, annotations, pod_index,
    pod_index::POD_INDEX_LABEL,
};

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
    BadPodIndex(pod_index::PodIndexError),
    /// Two pods claim the same index; the first by name is used.
    #[error("pods {first} and {second} both have index {index}; publishing {first} only")]
    DuplicateIndex { index: u32, first: String, second: String },
}

// Not a `#[source]`: the finding's message already says it.
impl From<pod_index::PodIndexError> for Finding {
    fn from(e: pod_index::PodIndexError) -> Self {
        Finding::BadPodIndex(e)
    }
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

/// The StatefulSet controlling `pod` (its controller owner reference of kind `apps/*`
/// StatefulSet), if any: only such pods are published, under that StatefulSet.
pub fn controlling_statefulset(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_deref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == "StatefulSet" && o.api_version.starts_with("apps/"))
        .map(|o| o.name.as_str())
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
            a.iter().filter(|(k, _)| k.starts_with(annotations::PREFIX)).map(|(k, v)| (k.clone(), v.clone())).collect()
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

/// Everything derived for one RouteState.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// The published pods: index → the operator's floor and its view of the pod's report (from
    /// the annotations). Indexes absent here are removed from Redis.
    pub publish: BTreeMap<u32, PodPlan>,
    /// The status' per-pod summary, by index.
    pub pods: Vec<PodSummary>,
    /// Problems with individual pods (Warning Events).
    pub findings: Vec<Finding>,
    /// Desired replicas.
    pub replicas: u32,
    /// Pods Ready and not terminating.
    pub ready_pods: u32,
    /// Pods READY as far as the operator knows (floor and annotations; a pod's direct report may
    /// still drain it: the status counts what was published once it has been).
    pub routable_pods: u32,
    /// Pods DENY_NEW_CALL as far as the operator knows.
    pub draining_pods: u32,
    /// Pod 0 while it exists, is Ready and is not terminating.
    pub leader: Option<String>,
    /// Why there is no leader, when there is none.
    pub leader_missing: Option<String>,
    /// The inputs of the workload aggregate written on behalf of pod 0, or `None` while pod 0
    /// is missing or not Ready.
    pub workload: Option<WorkloadPlan>,
}

impl Derived {
    /// Nothing to publish, for a StatefulSet of `replicas` desired replicas without pods.
    pub fn empty(replicas: u32) -> Self {
        Derived {
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
        }
    }

    /// The write plan for service `service` of namespace `namespace`.
    pub fn plan(&self, namespace: &str, service: &str, spec: &RouteStateSpec) -> ServicePlan {
        ServicePlan {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            period_secs: spec.period_secs(),
            cpu_factor: CpuFactor::from_f64(spec.cpu_factor),
            replicas: self.replicas,
            pods: self.publish.clone(),
            workload: self.workload.clone(),
        }
    }
}

/// The routing state a pod is expected to be published with: its floor and its report, the
/// most restrictive wins (what `publish.lua` computes).
pub fn expected_routing(pod: &PodPlan) -> RoutingState {
    pod.floor.routing.most_restrictive(pod.report.routing)
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

    let mut d = Derived::empty(replicas);
    for (&index, pod) in &by_index {
        let over = overrides.get(&index);
        // The floor: what Kubernetes and the spec say (the pod's own report cannot lift it).
        let mut ceiling = service;
        if let Some(r) = over.and_then(|o| o.routing_state) {
            ceiling = ceiling.most_restrictive(r.into());
        }
        let (report, bad) = annotations::decode(&pod.annotations);
        findings.extend(bad.into_iter().map(|b| Finding::MalformedAnnotation {
            pod: pod.name.clone(),
            annotation: b.annotation,
            value: b.value,
            expected: b.expected,
        }));
        let floor = published_routing(ceiling, pod.ready, pod.terminating)
            .map(|routing| Floor { routing, load: over.and_then(|o| o.load_state) });
        let expected = floor.map(|floor| {
            let plan = PodPlan { floor, report };
            d.publish.insert(index, plan);
            expected_routing(&plan)
        });
        match expected {
            Some(RoutingState::Ready) => d.routable_pods += 1,
            Some(RoutingState::DenyNewCall) => d.draining_pods += 1,
            Some(RoutingState::Shutdown) | None => {}
        }
        if pod.ready && !pod.terminating {
            d.ready_pods += 1;
        }
        d.pods.push(PodSummary {
            index,
            name: pod.name.clone(),
            ready: pod.ready,
            routing_state: expected.map(RoutingStateName::from),
        });
    }

    match by_index.get(&0) {
        Some(p) if p.ready && !p.terminating => d.leader = Some(p.name.clone()),
        Some(p) if p.terminating => d.leader_missing = Some(format!("pod {} (index 0) is terminating", p.name)),
        Some(p) => d.leader_missing = Some(format!("pod {} (index 0) is not Ready", p.name)),
        None => d.leader_missing = Some("no pod with index 0 exists".into()),
    }
    d.workload =
        d.leader.as_ref().map(|leader| WorkloadPlan { leader: leader.clone(), replicas, ready_pods: d.ready_pods });
    d.findings = findings;
    d
}

/// A RouteState's claim on a Redis service name, for [`service_owner`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim<'a> {
    /// The RouteState's name.
    pub name: &'a str,
    /// Its `metadata.creationTimestamp`.
    pub created: Option<&'a Time>,
    /// It is being deleted.
    pub deleting: bool,
}

/// Which of the RouteStates of one namespace that name the same Redis service publishes it: the
/// oldest (by creation time, then by name) among those not being deleted. The others publish
/// nothing, so two StatefulSets never mix their pods in one state hash.
pub fn service_owner<'a>(claims: &[Claim<'a>]) -> Option<&'a str> {
    claims
        .iter()
        .filter(|c| !c.deleting)
        .min_by(|a, b| a.created.map(|t| t.0).cmp(&b.created.map(|t| t.0)).then(a.name.cmp(b.name)))
        .map(|c| c.name)
}

/// Routing changes between two publish sets, as the operator expects them: (index, before,
/// after), `None` = not published.
pub fn routing_changes(
    before: &BTreeMap<u32, PodPlan>,
    after: &BTreeMap<u32, PodPlan>,
) -> Vec<(u32, Option<RoutingState>, Option<RoutingState>)> {
    let mut indexes: Vec<u32> = before.keys().chain(after.keys()).copied().collect();
    indexes.sort_unstable();
    indexes.dedup();
    indexes
        .into_iter()
        .filter_map(|i| {
            let (b, a) = (before.get(&i).map(expected_routing), after.get(&i).map(expected_routing));
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
    /// The last publish succeeded, publishing these routing states (pods' own reports
    /// included): the status shows them rather than the operator's expectation.
    Synced(BTreeMap<u32, RoutingState>),
    /// The last publish failed with this message.
    Failed(String),
}

/// What a RouteState's status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct StatusInput<'a> {
    /// The status stored now (conditions keep their transition times when unchanged).
    pub old: Option<&'a RouteStateStatus>,
    /// `metadata.generation` (the conditions' `observedGeneration`).
    pub generation: Option<i64>,
    /// The target StatefulSet's name.
    pub statefulset: &'a str,
    /// The Redis service name.
    pub service: &'a str,
    /// The derivation; `None` when the StatefulSet does not exist.
    pub derived: Option<&'a Derived>,
    /// The publisher's last outcome for the service.
    pub sync: &'a SyncState,
    /// The RouteState that publishes the service, when it is another, older one: then Ready is
    /// False with reason `ServiceNameConflict` and nothing is published.
    pub owner: Option<&'a str>,
    /// The time of the computation.
    pub now: &'a Time,
}

/// The status of a RouteState.
pub fn compute_status(input: &StatusInput<'_>) -> RouteStateStatus {
    let StatusInput { old, generation, statefulset, service, derived, sync, owner, now } = *input;
    let mut status = status_of(old, generation, statefulset, service, derived, sync, now);
    if let Some(owner) = owner {
        let conditions = [
            NewCondition {
                type_: CONDITION_READY,
                status: CondStatus::False,
                reason: "ServiceNameConflict",
                message: format!(
                    "service {service} is published by RouteState {owner}, the oldest naming it; this one publishes nothing"
                ),
            },
            NewCondition {
                type_: CONDITION_REDIS_SYNCED,
                status: CondStatus::Unknown,
                reason: "ServiceNameConflict",
                message: format!("not published: RouteState {owner} owns service {service}"),
            },
        ];
        status.conditions = merge_conditions(&status.conditions, &conditions, generation, now);
        status.routable_pods = 0;
        status.draining_pods = 0;
        status.workload_state = Some("Unknown".into());
        for pod in &mut status.pods {
            pod.routing_state = None;
        }
    }
    (status.pods, status.unlisted_pods) = listed_pods(std::mem::take(&mut status.pods));
    status
}

fn status_of(
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
        SyncState::Synced(_) => NewCondition {
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
                SyncState::Synced(_) => NewCondition {
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
    // What was published when it is known, else what the operator expects.
    let published = match sync {
        SyncState::Synced(p) => Some(p),
        _ => None,
    };
    let (routable, draining) = match published {
        Some(p) => (
            p.values().filter(|r| **r == RoutingState::Ready).count() as u32,
            p.values().filter(|r| **r == RoutingState::DenyNewCall).count() as u32,
        ),
        None => (d.map_or(0, |d| d.routable_pods), d.map_or(0, |d| d.draining_pods)),
    };
    let pods = d
        .map(|d| {
            let mut pods = d.pods.clone();
            for pod in pods.iter_mut().filter(|p| p.routing_state.is_some()) {
                if let Some(r) = published.and_then(|p| p.get(&pod.index)) {
                    pod.routing_state = Some((*r).into());
                }
            }
            pods
        })
        .unwrap_or_default();
    RouteStateStatus {
        observed_generation: generation,
        conditions,
        stateful_set: Some(statefulset.to_owned()),
        service_name: Some(service.to_owned()),
        replicas: d.map_or(0, |d| d.replicas),
        ready_pods: d.map_or(0, |d| d.ready_pods),
        ready_summary: Some(format!("{}/{}", d.map_or(0, |d| d.ready_pods), d.map_or(0, |d| d.replicas))),
        routable_pods: routable,
        draining_pods: draining,
        leader: d.and_then(|d| d.leader.clone()),
        workload_state: Some(match d.and_then(|d| d.workload.as_ref()) {
            Some(w) if w.state(routable) == WorkloadState::Ready => "Ready".into(),
            Some(_) => "NotReady".into(),
            None => "Unknown".into(),
        }),
        pods,
        unlisted_pods: None,
    }
}

/// The most pods a status lists. Every write to a RouteState (the operator's status patch, a
/// user's drain) costs the API server in proportion to the object's size: with 100 pods listed
/// one took about 13 ms of its CPU, with 20 about 7 ms, with none 4 ms (`docs/performance.md`).
pub const STATUS_PODS_MAX: usize = 20;

/// The pods a status lists and how many it leaves out (`None`: none): all of them up to
/// [`STATUS_PODS_MAX`]; beyond, the first [`STATUS_PODS_MAX`] that need a look (not Ready, or
/// published other than READY), in index order.
pub fn listed_pods(pods: Vec<PodSummary>) -> (Vec<PodSummary>, Option<u32>) {
    let total = pods.len();
    if total <= STATUS_PODS_MAX {
        return (pods, None);
    }
    let listed: Vec<PodSummary> = pods
        .into_iter()
        .filter(|p| !p.ready || p.routing_state != Some(RoutingStateName::Ready))
        .take(STATUS_PODS_MAX)
        .collect();
    let unlisted = u32::try_from(total - listed.len()).unwrap_or(u32::MAX);
    (listed, Some(unlisted))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{core::PodReport, operator::crd::PodOverride};
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
                    let anns: Vec<(&str, &str)> = ann.map(|a| (annotations::ROUTING, a)).into_iter().collect();
                    let d = derive(
                        &spec(svc, o.map(|o| over(0, Some(o), None)).into_iter().collect()),
                        1,
                        &[pod(0, true, false, &anns)],
                    );
                    let sources: Vec<&str> = [Some(name(svc)), o.map(name), ann].into_iter().flatten().collect();
                    assert_eq!(
                        expected_routing(&d.publish[&0]),
                        model(&sources),
                        "svc {svc:?} override {o:?} annotation {ann:?}"
                    );
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
        let routing: Vec<_> = d.publish.values().map(expected_routing).collect();
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
        assert_eq!(expected_routing(&d.publish[&2]), D);
        assert_eq!(d.ready_pods, 1);
        assert_eq!(d.pods[1], PodSummary { index: 1, name: "web-1".into(), ready: false, routing_state: None });
        assert_eq!(d.pods[2].routing_state, Some(RoutingStateName::DenyNewCall));
    }

    #[test]
    fn the_override_is_in_the_floor_and_the_annotations_are_the_report() {
        let p = pod(0, true, false, &[(annotations::LOAD, "100"), (annotations::WAITING, "10")]);
        let d = derive(&spec(RoutingStateName::Ready, vec![]), 1, std::slice::from_ref(&p));
        let want = PodReport { load_state: 100, waiting_tasks: 10, routing: R };
        assert_eq!(d.publish[&0], PodPlan { floor: Floor { routing: R, load: None }, report: want });
        let d = derive(&spec(RoutingStateName::Ready, vec![over(0, None, Some(250))]), 1, &[p]);
        assert_eq!(d.publish[&0], PodPlan { floor: Floor { routing: R, load: Some(250) }, report: want });
        let d = derive(&spec(RoutingStateName::Ready, vec![]), 1, &[pod(0, true, false, &[])]);
        assert_eq!(d.publish[&0].report, PodReport::default(), "no annotations: load 0, nothing waiting, READY");
        assert!(d.findings.is_empty());
    }

    #[test]
    fn the_plan_carries_the_spec() {
        let mut s = spec(RoutingStateName::Ready, vec![]);
        s.cpu_factor = 0.9;
        s.update_period_seconds = 0; // an object stored before the schema's minimum
        let d = derive(&s, 2, &[pod(0, true, false, &[])]);
        let plan = d.plan("apps", "game", &s);
        assert_eq!((plan.namespace.as_str(), plan.service.as_str()), ("apps", "game"));
        assert_eq!((plan.period_secs, plan.cpu_factor.ppm(), plan.replicas), (1, 900_000, 2));
        assert_eq!(plan.pods, d.publish);
        assert_eq!(plan.workload, Some(WorkloadPlan { leader: "web-0".into(), replicas: 2, ready_pods: 1 }));
    }

    #[test]
    fn malformed_annotations_are_findings_and_treated_as_absent() {
        for bad in ["", "-1", "+5", " 5", "5.0", "abc", "99999999999999999999999"] {
            let p = pod(1, true, false, &[(annotations::LOAD, bad), (annotations::WAITING, "10")]);
            let d = derive(&spec(RoutingStateName::Ready, vec![]), 2, &[p]);
            assert_eq!(
                d.publish[&1].report,
                PodReport { load_state: 0, waiting_tasks: 10, routing: R },
                "value {bad:?}"
            );
            assert_eq!(
                d.findings,
                [Finding::MalformedAnnotation {
                    pod: "web-1".into(),
                    annotation: annotations::LOAD,
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
            &[pod(0, true, false, &[(annotations::ROUTING, "Drain")])],
        );
        assert_eq!(expected_routing(&d.publish[&0]), D);
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
        assert_eq!(controlling_statefulset(&p), Some("web"));
        // Only a controller reference of kind StatefulSet in an apps/ version counts.
        for (api_version, kind, controller) in
            [("apps/v1", "ReplicaSet", true), ("apps/v1", "StatefulSet", false), ("v1", "StatefulSet", true)]
        {
            let other: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "web-2",
                "ownerReferences": [{"apiVersion": api_version, "kind": kind, "name": "web", "uid": "u", "controller": controller}]}}))
            .unwrap();
            assert_eq!(controlling_statefulset(&other), None, "{api_version} {kind} controller={controller}");
        }
        let f = pod_facts(&p, "web").unwrap();
        assert_eq!((f.index, f.ready, f.terminating), (2, true, true));
        assert_eq!(f.annotations.keys().collect::<Vec<_>>(), ["routestate.dev/load"]);

        let p: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "web-7"}})).unwrap();
        let f = pod_facts(&p, "web").unwrap();
        assert_eq!((f.index, f.ready, f.terminating), (7, false, false));
        // Ready means the Ready condition is True: not another condition that is True, not a
        // Ready condition that is False.
        for conditions in [
            serde_json::json!([{"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]),
            serde_json::json!([{"type": "ContainersReady", "status": "True"}]),
        ] {
            let p: Pod = serde_json::from_value(
                serde_json::json!({"metadata": {"name": "web-3"}, "status": {"conditions": conditions}}),
            )
            .unwrap();
            assert!(!pod_facts(&p, "web").unwrap().ready, "{conditions}");
        }

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
            &[pod(0, true, false, &[(annotations::LOAD, "10")]), pod(1, true, false, &[]), pod(2, true, false, &[])],
        );
        assert_eq!(d.leader.as_deref(), Some("web-0"));
        assert_eq!(d.workload, Some(WorkloadPlan { leader: "web-0".into(), replicas: 3, ready_pods: 3 }));
        assert_eq!((d.routable_pods, d.draining_pods), (3, 0));

        let d = derive(&s, 3, &[pod(0, true, false, &[]), pod(1, true, false, &[])]);
        assert_eq!(d.workload.unwrap().ready_pods, 2);

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
        let p = |r, load| PodPlan {
            floor: Floor { routing: R, load: None },
            report: PodReport { load_state: load, waiting_tasks: 0, routing: r },
        };
        let before = BTreeMap::from([(0, p(R, 0)), (1, p(R, 0)), (2, p(R, 0))]);
        let after = BTreeMap::from([(0, p(R, 9)), (1, p(D, 0)), (3, p(R, 0))]);
        assert_eq!(routing_changes(&before, &after), [(1, Some(R), Some(D)), (2, Some(R), None), (3, None, Some(R))]);
        // A floor change is a change too.
        let floored = BTreeMap::from([(0, PodPlan { floor: Floor { routing: S, load: None }, ..p(R, 0) })]);
        assert_eq!(routing_changes(&BTreeMap::from([(0, p(R, 0))]), &floored), [(0, Some(R), Some(S))]);
    }

    fn compute(
        old: Option<&RouteStateStatus>,
        generation: Option<i64>,
        statefulset: &str,
        service: &str,
        derived: Option<&Derived>,
        sync: &SyncState,
        now: &Time,
    ) -> RouteStateStatus {
        compute_status(&StatusInput { old, generation, statefulset, service, derived, sync, owner: None, now })
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    impl<'a> Claim<'a> {
        fn with(self, secs: Option<i64>) -> Self {
            // Leaked: a test's handful of timestamps, borrowed for the claim's lifetime.
            Claim { created: secs.map(|s| &*Box::leak(Box::new(t(s)))), ..self }
        }
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
        let synced = SyncState::Synced(BTreeMap::from([(0, R), (1, R)]));
        let d = derive(&s, 2, &[pod(0, true, false, &[]), pod(1, true, false, &[(annotations::LOAD, "5")])]);
        let st1 = compute(None, Some(1), "web", "web", Some(&d), &synced, &t(100));
        // A load change alone does not change the status (loads are not in it).
        let d2 = derive(&s, 2, &[pod(0, true, false, &[]), pod(1, true, false, &[(annotations::LOAD, "50")])]);
        let st2 = compute(Some(&st1), Some(1), "web", "web", Some(&d2), &synced, &t(200));
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
        let st3 = compute(Some(&st2), Some(1), "web", "web", Some(&d3), &synced, &t(300));
        assert_eq!(cond(&st3, CONDITION_LEADER), "False");
        assert_eq!(st3.workload_state.as_deref(), Some("Unknown"));
        assert_eq!(st3.leader, None);

        let missing = compute(None, Some(1), "nope", "nope", None, &SyncState::Pending, &t(1));
        assert_eq!(cond(&missing, CONDITION_READY), "False");
        assert_eq!(cond(&missing, CONDITION_REDIS_SYNCED), "Unknown");
        let failed = compute(None, Some(1), "web", "web", Some(&d), &SyncState::Failed("boom".into()), &t(1));
        assert_eq!(cond(&failed, CONDITION_READY), "False");
        assert_eq!(cond(&failed, CONDITION_REDIS_SYNCED), "False");
    }

    #[test]
    fn the_oldest_routestate_owns_a_service_name() {
        let claim = |name, secs: Option<i64>, deleting| Claim { name, created: None, deleting }.with(secs);
        // The oldest wins; the same second is decided by name; a deleting one never wins.
        let claims = [claim("b", Some(20), false), claim("a", Some(30), false), claim("c", Some(20), false)];
        assert_eq!(service_owner(&claims), Some("b"));
        let claims = [claim("b", Some(20), true), claim("a", Some(30), false), claim("c", Some(20), false)];
        assert_eq!(service_owner(&claims), Some("c"));
        assert_eq!(service_owner(&[claim("x", Some(1), true)]), None);
        assert_eq!(service_owner(&[]), None);
    }

    #[test]
    fn a_routestate_that_does_not_own_its_service_says_so_and_publishes_nothing() {
        let s = spec(RoutingStateName::Ready, vec![]);
        let d = derive(&s, 1, &[pod(0, true, false, &[])]);
        let st = compute_status(&StatusInput {
            old: None,
            generation: Some(1),
            statefulset: "web",
            service: "game",
            derived: Some(&d),
            sync: &SyncState::Pending,
            owner: Some("old"),
            now: &t(1),
        });
        let ready = st.conditions.iter().find(|c| c.type_ == CONDITION_READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ServiceNameConflict"));
        assert!(
            ready.message.contains("RouteState old") && ready.message.contains("service game"),
            "{}",
            ready.message
        );
        assert_eq!(
            (st.routable_pods, st.workload_state.as_deref(), st.pods[0].routing_state),
            (0, Some("Unknown"), None)
        );
    }

    #[test]
    fn the_status_counts_what_was_published() {
        let s = spec(RoutingStateName::Ready, vec![]);
        let d = derive(&s, 2, &[pod(0, true, false, &[]), pod(1, true, false, &[])]);
        let cond =
            |st: &RouteStateStatus, ty: &str| st.conditions.iter().find(|c| c.type_ == ty).unwrap().status.clone();
        // Before the first publish: what the operator expects.
        let pending = compute(None, Some(1), "web", "web", Some(&d), &SyncState::Pending, &t(1));
        assert_eq!((pending.routable_pods, pending.draining_pods), (2, 0));
        // Pod 1 drained itself through its own report: the status shows it.
        let drained = SyncState::Synced(BTreeMap::from([(0, R), (1, D)]));
        let st = compute(None, Some(1), "web", "web", Some(&d), &drained, &t(1));
        assert_eq!((st.routable_pods, st.draining_pods), (1, 1));
        assert_eq!(st.pods[1].routing_state, Some(RoutingStateName::DenyNewCall));
        assert_eq!((cond(&st, CONDITION_READY), st.workload_state.as_deref()), ("True".into(), Some("Ready")));
        // Nothing takes new users: the workload is NotReady.
        let shut = SyncState::Synced(BTreeMap::from([(0, S), (1, D)]));
        let st = compute(None, Some(1), "web", "web", Some(&d), &shut, &t(1));
        assert_eq!((st.routable_pods, st.workload_state.as_deref()), (0, Some("NotReady")));
        // A replica missing: NotReady although pods take new users.
        let short = derive(&s, 3, &[pod(0, true, false, &[]), pod(1, true, false, &[])]);
        let st = compute(None, Some(1), "web", "web", Some(&short), &drained, &t(1));
        assert_eq!(st.workload_state.as_deref(), Some("NotReady"));
    }

    fn summary(index: u32, ready: bool, routing: Option<RoutingStateName>) -> PodSummary {
        PodSummary { index, name: format!("web-{index}"), ready, routing_state: routing }
    }

    #[test]
    fn a_status_lists_every_pod_of_a_small_statefulset() {
        let pods: Vec<PodSummary> = (0..STATUS_PODS_MAX as u32).map(|i| summary(i, i % 2 == 0, None)).collect();
        assert_eq!(listed_pods(pods.clone()), (pods, None));
        assert_eq!(listed_pods(vec![]), (vec![], None));
    }

    #[test]
    fn a_large_statefulsets_status_lists_the_pods_that_need_a_look() {
        let ready = Some(RoutingStateName::Ready);
        let mut pods: Vec<PodSummary> = (0..1000).map(|i| summary(i, true, ready)).collect();
        assert_eq!(listed_pods(pods.clone()), (vec![], Some(1000)), "all healthy: none listed");
        pods[7] = summary(7, false, None);
        pods[500] = summary(500, true, Some(RoutingStateName::DenyNewCall));
        pods[999] = summary(999, true, Some(RoutingStateName::Shutdown));
        let (listed, unlisted) = listed_pods(pods.clone());
        assert_eq!(listed.iter().map(|p| p.index).collect::<Vec<_>>(), [7, 500, 999]);
        assert_eq!(unlisted, Some(997));
        // More than the limit need a look: the first ones by index.
        let sick: Vec<PodSummary> = (0..1000).map(|i| summary(i, false, None)).collect();
        let (listed, unlisted) = listed_pods(sick);
        assert_eq!(listed.iter().map(|p| p.index).collect::<Vec<_>>(), (0..STATUS_PODS_MAX as u32).collect::<Vec<_>>());
        assert_eq!(unlisted, Some(1000 - STATUS_PODS_MAX as u32));
    }

    #[test]
    fn a_large_statefulsets_status_counts_every_pod_and_lists_the_exceptions() {
        let s = spec(RoutingStateName::Ready, vec![]);
        let pods: Vec<PodFacts> = (0..150).map(|i| pod(i, i != 3 && i != 120, false, &[])).collect();
        let d = derive(&s, 150, &pods);
        let st = compute(None, Some(1), "web", "web", Some(&d), &SyncState::Pending, &t(1));
        assert_eq!((st.replicas, st.ready_pods, st.routable_pods), (150, 148, 148));
        assert_eq!(st.pods.iter().map(|p| p.index).collect::<Vec<_>>(), [3, 120]);
        assert_eq!(st.unlisted_pods, Some(148));
    }
}
