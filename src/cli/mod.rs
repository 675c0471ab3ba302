//! The `routestate` command line: `run` (the operator), `crd`, `status`, `links` and `pick`, one
//! module per command; also a kubectl plugin when installed as `kubectl-routestate` ([`plugin`]).
//!
//! Usage errors (unknown flags, malformed `<ns>/<name>`, inconsistent lease timings) print a
//! clear message and exit with code 2; runtime failures print the error and its causes once and
//! exit with code 1.

pub mod args;
pub mod error;
mod explain;
pub mod links;
pub mod pick;
pub mod plugin;
pub mod run;
pub mod status;

use std::process::ExitCode;

use clap::{Parser, Subcommand, error::ErrorKind};

pub use self::{
    args::{LinkArgs, NsName, RedisArgs, TtlArgs},
    error::{CliError, Failure},
    links::LinksCommand,
    pick::PickArgs,
    run::{LogFormat, RunArgs},
    status::{StatusArgs, StatusRow, render_table, status_rows},
};
use crate::{core::ErrorChain, operator};

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

/// Parses the process arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = plugin::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("routestate: starting the async runtime: {}", e.chain());
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => plugin::command().error(ErrorKind::ValueValidation, msg).exit(),
        Err(Failure::Failed(e)) => {
            eprintln!("routestate: {}", e.chain());
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
        Command::Run(args) => run::run(args).await,
        Command::Status(args) => status::status(args).await,
        Command::Links(cmd) => links::links(cmd).await,
        Command::Pick(args) => pick::pick(args).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
