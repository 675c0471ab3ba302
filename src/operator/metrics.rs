//! Prometheus metrics of the operator (prometheus-client). Labels are bounded: error kinds and
//! routing states only, never users, pods or namespaces.

use std::time::Instant;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::core::RoutingState;

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
            data_loss,
        }
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
}
