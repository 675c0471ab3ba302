//! Placing a user (wire contract §6, `pick_and_link.lua`): keep an available link, or link a
//! good pod temporarily, atomically on the link.
//!
//! - Standalone Redis: one script, one round trip. With a live candidate index (v1.1) the script
//!   does logarithmic work whatever the service's size; without one it judges every state (v1).
//! - Redis Cluster, where the state hash and the link live in different slots: `GET` of the link,
//!   then `pick_candidate.lua` on the state slot, then — only when a new link is needed —
//!   `link_if_unchanged.lua` on the link slot, which writes only while the link is still the one
//!   the pick was judged against (else the placement is judged again), so concurrent placements
//!   of one uid cannot race. Without a live index, the v1 path: one read of the state slot, then
//!   the script on the link slot with the entries as arguments.

use super::{
    Store, StoreError,
    links::{LinkKeys, LinkTtl, evalsha, link_keys, wire_pod},
    scripts,
};
use crate::core::{Keys, staleness_window_ms};

/// The reply of a placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    /// The pod the user is linked to.
    pub pod: u32,
    /// Whether this call created the link (false: an existing, still available link was kept).
    pub created: bool,
}

/// Inputs of a placement besides the keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PickParams {
    /// TTL of the temporary link written for a new placement (> 0).
    pub temp_ttl_secs: u64,
    /// Caller-supplied random value: the pick is the good pod at `random % #good` (in the
    /// candidate index's order when it is live, else in ascending pod index).
    pub random: u32,
    /// Good range above the least-loaded READY pod.
    pub range: u64,
    /// Staleness window used when the service's meta hash has no `updatePeriodSeconds`.
    pub fallback_window_ms: u64,
}

/// How many times a Redis Cluster placement is judged again when the link changed between the
/// judgement and the write (a concurrent placement of the same uid).
const CLUSTER_ATTEMPTS: usize = 8;

impl Store {
    /// Places a user: keeps an existing link whose pod is still available (alive, not
    /// SHUTDOWN), otherwise links a good pod temporarily. `None` when there is no link to keep
    /// and nothing takes new users.
    pub async fn pick_and_link(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        params: PickParams,
    ) -> Result<Option<Placement>, StoreError> {
        const OP: &str = "pick_and_link";
        let keys = link_keys(OP, ns, uid, svc)?;
        check_pick(OP, &params)?;
        let k = Keys::service(ns, svc).map_err(StoreError::key(OP))?;
        if self.conn.is_cluster() {
            return self.pick_and_link_cluster(ns, uid, svc, params, &keys, &k.state, &k.index).await;
        }
        let mut inv = evalsha(&scripts::PICK_AND_LINK, &[&keys.link, &keys.hash, &k.state, &k.meta, &k.index]);
        inv.arg(svc)
            .arg(params.temp_ttl_secs)
            .arg(params.random)
            .arg(params.range)
            .arg("redis")
            .arg(params.fallback_window_ms);
        let reply: (i64, i64) = self.write_link(OP, &keys.link, &scripts::PICK_AND_LINK, inv).await?;
        placement(OP, &keys.link, reply)
    }

    #[allow(clippy::too_many_arguments)]
    async fn pick_and_link_cluster(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        params: PickParams,
        keys: &LinkKeys,
        state: &str,
        index: &str,
    ) -> Result<Option<Placement>, StoreError> {
        const OP: &str = "pick_and_link";
        let ttl = LinkTtl::Temporary(params.temp_ttl_secs).wire(OP)?;
        for _ in 0..CLUSTER_ATTEMPTS {
            // A link value that is not a pod index counts as no link, as in the scripts.
            let cur = match self.get_linked_pod(ns, uid, svc).await {
                Ok(cur) => cur,
                Err(StoreError::Reply { .. }) => None,
                Err(e) => return Err(e),
            };
            let cur_arg = cur.map_or(-1, i64::from);
            let mut cmd = evalsha(&scripts::PICK_CANDIDATE, &[state, index]);
            cmd.arg(cur_arg).arg(params.random).arg(params.range);
            let (status, pod): (i64, i64) = self.eval(OP, state, &scripts::PICK_CANDIDATE, cmd).await?;
            let pod = match status {
                0 => return self.pick_and_link_v1(ns, uid, svc, params).await,
                1 => return Ok(cur.map(|pod| Placement { pod, created: false })),
                3 => return Ok(None),
                2 => wire_pod(OP, state, pod)?.ok_or_else(|| StoreError::reply(OP, state, pod))?,
                other => return Err(StoreError::reply(OP, state, other)),
            };
            let mut write = evalsha(&scripts::LINK_IF_UNCHANGED, &[&keys.link, &keys.hash]);
            write.arg(svc).arg(cur_arg).arg(pod).arg(ttl);
            let (linked, written): (i64, i64) =
                self.write_link(OP, &keys.link, &scripts::LINK_IF_UNCHANGED, write).await?;
            if written == 1 {
                return placement(OP, &keys.link, (linked, 1));
            }
            // Another placement changed the link meanwhile: judge again from what it holds now.
        }
        Err(StoreError::InvalidArgument {
            op: OP,
            reason: format!("the link of {uid} kept changing during {CLUSTER_ATTEMPTS} placements; retry later"),
        })
    }

    /// The v1 placement on Redis Cluster: one read of the state slot, then the script on the
    /// link slot with the states as arguments.
    async fn pick_and_link_v1(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        params: PickParams,
    ) -> Result<Option<Placement>, StoreError> {
        let states = self.read_service(ns, svc).await?;
        let window = states.update_period_secs.map(staleness_window_ms).unwrap_or(params.fallback_window_ms);
        self.pick_and_link_inline(ns, uid, svc, params, states.now_ms, window, &states.entries).await
    }

    /// `pick_and_link` with the state entries and the judging time given by the caller (the v1
    /// path on Redis Cluster; public so the Lua judgement can be checked against
    /// [`crate::core::ServiceSnapshot::pick`] on the same inputs).
    #[allow(clippy::too_many_arguments)]
    pub async fn pick_and_link_inline(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        params: PickParams,
        now_ms: u64,
        window_ms: u64,
        entries: &[(String, String)],
    ) -> Result<Option<Placement>, StoreError> {
        const OP: &str = "pick_and_link";
        let keys = link_keys(OP, ns, uid, svc)?;
        check_pick(OP, &params)?;
        let mut inv = evalsha(&scripts::PICK_AND_LINK, &[&keys.link, &keys.hash]);
        inv.arg(svc)
            .arg(params.temp_ttl_secs)
            .arg(params.random)
            .arg(params.range)
            .arg("inline")
            .arg(now_ms)
            .arg(window_ms);
        for (field, value) in entries {
            inv.arg(field).arg(value);
        }
        let reply: (i64, i64) = self.write_link(OP, &keys.link, &scripts::PICK_AND_LINK, inv).await?;
        placement(OP, &keys.link, reply)
    }
}

fn check_pick(op: &'static str, p: &PickParams) -> Result<(), StoreError> {
    LinkTtl::Temporary(p.temp_ttl_secs).wire(op)?;
    // Lua numbers are doubles: keep the arithmetic exact.
    const MAX_EXACT: u64 = 1 << 53;
    if p.range > MAX_EXACT || p.fallback_window_ms > MAX_EXACT {
        return Err(StoreError::InvalidArgument {
            op,
            reason: format!("range {} / window {} must be ≤ 2^53", p.range, p.fallback_window_ms),
        });
    }
    Ok(())
}

fn placement(op: &'static str, key: &str, (pod, created): (i64, i64)) -> Result<Option<Placement>, StoreError> {
    Ok(wire_pod(op, key, pod)?.map(|pod| Placement { pod, created: created == 1 }))
}
