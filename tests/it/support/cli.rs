//! Running the cluster's `kubectl` and `helm` (from `$ROUTESTATE_TESTBIN`) as child processes,
//! and kubeconfigs for ServiceAccount tokens: what an operator's user types, tested as typed.

use std::{path::PathBuf, process::Stdio};

use tokio::{io::AsyncWriteExt, process::Command};

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The chart folder.
pub fn chart_dir() -> PathBuf {
    repo_root().join("charts/routestate")
}

/// A test binary built by hack/testbin (kubectl, helm, ...).
pub fn testbin(name: &str) -> PathBuf {
    let dir = super::env("ROUTESTATE_TESTBIN");
    PathBuf::from(dir).join(name)
}

/// The outcome of one command: exit success, stdout, stderr.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program args…` (a testbin name or a path) with optional stdin, in the repo root, with
/// the test environment (KUBECONFIG etc.).
pub async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Outcome {
    let path = if program.contains('/') { PathBuf::from(program) } else { testbin(program) };
    let mut cmd = Command::new(&path);
    cmd.args(args)
        .current_dir(repo_root())
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("starting {}: {e}", path.display()));
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(input.as_bytes()).await.unwrap_or_else(|e| panic!("writing stdin of {program}: {e}"));
        drop(pipe);
    }
    let out = child.wait_with_output().await.unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
    Outcome {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the command and returns stdout; panics with the command line and stderr on failure.
pub async fn ok(program: &str, args: &[&str], stdin: Option<&str>) -> String {
    let o = run(program, args, stdin).await;
    assert!(o.ok, "`{program} {}` failed:\n{}\n{}", args.join(" "), o.stderr, o.stdout);
    o.stdout
}

/// `kubectl auth can-i ARGS… --as=system:serviceaccount:SA_NS:SA` → yes/no. ARGS are e.g.
/// `["patch", "routestates", "--subresource=status", "-n", "apps"]`. (`can-i` exits 1 for "no",
/// so the answer is read from stdout.)
pub async fn can_i(sa_ns: &str, sa: &str, args: &[&str]) -> bool {
    let who = format!("--as=system:serviceaccount:{sa_ns}:{sa}");
    let mut all = vec!["auth", "can-i"];
    all.extend(args);
    all.push(who.as_str());
    let o = run("kubectl", &all, None).await;
    match o.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {}: unexpected answer {other:?}; stderr: {}", all.join(" "), o.stderr),
    }
}

/// A kubeconfig (YAML) that authenticates with `token` against the test cluster's API server,
/// trusting its CA at `$ROUTESTATE_CLUSTER_DIR/pki/apiserver.crt`.
pub fn token_kubeconfig(token: &str) -> String {
    let admin_path = super::env("KUBECONFIG");
    let admin = kube::config::Kubeconfig::read_from(&admin_path)
        .unwrap_or_else(|e| panic!("reading kubeconfig {admin_path}: {e}"));
    let server = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .unwrap_or_else(|| panic!("{admin_path} names no cluster server"));
    let ca = PathBuf::from(super::env("ROUTESTATE_CLUSTER_DIR")).join("pki/apiserver.crt");
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {}\n\
         users:\n- name: u\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
        ca.display()
    )
}

/// A kube client authenticating with a ServiceAccount token (see [`token_kubeconfig`]).
pub async fn token_client(token: &str) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&token_kubeconfig(token)).expect("parsing token kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .expect("loading token kubeconfig");
    kube::Client::try_from(config).expect("building a kube client")
}

/// A Helm release installed by a test; uninstalled on drop (its ClusterRole and
/// ClusterRoleBinding are cluster-scoped, so deleting the namespace would not remove them).
pub struct HelmRelease {
    pub name: String,
    pub namespace: String,
}

impl HelmRelease {
    /// `helm install NAME charts/routestate -n NAMESPACE --set …` (plus `extra` arguments such as
    /// `--wait`); the Redis URL defaults to the test cluster's.
    pub async fn install(name: &str, namespace: &str, sets: &[&str], extra: &[&str]) -> HelmRelease {
        let chart = chart_dir();
        let redis = format!("redis.urls={{{}}}", super::redis_url());
        let mut args = vec!["install", name, chart.to_str().unwrap(), "-n", namespace, "--set", redis.as_str()];
        for s in sets {
            args.extend(["--set", s]);
        }
        args.extend(extra);
        // The release is recorded before the outcome is checked, so a failed install is cleaned up too.
        let release = HelmRelease { name: name.to_owned(), namespace: namespace.to_owned() };
        ok("helm", &args, None).await;
        release
    }

    /// The chart's ServiceAccount (and ClusterRole, Deployment, Lease) name: `<release>-routestate`.
    pub fn fullname(&self) -> String {
        if self.name.contains("routestate") { self.name.clone() } else { format!("{}-routestate", self.name) }
    }

    /// A fresh token of the chart's ServiceAccount (`kubectl create token`).
    pub async fn token(&self) -> String {
        ok("kubectl", &["create", "token", &self.fullname(), "-n", &self.namespace, "--duration=1h"], None)
            .await
            .trim()
            .to_owned()
    }
}

impl Drop for HelmRelease {
    fn drop(&mut self) {
        let _ = std::process::Command::new(testbin("helm"))
            .args(["uninstall", &self.name, "-n", &self.namespace, "--no-hooks"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
