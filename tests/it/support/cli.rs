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

/// `kubectl auth can-i VERB RESOURCE -n NS --as=system:serviceaccount:SA_NS:SA` → yes/no.
/// (`can-i` exits 1 for "no", so the answer is read from stdout.)
pub async fn can_i(sa_ns: &str, sa: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let who = format!("--as=system:serviceaccount:{sa_ns}:{sa}");
    let mut args = vec!["auth", "can-i", verb, resource, who.as_str()];
    match ns {
        Some(ns) => args.extend(["-n", ns]),
        None => args.push("--all-namespaces"),
    }
    let o = run("kubectl", &args, None).await;
    match o.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!("kubectl {}: unexpected answer {other:?}; stderr: {}", args.join(" "), o.stderr),
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
