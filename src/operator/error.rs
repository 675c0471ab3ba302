//! The operator's one error type.
//!
//! Each variant's message says what failed and on which object; its cause stays a `#[source]`
//! and is printed with it by [`crate::core::ErrorChain`] (logs, Events, statuses).

use crate::store::StoreError;

/// An error of the operator layer. Every variant says what failed and on which object or key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{op}")]
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
    /// A Redis command outside the store's operations failed.
    #[error("{op} on {key}")]
    Redis {
        /// The operation.
        op: &'static str,
        /// The key, or the keys, involved.
        key: String,
        /// The Redis error.
        #[source]
        source: redis::RedisError,
    },
    /// Adding or removing the cleanup finalizer failed (the reconcile's own errors are never
    /// wrapped in this: see [`Error::from_finalizer`]).
    #[error("updating the finalizer {}", super::controller::FINALIZER)]
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
    /// An I/O operation (listening socket, files) failed.
    #[error("{what}")]
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
pub const METRIC_LABELS: [&str; 6] = ["kube", "redis", "finalizer", "incomplete_object", "not_leader", "io"];

impl Error {
    /// The error of a reconcile run inside the finalizer helper: the apply or cleanup error
    /// itself, else (adding or removing the finalizer failed) [`Error::Finalizer`].
    pub fn from_finalizer(error: kube::runtime::finalizer::Error<Error>) -> Error {
        use kube::runtime::finalizer::Error as F;
        match error {
            F::ApplyFailed(e) | F::CleanupFailed(e) => e,
            other => Error::Finalizer(Box::new(other)),
        }
    }

    /// A short, bounded label for metrics (`errors_total{kind=...}`), one of [`METRIC_LABELS`].
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "kube",
            Error::Store(_) | Error::Redis { .. } => "redis",
            Error::Finalizer(_) => "finalizer",
            Error::Incomplete { .. } => "incomplete_object",
            Error::NotLeader(_) => "not_leader",
            Error::Io { .. } => "io",
        }
    }

    /// The PascalCase category of the error, for the action of a `ReconcileFailed` Event (what
    /// `kubectl describe` shows beside the reason).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubernetesApi",
            Error::Store(_) | Error::Redis { .. } => "Redis",
            Error::Finalizer(_) => "Finalizer",
            Error::Incomplete { .. } => "IncompleteObject",
            Error::NotLeader(_) => "NotLeader",
            Error::Io { .. } => "Io",
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
    use crate::core::ErrorChain;

    fn every_kind() -> Vec<Error> {
        let io = || std::io::Error::other("broken pipe");
        vec![
            Error::Kube { op: "patching x".into(), source: kube::Error::LinesCodecMaxLineLengthExceeded },
            Error::Redis { op: "PING", key: "k".into(), source: redis::RedisError::from(io()) },
            Error::Finalizer(Box::new(kube::runtime::finalizer::Error::UnnamedObject)),
            Error::from_finalizer(kube::runtime::finalizer::Error::ApplyFailed(Error::NotLeader("x"))),
            Error::Incomplete { kind: "RouteState", name: "x".into(), field: "metadata.namespace" },
            Error::NotLeader("x"),
            Error::Io { what: "listening on 127.0.0.1:1".into(), source: io() },
        ]
    }

    #[test]
    fn labels_and_categories_are_bounded_and_name_the_inner_error() {
        let errors = every_kind();
        let labels: Vec<&str> = errors.iter().map(Error::metric_label).collect();
        assert_eq!(labels, ["kube", "redis", "finalizer", "not_leader", "incomplete_object", "not_leader", "io"]);
        assert!(labels.iter().all(|l| METRIC_LABELS.contains(l)), "{labels:?} vs {METRIC_LABELS:?}");
        let categories: Vec<&str> = errors.iter().map(Error::category).collect();
        assert_eq!(
            categories,
            ["KubernetesApi", "Redis", "Finalizer", "NotLeader", "IncompleteObject", "NotLeader", "Io"]
        );
        for c in categories {
            assert!(
                c.starts_with(|ch: char| ch.is_ascii_uppercase()) && c.chars().all(|ch| ch.is_ascii_alphanumeric())
            );
        }
    }

    #[test]
    fn a_cause_is_printed_once() {
        for e in every_kind() {
            let chain = e.chain().to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                let text = c.to_string();
                assert_eq!(chain.matches(&text).count(), 1, "{text:?} in {chain:?}");
                cause = c.source();
            }
        }
        let e = &every_kind()[6];
        assert_eq!(e.chain().to_string(), "listening on 127.0.0.1:1: broken pipe");
    }
}
