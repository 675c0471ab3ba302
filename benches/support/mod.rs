//! Shared by the benchmarks: a private redis-server on a free loopback port (so a benchmark never
//! disturbs other users of the machine's Redis), `redis-benchmark` as the limit measured in the
//! same run, and the median of several runs.

#![allow(dead_code)]

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Key space of `__rand_int__` in redis-benchmark commands.
pub const RANDOM_KEYS: usize = 100_000;

/// A free loopback port from `hack/free-port`: below the ephemeral range, where no outgoing
/// connection takes it before the server binds it.
fn free_port() -> u16 {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/free-port");
    let out = Command::new(script).output().unwrap_or_else(|e| panic!("running {script}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{script} printed {text:?}: {}", String::from_utf8_lossy(&out.stderr)))
}

pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A replica of `master` (replication without a disk round trip or a start delay).
    pub fn replica_of(master: &RedisServer) -> Self {
        let port = master.port.to_string();
        let r = Self::start_with(&["--replicaof", "127.0.0.1", &port, "--repl-diskless-load", "on-empty-db"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !r.cli(&["INFO", "replication"]).contains("master_link_status:up") {
            assert!(Instant::now() < deadline, "replica on port {} did not sync within 30 s", r.port);
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// A server with extra `redis-server` arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"])
            .args(args)
            .stdout(Stdio::null())
            .spawn()
            .expect("starting redis-server (is it installed?)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Command::new("redis-cli")
            .args(["-p", &port.to_string(), "ping"])
            .output()
            .map(|o| o.stdout != b"PONG\n")
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "redis-server on port {port} did not answer PING within 10 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn cli(&self, args: &[&str]) -> String {
        let out =
            Command::new("redis-cli").arg("-p").arg(self.port.to_string()).args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `redis-cli ARGS` with `input` on stdin (e.g. `-x SCRIPT LOAD`).
    pub fn cli_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("redis-cli");
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("writing to redis-cli");
        let out = child.wait_with_output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Requests/s of one `redis-benchmark` run of `command` with `clients` connections and
    /// `pipeline` requests per round trip. `__rand_int__` in the command becomes a random number
    /// below [`RANDOM_KEYS`] per request (`-r`; without it redis-benchmark sends the literal
    /// placeholder, i.e. one key).
    pub fn rps(&self, clients: usize, requests: usize, pipeline: usize, command: &[String]) -> f64 {
        let random = command.iter().any(|a| a.contains("__rand_int__"));
        let out = Command::new("redis-benchmark")
            .args(["-p", &self.port.to_string(), "-c", &clients.to_string(), "-n", &requests.to_string()])
            .args(["-P", &pipeline.to_string(), "--csv"])
            .args(if random { vec!["-r".to_owned(), RANDOM_KEYS.to_string()] } else { vec![] })
            .args(command)
            .output()
            .expect("running redis-benchmark");
        let text = String::from_utf8_lossy(&out.stdout);
        // --csv: a header line "test","rps",..., then one line per test; take the last result.
        text.lines()
            .filter_map(|l| l.split(',').nth(1).and_then(|v| v.trim_matches('"').parse::<f64>().ok()))
            .next_back()
            .unwrap_or_else(|| panic!("no requests/s in redis-benchmark output {text:?}"))
    }
}

impl RedisServer {
    /// Requests/s of one `redis-benchmark` run of `command` (pipeline 1), and the Redis server
    /// time per call of its command in µs (`INFO commandstats`, reset right before).
    pub fn rps_and_usec(&self, clients: usize, requests: usize, command: &[String]) -> (f64, f64) {
        self.cli(&["CONFIG", "RESETSTAT"]);
        let rps = self.rps(clients, requests, 1, command);
        let name = command[0].to_lowercase();
        let stats = self.cli(&["INFO", "commandstats"]);
        let usec = stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:")))
            .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("usec_per_call=")))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no usec_per_call of {name} in {stats:?}"));
        (rps, usec)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
