//! The pods the operator knows, indexed by (namespace, StatefulSet) and reduced to what the
//! derivation reads ([`PodFacts`], or the finding that a pod's index is unknown). A reconcile
//! reads its own service's pods only, and a pod event triggers a reconcile only when those facts
//! changed: the status churn of a busy fleet (conditions, IPs, resource versions) costs a
//! comparison, not a reconcile.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::RwLock,
};

use k8s_openapi::api::core::v1::Pod;
use kube::{ResourceExt, runtime::watcher};

use crate::operator::derive::{self, Finding, PodFacts};

/// A StatefulSet: (namespace, name).
pub type SetKey = (String, String);
/// What the derivation reads of one pod.
pub type Facts = Result<PodFacts, Finding>;

/// The pod index (see the module doc); shared between the pod watch and the reconciles.
#[derive(Debug, Default)]
pub struct PodIndex {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Facts per StatefulSet, per pod name.
    sets: HashMap<SetKey, BTreeMap<String, Facts>>,
    /// The StatefulSet each known pod (namespace, name) belongs to.
    owner: HashMap<(String, String), String>,
    /// During a relist: the pods seen since it began (the others are gone at its end).
    relisted: Option<HashSet<(String, String)>>,
}

/// The StatefulSet controlling `pod` and the pod's facts; `None` for pods no StatefulSet controls.
pub fn entry(pod: &Pod) -> Option<(SetKey, String, Facts)> {
    let ns = pod.namespace()?;
    let name = pod.metadata.name.clone()?;
    let sts = derive::controlling_statefulset(pod)?.to_owned();
    let facts = derive::pod_facts(pod, &sts);
    Some(((ns, sts), name, facts))
}

impl PodIndex {
    /// The facts of the pods of StatefulSet `sts` in `ns`, by pod name.
    pub fn facts(&self, ns: &str, sts: &str) -> Vec<Facts> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .sets
            .get(&(ns.to_owned(), sts.to_owned()))
            .map(|pods| pods.values().cloned().collect())
            .unwrap_or_default()
    }

    /// How many pods are indexed.
    pub fn len(&self) -> usize {
        self.inner.read().unwrap_or_else(|e| e.into_inner()).owner.len()
    }

    /// Whether no pod is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies one event of the pod watch; returns the StatefulSets whose pods' facts changed.
    pub fn apply(&self, event: &watcher::Event<Pod>) -> BTreeSet<SetKey> {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let mut changed = BTreeSet::new();
        match event {
            watcher::Event::Init => inner.relisted = Some(HashSet::new()),
            watcher::Event::InitApply(pod) | watcher::Event::Apply(pod) => {
                let Some(key) = pod_key(pod) else { return changed };
                if let Some(seen) = inner.relisted.as_mut()
                    && matches!(event, watcher::Event::InitApply(_))
                {
                    seen.insert(key.clone());
                }
                match entry(pod) {
                    Some((set, name, facts)) => inner.upsert(key, set, name, facts, &mut changed),
                    None => inner.remove(&key, &mut changed),
                }
            }
            watcher::Event::Delete(pod) => {
                if let Some(key) = pod_key(pod) {
                    inner.remove(&key, &mut changed);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = inner.relisted.take() {
                    let gone: Vec<(String, String)> =
                        inner.owner.keys().filter(|k| !seen.contains(*k)).cloned().collect();
                    for key in gone {
                        inner.remove(&key, &mut changed);
                    }
                }
            }
        }
        changed
    }
}

fn pod_key(pod: &Pod) -> Option<(String, String)> {
    Some((pod.namespace()?, pod.metadata.name.clone()?))
}

impl Inner {
    fn upsert(
        &mut self,
        key: (String, String),
        set: SetKey,
        name: String,
        facts: Facts,
        changed: &mut BTreeSet<SetKey>,
    ) {
        // A pod that moved to another StatefulSet (its owner reference changed) leaves the old one.
        if self.owner.get(&key).is_some_and(|old| *old != set.1) {
            self.remove(&key, changed);
        }
        self.owner.insert(key, set.1.clone());
        let pods = self.sets.entry(set.clone()).or_default();
        if pods.get(&name) != Some(&facts) {
            pods.insert(name, facts);
            changed.insert(set);
        }
    }

    fn remove(&mut self, key: &(String, String), changed: &mut BTreeSet<SetKey>) {
        let Some(sts) = self.owner.remove(key) else { return };
        let set = (key.0.clone(), sts);
        if let Some(pods) = self.sets.get_mut(&set) {
            pods.remove(&key.1);
            if pods.is_empty() {
                self.sets.remove(&set);
            }
        }
        changed.insert(set);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, sts: Option<&str>, name: &str, ready: bool) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}], "podIP": "10.0.0.1"}
        });
        if let Some(sts) = sts {
            v["metadata"]["ownerReferences"] = serde_json::json!([{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts, "uid": "u", "controller": true}]);
        }
        serde_json::from_value(v).unwrap()
    }

    fn set(ns: &str, sts: &str) -> SetKey {
        (ns.to_owned(), sts.to_owned())
    }

    #[test]
    fn a_statefulset_sees_its_own_pods_only() {
        let index = PodIndex::default();
        for p in [
            pod("a", Some("web"), "web-0", true),
            pod("a", Some("web"), "web-1", true),
            pod("a", Some("db"), "db-0", true),
            pod("b", Some("web"), "web-0", false),
            pod("a", None, "lonely", true),
        ] {
            index.apply(&watcher::Event::Apply(p));
        }
        let names = |ns, sts| -> Vec<String> { index.facts(ns, sts).into_iter().map(|f| f.unwrap().name).collect() };
        assert_eq!(names("a", "web"), ["web-0", "web-1"]);
        assert_eq!(names("a", "db"), ["db-0"]);
        assert_eq!(index.facts("b", "web").len(), 1);
        assert!(!index.facts("b", "web")[0].as_ref().unwrap().ready, "namespace b's web-0 is not a's");
        assert_eq!(index.len(), 4, "a pod no StatefulSet controls is not kept");
    }

    #[test]
    fn only_changed_facts_trigger_and_only_their_statefulset() {
        let index = PodIndex::default();
        assert_eq!(
            index.apply(&watcher::Event::Apply(pod("a", Some("web"), "web-0", true))),
            BTreeSet::from([set("a", "web")])
        );
        // Status churn the derivation does not read (a new IP, a new resource version): nothing.
        let mut churn = pod("a", Some("web"), "web-0", true);
        churn.metadata.resource_version = Some("2".into());
        churn.status.as_mut().unwrap().pod_ip = Some("10.0.0.2".into());
        assert!(index.apply(&watcher::Event::Apply(churn)).is_empty());
        // Readiness is read: its StatefulSet only.
        index.apply(&watcher::Event::Apply(pod("a", Some("db"), "db-0", true)));
        assert_eq!(
            index.apply(&watcher::Event::Apply(pod("a", Some("web"), "web-0", false))),
            BTreeSet::from([set("a", "web")])
        );
        assert_eq!(
            index.apply(&watcher::Event::Delete(pod("a", Some("web"), "web-0", false))),
            BTreeSet::from([set("a", "web")])
        );
        assert!(index.facts("a", "web").is_empty());
        assert_eq!(index.facts("a", "db").len(), 1);
    }

    #[test]
    fn a_relist_drops_the_pods_it_did_not_see() {
        let index = PodIndex::default();
        index.apply(&watcher::Event::Apply(pod("a", Some("web"), "web-0", true)));
        index.apply(&watcher::Event::Apply(pod("a", Some("web"), "web-1", true)));
        index.apply(&watcher::Event::Init);
        assert!(index.apply(&watcher::Event::InitApply(pod("a", Some("web"), "web-0", true))).is_empty());
        assert_eq!(index.apply(&watcher::Event::InitDone), BTreeSet::from([set("a", "web")]));
        assert_eq!(index.facts("a", "web").len(), 1);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_pod_that_changes_owner_moves_between_statefulsets() {
        let index = PodIndex::default();
        index.apply(&watcher::Event::Apply(pod("a", Some("old"), "p-0", true)));
        let moved = index.apply(&watcher::Event::Apply(pod("a", Some("new"), "p-0", true)));
        assert_eq!(moved, BTreeSet::from([set("a", "old"), set("a", "new")]));
        assert!(index.facts("a", "old").is_empty());
        let orphaned = index.apply(&watcher::Event::Apply(pod("a", None, "p-0", true)));
        assert_eq!(orphaned, BTreeSet::from([set("a", "new")]));
        assert!(index.is_empty());
    }

    #[test]
    fn a_pod_without_an_index_is_kept_as_its_finding() {
        let index = PodIndex::default();
        index.apply(&watcher::Event::Apply(pod("a", Some("web"), "not-a-web-pod", true)));
        let facts = index.facts("a", "web");
        assert!(matches!(facts.as_slice(), [Err(Finding::BadPodIndex(_))]), "{facts:?}");
    }
}
