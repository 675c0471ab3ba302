//! The `routestate` command line: `run` (the operator), `crd`, `status`, `links` and `pick`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// routestate: stateful routing for StatefulSets, kept in Redis.
#[derive(Debug, Parser)]
#[command(name = "routestate", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the RouteState CRD as YAML.
    Crd,
}

/// Parses the process arguments and runs the command; usage errors exit with code 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print!("{}", crate::operator::crd::crd_yaml());
            ExitCode::SUCCESS
        }
    }
}
