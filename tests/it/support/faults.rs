//! Private components for fault tests: what a test breaks, it starts itself, so the shared
//! cluster other tests use is never touched.
//!
//! - [`PrivateRedis`]: a `redis-server` on a free loopback port (no persistence), optionally with
//!   `requirepass` and TLS; [`PrivateRedis::kill`] SIGKILLs it, [`PrivateRedis::restart`] starts
//!   it again, empty, on the same port. Killed by PID on drop (it is a `redis_ha::RedisNode`).
//! - [`TlsFiles`]: a self-signed CA and a server certificate for 127.0.0.1, made with openssl.
//! - [`PrivateCluster`]: a whole control plane + Redis from `hack/cluster.sh up` in a folder of
//!   its own; `stop`/`start`/`kill` act on that cluster only; `down` runs on drop (also on panic).

use std::{
    collections::HashMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::redis_ha::{RedisNode, tls_args};

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let p = std::env::temp_dir().join(super::unique_name(prefix));
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        Self(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A free loopback TCP port for a server started later. It comes from below the kernel's
/// ephemeral range, as `hack/free-port`'s do: a port found by binding port 0 is an ephemeral one,
/// and any outgoing connection may take it before the server binds it. The ports handed out in
/// this process follow one another from a start that differs per process, so two tests never
/// get the same one (the race with other processes' unbound ports is accepted).
pub fn free_port() -> u16 {
    free_port_where(|_| true)
}

/// A Redis Cluster node also listens on port + 10000, its cluster bus.
pub const CLUSTER_BUS_OFFSET: u16 = 10_000;

/// A free port whose cluster bus port is free as well.
pub fn free_cluster_port() -> u16 {
    free_port_where(|p| port_is_free(p + CLUSTER_BUS_OFFSET))
}

fn free_port_where(also: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    // Both a port and its bus port stay below the ephemeral range.
    let high = ephemeral_start() - u32::from(CLUSTER_BUS_OFFSET);
    assert!(
        high > LOW + 1000,
        "the ephemeral port range starts at {}, too low to pick ports below it",
        ephemeral_start()
    );
    let span = high - LOW;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % span) as u16;
        if port_is_free(port) && also(port) {
            return port;
        }
    }
    panic!("no free loopback port in {LOW}..{high}");
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The first port of the kernel's ephemeral range (32768 where it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Polls `ok` every 50 ms until it holds or `timeout` passes; panics naming `what`.
pub fn wait_sync(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A self-signed CA and a server certificate for `127.0.0.1`/`localhost` (plus any extra IP
/// addresses), signed by it.
pub struct TlsFiles {
    pub dir: TempDir,
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

impl TlsFiles {
    pub fn new() -> Self {
        Self::for_ips(&[])
    }

    /// The server certificate also names `extra_ips` (e.g. the real node's bridge address).
    pub fn for_ips(extra_ips: &[&str]) -> Self {
        let dir = TempDir::new("tls");
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=routestate test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        );
        let extra: String = extra_ips.iter().map(|ip| format!(",IP:{ip}")).collect();
        std::fs::write(
            d.join("ext.cnf"),
            format!("subjectAltName=IP:127.0.0.1,DNS:localhost{extra}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"),
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "server.crt",
            ],
        );
        let (ca_cert, cert, key) = (d.join("ca.crt"), d.join("server.crt"), d.join("server.key"));
        Self { dir, ca_cert, cert, key }
    }
}

/// How a [`PrivateRedis`] is configured.
#[derive(Default, Clone)]
pub struct RedisSpec {
    pub password: Option<String>,
    /// Serve TLS only (plain port disabled) with these files.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

/// A private `redis-server` on a free loopback port (a [`RedisNode`] without persistence).
pub struct PrivateRedis {
    pub port: u16,
    spec: RedisSpec,
    node: RedisNode,
}

impl PrivateRedis {
    /// A plain, password-less server.
    pub fn start() -> Self {
        Self::start_with(RedisSpec::default())
    }

    pub fn start_with(spec: RedisSpec) -> Self {
        Self::start_on(spec, &[])
    }

    /// Also listening on `extra_bind` (e.g. the real node's bridge address, for pods).
    pub fn start_on(spec: RedisSpec, extra_bind: &[&str]) -> Self {
        let port = free_port();
        let mut args = Vec::new();
        if !extra_bind.is_empty() {
            // A later `--bind` replaces the default loopback-only one.
            args.push("--bind".to_owned());
            args.push("127.0.0.1".to_owned());
            args.extend(extra_bind.iter().map(|a| (*a).to_owned()));
        }
        if let Some((ca, cert, key)) = &spec.tls {
            args.extend(tls_args(port, ca, cert, key));
        }
        if let Some(pw) = &spec.password {
            args.extend(["--requirepass".to_owned(), pw.clone()]);
        }
        let node = RedisNode::data(port, &args.iter().map(String::as_str).collect::<Vec<_>>());
        Self { port, spec, node }
    }

    /// `redis://127.0.0.1:<port>` or `rediss://…`, without the password.
    pub fn url(&self) -> String {
        let scheme = if self.spec.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no goodbye to the clients.
    pub fn kill(&mut self) {
        self.node.kill();
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.node.restart();
    }

    /// A synchronous connection for checks.
    pub fn cli(&self) -> redis::Connection {
        self.node.cli()
    }
}

/// A private control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok) and
/// Redis, from `hack/cluster.sh up` with its own `CLUSTER_DIR`. `down` on drop.
pub struct PrivateCluster {
    pub dir: TempDir,
    pub env: HashMap<String, String>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl PrivateCluster {
    pub fn up() -> Self {
        let dir = TempDir::new("cluster");
        let mut this = Self { dir, env: HashMap::new() };
        this.script(&["up"]);
        let env_text = std::fs::read_to_string(this.dir.path().join("env")).expect("reading the private cluster env");
        let env = env_text
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        this.env = env;
        this
    }

    /// Runs `hack/cluster.sh ARGS` on this cluster; panics with its output on failure.
    pub fn script(&self, args: &[&str]) {
        let out = Command::new(repo_root().join("hack/cluster.sh"))
            .args(args)
            .env("CLUSTER_DIR", self.dir.path())
            // A private control plane for fault tests; the real node is the shared cluster's.
            .env("CLUSTER_NODE", "0")
            .output()
            .expect("running hack/cluster.sh");
        assert!(
            out.status.success(),
            "hack/cluster.sh {args:?} on {}: {}",
            self.dir.path().display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn kubeconfig(&self) -> &str {
        &self.env["KUBECONFIG"]
    }

    pub fn redis_url(&self) -> &str {
        &self.env["REDIS_URL"]
    }

    async fn config(&self) -> kube::Config {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let kc = Kubeconfig::read_from(self.kubeconfig()).expect("reading the private kubeconfig");
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap()
    }

    /// A kube client for this cluster.
    pub async fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config().await).unwrap()
    }

    /// The API server's address (host:port of the kubeconfig's server URL).
    pub async fn api_addr(&self) -> std::net::SocketAddr {
        let url = self.config().await.cluster_url;
        let authority = url.authority().expect("the API server URL has a host and port").as_str().to_owned();
        authority.parse().unwrap_or_else(|e| panic!("API server address {authority}: {e}"))
    }

    /// A kube client for this cluster that reaches the API server through `via` (a [`TcpProxy`]
    /// in front of [`PrivateCluster::api_addr`]); the server certificate is for 127.0.0.1, so TLS
    /// still verifies.
    pub async fn client_via(&self, via: std::net::SocketAddr) -> kube::Client {
        let mut cfg = self.config().await;
        cfg.cluster_url = format!("https://{via}").parse().unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    /// `kubectl ARGS` against this cluster (stdin from `input` if given); panics on failure.
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> String {
        let kubectl = Path::new(&self.env["ROUTESTATE_TESTBIN"]).join("kubectl");
        let mut child = Command::new(kubectl)
            .args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(input) = input {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn stop(&self, component: &str) {
        self.script(&["stop", component]);
    }

    pub fn start(&self, component: &str) {
        self.script(&["start", component]);
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("hack/cluster.sh"))
            .arg("down")
            .env("CLUSTER_DIR", self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A plain HTTP/1.0 GET of the operator's endpoints: (status code, body). `Err` when nothing
/// answers (connection refused or reset).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connecting {addr}: {e}"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    stream.read_to_string(&mut out).await.map_err(|e| format!("reading {path}: {e}"))?;
    let code =
        out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(format!("no status line: {out:.200}"))?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((code, body))
}

/// The value of one sample (`name` followed by a space, any labels included in `name`) in
/// OpenMetrics text; 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP forwarder in front of a server that a test can cut and restore: cutting closes the
/// listening socket and every forwarded connection, so the client sees the server vanish
/// (connections reset, new ones refused) while the server itself keeps running for everyone
/// else — a network partition between one client and its server. Restoring listens again on the
/// same port. Cut on drop.
pub struct TcpProxy {
    pub addr: std::net::SocketAddr,
    target: std::net::SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TcpProxy {
    /// Forwards a free loopback port to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding the proxy");
        let addr = listener.local_addr().unwrap();
        Self { addr, target, task: Some(tokio::spawn(Self::serve(listener, target))) }
    }

    async fn serve(listener: tokio::net::TcpListener, target: std::net::SocketAddr) {
        // Dropping the JoinSet (when this task is aborted) aborts every forwarding task, which
        // closes both sockets of each connection.
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((mut inbound, _)) = listener.accept().await {
            connections.spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
            while connections.try_join_next().is_some() {}
        }
    }

    /// Closes the port and every forwarded connection.
    pub async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens on the same port again (retrying while the old socket is still being released).
    pub async fn restore(&mut self) {
        assert!(self.task.is_none(), "the proxy is not cut");
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("re-binding the proxy on {}: {e}; retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("re-binding the proxy on {}: {e}", self.addr),
            }
        };
        self.task = Some(tokio::spawn(Self::serve(listener, self.target)));
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
