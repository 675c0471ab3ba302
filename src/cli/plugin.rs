//! `routestate` as a kubectl plugin, and the kubeconfig flags of the commands that talk to
//! Kubernetes.
//!
//! Installed (or symlinked) on `PATH` as `kubectl-routestate`, the binary is what kubectl runs for
//! `kubectl routestate …`: `kubectl routestate status web` is `routestate status web`. The name
//! it was started under (argv\[0\]) only changes how help and usage errors spell the command.
//! `--kubeconfig`, `--context`, `--cluster` and `--user` choose the kubeconfig entry as kubectl's
//! flags do, and without `--kubeconfig` the file comes from `$KUBECONFIG` (a list of files is
//! merged) or `~/.kube/config`, else the in-cluster ServiceAccount.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
};

use clap::{Args, CommandFactory, FromArgMatches};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use super::{Cli, error::CliError};

/// The executable name kubectl looks for on `PATH` for `kubectl routestate`.
pub const PLUGIN_EXECUTABLE: &str = "kubectl-routestate";

/// Whether `argv0` is the plugin's executable name (any directory).
pub fn is_plugin(argv0: &OsStr) -> bool {
    Path::new(argv0).file_name().is_some_and(|n| n == PLUGIN_EXECUTABLE)
}

/// The command line, spelled `kubectl routestate` in help and errors when run as the plugin.
pub fn command_for(argv0: Option<&OsStr>) -> clap::Command {
    let cmd = Cli::command();
    if argv0.is_some_and(is_plugin) {
        cmd.bin_name("kubectl routestate").display_name("kubectl routestate")
    } else {
        cmd
    }
}

/// The command line for this process.
pub fn command() -> clap::Command {
    command_for(std::env::args_os().next().as_deref())
}

/// Parses this process' arguments; usage errors print (naming the command as invoked) and exit 2.
pub fn parse() -> Cli {
    let mut cmd = command();
    let matches = cmd.get_matches_mut();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut cmd).exit())
}

/// Which kubeconfig, and which of its contexts, clusters and users, to use (kubectl's flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct KubeArgs {
    /// Kubeconfig file; default: $KUBECONFIG (a list of files is merged), ~/.kube/config, or the
    /// in-cluster ServiceAccount.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
    /// The kubeconfig cluster to use (default: the context's).
    #[arg(long = "cluster")]
    pub kube_cluster: Option<String>,
    /// The kubeconfig user to use (default: the context's).
    #[arg(long = "user")]
    pub kube_user: Option<String>,
}

impl KubeArgs {
    fn options(&self) -> KubeConfigOptions {
        KubeConfigOptions {
            context: self.context.clone(),
            cluster: self.kube_cluster.clone(),
            user: self.kube_user.clone(),
        }
    }

    /// Whether a kubeconfig entry was chosen (then a kubeconfig is required, no in-cluster fallback).
    fn selects(&self) -> bool {
        self.context.is_some() || self.kube_cluster.is_some() || self.kube_user.is_some()
    }

    /// The Kubernetes client; an error names the kubeconfig that could not be used.
    pub async fn client(&self) -> Result<Client, CliError> {
        let failed =
            |what: String| move |e: Box<dyn std::error::Error + Send + Sync>| CliError::Kubeconfig { what, source: e };
        let options = self.options();
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| failed(format!("reading kubeconfig {}", path.display()))(e.into()))?;
                Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| failed(format!("loading kubeconfig {}", path.display()))(e.into()))?
            }
            None if self.selects() => Config::from_kubeconfig(&options)
                .await
                .map_err(|e| failed("loading the kubeconfig ($KUBECONFIG or ~/.kube/config)".into())(e.into()))?,
            None => Config::infer().await.map_err(|e| failed("finding a kubeconfig".into())(e.into()))?,
        };
        Client::try_from(config)
            .map_err(|source| CliError::Kube { what: "building the Kubernetes client".into(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;

    #[test]
    fn the_plugin_is_recognised_by_its_file_name_only() {
        for yes in ["kubectl-routestate", "/usr/local/bin/kubectl-routestate", "./kubectl-routestate"] {
            assert!(is_plugin(OsStr::new(yes)), "{yes}");
        }
        for no in ["routestate", "/bin/routestate", "kubectl-routestate-x", "/kubectl-routestate/routestate"] {
            assert!(!is_plugin(OsStr::new(no)), "{no}");
        }
    }

    #[test]
    fn usage_names_the_command_as_invoked() {
        let mut plugin = command_for(Some(OsStr::new("/x/kubectl-routestate")));
        let e = plugin.try_get_matches_from_mut(["kubectl-routestate", "statuz"]).unwrap_err();
        assert!(e.to_string().contains("kubectl routestate"), "{e}");
        let help = plugin.render_help().to_string();
        assert!(help.contains("Usage: kubectl routestate"), "{help}");
        let mut plain = command_for(Some(OsStr::new("routestate")));
        let help = plain.render_help().to_string();
        assert!(help.contains("Usage: routestate") && !help.contains("kubectl routestate"), "{help}");
    }

    #[test]
    fn status_takes_kubectl_s_flags() {
        let m = command_for(None)
            .try_get_matches_from([
                "routestate",
                "status",
                "web",
                "-n",
                "apps",
                "--context",
                "prod",
                "--kubeconfig",
                "/k",
                "--cluster",
                "c",
                "--user",
                "u",
                "--redis-url",
                "redis://r:6379",
            ])
            .unwrap();
        let Command::Status(s) = Cli::from_arg_matches(&m).unwrap().command else { panic!("not status") };
        assert_eq!((s.target.as_deref(), s.namespace.as_deref()), (Some("web"), Some("apps")));
        assert_eq!(
            s.kube,
            KubeArgs {
                kubeconfig: Some("/k".into()),
                context: Some("prod".into()),
                kube_cluster: Some("c".into()),
                kube_user: Some("u".into())
            }
        );
        assert!(s.kube.selects() && !KubeArgs::default().selects());
    }
}
