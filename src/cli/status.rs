//! `routestate status`: the pod states a RouteState publishes, read from Redis, named with the
//! RouteState's pods. Which RouteStates to show is decided first ([`target`], [`targets`]: pure),
//! then read.

use std::{collections::BTreeMap, io::Write, time::Duration};

use clap::Args;
use kube::{Api, Client};

use super::{
    args::{RedisArgs, ns_name},
    error::{CliError, Failure},
    plugin::KubeArgs,
};
use crate::{
    core::{DEFAULT_UPDATE_PERIOD_SECS, ErrorChain, PodState, pod_index, staleness_window_ms},
    operator::RouteState,
};

/// Flags of `routestate status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The RouteState, as `<namespace>/<name>`, or `<name>` in the -n namespace (default: the
    /// kubeconfig context's).
    pub target: Option<String>,
    /// Namespace (with a bare name, or alone: every RouteState of the namespace; default: the
    /// kubeconfig context's).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Refresh every second until interrupted.
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// Kubeconfig, context, cluster and user (to resolve the RouteState's service and pod names,
    /// and the namespace when -n is not given).
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Redis connection.
    #[command(flatten)]
    pub redis: RedisArgs,
}

/// One row of `routestate status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRow {
    /// Pod index.
    pub index: String,
    /// Pod name.
    pub pod: String,
    /// Routing state (wire name) or the reason the entry is unusable.
    pub routing: String,
    /// Weighted load.
    pub load: String,
    /// Heartbeat age, with "(stale)" past the window.
    pub age: String,
}

/// Builds the rows of the status table from the raw hash entries.
pub fn status_rows(
    entries: &[(String, String)],
    now_ms: u64,
    window_ms: u64,
    pod_name: impl Fn(u32) -> String,
) -> Vec<StatusRow> {
    let mut rows: Vec<(u64, StatusRow)> = entries
        .iter()
        .map(|(field, value)| match (pod_index::parse_index(field), PodState::parse(value)) {
            (Some(i), Ok(s)) => {
                let age = s.age_ms(now_ms);
                let stale = if s.is_fresh(now_ms, window_ms) { "" } else { " (stale)" };
                (
                    u64::from(i),
                    StatusRow {
                        index: i.to_string(),
                        pod: pod_name(i),
                        routing: s.routing.wire_name().to_owned(),
                        load: s.weighted_load.to_string(),
                        age: format!("{:.1}s{stale}", age as f64 / 1000.0),
                    },
                )
            }
            (i, parsed) => (
                i.map_or(u64::MAX, u64::from),
                StatusRow {
                    index: field.clone(),
                    pod: i.map(&pod_name).unwrap_or_else(|| "-".into()),
                    routing: match parsed {
                        Err(e) => format!("INVALID ({e})"),
                        Ok(_) => "INVALID (field is not an index)".into(),
                    },
                    load: "-".into(),
                    age: "-".into(),
                },
            ),
        })
        .collect();
    rows.sort_by_key(|(i, _)| *i);
    rows.into_iter().map(|(_, r)| r).collect()
}

/// Renders rows as an aligned table with a header.
pub fn render_table(rows: &[StatusRow]) -> String {
    let header = StatusRow {
        index: "INDEX".into(),
        pod: "POD".into(),
        routing: "ROUTING".into(),
        load: "LOAD".into(),
        age: "HEARTBEAT AGE".into(),
    };
    let all: Vec<&StatusRow> = std::iter::once(&header).chain(rows).collect();
    let w = |f: fn(&StatusRow) -> &str| all.iter().map(|r| f(r).chars().count()).max().unwrap_or(0);
    let (wi, wp, wr, wl) = (w(|r| &r.index), w(|r| &r.pod), w(|r| &r.routing), w(|r| &r.load));
    all.iter()
        .map(|r| format!("{:<wi$}  {:<wp$}  {:<wr$}  {:>wl$}  {}\n", r.index, r.pod, r.routing, r.load, r.age))
        .collect()
}

/// One service to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTarget {
    namespace: String,
    title: String,
    service: String,
    pod_names: BTreeMap<u32, String>,
    statefulset: String,
}

/// Which namespace, and which RouteState in it (`None`: all of them), the arguments name;
/// `default_namespace` is the kubeconfig context's (or why there is none).
pub fn target(
    target: Option<&str>,
    namespace: Option<&str>,
    default_namespace: Result<&str, String>,
) -> Result<(String, Option<String>), Failure> {
    Ok(match (target, namespace) {
        (Some(t), _) if t.contains('/') => {
            let t = ns_name(t).map_err(Failure::Usage)?;
            (t.namespace, Some(t.name))
        }
        (Some(t), Some(ns)) => (ns.to_owned(), Some(t.to_owned())),
        (None, Some(ns)) => (ns.to_owned(), None),
        // As kubectl: the kubeconfig context's namespace.
        (t, None) => match default_namespace {
            Ok(ns) => (ns.to_owned(), t.map(str::to_owned)),
            Err(why) => {
                let what = t.map_or("RouteStates".to_owned(), |t| format!("{t:?}"));
                return Err(Failure::Usage(format!(
                    "{what}: give <namespace>/<routestate> or -n <namespace> (no kubeconfig namespace: {why})"
                )));
            }
        },
    })
}

/// The services to show: the RouteStates `found`, or when none is and a `name` was given, the
/// service of that name (a service published without a RouteState, or one not readable).
pub fn targets(namespace: &str, name: Option<&str>, found: Vec<RouteState>) -> Result<Vec<StatusTarget>, CliError> {
    if found.is_empty() {
        let Some(n) = name else { return Err(CliError::NoRouteStates(namespace.to_owned())) };
        return Ok(vec![StatusTarget {
            namespace: namespace.to_owned(),
            title: format!("service {namespace}/{n}"),
            service: n.to_owned(),
            pod_names: BTreeMap::new(),
            statefulset: n.to_owned(),
        }]);
    }
    Ok(found
        .into_iter()
        .map(|rs| {
            let st = rs.status.clone().unwrap_or_default();
            let service = st.service_name.clone().unwrap_or_else(|| rs.service_name());
            StatusTarget {
                namespace: namespace.to_owned(),
                title: format!(
                    "routestate {namespace}/{} → service {service}, workload {}, leader {}",
                    kube::ResourceExt::name_any(&rs),
                    st.workload_state.as_deref().unwrap_or("-"),
                    st.leader.as_deref().unwrap_or("-"),
                ),
                service,
                pod_names: st.pods.iter().map(|p| (p.index, p.name.clone())).collect(),
                statefulset: rs.stateful_set_name(),
            }
        })
        .collect())
}

/// The RouteStates to show, read from the API server: the named one (a failure to read it is
/// a warning: the name is then taken as the service's), or every one of the namespace.
async fn read_routestates(
    client: &Result<Client, CliError>,
    namespace: &str,
    name: Option<&str>,
) -> Result<Vec<RouteState>, CliError> {
    match (client, name) {
        (Ok(c), Some(n)) => match Api::<RouteState>::namespaced(c.clone(), namespace).get_opt(n).await {
            Ok(found) => Ok(found.into_iter().collect()),
            Err(e) => {
                eprintln!(
                    "routestate: reading RouteState {namespace}/{n}: {}; using {n:?} as the service name",
                    e.chain()
                );
                Ok(Vec::new())
            }
        },
        (Ok(c), None) => Ok(Api::<RouteState>::namespaced(c.clone(), namespace)
            .list(&Default::default())
            .await
            .map_err(|source| CliError::Kube { what: format!("listing RouteStates in {namespace}"), source })?
            .items),
        (Err(e), Some(n)) => {
            eprintln!("routestate: {}; using {n:?} as the service name", e.chain());
            Ok(Vec::new())
        }
        (Err(e), None) => Err(CliError::Kubeconfig {
            what: format!("listing the RouteStates of namespace {namespace} needs the API server"),
            source: e.chain().to_string().into(),
        }),
    }
}

/// Runs `status`.
pub async fn status(args: StatusArgs) -> Result<(), Failure> {
    let store = args.redis.connect().await?;
    // One client for the whole --watch session; only the RouteStates are re-read each second.
    let client = args.kube.client().await;
    let default_namespace = match &client {
        Ok(c) => Ok(c.default_namespace()),
        Err(e) => Err(e.chain().to_string()),
    };
    let (namespace, name) = target(args.target.as_deref(), args.namespace.as_deref(), default_namespace)?;
    loop {
        let found = read_routestates(&client, &namespace, name.as_deref()).await?;
        let mut out = String::new();
        for t in targets(&namespace, name.as_deref(), found)? {
            let states = store.read_service(&t.namespace, &t.service).await.map_err(CliError::from)?;
            let window = states.window_ms(staleness_window_ms(DEFAULT_UPDATE_PERIOD_SECS));
            let period = states.update_period_secs.map_or("unknown".to_owned(), |p| format!("{p}s"));
            out.push_str(&format!("{} (period {period}, stale after {}s)\n", t.title, window / 1000));
            let name = |i: u32| t.pod_names.get(&i).cloned().unwrap_or_else(|| pod_index::pod_name(&t.statefulset, i));
            let rows = status_rows(&states.entries, states.now_ms, window, name);
            if rows.is_empty() {
                out.push_str("no pod states published\n");
            } else {
                out.push_str(&render_table(&rows));
            }
        }
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(out.as_bytes());
        let _ = stdout.flush();
        drop(stdout);
        if !args.watch {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => println!(),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_rows_sort_by_index_and_flag_stale_and_garbage() {
        let entries = vec![
            ("10".to_owned(), PodState::new(5, 1_000, crate::core::RoutingState::Ready).encode()),
            ("2".to_owned(), PodState::new(7, 9_000, crate::core::RoutingState::DenyNewCall).encode()),
            ("x".to_owned(), "junk".to_owned()),
        ];
        let rows = status_rows(&entries, 10_000, 5_000, |i| format!("web-{i}"));
        assert_eq!(
            rows[0],
            StatusRow {
                index: "2".into(),
                pod: "web-2".into(),
                routing: "DENY_NEW_CALL".into(),
                load: "7".into(),
                age: "1.0s".into()
            }
        );
        assert_eq!(rows[1].age, "9.0s (stale)");
        assert!(rows[2].routing.starts_with("INVALID"), "{:?}", rows[2]);
        let table = render_table(&rows);
        assert!(table.starts_with("INDEX  POD"), "{table}");
        assert_eq!(table.lines().count(), 4);
    }

    #[test]
    fn the_target_comes_from_the_arguments_then_the_context() {
        let ok = |t, n, d: Result<&str, String>| match target(t, n, d) {
            Ok(v) => v,
            Err(Failure::Usage(m)) => panic!("usage: {m}"),
            Err(Failure::Failed(e)) => panic!("{e}"),
        };
        assert_eq!(ok(Some("apps/web"), Some("other"), Ok("ctx")), ("apps".into(), Some("web".into())));
        assert_eq!(ok(Some("web"), Some("apps"), Ok("ctx")), ("apps".into(), Some("web".into())));
        assert_eq!(ok(None, Some("apps"), Ok("ctx")), ("apps".into(), None));
        assert_eq!(ok(Some("web"), None, Ok("ctx")), ("ctx".into(), Some("web".into())));
        assert_eq!(ok(None, None, Ok("ctx")), ("ctx".into(), None));
        let Err(Failure::Usage(m)) = target(Some("web"), None, Err("no kubeconfig".into())) else {
            panic!("not usage")
        };
        assert!(m.contains("\"web\"") && m.contains("no kubeconfig"), "{m}");
        assert!(matches!(target(Some("a/b/c"), None, Ok("ctx")), Err(Failure::Usage(_))));
    }

    #[test]
    fn without_a_routestate_the_name_is_the_service() {
        let t = targets("apps", Some("web"), Vec::new()).unwrap();
        assert_eq!(
            (t[0].service.as_str(), t[0].statefulset.as_str(), t[0].title.as_str()),
            ("web", "web", "service apps/web")
        );
        assert!(matches!(targets("apps", None, Vec::new()), Err(CliError::NoRouteStates(ns)) if ns == "apps"));
        let rs: RouteState = serde_json::from_value(serde_json::json!({
            "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
            "metadata": {"name": "game", "namespace": "apps"},
            "spec": {"statefulSet": "game-sts", "serviceName": "game-svc"},
            "status": {"leader": "game-sts-0", "pods": [{"index": 0, "name": "game-sts-0", "ready": true}]}
        }))
        .unwrap();
        let t = targets("apps", None, vec![rs]).unwrap();
        assert_eq!((t[0].service.as_str(), t[0].statefulset.as_str()), ("game-svc", "game-sts"));
        assert_eq!(t[0].pod_names.get(&0).map(String::as_str), Some("game-sts-0"));
        assert!(t[0].title.contains("leader game-sts-0"), "{}", t[0].title);
    }
}
