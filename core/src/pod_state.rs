//! The pod state string `<weightedLoad>-<updateEpochMillis>-<routingState>` stored as a field
//! of `sf:{<ns>:state:<svc>}`.

use std::fmt;

use super::routing::RoutingState;

/// One pod's published state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PodState {
    /// Weighted load; larger means busier.
    pub weighted_load: u64,
    /// When the state was written, in milliseconds since the epoch, by the Redis server clock.
    pub updated_at_ms: u64,
    pub routing: RoutingState,
}

/// Longest state string a reader accepts; anything longer is garbage, not a state.
pub const MAX_STATE_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodStateError {
    #[error("pod state {value:?} is not of the form <weightedLoad>-<updateEpochMillis>-<routingState>: {reason}")]
    Malformed { value: String, reason: &'static str },
}

impl PodState {
    pub fn new(weighted_load: u64, updated_at_ms: u64, routing: RoutingState) -> Self {
        Self { weighted_load, updated_at_ms, routing }
    }

    /// The wire encoding.
    pub fn encode(&self) -> String {
        self.to_string()
    }

    /// Parses the wire encoding strictly: three decimal fields, no signs, no spaces.
    pub fn parse(value: &str) -> Result<Self, PodStateError> {
        let (weighted_load, updated_at_ms, routing) = parse_triple(value).map_err(|bad| {
            let reason = match bad {
                BadTriple::TooLong => "too long",
                BadTriple::Shape => "expected exactly three '-'-separated fields",
                BadTriple::First => "weighted load is not a non-negative integer",
                BadTriple::Second => "update time is not a non-negative integer",
                BadTriple::Routing => "routing state is not 0, 1 or 2",
            };
            PodStateError::Malformed { value: truncate(value), reason }
        })?;
        Ok(Self { weighted_load, updated_at_ms, routing })
    }

    /// Age of the state at `now_ms`; a state from the future (another writer's clock) has age 0.
    pub fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.updated_at_ms)
    }

    /// Whether the state is at most `window_ms` old at `now_ms`.
    pub fn is_fresh(&self, now_ms: u64, window_ms: u64) -> bool {
        self.age_ms(now_ms) <= window_ms
    }
}

impl fmt::Display for PodState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.weighted_load, self.updated_at_ms, self.routing.ordinal())
    }
}

/// What is wrong with a `<a>-<b>-<routing>` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BadTriple {
    TooLong,
    Shape,
    First,
    Second,
    Routing,
}

/// `<a>-<b>-<routing>`: two decimal u64 fields (digits only, leading zeros allowed) and a routing
/// ordinal, at most [`MAX_STATE_LEN`] bytes — the shape of pod states and of pod reports.
pub(crate) fn parse_triple(value: &str) -> Result<(u64, u64, RoutingState), BadTriple> {
    if value.len() > MAX_STATE_LEN {
        return Err(BadTriple::TooLong);
    }
    let mut parts = value.split('-');
    let (Some(a), Some(b), Some(state), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(BadTriple::Shape);
    };
    let a = parse_decimal(a).ok_or(BadTriple::First)?;
    let b = parse_decimal(b).ok_or(BadTriple::Second)?;
    let routing = RoutingState::parse_ordinal(state).map_err(|_| BadTriple::Routing)?;
    Ok((a, b, routing))
}

/// A decimal u64: digits only (leading zeros allowed), no sign, no space.
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Keeps error messages bounded when a hash holds a huge garbage value.
pub fn truncate(value: &str) -> String {
    const MAX: usize = 80;
    if value.len() <= MAX {
        return value.to_owned();
    }
    let mut end = MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…({} bytes)", &value[..end], value.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_the_wire_format() {
        let s = PodState::new(120, 1_764_000_000_123, RoutingState::DenyNewCall);
        assert_eq!(s.encode(), "120-1764000000123-1");
        assert_eq!(PodState::parse("120-1764000000123-1"), Ok(s));
        assert_eq!(PodState::parse("0-0-0"), Ok(PodState::new(0, 0, RoutingState::Ready)));
    }

    #[test]
    fn rejects_garbage_naming_the_value() {
        for bad in [
            "",
            "-",
            "1-2",
            "1-2-3",
            "1-2-0-4",
            "-1-2-0",
            "a-2-0",
            "1-b-0",
            "1-2-x",
            " 1-2-0",
            "1-2-0 ",
            "+1-2-0",
            "1--0",
            "1-2-",
            "99999999999999999999999-1-0",
            "state",
            "READY",
            "1.5-2-0",
        ] {
            let err = PodState::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    #[test]
    fn oversized_values_are_rejected_and_truncated_in_errors() {
        let huge = "7".repeat(10_000);
        let msg = PodState::parse(&huge).unwrap_err().to_string();
        assert!(msg.len() < 300, "{msg}");
        assert!(msg.contains("10000 bytes"));
    }

    #[test]
    fn the_length_limit_is_inclusive() {
        // 64 bytes: a load padded with leading zeros.
        let at_limit = format!("{}-1-0", "0".repeat(MAX_STATE_LEN - 4));
        assert_eq!(at_limit.len(), MAX_STATE_LEN);
        assert_eq!(PodState::parse(&at_limit), Ok(PodState::new(0, 1, RoutingState::Ready)));
        let over = format!("0{at_limit}");
        assert!(PodState::parse(&over).unwrap_err().to_string().contains("too long"));
    }

    #[test]
    fn truncation_cuts_at_a_char_boundary_below_the_limit() {
        // Byte 80 falls inside the first 'é' (bytes 79..81): the cut moves back to 79.
        let value = format!("{}{}", "a".repeat(79), "é".repeat(10));
        assert_eq!(truncate(&value), format!("{}…(99 bytes)", "a".repeat(79)));
        assert_eq!(truncate("short"), "short");
        let exactly = "b".repeat(80);
        assert_eq!(truncate(&exactly), exactly);
    }

    #[test]
    fn freshness_uses_the_window_inclusively() {
        let s = PodState::new(0, 10_000, RoutingState::Ready);
        assert!(s.is_fresh(10_000, 0));
        assert!(s.is_fresh(40_000, 30_000));
        assert!(!s.is_fresh(40_001, 30_000));
        assert!(s.is_fresh(5_000, 0), "a state from the future is fresh");
    }

    /// One `-`-separated field as a writer might get it right or wrong: digits (with leading
    /// zeros, or too many for a u64), empty, signed, spaced or not a number.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[0-2]",
            4 => "0{0,2}[0-9]{1,20}",
            1 => "[0-9]{21,23}",
            1 => Just(String::new()),
            1 => "[+ ][0-9]{1,3}",
            1 => "[0-9]{1,3}[ .a]",
            1 => Just("18446744073709551616".to_owned()),
            1 => Just("18446744073709551615".to_owned()),
        ]
    }

    /// The wire grammar, written independently of the parser: exactly three fields, at most 64
    /// bytes in all, the first two decimal digit strings (leading zeros allowed) whose value fits
    /// a u64, the last one of `0`, `1`, `2`. Values compared as text, not parsed.
    fn grammar(fields: &[String], len: usize) -> Option<(u64, u64, u8)> {
        const U64_MAX: &str = "18446744073709551615";
        let number = |f: &str| {
            let digits = f.trim_start_matches('0');
            let fits = digits.len() < 20 || (digits.len() == 20 && digits <= U64_MAX);
            (!f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()) && fits)
                .then(|| digits.bytes().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
        };
        let [load, ts, r] = fields else { return None };
        let r = match r.as_str() {
            "0" => 0,
            "1" => 1,
            "2" => 2,
            _ => return None,
        };
        if len > 64 {
            return None;
        }
        Some((number(load)?, number(ts)?, r))
    }

    proptest! {
        #[test]
        fn round_trips(load in any::<u64>(), ts in any::<u64>(), ord in 0u8..3) {
            let s = PodState::new(load, ts, RoutingState::from_ordinal(ord).unwrap());
            prop_assert_eq!(PodState::parse(&s.encode()), Ok(s));
        }

        #[test]
        fn parse_never_panics(value in ".{0,100}") {
            let _ = PodState::parse(&value);
        }

        #[test]
        fn parse_accepts_exactly_the_grammar(fields in proptest::collection::vec(field(), 1..5)) {
            let value = fields.join("-");
            match (PodState::parse(&value), grammar(&fields, value.len())) {
                (Ok(s), Some((load, ts, r))) => {
                    prop_assert_eq!((s.weighted_load, s.updated_at_ms, s.routing.ordinal()), (load, ts, r));
                }
                (Err(_), None) => {}
                (got, want) => prop_assert!(false, "{:?}: parsed {:?}, the grammar says {:?}", value, got, want),
            }
        }

    }
}
