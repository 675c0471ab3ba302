//! `routestate links …`: read and write sticky user links.

use clap::Subcommand;

use super::{
    args::{LinkArgs, TtlArgs},
    error::{CliError, Failure},
};

/// `routestate links …`.
#[derive(Debug, Subcommand)]
pub enum LinksCommand {
    /// The pod a user is linked to for a service (prints the index, or "none").
    Get {
        /// The link.
        #[command(flatten)]
        link: LinkArgs,
    },
    /// Link a user to a pod unconditionally (prints the previous pod).
    Set {
        /// The link.
        #[command(flatten)]
        link: LinkArgs,
        /// Pod index.
        pod: u32,
        /// TTL.
        #[command(flatten)]
        ttl: TtlArgs,
    },
    /// Link a user to a pod unless it is linked elsewhere (prints the outcome).
    TrySet {
        /// The link.
        #[command(flatten)]
        link: LinkArgs,
        /// Pod index.
        pod: u32,
        /// TTL.
        #[command(flatten)]
        ttl: TtlArgs,
    },
    /// Remove a user's link.
    Remove {
        /// The link.
        #[command(flatten)]
        link: LinkArgs,
        /// Keep the link readable as a temporary link for this many seconds (0 = delete now).
        #[arg(long, default_value_t = 0)]
        persist_seconds: u64,
    },
    /// Remove a user's link only while it points to the given pod.
    RemoveWithId {
        /// The link.
        #[command(flatten)]
        link: LinkArgs,
        /// Pod index the link must point to.
        pod: u32,
        /// Keep the link readable as a temporary link for this many seconds (0 = delete now).
        #[arg(long, default_value_t = 0)]
        persist_seconds: u64,
    },
}

/// Runs a `links` command.
pub async fn links(cmd: LinksCommand) -> Result<(), Failure> {
    match cmd {
        LinksCommand::Get { link } => {
            let store = link.redis.connect().await?;
            match store.get_linked_pod(&link.service.namespace, &link.uid, &link.service.name).await? {
                Some(pod) => println!("{pod}"),
                None => println!("none"),
            }
        }
        LinksCommand::Set { link, pod, ttl } => {
            let (store, uid) = (link.redis.connect().await?, &link.uid);
            let prev = store.set_linked_pod(&link.service.namespace, uid, &link.service.name, pod, ttl.ttl()).await?;
            println!("linked {uid} to pod {pod} (previous: {})", prev.map_or("none".into(), |p| p.to_string()));
        }
        LinksCommand::TrySet { link, pod, ttl } => {
            let (store, uid) = (link.redis.connect().await?, &link.uid);
            let o = store.try_set_linked_pod(&link.service.namespace, uid, &link.service.name, pod, ttl.ttl()).await?;
            let prev = o.previous.map_or("none".into(), |p| p.to_string());
            if o.success {
                println!("linked {uid} to pod {} (previous: {prev})", o.current);
            } else {
                println!("not linked: {uid} stays on pod {}", o.current);
                return Err(CliError::AlreadyLinked { uid: uid.clone(), pod: o.current }.into());
            }
        }
        LinksCommand::Remove { link, persist_seconds } => {
            let store = link.redis.connect().await?;
            let removed = store
                .remove_linked_pod(&link.service.namespace, &link.uid, &link.service.name, persist_seconds)
                .await?;
            println!("{}", if removed { "removed" } else { "no link" });
        }
        LinksCommand::RemoveWithId { link, pod, persist_seconds } => {
            let store = link.redis.connect().await?;
            let (ns, svc) = (&link.service.namespace, &link.service.name);
            let removed = store.remove_linked_pod_with_id(ns, &link.uid, svc, pod, persist_seconds).await?;
            println!("{}", if removed { "removed" } else { "no link to that pod" });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    use super::*;

    #[test]
    fn every_links_command_takes_service_uid_then_its_own_arguments() {
        let cli = Cli::try_parse_from([
            "routestate",
            "links",
            "set",
            "apps/web",
            "u1",
            "3",
            "--persistent",
            "--redis-url=redis://r:1",
        ])
        .unwrap();
        let Command::Links(LinksCommand::Set { link, pod, ttl }) = cli.command else { panic!("not links set") };
        assert_eq!(
            (link.service.namespace.as_str(), link.service.name.as_str(), link.uid.as_str(), pod),
            ("apps", "web", "u1", 3)
        );
        assert!(ttl.persistent && link.redis.urls == ["redis://r:1"]);
        let cli = Cli::try_parse_from([
            "routestate",
            "links",
            "remove-with-id",
            "apps/web",
            "u1",
            "2",
            "--persist-seconds=5",
            "--redis-url=redis://r:1",
        ])
        .unwrap();
        let Command::Links(LinksCommand::RemoveWithId { link, pod, persist_seconds }) = cli.command else {
            panic!("not remove-with-id")
        };
        assert_eq!((link.uid.as_str(), pod, persist_seconds), ("u1", 2, 5));
        assert!(
            Cli::try_parse_from(["routestate", "links", "get", "no-slash", "u1", "--redis-url=redis://r:1"]).is_err()
        );
    }
}
