//! Prometheus metrics of the operator (prometheus-client). Labels are bounded: error kinds,
//! routing states and condition names, and per RouteState its namespace and name (one set of
//! series per RouteState, removed when it is deleted or this replica stops leading); never users
//! or pods.

use std::{
    sync::atomic::AtomicU64,
    time::{Instant, SystemTime},
};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::reflector::ObjectRef;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::{
    crd::RouteState,
    derive::{CONDITION_LEADER, CONDITION_READY, CONDITION_REDIS_SYNCED},
};
use crate::core::{Published, RoutingState, staleness_window_ms};

/// Label set naming an error kind (`Error::metric_label`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// The error kind.
    pub kind: String,
}

/// Label set naming a routing state (wire name).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoutingLabels {
    /// READY, DENY_NEW_CALL or SHUTDOWN.
    pub routing: String,
}

/// Label set of one RouteState: its namespace and name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The RouteState's namespace (also the Redis namespace of its keys).
    pub namespace: String,
    /// The RouteState's name.
    pub routestate: String,
}

/// A RouteState and a routing state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceRoutingLabels {
    /// The RouteState's namespace.
    pub namespace: String,
    /// The RouteState's name.
    pub routestate: String,
    /// READY, DENY_NEW_CALL or SHUTDOWN.
    pub routing: String,
}

/// A RouteState and a statistic over its pods' weighted loads.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceStatLabels {
    /// The RouteState's namespace.
    pub namespace: String,
    /// The RouteState's name.
    pub routestate: String,
    /// `min` or `max` (over READY pods) or `sum` (over every published pod).
    pub stat: String,
}

/// A RouteState, one of its condition types and one condition status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceConditionLabels {
    /// The RouteState's namespace.
    pub namespace: String,
    /// The RouteState's name.
    pub routestate: String,
    /// Ready, RedisSynced or LeaderAvailable.
    pub condition: String,
    /// True, False or Unknown.
    pub status: String,
}

/// Condition types exported per RouteState.
pub const SERVICE_CONDITIONS: [&str; 3] = [CONDITION_READY, CONDITION_REDIS_SYNCED, CONDITION_LEADER];
/// Condition statuses: exactly one is 1 per condition type.
pub const CONDITION_STATUSES: [&str; 3] = ["True", "False", "Unknown"];
/// Values of the `stat` label of `routestate_service_weighted_load`.
pub const LOAD_STATS: [&str; 3] = ["min", "max", "sum"];

type FloatGauge = Gauge<f64, AtomicU64>;

/// What one publish wrote, summed up for the per-RouteState gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishSummary {
    /// Published pods by routing state, in [`RoutingState::ALL`] order.
    pub pods: [i64; 3],
    /// Least and greatest weighted load of the READY pods (`None` without READY pods).
    pub ready_load: Option<(u64, u64)>,
    /// Weighted load of every published pod, saturating.
    pub total_load: u64,
}

/// Sums up the published pods, as (weighted load, routing state).
pub fn publish_summary(pods: impl IntoIterator<Item = (u64, RoutingState)>) -> PublishSummary {
    let mut s = PublishSummary::default();
    for (load, routing) in pods {
        s.pods[usize::from(routing.ordinal())] += 1;
        s.total_load = s.total_load.saturating_add(load);
        if routing == RoutingState::Ready {
            s.ready_load = Some(s.ready_load.map_or((load, load), |(lo, hi)| (lo.min(load), hi.max(load))));
        }
    }
    s
}

/// All operator metrics, registered under the prefix `routestate`.
pub struct Metrics {
    registry: Registry,
    /// Reconciles started.
    pub reconciles: Counter,
    /// Reconcile errors by kind.
    pub errors: Family<KindLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Duration of one publish tick (TIME + pipelines) in seconds.
    pub publish_duration: Histogram,
    /// Failed publishes of a service's states (one per service and attempt).
    pub publish_errors: Counter,
    /// Pods currently published, by routing state.
    pub published_pods: Family<RoutingLabels, Gauge>,
    /// 1 while this replica holds the lease (and writes), else 0.
    pub leader: Gauge,
    /// 1 while the last Redis operation (a publish, or `/readyz`'s PING) succeeded.
    pub redis_up: Gauge,
    /// Per RouteState: pods published, by routing state.
    pub service_pods: Family<ServiceRoutingLabels, Gauge>,
    /// Per RouteState: min/max weighted load of the READY pods, sum over all published pods.
    pub service_weighted_load: Family<ServiceStatLabels, FloatGauge>,
    /// Per RouteState: Unix time of the last successful publish (the heartbeat clients see).
    pub service_last_publish: Family<ServiceLabels, FloatGauge>,
    /// Per RouteState: the staleness window clients apply (3 × updatePeriodSeconds).
    pub service_staleness_window: Family<ServiceLabels, FloatGauge>,
    /// Per RouteState: failed publishes of its service.
    pub service_publish_errors: Family<ServiceLabels, Counter>,
    /// Per RouteState: its status conditions, 1 for the current status of each type.
    pub service_condition: Family<ServiceConditionLabels, Gauge>,
    /// Times Redis was found to have lost the published data (came back empty, or another
    /// dataset); each time every service is republished at once.
    pub data_loss: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("routestate");
        let reconciles = Counter::default();
        let errors = Family::<KindLabels, Counter>::default();
        let buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 15.0];
        let reconcile_duration = Histogram::new(buckets);
        let publish_duration = Histogram::new(buckets);
        let publish_errors = Counter::default();
        let published_pods = Family::<RoutingLabels, Gauge>::default();
        let leader = Gauge::default();
        let redis_up = Gauge::default();
        let service_pods = Family::<ServiceRoutingLabels, Gauge>::default();
        let service_weighted_load = Family::<ServiceStatLabels, FloatGauge>::default();
        let service_last_publish = Family::<ServiceLabels, FloatGauge>::default();
        let service_staleness_window = Family::<ServiceLabels, FloatGauge>::default();
        let service_publish_errors = Family::<ServiceLabels, Counter>::default();
        let service_condition = Family::<ServiceConditionLabels, Gauge>::default();
        let data_loss = Counter::default();
        registry.register("reconciles", "RouteState reconciles", reconciles.clone());
        registry.register("reconcile_errors", "RouteState reconcile errors by kind", errors.clone());
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of one reconcile",
            prometheus_client::registry::Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register_with_unit(
            "redis_publish_duration",
            "Duration of one Redis publish tick",
            prometheus_client::registry::Unit::Seconds,
            publish_duration.clone(),
        );
        registry.register(
            "redis_publish_errors",
            "Failed publishes of a service's states to Redis (one per service and attempt)",
            publish_errors.clone(),
        );
        registry.register("published_pods", "Pods currently published, by routing state", published_pods.clone());
        registry.register("leader", "1 while this replica holds the lease", leader.clone());
        registry.register("redis_up", "1 while the last Redis operation succeeded", redis_up.clone());
        registry.register("service_pods", "Pods a RouteState publishes, by routing state", service_pods.clone());
        registry.register(
            "service_weighted_load",
            "Weighted load of a RouteState's pods: min and max over READY pods, sum over all published",
            service_weighted_load.clone(),
        );
        registry.register_with_unit(
            "service_last_publish_timestamp",
            "Unix time of the last successful publish of a RouteState's service",
            Unit::Seconds,
            service_last_publish.clone(),
        );
        registry.register_with_unit(
            "service_staleness_window",
            "Heartbeat age after which clients treat a RouteState's pod states as stale",
            Unit::Seconds,
            service_staleness_window.clone(),
        );
        registry.register(
            "service_publish_errors",
            "Failed publishes of a RouteState's service",
            service_publish_errors.clone(),
        );
        registry.register(
            "service_condition",
            "Status conditions of a RouteState: 1 for the current status of each type",
            service_condition.clone(),
        );
        registry.register(
            "redis_data_loss",
            "Times Redis lost the published data (came back empty or another dataset); every service is republished",
            data_loss.clone(),
        );
        // Children of the bounded label sets exist from the start, at 0: a query or an alert on
        // them has a series before the first error, and `rate()` sees the first increase.
        for kind in super::error::METRIC_LABELS {
            let _ = errors.get_or_create(&KindLabels { kind: kind.to_owned() });
        }
        for state in RoutingState::ALL {
            let _ = published_pods.get_or_create(&RoutingLabels { routing: state.wire_name().to_owned() });
        }
        Self {
            registry,
            reconciles,
            errors,
            reconcile_duration,
            publish_duration,
            publish_errors,
            published_pods,
            leader,
            redis_up,
            service_pods,
            service_weighted_load,
            service_last_publish,
            service_staleness_window,
            service_publish_errors,
            service_condition,
            data_loss,
        }
    }
}

fn service_labels(rs: &ObjectRef<RouteState>) -> ServiceLabels {
    ServiceLabels { namespace: rs.namespace.clone().unwrap_or_default(), routestate: rs.name.clone() }
}

impl ServiceLabels {
    fn routing(&self, state: RoutingState) -> ServiceRoutingLabels {
        let (namespace, routestate) = (self.namespace.clone(), self.routestate.clone());
        ServiceRoutingLabels { namespace, routestate, routing: state.wire_name().to_owned() }
    }

    fn stat(&self, stat: &str) -> ServiceStatLabels {
        let (namespace, routestate) = (self.namespace.clone(), self.routestate.clone());
        ServiceStatLabels { namespace, routestate, stat: stat.to_owned() }
    }

    fn condition(&self, condition: &str, status: &str) -> ServiceConditionLabels {
        let (namespace, routestate) = (self.namespace.clone(), self.routestate.clone());
        ServiceConditionLabels { namespace, routestate, condition: condition.to_owned(), status: status.to_owned() }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a reconcile and returns a timer that records its duration when dropped.
    pub fn reconcile_timer(&self) -> DropTimer<'_> {
        self.reconciles.inc();
        DropTimer { histogram: &self.reconcile_duration, start: Instant::now() }
    }

    /// Counts an error of `kind`.
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&KindLabels { kind: kind.to_owned() }).inc();
    }

    /// Sets the published-pods gauges.
    pub fn set_published(&self, counts: [i64; 3]) {
        for (state, n) in RoutingState::ALL.into_iter().zip(counts) {
            self.published_pods.get_or_create(&RoutingLabels { routing: state.wire_name().to_owned() }).set(n);
        }
    }
}

impl Metrics {
    /// One publish attempt of a RouteState's service (call once per service per tick): what it
    /// wrote (the pods' own reports included), or `None` when it did not reach Redis (the pod
    /// gauges then keep what was last published, and the heartbeat ages).
    pub fn observe_publish(&self, rs: &ObjectRef<RouteState>, period_secs: u32, published: Option<&Published>) {
        let l = service_labels(rs);
        let window = staleness_window_ms(period_secs) as f64 / 1000.0;
        self.service_staleness_window.get_or_create(&l).set(window);
        // Created at 0 on the first attempt, so `rate()` sees the first failure.
        let errors = self.service_publish_errors.get_or_create(&l);
        let Some(published) = published else {
            errors.inc();
            return;
        };
        let summary = publish_summary(published.pods.values().copied());
        for (state, n) in RoutingState::ALL.into_iter().zip(summary.pods) {
            self.service_pods.get_or_create(&l.routing(state)).set(n);
        }
        match summary.ready_load {
            Some((min, max)) => {
                self.service_weighted_load.get_or_create(&l.stat("min")).set(min as f64);
                self.service_weighted_load.get_or_create(&l.stat("max")).set(max as f64);
            }
            None => {
                self.service_weighted_load.remove(&l.stat("min"));
                self.service_weighted_load.remove(&l.stat("max"));
            }
        }
        self.service_weighted_load.get_or_create(&l.stat("sum")).set(summary.total_load as f64);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        self.service_last_publish.get_or_create(&l).set(now.as_secs_f64());
    }

    /// A RouteState's computed status conditions (call where the status is computed).
    pub fn observe_status(&self, rs: &ObjectRef<RouteState>, conditions: &[Condition]) {
        let l = service_labels(rs);
        for condition in SERVICE_CONDITIONS {
            let current = conditions.iter().find(|c| c.type_ == condition).map_or("Unknown", |c| c.status.as_str());
            for status in CONDITION_STATUSES {
                self.service_condition.get_or_create(&l.condition(condition, status)).set(i64::from(status == current));
            }
        }
    }

    /// Removes every series of a RouteState (it was deleted).
    pub fn forget(&self, rs: &ObjectRef<RouteState>) {
        let l = service_labels(rs);
        for state in RoutingState::ALL {
            self.service_pods.remove(&l.routing(state));
        }
        for stat in LOAD_STATS {
            self.service_weighted_load.remove(&l.stat(stat));
        }
        self.service_last_publish.remove(&l);
        self.service_staleness_window.remove(&l);
        self.service_publish_errors.remove(&l);
        for condition in SERVICE_CONDITIONS {
            for status in CONDITION_STATUSES {
                self.service_condition.remove(&l.condition(condition, status));
            }
        }
    }

    /// Sets the leader gauge. A replica that stops leading drops every per-RouteState series:
    /// only the lease holder publishes and computes status, so only its series are current.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
        if !leader {
            self.service_pods.clear();
            self.service_weighted_load.clear();
            self.service_last_publish.clear();
            self.service_staleness_window.clear();
            self.service_publish_errors.clear();
            self.service_condition.clear();
        }
    }
}

/// Records the elapsed time into a histogram when dropped.
pub struct DropTimer<'a> {
    histogram: &'a Histogram,
    start: Instant,
}

impl Drop for DropTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_bounded_labels() {
        let m = Metrics::default();
        {
            let _t = m.reconcile_timer();
        }
        m.error("redis");
        m.set_published([2, 1, 0]);
        m.leader.set(1);
        let text = m.render();
        for kind in crate::operator::error::METRIC_LABELS.into_iter().filter(|k| *k != "redis") {
            let zero = format!("routestate_reconcile_errors_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&zero), "missing {zero:?} in\n{text}");
        }
        for name in [
            "routestate_reconciles_total 1",
            "routestate_reconcile_errors_total{kind=\"redis\"} 1",
            "routestate_reconcile_duration_seconds_count 1",
            "routestate_redis_publish_duration_seconds_count 0",
            "routestate_redis_publish_errors_total 0",
            "routestate_published_pods{routing=\"DENY_NEW_CALL\"} 1",
            "routestate_leader 1",
            "routestate_redis_data_loss_total 0",
        ] {
            assert!(text.contains(name), "missing {name:?} in\n{text}");
        }
    }

    fn pod(routing: RoutingState, weighted_load: u64) -> (u64, RoutingState) {
        (weighted_load, routing)
    }

    /// What a publish of `pods` (indexes 0, 1, …) wrote.
    fn wrote(pods: &[(u64, RoutingState)]) -> Published {
        Published { now_ms: 1, pods: (0..).zip(pods.iter().copied()).collect() }
    }

    #[test]
    fn publish_summary_counts_states_and_spans_ready_loads_only() {
        use RoutingState::{DenyNewCall as D, Ready as R, Shutdown as S};
        let pods = [pod(R, 7), pod(D, 1), pod(R, 3), pod(S, 100), pod(R, 9)];
        let s = publish_summary(pods);
        assert_eq!(s, PublishSummary { pods: [3, 1, 1], ready_load: Some((3, 9)), total_load: 120 });
        let s = publish_summary([pod(D, 5), pod(D, u64::MAX)]);
        assert_eq!(s, PublishSummary { pods: [0, 2, 0], ready_load: None, total_load: u64::MAX });
        assert_eq!(publish_summary([]), PublishSummary::default());
    }

    fn rs(ns: &str, name: &str) -> ObjectRef<RouteState> {
        ObjectRef::new(name).within(ns)
    }

    fn lines_of(text: &str, routestate: &str) -> Vec<String> {
        let needle = format!("routestate=\"{routestate}\"");
        text.lines().filter(|l| l.contains(&needle)).map(str::to_owned).collect()
    }

    #[test]
    fn per_routestate_series_follow_publishes_status_and_deletion() {
        use RoutingState::{DenyNewCall as D, Ready as R};
        let m = Metrics::default();
        let (web, api) = (rs("apps", "web"), rs("apps", "api"));
        m.observe_publish(&web, 2, Some(&wrote(&[pod(R, 4), pod(R, 6), pod(D, 1)])));
        m.observe_publish(&api, 10, None);
        m.observe_publish(&api, 10, None);
        let text = m.render();
        for want in [
            r#"routestate_service_pods{namespace="apps",routestate="web",routing="READY"} 2"#,
            r#"routestate_service_pods{namespace="apps",routestate="web",routing="DENY_NEW_CALL"} 1"#,
            r#"routestate_service_pods{namespace="apps",routestate="web",routing="SHUTDOWN"} 0"#,
            r#"routestate_service_weighted_load{namespace="apps",routestate="web",stat="min"} 4.0"#,
            r#"routestate_service_weighted_load{namespace="apps",routestate="web",stat="max"} 6.0"#,
            r#"routestate_service_weighted_load{namespace="apps",routestate="web",stat="sum"} 11.0"#,
            r#"routestate_service_staleness_window_seconds{namespace="apps",routestate="web"} 6.0"#,
            r#"routestate_service_publish_errors_total{namespace="apps",routestate="web"} 0"#,
            r#"routestate_service_publish_errors_total{namespace="apps",routestate="api"} 2"#,
            r#"routestate_service_staleness_window_seconds{namespace="apps",routestate="api"} 30.0"#,
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let published = text
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"routestate_service_last_publish_timestamp_seconds{namespace="apps",routestate="web"} "#,
                )
            })
            .expect("web's last publish time");
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
        assert!((now - published.parse::<f64>().unwrap()).abs() < 60.0, "{published} vs {now}");
        let api_lines = lines_of(&text, "api");
        assert!(!api_lines.iter().any(|l| l.contains("last_publish")), "api never published: {api_lines:?}");
        assert!(!api_lines.iter().any(|l| l.contains("stat=\"min\"")), "api has no READY pod: {api_lines:?}");

        let cond = |type_: &str, status: &str| Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "R".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ),
        };
        m.observe_status(&web, &[cond("Ready", "False"), cond("RedisSynced", "True")]);
        let text = m.render();
        for (condition, status, v) in [
            ("Ready", "False", 1),
            ("Ready", "True", 0),
            ("Ready", "Unknown", 0),
            ("RedisSynced", "True", 1),
            ("LeaderAvailable", "Unknown", 1),
            ("LeaderAvailable", "True", 0),
        ] {
            let want = format!(
                "routestate_service_condition{{namespace=\"apps\",routestate=\"web\",condition=\"{condition}\",status=\"{status}\"}} {v}"
            );
            assert!(text.contains(&want), "missing {want:?} in\n{text}");
        }
        // The last READY pod leaves: min and max go, sum stays.
        m.observe_publish(&web, 2, Some(&wrote(&[pod(D, 1)])));
        let web_lines = lines_of(&m.render(), "web");
        assert!(!web_lines.iter().any(|l| l.contains("stat=\"min\"") || l.contains("stat=\"max\"")), "{web_lines:?}");
        // A failed publish counts, and keeps what Redis last got (and its time).
        m.observe_publish(&web, 2, None);
        let text = m.render();
        for want in [
            r#"routestate_service_pods{namespace="apps",routestate="web",routing="DENY_NEW_CALL"} 1"#,
            r#"routestate_service_publish_errors_total{namespace="apps",routestate="web"} 1"#,
            r#"routestate_service_last_publish_timestamp_seconds{namespace="apps",routestate="web"} "#,
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!lines_of(&text, "api").iter().any(|l| l.contains("service_pods")), "api never published:\n{text}");

        m.forget(&web);
        let text = m.render();
        assert_eq!(lines_of(&text, "web"), Vec::<String>::new(), "web's series outlive its deletion");
        assert!(!lines_of(&text, "api").is_empty(), "forgetting web dropped api");
        m.set_leader(true);
        assert!(!lines_of(&m.render(), "api").is_empty());
        m.set_leader(false);
        let text = m.render();
        assert!(lines_of(&text, "api").is_empty(), "a standby keeps per-RouteState series:\n{text}");
        assert!(text.contains("routestate_leader 0"), "{text}");
    }
}
