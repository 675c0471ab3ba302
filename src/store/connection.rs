//! Connecting to Redis: standalone (through a reconnecting [`ConnectionManager`]), Redis
//! Cluster (through the redis crate's async cluster client) or the master of a Sentinel-monitored
//! Redis (through [`SentinelConnection`], which follows failovers), plain `redis://` or TLS
//! `rediss://` with an optional private CA, an optional password and per-operation timeouts.

use std::{fmt, path::PathBuf, time::Duration};

use redis::{
    Client, Cmd, ConnectionAddr, IntoConnectionInfo, Pipeline, RedisFuture, TlsCertificates, TlsMode, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
    sentinel::{SentinelClientBuilder, SentinelServerType},
};

use super::{
    error::{StoreError, redact_url},
    sentinel::{SentinelConnection, SentinelParams},
};

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisOptions {
    /// redis://, rediss:// (TLS) URL; for Redis Cluster, the seed URLs.
    pub urls: Vec<String>,
    /// Whether `urls` are seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// Overrides the URL's password (read from a file/secret by callers; never logged).
    pub password: Option<String>,
    /// PEM file of a CA to trust for rediss:// (self-signed test CA); system roots otherwise.
    pub ca_file: Option<std::path::PathBuf>,
    /// Limit for connecting and for every single operation.
    pub op_timeout: std::time::Duration,
    /// Redis behind Sentinel: `urls` are then the sentinels, and the master is found (and
    /// followed across failovers) through them.
    pub sentinel: Option<SentinelOptions>,
}

/// Reaching the master of a Sentinel-monitored Redis. The sentinels are `RedisOptions::urls`
/// (`redis://` or `rediss://`, a password in a URL is the sentinels'); the master and replicas
/// use TLS when the sentinel URLs do, with the same CA (`RedisOptions::ca_file`), and
/// `RedisOptions::password`.
#[derive(Clone)]
pub struct SentinelOptions {
    /// The master's name in the sentinels' configuration (`sentinel monitor <name> …`).
    pub master: String,
    /// The sentinels' password (their `requirepass`), when not given in the URLs.
    pub password: Option<String>,
}

impl SentinelOptions {
    /// The master `master`, sentinels without a password (or with it in their URLs).
    pub fn new(master: impl Into<String>) -> Self {
        Self { master: master.into(), password: None }
    }
}

/// Reconnection attempts per round after the connection to a standalone server is lost.
const RECONNECT_RETRIES: usize = 3;
/// Longest pause between two reconnection attempts.
const RECONNECT_MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(400);

/// Default per-operation timeout.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisOptions {
    /// Options for one standalone server URL with the default timeout.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self {
            urls: vec![url.into()],
            cluster: false,
            password: None,
            ca_file: None,
            op_timeout: DEFAULT_OP_TIMEOUT,
            sentinel: None,
        }
    }

    /// Options for the master `master` of a Sentinel-monitored Redis, given the sentinels' URLs,
    /// with the default timeout.
    pub fn sentinel(urls: impl IntoIterator<Item = impl Into<String>>, master: impl Into<String>) -> Self {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            sentinel: Some(SentinelOptions::new(master)),
            ..Self::standalone("")
        }
    }

    /// Options for a Redis Cluster given its seed URLs, with the default timeout.
    pub fn cluster(urls: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            urls: urls.into_iter().map(Into::into).collect(),
            cluster: true,
            password: None,
            ca_file: None,
            op_timeout: DEFAULT_OP_TIMEOUT,
            sentinel: None,
        }
    }

    /// The URLs with passwords redacted, for logs and errors.
    pub fn redacted_urls(&self) -> String {
        self.urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>().join(",")
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("urls", &self.redacted_urls())
            .field("cluster", &self.cluster)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("op_timeout", &self.op_timeout)
            .field("sentinel_master", &self.sentinel.as_ref().map(|s| &s.master))
            .field("sentinel_password", &self.sentinel.as_ref().and_then(|s| s.password.as_ref()).map(|_| "<redacted>"))
            .finish()
    }
}

/// A connection to standalone Redis or to a Redis Cluster. Cheap to clone (both variants are
/// multiplexed handles); `redis::cmd`, `redis::pipe` and `redis::Script` work on both.
#[derive(Clone)]
pub enum RedisConn {
    /// A standalone server, reconnecting automatically.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
    /// The master of a Sentinel-monitored Redis, followed across failovers.
    Sentinel(SentinelConnection),
}

impl fmt::Debug for RedisConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RedisConn::Single(_) => "RedisConn::Single",
            RedisConn::Cluster(_) => "RedisConn::Cluster",
            RedisConn::Sentinel(_) => "RedisConn::Sentinel",
        })
    }
}

impl RedisConn {
    /// Whether this is a Redis Cluster connection.
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisConn::Cluster(_))
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
            RedisConn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
            RedisConn::Sentinel(c) => c.get_db(),
        }
    }
}

fn tls_certificates(opts: &RedisOptions) -> Result<Option<TlsCertificates>, StoreError> {
    let Some(path) = &opts.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|source| StoreError::CaFile { path: PathBuf::from(path), source })?;
    Ok(Some(TlsCertificates { client_tls: None, root_cert: Some(pem) }))
}

fn connection_info(url: &str, password: Option<&str>) -> Result<redis::ConnectionInfo, StoreError> {
    let info = url.into_connection_info().map_err(|source| StoreError::InvalidUrl { url: redact_url(url), source })?;
    Ok(match password {
        Some(pw) => {
            let settings = info.redis_settings().clone().set_password(pw);
            info.set_redis_settings(settings)
        }
        None => info,
    })
}

/// Connects to Redis. Connecting is bounded by `op_timeout`; so is every later command (the
/// redis crate's response timeout, and the store's own timeout around each operation).
pub async fn connect(opts: &RedisOptions) -> Result<RedisConn, StoreError> {
    let first = opts.urls.first().ok_or(StoreError::NoUrl)?;
    let redacted = opts.redacted_urls();
    let certs = tls_certificates(opts)?;
    if opts.urls.iter().any(|u| u.starts_with("rediss://")) {
        // rustls needs one process-wide crypto provider; a second install is a harmless no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let connect_err = |source| StoreError::Connect { url: redacted.clone(), source };
    let timed_out = || StoreError::ConnectTimeout { url: redacted.clone(), timeout: opts.op_timeout };
    if let Some(sentinel) = &opts.sentinel {
        if opts.cluster {
            return Err(StoreError::InvalidArgument {
                op: "connect",
                reason: "Sentinel and Redis Cluster exclude each other".into(),
            });
        }
        let client = sentinel_client(opts, sentinel, certs)?;
        let params = SentinelParams {
            client,
            master: sentinel.master.clone(),
            op_timeout: opts.op_timeout,
            retries: RECONNECT_RETRIES,
            max_delay: RECONNECT_MAX_DELAY,
            db: 0,
        };
        let conn = tokio::time::timeout(opts.op_timeout, SentinelConnection::connect(params))
            .await
            .map_err(|_| timed_out())?
            .map_err(|source| StoreError::Connect {
                url: format!("master {:?} via sentinels {redacted}", sentinel.master),
                source,
            })?;
        return Ok(RedisConn::Sentinel(conn));
    }
    if opts.cluster {
        let infos =
            opts.urls.iter().map(|u| connection_info(u, opts.password.as_deref())).collect::<Result<Vec<_>, _>>()?;
        let mut builder =
            ClusterClientBuilder::new(infos).connection_timeout(opts.op_timeout).response_timeout(opts.op_timeout);
        if let Some(pw) = &opts.password {
            builder = builder.password(pw);
        }
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        let client = builder.build().map_err(connect_err)?;
        let conn = tokio::time::timeout(opts.op_timeout, client.get_async_connection())
            .await
            .map_err(|_| timed_out())?
            .map_err(connect_err)?;
        Ok(RedisConn::Cluster(conn))
    } else {
        let info = connection_info(first, opts.password.as_deref())?;
        let client = match certs {
            Some(certs) => Client::build_with_tls(info, certs),
            None => Client::open(info),
        }
        .map_err(connect_err)?;
        // Reconnect quickly and give up a round soon: the crate's default (6 retries, 100 ms
        // doubling, no cap, about 6 s a round) makes commands wait on a dead server for seconds,
        // delays noticing an outage and recovering from it, and turns a wrong password or CA into
        // a timeout. The next command starts a new round anyway.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.op_timeout))
            .set_response_timeout(Some(opts.op_timeout))
            .set_number_of_retries(RECONNECT_RETRIES)
            .set_max_delay(RECONNECT_MAX_DELAY);
        let conn = tokio::time::timeout(opts.op_timeout, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| timed_out())?
            .map_err(connect_err)?;
        Ok(RedisConn::Single(conn))
    }
}

/// The crate's Sentinel client for `opts`: the sentinels' addresses, ACL user and password from
/// their URLs (or `sentinel.password`), the data nodes' password from `opts.password`, TLS for
/// both when the sentinel URLs are `rediss://`, with the private CA if one is given.
fn sentinel_client(
    opts: &RedisOptions,
    sentinel: &SentinelOptions,
    certs: Option<TlsCertificates>,
) -> Result<redis::sentinel::SentinelClient, StoreError> {
    if sentinel.master.is_empty() {
        return Err(StoreError::InvalidArgument { op: "connect", reason: "the Sentinel master name is empty".into() });
    }
    let mut addrs = Vec::new();
    let (mut url_user, mut url_password) = (None, None);
    for url in &opts.urls {
        let info = connection_info(url, None)?;
        if let Some(pw) = info.redis_settings().password() {
            url_password = Some(pw.to_owned());
        }
        if let Some(user) = info.redis_settings().username() {
            url_user = Some(user.to_owned());
        }
        addrs.push(info.addr().clone());
    }
    let tls: Vec<bool> = addrs.iter().map(|a| matches!(a, ConnectionAddr::TcpTls { .. })).collect();
    if tls.iter().any(|t| *t != tls[0]) {
        return Err(StoreError::InvalidArgument {
            op: "connect",
            reason: format!("sentinel URLs mix redis:// and rediss://: {}", opts.redacted_urls()),
        });
    }
    let invalid = |source| StoreError::InvalidUrl { url: opts.redacted_urls(), source };
    let mut b = SentinelClientBuilder::new(addrs, &sentinel.master, SentinelServerType::Master).map_err(invalid)?;
    if let Some(user) = url_user {
        b = b.set_client_to_sentinel_username(user);
    }
    if let Some(pw) = sentinel.password.clone().or(url_password) {
        b = b.set_client_to_sentinel_password(pw);
    }
    if let Some(pw) = &opts.password {
        b = b.set_client_to_redis_password(pw);
    }
    if tls[0] {
        b = b.set_client_to_sentinel_tls_mode(TlsMode::Secure).set_client_to_redis_tls_mode(TlsMode::Secure);
        if let Some(certs) = certs {
            b = b.set_client_to_sentinel_certificates(certs.clone()).set_client_to_redis_certificates(certs);
        }
    }
    b.build().map_err(invalid)
}

/// Redis server time in epoch milliseconds (TIME).
pub async fn server_time_ms(conn: &mut RedisConn) -> Result<u64, StoreError> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME")
        .query_async(conn)
        .await
        .map_err(|source| StoreError::Redis { op: "TIME", key: "-".into(), source })?;
    Ok(crate::core::redis_time_ms(secs, micros))
}
