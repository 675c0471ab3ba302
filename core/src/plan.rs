//! A service's write plan (wire contract v1.1 §6, `publish.lua`): everything the operator
//! publishes for one service in one atomic step — floors, states, the candidate index and the
//! meta hash — and then the workload aggregate. The plan is built by the operator's pure
//! derivation; [`ServicePlan::script_args`] is the one place that turns it into the script's
//! arguments, and [`Published::parse`] the one place that reads the script's reply.

use std::collections::BTreeMap;

use super::{
    keys::{KeyError, Keys, ServiceKeys},
    load::{CpuFactor, MAX_LOAD},
    report::{Floor, PodReport},
    routing::RoutingState,
    workload::{Workload, WorkloadState},
};

/// One published pod of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodPlan {
    /// What the operator allows the pod.
    pub floor: Floor,
    /// The pod's report as the operator knows it (from its annotations; the default when it has
    /// none). A report the pod wrote to Redis itself replaces it.
    pub report: PodReport,
}

/// The inputs of the workload aggregate that only the operator knows (Kubernetes readiness);
/// the routable and draining counts and the load come from what was actually published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadPlan {
    /// Name of the pod with index 0.
    pub leader: String,
    /// Desired replicas.
    pub replicas: u32,
    /// Pods Ready and not terminating.
    pub ready_pods: u32,
}

impl WorkloadPlan {
    /// READY when every desired replica is Ready and at least one pod takes new users.
    pub fn state(&self, routable_pods: u32) -> WorkloadState {
        let all_ready = self.replicas > 0 && self.ready_pods >= self.replicas;
        if all_ready && routable_pods > 0 { WorkloadState::Ready } else { WorkloadState::NotReady }
    }
}

/// What to publish for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    /// Redis namespace (the RouteState's Kubernetes namespace).
    pub namespace: String,
    /// Redis service name.
    pub service: String,
    /// Heartbeat period in seconds (> 0).
    pub period_secs: u32,
    /// Weighting of the reports' waiting tasks against their load state.
    pub cpu_factor: CpuFactor,
    /// Desired replicas: the reports of unpublished pods at or above this index are dropped
    /// (those pods are gone for good); below it they are kept for when the pod is Ready again.
    pub replicas: u32,
    /// The published pods by index; every other field of the state hash is removed.
    pub pods: BTreeMap<u32, PodPlan>,
    /// `None` while pod 0 is missing or not Ready: the workload key is then left as it is.
    pub workload: Option<WorkloadPlan>,
}

impl ServicePlan {
    /// The service's keys; an error names the part the key layout rejects.
    pub fn keys(&self) -> Result<ServiceKeys, KeyError> {
        Keys::service(&self.namespace, &self.service)
    }

    /// ARGV of `publish.lua`: period, cpu factor in millionths, replicas, then per pod in
    /// ascending index its index, floor and report.
    pub fn script_args(&self) -> Vec<String> {
        let mut args = Vec::with_capacity(3 + 3 * self.pods.len());
        args.push(self.period_secs.to_string());
        args.push(self.cpu_factor.ppm().to_string());
        args.push(self.replicas.to_string());
        for (index, pod) in &self.pods {
            args.push(index.to_string());
            args.push(pod.floor.encode());
            args.push(pod.report.encode());
        }
        args
    }
}

/// What `publish.lua` published for a plan: the Redis time of the write, and per pod its
/// weighted load and routing state (a pod's own report included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Redis server time of the write, epoch milliseconds.
    pub now_ms: u64,
    /// Pod index → (weighted load, routing state).
    pub pods: BTreeMap<u32, (u64, RoutingState)>,
}

impl Published {
    /// Reads the script's reply `[now, load₁, routing₁, load₂, routing₂, …]` (pods in the plan's
    /// order); `Err` says what is wrong with it.
    pub fn parse(plan: &ServicePlan, reply: &[i64]) -> Result<Self, String> {
        let (&now, rest) = reply.split_first().ok_or("an empty reply")?;
        if rest.len() != 2 * plan.pods.len() {
            return Err(format!("{} values for {} pods", rest.len(), plan.pods.len()));
        }
        let now_ms = u64::try_from(now).map_err(|_| format!("time {now}"))?;
        let mut pods = BTreeMap::new();
        for (&index, pair) in plan.pods.keys().zip(rest.chunks_exact(2)) {
            let load = u64::try_from(pair[0]).ok().filter(|&l| l <= MAX_LOAD).ok_or(format!("load {}", pair[0]))?;
            let routing = u8::try_from(pair[1])
                .ok()
                .and_then(RoutingState::from_ordinal)
                .ok_or(format!("routing ordinal {}", pair[1]))?;
            pods.insert(index, (load, routing));
        }
        Ok(Self { now_ms, pods })
    }

    /// Published pods by routing state: [READY, DENY_NEW_CALL, SHUTDOWN].
    pub fn counts(&self) -> [u32; 3] {
        let mut counts = [0u32; 3];
        for (_, routing) in self.pods.values() {
            counts[usize::from(routing.ordinal())] += 1;
        }
        counts
    }

    /// The workload aggregate for `plan`: Kubernetes readiness from the plan, the routing
    /// counts and the load from what was published, stamped with the write's Redis time.
    pub fn workload(&self, plan: &WorkloadPlan) -> Workload {
        let [routable, draining, _] = self.counts();
        Workload {
            state: plan.state(routable),
            leader: plan.leader.clone(),
            replicas: plan.replicas,
            ready_pods: plan.ready_pods,
            routable_pods: routable,
            draining_pods: draining,
            total_weighted_load: self.pods.values().map(|(l, _)| *l).fold(0u64, u64::saturating_add),
            updated_at_millis: self.now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RoutingState::{DenyNewCall as D, Ready as R};

    fn plan() -> ServicePlan {
        let pod = |routing, load, report: PodReport| PodPlan { floor: Floor { routing, load }, report };
        ServicePlan {
            namespace: "apps".into(),
            service: "web".into(),
            period_secs: 10,
            cpu_factor: CpuFactor::from_ppm(900_000).unwrap(),
            replicas: 3,
            pods: BTreeMap::from([
                (2, pod(D, None, PodReport { load_state: 5, waiting_tasks: 1, routing: R })),
                (0, pod(R, Some(250), PodReport::default())),
            ]),
            workload: Some(WorkloadPlan { leader: "web-0".into(), replicas: 3, ready_pods: 3 }),
        }
    }

    #[test]
    fn script_args_are_period_factor_replicas_then_pods_by_index() {
        assert_eq!(plan().script_args(), ["10", "900000", "3", "0", "0-250", "0-0-0", "2", "1", "5-1-0"]);
        assert_eq!(plan().keys().unwrap().floor, "sf:{apps:state:web}floor");
    }

    #[test]
    fn replies_are_read_in_plan_order_and_checked() {
        let p = plan();
        let got = Published::parse(&p, &[1_764_000_000_000, 250, 0, 4, 1]).unwrap();
        assert_eq!(got.now_ms, 1_764_000_000_000);
        assert_eq!(got.pods, BTreeMap::from([(0, (250, R)), (2, (4, D))]));
        assert_eq!(got.counts(), [1, 1, 0]);
        for (bad, why) in [
            (vec![], "empty"),
            (vec![1, 250, 0], "2 values for 2 pods"),
            (vec![-1, 250, 0, 4, 1], "time -1"),
            (vec![1, -5, 0, 4, 1], "load -5"),
            (vec![1, 9_007_199_254_740_992, 0, 4, 1], "load 9007199254740992"),
            (vec![1, 250, 3, 4, 1], "routing ordinal 3"),
        ] {
            let e = Published::parse(&p, &bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_workload_counts_what_was_published() {
        let p = plan();
        let w = Published::parse(&p, &[7, 250, 0, 4, 1]).unwrap().workload(p.workload.as_ref().unwrap());
        assert_eq!(
            w,
            Workload {
                state: WorkloadState::Ready,
                leader: "web-0".into(),
                replicas: 3,
                ready_pods: 3,
                routable_pods: 1,
                draining_pods: 1,
                total_weighted_load: 254,
                updated_at_millis: 7,
            }
        );
        let shut = Published::parse(&p, &[7, 250, 2, 4, 1]).unwrap();
        assert_eq!(shut.workload(p.workload.as_ref().unwrap()).state, WorkloadState::NotReady, "nothing routable");
        let short = WorkloadPlan { ready_pods: 2, ..p.workload.clone().unwrap() };
        let w = Published::parse(&p, &[7, 250, 0, 4, 0]).unwrap().workload(&short);
        assert_eq!((w.state, w.routable_pods), (WorkloadState::NotReady, 2), "a replica not Ready");
        // Scaled to 0 replicas while pod 0 still runs: never READY.
        let none = WorkloadPlan { replicas: 0, ready_pods: 0, ..short };
        assert_eq!(none.state(1), WorkloadState::NotReady);
        assert_eq!(shut.workload(&none).state, WorkloadState::NotReady);
        assert_eq!(WorkloadPlan { replicas: 1, ready_pods: 1, ..none }.state(1), WorkloadState::Ready);
    }
}
