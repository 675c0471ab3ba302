//! Which Events a reconcile records: a pure diff of what it derived against what it derived
//! last time for the same RouteState, so each finding and each routing change is told once.

use std::collections::{BTreeMap, BTreeSet};

use kube::runtime::events::EventType;

use super::super::derive::{self, Derived};
use crate::core::{PodPlan, RoutingState, pod_index};

/// Reason of the Warning Event of a RouteState whose StatefulSet does not exist.
pub const STATEFULSET_NOT_FOUND: &str = "StatefulSetNotFound";
/// Reason of the Warning Event of a RouteState whose service an older one publishes.
pub const SERVICE_NAME_CONFLICT: &str = "ServiceNameConflict";
/// Reason of the Normal Event of a pod whose published routing state changed.
pub const ROUTING_CHANGED: &str = "RoutingChanged";

/// What was last derived for one RouteState.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The pods last published, `None` before the first publish (or while not publishing).
    publish: Option<BTreeMap<u32, PodPlan>>,
    /// (reason, pod, message) of the findings last reported.
    findings: BTreeSet<(&'static str, String, String)>,
    /// The service name and its owner last seen.
    service: Option<(String, Option<String>)>,
}

/// The longest note an Event may have (the API server refuses a longer one).
pub const NOTE_MAX_BYTES: usize = 1024;

/// One Event to record: kube's Recorder folds Events with the same reason, action and related
/// object into one series (keeping the first note), so each names its (first) pod as the related
/// object and its outcome as the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// The Event's reason (PascalCase).
    pub reason: &'static str,
    /// What was done.
    pub action: String,
    /// The pod the Event is about, if one.
    pub pod: Option<String>,
    /// The message.
    pub note: String,
    /// Whether a repeat may fold into the series of an earlier Event with the same reason, action
    /// and pod: not for a note that names a batch of pods (the series would keep the earlier
    /// batch's note).
    pub folds: bool,
}

impl Seen {
    /// Records the service name and owner now seen; whether they differ from before, and the
    /// service named before if it was another (its other RouteStates must look again).
    pub fn service_seen(&mut self, service: &str, owner: Option<&str>) -> (bool, Option<String>) {
        let now = (service.to_owned(), owner.map(str::to_owned));
        let before = self.service.replace(now.clone());
        let changed = before.as_ref() != Some(&now);
        let renamed = before.map(|(old, _)| old).filter(|old| old != service);
        (changed, renamed)
    }

    /// The Events of a reconcile that publishes `pods` of `service` from `derived` (`None`: the
    /// StatefulSet `statefulset` is missing): findings not reported before (Warning) and routing
    /// changes since the last publish (Normal).
    pub fn publishing(
        &mut self,
        service: &str,
        statefulset: &str,
        derived: Option<&Derived>,
        pods: &BTreeMap<u32, PodPlan>,
    ) -> Vec<Note> {
        let findings: BTreeSet<(&'static str, String, String)> = match derived {
            Some(d) => d.findings.iter().map(|f| (f.reason(), f.pod().to_owned(), f.to_string())).collect(),
            None => BTreeSet::from([(
                STATEFULSET_NOT_FOUND,
                String::new(),
                format!("StatefulSet {statefulset} not found: service {service} publishes no pod until it exists"),
            )]),
        };
        let mut notes: Vec<Note> = findings
            .difference(&self.findings)
            .map(|(reason, pod, note)| Note {
                type_: EventType::Warning,
                reason,
                action: (*reason).to_owned(),
                pod: (!pod.is_empty()).then(|| pod.clone()),
                note: note.clone(),
                folds: true,
            })
            .collect();
        self.findings = findings;

        let pod_name = |index: u32| {
            derived
                .and_then(|d| d.pods.iter().find(|p| p.index == index).map(|p| p.name.clone()))
                .unwrap_or_else(|| pod_index::pod_name(statefulset, index))
        };
        let changes = self.publish.as_ref().map(|before| derive::routing_changes(before, pods)).unwrap_or_default();
        notes.extend(routing_changed(service, changes.into_iter().map(|(i, b, a)| (i, pod_name(i), b, a))));
        self.publish = Some(pods.clone());
        notes
    }

    /// The Event of a reconcile that publishes nothing because `owner` publishes `service`:
    /// one Warning, the first time.
    pub fn conflicting(&mut self, service: &str, owner: &str) -> Option<Note> {
        self.publish = None;
        let finding = (SERVICE_NAME_CONFLICT, owner.to_owned(), service.to_owned());
        self.findings.insert(finding).then(|| Note {
            type_: EventType::Warning,
            reason: SERVICE_NAME_CONFLICT,
            action: "Skip".to_owned(),
            pod: None,
            folds: true,
            note: format!(
                "RouteState {owner} also names service {service} and is older: it publishes the service, this one publishes nothing until it goes away"
            ),
        })
    }
}

/// The Normal Events of one reconcile's routing changes (index, pod, before, after), in index
/// order: one per transition (before -> after), however many pods made it. A StatefulSet that
/// scales by a hundred pods is told in a few Events, not a hundred writes to a busy API server.
/// A note names its pods while they fit in [`NOTE_MAX_BYTES`] and counts the rest.
fn routing_changed(
    service: &str,
    changes: impl IntoIterator<Item = (u32, String, Option<RoutingState>, Option<RoutingState>)>,
) -> Vec<Note> {
    type Transition = (Option<RoutingState>, Option<RoutingState>);
    let mut groups: Vec<(Transition, Vec<(u32, String)>)> = Vec::new();
    for (index, pod, before, after) in changes {
        match groups.iter_mut().find(|(t, _)| *t == (before, after)) {
            Some((_, pods)) => pods.push((index, pod)),
            None => groups.push(((before, after), vec![(index, pod)])),
        }
    }
    let name = |s: Option<RoutingState>| s.map_or("not published", |s| s.wire_name());
    groups
        .into_iter()
        .map(|((before, after), pods)| {
            let transition = format!("{} -> {}", name(before), name(after));
            let folds = pods.len() == 1;
            let note = match pods.as_slice() {
                [(index, pod)] => format!("pod {pod} (index {index}) of service {service}: {transition}"),
                _ => {
                    let head = format!("{} pods of service {service}: {transition}: ", pods.len());
                    let names: Vec<&str> = pods.iter().map(|(_, pod)| pod.as_str()).collect();
                    name_within(&head, &names, NOTE_MAX_BYTES)
                }
            };
            Note {
                type_: EventType::Normal,
                reason: ROUTING_CHANGED,
                action: after.map_or("Unpublish".to_owned(), |s| format!("Publish{}", s.kube_name())),
                note,
                pod: pods.into_iter().next().map(|(_, pod)| pod),
                folds,
            }
        })
        .collect()
}

/// `head` followed by the comma-separated `names`; when they do not all fit in `max` bytes, as
/// many as fit beside an "and N more" that counts the others.
fn name_within(head: &str, names: &[&str], max: usize) -> String {
    let all = format!("{head}{}", names.join(", "));
    if all.len() <= max {
        return all;
    }
    let tail = |shown: usize| format!("{}and {} more", if shown == 0 { "" } else { ", " }, names.len() - shown);
    let mut listed = head.len();
    let mut fits = None;
    for shown in 0..names.len() {
        if shown > 0 {
            listed += names[shown - 1].len() + if shown > 1 { 2 } else { 0 };
        }
        if listed + tail(shown).len() <= max {
            fits = Some(shown);
        }
    }
    match fits {
        Some(shown) => format!("{head}{}{}", names[..shown].join(", "), tail(shown)),
        None => head.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::{crd::RouteStateSpec, derive::PodFacts};

    fn spec() -> RouteStateSpec {
        serde_json::from_value(serde_json::json!({"statefulSet": "web"})).unwrap()
    }

    fn facts(index: u32, ready: bool) -> PodFacts {
        PodFacts { name: format!("web-{index}"), index, ready, terminating: false, annotations: Default::default() }
    }

    fn derived(pods: &[PodFacts]) -> Derived {
        derive::derive(&spec(), pods.len() as u32, pods)
    }

    #[test]
    fn the_first_publish_tells_no_change_and_a_repeat_tells_nothing() {
        let mut seen = Seen::default();
        let d = derived(&[facts(0, true), facts(1, true)]);
        let plan = d.plan("ns", "web", &spec());
        assert_eq!(seen.publishing("web", "web", Some(&d), &plan.pods), vec![]);
        assert_eq!(seen.publishing("web", "web", Some(&d), &plan.pods), vec![]);
    }

    #[test]
    fn a_routing_change_is_one_normal_event_naming_the_pod() {
        let mut seen = Seen::default();
        let before = derived(&[facts(0, true), facts(1, true)]);
        seen.publishing("web", "web", Some(&before), &before.plan("ns", "web", &spec()).pods);
        let after = derived(&[facts(0, true), facts(1, false)]);
        let notes = seen.publishing("web", "web", Some(&after), &after.plan("ns", "web", &spec()).pods);
        assert_eq!(notes.len(), 1, "{notes:?}");
        let n = &notes[0];
        assert_eq!(
            (n.type_, n.reason, n.action.as_str(), n.pod.as_deref()),
            (EventType::Normal, ROUTING_CHANGED, "Unpublish", Some("web-1"))
        );
        assert_eq!(n.note, "pod web-1 (index 1) of service web: READY -> not published");
    }

    #[test]
    fn a_scale_up_is_one_event_per_transition_naming_its_pods() {
        let mut seen = Seen::default();
        let two = derived(&[facts(0, true), facts(1, true)]);
        seen.publishing("web", "web", Some(&two), &two.plan("ns", "web", &spec()).pods);
        // Pods 2..=5 come up Ready, pod 1 stops being Ready: two transitions, two Events.
        let mut pods: Vec<PodFacts> = (0..6).map(|i| facts(i, true)).collect();
        pods[1].ready = false;
        let after = derived(&pods);
        let notes = seen.publishing("web", "web", Some(&after), &after.plan("ns", "web", &spec()).pods);
        let got: Vec<_> = notes.iter().map(|n| (n.action.as_str(), n.pod.as_deref(), n.note.as_str())).collect();
        assert_eq!(
            got,
            [
                ("Unpublish", Some("web-1"), "pod web-1 (index 1) of service web: READY -> not published"),
                (
                    "PublishReady",
                    Some("web-2"),
                    "4 pods of service web: not published -> READY: web-2, web-3, web-4, web-5"
                ),
            ]
        );
        assert!(notes.iter().all(|n| (n.type_, n.reason) == (EventType::Normal, ROUTING_CHANGED)));
        assert_eq!(notes.iter().map(|n| n.folds).collect::<Vec<_>>(), [true, false], "a batch never folds");
    }

    #[test]
    fn a_note_of_many_pods_names_what_fits_and_counts_the_rest() {
        let changes = (0..500u32).map(|i| (i, format!("web-{i}"), None, Some(RoutingState::Ready)));
        let notes = routing_changed("web", changes);
        assert_eq!(notes.len(), 1);
        let note = &notes[0].note;
        assert!(note.len() <= NOTE_MAX_BYTES, "{} bytes", note.len());
        assert!(note.starts_with("500 pods of service web: not published -> READY: web-0, web-1, "), "{note}");
        let shown = note.matches("web-").count();
        assert!(note.ends_with(&format!(", and {} more", 500 - shown)), "{note}");
        assert!(shown > 50, "{shown} names shown in {note}");
    }

    #[test]
    fn names_fit_exactly_or_are_counted() {
        let names: Vec<String> = (0..10).map(|i| format!("a{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let all = "x: a0, a1, a2, a3, a4, a5, a6, a7, a8, a9";
        assert_eq!(all.len(), 41);
        assert_eq!(name_within("x: ", &names, 100), all);
        assert_eq!(name_within("x: ", &names, 41), all);
        assert_eq!(name_within("x: ", &names, 40), "x: a0, a1, a2, a3, a4, a5, and 4 more");
        assert_eq!(name_within("x: ", &names, 17), "x: a0, and 9 more");
        assert_eq!(name_within("x: ", &names, 16), "x: and 10 more");
        assert_eq!(name_within("x: ", &names, 13), "x: ", "not even the count fits");
    }

    proptest::proptest! {
        #[test]
        fn a_note_never_exceeds_its_limit_and_accounts_for_every_name(
            names in proptest::collection::vec("[a-z]{1,20}-[0-9]{1,4}", 1..200),
            max in 40usize..1200,
        ) {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let out = name_within("h: ", &names, max);
            proptest::prop_assert!(out.len() <= max, "{} > {max}: {out}", out.len());
            let listed = out.strip_prefix("h: ").unwrap();
            let (shown, more) = match listed.rsplit_once("and ") {
                Some((head, n)) => (head.trim_end_matches(", "), n.trim_end_matches(" more").parse::<usize>().unwrap()),
                None => (listed, 0),
            };
            let shown: Vec<&str> = if shown.is_empty() { vec![] } else { shown.split(", ").collect() };
            proptest::prop_assert_eq!(&shown[..], &names[..shown.len()]);
            proptest::prop_assert_eq!(shown.len() + more, names.len());
        }
    }

    #[test]
    fn a_missing_statefulset_is_one_warning_until_it_comes_back() {
        let mut seen = Seen::default();
        let empty = BTreeMap::new();
        let notes = seen.publishing("web", "web", None, &empty);
        assert_eq!(notes.len(), 1);
        assert_eq!(
            (notes[0].type_, notes[0].reason, notes[0].pod.as_deref()),
            (EventType::Warning, STATEFULSET_NOT_FOUND, None)
        );
        assert!(notes[0].note.contains("StatefulSet web not found"), "{}", notes[0].note);
        assert_eq!(seen.publishing("web", "web", None, &empty), vec![], "told once");
        let d = derived(&[facts(0, true)]);
        let pods = d.plan("ns", "web", &spec()).pods;
        let notes = seen.publishing("web", "web", Some(&d), &pods);
        assert_eq!(notes.iter().map(|n| n.action.as_str()).collect::<Vec<_>>(), ["PublishReady"]);
        // Gone again: told again.
        assert_eq!(seen.publishing("web", "web", None, &empty).len(), 2, "the warning and the unpublish");
    }

    #[test]
    fn findings_are_warnings_on_their_pod_once() {
        let mut seen = Seen::default();
        let mut bad = facts(1, true);
        bad.annotations.insert(crate::core::annotations::LOAD.into(), "lots".into());
        let d = derived(&[facts(0, true), bad]);
        let pods = d.plan("ns", "web", &spec()).pods;
        let notes = seen.publishing("web", "web", Some(&d), &pods);
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert_eq!((notes[0].type_, notes[0].pod.as_deref()), (EventType::Warning, Some("web-1")));
        assert_eq!(seen.publishing("web", "web", Some(&d), &pods), vec![]);
    }

    #[test]
    fn a_conflict_is_told_once_and_ends_the_publish_history() {
        let mut seen = Seen::default();
        let d = derived(&[facts(0, true)]);
        seen.publishing("web", "web", Some(&d), &d.plan("ns", "web", &spec()).pods);
        let n = seen.conflicting("web", "older").unwrap();
        assert_eq!((n.reason, n.action.as_str()), (SERVICE_NAME_CONFLICT, "Skip"));
        assert!(n.note.starts_with("RouteState older also names service web"), "{}", n.note);
        assert_eq!(seen.conflicting("web", "older"), None);
        // Publishing again after the conflict starts a new history: no change is told.
        assert_eq!(seen.publishing("web", "web", Some(&d), &d.plan("ns", "web", &spec()).pods), vec![]);
    }

    #[test]
    fn service_changes_are_seen_with_the_old_name() {
        let mut seen = Seen::default();
        assert_eq!(seen.service_seen("a", Some("rs")), (true, None));
        assert_eq!(seen.service_seen("a", Some("rs")), (false, None));
        assert_eq!(seen.service_seen("a", Some("other")), (true, None));
        assert_eq!(seen.service_seen("b", Some("other")), (true, Some("a".into())));
    }
}
