//! `routestate pick --explain`: the explanation of a placement as text for people or JSON for
//! programs.

use clap::ValueEnum;

use crate::core::Explanation;

/// Output format of `pick --explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned text.
    Text,
    /// One JSON object with camelCase fields.
    Json,
}

/// The explanation in `output`, ending with a newline.
pub fn render(e: &Explanation, output: Output) -> String {
    match output {
        Output::Text => e.to_string(),
        Output::Json => {
            let mut json = serde_json::to_string_pretty(e).expect("an explanation always serialises");
            json.push('\n');
            json
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn explain_takes_an_output_format_and_the_output_needs_explain() {
        let cli = Cli::try_parse_from([
            "routestate",
            "pick",
            "a/b",
            "u1",
            "--explain",
            "-o",
            "json",
            "--redis-url=redis://x",
        ])
        .unwrap();
        let Command::Pick(p) = cli.command else { panic!("not pick") };
        assert!(p.explain);
        assert_eq!((p.output, p.uid.as_deref()), (Output::Json, Some("u1")));
        let e = Cli::try_parse_from(["routestate", "pick", "a/b", "-o", "json", "--redis-url=redis://x"]).unwrap_err();
        assert!(e.to_string().contains("--explain"), "{e}");
    }

    #[test]
    fn help_says_that_explain_never_links() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd.find_subcommand_mut("pick").unwrap().render_long_help().to_string();
        assert!(help.contains("NOT linked") && help.contains("Writes nothing"), "{help}");
    }
}
