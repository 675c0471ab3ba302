//! `routestate run`: the operator, until SIGTERM or SIGINT.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, ValueEnum};

use super::{args::RedisArgs, error::Failure, plugin::KubeArgs};
use crate::operator::{self, LeaseConfig, OperatorConfig};

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
    pub kube: KubeArgs,
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

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Runs the operator.
pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let (duration, renew) =
        (Duration::from_secs(args.lease_duration_seconds), Duration::from_secs(args.lease_renew_seconds));
    if args.leader_elect
        && let Err(e) = operator::leader::check_timing(duration, renew)
    {
        return Err(Failure::Usage(format!("--lease-renew-seconds and --lease-duration-seconds: {e}")));
    }
    let redis = args.redis.options()?;
    init_logs(args.log_format);
    let client = args.kube.client().await?;
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
    Ok(operator::run(config).await?)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    use super::*;

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
}
