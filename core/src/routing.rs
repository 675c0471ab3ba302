//! Routing state of a pod, its wire ordinal and the "most restrictive wins" rule.

use std::{fmt, str::FromStr};

/// Whether a pod takes new users, keeps only its linked users, or takes nothing.
///
/// The declaration order is the restrictiveness order, so `max` is "most restrictive wins".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum RoutingState {
    /// Accepts new users and keeps linked ones. Wire ordinal 0.
    #[default]
    Ready,
    /// Draining: keeps the users already linked to it, takes no new ones. Wire ordinal 1.
    DenyNewCall,
    /// Nothing may be routed to the pod. Wire ordinal 2.
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingStateError {
    #[error("unknown routing state ordinal {0:?} (expected 0 READY, 1 DENY_NEW_CALL or 2 SHUTDOWN)")]
    BadOrdinal(String),
    #[error("unknown routing state {0:?} (expected Ready, DenyNewCall or Shutdown)")]
    BadName(String),
}

impl RoutingState {
    pub const ALL: [RoutingState; 3] = [RoutingState::Ready, RoutingState::DenyNewCall, RoutingState::Shutdown];

    /// The wire ordinal (READY=0, DENY_NEW_CALL=1, SHUTDOWN=2).
    pub fn ordinal(self) -> u8 {
        match self {
            RoutingState::Ready => 0,
            RoutingState::DenyNewCall => 1,
            RoutingState::Shutdown => 2,
        }
    }

    pub fn from_ordinal(ordinal: u8) -> Option<Self> {
        Self::ALL.get(usize::from(ordinal)).copied()
    }

    /// Parses a wire ordinal given as text ("0", "1", "2").
    pub fn parse_ordinal(text: &str) -> Result<Self, RoutingStateError> {
        text.parse::<u8>()
            .ok()
            .filter(|_| text.len() == 1)
            .and_then(Self::from_ordinal)
            .ok_or_else(|| RoutingStateError::BadOrdinal(text.to_owned()))
    }

    /// The original's upper-case name (READY, DENY_NEW_CALL, SHUTDOWN).
    pub fn wire_name(self) -> &'static str {
        match self {
            RoutingState::Ready => "READY",
            RoutingState::DenyNewCall => "DENY_NEW_CALL",
            RoutingState::Shutdown => "SHUTDOWN",
        }
    }

    /// The Kubernetes-style name used in the CRD and pod annotations (Ready, DenyNewCall, Shutdown).
    pub fn kube_name(self) -> &'static str {
        match self {
            RoutingState::Ready => "Ready",
            RoutingState::DenyNewCall => "DenyNewCall",
            RoutingState::Shutdown => "Shutdown",
        }
    }

    /// The most restrictive of two states.
    pub fn most_restrictive(self, other: Self) -> Self {
        self.max(other)
    }

    /// Whether new users may be placed on a pod in this state.
    pub fn accepts_new(self) -> bool {
        self == RoutingState::Ready
    }

    /// Whether users already linked to a pod in this state keep reaching it.
    pub fn keeps_linked(self) -> bool {
        self != RoutingState::Shutdown
    }
}

impl fmt::Display for RoutingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire_name())
    }
}

impl FromStr for RoutingState {
    type Err = RoutingStateError;

    /// Accepts the Kubernetes names (Ready, DenyNewCall, Shutdown) and the wire names
    /// (READY, DENY_NEW_CALL, SHUTDOWN).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "Ready" | "READY" => Ok(RoutingState::Ready),
            "DenyNewCall" | "DENY_NEW_CALL" => Ok(RoutingState::DenyNewCall),
            "Shutdown" | "SHUTDOWN" => Ok(RoutingState::Shutdown),
            other => Err(RoutingStateError::BadName(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinals_are_the_wire_contract() {
        assert_eq!(RoutingState::Ready.ordinal(), 0);
        assert_eq!(RoutingState::DenyNewCall.ordinal(), 1);
        assert_eq!(RoutingState::Shutdown.ordinal(), 2);
        for s in RoutingState::ALL {
            assert_eq!(RoutingState::from_ordinal(s.ordinal()), Some(s));
            assert_eq!(RoutingState::parse_ordinal(&s.ordinal().to_string()), Ok(s));
            assert_eq!(s.kube_name().parse(), Ok(s));
            assert_eq!(s.wire_name().parse(), Ok(s));
        }
        assert_eq!(RoutingState::from_ordinal(3), None);
    }

    #[test]
    fn display_is_the_wire_name() {
        assert_eq!(RoutingState::ALL.map(|s| s.to_string()), ["READY", "DENY_NEW_CALL", "SHUTDOWN"]);
    }

    #[test]
    fn bad_ordinals_are_rejected_with_the_input() {
        for bad in ["3", "-1", "", "00", " 0", "READY", "1.0"] {
            let err = RoutingState::parse_ordinal(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!("ready".parse::<RoutingState>().is_err());
    }

    #[test]
    fn most_restrictive_wins() {
        use RoutingState::*;
        let table = [
            (Ready, Ready, Ready),
            (Ready, DenyNewCall, DenyNewCall),
            (Ready, Shutdown, Shutdown),
            (DenyNewCall, Ready, DenyNewCall),
            (DenyNewCall, DenyNewCall, DenyNewCall),
            (DenyNewCall, Shutdown, Shutdown),
            (Shutdown, Ready, Shutdown),
            (Shutdown, DenyNewCall, Shutdown),
            (Shutdown, Shutdown, Shutdown),
        ];
        for (a, b, want) in table {
            assert_eq!(a.most_restrictive(b), want, "{a} vs {b}");
        }
    }

    #[test]
    fn admission_rules() {
        assert!(RoutingState::Ready.accepts_new() && RoutingState::Ready.keeps_linked());
        assert!(!RoutingState::DenyNewCall.accepts_new() && RoutingState::DenyNewCall.keeps_linked());
        assert!(!RoutingState::Shutdown.accepts_new() && !RoutingState::Shutdown.keeps_linked());
    }
}
