//! The Redis key layout (wire contract v1). Hash tags keep every key a script touches in one
//! Redis Cluster slot: a uid's link hash and its per-service link strings share `{<ns>:lk:<uid>}`,
//! and a service's state hash and its metadata share `{<ns>:state:<svc>}`.

/// Builds keys after validating the parts they are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} {value:?} must not contain '{{' or '}}' (they would break the Redis Cluster hash tag)")]
    Brace { what: &'static str, value: String },
    #[error("{what} {value:?} is longer than {max} bytes")]
    TooLong { what: &'static str, value: String, max: usize },
    #[error("namespace {value:?} must not contain ':' (it would make keys of different kinds collide)")]
    ColonInNamespace { value: String },
}

/// Longest namespace, service name or uid accepted in a key.
pub const MAX_PART_LEN: usize = 512;

/// Checks one part of a key (namespace, service or uid).
pub fn check_part(what: &'static str, value: &str) -> Result<(), KeyError> {
    if value.is_empty() {
        return Err(KeyError::Empty { what });
    }
    if value.len() > MAX_PART_LEN {
        return Err(KeyError::TooLong { what, value: super::pod_state::truncate(value), max: MAX_PART_LEN });
    }
    if value.contains(['{', '}']) {
        return Err(KeyError::Brace { what, value: value.to_owned() });
    }
    Ok(())
}

/// Checks a namespace: a key part that also must not contain `:`. With it, the link hash of
/// uid `state:S` in namespace `n` (`sf:{n:lk:state:S}`) would be the state hash of service `S`
/// in namespace `n:lk`. Kubernetes namespaces never contain `:`; services and uids may.
pub fn check_namespace(ns: &str) -> Result<(), KeyError> {
    check_part("namespace", ns)?;
    if ns.contains(':') {
        return Err(KeyError::ColonInNamespace { value: ns.to_owned() });
    }
    Ok(())
}

impl Keys {
    /// `sf:{<ns>:state:<svc>}`: hash, field = pod index → pod state string.
    pub fn state(ns: &str, svc: &str) -> Result<String, KeyError> {
        check_namespace(ns)?;
        check_part("service", svc)?;
        Ok(format!("sf:{{{ns}:state:{svc}}}"))
    }

    /// `sf:{<ns>:state:<svc>}meta`: hash of service metadata published by the operator
    /// (`updatePeriodSeconds`). Kept out of the state hash so clients that read every field of
    /// the state hash as a pod index never see a non-integer field.
    pub fn state_meta(ns: &str, svc: &str) -> Result<String, KeyError> {
        Ok(format!("{}meta", Self::state(ns, svc)?))
    }

    /// `sf:{<ns>:state:<svc>}floor` (v1.1): hash, field = pod index → the operator's floor for
    /// the pod. Written only by the operator; a pod is published only while it has a floor.
    pub fn state_floor(ns: &str, svc: &str) -> Result<String, KeyError> {
        Ok(format!("{}floor", Self::state(ns, svc)?))
    }

    /// `sf:{<ns>:state:<svc>}report` (v1.1): hash, field = pod index → the pod's own report,
    /// written by the pod (direct transport).
    pub fn state_report(ns: &str, svc: &str) -> Result<String, KeyError> {
        Ok(format!("{}report", Self::state(ns, svc)?))
    }

    /// `sf:{<ns>:state:<svc>}ready` (v1.1): sorted set, the candidate index of placements:
    /// member = pod index of every published READY pod, score = its weighted load, plus the
    /// marker member [`INDEX_MARKER`] with score +inf. Its TTL is the staleness window.
    pub fn state_index(ns: &str, svc: &str) -> Result<String, KeyError> {
        Ok(format!("{}ready", Self::state(ns, svc)?))
    }

    /// `sf:{<ns>:state:<svc>}epoch`: string, the dataset epoch — an opaque token created once
    /// (`SET NX`) and never changed, so a writer that finds it missing or different knows Redis
    /// lost or replaced its data.
    pub fn state_epoch(ns: &str, svc: &str) -> Result<String, KeyError> {
        Ok(format!("{}epoch", Self::state(ns, svc)?))
    }

    /// Every key of one service's routing state (not its links).
    pub fn service(ns: &str, svc: &str) -> Result<ServiceKeys, KeyError> {
        Ok(ServiceKeys {
            state: Self::state(ns, svc)?,
            meta: Self::state_meta(ns, svc)?,
            floor: Self::state_floor(ns, svc)?,
            report: Self::state_report(ns, svc)?,
            index: Self::state_index(ns, svc)?,
            epoch: Self::state_epoch(ns, svc)?,
            workload: Self::workload(ns, svc)?,
        })
    }

    /// `sf:{<ns>:workload:<svc>}`: string, the workload aggregate (JSON).
    pub fn workload(ns: &str, svc: &str) -> Result<String, KeyError> {
        check_namespace(ns)?;
        check_part("service", svc)?;
        Ok(format!("sf:{{{ns}:workload:{svc}}}"))
    }

    /// `sf:{<ns>:lk:<uid>}`: hash of a uid's persistent links, field = service → pod index.
    pub fn link_hash(ns: &str, uid: &str) -> Result<String, KeyError> {
        check_namespace(ns)?;
        check_part("uid", uid)?;
        Ok(format!("sf:{{{ns}:lk:{uid}}}"))
    }

    /// `sf:{<ns>:lk:<uid>}<svc>`: string, the link (pod index).
    pub fn link(ns: &str, uid: &str, svc: &str) -> Result<String, KeyError> {
        check_part("service", svc)?;
        Ok(format!("{}{svc}", Self::link_hash(ns, uid)?))
    }
}

/// The member of the candidate index that marks it as maintained (score +inf, so it is never a
/// candidate): an index holding only the marker says "no READY pod" rather than "no index".
pub const INDEX_MARKER: &str = "~";

/// Every key of one service's routing state. All but `workload` share the state hash's tag, so
/// they live in one Redis Cluster slot and one script can write them together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceKeys {
    pub state: String,
    pub meta: String,
    pub floor: String,
    pub report: String,
    pub index: String,
    pub epoch: String,
    pub workload: String,
}

impl ServiceKeys {
    /// The keys in the state hash's slot.
    pub fn state_slot(&self) -> [&str; 6] {
        [&self.state, &self.meta, &self.floor, &self.report, &self.index, &self.epoch]
    }

    /// All of them, the workload key (another slot) last.
    pub fn all(&self) -> [&str; 7] {
        [&self.state, &self.meta, &self.floor, &self.report, &self.index, &self.epoch, &self.workload]
    }
}

/// The Redis Cluster hash slot of a key (CRC16/XMODEM of the hash tag, mod 16384). Used by
/// tests and by callers that group keys per slot.
pub fn hash_slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            bytes[open + 1..]
                .iter()
                .position(|&b| b == b'}')
                .filter(|&len| len > 0)
                .map(|len| &bytes[open + 1..open + 1 + len])
        })
        .unwrap_or(bytes);
    crc16_xmodem(tagged) % 16384
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_exactly_the_wire_contract() {
        assert_eq!(Keys::state("prod", "game").unwrap(), "sf:{prod:state:game}");
        assert_eq!(Keys::state_meta("prod", "game").unwrap(), "sf:{prod:state:game}meta");
        assert_eq!(Keys::workload("prod", "game").unwrap(), "sf:{prod:workload:game}");
        assert_eq!(Keys::link_hash("prod", "u42").unwrap(), "sf:{prod:lk:u42}");
        assert_eq!(Keys::link("prod", "u42", "game").unwrap(), "sf:{prod:lk:u42}game");
        let k = Keys::service("prod", "game").unwrap();
        assert_eq!(
            k.all(),
            [
                "sf:{prod:state:game}",
                "sf:{prod:state:game}meta",
                "sf:{prod:state:game}floor",
                "sf:{prod:state:game}report",
                "sf:{prod:state:game}ready",
                "sf:{prod:state:game}epoch",
                "sf:{prod:workload:game}"
            ]
        );
    }

    #[test]
    fn bad_parts_are_named() {
        assert_eq!(Keys::state("", "g").unwrap_err(), KeyError::Empty { what: "namespace" });
        assert_eq!(Keys::link("n", "u", "").unwrap_err(), KeyError::Empty { what: "service" });
        let err = Keys::link_hash("n", "a}b").unwrap_err();
        assert!(err.to_string().contains("uid \"a}b\""), "{err}");
        assert!(matches!(Keys::link_hash("n", &"x".repeat(600)), Err(KeyError::TooLong { .. })));
        // A colon in the namespace would let a link hash be another namespace's state hash.
        assert_eq!(Keys::link_hash("n", "state:S").unwrap(), "sf:{n:lk:state:S}");
        let e = Keys::state("n:lk", "S").unwrap_err();
        assert_eq!(e, KeyError::ColonInNamespace { value: "n:lk".into() });
        assert!(e.to_string().contains("\"n:lk\""), "{e}");
        assert!(Keys::state("n", "a:b").is_ok() && Keys::link("n", "u:1", "a:b").is_ok(), "colons elsewhere are fine");
        // The limit is inclusive.
        assert!(Keys::link_hash("n", &"x".repeat(MAX_PART_LEN)).is_ok());
        assert!(matches!(Keys::link_hash("n", &"x".repeat(MAX_PART_LEN + 1)), Err(KeyError::TooLong { .. })));
    }

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster specification / CLUSTER KEYSLOT.
        assert_eq!(hash_slot("123456789"), 12739);
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        assert_eq!(hash_slot("foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % 16384, "an empty tag hashes the whole key");
    }

    proptest! {
        #[test]
        fn script_keys_share_a_slot(ns in "[a-z0-9-]{1,20}", uid in "[^{}]{1,40}", svc in "[^{}]{1,20}") {
            prop_assert_eq!(hash_slot(&Keys::link(&ns, &uid, &svc).unwrap()), hash_slot(&Keys::link_hash(&ns, &uid).unwrap()));
            let k = Keys::service(&ns, &svc).unwrap();
            for same in k.state_slot() {
                prop_assert_eq!(hash_slot(&k.state), hash_slot(same));
            }
        }
    }
}
