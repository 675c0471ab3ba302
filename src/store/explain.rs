//! Explaining placements (`routestate pick --explain`): the reads a placement is decided on,
//! judged by [`crate::core::explain`]. Nothing is written, with or without a user.

use super::{
    Store, StoreError,
    links::link_keys,
    states::{RawEntries, ServiceStates, UPDATE_PERIOD_FIELD},
};
use crate::core::{
    Keys,
    explain::{ExplainContext, Explanation, LinkFacts, explain},
};

impl Store {
    /// Explains the placements of a service and, with `uid`, of that user: every pod's state
    /// and class, the baseline and range, the candidates and, for the user, whether its link is
    /// kept or replaced. Judged with `range` and, when the service publishes no valid period,
    /// `fallback_window_ms`, at the Redis server time of the read.
    ///
    /// One round trip to the state slot (state hash, period, candidate index, `TIME`, one
    /// pipeline) and, with a uid, one to the link slot at the same time (the link's value, its
    /// TTL, whether the uid's hash records it). Never writes.
    pub async fn explain_pick(
        &self,
        ns: &str,
        svc: &str,
        uid: Option<&str>,
        range: u64,
        fallback_window_ms: u64,
    ) -> Result<Explanation, StoreError> {
        const OP: &str = "explain_pick";
        let k = Keys::service(ns, svc).map_err(StoreError::key(OP))?;
        let link_keys = uid.map(|uid| link_keys(OP, ns, uid, svc)).transpose()?;

        let states = async {
            let mut pipe = redis::pipe();
            pipe.cmd("HGETALL").arg(&k.state);
            pipe.cmd("HGET").arg(&k.meta).arg(UPDATE_PERIOD_FIELD);
            pipe.cmd("EXISTS").arg(&k.index);
            pipe.cmd("TIME");
            let mut conn = self.conn.clone();
            let (entries, period, index, time): (RawEntries, Option<Vec<u8>>, i64, (u64, u64)) =
                self.timed(OP, &k.state, pipe.query_async(&mut conn)).await?;
            Ok::<_, StoreError>((ServiceStates::decode(entries, period, time, &k.meta), index == 1))
        };
        let link = async {
            let (Some(uid), Some(keys)) = (uid, &link_keys) else { return Ok(None) };
            let mut pipe = redis::pipe();
            pipe.cmd("GET").arg(&keys.link).cmd("PTTL").arg(&keys.link).cmd("HEXISTS").arg(&keys.hash).arg(svc);
            let mut conn = self.conn.clone();
            let (value, pttl, in_hash): (Option<Vec<u8>>, i64, i64) =
                self.timed(OP, &keys.link, pipe.query_async(&mut conn)).await?;
            // PTTL -2: the key expired between the two commands; -1: no TTL.
            let value = value.filter(|_| pttl != -2).map(super::lossy);
            let ttl_ms = u64::try_from(pttl).ok();
            Ok(Some(LinkFacts { uid: uid.to_owned(), value, ttl_ms, in_hash: in_hash == 1 }))
        };
        let ((states, candidate_index), link) = futures::try_join!(states, link)?;
        let snapshot = states.snapshot(fallback_window_ms, range);
        let context = ExplainContext {
            namespace: ns,
            service: svc,
            update_period_secs: states.update_period_secs,
            candidate_index,
        };
        Ok(explain(&snapshot, context, link))
    }
}
