//! The operator's Kubernetes permissions, in one list: the chart's ClusterRole/Role and Lease
//! Role and the README's RBAC table are tested against it (`tests/it/chart_rules.rs`).

/// One RBAC rule the operator needs, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// API group (`""` for the core group).
    pub group: &'static str,
    /// Resource (or subresource).
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Why the operator needs it (the README's words).
    pub why: &'static str,
}

/// The rules of the operator's ClusterRole (a Role with a namespaced install).
pub const RULES: &[Rule] = &[
    Rule {
        group: "routestate.dev",
        resource: "routestates",
        verbs: &["get", "list", "watch", "patch"],
        why: "watch them; add/remove the finalizer (a JSON patch)",
    },
    Rule {
        group: "routestate.dev",
        resource: "routestates/status",
        verbs: &["patch"],
        why: "server-side apply of the status",
    },
    Rule {
        group: "routestate.dev",
        resource: "routestates/finalizers",
        verbs: &["update"],
        why: "clusters with OwnerReferencesPermissionEnforcement",
    },
    Rule { group: "apps", resource: "statefulsets", verbs: &["get", "list", "watch"], why: "desired replicas" },
    Rule {
        group: "",
        resource: "pods",
        verbs: &["get", "list", "watch"],
        why: "readiness, index, `routestate.dev/*` annotations",
    },
    Rule {
        group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        why: "Events (a repeated Event is patched)",
    },
];

/// The rules of the leader-election Role, in the release namespace: `create` on Leases (a
/// create cannot name its object in RBAC), `get` and `update` on the operator's own Lease only.
pub const LEASE_RULES: &[Rule] = &[
    Rule { group: "coordination.k8s.io", resource: "leases", verbs: &["create"], why: "leader election" },
    Rule { group: "coordination.k8s.io", resource: "leases", verbs: &["get", "update"], why: "leader election" },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_rule_grants_secrets_writes_to_workloads_or_wildcards() {
        for r in RULES.iter().chain(LEASE_RULES) {
            assert_ne!(r.resource, "secrets", "{r:?}");
            assert!(!r.verbs.contains(&"*") && r.resource != "*" && r.group != "*", "{r:?}");
            if ["pods", "statefulsets"].contains(&r.resource) {
                assert!(r.verbs.iter().all(|v| ["get", "list", "watch"].contains(v)), "{r:?}");
            }
        }
    }
}
