//! A StatefulSet pod's index: the `apps.kubernetes.io/pod-index` label, else the ordinal suffix
//! of its name.

/// The label the StatefulSet controller puts on every pod (Kubernetes ≥ 1.28).
pub const POD_INDEX_LABEL: &str = "apps.kubernetes.io/pod-index";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodIndexError {
    #[error("pod {pod:?}: label {POD_INDEX_LABEL}={value:?} is not a non-negative integer")]
    BadLabel { pod: String, value: String },
    #[error("pod {pod:?}: the label and the name's ordinal disagree ({label} vs {ordinal})")]
    Mismatch { pod: String, label: u32, ordinal: u32 },
    #[error("pod {pod:?} has no {POD_INDEX_LABEL} label and its name does not end in -<ordinal>")]
    NoOrdinal { pod: String },
}

/// The index of pod `name` with an optional pod-index label value. With `statefulset` given,
/// the name must be `<statefulset>-<ordinal>`.
pub fn pod_index(name: &str, label: Option<&str>, statefulset: Option<&str>) -> Result<u32, PodIndexError> {
    let from_name = name_ordinal(name, statefulset);
    match label {
        Some(value) => {
            let label = parse_index(value)
                .ok_or_else(|| PodIndexError::BadLabel { pod: name.to_owned(), value: value.to_owned() })?;
            match from_name {
                Some(ordinal) if ordinal != label => {
                    Err(PodIndexError::Mismatch { pod: name.to_owned(), label, ordinal })
                }
                _ => Ok(label),
            }
        }
        None => from_name.ok_or_else(|| PodIndexError::NoOrdinal { pod: name.to_owned() }),
    }
}

fn name_ordinal(name: &str, statefulset: Option<&str>) -> Option<u32> {
    let (prefix, suffix) = name.rsplit_once('-')?;
    if statefulset.is_some_and(|sts| sts != prefix) {
        return None;
    }
    parse_index(suffix)
}

/// The name of pod `index` of StatefulSet `statefulset`: `<statefulset>-<index>` (what the
/// StatefulSet controller names it; used when the pod itself is not at hand).
pub fn pod_name(statefulset: &str, index: u32) -> String {
    format!("{statefulset}-{index}")
}

/// A canonical pod index: decimal digits only, no sign, no leading zeros (except "0"), within
/// u32 — a pod name's ordinal, the pod-index label, a state-hash field, a link's value.
pub fn parse_index(s: &str) -> Option<u32> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_indices_round_trip() {
        assert_eq!(pod_name("web", 3), "web-3");
        assert_eq!(pod_index(&pod_name("my-app", 12), None, Some("my-app")), Ok(12));
        for (s, want) in [("0", Some(0)), ("17", Some(17)), ("4294967295", Some(u32::MAX))] {
            assert_eq!(parse_index(s), want, "{s:?}");
        }
        for bad in ["", "01", "-1", "+1", " 1", "1 ", "4294967296", "1.0", "x"] {
            assert_eq!(parse_index(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn label_first_then_name() {
        assert_eq!(pod_index("web-2", Some("2"), Some("web")), Ok(2));
        assert_eq!(pod_index("web-0", None, Some("web")), Ok(0));
        assert_eq!(pod_index("my-app-12", None, Some("my-app")), Ok(12));
        assert_eq!(pod_index("my-app-12", None, None), Ok(12));
        // A label on a name without ordinal (e.g. an Advanced StatefulSet with custom names).
        assert_eq!(pod_index("custom", Some("4"), None), Ok(4));
    }

    #[test]
    fn errors_name_the_pod_and_value() {
        let e = pod_index("web-1", Some("x"), None).unwrap_err();
        assert!(e.to_string().contains("\"web-1\"") && e.to_string().contains("\"x\""), "{e}");
        assert_eq!(
            pod_index("web-1", Some("2"), Some("web")),
            Err(PodIndexError::Mismatch { pod: "web-1".into(), label: 2, ordinal: 1 })
        );
        for bad in ["web", "web-", "web--1", "web-01", "web-+1", "web-1a", "web-99999999999", "other-1"] {
            assert!(pod_index(bad, None, Some("web")).is_err(), "{bad}");
        }
        for bad in ["", "-1", "01", "1.0", " 1", "4294967296"] {
            assert!(matches!(pod_index("p", Some(bad), None), Err(PodIndexError::BadLabel { .. })), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn any_ordinal_round_trips(sts in "[a-z]([a-z0-9-]{0,20}[a-z0-9])?", i in any::<u32>()) {
            let name = format!("{sts}-{i}");
            prop_assert_eq!(pod_index(&name, None, Some(&sts)), Ok(i));
            prop_assert_eq!(pod_index(&name, Some(&i.to_string()), Some(&sts)), Ok(i));
        }

        #[test]
        fn never_panics(name in ".{0,40}", label in proptest::option::of(".{0,12}")) {
            let _ = pod_index(&name, label.as_deref(), None);
        }
    }
}
