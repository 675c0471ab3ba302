//! Telling "this is the dataset I knew" from "Redis came back empty, or is another dataset".
//!
//! Every service has an epoch key, `sf:{<ns>:state:<svc>}epoch` (wire contract §1): an opaque
//! random token that the first writer creates with `SET … NX` and nobody changes afterwards. A
//! writer remembers the token it first saw ([`DatasetMark`]); when a later look finds the key
//! missing, Redis lost its data (restart without persistence, `FLUSHALL`, eviction); when it
//! finds another token, this is another dataset (a restore, another Redis behind the same
//! address). The key shares the state hash's slot, so on Redis Cluster it lives on the node
//! that holds the service's state.
//!
//! The server's `run_id` (`INFO server`) tells a restart or a failover that kept the data
//! (AOF reload, a promoted replica: the token is still there) from no change at all; it is
//! reported, never a reason to call data lost.
//!
//! [`judge`] is the decision, pure; [`DatasetWatch::check`] (one service) and
//! [`Store::check_datasets`] (many, one pipeline per slot) are the round trip around it that the
//! operator and the server role run every period.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use redis::Value;

use super::{Store, StoreError};
use crate::core::{Keys, keys::hash_slot};

/// The key holding the dataset epoch of `ns`/`svc`.
pub fn epoch_key(ns: &str, svc: &str) -> Result<String, StoreError> {
    Keys::state_epoch(ns, svc).map_err(StoreError::key("epoch_key"))
}

/// What a writer knows of the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetMark {
    /// The epoch token.
    pub epoch: String,
    /// The `run_id` of the Redis server holding the epoch key, when it could be read.
    pub run_id: Option<String>,
}

/// Why the dataset is not the one known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetLoss {
    /// The epoch key is gone: Redis came back empty (or was flushed).
    Empty,
    /// The epoch key holds another token: another dataset.
    Replaced {
        /// The token known before.
        known: String,
        /// The token found.
        found: String,
    },
}

impl std::fmt::Display for DatasetLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatasetLoss::Empty => f.write_str("the dataset epoch key is gone: Redis came back empty"),
            DatasetLoss::Replaced { known, found } => {
                write!(f, "the dataset epoch changed from {known} to {found}: Redis holds another dataset")
            }
        }
    }
}

/// The outcome of one look at the dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatasetChange {
    /// Nothing was known yet; the mark is recorded now.
    First,
    /// The dataset known before, on the same server.
    Same,
    /// The dataset known before, on another server process (a restart that reloaded the data,
    /// or a promoted replica).
    Restarted {
        /// The `run_id` known before.
        previous: String,
        /// The `run_id` now.
        current: String,
    },
    /// Not the dataset known before: what it held (pod states, links) may be gone.
    Lost(DatasetLoss),
}

impl DatasetChange {
    /// Whether the data known before may be gone.
    pub fn is_lost(&self) -> bool {
        matches!(self, DatasetChange::Lost(_))
    }
}

/// Judges one look: `found` is the epoch token that was in Redis before this look (`None`: the
/// key was missing and `created` is the token this look wrote), `run_id` the server's.
/// Returns the verdict and the mark to remember from now on.
pub fn judge(
    known: Option<&DatasetMark>,
    found: Option<&str>,
    created: &str,
    run_id: Option<&str>,
) -> (DatasetChange, DatasetMark) {
    let now = DatasetMark { epoch: found.unwrap_or(created).to_owned(), run_id: run_id.map(str::to_owned) };
    let change = match (known, found) {
        (None, _) => DatasetChange::First,
        (Some(_), None) => DatasetChange::Lost(DatasetLoss::Empty),
        (Some(k), Some(f)) if k.epoch != f => {
            DatasetChange::Lost(DatasetLoss::Replaced { known: k.epoch.clone(), found: f.to_owned() })
        }
        (Some(k), Some(_)) => match (&k.run_id, run_id) {
            (Some(prev), Some(cur)) if prev != cur => {
                DatasetChange::Restarted { previous: prev.clone(), current: cur.to_owned() }
            }
            _ => DatasetChange::Same,
        },
    };
    // A run_id that could not be read this time keeps the one known, so a later look still
    // notices a restart.
    let now = match (now.run_id.is_none(), known) {
        (true, Some(k)) if change == DatasetChange::Same => DatasetMark { run_id: k.run_id.clone(), ..now },
        _ => now,
    };
    (change, now)
}

/// The `run_id:` line of an `INFO server` reply.
pub fn parse_run_id(info: &str) -> Option<&str> {
    info.lines().find_map(|l| l.strip_prefix("run_id:")).map(str::trim).filter(|id| !id.is_empty())
}

/// A fresh random epoch token (128 bits, hex).
fn new_token() -> String {
    format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

/// Watches the dataset of one service: keep one per (namespace, service) and call
/// [`DatasetWatch::check`] every period.
#[derive(Debug, Clone)]
pub struct DatasetWatch {
    ns: String,
    svc: String,
    known: Option<DatasetMark>,
}

impl DatasetWatch {
    /// A watch that knows nothing yet (its first check says [`DatasetChange::First`]).
    pub fn new(ns: impl Into<String>, svc: impl Into<String>) -> Self {
        Self { ns: ns.into(), svc: svc.into(), known: None }
    }

    /// What the watch knows.
    pub fn known(&self) -> Option<&DatasetMark> {
        self.known.as_ref()
    }

    /// Looks once and remembers what it found (one round trip; see [`Store::check_datasets`]
    /// for many services at once). A failed look changes nothing.
    pub async fn check(&mut self, store: &Store) -> Result<DatasetChange, StoreError> {
        let mut changes = store.check_datasets(std::slice::from_mut(self)).await?;
        Ok(changes.remove(0))
    }
}

/// What one look found for one epoch key: the token that was there (`None`: missing, now
/// created with `created`) and the run_id of the node holding it.
struct Look {
    found: Option<String>,
    created: String,
    run_id: Option<String>,
}

impl Store {
    /// Looks at the datasets of many services at once and updates each watch: one pipeline per
    /// node-slot (`SET <epoch> <token> NX` + `GET <epoch>` per service, then `INFO server`, so
    /// the run_id is that of the node holding the keys), the slots in parallel. Returns the
    /// changes in the order of `watches`; on an error no watch changes.
    pub async fn check_datasets(&self, watches: &mut [DatasetWatch]) -> Result<Vec<DatasetChange>, StoreError> {
        const OP: &str = "check_datasets";
        let mut groups: BTreeMap<u16, Vec<(usize, String)>> = BTreeMap::new();
        for (i, w) in watches.iter().enumerate() {
            let key = epoch_key(&w.ns, &w.svc)?;
            let slot = if self.conn.is_cluster() { hash_slot(&key) } else { 0 };
            groups.entry(slot).or_default().push((i, key));
        }
        let looks = try_join_all(groups.values().map(|group| async move {
            let tokens: Vec<String> = group.iter().map(|_| new_token()).collect();
            let mut pipe = redis::pipe();
            for ((_, key), token) in group.iter().zip(&tokens) {
                pipe.cmd("SET").arg(key).arg(token).arg("NX").cmd("GET").arg(key);
            }
            // Keyless: it follows the pipeline to the node owning the slot above.
            pipe.cmd("INFO").arg("server");
            let mut conn = self.conn.clone();
            let replies: Vec<Value> = self.timed(OP, &group[0].1, pipe.query_async(&mut conn)).await?;
            let run_id = match replies.last() {
                Some(Value::BulkString(b)) => parse_run_id(&String::from_utf8_lossy(b)).map(str::to_owned),
                Some(Value::VerbatimString { text, .. }) => parse_run_id(text).map(str::to_owned),
                other => {
                    tracing::debug!(key = group[0].1, reply = ?other, "INFO server: unexpected reply; run_id unknown");
                    None
                }
            };
            let mut out = Vec::with_capacity(group.len());
            for (((i, key), token), pair) in group.iter().zip(tokens).zip(replies.chunks(2)) {
                let (set, get) = (&pair[0], pair.get(1));
                let now = match get {
                    Some(Value::BulkString(b)) => super::lossy(b.clone()),
                    other => return Err(StoreError::reply(OP, key, other)),
                };
                // SET … NX answers OK when it created the key, nil when one was there.
                let found = matches!(set, Value::Nil).then_some(now);
                out.push((*i, Look { found, created: token, run_id: run_id.clone() }));
            }
            Ok::<_, StoreError>(out)
        }))
        .await?;
        let mut changes: Vec<Option<DatasetChange>> = vec![None; watches.len()];
        for (i, look) in looks.into_iter().flatten() {
            let w = &mut watches[i];
            let (change, mark) = judge(w.known.as_ref(), look.found.as_deref(), &look.created, look.run_id.as_deref());
            w.known = Some(mark);
            changes[i] = Some(change);
        }
        Ok(changes.into_iter().map(|c| c.expect("every watch was looked at")).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(epoch: &str, run_id: Option<&str>) -> DatasetMark {
        DatasetMark { epoch: epoch.into(), run_id: run_id.map(Into::into) }
    }

    #[test]
    fn the_first_look_records_what_it_found_or_created() {
        let (c, m) = judge(None, None, "new", Some("r1"));
        assert_eq!((c, m), (DatasetChange::First, mark("new", Some("r1"))));
        let (c, m) = judge(None, Some("old"), "new", Some("r1"));
        assert_eq!((c, m), (DatasetChange::First, mark("old", Some("r1"))));
    }

    #[test]
    fn same_token_same_server_is_the_same_dataset() {
        let k = mark("t", Some("r1"));
        assert_eq!(judge(Some(&k), Some("t"), "x", Some("r1")), (DatasetChange::Same, k.clone()));
        // An unreadable run_id keeps the known one.
        assert_eq!(judge(Some(&k), Some("t"), "x", None), (DatasetChange::Same, k));
    }

    #[test]
    fn same_token_on_another_server_is_a_restart_that_kept_the_data() {
        let (c, m) = judge(Some(&mark("t", Some("r1"))), Some("t"), "x", Some("r2"));
        assert_eq!(c, DatasetChange::Restarted { previous: "r1".into(), current: "r2".into() });
        assert_eq!(m, mark("t", Some("r2")));
        assert!(!c.is_lost());
    }

    #[test]
    fn a_missing_epoch_is_an_empty_restart_and_the_new_token_is_known_from_then_on() {
        let (c, m) = judge(Some(&mark("t", Some("r1"))), None, "t2", Some("r2"));
        assert_eq!(c, DatasetChange::Lost(DatasetLoss::Empty));
        assert!(c.is_lost());
        assert_eq!(m, mark("t2", Some("r2")));
        // Flushed in place (same server): still lost.
        let (c, _) = judge(Some(&mark("t", Some("r1"))), None, "t2", Some("r1"));
        assert_eq!(c, DatasetChange::Lost(DatasetLoss::Empty));
        // The next look, against the new token, is calm again.
        assert_eq!(judge(Some(&m), Some("t2"), "t3", Some("r2")).0, DatasetChange::Same);
    }

    #[test]
    fn another_token_is_another_dataset() {
        let (c, m) = judge(Some(&mark("t", Some("r1"))), Some("u"), "x", Some("r1"));
        assert_eq!(c, DatasetChange::Lost(DatasetLoss::Replaced { known: "t".into(), found: "u".into() }));
        assert_eq!(m.epoch, "u");
        let DatasetChange::Lost(loss) = c else { unreachable!() };
        assert!(loss.to_string().contains("from t to u"), "{loss}");
    }

    #[test]
    fn run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nrun_id:3c1f0e5d9a\r\ntcp_port:6379\r\n";
        assert_eq!(parse_run_id(info), Some("3c1f0e5d9a"));
        assert_eq!(parse_run_id("# Server\r\nrun_id:\r\n"), None);
        assert_eq!(parse_run_id("garbage"), None);
    }
}
