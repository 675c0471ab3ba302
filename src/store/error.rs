//! The store layer's one error type. Every variant names the operation and, where there is one,
//! the key it failed on; URLs are always shown with their password redacted.

use std::{path::PathBuf, time::Duration};

use crate::core::KeyError;

/// An error of the Redis store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A Redis URL could not be parsed (the URL is shown redacted).
    #[error("invalid Redis URL {url}")]
    InvalidUrl {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// No URL was given.
    #[error("no Redis URL given")]
    NoUrl,
    /// The CA file for `rediss://` could not be read.
    #[error("reading the Redis CA file {}", path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Establishing the connection failed.
    #[error("connecting to Redis at {url}")]
    Connect {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// Connecting did not finish in time.
    #[error("connecting to Redis at {url} timed out after {timeout:?}")]
    ConnectTimeout { url: String, timeout: Duration },
    /// A command or script failed on the server or the connection.
    #[error("{op} on {key}")]
    Redis {
        op: &'static str,
        key: String,
        #[source]
        source: redis::RedisError,
    },
    /// A command did not answer within the per-operation timeout.
    #[error("{op} on {key} timed out after {timeout:?}")]
    Timeout { op: &'static str, key: String, timeout: Duration },
    /// A key could not be built from its parts.
    #[error("{op}")]
    Key {
        op: &'static str,
        #[source]
        source: KeyError,
    },
    /// Redis answered something the wire contract does not allow.
    #[error("{op} on {key}: unexpected reply {reply}")]
    Reply { op: &'static str, key: String, reply: String },
    /// A link write with [`crate::store::Durability::Replicated`] ran on the master, but fewer
    /// replicas than asked confirmed it in time: it is there now, and lost if the master fails
    /// before a replica has it.
    #[error(
        "{op} on {key}: written on the master but confirmed by only {confirmed} of {wanted} replicas within {timeout:?}"
    )]
    NotReplicated { op: &'static str, key: String, confirmed: u32, wanted: u32, timeout: Duration },
    /// A command failed together with others that shared its pipeline; `cause` is the common
    /// cause (the pipeline's error without its operation and key).
    #[error("{op} on {key}: {cause}")]
    Shared { op: &'static str, key: String, cause: String },
    /// An argument was rejected before anything was sent.
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument { op: &'static str, reason: String },
}

impl StoreError {
    pub(crate) fn key(op: &'static str) -> impl FnOnce(KeyError) -> StoreError {
        move |source| StoreError::Key { op, source }
    }

    pub(crate) fn reply(op: &'static str, key: &str, reply: impl std::fmt::Debug) -> StoreError {
        StoreError::Reply { op, key: key.to_owned(), reply: crate::core::pod_state::truncate(&format!("{reply:?}")) }
    }

    /// Whether a replicated link write ran on the master without enough replicas confirming it.
    pub fn is_not_replicated(&self) -> bool {
        matches!(self, StoreError::NotReplicated { .. })
    }

    /// What went wrong, without the operation and the key (for [`StoreError::Shared`]).
    pub fn cause(&self) -> String {
        match self {
            StoreError::Redis { source, .. } => crate::core::ErrorChain::chain(source).to_string(),
            StoreError::Timeout { timeout, .. } => format!("timed out after {timeout:?}"),
            StoreError::Shared { cause, .. } => cause.clone(),
            StoreError::Reply { reply, .. } => format!("unexpected reply {reply}"),
            other => crate::core::ErrorChain::chain(other).to_string(),
        }
    }

    /// Whether the error is a timeout (of a command or of connecting).
    pub fn is_timeout(&self) -> bool {
        matches!(self, StoreError::Timeout { .. } | StoreError::ConnectTimeout { .. })
    }
}

/// Replaces the password of a `redis://user:password@host` URL with `***`, so URLs can be logged.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let redacted = match userinfo.find(':') {
        Some(colon) => format!("{}:***", &userinfo[..colon]),
        // `redis://secret@host`: the redis crate reads a lone userinfo as the password.
        None => "***".to_owned(),
    };
    format!("{}{}{}", &url[..scheme_end + 3], redacted, &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_survive_redaction() {
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redact_url("redis://:s3cret@h:1/0"), "redis://:***@h:1/0");
        assert_eq!(redact_url("rediss://user:s3cret@h:1"), "rediss://user:***@h:1");
        assert_eq!(redact_url("redis://s3cret@h"), "redis://***@h");
        assert_eq!(redact_url("redis://u:p@ss@h/0"), "redis://u:***@h/0");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
