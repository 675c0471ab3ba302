//! Private highly available Redis topologies for the failover tests, from the Debian packages,
//! on free loopback ports, each process killed by PID on drop (also when the test panics):
//!
//! - [`RedisNode`]: one `redis-server` with extra arguments (AOF, replica of, cluster mode),
//!   restartable on the same port and folder (so an AOF is reloaded).
//! - [`SentinelSet`]: a master, replicas and three sentinels (`redis-server --sentinel`),
//!   quorum 2, down-after 1 s; [`SentinelSet::kill_master`] SIGKILLs whichever node the
//!   sentinels call master.
//! - [`ReplicatedCluster`]: a Redis Cluster of 3 masters with one replica each, node timeout
//!   1 s; [`ReplicatedCluster::kill_master_of`] SIGKILLs the master owning a key's slot.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use super::faults::{TempDir, TlsFiles, free_cluster_port, free_port, wait_sync};

/// A `redis-server` (or sentinel) process on a fixed loopback port.
pub struct RedisNode {
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    pub dir: TempDir,
    /// Written before each start (a sentinel rewrites its config file, so it needs one).
    config: Option<String>,
    /// Its `requirepass`, for [`RedisNode::cli`] and [`RedisNode::url`].
    password: Option<String>,
    /// The CA of its certificate when it serves TLS only.
    tls_ca: Option<PathBuf>,
}

/// `redis-server` arguments for TLS only on `port` with these files; replication (and a
/// sentinel's connections) over TLS too.
pub fn tls_args(port: u16, ca: &Path, cert: &Path, key: &Path) -> Vec<String> {
    [
        ("port", "0".to_owned()),
        ("tls-port", port.to_string()),
        ("tls-cert-file", cert.display().to_string()),
        ("tls-key-file", key.display().to_string()),
        ("tls-ca-cert-file", ca.display().to_string()),
        ("tls-auth-clients", "no".to_owned()),
        ("tls-replication", "yes".to_owned()),
    ]
    .into_iter()
    .flat_map(|(k, v)| [format!("--{k}"), v])
    .collect()
}

/// The same settings as sentinel config lines.
fn tls_config(port: u16, tls: &TlsFiles) -> String {
    tls_args(port, &tls.ca_cert, &tls.cert, &tls.key)
        .chunks(2)
        .map(|kv| format!("{} {}\n", kv[0].trim_start_matches("--"), kv[1]))
        .collect()
}

impl RedisNode {
    /// A data node: no RDB snapshots, no AOF unless `args` say so, replication without a
    /// disk round trip or a delay (the Debian defaults would wait 5 s before a first sync).
    pub fn data(port: u16, args: &[&str]) -> Self {
        let mut all: Vec<String> = ["--save", "", "--appendonly", "no", "--repl-diskless-sync", "yes"]
            .into_iter()
            .chain(["--repl-diskless-sync-delay", "0"])
            .map(str::to_owned)
            .collect();
        all.extend(args.iter().map(|a| a.to_string()));
        Self::spawn(port, all, None)
    }

    /// A sentinel watching `master_port` as `master`, with `extra` config lines.
    pub fn sentinel(port: u16, master: &str, master_port: u16, extra: &str) -> Self {
        let config = format!(
            "port {port}\nbind 127.0.0.1\nprotected-mode no\n\
             sentinel monitor {master} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {master} 1000\n\
             sentinel failover-timeout {master} 5000\n\
             sentinel parallel-syncs {master} 2\n{extra}"
        );
        Self::spawn(port, Vec::new(), Some(config))
    }

    fn spawn(port: u16, args: Vec<String>, config: Option<String>) -> Self {
        let password = match &config {
            Some(c) => c.lines().find_map(|l| l.strip_prefix("requirepass ")).map(str::to_owned),
            None => args.iter().position(|a| a == "--requirepass").and_then(|i| args.get(i + 1)).cloned(),
        };
        let tls_ca = match &config {
            Some(c) => c.lines().find_map(|l| l.strip_prefix("tls-ca-cert-file ")).map(PathBuf::from),
            None => {
                args.iter().position(|a| a == "--tls-ca-cert-file").and_then(|i| args.get(i + 1)).map(PathBuf::from)
            }
        };
        let mut n = Self { port, args, child: None, dir: TempDir::new("redis-ha"), config, password, tls_ca };
        n.start();
        n
    }

    fn start(&mut self) {
        let mut cmd = Command::new("redis-server");
        if let Some(config) = &self.config {
            let path = self.dir.path().join("sentinel.conf");
            // A restarted sentinel keeps what it learned (it rewrote the file).
            if !path.exists() {
                std::fs::write(&path, format!("{config}\ndir {}\n", self.dir.path().display())).unwrap();
            }
            cmd.arg(path).arg("--sentinel");
        } else {
            cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--protected-mode", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .args(&self.args);
        }
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        cmd.stdin(Stdio::null()).stdout(log).stderr(Stdio::null());
        self.child = Some(cmd.spawn().expect("starting redis-server (is it installed?)"));
        let port = self.port;
        wait_sync(&format!("redis on port {port}"), Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// `redis[s]://[:password@]127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() { "rediss" } else { "redis" };
        match &self.password {
            Some(pw) => format!("{scheme}://:{pw}@127.0.0.1:{}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The URL without the password.
    pub fn plain_url(&self) -> String {
        let scheme = if self.tls_ca.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL: nothing flushed, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and folder (an AOF there is reloaded).
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// A synchronous connection.
    pub fn cli(&self) -> redis::Connection {
        self.try_cli().expect("connecting to a private redis")
    }

    fn try_cli(&self) -> redis::RedisResult<redis::Connection> {
        let client = match &self.tls_ca {
            Some(ca) => {
                let _ = rustls::crypto::ring::default_provider().install_default();
                let certs = redis::TlsCertificates { client_tls: None, root_cert: Some(std::fs::read(ca).unwrap()) };
                redis::Client::build_with_tls(self.url(), certs)?
            }
            None => redis::Client::open(self.url())?,
        };
        client.get_connection()
    }

    /// The log file, for failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A master, `replicas` replicas and three sentinels (quorum 2).
pub struct SentinelSet {
    pub master_name: String,
    pub nodes: Vec<RedisNode>,
    pub sentinels: Vec<RedisNode>,
}

fn info_field(conn: &mut redis::Connection, section: &str, field: &str) -> Option<String> {
    let info: String = redis::cmd("INFO").arg(section).query(conn).ok()?;
    info.lines().find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_owned()))
}

impl SentinelSet {
    /// Starts the nodes and sentinels and waits until every sentinel knows every replica and
    /// the two other sentinels (before that a failover cannot reach its quorum).
    pub fn start(replicas: usize) -> Self {
        Self::start_with(replicas, None, None)
    }

    /// Like [`SentinelSet::start`], with `(data nodes' password, sentinels' password)`, and TLS
    /// only (sentinels, data nodes, replication) with `tls`.
    pub fn start_with(replicas: usize, auth: Option<(&str, &str)>, tls: Option<&TlsFiles>) -> Self {
        let master_name = "routestate-master".to_owned();
        let node = |port: u16, args: &[&str]| {
            let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            if let Some((pw, _)) = auth {
                all.extend(["--requirepass", pw, "--masterauth", pw].map(str::to_owned));
            }
            if let Some(tls) = tls {
                all.extend(tls_args(port, &tls.ca_cert, &tls.cert, &tls.key));
            }
            RedisNode::data(port, &all.iter().map(String::as_str).collect::<Vec<_>>())
        };
        let master = node(free_port(), &[]);
        let mport = master.port.to_string();
        let mut nodes = vec![master];
        for _ in 0..replicas {
            nodes.push(node(free_port(), &["--replicaof", "127.0.0.1", &mport]));
        }
        let sentinels: Vec<RedisNode> = (0..3)
            .map(|_| {
                let port = free_port();
                let mut extra = auth
                    .map(|(pw, spw)| {
                        format!(
                            "sentinel auth-pass {master_name} {pw}\nrequirepass {spw}\nsentinel sentinel-pass {spw}\n"
                        )
                    })
                    .unwrap_or_default();
                if let Some(tls) = tls {
                    extra.push_str(&tls_config(port, tls));
                }
                RedisNode::sentinel(port, &master_name, nodes[0].port, &extra)
            })
            .collect();
        let this = Self { master_name, nodes, sentinels };
        this.wait_healthy(replicas, Duration::from_secs(60));
        this
    }

    /// Waits until every sentinel names a master that knows `replicas` online replicas, and
    /// knows that many replicas and the two other sentinels.
    pub fn wait_healthy(&self, replicas: usize, timeout: Duration) {
        wait_sync("sentinels to know every replica and each other", timeout, || {
            self.sentinels.iter().all(|s| {
                let Ok(mut c) = s.try_cli() else { return false };
                let known_replicas: Vec<Vec<String>> =
                    redis::cmd("SENTINEL").arg("REPLICAS").arg(&self.master_name).query(&mut c).unwrap_or_default();
                let others: Vec<Vec<String>> =
                    redis::cmd("SENTINEL").arg("SENTINELS").arg(&self.master_name).query(&mut c).unwrap_or_default();
                let online = known_replicas.iter().filter(|r| !r.iter().any(|f| f.contains("s_down"))).count();
                online >= replicas && others.len() >= 2
            }) && self.master_port().is_some_and(|p| {
                self.node(p).map(|n| n.cli()).is_some_and(|mut c| {
                    info_field(&mut c, "replication", "connected_slaves")
                        .and_then(|v| v.parse::<usize>().ok())
                        .is_some_and(|n| n >= replicas)
                })
            })
        });
    }

    /// The sentinels' URLs.
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisNode::url).collect()
    }

    /// The port of the node the first answering sentinel calls master.
    pub fn master_port(&self) -> Option<u16> {
        self.sentinels.iter().find_map(|s| {
            let mut c = s.try_cli().ok()?;
            let (_, port): (String, u16) =
                redis::cmd("SENTINEL").arg("GET-MASTER-ADDR-BY-NAME").arg(&self.master_name).query(&mut c).ok()?;
            Some(port)
        })
    }

    pub fn node(&self, port: u16) -> Option<&RedisNode> {
        self.nodes.iter().find(|n| n.port == port)
    }

    /// SIGKILLs the current master; returns its port.
    pub fn kill_master(&mut self) -> u16 {
        let port = self.master_port().expect("no sentinel names a master");
        self.nodes.iter_mut().find(|n| n.port == port).expect("the master is one of ours").kill();
        port
    }

    /// Waits until the sentinels name a master other than `old` that answers as master.
    pub fn wait_failover(&self, old: u16, timeout: Duration) -> u16 {
        let mut new = 0;
        wait_sync("a sentinel failover", timeout, || match self.master_port() {
            Some(p) if p != old => {
                new = p;
                self.node(p)
                    .map(|n| n.cli())
                    .is_some_and(|mut c| info_field(&mut c, "replication", "role").as_deref() == Some("master"))
            }
            _ => false,
        });
        new
    }
}

/// A Redis Cluster of 3 masters with one replica each.
pub struct ReplicatedCluster {
    pub nodes: Vec<RedisNode>,
}

impl ReplicatedCluster {
    pub fn start() -> Self {
        let nodes: Vec<RedisNode> = (0..6)
            .map(|_| {
                let port = free_cluster_port();
                RedisNode::data(
                    port,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "1000",
                        // A replica whose master just died must take over at once.
                        "--cluster-replica-validity-factor",
                        "0",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("running redis-cli --cluster create");
        assert!(out.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&out.stdout));
        let this = Self { nodes };
        this.wait_ok(Duration::from_secs(60));
        this
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisNode::url).collect()
    }

    /// Waits until every running node says `cluster_state:ok` and every master has a replica
    /// that is in sync.
    pub fn wait_ok(&self, timeout: Duration) {
        wait_sync("the replicated Redis Cluster to be ok", timeout, || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let mut c = n.cli();
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap_or_default();
                let role = info_field(&mut c, "replication", "role");
                let synced = match role.as_deref() {
                    Some("master") => info_field(&mut c, "replication", "connected_slaves").as_deref() == Some("1"),
                    Some("slave") => info_field(&mut c, "replication", "master_link_status").as_deref() == Some("up"),
                    _ => false,
                };
                info.contains("cluster_state:ok") && synced
            })
        });
    }

    /// The port of the master owning `slot`, as a running node sees it.
    pub fn master_of(&self, slot: u16) -> Option<u16> {
        let n = self.nodes.iter().find(|n| n.is_running())?;
        let mut c = n.cli();
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut c).ok()?;
        for range in slots {
            let redis::Value::Array(parts) = range else { continue };
            let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi))) = (parts.first(), parts.get(1)) else {
                continue;
            };
            if (*lo..=*hi).contains(&i64::from(slot)) {
                let Some(redis::Value::Array(master)) = parts.get(2) else { return None };
                let Some(redis::Value::Int(port)) = master.get(1) else { return None };
                return u16::try_from(*port).ok();
            }
        }
        None
    }

    /// The slot ranges the master on `port` serves.
    pub fn slots_of(&self, port: u16) -> Vec<(u16, u16)> {
        let n = self.nodes.iter().find(|n| n.is_running()).expect("a running node");
        let slots: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut n.cli()).unwrap();
        let mut out = Vec::new();
        for range in slots {
            let redis::Value::Array(parts) = range else { continue };
            if let (Some(redis::Value::Int(lo)), Some(redis::Value::Int(hi)), Some(redis::Value::Array(m))) =
                (parts.first(), parts.get(1), parts.get(2))
                && m.get(1) == Some(&redis::Value::Int(i64::from(port)))
            {
                out.push((*lo as u16, *hi as u16));
            }
        }
        out
    }

    /// SIGKILLs the master owning `slot`; returns its port.
    pub fn kill_master_of(&mut self, slot: u16) -> u16 {
        let port = self.master_of(slot).expect("no master owns the slot");
        self.nodes.iter_mut().find(|n| n.port == port).expect("the master is one of ours").kill();
        port
    }

    /// SIGKILLs the replica of the master on `master_port`; returns its port.
    pub fn kill_replica_of(&mut self, master_port: u16) -> u16 {
        let port = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .find(|n| {
                let mut c = n.cli();
                info_field(&mut c, "replication", "role").as_deref() == Some("slave")
                    && info_field(&mut c, "replication", "master_port") == Some(master_port.to_string())
            })
            .map(|n| n.port)
            .expect("the master has a replica");
        self.nodes.iter_mut().find(|n| n.port == port).unwrap().kill();
        port
    }

    /// Waits until a running node other than `old` owns `slot` as master.
    pub fn wait_failover(&self, slot: u16, old: u16, timeout: Duration) -> u16 {
        let mut new = 0;
        wait_sync("a Redis Cluster failover", timeout, || match self.master_of(slot) {
            Some(p) if p != old => {
                new = p;
                true
            }
            _ => false,
        });
        new
    }
}
