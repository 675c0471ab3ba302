//! Arguments several commands share: how to reach Redis, `<namespace>/<name>`, link TTLs.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::error::CliError;
use crate::{
    core::TEMP_LINK_TTL_SECS,
    store::{DEFAULT_OP_TIMEOUT, LinkTtl, RedisOptions, SentinelOptions},
};

/// How to reach Redis (shared by every command that uses it).
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL (redis:// or rediss://); repeat or comma-separate for Redis Cluster seed nodes,
    /// or for the sentinels with --redis-sentinel-master.
    #[arg(long = "redis-url", env = "REDIS_URL", value_delimiter = ',', required = true)]
    pub urls: Vec<String>,
    /// The URLs are seed nodes of a Redis Cluster.
    #[arg(long = "redis-cluster", env = "REDIS_CLUSTER")]
    pub cluster: bool,
    /// File holding the Redis password (overrides a password in the URL).
    #[arg(long = "redis-password-file", env = "REDIS_PASSWORD_FILE")]
    pub password_file: Option<PathBuf>,
    /// PEM CA file to trust for rediss:// URLs.
    #[arg(long = "redis-ca-file", env = "REDIS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Timeout of connecting and of every Redis operation, in milliseconds.
    #[arg(long = "redis-timeout-ms", env = "REDIS_TIMEOUT_MS", default_value_t = DEFAULT_OP_TIMEOUT.as_millis() as u64,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub timeout_ms: u64,
    /// Redis behind Sentinel: the master's name; --redis-url then lists the sentinels.
    #[arg(long = "redis-sentinel-master", env = "REDIS_SENTINEL_MASTER", conflicts_with = "cluster")]
    pub sentinel_master: Option<String>,
    /// File holding the sentinels' password (overrides a password in the sentinel URLs).
    #[arg(long = "redis-sentinel-password-file", env = "REDIS_SENTINEL_PASSWORD_FILE", requires = "sentinel_master")]
    pub sentinel_password_file: Option<PathBuf>,
}

fn read_password(what: &'static str, path: &Option<PathBuf>) -> Result<Option<String>, CliError> {
    let Some(path) = path else { return Ok(None) };
    let text =
        std::fs::read_to_string(path).map_err(|source| CliError::ReadFile { what, path: path.clone(), source })?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

impl RedisArgs {
    /// The store options; reads the password files.
    pub fn options(&self) -> Result<RedisOptions, CliError> {
        let sentinel = match &self.sentinel_master {
            Some(master) => Some(SentinelOptions {
                master: master.clone(),
                password: read_password("Redis Sentinel password", &self.sentinel_password_file)?,
            }),
            None => None,
        };
        Ok(RedisOptions {
            urls: self.urls.clone(),
            cluster: self.cluster,
            password: read_password("Redis password", &self.password_file)?,
            ca_file: self.ca_file.clone(),
            op_timeout: Duration::from_millis(self.timeout_ms),
            sentinel,
        })
    }

    /// Connects to Redis.
    pub async fn connect(&self) -> Result<crate::store::Store, CliError> {
        Ok(crate::store::Store::connect(&self.options()?).await?)
    }
}

/// `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Parses `<namespace>/<name>` (both non-empty, one slash).
pub fn ns_name(s: &str) -> Result<NsName, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(NsName { namespace: ns.to_owned(), name: name.to_owned() })
        }
        _ => Err(format!("{s:?} is not <namespace>/<name>")),
    }
}

/// A user's link to a service, and the Redis holding it: what every `links` command names.
#[derive(Debug, Args)]
pub struct LinkArgs {
    /// `<namespace>/<service>`.
    #[arg(value_parser = ns_name)]
    pub service: NsName,
    /// User id.
    pub uid: String,
    /// Redis connection.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// Link TTL flags.
#[derive(Debug, Args)]
pub struct TtlArgs {
    /// A persistent link (no TTL), as written by the pod owning the user.
    #[arg(long, conflicts_with = "ttl")]
    pub persistent: bool,
    /// TTL of a temporary link, in seconds.
    #[arg(long, default_value_t = TEMP_LINK_TTL_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,
}

impl TtlArgs {
    /// The TTL the flags ask for.
    pub fn ttl(&self) -> LinkTtl {
        if self.persistent { LinkTtl::Persistent } else { LinkTtl::Temporary(self.ttl) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_namespace_slash_name() {
        assert_eq!(ns_name("a/b"), Ok(NsName { namespace: "a".into(), name: "b".into() }));
        for bad in ["a", "/b", "a/", "a/b/c", ""] {
            assert!(ns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_unreadable_password_file_is_named() {
        let args = RedisArgs {
            urls: vec!["redis://127.0.0.1:1".into()],
            cluster: false,
            password_file: Some("/nonexistent/password".into()),
            ca_file: None,
            timeout_ms: 1000,
            sentinel_master: None,
            sentinel_password_file: None,
        };
        let e = args.options().unwrap_err();
        assert!(matches!(&e, CliError::ReadFile { what: "Redis password", .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/password"), "{e}");
    }
}
