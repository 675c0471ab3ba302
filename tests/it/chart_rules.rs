//! The lease timing rule has one home, `routestate::operator::leader::check_timing`: the chart's
//! template check must accept and refuse exactly the values it does.

use std::time::Duration;

use routestate::operator::leader::check_timing;

use crate::support::cli::{chart_dir, run};

#[tokio::test]
async fn the_chart_refuses_exactly_the_lease_timings_the_operator_refuses() {
    let chart = chart_dir();
    let chart = chart.to_str().unwrap();
    let mut refused = 0;
    for (duration, renew) in [(15, 2), (15, 7), (15, 8), (4, 2), (5, 2), (3, 1), (2, 1), (300, 149), (300, 150)] {
        let operator = check_timing(Duration::from_secs(duration), Duration::from_secs(renew));
        let (d, r) = (
            format!("leaderElection.leaseDurationSeconds={duration}"),
            format!("leaderElection.renewPeriodSeconds={renew}"),
        );
        let o = run("helm", &["template", "t", chart, "--set", &d, "--set", &r], None).await;
        assert_eq!(
            o.ok,
            operator.is_ok(),
            "duration {duration} s, renew {renew} s: operator {operator:?}, chart: {}",
            o.stderr
        );
        if operator.is_err() {
            refused += 1;
            assert!(o.stderr.contains("less than half"), "{}", o.stderr);
        }
    }
    assert_eq!(refused, 4, "the grid has both sides of the rule");
}

/// The README's RBAC table lists exactly `routestate::operator::rbac`'s rules, with their reasons.
#[test]
fn the_readme_rbac_table_is_the_rule_list() {
    use routestate::operator::rbac::{LEASE_RULES, RULES};
    let readme = std::fs::read_to_string(crate::support::cli::repo_root().join("README.md")).unwrap();
    let section = readme.split("### RBAC: what the operator may do").nth(1).expect("the RBAC section");
    let rows: Vec<&str> =
        section.lines().skip_while(|l| !l.starts_with("|---")).skip(1).take_while(|l| l.starts_with('|')).collect();
    let group = |g: &str| if g.is_empty() { "core".to_owned() } else { format!("`{g}`") };
    let mut want: Vec<String> = RULES
        .iter()
        .map(|r| format!("| {} | `{}` | {} | {} |", group(r.group), r.resource, r.verbs.join(", "), r.why))
        .collect();
    let lease_verbs: Vec<String> = LEASE_RULES.iter().map(|r| r.verbs.join(", ")).collect();
    want.push(format!(
        "| {} | `{}` (release namespace only) | {} on its own Lease | {} |",
        group(LEASE_RULES[0].group),
        LEASE_RULES[0].resource,
        lease_verbs.join("; "),
        LEASE_RULES[0].why
    ));
    assert_eq!(rows, want.iter().map(String::as_str).collect::<Vec<_>>());
}
