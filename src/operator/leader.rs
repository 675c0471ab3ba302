//! Lease-based leader election on `coordination.k8s.io/v1` Leases.
//!
//! A pure decision core ([`decide`]) and a thin async loop ([`run`]). Only the holder writes
//! Redis and status. The holder renews every `renew_every`; a renewal that fails (error,
//! conflict, timeout) drops leadership at once, so a replica that may have lost the lease never
//! keeps writing. Others take over once `renewTime + leaseDurationSeconds` has passed; on a
//! graceful shutdown the holder releases the lease (empty holder) so a standby takes over within
//! one retry instead of one lease duration.
//!
//! Leadership reaches the writers as a [`Claim`] with an expiry, not as a flag: every write
//! checks [`Leadership::holds`] against the clock, so a renewal that hangs stops the writes when
//! the claim runs out, even before the election loop notices.

use crate::core::ErrorChain;
use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, time::Instant};

/// Default lease duration.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default renew/retry period.
pub const DEFAULT_RENEW_EVERY: Duration = Duration::from_secs(2);

/// Where and as whom to hold the lease.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    /// Lease name.
    pub name: String,
    /// Lease namespace.
    pub namespace: String,
    /// This replica's identity (e.g. its pod name); must be unique among replicas.
    pub identity: String,
    /// How long a holder's claim is valid after its last renewal.
    pub duration: Duration,
    /// How often the holder renews and a standby retries.
    pub renew_every: Duration,
}

impl LeaseConfig {
    /// A config with the default duration (15 s) and renew period (2 s).
    pub fn new(namespace: impl Into<String>, name: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: DEFAULT_LEASE_DURATION,
            renew_every: DEFAULT_RENEW_EVERY,
        }
    }

    /// The timing rule: a holder must be able to miss a renewal and still hold its claim, so the
    /// renew period is less than half the duration (and neither is zero). The chart's values
    /// schema and the CLI's flags are checked against this.
    pub fn validate(&self) -> Result<(), LeaseConfigError> {
        check_timing(self.duration, self.renew_every)?;
        if self.identity.is_empty() || self.name.is_empty() || self.namespace.is_empty() {
            return Err(LeaseConfigError::Empty {
                field: if self.identity.is_empty() {
                    "identity"
                } else if self.name.is_empty() {
                    "name"
                } else {
                    "namespace"
                },
            });
        }
        Ok(())
    }

    /// How long a successful renewal lets this replica write, from the moment it started: one
    /// renew period less than the duration, so the claim runs out before any other replica may
    /// take the lease (which it can only at `renewTime + duration`).
    pub fn claim_validity(&self) -> Duration {
        self.duration.saturating_sub(self.renew_every)
    }
}

/// The timing rule of [`LeaseConfig::validate`], for callers that check it before the rest of
/// the configuration is known (the CLI's flags).
pub fn check_timing(duration: Duration, renew: Duration) -> Result<(), LeaseConfigError> {
    if renew.is_zero() || duration.as_secs() == 0 || renew * 2 >= duration {
        return Err(LeaseConfigError::Timing { duration, renew });
    }
    Ok(())
}

/// A lease configuration that breaks the timing rule ([`LeaseConfig::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseConfigError {
    /// The renew period is not less than half the duration.
    #[error(
        "lease renew period {renew:?} must be non-zero and less than half the lease duration {duration:?} (renew × 2 < duration)"
    )]
    Timing {
        /// The lease duration.
        duration: Duration,
        /// The renew period.
        renew: Duration,
    },
    /// The lease name, namespace or identity is empty.
    #[error("the lease {field} must not be empty")]
    Empty {
        /// Which one.
        field: &'static str,
    },
}

/// This replica's claim on the lease: it may write until `expires` (monotonic time) unless the
/// claim is renewed before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// When the claim runs out.
    pub expires: Instant,
}

impl Claim {
    /// A claim that never runs out (a single replica without leader election).
    pub fn unlimited() -> Self {
        // ~30 years: far beyond any process' life, and far from `Instant`'s overflow.
        Self { expires: Instant::now() + Duration::from_secs(30 * 365 * 24 * 3600) }
    }

    /// Whether the claim is valid at `now`.
    pub fn valid_at(&self, now: Instant) -> bool {
        now < self.expires
    }
}

/// Leadership as the writers see it: the current claim, checked against the clock at each write.
/// Receivers are woken when leadership is gained or lost, not at each renewal.
#[derive(Debug, Clone)]
pub struct Leadership(watch::Receiver<Option<Claim>>);

impl Leadership {
    /// A sender of claims and the leadership it feeds, holding `initial`.
    pub fn channel(initial: Option<Claim>) -> (watch::Sender<Option<Claim>>, Leadership) {
        let (tx, rx) = watch::channel(initial);
        (tx, Leadership(rx))
    }

    /// Whether this replica may write now.
    pub fn holds(&self) -> bool {
        self.0.borrow().is_some_and(|c| c.valid_at(Instant::now()))
    }

    /// Like [`Leadership::holds`], and marks the current value seen (see [`Leadership::changed`]).
    pub fn holds_and_update(&mut self) -> bool {
        self.0.borrow_and_update().is_some_and(|c| c.valid_at(Instant::now()))
    }

    /// Waits until leadership is gained or lost after the value last seen; `Err` when the
    /// election has stopped.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.0.changed().await
    }
}

/// Publishes `claim` (this round's outcome) to the writers, waking them only when holding
/// changes: the previous claim had run out or was absent and this one holds, or the reverse.
fn publish_claim(tx: &watch::Sender<Option<Claim>>, claim: Option<Claim>, now: Instant) -> bool {
    tx.send_if_modified(|current| {
        let was = current.is_some_and(|c| c.valid_at(now));
        let is = claim.is_some_and(|c| c.valid_at(now));
        *current = claim;
        was != is
    })
}

/// What to do with the lease as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew it.
    Renew,
    /// Nobody holds it (absent, released or expired): take it; `transition` when the holder changes.
    Acquire {
        /// The holder changes (leaseTransitions is incremented).
        transition: bool,
    },
    /// Someone else holds it until `expires`.
    Follow {
        /// The current holder.
        holder: String,
        /// When their claim expires unless renewed.
        expires: Timestamp,
    },
}

/// The pure decision: given the lease's spec (if the Lease exists), our identity and the time.
/// A lease without a renew time or duration counts as expired.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else { return Decision::Acquire { transition: false } };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire { transition: true };
    }
    if holder == identity {
        return Decision::Renew;
    }
    let expires = match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(secs)) if secs > 0 => {
            renewed.checked_add(SignedDuration::from_secs(i64::from(secs))).unwrap_or(*renewed)
        }
        _ => return Decision::Acquire { transition: true },
    };
    if now >= expires {
        Decision::Acquire { transition: true }
    } else {
        Decision::Follow { holder: holder.to_owned(), expires }
    }
}

/// The spec to write when acquiring or renewing.
pub fn claimed(
    old: Option<&LeaseSpec>,
    decision: &Decision,
    identity: &str,
    duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let mut spec = old.cloned().unwrap_or_default();
    let secs = i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX);
    spec.holder_identity = Some(identity.to_owned());
    spec.lease_duration_seconds = Some(secs);
    spec.renew_time = Some(MicroTime(now));
    if let Decision::Acquire { transition } = decision {
        spec.acquire_time = Some(MicroTime(now));
        if *transition {
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
    }
    spec
}

/// Runs the election until `shutdown` turns true, publishing this replica's claim on `leader`;
/// on shutdown, releases the lease if held. The claim is withdrawn at once on any renewal
/// failure, and runs out by itself if a renewal hangs.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<Option<Claim>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    loop {
        let started = Instant::now();
        let (held, expires) = match tokio::time::timeout(config.renew_every, attempt(&api, &config)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::warn!(lease = %config.name, error = %e.chain(), "lease renewal failed; not writing until it succeeds");
                (false, None)
            }
            Err(_) => {
                tracing::warn!(lease = %config.name, "lease renewal timed out; not writing until it succeeds");
                (false, None)
            }
        };
        let claim = held.then(|| Claim { expires: started + config.claim_validity() });
        if publish_claim(&leader, claim, Instant::now()) {
            tracing::info!(lease = %config.name, identity = %config.identity, leader = held, "leadership changed");
        }
        // A standby retries right when the holder's claim expires, not up to a period later.
        let wait = expires
            .and_then(|e| Duration::try_from(e.duration_since(Timestamp::now())).ok())
            .map_or(config.renew_every, |until| config.renew_every.min(until + Duration::from_millis(20)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    let was_leader = leader.borrow().is_some_and(|c| c.valid_at(Instant::now()));
    leader.send_replace(None);
    if was_leader && let Err(e) = release(&api, &config).await {
        tracing::warn!(lease = %config.name, error = %e.chain(), "releasing the lease failed; it expires on its own");
    }
}

/// One election round: whether we hold the lease afterwards, and when another holder's claim
/// expires.
async fn attempt(api: &Api<Lease>, config: &LeaseConfig) -> Result<(bool, Option<Timestamp>), kube::Error> {
    let now = Timestamp::now();
    let current = api.get_opt(&config.name).await?;
    let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &config.identity, now);
    if let Decision::Follow { expires, .. } = decision {
        return Ok((false, Some(expires)));
    }
    let spec =
        claimed(current.as_ref().and_then(|l| l.spec.as_ref()), &decision, &config.identity, config.duration, now);
    let result = match current {
        // Replace carries the resourceVersion we read: a concurrent claim makes it fail (409).
        Some(mut lease) => {
            lease.spec = Some(spec);
            api.replace(&config.name, &PostParams::default(), &lease).await.map(|_| ())
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(config.name.clone()), ..Default::default() },
                spec: Some(spec),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok((true, None)),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok((false, None)),
        Err(e) => Err(e),
    }
}

async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<(), kube::Error> {
    let Some(mut lease) = api.get_opt(&config.name).await? else { return Ok(()) };
    let Some(spec) = lease.spec.as_mut() else { return Ok(()) };
    if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
        return Ok(());
    }
    spec.holder_identity = None;
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    spec.lease_duration_seconds = Some(1);
    api.replace(&config.name, &PostParams::default(), &lease).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn spec(holder: Option<&str>, renewed: Option<i64>, secs: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            renew_time: renewed.map(|s| MicroTime(ts(s))),
            lease_duration_seconds: secs,
            ..Default::default()
        }
    }

    #[test]
    fn the_timing_rule_is_renew_twice_below_duration() {
        let with = |duration, renew| LeaseConfig {
            duration: Duration::from_secs(duration),
            renew_every: Duration::from_secs(renew),
            ..LeaseConfig::new("ns", "lease", "pod-0")
        };
        assert_eq!(with(15, 2).validate(), Ok(()));
        assert_eq!(with(5, 2).validate(), Ok(()));
        for (d, r) in [(4, 2), (15, 8), (15, 0), (0, 0), (1, 1)] {
            let err = with(d, r).validate().unwrap_err();
            assert!(matches!(err, LeaseConfigError::Timing { .. }), "{d}/{r}: {err}");
        }
        assert_eq!(with(15, 2).claim_validity(), Duration::from_secs(13));
        let empty = LeaseConfig { identity: String::new(), ..with(15, 2) };
        assert_eq!(empty.validate(), Err(LeaseConfigError::Empty { field: "identity" }));
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_runs_out_without_renewal_and_wakes_writers_only_on_changes() {
        let (tx, mut leadership) = Leadership::channel(None);
        assert!(!leadership.holds_and_update());
        let now = Instant::now();
        let claim = |secs| Some(Claim { expires: now + Duration::from_secs(secs) });
        assert!(publish_claim(&tx, claim(10), now), "gained");
        assert!(leadership.holds_and_update());
        // A renewal extends the claim quietly.
        assert!(!publish_claim(&tx, claim(12), now + Duration::from_secs(2)));
        assert!(!leadership.0.has_changed().unwrap());
        // Nobody renews: the claim runs out by itself, with no message.
        tokio::time::advance(Duration::from_secs(12)).await;
        assert!(!leadership.holds());
        // A failed round after that is no change; a renewal after the lapse is a new term.
        assert!(!publish_claim(&tx, None, Instant::now()));
        assert!(publish_claim(&tx, Some(Claim { expires: Instant::now() + Duration::from_secs(5) }), Instant::now()));
        assert!(leadership.holds_and_update());
        assert!(publish_claim(&tx, None, Instant::now()), "lost");
        assert!(!leadership.holds());
        assert!(Claim::unlimited().valid_at(Instant::now() + Duration::from_secs(3600 * 24 * 365)));
    }

    #[test]
    fn absent_lease_is_acquired_without_transition() {
        assert_eq!(decide(None, "a", ts(100)), Decision::Acquire { transition: false });
    }

    #[test]
    fn own_lease_is_renewed_even_when_expired() {
        assert_eq!(decide(Some(&spec(Some("a"), Some(0), Some(15))), "a", ts(1000)), Decision::Renew);
    }

    #[test]
    fn foreign_lease_is_followed_until_it_expires() {
        let s = spec(Some("b"), Some(100), Some(15));
        assert_eq!(decide(Some(&s), "a", ts(100)), Decision::Follow { holder: "b".into(), expires: ts(115) });
        assert_eq!(decide(Some(&s), "a", ts(114)), Decision::Follow { holder: "b".into(), expires: ts(115) });
        assert_eq!(decide(Some(&s), "a", ts(115)), Decision::Acquire { transition: true });
        assert_eq!(decide(Some(&s), "a", ts(500)), Decision::Acquire { transition: true });
    }

    #[test]
    fn released_or_incomplete_leases_are_acquired() {
        for s in [
            spec(None, Some(100), Some(15)),
            spec(Some(""), Some(100), Some(15)),
            spec(Some("b"), None, Some(15)),
            spec(Some("b"), Some(100), None),
            spec(Some("b"), Some(100), Some(0)),
            // A zero or negative duration is no claim, even with a renew time ahead of our clock.
            spec(Some("b"), Some(200), Some(0)),
            spec(Some("b"), Some(200), Some(-5)),
        ] {
            assert_eq!(decide(Some(&s), "a", ts(100)), Decision::Acquire { transition: true }, "{s:?}");
        }
    }

    #[test]
    fn claiming_sets_holder_times_and_counts_transitions() {
        let old = LeaseSpec { lease_transitions: Some(3), ..spec(Some("b"), Some(1), Some(15)) };
        let s = claimed(Some(&old), &Decision::Acquire { transition: true }, "a", Duration::from_secs(15), ts(50));
        assert_eq!(s.holder_identity.as_deref(), Some("a"));
        assert_eq!((s.lease_duration_seconds, s.lease_transitions), (Some(15), Some(4)));
        assert_eq!((&s.renew_time, &s.acquire_time), (&Some(MicroTime(ts(50))), &Some(MicroTime(ts(50)))));
        let r = claimed(Some(&s), &Decision::Renew, "a", Duration::from_secs(15), ts(52));
        assert_eq!(
            (r.renew_time, r.acquire_time, r.lease_transitions),
            (Some(MicroTime(ts(52))), Some(MicroTime(ts(50))), Some(4))
        );
        let first = claimed(None, &Decision::Acquire { transition: false }, "a", Duration::from_secs(15), ts(1));
        assert_eq!(first.lease_transitions, None);
    }
}
