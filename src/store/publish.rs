//! The one write path of pod states (wire contract v1.1 §6): the operator's write plans
//! ([`Store::publish`]), a pod's own reports ([`Store::report_pod_state`]) and the removal of a
//! service ([`Store::remove_service`]). Both writers go through a script that applies the
//! operator's floor and maintains the candidate index in the same atomic step, so a report and
//! a tick that land at the same moment can never publish anything less restrictive than the
//! floor: Redis runs one script at a time, and each script reads the floor and writes the state
//! and the index together.

use std::collections::BTreeMap;

use futures::future::join_all;
use redis::{Cmd, FromRedisValue, Pipeline, Script};

use super::{Store, StoreError, links::evalsha, scripts};
use crate::core::{Keys, PodReport, Published, RoutingState, ServicePlan, keys::hash_slot};

/// What a pod's report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// Published at once, as this (the most restrictive of the report and the floor).
    Published {
        /// The published routing state.
        routing: RoutingState,
        /// The published weighted load.
        weighted_load: u64,
    },
    /// Stored, not published: the operator does not publish the pod (not Ready, removed, or
    /// not seen yet). Its next tick publishes the stored report once the pod may be published.
    Stored,
}

impl Store {
    /// Runs one script invocation, loading the script once on NOSCRIPT.
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        op: &'static str,
        key: &str,
        script: &Script,
        cmd: Cmd,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.timed(op, key, async move {
            match cmd.query_async(&mut conn).await {
                Err(e) if super::links::is_noscript(&e) => {
                    script.load_async(&mut conn).await?;
                    cmd.query_async(&mut conn).await
                }
                r => r,
            }
        })
        .await
    }

    /// Runs a pipeline of invocations of `script`, loading it once on NOSCRIPT (no command of
    /// the pipeline ran then: each failed before it started).
    async fn eval_pipeline<T: FromRedisValue>(
        &self,
        op: &'static str,
        key: &str,
        script: &Script,
        pipe: &Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        self.timed(op, key, async move {
            match pipe.query_async(&mut conn).await {
                Err(e) if super::links::is_noscript(&e) => {
                    script.load_async(&mut conn).await?;
                    pipe.query_async(&mut conn).await
                }
                r => r,
            }
        })
        .await
    }

    /// Publishes write plans: per plan one `publish.lua` (floors, states, the candidate index
    /// and the meta hash, atomically, stamped with the Redis clock), pipelined per hash slot
    /// with the slots in parallel; then the workload aggregate of every plan that has one, from
    /// what was actually published (pods' own reports included). One result per plan, in order:
    /// a failure names the service and what failed, and fails only the plans it touched.
    pub async fn publish(&self, plans: &[ServicePlan]) -> Vec<Result<Published, StoreError>> {
        const OP: &str = "publish";
        let mut results: Vec<Option<Result<Published, StoreError>>> = Vec::with_capacity(plans.len());
        let mut by_slot: BTreeMap<u16, Vec<(usize, Cmd, String)>> = BTreeMap::new();
        for (i, plan) in plans.iter().enumerate() {
            match plan.keys() {
                Ok(k) => {
                    let mut cmd = evalsha(&scripts::PUBLISH, &[&k.state, &k.meta, &k.floor, &k.report, &k.index]);
                    cmd.arg(plan.script_args());
                    by_slot.entry(self.slot_of(&k.state)).or_default().push((i, cmd, k.state));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(StoreError::Key { op: OP, source: e }))),
            }
        }
        let runs = by_slot.into_values().map(|group| async move {
            let mut pipe = redis::pipe();
            for (_, cmd, _) in &group {
                pipe.add_command(cmd.clone());
            }
            let replies: Result<Vec<Vec<i64>>, StoreError> =
                self.eval_pipeline(OP, &group[0].2, &scripts::PUBLISH, &pipe).await;
            (group, replies)
        });
        for (group, replies) in join_all(runs).await {
            match replies {
                Ok(replies) => {
                    for ((i, _, key), reply) in group.into_iter().zip(replies) {
                        results[i] =
                            Some(Published::parse(&plans[i], &reply).map_err(|e| StoreError::reply(OP, &key, e)));
                    }
                }
                Err(e) => {
                    // One error for the whole pipeline: every plan in it gets its message.
                    let cause = e.cause();
                    for (i, _, key) in group {
                        results[i] = Some(Err(StoreError::Shared { op: OP, key, cause: cause.clone() }));
                    }
                }
            }
        }
        let mut results: Vec<Result<Published, StoreError>> =
            results.into_iter().map(|r| r.expect("every plan has a result")).collect();
        self.publish_workloads(plans, &mut results).await;
        results
    }

    /// The workload aggregates of the published plans that have one (another slot than their
    /// states), one `SET` each, pipelined per slot.
    async fn publish_workloads(&self, plans: &[ServicePlan], results: &mut [Result<Published, StoreError>]) {
        const OP: &str = "publish_workload";
        let mut by_slot: BTreeMap<u16, Vec<(usize, String)>> = BTreeMap::new();
        let mut pipes: BTreeMap<u16, Pipeline> = BTreeMap::new();
        for (i, (plan, result)) in plans.iter().zip(results.iter()).enumerate() {
            let (Some(w), Ok(published)) = (&plan.workload, result) else { continue };
            let Ok(key) = Keys::workload(&plan.namespace, &plan.service) else { continue };
            let slot = self.slot_of(&key);
            pipes
                .entry(slot)
                .or_insert_with(redis::pipe)
                .cmd("SET")
                .arg(&key)
                .arg(published.workload(w).encode())
                .ignore();
            by_slot.entry(slot).or_default().push((i, key));
        }
        let runs = pipes.into_iter().map(|(slot, pipe)| {
            let first = by_slot[&slot][0].1.clone();
            async move {
                let mut conn = self.conn.clone();
                (slot, self.timed(OP, &first, pipe.query_async::<()>(&mut conn)).await)
            }
        });
        for (slot, outcome) in join_all(runs).await {
            if let Err(e) = outcome {
                let cause = e.cause();
                for (i, key) in &by_slot[&slot] {
                    results[*i] = Err(StoreError::Shared { op: OP, key: key.clone(), cause: cause.clone() });
                }
            }
        }
    }

    /// A pod's own report (the server role's direct transport): stored, and published at once
    /// under the operator's floor while the pod has one. One script, one round trip.
    pub async fn report_pod_state(
        &self,
        ns: &str,
        svc: &str,
        pod: u32,
        report: &PodReport,
    ) -> Result<ReportOutcome, StoreError> {
        const OP: &str = "report_pod_state";
        let k = Keys::service(ns, svc).map_err(StoreError::key(OP))?;
        let mut cmd = evalsha(&scripts::REPORT, &[&k.state, &k.report, &k.index]);
        cmd.arg(pod).arg(report.encode());
        let (routing, load): (i64, i64) = self.eval(OP, &k.state, &scripts::REPORT, cmd).await?;
        if routing == -1 {
            return Ok(ReportOutcome::Stored);
        }
        let routing = u8::try_from(routing)
            .ok()
            .and_then(RoutingState::from_ordinal)
            .ok_or_else(|| StoreError::reply(OP, &k.state, routing))?;
        let weighted_load = u64::try_from(load).map_err(|_| StoreError::reply(OP, &k.state, load))?;
        Ok(ReportOutcome::Published { routing, weighted_load })
    }

    /// Deletes every key of a service's routing state (states, meta, floor, reports, index,
    /// epoch and the workload aggregate), never its links.
    pub async fn remove_service(&self, ns: &str, svc: &str) -> Result<(), StoreError> {
        const OP: &str = "remove_service";
        let k = Keys::service(ns, svc).map_err(StoreError::key(OP))?;
        let mut conn = self.conn.clone();
        // The workload key lives in another slot: a DEL of its own.
        let mut state = redis::cmd("DEL");
        state.arg(&k.state_slot()[..]);
        self.timed(OP, &k.state, state.exec_async(&mut conn)).await?;
        self.timed(OP, &k.workload, redis::cmd("DEL").arg(&k.workload).exec_async(&mut conn)).await
    }

    /// The slot a key's pipeline goes to: its hash slot on Redis Cluster, one for all otherwise.
    fn slot_of(&self, key: &str) -> u16 {
        if self.conn.is_cluster() { hash_slot(key) } else { 0 }
    }
}
