//! The Redis ACL of a pod's own user (the direct transport and the server role's links): it may
//! write only its own namespace's reports, pod states, candidate index, dataset epoch and links,
//! and read its namespace's floors and meta, which only the operator writes. Everything else —
//! another namespace's keys, the floors, `EVAL` of its own scripts, any other command — is
//! refused by Redis with `NOPERM`.
//!
//! What it does not prevent: a pod that runs its own code against Redis (rather than the
//! library) can still write a state of its own namespace directly with `HSET`, which the next
//! operator tick overwrites from the floor. Pods that must not be trusted that far use the
//! annotation transport, where Kubernetes RBAC limits them to their own annotations.

use super::StoreError;
use crate::core::keys::check_namespace;

/// The commands the server role sends (inside its scripts too: Redis checks those as well).
const COMMANDS: &[&str] = &[
    "+@connection",
    "+evalsha",
    "+script|load",
    "+script|exists",
    "+time",
    "+info",
    "+get",
    "+set",
    "+del",
    "+expire",
    "+ttl",
    "+exists",
    "+hget",
    "+hset",
    "+hdel",
    "+hgetall",
    "+zadd",
    "+zrem",
];

/// The user name of namespace `ns`'s pods: `routestate-pods-<ns>`.
pub fn pod_user_name(ns: &str) -> String {
    format!("routestate-pods-{ns}")
}

/// The rules of `ACL SETUSER <pod_user_name(ns)> <rules…>` for the pods of namespace `ns`, with
/// the password given as `password_rule` (`>secret`, or `#<sha256>` to keep the secret out of the
/// command). An error names a namespace the key layout rejects.
pub fn pod_user_rules(ns: &str, password_rule: &str) -> Result<Vec<String>, StoreError> {
    check_namespace(ns).map_err(StoreError::key("pod_user_rules"))?;
    let mut rules: Vec<String> =
        ["on", password_rule, "resetkeys", "resetchannels", "-@all"].map(String::from).to_vec();
    rules.extend(COMMANDS.iter().map(|c| (*c).to_owned()));
    // ACL key patterns are globs: `{` and `}` are literal there, but `*`, `?`, `[`, `]` and `\`
    // in a namespace must be escaped to match only themselves.
    let ns = glob_escape(ns);
    for (perm, suffix) in
        [("RW", ""), ("RW", "report"), ("RW", "ready"), ("RW", "epoch"), ("R", "floor"), ("R", "meta")]
    {
        rules.push(format!("%{perm}~sf:{{{ns}:state:*}}{suffix}"));
    }
    rules.push(format!("%RW~sf:{{{ns}:lk:*"));
    Ok(rules)
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_name_only_the_namespaces_keys() {
        let rules = pod_user_rules("apps", ">pw").unwrap();
        assert_eq!(&rules[..5], ["on", ">pw", "resetkeys", "resetchannels", "-@all"]);
        let keys: Vec<&str> = rules.iter().filter(|r| r.starts_with('%')).map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "%RW~sf:{apps:state:*}",
                "%RW~sf:{apps:state:*}report",
                "%RW~sf:{apps:state:*}ready",
                "%RW~sf:{apps:state:*}epoch",
                "%R~sf:{apps:state:*}floor",
                "%R~sf:{apps:state:*}meta",
                "%RW~sf:{apps:lk:*",
            ]
        );
        assert!(!rules.iter().any(|r| r == "+eval" || r == "+@all"), "no EVAL of arbitrary scripts: {rules:?}");
        assert_eq!(pod_user_rules("a*b", ">x").unwrap().last().unwrap(), "%RW~sf:{a\\*b:lk:*");
        assert!(
            crate::core::ErrorChain::chain(&pod_user_rules("a:b", ">x").unwrap_err()).to_string().contains("\"a:b\"")
        );
        assert_eq!(pod_user_name("apps"), "routestate-pods-apps");
    }
}
