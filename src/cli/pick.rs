//! `routestate pick`: a pod for new users of a service, a user's placement, or why.

use clap::Args;

use super::{
    args::{NsName, RedisArgs, ns_name},
    error::{CliError, Failure},
    explain,
};
use crate::{
    core::{Classified, DEFAULT_GOOD_RANGE, DEFAULT_UPDATE_PERIOD_SECS, TEMP_LINK_TTL_SECS, staleness_window_ms},
    store::PickParams,
};

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

/// Runs `pick`.
pub async fn pick(args: PickArgs) -> Result<(), Failure> {
    let store = args.redis.connect().await?;
    let (ns, svc) = (&args.service.namespace, &args.service.name);
    let fallback = staleness_window_ms(DEFAULT_UPDATE_PERIOD_SECS);
    if args.explain {
        let e = store.explain_pick(ns, svc, args.uid.as_deref(), args.range, fallback).await.map_err(CliError::from)?;
        print!("{}", explain::render(&e, args.output));
        return Ok(());
    }
    let no_pod = || CliError::NoPod { namespace: ns.clone(), service: svc.clone() };
    let random: u32 = rand::random();
    match &args.uid {
        None => {
            let snapshot = store.read_service(ns, svc).await.map_err(CliError::from)?.snapshot(fallback, args.range);
            let pod = snapshot.pick(random).ok_or_else(no_pod)?;
            let load = match snapshot.classify(pod) {
                Classified::Alive(s) => s.weighted_load.to_string(),
                _ => "-".into(),
            };
            println!("{pod} (weighted load {load})");
        }
        Some(uid) => {
            let params =
                PickParams { temp_ttl_secs: args.ttl, random, range: args.range, fallback_window_ms: fallback };
            let p = store.pick_and_link(ns, uid, svc, params).await.map_err(CliError::from)?.ok_or_else(no_pod)?;
            println!("{} ({})", p.pod, if p.created { "new link" } else { "existing link" });
        }
    }
    Ok(())
}
