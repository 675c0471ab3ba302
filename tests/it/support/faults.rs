//! Private components for fault tests: what a test breaks, it starts itself, so the shared
//! cluster other tests use is never touched.
//!
//! - [`PrivateRedis`]: a `redis-server` on a free loopback port (no persistence), optionally with
//!   `requirepass` and TLS; [`PrivateRedis::kill`] SIGKILLs it, [`PrivateRedis::restart`] starts
//!   it again, empty, on the same port. Killed by PID on drop.
//! - [`TlsFiles`]: a self-signed CA and a server certificate for 127.0.0.1, made with openssl.
//! - [`PrivateCluster`]: a whole control plane + Redis from `hack/cluster.sh up` in a folder of
//!   its own; `stop`/`start`/`kill` act on that cluster only; `down` runs on drop (also on panic).

use std::{
    collections::HashMap,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

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

/// A free loopback TCP port (bound and released; the race with other processes is accepted).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("binding port 0")
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

/// A private `redis-server` on a free loopback port.
pub struct PrivateRedis {
    pub port: u16,
    spec: RedisSpec,
    /// Addresses it listens on besides 127.0.0.1.
    extra_bind: Vec<String>,
    child: Option<Child>,
    dir: TempDir,
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
        let extra_bind = extra_bind.iter().map(|a| (*a).to_owned()).collect();
        let mut r = Self { port: free_port(), spec, extra_bind, child: None, dir: TempDir::new("redis") };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--bind")
            .arg("127.0.0.1")
            .args(&self.extra_bind)
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match &self.spec.tls {
            Some((ca, cert, key)) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string(), "--tls-auth-clients", "no"])
                    .arg("--tls-ca-cert-file")
                    .arg(ca)
                    .arg("--tls-cert-file")
                    .arg(cert)
                    .arg("--tls-key-file")
                    .arg(key);
            }
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
        }
        if let Some(pw) = &self.spec.password {
            cmd.args(["--requirepass", pw]);
        }
        self.child = Some(cmd.spawn().expect("starting redis-server (is it installed?)"));
        let port = self.port;
        wait_sync(&format!("private redis-server on port {port}"), Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// `redis://127.0.0.1:<port>` or `rediss://…`, without the password.
    pub fn url(&self) -> String {
        let scheme = if self.spec.tls.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL: no shutdown, no goodbye to the clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port, empty.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A synchronous connection for checks (plain servers only).
    pub fn cli(&self) -> redis::Connection {
        let mut info: redis::ConnectionInfo = redis::IntoConnectionInfo::into_connection_info(self.url()).unwrap();
        if let Some(pw) = &self.spec.password {
            let s = info.redis_settings().clone().set_password(pw.clone());
            info = info.set_redis_settings(s);
        }
        redis::Client::open(info).and_then(|c| c.get_connection()).expect("connecting to the private redis")
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
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

    /// A kube client for this cluster.
    pub async fn client(&self) -> kube::Client {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let kc = Kubeconfig::read_from(self.kubeconfig()).expect("reading the private kubeconfig");
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.unwrap();
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
