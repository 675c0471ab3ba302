//! Lease-based leader election on `coordination.k8s.io/v1` Leases.
//!
//! A pure decision core ([`decide`]) and a thin async loop ([`run`]). Only the holder writes
//! Redis and status. The holder renews every `renew_every`; a renewal that fails (error,
//! conflict, timeout) drops leadership at once, so a replica that may have lost the lease never
//! keeps writing. Others take over once `renewTime + leaseDurationSeconds` has passed; on a
//! graceful shutdown the holder releases the lease (empty holder) so a standby takes over within
//! one retry instead of one lease duration.

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
use tokio::sync::watch;

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

/// Runs the election until `shutdown` turns true, publishing leadership on `leader`; on
/// shutdown, releases the lease if held. Leadership is dropped at once on any renewal failure.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    leader: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    loop {
        let (held, expires) = match tokio::time::timeout(config.renew_every, attempt(&api, &config)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(e)) => {
                tracing::warn!(lease = %config.name, error = %e, "lease renewal failed; not writing until it succeeds");
                (false, None)
            }
            Err(_) => {
                tracing::warn!(lease = %config.name, "lease renewal timed out; not writing until it succeeds");
                (false, None)
            }
        };
        leader.send_if_modified(|was| {
            if *was != held {
                tracing::info!(lease = %config.name, identity = %config.identity, leader = held, "leadership changed");
                *was = held;
                true
            } else {
                false
            }
        });
        // A standby retries right when the holder's claim expires, not up to a period later.
        let wait = expires
            .and_then(|e| Duration::try_from(e.duration_since(Timestamp::now())).ok())
            .map_or(config.renew_every, |until| config.renew_every.min(until + Duration::from_millis(20)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    let was_leader = *leader.borrow();
    leader.send_replace(false);
    if was_leader && let Err(e) = release(&api, &config).await {
        tracing::warn!(lease = %config.name, error = %e, "releasing the lease failed; it expires on its own");
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
