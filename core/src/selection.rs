//! The client read model of one service: which pods are alive, routable, available to their
//! linked users, and good for new users; and the choice of a pod for a new user.
//!
//! Rules (wire contract v1, the fixed version of the original's `processRet`):
//! - alive: the state was written within the staleness window;
//! - routable: alive and READY;
//! - available (to users already linked): alive and not SHUTDOWN, so DENY_NEW_CALL pods keep
//!   their users;
//! - good: routable and weighted load ≤ (least load among routable pods) + range;
//! - pick: `good[random % good.len()]` with `good` in ascending pod index. The `pick_and_link`
//!   Lua script implements the same rule when it judges the whole hash, and a test checks them
//!   against each other;
//! - indexed pick (v1.1, the script's path when the candidate index is live):
//!   `good[random % good.len()]` with `good` ordered by ascending weighted load, then pod index
//!   as text — the order of the sorted set. Same good set, another order.
//!
//! Loads count as at most [`MAX_LOAD`] (2^53 − 1), so every reader compares them alike.

use std::collections::BTreeMap;

use super::{load::MAX_LOAD, pod_index::parse_index, pod_state::PodState, routing::RoutingState};

/// How a service's states are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectionPolicy {
    /// A state older than this (by the Redis clock) is stale: the pod is not alive.
    pub window_ms: u64,
    /// Range above the least-loaded routable pod within which pods are good.
    pub range: u64,
}

/// One pod as the read model sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodView {
    pub index: u32,
    pub state: PodState,
    pub alive: bool,
}

/// What the read model knows about one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// No (parsable) state field for the pod.
    Absent,
    /// A state older than the window.
    Stale(PodState),
    Alive(PodState),
}

/// A hash entry that was skipped, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub field: String,
    pub reason: String,
}

/// A snapshot of one service's state hash judged at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSnapshot {
    pods: BTreeMap<u32, PodView>,
    good: Vec<u32>,
    pub now_ms: u64,
    pub policy: SelectionPolicy,
    /// Unparsable entries, skipped (readers never fail on another writer's garbage).
    pub skipped: Vec<Skipped>,
}

impl ServiceSnapshot {
    /// Builds a snapshot from the raw `HGETALL` entries of `sf:{<ns>:state:<svc>}`.
    pub fn from_hash<I, K, V>(entries: I, now_ms: u64, policy: SelectionPolicy) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut states = BTreeMap::new();
        let mut skipped = Vec::new();
        for (field, value) in entries {
            let (field, value) = (field.as_ref(), value.as_ref());
            let Some(index) = parse_index(field) else {
                skipped.push(Skipped {
                    field: super::pod_state::truncate(field),
                    reason: "field is not a pod index".into(),
                });
                continue;
            };
            match PodState::parse(value) {
                Ok(state) => {
                    states.insert(index, state);
                }
                Err(e) => skipped.push(Skipped { field: field.to_owned(), reason: e.to_string() }),
            }
        }
        Self::from_states(states, now_ms, policy, skipped)
    }

    /// Builds a snapshot from parsed states.
    pub fn from_states(
        states: impl IntoIterator<Item = (u32, PodState)>,
        now_ms: u64,
        policy: SelectionPolicy,
        skipped: Vec<Skipped>,
    ) -> Self {
        let pods: BTreeMap<u32, PodView> = states
            .into_iter()
            .map(|(index, state)| (index, PodView { index, state, alive: state.is_fresh(now_ms, policy.window_ms) }))
            .collect();
        let routable = || pods.values().filter(|p| p.alive && p.state.routing == RoutingState::Ready);
        let load = |p: &PodView| p.state.weighted_load.min(MAX_LOAD);
        let good = match routable().map(load).min() {
            Some(min) => {
                let limit = min.saturating_add(policy.range);
                routable().filter(|p| load(p) <= limit).map(|p| p.index).collect()
            }
            None => Vec::new(),
        };
        Self { pods, good, now_ms, policy, skipped }
    }

    pub fn classify(&self, pod: u32) -> Classified {
        match self.pods.get(&pod) {
            None => Classified::Absent,
            Some(v) if v.alive => Classified::Alive(v.state),
            Some(v) => Classified::Stale(v.state),
        }
    }

    pub fn is_alive(&self, pod: u32) -> bool {
        matches!(self.classify(pod), Classified::Alive(_))
    }

    /// Alive and READY: may take new users.
    pub fn is_routable(&self, pod: u32) -> bool {
        matches!(self.classify(pod), Classified::Alive(s) if s.routing.accepts_new())
    }

    /// Alive and not SHUTDOWN: users already linked to it keep reaching it.
    pub fn is_available(&self, pod: u32) -> bool {
        matches!(self.classify(pod), Classified::Alive(s) if s.routing.keeps_linked())
    }

    /// Good pods for new users, in ascending index.
    pub fn good_pods(&self) -> &[u32] {
        &self.good
    }

    pub fn alive_pods(&self) -> impl Iterator<Item = &PodView> {
        self.pods.values().filter(|p| p.alive)
    }

    pub fn routable_pods(&self) -> impl Iterator<Item = u32> + '_ {
        self.alive_pods().filter(|p| p.state.routing.accepts_new()).map(|p| p.index)
    }

    /// Every pod with a parsable state, fresh or not, in ascending index.
    pub fn pods(&self) -> impl Iterator<Item = &PodView> {
        self.pods.values()
    }

    /// The routing state a pod is seen in: `None` when it is absent or stale.
    pub fn routing_of(&self, pod: u32) -> Option<RoutingState> {
        match self.classify(pod) {
            Classified::Alive(s) => Some(s.routing),
            _ => None,
        }
    }

    /// Good pods in the candidate index's order: ascending weighted load (at most
    /// [`MAX_LOAD`]), then the pod index compared as text ("10" before "9").
    pub fn good_by_load(&self) -> Vec<u32> {
        let mut good: Vec<(u64, String, u32)> =
            self.good.iter().map(|&i| (self.pods[&i].state.weighted_load.min(MAX_LOAD), i.to_string(), i)).collect();
        good.sort();
        good.into_iter().map(|(_, _, i)| i).collect()
    }

    /// The indexed pick: `good_by_load()[random % len]`.
    pub fn pick_indexed(&self, random: u32) -> Option<u32> {
        let good = self.good_by_load();
        (!good.is_empty()).then(|| good[random as usize % good.len()])
    }

    /// Picks a good pod with a caller-supplied random value: `good[random % good.len()]`.
    pub fn pick(&self, random: u32) -> Option<u32> {
        if self.good.is_empty() {
            return None;
        }
        Some(self.good[random as usize % self.good.len()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RoutingState::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_000_000;
    const POLICY: SelectionPolicy = SelectionPolicy { window_ms: 30_000, range: 500 };

    fn snap(states: &[(u32, u64, u64, RoutingState)]) -> ServiceSnapshot {
        ServiceSnapshot::from_states(
            states.iter().map(|&(i, load, age, r)| (i, PodState::new(load, NOW - age, r))),
            NOW,
            POLICY,
            vec![],
        )
    }

    #[test]
    fn classification_table() {
        let s = snap(&[(0, 10, 0, Ready), (1, 10, 0, DenyNewCall), (2, 10, 0, Shutdown), (3, 10, 30_001, Ready)]);
        // (pod, alive, routable, available)
        for (pod, alive, routable, available) in [
            (0, true, true, true),
            (1, true, false, true),
            (2, true, false, false),
            (3, false, false, false),
            (9, false, false, false),
        ] {
            assert_eq!(
                (s.is_alive(pod), s.is_routable(pod), s.is_available(pod)),
                (alive, routable, available),
                "pod {pod}"
            );
        }
        assert_eq!(s.classify(9), Classified::Absent);
        assert!(matches!(s.classify(3), Classified::Stale(_)));
        assert_eq!(s.routing_of(1), Some(DenyNewCall));
        assert_eq!(s.routing_of(3), None);
    }

    #[test]
    fn good_is_within_range_of_the_least_loaded_ready_pod() {
        // The least loaded pod overall is draining; it must not set the baseline.
        let s = snap(&[
            (0, 0, 0, DenyNewCall),
            (1, 1000, 0, Ready),
            (2, 1500, 0, Ready),
            (3, 1501, 0, Ready),
            (4, 900, 40_000, Ready),
        ]);
        assert_eq!(s.good_pods(), &[1, 2]);
        assert_eq!(s.routable_pods().collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn pod_zero_is_a_real_pod() {
        let s = snap(&[(0, 5, 0, Ready)]);
        assert_eq!(s.good_pods(), &[0]);
        assert_eq!(s.pick(12345), Some(0));
    }

    #[test]
    fn nothing_routable_means_no_pick() {
        assert_eq!(snap(&[]).pick(0), None);
        assert_eq!(snap(&[(0, 1, 0, DenyNewCall), (1, 1, 0, Shutdown), (2, 1, 99_999, Ready)]).pick(7), None);
    }

    #[test]
    fn garbage_entries_are_skipped_not_fatal() {
        let s = ServiceSnapshot::from_hash(
            [("0", "5-1000000-0"), ("x", "5-1000000-0"), ("1", "garbage"), ("01", "1-1000000-0"), ("2", "7-999999-1")],
            NOW,
            POLICY,
        );
        assert_eq!(s.pods().map(|p| p.index).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(s.skipped.len(), 3);
        assert!(s.skipped.iter().any(|k| k.field == "1" && k.reason.contains("garbage")));
    }

    #[test]
    fn the_indexed_pick_orders_by_load_then_index_text() {
        let s = snap(&[(9, 5, 0, Ready), (10, 5, 0, Ready), (2, 1, 0, Ready), (3, 600, 0, Ready)]);
        assert_eq!(s.good_by_load(), [2, 10, 9], "3 is over the range; 10 sorts before 9 as text");
        assert_eq!([0, 1, 2, 3].map(|r| s.pick_indexed(r).unwrap()), [2, 10, 9, 2]);
        assert_eq!(snap(&[(0, 1, 0, DenyNewCall)]).pick_indexed(0), None);
    }

    #[test]
    fn loads_above_the_bound_count_as_the_bound() {
        // 2^60 and 2^60 + 1 are both MAX_LOAD to every reader: with range 0 both are good.
        let s = snap(&[(0, 1 << 60, 0, Ready), (1, (1 << 60) + 1, 0, Ready)]);
        let exact = ServiceSnapshot { policy: SelectionPolicy { range: 0, ..POLICY }, ..s.clone() };
        let exact = ServiceSnapshot::from_states(exact.pods().map(|p| (p.index, p.state)), NOW, exact.policy, vec![]);
        assert_eq!(exact.good_pods(), &[0, 1]);
        assert_eq!(s.good_pods(), &[0, 1]);
    }

    #[test]
    fn pick_is_modulo_over_ascending_good_pods() {
        let s = snap(&[(5, 1, 0, Ready), (2, 1, 0, Ready), (9, 1, 0, Ready)]);
        assert_eq!([0, 1, 2, 3].map(|r| s.pick(r).unwrap()), [2, 5, 9, 2]);
    }

    proptest! {
        /// Against a model computed from the generated data alone (not from the snapshot's own
        /// routable/alive views): good = READY, at most the window old, load ≤ least such load +
        /// range, in ascending index; the pick is `good[random % #good]`.
        #[test]
        fn picks_are_always_good_routable_and_fresh(
            // Small loads and ranges and ages around the window, so the boundaries are hit often.
            pods in proptest::collection::btree_map(
                0u32..50,
                (0u64..40, prop_oneof![0u64..60_000, Just(30_000), Just(30_001)], 0u8..3),
                0..30,
            ),
            range in 0u64..20,
            random in any::<u32>(),
        ) {
            let policy = SelectionPolicy { range, ..POLICY };
            let s = ServiceSnapshot::from_states(
                pods.iter().map(|(&i, &(load, age, r))| (i, PodState::new(load, NOW - age, RoutingState::from_ordinal(r).unwrap()))),
                NOW, policy, vec![]);
            let ready: Vec<(u32, u64)> =
                pods.iter().filter(|(_, (_, age, r))| *r == 0 && *age <= POLICY.window_ms).map(|(&i, &(l, _, _))| (i, l)).collect();
            let good: Vec<u32> = match ready.iter().map(|&(_, l)| l).min() {
                Some(min) => ready.iter().filter(|&&(_, l)| l <= min + range).map(|&(i, _)| i).collect(),
                None => vec![],
            };
            prop_assert_eq!(s.good_pods(), good.as_slice());
            let want = (!good.is_empty()).then(|| good[random as usize % good.len()]);
            prop_assert_eq!(s.pick(random), want);
            // The indexed order: the same set, sorted by (load, index text).
            let mut by_load: Vec<(u64, String)> = good.iter().map(|i| (pods[i].0, i.to_string())).collect();
            by_load.sort();
            let by_load: Vec<u32> = by_load.into_iter().map(|(_, i)| i.parse().unwrap()).collect();
            prop_assert_eq!(s.good_by_load(), by_load.clone());
            prop_assert_eq!(s.pick_indexed(random), (!by_load.is_empty()).then(|| by_load[random as usize % by_load.len()]));
            for (&i, &(_, age, r)) in &pods {
                let alive = age <= POLICY.window_ms;
                prop_assert_eq!(s.is_routable(i), alive && r == 0, "pod {}", i);
                prop_assert_eq!(s.is_available(i), alive && r != 2, "pod {}", i);
            }
        }
    }
}
