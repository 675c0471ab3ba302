//! Why a placement goes where it goes: every pod of a service with its parsed state and its
//! class, the baseline and range of the good set, the candidates a pick draws from and, for a
//! user, whether its existing link is kept or replaced.
//!
//! The classes come from [`crate::selection::classify`] through the same
//! [`ServiceSnapshot`] a pick uses, so an explanation cannot disagree with the selection: its
//! candidates are exactly [`ServiceSnapshot::good_pods`].

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{
    pod_index::parse_index,
    routing::RoutingState,
    selection::{PodClass, ServiceSnapshot, Skipped},
};

/// What is stored for a user's link, as read (nothing judged yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkFacts {
    /// The user id.
    pub uid: String,
    /// The value of the link string `sf:{<ns>:lk:<uid>}<svc>`; `None` when the key is missing.
    pub value: Option<String>,
    /// Its remaining TTL in milliseconds; `None` when it has none (a persistent link).
    pub ttl_ms: Option<u64>,
    /// Whether the uid's hash of persistent links records the service.
    pub in_hash: bool,
}

/// What a placement of the user does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LinkVerdict {
    /// The linked pod is alive and not SHUTDOWN: the link is kept, nothing is written.
    Keep,
    /// No usable link: a placement links one of the candidates, temporarily.
    Place,
    /// No usable link and no candidate: a placement links nothing and writes nothing.
    NoPod,
}

/// A user's link and its fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkExplanation {
    /// What is stored.
    #[serde(flatten)]
    pub facts: LinkFacts,
    /// The linked pod, when the value is a pod index (anything else counts as no link).
    pub pod: Option<u32>,
    /// Whether the link is persistent: it exists and has no TTL (what the scripts go by).
    pub persistent: bool,
    /// The linked pod's class; `None` when there is no link or the pod has no state.
    pub pod_class: Option<PodClass>,
    /// What a placement does.
    pub verdict: LinkVerdict,
    /// Why, in words.
    pub reason: String,
}

/// One pod with a parsable state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExplainedPod {
    /// Pod index.
    pub index: u32,
    /// The state string as stored.
    pub state: String,
    /// Its weighted load.
    pub weighted_load: u64,
    /// When it was written (Redis time, epoch ms).
    pub updated_at_ms: u64,
    /// Its age at the judging time (0 for a state from the future).
    pub age_ms: u64,
    /// Its routing state.
    #[serde(with = "routing_name")]
    pub routing: RoutingState,
    /// Its class.
    pub class: PodClass,
}

/// Everything a pick of one service is decided on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// Namespace.
    pub namespace: String,
    /// Service.
    pub service: String,
    /// The judging time: the Redis server time of the read, epoch ms.
    pub now_ms: u64,
    /// The staleness window used, in ms.
    pub window_ms: u64,
    /// The service's published `updatePeriodSeconds`; `None` when absent or invalid (the
    /// window is then the reader's fallback).
    pub update_period_seconds: Option<u32>,
    /// The good range.
    pub range: u64,
    /// The least load among alive READY pods; `None` when no pod is routable.
    pub least_load: Option<u64>,
    /// The highest load a good pod may have: least load + range.
    pub limit: Option<u64>,
    /// Whether the candidate index is live: picks then go by load order, else by pod index.
    pub candidate_index: bool,
    /// Every pod with a parsable state, in ascending index.
    pub pods: Vec<ExplainedPod>,
    /// Entries that do not parse, skipped as every reader skips them.
    pub skipped: Vec<Skipped>,
    /// The good pods, in ascending index: what a pick for a new user draws from.
    pub candidates: Vec<u32>,
    /// The candidates in the order of the pick: the pick with random `r` is
    /// `pick_order[r mod #candidates]`.
    pub pick_order: Vec<u32>,
    /// For a user: its link and what a placement does with it.
    pub link: Option<LinkExplanation>,
}

/// The inputs of [`explain`] besides the judged states.
#[derive(Debug, Clone, Copy)]
pub struct ExplainContext<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Service.
    pub service: &'a str,
    /// The service's published period, when valid.
    pub update_period_secs: Option<u32>,
    /// Whether the candidate index is live.
    pub candidate_index: bool,
}

/// Explains the picks of a service judged as `snapshot`, and for a user with `link` what a
/// placement does with its link. Pure: the caller reads the states, the link and the time.
pub fn explain(snapshot: &ServiceSnapshot, context: ExplainContext<'_>, link: Option<LinkFacts>) -> Explanation {
    let pods = snapshot
        .pods()
        .map(|p| ExplainedPod {
            index: p.index,
            state: p.state.encode(),
            weighted_load: p.state.weighted_load,
            updated_at_ms: p.state.updated_at_ms,
            age_ms: p.state.age_ms(snapshot.now_ms),
            routing: p.state.routing,
            class: snapshot.class(p.index).expect("a pod of the snapshot has a class"),
        })
        .collect();
    let candidates = snapshot.good_pods().to_vec();
    let pick_order = if context.candidate_index { snapshot.good_by_load() } else { candidates.clone() };
    let link = link.map(|facts| explain_link(snapshot, facts));
    Explanation {
        namespace: context.namespace.to_owned(),
        service: context.service.to_owned(),
        now_ms: snapshot.now_ms,
        window_ms: snapshot.policy.window_ms,
        update_period_seconds: context.update_period_secs,
        range: snapshot.policy.range,
        least_load: snapshot.least_routable_load(),
        limit: snapshot.good_limit(),
        candidate_index: context.candidate_index,
        pods,
        skipped: snapshot.skipped.clone(),
        candidates,
        pick_order,
        link,
    }
}

/// The placement rule of `pick_and_link` for one user: keep the link while its pod is available
/// (alive, not SHUTDOWN); else link a good pod; else nothing.
fn explain_link(snapshot: &ServiceSnapshot, facts: LinkFacts) -> LinkExplanation {
    let pod = facts.value.as_deref().and_then(parse_index);
    let persistent = facts.value.is_some() && facts.ttl_ms.is_none();
    let pod_class = pod.and_then(|p| snapshot.class(p));
    let why = match (&facts.value, pod, pod_class) {
        (None, _, _) => "no link".to_owned(),
        (Some(v), None, _) => format!("the link value {v:?} is not a pod index, so it counts as no link"),
        (Some(_), Some(p), None) => format!("pod {p} has no state"),
        (Some(_), Some(p), Some(PodClass::Stale)) => format!("pod {p}'s state is stale"),
        (Some(_), Some(p), Some(PodClass::Shutdown)) => format!("pod {p} is SHUTDOWN"),
        (Some(_), Some(p), Some(_)) => {
            let routing = snapshot.routing_of(p).map_or("alive", RoutingState::wire_name);
            format!("pod {p} is alive and {routing}: linked users keep reaching it")
        }
    };
    let (verdict, reason) = if pod_class.is_some_and(PodClass::keeps_linked) {
        (LinkVerdict::Keep, format!("{why}; the link is kept"))
    } else if snapshot.good_pods().is_empty() {
        (LinkVerdict::NoPod, format!("{why}; no pod is good, so nothing is linked and nothing is written"))
    } else {
        let replaced =
            if pod.is_some() { ", replacing the link (and dropping it from the persistent links)" } else { "" };
        (LinkVerdict::Place, format!("{why}; a placement links one of the candidates temporarily{replaced}"))
    };
    LinkExplanation { facts, pod, persistent, pod_class, verdict, reason }
}

impl PodClass {
    /// The class in words, as the text explanation prints it.
    pub fn describe(self) -> &'static str {
        match self {
            PodClass::Stale => "stale: older than the window, takes nobody",
            PodClass::Shutdown => "SHUTDOWN: takes nobody",
            PodClass::DenyNewCall => "DENY_NEW_CALL: keeps its users, takes no new ones",
            PodClass::OverRange => "READY over the limit: takes no new users",
            PodClass::Good => "good: a candidate",
        }
    }
}

fn seconds(ms: u64) -> String {
    format!("{}.{}s", ms / 1000, (ms % 1000) / 100)
}

fn list(pods: &[u32]) -> String {
    if pods.is_empty() {
        return "none".into();
    }
    pods.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

impl fmt::Display for Explanation {
    /// A text explanation for people: a header, one line per pod, the candidates and the link.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "service {}/{} at Redis time {} ms", self.namespace, self.service, self.now_ms)?;
        let window_from = match self.update_period_seconds {
            Some(p) => format!("3 × updatePeriodSeconds {p}"),
            None => "fallback: no valid updatePeriodSeconds".to_owned(),
        };
        writeln!(f, "staleness window {} ({window_from}); range {}", seconds(self.window_ms), self.range)?;
        match (self.least_load, self.limit) {
            (Some(least), Some(limit)) => writeln!(f, "least READY load {least}: good up to {limit} (least + range)")?,
            _ => writeln!(f, "no pod is alive and READY: nothing is good")?,
        }
        let index = if self.candidate_index {
            "live: picks go by load, then pod index as text"
        } else {
            "absent: picks go by pod index"
        };
        writeln!(f, "candidate index {index}")?;
        if self.pods.is_empty() {
            writeln!(f, "no pod states published")?;
        } else {
            let rows: Vec<[String; 5]> = self
                .pods
                .iter()
                .map(|p| {
                    [
                        p.index.to_string(),
                        p.routing.wire_name().to_owned(),
                        p.weighted_load.to_string(),
                        seconds(p.age_ms),
                        p.class.describe().to_owned(),
                    ]
                })
                .collect();
            let header = ["INDEX", "ROUTING", "LOAD", "AGE", "CLASS"].map(str::to_owned);
            let width = |c: usize| rows.iter().chain([&header]).map(|r| r[c].chars().count()).max().unwrap_or(0);
            let (w0, w1, w2, w3) = (width(0), width(1), width(2), width(3));
            for r in std::iter::once(&header).chain(&rows) {
                writeln!(f, "{:<w0$}  {:<w1$}  {:>w2$}  {:>w3$}  {}", r[0], r[1], r[2], r[3], r[4])?;
            }
        }
        for s in &self.skipped {
            writeln!(f, "skipped field {:?}: {}", s.field, s.reason)?;
        }
        write!(f, "candidates: {}", list(&self.candidates))?;
        if self.candidate_index && self.pick_order != self.candidates {
            write!(f, " (pick order {})", list(&self.pick_order))?;
        }
        writeln!(f)?;
        if let Some(l) = &self.link {
            let stored = match (&l.facts.value, l.facts.ttl_ms) {
                (None, _) => "no link".to_owned(),
                (Some(v), None) => format!("link {v} (persistent)"),
                (Some(v), Some(ttl)) => format!("link {v} (temporary, {} left)", seconds(ttl)),
            };
            let hash = match (l.persistent, l.facts.in_hash) {
                (true, false) => "; not in the uid's persistent links (the missing TTL decides)",
                (false, true) => "; in the uid's persistent links although it has a TTL (the TTL decides)",
                _ => "",
            };
            writeln!(f, "user {}: {stored}{hash}", l.facts.uid)?;
            writeln!(f, "  {}", l.reason)?;
        }
        Ok(())
    }
}

/// A routing state as its wire name (READY, DENY_NEW_CALL, SHUTDOWN).
mod routing_name {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::routing::RoutingState;

    pub fn serialize<S: Serializer>(r: &RoutingState, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(r.wire_name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RoutingState, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{pod_state::PodState, selection::SelectionPolicy};
    use PodClass::*;
    use RoutingState::{DenyNewCall as D, Ready as R, Shutdown as S};
    use proptest::prelude::*;

    const NOW: u64 = 10_000_000;
    const CTX: ExplainContext<'static> =
        ExplainContext { namespace: "apps", service: "web", update_period_secs: Some(10), candidate_index: false };

    fn snap(states: &[(u32, u64, u64, RoutingState)], range: u64) -> ServiceSnapshot {
        ServiceSnapshot::from_states(
            states.iter().map(|&(i, load, age, r)| (i, PodState::new(load, NOW - age, r))),
            NOW,
            SelectionPolicy { window_ms: 30_000, range },
            vec![],
        )
    }

    fn link(value: Option<&str>, ttl_ms: Option<u64>) -> LinkFacts {
        LinkFacts { uid: "u1".into(), value: value.map(str::to_owned), ttl_ms, in_hash: ttl_ms.is_none() }
    }

    #[test]
    fn every_class_with_the_baseline_and_range() {
        let s =
            snap(&[(0, 100, 0, R), (1, 600, 0, R), (2, 601, 0, R), (3, 0, 0, D), (4, 0, 0, S), (5, 0, 30_001, R)], 500);
        let e = explain(&s, CTX, None);
        let classes: Vec<(u32, PodClass)> = e.pods.iter().map(|p| (p.index, p.class)).collect();
        assert_eq!(
            classes,
            [(0, Good), (1, Good), (2, OverRange), (3, DenyNewCall), (4, Shutdown), (5, Stale)],
            "the draining pod's load 0 and the stale pod's load 0 set no baseline"
        );
        assert_eq!((e.least_load, e.limit, e.range, e.window_ms), (Some(100), Some(600), 500, 30_000));
        assert_eq!(e.candidates, [0, 1]);
        assert_eq!(e.pods[5].age_ms, 30_001);
        assert!(e.link.is_none());
    }

    #[test]
    fn nothing_routable_has_no_baseline() {
        let e = explain(&snap(&[(0, 1, 0, D), (1, 1, 99_999, R)], 500), CTX, None);
        assert_eq!((e.least_load, e.limit, e.candidates.len()), (None, None, 0));
        assert!(e.to_string().contains("nothing is good"), "{e}");
    }

    #[test]
    fn the_pick_order_follows_the_candidate_index() {
        let s = snap(&[(9, 5, 0, R), (10, 5, 0, R), (2, 1, 0, R)], 500);
        assert_eq!(explain(&s, CTX, None).pick_order, [2, 9, 10]);
        let indexed = explain(&s, ExplainContext { candidate_index: true, ..CTX }, None);
        assert_eq!(indexed.pick_order, [2, 10, 9]);
        assert_eq!(indexed.candidates, [2, 9, 10]);
    }

    #[test]
    fn links_are_kept_while_their_pod_is_available() {
        let s = snap(&[(0, 100, 0, R), (1, 5_000, 0, R), (2, 0, 0, D), (3, 0, 0, S), (4, 0, 40_000, R)], 500);
        for (value, verdict, class, words) in [
            (None, LinkVerdict::Place, None, "no link"),
            (Some("0"), LinkVerdict::Keep, Some(Good), "alive and READY"),
            (Some("1"), LinkVerdict::Keep, Some(OverRange), "alive and READY"),
            (Some("2"), LinkVerdict::Keep, Some(DenyNewCall), "alive and DENY_NEW_CALL"),
            (Some("3"), LinkVerdict::Place, Some(Shutdown), "SHUTDOWN"),
            (Some("4"), LinkVerdict::Place, Some(Stale), "stale"),
            (Some("7"), LinkVerdict::Place, None, "no state"),
            (Some("07"), LinkVerdict::Place, None, "not a pod index"),
        ] {
            let l = explain(&s, CTX, Some(link(value, None))).link.unwrap();
            assert_eq!((l.verdict, l.pod_class), (verdict, class), "{value:?}: {}", l.reason);
            assert!(l.reason.contains(words), "{value:?}: {}", l.reason);
        }
        let none = snap(&[(3, 0, 0, S)], 500);
        let l = explain(&none, CTX, Some(link(Some("3"), Some(5_000)))).link.unwrap();
        assert_eq!(l.verdict, LinkVerdict::NoPod, "{}", l.reason);
        assert!(!l.persistent && l.reason.contains("nothing is written"), "{}", l.reason);
    }

    #[test]
    fn persistence_is_the_missing_ttl() {
        let s = snap(&[(0, 1, 0, R)], 500);
        let e = explain(&s, CTX, Some(LinkFacts { in_hash: false, ..link(Some("0"), None) }));
        let l = e.link.as_ref().unwrap();
        assert!(l.persistent, "no TTL is persistent even when the hash disagrees");
        assert!(e.to_string().contains("the missing TTL decides"), "{e}");
        let e = explain(&s, CTX, Some(LinkFacts { in_hash: true, ..link(Some("0"), Some(9_000)) }));
        assert!(!e.link.as_ref().unwrap().persistent);
        assert!(e.to_string().contains("the TTL decides"), "{e}");
        assert!(!explain(&s, CTX, Some(link(None, None))).link.unwrap().persistent, "no link is not persistent");
    }

    #[test]
    fn the_text_names_every_pod_class_and_the_skipped_entries() {
        let s = ServiceSnapshot::from_hash(
            [("0", "100-10000000-0"), ("1", "9000-10000000-0"), ("x", "1-1-0"), ("2", "5-1")],
            NOW,
            SelectionPolicy { window_ms: 30_000, range: 500 },
        );
        let text = explain(&s, CTX, Some(link(Some("1"), Some(120_000)))).to_string();
        for want in [
            "service apps/web",
            "staleness window 30.0s (3 × updatePeriodSeconds 10); range 500",
            "good up to 600",
            "READY over the limit",
            "skipped field \"x\"",
            "skipped field \"2\"",
            "candidates: 0",
            "user u1: link 1 (temporary, 120.0s left)",
            "the link is kept",
        ] {
            assert!(text.contains(want), "{want:?} missing in:\n{text}");
        }
    }

    #[test]
    fn json_round_trips_with_wire_names() {
        let s = snap(&[(0, 100, 0, R), (3, 0, 0, D)], 500);
        let e = explain(&s, CTX, Some(link(Some("3"), None)));
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["pods"][1]["routing"], "DENY_NEW_CALL");
        assert_eq!(json["pods"][1]["class"], "DENY_NEW_CALL");
        assert_eq!(json["pods"][0]["class"], "GOOD");
        assert_eq!(json["link"]["uid"], "u1");
        assert_eq!(json["link"]["verdict"], "KEEP");
        assert_eq!(json["leastLoad"], 100);
        assert_eq!(serde_json::from_value::<Explanation>(json).unwrap(), e);
    }

    proptest! {
        /// The explained candidates are the set a pick draws from, in both orders, and every
        /// class agrees with a model computed from the generated data alone.
        #[test]
        fn candidates_are_the_selection_set(
            pods in proptest::collection::btree_map(
                0u32..40,
                (prop_oneof![0u64..50, Just(crate::MAX_LOAD), Just(u64::MAX)], prop_oneof![0u64..60_000, Just(30_000), Just(30_001)], 0u8..3),
                0..25,
            ),
            range in prop_oneof![0u64..30, Just(u64::MAX)],
            random in any::<u32>(),
            indexed in any::<bool>(),
            linked in proptest::option::of(0u32..45),
        ) {
            let s = ServiceSnapshot::from_states(
                pods.iter().map(|(&i, &(l, age, r))| (i, PodState::new(l, NOW - age, RoutingState::from_ordinal(r).unwrap()))),
                NOW, SelectionPolicy { window_ms: 30_000, range }, vec![]);
            let ctx = ExplainContext { candidate_index: indexed, ..CTX };
            let facts = LinkFacts { uid: "u".into(), value: linked.map(|p| p.to_string()), ttl_ms: None, in_hash: true };
            let e = explain(&s, ctx, Some(facts));
            prop_assert_eq!(e.candidates.as_slice(), s.good_pods());
            let good: Vec<u32> = e.pods.iter().filter(|p| p.class == Good).map(|p| p.index).collect();
            prop_assert_eq!(&good, &e.candidates);
            let n = e.pick_order.len();
            let want = (n > 0).then(|| e.pick_order[random as usize % n]);
            prop_assert_eq!(if indexed { s.pick_indexed(random) } else { s.pick(random) }, want);
            // The model: alive = age ≤ window; baseline = least min(load, MAX_LOAD) of alive READY pods.
            let load = |l: u64| l.min(crate::MAX_LOAD);
            let least = pods.values().filter(|(_, age, r)| *age <= 30_000 && *r == 0).map(|(l, _, _)| load(*l)).min();
            for p in &e.pods {
                let (l, age, r) = pods[&p.index];
                let want = match (age <= 30_000, r) {
                    (false, _) => Stale,
                    (true, 2) => Shutdown,
                    (true, 1) => DenyNewCall,
                    _ if u128::from(load(l)) <= u128::from(least.unwrap()) + u128::from(range) => Good,
                    _ => OverRange,
                };
                prop_assert_eq!(p.class, want, "pod {}", p.index);
            }
            let l = e.link.unwrap();
            let available = linked.is_some_and(|p| s.is_available(p));
            let verdict = if available { LinkVerdict::Keep } else if n == 0 { LinkVerdict::NoPod } else { LinkVerdict::Place };
            prop_assert_eq!(l.verdict, verdict, "{}", l.reason);
        }
    }
}
