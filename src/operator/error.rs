//! The operator's one error type.

use crate::{core::KeyError, store::StoreError};

/// An error of the operator layer. Every variant says what failed and on which object or key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{op}: {source}")]
    Kube {
        /// What was being done, naming the object.
        op: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Redis operation of the store layer failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A Redis command or pipeline failed.
    #[error("{op} on {key}: {source}")]
    Redis {
        /// The operation.
        op: &'static str,
        /// The key, or the keys, involved.
        key: String,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// A Redis key could not be built (a namespace or service name the key layout rejects).
    #[error("building Redis keys for {what}: {source}")]
    Key {
        /// The RouteState or service the keys are for.
        what: String,
        /// Which part was rejected.
        #[source]
        source: KeyError,
    },
    /// The finalizer machinery failed (wraps the apply/cleanup error).
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// An object lacks something the API always sets (namespace, name).
    #[error("{kind} {name:?} has no {field}")]
    Incomplete {
        /// Object kind.
        kind: &'static str,
        /// Object name.
        name: String,
        /// The missing field.
        field: &'static str,
    },
    /// This replica does not hold the lease, so it must not write.
    #[error("not the lease holder: refusing to {0}")]
    NotLeader(&'static str),
    /// Invalid configuration (flags, environment, files).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An I/O operation (listening socket, files) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Every value [`Error::metric_label`] returns, plus `event` (a failed Event write, which never
/// fails a reconcile): the bounded label set of `routestate_reconcile_errors_total{kind}`.
pub const METRIC_LABELS: [&str; 9] =
    ["kube", "redis", "key", "finalizer", "incomplete_object", "not_leader", "config", "io", "event"];

impl Error {
    /// A short, bounded label for metrics (`errors_total{kind=...}`), one of [`METRIC_LABELS`].
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Store(_) | Error::Redis { .. } => "redis",
            Error::Key { .. } => "key",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer",
            },
            Error::Incomplete { .. } => "incomplete_object",
            Error::NotLeader(_) => "not_leader",
            Error::Config(_) => "config",
            Error::Io { .. } => "io",
        }
    }

    pub(crate) fn kube(op: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let op = op.into();
        move |source| Error::Kube { op, source }
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_label_is_in_the_bounded_set() {
        let io = || std::io::Error::other("x");
        let errors = [
            Error::Kube { op: "x".into(), source: kube::Error::LinesCodecMaxLineLengthExceeded },
            Error::Redis { op: "GET", key: "k".into(), source: redis::RedisError::from(io()) },
            Error::Key { what: "x".into(), source: KeyError::Empty { what: "namespace" } },
            Error::Finalizer(Box::new(kube::runtime::finalizer::Error::UnnamedObject)),
            Error::Finalizer(Box::new(kube::runtime::finalizer::Error::ApplyFailed(Error::NotLeader("x")))),
            Error::Incomplete { kind: "RouteState", name: "x".into(), field: "metadata.namespace" },
            Error::NotLeader("x"),
            Error::Config("x".into()),
            Error::Io { what: "x".into(), source: io() },
        ];
        let labels: Vec<&str> = errors.iter().map(Error::metric_label).collect();
        assert_eq!(
            labels,
            ["kube", "redis", "key", "finalizer", "not_leader", "incomplete_object", "not_leader", "config", "io"]
        );
        assert!(labels.iter().all(|l| METRIC_LABELS.contains(l)), "{labels:?} vs {METRIC_LABELS:?}");
    }
}
