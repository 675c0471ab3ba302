//! The command line's one error type, and how a command fails: a usage error (clap prints it with
//! the usage, exit 2) or a failure (the error and its causes on stderr, exit 1).

use std::path::PathBuf;

use crate::{operator, store::StoreError};

/// What went wrong in a command. Each message says what failed and with which input; causes
/// are sources, printed after it ([`crate::core::ErrorChain`]).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A file named by a flag could not be read.
    #[error("reading the {what} file {}", path.display())]
    ReadFile {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// No usable kubeconfig (or in-cluster configuration).
    #[error("{what}")]
    Kubeconfig {
        /// Which kubeconfig, and what was done with it.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A Kubernetes API call failed.
    #[error("{what}")]
    Kube {
        /// What was being done, naming the object.
        what: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// A Redis operation failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operator failed.
    #[error(transparent)]
    Operator(#[from] operator::Error),
    /// No pod of the service takes new users.
    #[error("no pod of {namespace}/{service} takes new users")]
    NoPod {
        /// Namespace.
        namespace: String,
        /// Service.
        service: String,
    },
    /// `links try-set` found the user linked to another pod.
    #[error("{uid} is linked to pod {pod} already")]
    AlreadyLinked {
        /// User id.
        uid: String,
        /// The pod it stays on.
        pod: u32,
    },
    /// `status -n <namespace>` found no RouteState.
    #[error("no RouteStates in namespace {0}")]
    NoRouteStates(String),
}

/// How a command fails.
#[derive(Debug)]
pub enum Failure {
    /// Wrong flags or arguments: printed with the usage, exit code 2.
    Usage(String),
    /// The command failed: exit code 1.
    Failed(CliError),
}

impl<E: Into<CliError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Failed(e.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ErrorChain;

    #[test]
    fn a_failure_names_its_input_and_prints_its_cause_once() {
        let e = CliError::ReadFile {
            what: "Redis password",
            path: "/run/secret".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(e.chain().to_string(), "reading the Redis password file /run/secret: entity not found");
        let Failure::Failed(CliError::NoPod { namespace, .. }) =
            Failure::from(CliError::NoPod { namespace: "apps".into(), service: "web".into() })
        else {
            panic!("not a failure")
        };
        assert_eq!(namespace, "apps");
    }
}
