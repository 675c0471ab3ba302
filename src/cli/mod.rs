//! The `routestate` command line: `run` (the operator), `crd`, `status`, `links` and `pick`;
//! also a kubectl plugin when installed as `kubectl-routestate` ([`plugin`]).
//!
//! Usage errors (unknown flags, malformed `<ns>/<name>`, inconsistent lease timings) print a
//! clear message and exit with code 2; runtime failures exit with code 1.

mod explain;

use std::{io::Write, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

pub mod plugin;

use clap::{Args, Parser, Subcommand, ValueEnum, error::ErrorKind};
use kube::{Api, Client};

use crate::{
    core::{
        Classified, DEFAULT_GOOD_RANGE, DEFAULT_UPDATE_PERIOD_SECS, PodState, TEMP_LINK_TTL_SECS, staleness_window_ms,
    },
    operator::{self, LeaseConfig, OperatorConfig, RouteState},
    store::{DEFAULT_OP_TIMEOUT, LinkTtl, PickParams, RedisOptions, Store},
};

/// routestate: stateful routing for StatefulSets, kept in Redis.
#[derive(Debug, Parser)]
#[command(name = "routestate", version, about, propagate_version = true)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator (until SIGTERM/SIGINT).
    Run(RunArgs),
    /// Print the RouteState CRD as YAML.
    Crd,
    /// Show the pod states a RouteState publishes, read from Redis.
    Status(StatusArgs),
    /// Read and write sticky user links.
    #[command(subcommand)]
    Links(LinksCommand),
    /// Pick a pod for new users of a service; with a uid, link the user to it (or keep its link);
    /// with --explain, say why instead (writes nothing).
    Pick(PickArgs),
}

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

fn read_password(what: &str, path: &Option<PathBuf>) -> Result<Option<String>, String> {
    let Some(path) = path else { return Ok(None) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the {what} file {}: {e}", path.display()))?;
    Ok(Some(text.trim_end_matches(['\r', '\n']).to_owned()))
}

impl RedisArgs {
    /// The store options; reads the password files.
    pub fn options(&self) -> Result<RedisOptions, String> {
        let sentinel = match &self.sentinel_master {
            Some(master) => Some(crate::store::SentinelOptions {
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
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Flags of `routestate run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Kubeconfig, context, cluster and user.
    #[command(flatten)]
    pub kube: plugin::KubeArgs,
    /// Redis connection.
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "ROUTESTATE_NAMESPACE")]
    pub namespace: Option<String>,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long = "http-addr", env = "ROUTESTATE_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long = "log-format", env = "ROUTESTATE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Use Lease-based leader election (required with more than one replica).
    #[arg(long = "leader-elect", env = "ROUTESTATE_LEADER_ELECT")]
    pub leader_elect: bool,
    /// Name of the Lease.
    #[arg(long = "lease-name", env = "ROUTESTATE_LEASE_NAME", default_value = "routestate-operator")]
    pub lease_name: String,
    /// Namespace of the Lease (default: the pod's namespace, else the kubeconfig's namespace).
    #[arg(long = "lease-namespace", env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// This replica's identity in the Lease (default: the pod name, else the host name).
    #[arg(long = "lease-identity", env = "POD_NAME")]
    pub lease_identity: Option<String>,
    /// Lease duration: a standby takes over this long after the holder's last renewal.
    #[arg(long = "lease-duration-seconds", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    pub lease_duration_seconds: u64,
    /// How often the holder renews (must be less than half the duration).
    #[arg(long = "lease-renew-seconds", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=150))]
    pub lease_renew_seconds: u64,
}

/// `<namespace>/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NsName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

fn ns_name(s: &str) -> Result<NsName, String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(NsName { namespace: ns.to_owned(), name: name.to_owned() })
        }
        _ => Err(format!("{s:?} is not <namespace>/<name>")),
    }
}

/// Flags of `routestate status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The RouteState, as `<namespace>/<name>`, or `<name>` in the -n namespace (default: the
    /// kubeconfig context's).
    pub target: Option<String>,
    /// Namespace (with a bare name, or alone: every RouteState of the namespace; default: the
    /// kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Refresh every second until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Kubeconfig, context, cluster and user (to resolve the RouteState's service and pod names,
    /// and the namespace when -n is not given).
    #[command(flatten)]
    pub kube: plugin::KubeArgs,
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
    fn ttl(&self) -> LinkTtl {
        if self.persistent { LinkTtl::Persistent } else { LinkTtl::Temporary(self.ttl) }
    }
}

/// `routestate links …`.
#[derive(Debug, Subcommand)]
pub enum LinksCommand {
    /// The pod a user is linked to for a service (prints the index, or "none").
    Get {
        /// `<namespace>/<service>`.
        #[arg(value_parser = ns_name)]
        service: NsName,
        /// User id.
        uid: String,
        /// Redis connection.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Link a user to a pod unconditionally (prints the previous pod).
    Set {
        /// `<namespace>/<service>`.
        #[arg(value_parser = ns_name)]
        service: NsName,
        /// User id.
        uid: String,
        /// Pod index.
        pod: u32,
        /// TTL.
        #[command(flatten)]
        ttl: TtlArgs,
        /// Redis connection.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Link a user to a pod unless it is linked elsewhere (prints the outcome).
    TrySet {
        /// `<namespace>/<service>`.
        #[arg(value_parser = ns_name)]
        service: NsName,
        /// User id.
        uid: String,
        /// Pod index.
        pod: u32,
        /// TTL.
        #[command(flatten)]
        ttl: TtlArgs,
        /// Redis connection.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Remove a user's link.
    Remove {
        /// `<namespace>/<service>`.
        #[arg(value_parser = ns_name)]
        service: NsName,
        /// User id.
        uid: String,
        /// Keep the link readable as a temporary link for this many seconds (0 = delete now).
        #[arg(long, default_value_t = 0)]
        persist_seconds: u64,
        /// Redis connection.
        #[command(flatten)]
        redis: RedisArgs,
    },
    /// Remove a user's link only while it points to the given pod.
    RemoveWithId {
        /// `<namespace>/<service>`.
        #[arg(value_parser = ns_name)]
        service: NsName,
        /// User id.
        uid: String,
        /// Pod index the link must point to.
        pod: u32,
        /// Keep the link readable as a temporary link for this many seconds (0 = delete now).
        #[arg(long, default_value_t = 0)]
        persist_seconds: u64,
        /// Redis connection.
        #[command(flatten)]
        redis: RedisArgs,
    },
}

/// Flags of `routestate pick`.
#[derive(Debug, Args)]
pub struct PickArgs {
    /// `<namespace>/<service>`.
    #[arg(value_parser = ns_name)]
    pub service: NsName,
    /// User id: link the user to the picked pod (or keep its available link).
    pub uid: Option<String>,
    /// Good range above the least-loaded READY pod.
    #[arg(long, default_value_t = DEFAULT_GOOD_RANGE)]
    pub range: u64,
    /// TTL of the temporary link written for a new placement, in seconds.
    #[arg(long, default_value_t = TEMP_LINK_TTL_SECS, value_parser = clap::value_parser!(u64).range(1..))]
    pub ttl: u64,
    /// Explain instead of picking: every pod's state and class, the least load, the range and the
    /// candidates, and with a uid whether its link is kept or replaced. Writes nothing: with a
    /// uid, the user is NOT linked.
    #[arg(long)]
    pub explain: bool,
    /// Output of --explain: text for people, json for programs.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text", requires = "explain")]
    pub output: explain::Output,
    /// Redis connection.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// A failure of a command: usage errors exit 2, others 1.
#[derive(Debug)]
enum Failure {
    Usage(String),
    Runtime(String),
}

impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Runtime(crate::core::ErrorChain::chain(&e).to_string())
    }
}

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = plugin::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routestate: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => plugin::command().error(ErrorKind::ValueValidation, msg).exit(),
        Err(Failure::Runtime(msg)) => {
            eprintln!("routestate: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command) -> Result<(), Failure> {
    match command {
        Command::Crd => {
            print!("{}", operator::crd::crd_yaml());
            Ok(())
        }
        Command::Run(args) => run(args).await,
        Command::Status(args) => status(args).await,
        Command::Links(cmd) => links(cmd).await,
        Command::Pick(args) => pick(args).await,
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn run(args: RunArgs) -> Result<(), Failure> {
    let (duration, renew) =
        (Duration::from_secs(args.lease_duration_seconds), Duration::from_secs(args.lease_renew_seconds));
    if args.leader_elect
        && let Err(e) = operator::leader::check_timing(duration, renew)
    {
        return Err(Failure::Usage(format!("--lease-renew-seconds and --lease-duration-seconds: {e}")));
    }
    let redis = args.redis.options().map_err(Failure::Usage)?;
    init_logs(args.log_format);
    let client = args.kube.client().await.map_err(Failure::Runtime)?;
    let identity = args
        .lease_identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("routestate-{}", std::process::id()));
    let lease = args.leader_elect.then(|| LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args.lease_namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned()),
        identity: identity.clone(),
        duration,
        renew_every: renew,
    });
    let config = OperatorConfig {
        client,
        redis,
        namespace: args.namespace,
        lease,
        http_addr: Some(args.http_addr),
        instance: identity,
    };
    operator::run(config).await.map_err(|e| Failure::Runtime(crate::core::ErrorChain::chain(&e).to_string()))
}

/// One row of `routestate status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    /// Pod index.
    pub index: String,
    /// Pod name.
    pub pod: String,
    /// Routing state (wire name) or the reason the entry is unusable.
    pub routing: String,
    /// Weighted load.
    pub load: String,
    /// Heartbeat age, with "(stale)" past the window.
    pub age: String,
}

/// Builds the rows of the status table from the raw hash entries.
pub fn status_rows(
    entries: &[(String, String)],
    now_ms: u64,
    window_ms: u64,
    pod_name: impl Fn(u32) -> String,
) -> Vec<StatusRow> {
    let mut rows: Vec<(u64, StatusRow)> = entries
        .iter()
        .map(|(field, value)| match (crate::core::pod_index::parse_index(field), PodState::parse(value)) {
            (Some(i), Ok(s)) => {
                let age = s.age_ms(now_ms);
                let stale = if s.is_fresh(now_ms, window_ms) { "" } else { " (stale)" };
                (
                    u64::from(i),
                    StatusRow {
                        index: i.to_string(),
                        pod: pod_name(i),
                        routing: s.routing.wire_name().to_owned(),
                        load: s.weighted_load.to_string(),
                        age: format!("{:.1}s{stale}", age as f64 / 1000.0),
                    },
                )
            }
            (i, parsed) => (
                i.map_or(u64::MAX, u64::from),
                StatusRow {
                    index: field.clone(),
                    pod: i.map(&pod_name).unwrap_or_else(|| "-".into()),
                    routing: match parsed {
                        Err(e) => format!("INVALID ({e})"),
                        Ok(_) => "INVALID (field is not an index)".into(),
                    },
                    load: "-".into(),
                    age: "-".into(),
                },
            ),
        })
        .collect();
    rows.sort_by_key(|(i, _)| *i);
    rows.into_iter().map(|(_, r)| r).collect()
}

/// Renders rows as an aligned table with a header.
pub fn render_table(rows: &[StatusRow]) -> String {
    let header = StatusRow {
        index: "INDEX".into(),
        pod: "POD".into(),
        routing: "ROUTING".into(),
        load: "LOAD".into(),
        age: "HEARTBEAT AGE".into(),
    };
    let all: Vec<&StatusRow> = std::iter::once(&header).chain(rows).collect();
    let w = |f: fn(&StatusRow) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let (wi, wp, wr, wl) = (w(|r| &r.index), w(|r| &r.pod), w(|r| &r.routing), w(|r| &r.load));
    all.iter()
        .map(|r| format!("{:<wi$}  {:<wp$}  {:<wr$}  {:>wl$}  {}\n", r.index, r.pod, r.routing, r.load, r.age))
        .collect()
}

struct StatusTarget {
    namespace: String,
    title: String,
    service: String,
    pod_names: std::collections::BTreeMap<u32, String>,
    statefulset: String,
}

async fn status_targets(args: &StatusArgs, client: &Result<Client, Failure>) -> Result<Vec<StatusTarget>, Failure> {
    let (namespace, name) = match (&args.target, &args.namespace) {
        (Some(t), _) if t.contains('/') => {
            let t = ns_name(t).map_err(Failure::Usage)?;
            (t.namespace, Some(t.name))
        }
        (Some(t), Some(ns)) => (ns.clone(), Some(t.clone())),
        (None, Some(ns)) => (ns.clone(), None),
        // As kubectl: the kubeconfig context's namespace.
        (t, None) => match client {
            Ok(c) => (c.default_namespace().to_owned(), t.clone()),
            Err(Failure::Runtime(e) | Failure::Usage(e)) => {
                let what = t.as_ref().map_or("RouteStates".to_owned(), |t| format!("{t:?}"));
                return Err(Failure::Usage(format!(
                    "{what}: give <namespace>/<routestate> or -n <namespace> (no kubeconfig namespace: {e})"
                )));
            }
        },
    };
    let found: Vec<RouteState> = match (client, &name) {
        (Ok(c), Some(n)) => {
            let api: Api<RouteState> = Api::namespaced(c.clone(), &namespace);
            match api.get_opt(n).await {
                Ok(Some(rs)) => vec![rs],
                Ok(None) => Vec::new(),
                Err(e) => {
                    eprintln!("routestate: reading RouteState {namespace}/{n}: {e}; using {n:?} as the service name");
                    Vec::new()
                }
            }
        }
        (Ok(c), None) => {
            let api: Api<RouteState> = Api::namespaced(c.clone(), &namespace);
            api.list(&Default::default())
                .await
                .map_err(|e| Failure::Runtime(format!("listing RouteStates in {namespace}: {e}")))?
                .items
        }
        (Err(Failure::Runtime(e) | Failure::Usage(e)), Some(n)) => {
            eprintln!("routestate: {e}; using {n:?} as the service name");
            Vec::new()
        }
        (Err(e), None) => return Err(Failure::Runtime(format!("{e:?}"))),
    };
    if found.is_empty() {
        let Some(n) = name else { return Err(Failure::Runtime(format!("no RouteStates in namespace {namespace}"))) };
        return Ok(vec![StatusTarget {
            namespace: namespace.clone(),
            title: format!("service {namespace}/{n}"),
            service: n.clone(),
            pod_names: Default::default(),
            statefulset: n,
        }]);
    }
    Ok(found
        .into_iter()
        .map(|rs| {
            let st = rs.status.clone().unwrap_or_default();
            StatusTarget {
                namespace: namespace.clone(),
                title: format!(
                    "routestate {namespace}/{} → service {}, workload {}, leader {}",
                    kube::ResourceExt::name_any(&rs),
                    st.service_name.clone().unwrap_or_else(|| rs.service_name()),
                    st.workload_state.as_deref().unwrap_or("-"),
                    st.leader.as_deref().unwrap_or("-"),
                ),
                service: st.service_name.clone().unwrap_or_else(|| rs.service_name()),
                pod_names: st.pods.iter().map(|p| (p.index, p.name.clone())).collect(),
                statefulset: rs.stateful_set_name(),
            }
        })
        .collect())
}

async fn status(args: StatusArgs) -> Result<(), Failure> {
    let store = Store::connect(&args.redis.options().map_err(Failure::Usage)?).await?;
    // One client for the whole --watch session; only the RouteStates are re-read each second.
    let client = args.kube.client().await.map_err(Failure::Runtime);
    loop {
        let targets = status_targets(&args, &client).await?;
        let mut out = String::new();
        for t in &targets {
            let states = store.read_service(&t.namespace, &t.service).await?;
            let window = states.window_ms(staleness_window_ms(DEFAULT_UPDATE_PERIOD_SECS));
            let period = states.update_period_secs.map_or("unknown".to_owned(), |p| format!("{p}s"));
            out.push_str(&format!("{} (period {period}, stale after {}s)\n", t.title, window / 1000));
            let name = |i: u32| {
                t.pod_names.get(&i).cloned().unwrap_or_else(|| crate::core::pod_index::pod_name(&t.statefulset, i))
            };
            let rows = status_rows(&states.entries, states.now_ms, window, name);
            if rows.is_empty() {
                out.push_str("no pod states published\n");
            } else {
                out.push_str(&render_table(&rows));
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
        drop(stdout);
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => println!(),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

async fn links(cmd: LinksCommand) -> Result<(), Failure> {
    let connect = |r: &RedisArgs| {
        let opts = r.options();
        async move { Store::connect(&opts.map_err(Failure::Usage)?).await.map_err(Failure::from) }
    };
    match cmd {
        LinksCommand::Get { service, uid, redis } => {
            let store = connect(&redis).await?;
            match store.get_linked_pod(&service.namespace, &uid, &service.name).await? {
                Some(pod) => println!("{pod}"),
                None => println!("none"),
            }
        }
        LinksCommand::Set { service, uid, pod, ttl, redis } => {
            let store = connect(&redis).await?;
            let prev = store.set_linked_pod(&service.namespace, &uid, &service.name, pod, ttl.ttl()).await?;
            println!("linked {uid} to pod {pod} (previous: {})", prev.map_or("none".into(), |p| p.to_string()));
        }
        LinksCommand::TrySet { service, uid, pod, ttl, redis } => {
            let store = connect(&redis).await?;
            let o = store.try_set_linked_pod(&service.namespace, &uid, &service.name, pod, ttl.ttl()).await?;
            let prev = o.previous.map_or("none".into(), |p| p.to_string());
            if o.success {
                println!("linked {uid} to pod {} (previous: {prev})", o.current);
            } else {
                println!("not linked: {uid} stays on pod {}", o.current);
                return Err(Failure::Runtime(format!("{uid} is linked to pod {} already", o.current)));
            }
        }
        LinksCommand::Remove { service, uid, persist_seconds, redis } => {
            let store = connect(&redis).await?;
            let removed = store.remove_linked_pod(&service.namespace, &uid, &service.name, persist_seconds).await?;
            println!("{}", if removed { "removed" } else { "no link" });
        }
        LinksCommand::RemoveWithId { service, uid, pod, persist_seconds, redis } => {
            let store = connect(&redis).await?;
            let removed =
                store.remove_linked_pod_with_id(&service.namespace, &uid, &service.name, pod, persist_seconds).await?;
            println!("{}", if removed { "removed" } else { "no link to that pod" });
        }
    }
    Ok(())
}

async fn pick(args: PickArgs) -> Result<(), Failure> {
    let store = Store::connect(&args.redis.options().map_err(Failure::Usage)?).await?;
    let (ns, svc) = (&args.service.namespace, &args.service.name);
    let fallback = staleness_window_ms(DEFAULT_UPDATE_PERIOD_SECS);
    if args.explain {
        let e = store.explain_pick(ns, svc, args.uid.as_deref(), args.range, fallback).await?;
        print!("{}", explain::render(&e, args.output));
        return Ok(());
    }
    let random: u32 = rand::random();
    match &args.uid {
        None => {
            let snapshot = store.read_service(ns, svc).await?.snapshot(fallback, args.range);
            match snapshot.pick(random) {
                Some(pod) => {
                    let load = match snapshot.classify(pod) {
                        Classified::Alive(s) => s.weighted_load.to_string(),
                        _ => "-".into(),
                    };
                    println!("{pod} (weighted load {load})");
                }
                None => return Err(Failure::Runtime(format!("no pod of {ns}/{svc} takes new users"))),
            }
        }
        Some(uid) => {
            let params =
                PickParams { temp_ttl_secs: args.ttl, random, range: args.range, fallback_window_ms: fallback };
            match store.pick_and_link(ns, uid, svc, params).await? {
                Some(p) => println!("{} ({})", p.pod, if p.created { "new link" } else { "existing link" }),
                None => return Err(Failure::Runtime(format!("no pod of {ns}/{svc} takes new users"))),
            }
        }
    }
    Ok(())
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
    fn usage_errors_are_clap_errors_with_exit_code_2() {
        let e = Cli::try_parse_from(["routestate", "pick", "no-slash"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("is not <namespace>/<name>"), "{e}");
        let e = Cli::try_parse_from(["routestate", "frobnicate"]).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = plugin::command().error(ErrorKind::ValueValidation, "x");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn run_takes_the_chart_flags() {
        let cli = Cli::try_parse_from([
            "routestate",
            "run",
            "--redis-url=redis://a:1",
            "--redis-url=redis://b:2",
            "--redis-cluster",
            "--namespace=apps",
            "--http-addr=0.0.0.0:9090",
            "--log-format=json",
            "--leader-elect",
            "--lease-name=l",
            "--lease-namespace=ops",
            "--lease-duration-seconds=15",
            "--lease-renew-seconds=2",
        ])
        .unwrap();
        let Command::Run(r) = cli.command else { panic!("not run") };
        assert_eq!(r.redis.urls, ["redis://a:1", "redis://b:2"]);
        assert!(r.redis.cluster && r.leader_elect);
        assert_eq!((r.log_format, r.lease_namespace.as_deref()), (LogFormat::Json, Some("ops")));
    }

    #[test]
    fn status_rows_sort_by_index_and_flag_stale_and_garbage() {
        let entries = vec![
            ("10".to_owned(), PodState::new(5, 1_000, crate::core::RoutingState::Ready).encode()),
            ("2".to_owned(), PodState::new(7, 9_000, crate::core::RoutingState::DenyNewCall).encode()),
            ("x".to_owned(), "junk".to_owned()),
        ];
        let rows = status_rows(&entries, 10_000, 5_000, |i| format!("web-{i}"));
        assert_eq!(
            rows[0],
            StatusRow {
                index: "2".into(),
                pod: "web-2".into(),
                routing: "DENY_NEW_CALL".into(),
                load: "7".into(),
                age: "1.0s".into()
            }
        );
        assert_eq!(rows[1].age, "9.0s (stale)");
        assert!(rows[2].routing.starts_with("INVALID"), "{:?}", rows[2]);
        let table = render_table(&rows);
        assert!(table.starts_with("INDEX  POD"), "{table}");
        assert_eq!(table.lines().count(), 4);
    }
}
