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

impl Keys {
    /// `sf:{<ns>:state:<svc>}`: hash, field = pod index → pod state string.
    pub fn state(ns: &str, svc: &str) -> Result<String, KeyError> {
        check_part("namespace", ns)?;
        check_part("service", svc)?;
        Ok(format!("sf:{{{ns}:state:{svc}}}"))
    }

    /// `sf:{<ns>:state:<svc>}meta`: hash of service metadata published by the operator
    /// (`updatePeriodSeconds`). Kept out of the state hash so clients that read every field of
    /// the state hash as a pod index never see a non-integer field.
    pub fn state_meta(ns: &str, svc: &str) -> Result<String, KeyError> {
        Ok(format!("{}meta", Self::state(ns, svc)?))
    }

    /// `sf:{<ns>:workload:<svc>}`: string, the workload aggregate (JSON).
    pub fn workload(ns: &str, svc: &str) -> Result<String, KeyError> {
        check_part("namespace", ns)?;
        check_part("service", svc)?;
        Ok(format!("sf:{{{ns}:workload:{svc}}}"))
    }

    /// `sf:{<ns>:lk:<uid>}`: hash of a uid's persistent links, field = service → pod index.
    pub fn link_hash(ns: &str, uid: &str) -> Result<String, KeyError> {
        check_part("namespace", ns)?;
        check_part("uid", uid)?;
        Ok(format!("sf:{{{ns}:lk:{uid}}}"))
    }

    /// `sf:{<ns>:lk:<uid>}<svc>`: string, the link (pod index).
    pub fn link(ns: &str, uid: &str, svc: &str) -> Result<String, KeyError> {
        check_part("service", svc)?;
        Ok(format!("{}{svc}", Self::link_hash(ns, uid)?))
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
    }

    #[test]
    fn bad_parts_are_named() {
        assert_eq!(Keys::state("", "g").unwrap_err(), KeyError::Empty { what: "namespace" });
        assert_eq!(Keys::link("n", "u", "").unwrap_err(), KeyError::Empty { what: "service" });
        let err = Keys::link_hash("n", "a}b").unwrap_err();
        assert!(err.to_string().contains("uid \"a}b\""), "{err}");
        assert!(matches!(Keys::link_hash("n", &"x".repeat(600)), Err(KeyError::TooLong { .. })));
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
            prop_assert_eq!(hash_slot(&Keys::state(&ns, &svc).unwrap()), hash_slot(&Keys::state_meta(&ns, &svc).unwrap()));
        }
    }
}
