//! Link operations (wire contract v1, the original's §3.3 with the §8 fixes). A link maps
//! (ns, uid, svc) to a pod index: `sf:{<ns>:lk:<uid>}<svc>` holds the pod, with no TTL when
//! persistent (then also recorded in the uid's hash `sf:{<ns>:lk:<uid>}`) or with a TTL when
//! temporary. Every write is one Lua script over both keys (one slot), so it is atomic on
//! standalone Redis and on Redis Cluster.

use std::{collections::BTreeMap, time::Duration};

use redis::{Cmd, ErrorKind, FromRedisValue, Script, ServerErrorKind};

use super::{IntoStoreError, Store, StoreError, scripts};
use crate::core::{Keys, TEMP_LINK_TTL_SECS, keys::hash_slot, pod_index::parse_index};
use futures::future::try_join_all;

/// The wire value of a persistent TTL (and of "no link" in script replies).
pub const PERSIST_FOREVER: i64 = -1;

/// How long a link lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTtl {
    /// No TTL; recorded in the uid's hash of persistent links. Written by the pod owning the user.
    Persistent,
    /// Expires after this many seconds (must be > 0). Written by clients placing users.
    Temporary(u64),
}

impl LinkTtl {
    /// The default temporary TTL ([`TEMP_LINK_TTL_SECS`]).
    pub const fn temporary() -> Self {
        LinkTtl::Temporary(TEMP_LINK_TTL_SECS)
    }

    /// The wire value: -1 for persistent, the seconds otherwise; a temporary TTL of 0 (which
    /// Redis would turn into an immediate delete) is rejected.
    pub fn wire(self, op: &'static str) -> Result<i64, StoreError> {
        match self {
            LinkTtl::Persistent => Ok(PERSIST_FOREVER),
            LinkTtl::Temporary(secs) => {
                i64::try_from(secs).ok().filter(|&s| s > 0).ok_or_else(|| StoreError::InvalidArgument {
                    op,
                    reason: format!("temporary link TTL must be 1..=i64::MAX seconds, got {secs}"),
                })
            }
        }
    }
}

/// When a link write counts as done.
///
/// Redis replicates asynchronously: a write the master acknowledged is lost if the master dies
/// before a replica has it and the replica is promoted. `Replicated` closes that window for the
/// writes that matter (persistent links, a server's claim on a user) at the price of one replica
/// round trip per write; see the README's "Redis settings" for the trade-off and its figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Done when the master ran the script, as without replicas.
    #[default]
    MasterOnly,
    /// Done only when `WAIT replicas timeout`, sent right after the script on the same
    /// connection (one pipeline, on Redis Cluster to the node owning the link's slot), confirms
    /// at least `replicas` replicas have it. Fewer in time is [`StoreError::NotReplicated`]:
    /// written on the master, not confirmed. `timeout` must be shorter than the store's
    /// per-operation timeout.
    Replicated {
        /// Replicas that must confirm (≥ 1).
        replicas: u32,
        /// How long `WAIT` waits for them (> 0).
        timeout: Duration,
    },
}

impl Durability {
    /// Rejects a replicated mode that could never be confirmed or would outlive the operation.
    pub fn check(self, op: &'static str, op_timeout: Duration) -> Result<(), StoreError> {
        match self {
            Durability::MasterOnly => Ok(()),
            Durability::Replicated { replicas, timeout } => {
                let reason = if replicas == 0 {
                    Some("replicas must be ≥ 1".to_owned())
                } else if timeout.as_millis() == 0 {
                    Some("timeout must be ≥ 1 ms (WAIT 0 waits forever)".to_owned())
                } else if timeout >= op_timeout {
                    Some(format!("timeout {timeout:?} must be shorter than the operation timeout {op_timeout:?}"))
                } else {
                    None
                };
                match reason {
                    Some(r) => Err(StoreError::InvalidArgument { op, reason: format!("durability {self:?}: {r}") }),
                    None => Ok(()),
                }
            }
        }
    }
}

/// `EVALSHA <sha> <#keys> <keys…>`; the caller appends the arguments.
pub(crate) fn evalsha(script: &Script, keys: &[&str]) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len()).arg(keys);
    cmd
}

pub(crate) fn is_noscript(e: &redis::RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::NoScript)
}

/// The reply of [`Store::try_set_linked_pod`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrySetOutcome {
    /// Whether the link now points to the requested pod.
    pub success: bool,
    /// The pod the link points to now.
    pub current: u32,
    /// The pod it pointed to before, if any.
    pub previous: Option<u32>,
}

/// Converts a script's integer pod reply (-1 = none).
pub(crate) fn wire_pod(op: &'static str, key: &str, v: i64) -> Result<Option<u32>, StoreError> {
    match v {
        -1 => Ok(None),
        v => u32::try_from(v).map(Some).map_err(|_| StoreError::reply(op, key, v)),
    }
}

/// Parses a stored link value: a canonical decimal pod index.
fn stored_pod(op: &'static str, key: &str, v: &str) -> Result<u32, StoreError> {
    parse_index(v).ok_or_else(|| StoreError::reply(op, key, v))
}

pub(crate) struct LinkKeys {
    pub(crate) link: String,
    pub(crate) hash: String,
}

pub(crate) fn link_keys(op: &'static str, ns: &str, uid: &str, svc: &str) -> Result<LinkKeys, StoreError> {
    Ok(LinkKeys {
        link: Keys::link(ns, uid, svc).map_err(StoreError::key(op))?,
        hash: Keys::link_hash(ns, uid).map_err(StoreError::key(op))?,
    })
}

impl Store {
    /// Runs a link script with KEYS = [link, link hash] and ARGV = [svc, pod-or-persist, …].
    async fn link_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        keys: &LinkKeys,
        args: impl FnOnce(&mut Cmd),
    ) -> Result<T, StoreError> {
        let mut cmd = evalsha(script, &[&keys.link, &keys.hash]);
        args(&mut cmd);
        self.write_link(op, &keys.link, script, cmd).await
    }

    /// Runs `cmd` (an EVALSHA of `script` that writes the link `key`) with the store's
    /// [`Durability`], loading the script on NOSCRIPT.
    pub(crate) async fn write_link<T: FromRedisValue>(
        &self,
        op: &'static str,
        key: &str,
        script: &Script,
        cmd: Cmd,
    ) -> Result<T, StoreError> {
        let durability = self.durability;
        durability.check(op, self.op_timeout)?;
        let mut conn = self.conn.clone();
        let fail = |e: redis::RedisError| e.into_store_error(op, key, self.op_timeout);
        self.timed(op, key, async move {
            let Durability::Replicated { replicas, timeout } = durability else {
                return match cmd.query_async(&mut conn).await {
                    Err(e) if is_noscript(&e) => {
                        script.load_async(&mut conn).await.map_err(fail)?;
                        cmd.query_async(&mut conn).await.map_err(fail)
                    }
                    r => r.map_err(fail),
                };
            };
            // One pipeline: WAIT counts the replicas that have every write this connection sent
            // before it, so it must follow the script on the very same connection.
            let mut pipe = redis::pipe();
            pipe.add_command(cmd).cmd("WAIT").arg(replicas).arg(timeout.as_millis() as u64);
            let (reply, confirmed): (T, u32) = match pipe.query_async(&mut conn).await {
                Err(e) if is_noscript(&e) => {
                    script.load_async(&mut conn).await.map_err(fail)?;
                    pipe.query_async(&mut conn).await.map_err(fail)?
                }
                r => r.map_err(fail)?,
            };
            if confirmed < replicas {
                return Err(StoreError::NotReplicated {
                    op,
                    key: key.to_owned(),
                    confirmed,
                    wanted: replicas,
                    timeout,
                });
            }
            Ok(reply)
        })
        .await
    }

    /// Links (ns, uid, svc) to `pod` unconditionally; returns the previous pod.
    pub async fn set_linked_pod(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        pod: u32,
        ttl: LinkTtl,
    ) -> Result<Option<u32>, StoreError> {
        const OP: &str = "set_linked_pod";
        let (keys, ttl) = (link_keys(OP, ns, uid, svc)?, ttl.wire(OP)?);
        let prev: i64 = self
            .link_script(OP, &scripts::SET_LINK, &keys, |i| {
                i.arg(svc).arg(pod).arg(ttl);
            })
            .await?;
        wire_pod(OP, &keys.link, prev)
    }

    /// Links (ns, uid, svc) to `pod` unless a link exists; returns the pod actually linked
    /// (first writer wins). An existing link is left exactly as it is.
    pub async fn set_linked_pod_if_absent(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        pod: u32,
        ttl: LinkTtl,
    ) -> Result<u32, StoreError> {
        const OP: &str = "set_linked_pod_if_absent";
        let (keys, ttl) = (link_keys(OP, ns, uid, svc)?, ttl.wire(OP)?);
        let linked: i64 = self
            .link_script(OP, &scripts::SET_LINK_IF_ABSENT, &keys, |i| {
                i.arg(svc).arg(pod).arg(ttl);
            })
            .await?;
        wire_pod(OP, &keys.link, linked)?.ok_or_else(|| StoreError::reply(OP, &keys.link, linked))
    }

    /// Links (ns, uid, svc) to `pod` unless another pod holds a persistent link. A temporary link
    /// to another pod is overridden.
    pub async fn try_set_linked_pod(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        pod: u32,
        ttl: LinkTtl,
    ) -> Result<TrySetOutcome, StoreError> {
        const OP: &str = "try_set_linked_pod";
        let (keys, ttl) = (link_keys(OP, ns, uid, svc)?, ttl.wire(OP)?);
        let (success, current, previous): (i64, i64, i64) = self
            .link_script(OP, &scripts::TRY_SET_LINK, &keys, |i| {
                i.arg(svc).arg(pod).arg(ttl);
            })
            .await?;
        let current = wire_pod(OP, &keys.link, current)?.ok_or_else(|| StoreError::reply(OP, &keys.link, current))?;
        Ok(TrySetOutcome { success: success == 1, current, previous: wire_pod(OP, &keys.link, previous)? })
    }

    /// Removes the link. `persist_seconds > 0` keeps it readable as a temporary link for that
    /// long (delayed removal) and drops it from the persistent hash now; 0 deletes it now.
    /// Returns whether a link existed.
    pub async fn remove_linked_pod(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        persist_seconds: u64,
    ) -> Result<bool, StoreError> {
        const OP: &str = "remove_linked_pod";
        let keys = link_keys(OP, ns, uid, svc)?;
        let persist = persist_arg(OP, persist_seconds)?;
        let removed: i64 = self
            .link_script(OP, &scripts::REMOVE_LINK, &keys, |i| {
                i.arg(svc).arg(persist);
            })
            .await?;
        Ok(removed == 1)
    }

    /// Like [`Store::remove_linked_pod`], but only while the link points to `pod`.
    pub async fn remove_linked_pod_with_id(
        &self,
        ns: &str,
        uid: &str,
        svc: &str,
        pod: u32,
        persist_seconds: u64,
    ) -> Result<bool, StoreError> {
        const OP: &str = "remove_linked_pod_with_id";
        let keys = link_keys(OP, ns, uid, svc)?;
        let persist = persist_arg(OP, persist_seconds)?;
        let removed: i64 = self
            .link_script(OP, &scripts::REMOVE_LINK, &keys, |i| {
                i.arg(svc).arg(persist).arg(pod);
            })
            .await?;
        Ok(removed == 1)
    }

    /// The pod (ns, uid, svc) is linked to, persistent or temporary.
    pub async fn get_linked_pod(&self, ns: &str, uid: &str, svc: &str) -> Result<Option<u32>, StoreError> {
        const OP: &str = "get_linked_pod";
        let key = Keys::link(ns, uid, svc).map_err(StoreError::key(OP))?;
        let mut conn = self.conn.clone();
        let v: Option<Vec<u8>> = self.timed(OP, &key, redis::cmd("GET").arg(&key).query_async(&mut conn)).await?;
        v.map(|v| stored_pod(OP, &key, &super::lossy(v))).transpose()
    }

    /// The pod (ns, uid, svc) is linked to, only if the link is persistent.
    pub async fn get_linked_pod_if_persist(&self, ns: &str, uid: &str, svc: &str) -> Result<Option<u32>, StoreError> {
        const OP: &str = "get_linked_pod_if_persist";
        let key = Keys::link(ns, uid, svc).map_err(StoreError::key(OP))?;
        let mut conn = self.conn.clone();
        let pod: i64 = self.timed(OP, &key, scripts::GET_LINK_IF_PERSIST.key(&key).invoke_async(&mut conn)).await?;
        wire_pod(OP, &key, pod)
    }

    /// A uid's persistent links: service → pod. Unparsable entries are skipped with a warning.
    pub async fn get_link_services(&self, ns: &str, uid: &str) -> Result<BTreeMap<String, u32>, StoreError> {
        const OP: &str = "get_link_services";
        let key = Keys::link_hash(ns, uid).map_err(StoreError::key(OP))?;
        let mut conn = self.conn.clone();
        let entries: Vec<(Vec<u8>, Vec<u8>)> =
            self.timed(OP, &key, redis::cmd("HGETALL").arg(&key).query_async(&mut conn)).await?;
        let mut out = BTreeMap::new();
        for (svc, pod) in entries.into_iter().map(|(s, p)| (super::lossy(s), super::lossy(p))) {
            match parse_index(&pod) {
                Some(pod) => {
                    out.insert(svc, pod);
                }
                None => {
                    tracing::warn!(key, svc, value = %crate::core::pod_state::truncate(&pod), "skipping a link that is not a pod index")
                }
            }
        }
        Ok(out)
    }

    /// Links of many uids to one service, grouped as pod → uids. Uids without a link (or with an
    /// unparsable one, warned about) are left out. No cross-slot MGET: one pipeline of GETs per
    /// slot, the slots in parallel, so it works on Redis Cluster.
    pub async fn batch_get_linked_pod<S: AsRef<str>>(
        &self,
        ns: &str,
        uids: &[S],
        svc: &str,
    ) -> Result<BTreeMap<u32, Vec<String>>, StoreError> {
        const OP: &str = "batch_get_linked_pod";
        let mut groups: BTreeMap<u16, Vec<(&str, String)>> = BTreeMap::new();
        for uid in uids {
            let key = Keys::link(ns, uid.as_ref(), svc).map_err(StoreError::key(OP))?;
            let slot = if self.conn.is_cluster() { hash_slot(&key) } else { 0 };
            groups.entry(slot).or_default().push((uid.as_ref(), key));
        }
        let replies = try_join_all(groups.values().map(|group| async move {
            let mut pipe = redis::pipe();
            for (_, key) in group {
                pipe.cmd("GET").arg(key);
            }
            let mut conn = self.conn.clone();
            let values: Vec<Option<Vec<u8>>> = self.timed(OP, &group[0].1, pipe.query_async(&mut conn)).await?;
            let values = values.into_iter().map(|v| v.map(super::lossy));
            Ok::<_, StoreError>(
                group.iter().zip(values).map(|((uid, key), v)| (*uid, key.as_str(), v)).collect::<Vec<_>>(),
            )
        }))
        .await?;
        let mut out: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for (uid, key, value) in replies.into_iter().flatten() {
            let Some(value) = value else { continue };
            match parse_index(&value) {
                Some(pod) => out.entry(pod).or_default().push(uid.to_owned()),
                None => {
                    tracing::warn!(key, value = %crate::core::pod_state::truncate(&value), "skipping a link that is not a pod index")
                }
            }
        }
        Ok(out)
    }
}

fn persist_arg(op: &'static str, secs: u64) -> Result<i64, StoreError> {
    i64::try_from(secs)
        .map_err(|_| StoreError::InvalidArgument { op, reason: format!("persist seconds {secs} out of range") })
}
