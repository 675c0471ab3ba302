//! The `RouteState` custom resource (`routestate.dev/v1alpha1`): which StatefulSet's pods are
//! published to Redis, under which service name, and with which routing overrides.
//!
//! The schema is generated from these types; doc comments become `kubectl explain` text, and
//! the validation (enums, ranges, list-map keys, CEL rules) is enforced by the API server. It
//! carries only formats the API server knows ([`kube_formats`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::core::{self, DEFAULT_CPU_FACTOR, DEFAULT_UPDATE_PERIOD_SECS};

/// Desired routing of one StatefulSet's pods, published to Redis by the operator.
// The printer columns repeat `type_` on purpose.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "routestate.dev",
    version = "v1alpha1",
    kind = "RouteState",
    plural = "routestates",
    singular = "routestate",
    shortname = "rst",
    namespaced,
    status = "RouteStateStatus",
    derive = "PartialEq",
    doc = "RouteState publishes the routing state and load of one StatefulSet's pods to Redis.",
    printcolumn(
        name = "StatefulSet",
        type_ = "string",
        description = "Target StatefulSet",
        json_path = ".status.statefulSet"
    ),
    printcolumn(
        name = "Routing",
        type_ = "string",
        description = "Service-wide routing state",
        json_path = ".spec.routingState"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        description = "Ready pods / desired replicas",
        json_path = ".status.readySummary"
    ),
    printcolumn(
        name = "Routable",
        type_ = "integer",
        description = "Pods published READY",
        json_path = ".status.routablePods"
    ),
    printcolumn(
        name = "Draining",
        type_ = "integer",
        description = "Pods published DENY_NEW_CALL",
        json_path = ".status.drainingPods"
    ),
    printcolumn(
        name = "Workload",
        type_ = "string",
        description = "Workload aggregate state",
        json_path = ".status.workloadState"
    ),
    printcolumn(
        name = "Leader",
        type_ = "string",
        description = "Pod 0 while it is Ready",
        json_path = ".status.leader"
    ),
    printcolumn(name = "Age", type_ = "date", description = "Age", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = kube_formats)]
pub struct RouteStateSpec {
    /// Name of the StatefulSet (in the RouteState's namespace) whose pods are published.
    /// Defaults to the RouteState's own name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"))]
    pub stateful_set: Option<String>,

    /// Service name used in the Redis keys (`sf:{<namespace>:state:<serviceName>}`). Defaults to
    /// the StatefulSet's name. Must not contain `{` or `}` (they delimit the Redis Cluster hash tag).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[^{}\s]+$"))]
    pub service_name: Option<String>,

    /// Routing state of the whole service: Ready (take new users), DenyNewCall (keep linked
    /// users, take no new ones) or Shutdown (route nothing). The most restrictive of this, the
    /// per-pod override and the pod's own annotation wins.
    #[serde(default)]
    pub routing_state: RoutingStateName,

    /// Per-pod overrides, one entry per pod index (a list-map keyed by `index`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["index".into()]))]
    #[schemars(length(max = 10000))]
    pub pods: Vec<PodOverride>,

    /// Weight of waiting tasks against the load state in the published weighted load:
    /// `trunc(cpuFactor × waitingTasks + (1 − cpuFactor) × loadState)`. Between 0 and 1.
    #[serde(default = "default_cpu_factor")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub cpu_factor: f64,

    /// Heartbeat period in seconds: every pod's state is re-published this often, and clients
    /// treat a state older than 3 periods as stale. Between 1 and 300.
    #[serde(default = "default_update_period")]
    #[schemars(range(min = MIN_UPDATE_PERIOD_SECS, max = MAX_UPDATE_PERIOD_SECS))]
    pub update_period_seconds: u32,
}

/// The smallest `updatePeriodSeconds`: the CRD schema enforces the range,
/// [`RouteStateSpec::period_secs`] applies it to objects stored before a schema change.
pub const MIN_UPDATE_PERIOD_SECS: u32 = 1;
/// The largest `updatePeriodSeconds`.
pub const MAX_UPDATE_PERIOD_SECS: u32 = 300;

impl RouteStateSpec {
    /// The heartbeat period, within the CRD's range.
    pub fn period_secs(&self) -> u32 {
        self.update_period_seconds.clamp(MIN_UPDATE_PERIOD_SECS, MAX_UPDATE_PERIOD_SECS)
    }
}

fn default_cpu_factor() -> f64 {
    DEFAULT_CPU_FACTOR
}

fn default_update_period() -> u32 {
    DEFAULT_UPDATE_PERIOD_SECS
}

/// An override for the pod with one StatefulSet index.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = kube::core::Rule::new("has(self.routingState) || has(self.loadState)")
    .message("a pods[] entry must set routingState or loadState (or both)")
    .field_path(".routingState"))]
#[serde(rename_all = "camelCase")]
pub struct PodOverride {
    /// StatefulSet index of the pod (the `apps.kubernetes.io/pod-index` label); 0 or more.
    #[schemars(range(min = 0, max = 1_000_000))]
    pub index: u32,

    /// Routing state for this pod only; combined with the service-wide state, most restrictive wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_state: Option<RoutingStateName>,

    /// Load state for this pod, used instead of the pod's `routestate.dev/load` and
    /// `routestate.dev/waiting-tasks` annotations (it counts as both the load and the waiting tasks,
    /// so the weighted load equals it). 0 or more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000_000_000_i64))]
    pub load_state: Option<u64>,
}

/// A routing state as spelled in Kubernetes objects.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RoutingStateName {
    /// Take new users and keep linked ones.
    #[default]
    Ready,
    /// Keep linked users, take no new ones (draining).
    DenyNewCall,
    /// Route nothing to the pod.
    Shutdown,
}

impl From<RoutingStateName> for core::RoutingState {
    fn from(name: RoutingStateName) -> Self {
        match name {
            RoutingStateName::Ready => core::RoutingState::Ready,
            RoutingStateName::DenyNewCall => core::RoutingState::DenyNewCall,
            RoutingStateName::Shutdown => core::RoutingState::Shutdown,
        }
    }
}

impl From<core::RoutingState> for RoutingStateName {
    fn from(state: core::RoutingState) -> Self {
        match state {
            core::RoutingState::Ready => RoutingStateName::Ready,
            core::RoutingState::DenyNewCall => RoutingStateName::DenyNewCall,
            core::RoutingState::Shutdown => RoutingStateName::Shutdown,
        }
    }
}

/// Observed state, written by the operator. Deliberately free of heartbeat timestamps and load
/// numbers (those live in Redis): a status that changes every heartbeat would re-trigger the
/// controller forever.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = kube_formats)]
pub struct RouteStateStatus {
    /// The `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready (everything is published), RedisSynced (the last publish reached Redis) and
    /// LeaderAvailable (pod 0 exists and is Ready, so the workload aggregate is written).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The StatefulSet the RouteState resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stateful_set: Option<String>,

    /// The service name used in the Redis keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,

    /// Desired replicas of the StatefulSet.
    #[serde(default)]
    pub replicas: u32,

    /// Pods that are Ready.
    #[serde(default)]
    pub ready_pods: u32,

    /// `readyPods/replicas`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_summary: Option<String>,

    /// Pods published READY (they take new users).
    #[serde(default)]
    pub routable_pods: u32,

    /// Pods published DENY_NEW_CALL (they keep their users, take no new ones).
    #[serde(default)]
    pub draining_pods: u32,

    /// Name of pod 0 while it exists and is Ready: the workload aggregate is written on its behalf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,

    /// State of the workload aggregate: Ready when every desired replica is Ready and at least
    /// one pod takes new users, NotReady otherwise, Unknown while pod 0 is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_state: Option<String>,

    /// The pods, by index: every pod of a StatefulSet of at most 20; of a larger one only those
    /// that need a look (not Ready, or not published READY), at most 20.
    // Atomic: the operator alone writes it, whole, so no per-entry field ownership is kept (it
    // doubled the object's size, and every write to the RouteState pays for its size).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = kube::core::ListMerge::Atomic)]
    pub pods: Vec<PodSummary>,

    /// How many pods `pods` leaves out (a large StatefulSet's healthy pods, and any beyond 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlisted_pods: Option<u32>,
}

/// What the operator publishes for one pod.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodSummary {
    /// StatefulSet index of the pod.
    pub index: u32,
    /// Pod name.
    pub name: String,
    /// Whether the pod is Ready.
    pub ready: bool,
    /// The published routing state, absent when the pod is not published (not Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_state: Option<RoutingStateName>,
}

impl RouteState {
    /// The target StatefulSet: `spec.statefulSet`, else the RouteState's name.
    pub fn stateful_set_name(&self) -> String {
        self.spec.stateful_set.clone().unwrap_or_else(|| kube::ResourceExt::name_any(self))
    }

    /// The Redis service name: `spec.serviceName`, else the StatefulSet's name.
    pub fn service_name(&self) -> String {
        self.spec.service_name.clone().unwrap_or_else(|| self.stateful_set_name())
    }
}

/// Removes the `format`s of a schema (and its subschemas) that the API server does not know, keeping
/// the range they stood for. schemars writes `uint32`/`uint64` for unsigned integers; the API
/// server ignores those and warns `unrecognized format` on every create and update of the CRD.
/// Integers keep `int32`/`int64`, numbers `float`/`double`; an unsigned integer keeps its
/// `minimum: 0` (added if missing) and a `uint32` gets `maximum: 4294967295` unless it has one.
pub fn kube_formats(schema: &mut schemars::Schema) {
    if let Some(obj) = schema.as_object_mut() {
        let is = |t: &str| match obj.get("type") {
            Some(serde_json::Value::String(s)) => s == t,
            Some(serde_json::Value::Array(a)) => a.iter().any(|v| v == t),
            _ => false,
        };
        let (integer, number) = (is("integer"), is("number"));
        if let Some(format) = obj.get("format").and_then(|f| f.as_str()).map(str::to_owned) {
            let known = match () {
                _ if integer => ["int32", "int64"].contains(&format.as_str()),
                _ if number => ["float", "double"].contains(&format.as_str()),
                // String formats are the API server's long list; schemars only writes known ones.
                _ => true,
            };
            if !known {
                obj.remove("format");
                if integer && format.starts_with("uint") {
                    obj.entry("minimum").or_insert(0.into());
                }
                if integer && format == "uint32" {
                    obj.entry("maximum").or_insert(u32::MAX.into());
                }
            }
        }
    }
    schemars::transform::transform_subschemas(&mut kube_formats, schema);
}

/// The CRD as YAML, exactly as `routestate crd` prints it and `crds/routestate.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let yaml = serde_yaml::to_string(&RouteState::crd()).expect("a CRD always serialises to YAML");
    format!("# Generated by `routestate crd`; do not edit.\n---\n{yaml}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn committed_crd_is_current() {
        let committed =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/crds/routestate.yaml")).unwrap_or_default();
        assert!(
            committed == crd_yaml(),
            "crds/routestate.yaml is stale: regenerate it with `cargo run -- crd > crds/routestate.yaml`"
        );
    }

    #[test]
    fn schema_has_list_maps_defaults_and_rules() {
        let crd = serde_json::to_value(RouteState::crd()).unwrap();
        let v = &crd["spec"]["versions"][0];
        let spec = &v["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["properties"]["pods"]["x-kubernetes-list-type"], "map");
        assert_eq!(spec["properties"]["pods"]["x-kubernetes-list-map-keys"][0], "index");
        assert_eq!(spec["properties"]["cpuFactor"]["default"], 0.7);
        assert_eq!(spec["properties"]["updatePeriodSeconds"]["default"], 10);
        assert_eq!(spec["properties"]["updatePeriodSeconds"]["maximum"], 300.0);
        assert_eq!(spec["properties"]["routingState"]["default"], "Ready");
        let item = &spec["properties"]["pods"]["items"];
        assert!(item["x-kubernetes-validations"][0]["rule"].as_str().unwrap().contains("has(self.routingState)"));
        let status = &v["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert_eq!(status["properties"]["conditions"]["x-kubernetes-list-map-keys"][0], "type");
        // The status's pod list is written whole by the operator alone, and its documented
        // limit is the one the operator applies.
        let pods = &status["properties"]["pods"];
        assert_eq!(pods["x-kubernetes-list-type"], "atomic");
        let limit = format!("at most {}", crate::operator::derive::STATUS_PODS_MAX);
        assert_eq!(pods["description"].as_str().unwrap().matches(&limit).count(), 2, "{}", pods["description"]);
        assert_eq!(v["subresources"]["status"], serde_json::json!({}));
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "rst");
        let columns: Vec<&str> =
            v["additionalPrinterColumns"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(columns, ["StatefulSet", "Routing", "Ready", "Routable", "Draining", "Workload", "Leader", "Age"]);
    }

    /// Every (path, type, format) of the CRD's schema.
    fn formats(path: &str, schema: &serde_json::Value, out: &mut Vec<(String, String, String)>) {
        if let Some(f) = schema["format"].as_str() {
            out.push((path.to_owned(), schema["type"].to_string(), f.to_owned()));
        }
        for (name, prop) in schema["properties"].as_object().into_iter().flatten() {
            formats(&format!("{path}.{name}"), prop, out);
        }
        if schema["items"].is_object() {
            formats(&format!("{path}[]"), &schema["items"], out);
        }
    }

    #[test]
    fn schema_has_only_formats_the_api_server_knows_and_keeps_the_ranges() {
        let crd = serde_json::to_value(RouteState::crd()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut found = Vec::new();
        formats("", root, &mut found);
        // The API server's own rules (apiextensions-apiserver validation/formats.go).
        for (path, ty, format) in &found {
            let known = match ty.as_str() {
                "\"integer\"" => ["int32", "int64"].contains(&format.as_str()),
                "\"number\"" => ["float", "double"].contains(&format.as_str()),
                "\"string\"" => ["date-time", "date", "byte", "password", "duration"].contains(&format.as_str()),
                _ => false,
            };
            assert!(known, "{path}: format {format:?} on type {ty} is unknown to the API server");
        }
        assert!(found.iter().any(|(_, _, f)| f == "double"), "known formats are kept: {found:?}");
        let spec = &root["properties"]["spec"]["properties"];
        let item = &spec["pods"]["items"]["properties"];
        let range = |v: &serde_json::Value| (v["minimum"].as_f64(), v["maximum"].as_f64());
        assert_eq!(range(&item["index"]), (Some(0.0), Some(1_000_000.0)));
        assert_eq!(range(&item["loadState"]), (Some(0.0), Some(1e12)));
        assert_eq!(range(&spec["updatePeriodSeconds"]), (Some(1.0), Some(300.0)));
        let status = &root["properties"]["status"]["properties"];
        for field in ["replicas", "readyPods", "routablePods", "drainingPods"] {
            assert_eq!(range(&status[field]), (Some(0.0), Some(f64::from(u32::MAX))), "status.{field}");
        }
        assert_eq!(range(&status["pods"]["items"]["properties"]["index"]), (Some(0.0), Some(f64::from(u32::MAX))));
    }

    #[test]
    fn kube_formats_drops_unknown_formats_only() {
        let mut s = schemars::json_schema!({
            "type": "object",
            "properties": {
                "a": {"type": "integer", "format": "uint32", "minimum": 0},
                "b": {"type": "integer", "format": "uint64", "maximum": 10},
                "c": {"type": "integer", "format": "int64"},
                "d": {"type": ["number", "null"], "format": "float"},
                "e": {"type": "number", "format": "decimal"},
                "f": {"type": "array", "items": {"type": "integer", "format": "uint16"}},
                "g": {"type": "string", "format": "date-time"},
                "h": {"type": "integer", "format": "uint32", "maximum": 7}
            }
        });
        kube_formats(&mut s);
        assert_eq!(
            s.as_value()["properties"],
            serde_json::json!({
                "a": {"type": "integer", "minimum": 0, "maximum": 4294967295u32},
                "b": {"type": "integer", "minimum": 0, "maximum": 10},
                "c": {"type": "integer", "format": "int64"},
                "d": {"type": ["number", "null"], "format": "float"},
                "e": {"type": "number"},
                "f": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "g": {"type": "string", "format": "date-time"},
                "h": {"type": "integer", "minimum": 0, "maximum": 7}
            })
        );
    }

    #[test]
    fn every_schema_property_is_documented() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema["properties"].as_object() {
                for (name, prop) in props {
                    let p = format!("{path}.{name}");
                    if prop["description"].as_str().is_none_or(str::is_empty) && !path.contains("conditions") {
                        missing.push(p.clone());
                    }
                    walk(&p, prop, missing);
                }
            }
            if schema["items"].is_object() {
                walk(&format!("{path}[]"), &schema["items"], missing);
            }
        }
        let crd = serde_json::to_value(RouteState::crd()).unwrap();
        let root = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk("", &root["properties"]["spec"], &mut missing);
        walk("", &root["properties"]["status"], &mut missing);
        assert!(missing.is_empty(), "undocumented CRD fields: {missing:?}");
    }

    #[test]
    fn names_default_from_the_object() {
        let rs = RouteState::new("game", serde_json::from_value(serde_json::json!({})).unwrap());
        assert_eq!(rs.stateful_set_name(), "game");
        assert_eq!(rs.service_name(), "game");
        assert_eq!(rs.spec.cpu_factor, 0.7);
        assert_eq!(rs.spec.update_period_seconds, 10);
        let rs = RouteState::new(
            "x",
            serde_json::from_value(serde_json::json!({"statefulSet": "sts", "routingState": "Shutdown"})).unwrap(),
        );
        assert_eq!(rs.service_name(), "sts");
        assert_eq!(core::RoutingState::from(rs.spec.routing_state), core::RoutingState::Shutdown);
    }
}
