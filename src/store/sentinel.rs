//! Redis behind Sentinel: a connection that follows the master by itself.
//!
//! The redis crate's [`SentinelClient`] finds the master (it asks the sentinels, skips masters
//! they flag `s_down`/`o_down`, and checks `ROLE` on the node), but the connection it hands out
//! is a plain [`MultiplexedConnection`] to that one node: it never asks again. After a failover
//! the old master is gone (commands fail with I/O errors) or comes back as a replica (writes
//! get `-READONLY`, a replica cut off from its master `-MASTERDOWN`). [`SentinelConnection`]
//! adds what is missing on top of the crate:
//!
//! - it drops the node's connection on connection loss, on a response timeout and on
//!   `READONLY`/`MASTERDOWN`, and the next command asks the sentinels again;
//! - a command refused with `READONLY`/`MASTERDOWN` was not executed, so it is sent once more
//!   to the newly resolved master (an I/O error is returned as is: the command may have run);
//! - resolving is done in short rounds like the standalone path's reconnects (3 retries, at most
//!   400 ms apart), one round at a time, and commands that queued behind a round that failed
//!   get its error instead of starting rounds of their own.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
    aio::{ConnectionLike, MultiplexedConnection},
    sentinel::SentinelClient,
};

/// What a reply says about the node behind the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The node answered as a master (or with an error unrelated to its role).
    Keep,
    /// The connection is broken or timed out: drop it; the command may have run.
    Reconnect,
    /// The node refused the command because it is not (or no longer) a writable master: drop
    /// it; the command did not run and may be sent again.
    Resend,
}

fn refused(kind: Option<ServerErrorKind>) -> bool {
    matches!(kind, Some(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown))
}

fn judge_error(e: &RedisError) -> Verdict {
    match e.kind() {
        ErrorKind::Server(k) if refused(Some(k)) => Verdict::Resend,
        _ if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error() => {
            Verdict::Reconnect
        }
        _ => Verdict::Keep,
    }
}

fn judge_value(v: &Value) -> Verdict {
    match v {
        Value::ServerError(e) if refused(e.kind()) => Verdict::Resend,
        _ => Verdict::Keep,
    }
}

/// The verdict on one command's reply.
pub(crate) fn judge_one(r: &RedisResult<Value>) -> Verdict {
    match r {
        Ok(v) => judge_value(v),
        Err(e) => judge_error(e),
    }
}

/// The verdict on a pipeline's replies: any refusal means the node is a replica, and then no
/// write of the pipeline ran (a replica runs none), so the whole pipeline may be sent again.
pub(crate) fn judge_many(r: &RedisResult<Vec<Value>>) -> Verdict {
    match r {
        Ok(vs) => {
            if vs.iter().any(|v| judge_value(v) == Verdict::Resend) {
                Verdict::Resend
            } else {
                Verdict::Keep
            }
        }
        Err(e) => judge_error(e),
    }
}

struct Resolver {
    client: SentinelClient,
    /// When the last round failed, and how: commands that were already waiting get this.
    failed: Option<(Instant, RedisError)>,
}

struct Shared {
    master: String,
    config: AsyncConnectionConfig,
    op_timeout: Duration,
    retries: usize,
    max_delay: Duration,
    db: i64,
    /// The master's connection and its generation (so a stale failure never drops a newer one).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generation: std::sync::atomic::AtomicU64,
    resolver: tokio::sync::Mutex<Resolver>,
}

/// A connection to the master of a Sentinel-monitored Redis that follows failovers. Cheap to
/// clone; clones share the master's connection.
#[derive(Clone)]
pub struct SentinelConnection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SentinelConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelConnection").field("master", &self.shared.master).finish()
    }
}

/// Parameters of [`SentinelConnection::connect`].
pub(crate) struct SentinelParams {
    pub client: SentinelClient,
    pub master: String,
    pub op_timeout: Duration,
    pub retries: usize,
    pub max_delay: Duration,
    pub db: i64,
}

impl SentinelConnection {
    /// Resolves the master and connects to it (one round).
    pub(crate) async fn connect(p: SentinelParams) -> RedisResult<Self> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(p.op_timeout))
            .set_response_timeout(Some(p.op_timeout));
        let this = Self {
            shared: Arc::new(Shared {
                master: p.master,
                config,
                op_timeout: p.op_timeout,
                retries: p.retries,
                max_delay: p.max_delay,
                db: p.db,
                current: Mutex::new(None),
                generation: Default::default(),
                resolver: tokio::sync::Mutex::new(Resolver { client: p.client, failed: None }),
            }),
        };
        this.connection().await?;
        Ok(this)
    }

    /// The master's name as the sentinels know it.
    pub fn master_name(&self) -> &str {
        &self.shared.master
    }

    fn current(&self) -> Option<(u64, MultiplexedConnection)> {
        self.shared.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Forgets the connection of generation `generation` (not a newer one).
    fn drop_connection(&self, generation: u64) {
        let mut cur = self.shared.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.as_ref().is_some_and(|(g, _)| *g == generation) {
            tracing::info!(master = %self.shared.master, "lost the Redis master; asking the sentinels again");
            *cur = None;
        }
    }

    /// The master's connection, resolving it through the sentinels when there is none.
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        let asked = Instant::now();
        let mut resolver = self.shared.resolver.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if let Some((at, e)) = &resolver.failed
            && *at >= asked
        {
            return Err(e.clone());
        }
        match self.round(&mut resolver.client).await {
            Ok(conn) => {
                let generation = self.shared.generation.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                *self.shared.current.lock().unwrap_or_else(|e| e.into_inner()) = Some((generation, conn.clone()));
                resolver.failed = None;
                Ok((generation, conn))
            }
            Err(e) => {
                resolver.failed = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    /// One round of resolving and connecting: a few attempts, a short pause between them.
    async fn round(&self, client: &mut SentinelClient) -> RedisResult<MultiplexedConnection> {
        let s = &self.shared;
        let mut delay = Duration::from_millis(100);
        let mut attempt = 0;
        loop {
            let once = async {
                let node = client.async_get_client().await?;
                node.get_multiplexed_async_connection_with_config(&s.config).await
            };
            let err = match tokio::time::timeout(s.op_timeout, once).await {
                Ok(Ok(conn)) => {
                    tracing::info!(master = %s.master, attempt, "connected to the Redis master named by the sentinels");
                    return Ok(conn);
                }
                Ok(Err(e)) => e,
                Err(_) => RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("resolving master {:?} through the sentinels timed out after {:?}", s.master, s.op_timeout),
                )),
            };
            if attempt >= s.retries {
                return Err(err);
            }
            attempt += 1;
            tokio::time::sleep(delay.min(s.max_delay)).await;
            delay *= 2;
        }
    }
}

impl SentinelConnection {
    /// Sends through the master's connection; on a refusal by a replica resends once to the
    /// newly resolved master.
    async fn send<'a, T>(
        &'a self,
        judge: fn(&RedisResult<T>) -> Verdict,
        send: impl Fn(MultiplexedConnection) -> RedisFuture<'a, T>,
    ) -> RedisResult<T> {
        let mut resent = false;
        loop {
            let (generation, conn) = self.connection().await?;
            let r = send(conn).await;
            match judge(&r) {
                Verdict::Keep => return r,
                Verdict::Reconnect => {
                    self.drop_connection(generation);
                    return r;
                }
                Verdict::Resend => {
                    self.drop_connection(generation);
                    if resent {
                        return r;
                    }
                    resent = true;
                }
            }
        }
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.send(judge_one, move |mut c| Box::pin(async move { c.req_packed_command(cmd).await })))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.send(judge_many, move |mut c| {
            Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
        }))
    }

    fn get_db(&self) -> i64 {
        self.shared.db
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(resp: &str) -> Value {
        redis::parse_redis_value(resp.as_bytes()).unwrap()
    }

    #[test]
    fn refusals_by_a_replica_are_resent_elsewhere() {
        let readonly = reply("-READONLY You can't write against a read only replica.\r\n");
        let masterdown = reply("-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n");
        assert_eq!(judge_one(&Ok(readonly.clone())), Verdict::Resend);
        assert_eq!(judge_one(&Ok(masterdown)), Verdict::Resend);
        assert_eq!(judge_many(&Ok(vec![reply("+OK\r\n"), readonly])), Verdict::Resend);
    }

    #[test]
    fn a_broken_connection_is_dropped_but_not_resent() {
        let io = RedisError::from(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(judge_one(&Err(io.clone())), Verdict::Reconnect);
        assert_eq!(judge_many(&Err(io)), Verdict::Reconnect);
        let timeout = RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "slow"));
        assert_eq!(judge_one(&Err(timeout)), Verdict::Reconnect);
    }

    #[test]
    fn other_replies_and_errors_keep_the_connection() {
        assert_eq!(judge_one(&Ok(reply(":1\r\n"))), Verdict::Keep);
        assert_eq!(judge_one(&Ok(reply("-ERR unknown command\r\n"))), Verdict::Keep);
        assert_eq!(judge_one(&Ok(reply("-NOSCRIPT No matching script\r\n"))), Verdict::Keep);
        assert_eq!(judge_many(&Ok(vec![reply("+OK\r\n"), reply(":2\r\n")])), Verdict::Keep);
        let wrong_type = RedisError::from((ErrorKind::UnexpectedReturnType, "not an integer"));
        assert_eq!(judge_one(&Err(wrong_type)), Verdict::Keep);
    }
}
