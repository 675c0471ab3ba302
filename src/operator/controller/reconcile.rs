//! One reconcile of one RouteState: plan (pure derivation from the caches), Events (a pure diff
//! against what was seen last, [`super::events`]), status (server-side apply, skipped when
//! unchanged). Only the lease holder writes; a standby keeps its plan warm and writes nothing.

use std::{sync::Arc, time::Duration};

use tokio::time::Instant;

use k8s_openapi::{api::core::v1::ObjectReference, apimachinery::pkg::apis::meta::v1::Time};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
        finalizer::{Event as Finalizer, finalizer},
        reflector::ObjectRef,
    },
};

use super::{Context, FIELD_MANAGER, FINALIZER, events::Note};
use crate::{
    core::{ErrorChain, ServicePlan},
    operator::{
        crd::{RouteState, RouteStateStatus},
        derive::{self, Derived, PodFacts, StatusInput},
        error::{Error, Result},
    },
};

/// Level-triggered safety net: every RouteState is re-reconciled at least this often.
const RESYNC: Duration = Duration::from_secs(300);
/// The shortest interval between two status patches of one RouteState: under pod churn the
/// status changes with every pod, and each patch is a write to an API server that is busy too.
/// A change within it is written when it ends (the reconcile is requeued), the latest one only.
pub const STATUS_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How long a status patch must wait, given when the last one of the RouteState was sent.
pub fn status_patch_wait(last: Option<Instant>, now: Instant) -> Option<Duration> {
    let next = last? + STATUS_MIN_INTERVAL;
    (now < next).then(|| next - now)
}

/// Reason of the Warning Event of a failed reconcile.
pub const RECONCILE_FAILED: &str = "ReconcileFailed";

/// A finalizer patch refused because the reconcile saw an object older than the server's (its
/// JSON-patch `test` failed): routine right after creation, when another trigger reconciles
/// before the watch delivers the object with the finalizer just added. Retried at once, quietly.
pub(super) fn is_stale_finalizer_patch(error: &Error) -> bool {
    use kube::runtime::finalizer::Error as F;
    let Error::Finalizer(e) = error else { return false };
    matches!(e.as_ref(), F::AddFinalizer(kube::Error::Api(s)) | F::RemoveFinalizer(kube::Error::Api(s))
        if s.code == 422 || s.is_conflict())
}

/// Whether a failed reconcile is told in a `ReconcileFailed` Event: not a routine stale
/// finalizer patch, and not on a replica that may not write.
pub(super) fn tells_failure(error: &Error, leading: bool) -> bool {
    leading && !is_stale_finalizer_patch(error) && !matches!(error, Error::NotLeader(_))
}

/// Counts and logs a failed reconcile and chooses its retry (its Event is recorded from the
/// controller's stream, see [`super::build`]).
pub(super) fn error_policy(rs: Arc<RouteState>, error: &Error, ctx: Arc<Context>) -> Action {
    if is_stale_finalizer_patch(error) {
        tracing::debug!(routestate = %ObjectRef::from_obj(rs.as_ref()), error = %error.chain(), "finalizer patch on a stale object; retrying");
        return Action::requeue(Duration::from_millis(200));
    }
    ctx.metrics.error(error.metric_label());
    tracing::warn!(routestate = %ObjectRef::from_obj(rs.as_ref()), error = %error.chain(), "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

pub(super) async fn reconcile(rs: Arc<RouteState>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    let ns = rs.namespace().ok_or_else(|| Error::Incomplete {
        kind: "RouteState",
        name: rs.name_any(),
        field: "metadata.namespace",
    })?;
    // Reconciling before the caches are filled would publish an empty pod set.
    ctx.synced.dependents().await;

    if !ctx.leader.holds() {
        // Standby: keep the plan warm so a new term publishes at once; write nothing.
        let key = ObjectRef::from_obj(rs.as_ref());
        let owns = owner_of(&ctx, &ns, &rs.service_name()).is_some_and(|o| o == rs.name_any());
        if rs.meta().deletion_timestamp.is_none() && owns {
            let (plan, _) = plan_for(&rs, &ns, &ctx);
            ctx.publisher.set_plan(key, plan);
        } else {
            ctx.publisher.forget(&key);
        }
        return Ok(Action::await_change());
    }
    let api: Api<RouteState> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, rs, |event| async {
        match event {
            Finalizer::Apply(rs) => apply(rs, &ns, &ctx).await,
            Finalizer::Cleanup(rs) => cleanup(rs, &ns, &ctx).await,
        }
    })
    .await
    .map_err(Error::from_finalizer)
}

/// The plan for a RouteState and its derivation, with the findings of every pod (`None` when
/// its StatefulSet is missing: then the plan publishes no pod).
fn plan_for(rs: &RouteState, ns: &str, ctx: &Context) -> (ServicePlan, Option<Derived>) {
    let sts_name = rs.stateful_set_name();
    let service = rs.service_name();
    let sts = ctx.statefulsets.get(&ObjectRef::new(&sts_name).within(ns));
    let derived = sts.map(|sts| {
        let replicas = sts.spec.replicas.unwrap_or(1).max(0) as u32;
        // This StatefulSet's pods only: the index keeps them apart from the fleet's.
        let mut findings = Vec::new();
        let facts: Vec<PodFacts> =
            ctx.pods.facts(ns, &sts_name).into_iter().filter_map(|f| f.map_err(|f| findings.push(f)).ok()).collect();
        let mut derived = derive::derive(&rs.spec, replicas, &facts);
        findings.append(&mut derived.findings);
        derived.findings = findings;
        derived
    });
    let plan = match &derived {
        Some(d) => d.plan(ns, &service, &rs.spec),
        None => Derived::empty(0).plan(ns, &service, &rs.spec),
    };
    (plan, derived)
}

/// Hands the publisher a new plan for a RouteState whose inputs changed (its spec, or its pods'
/// facts), without waiting for its reconcile: the controller runs one reconcile of an object at
/// a time, and a running one may be waiting for its Events and status patch on a busy API server
/// (a drain right after another, or pods that became Ready during a large scale-up, waited for
/// that). Only a plan the publisher already holds for the same service is replaced: the
/// reconcile settles the finalizer and the service's owner first (a renamed service waits for
/// it), and the reconcile that the same change triggers does the rest.
pub(super) fn follow(ctx: &Context, key: &ObjectRef<RouteState>) {
    let Some(rs) = ctx.routestates.get(key) else { return };
    let Some(ns) = rs.namespace() else { return };
    if rs.meta().deletion_timestamp.is_some() || !ctx.publisher.holds_plan(key) {
        return;
    }
    let (plan, _) = plan_for(&rs, &ns, ctx);
    let pods = plan.pods.len();
    if ctx.publisher.replace_plan(key.clone(), plan) {
        tracing::debug!(routestate = %key, pods, changed = true, "plan followed");
    }
}

/// The RouteState of namespace `ns` that publishes Redis service `service` (see
/// [`derive::service_owner`]), from the cache.
fn owner_of(ctx: &Context, ns: &str, service: &str) -> Option<String> {
    let all = ctx.routestates.state();
    let claims: Vec<derive::Claim<'_>> = all
        .iter()
        .filter(|rs| rs.namespace().as_deref() == Some(ns) && rs.service_name() == service)
        .map(|rs| derive::Claim {
            name: rs.meta().name.as_deref().unwrap_or_default(),
            created: rs.meta().creation_timestamp.as_ref(),
            deleting: rs.meta().deletion_timestamp.is_some(),
        })
        .collect();
    derive::service_owner(&claims).map(str::to_owned)
}

/// Reconciles again every other RouteState of `ns` naming `service`: its owner changed, so one
/// of them may have to take it over or stop.
fn retrigger_service(ctx: &Context, ns: &str, service: &str, except: &ObjectRef<RouteState>) {
    for rs in ctx.routestates.state() {
        let key = ObjectRef::from_obj(rs.as_ref());
        if rs.namespace().as_deref() == Some(ns) && rs.service_name() == service && &key != except {
            ctx.publisher.retrigger(key);
        }
    }
}

async fn apply(rs: Arc<RouteState>, ns: &str, ctx: &Context) -> Result<Action> {
    let started = std::time::Instant::now();
    let key = ObjectRef::from_obj(rs.as_ref());
    let service = rs.service_name();
    let owner = owner_of(ctx, ns, &service);
    // The owner of this service, or of the one this RouteState named before, changed: the other
    // RouteStates naming them reconcile again.
    let (changed, renamed) = ctx.seen(&key, |seen| seen.service_seen(&service, owner.as_deref()));
    if changed {
        retrigger_service(ctx, ns, &service, &key);
        if let Some(old) = renamed {
            retrigger_service(ctx, ns, &old, &key);
        }
    }
    if let Some(owner) = owner.filter(|o| *o != rs.name_any()) {
        return apply_conflict(&rs, ns, ctx, &service, &owner).await;
    }

    // Plan.
    let (plan, derived) = plan_for(&rs, ns, ctx);
    let changed = ctx.publisher.set_plan(key.clone(), plan.clone());
    let plan_us = started.elapsed().as_micros() as u64;
    tracing::debug!(routestate = %key, pods = plan.pods.len(), statefulset_found = derived.is_some(), changed, plan_us, "plan set");

    // Events.
    let mut notes =
        ctx.seen(&key, |seen| seen.publishing(&service, &rs.stateful_set_name(), derived.as_ref(), &plan.pods));
    if let Some(loss) = ctx.publisher.take_data_loss(&key) {
        let note = format!("{loss}; republished every pod state of service {service} at once");
        notes.push(Note {
            type_: EventType::Warning,
            reason: "RedisDataLost",
            action: "Republish".into(),
            pod: None,
            folds: true,
            note,
        });
    }
    let events = notes.len();
    record(ctx, &rs, ns, notes).await;
    let events_us = started.elapsed().as_micros() as u64 - plan_us;

    // Status.
    let (statefulset, sync) = (rs.stateful_set_name(), ctx.publisher.sync_state(&key));
    let status = derive::compute_status(&StatusInput {
        old: rs.status.as_ref(),
        generation: rs.meta().generation,
        statefulset: &statefulset,
        service: &service,
        derived: derived.as_ref(),
        sync: &sync,
        owner: None,
        now: &Time(k8s_openapi::jiff::Timestamp::now()),
    });
    let waited = patch_status(&rs, ns, ctx, status).await?;
    let status_us = started.elapsed().as_micros() as u64 - plan_us - events_us;
    tracing::debug!(routestate = %key, events, plan_us, events_us, status_us, "reconciled");
    Ok(Action::requeue(waited.unwrap_or(RESYNC)))
}

/// A RouteState whose service another, older RouteState publishes: it publishes nothing (its
/// keys, if it published before, go unless the owner publishes them), says so in its status, and
/// once in a Warning Event.
async fn apply_conflict(rs: &RouteState, ns: &str, ctx: &Context, service: &str, owner: &str) -> Result<Action> {
    let key = ObjectRef::from_obj(rs);
    ctx.publisher.withdraw(&key);
    // After the withdrawal, so no tick re-creates them: its service's series are the owner's.
    ctx.metrics.forget(&key);
    let note = ctx.seen(&key, |seen| seen.conflicting(service, owner));
    record(ctx, rs, ns, note.into_iter().collect()).await;
    let (_, derived) = plan_for(rs, ns, ctx);
    let statefulset = rs.stateful_set_name();
    let status = derive::compute_status(&StatusInput {
        old: rs.status.as_ref(),
        generation: rs.meta().generation,
        statefulset: &statefulset,
        service,
        derived: derived.as_ref(),
        sync: &derive::SyncState::Pending,
        owner: Some(owner),
        now: &Time(k8s_openapi::jiff::Timestamp::now()),
    });
    if let Some(wait) = patch_status(rs, ns, ctx, status).await? {
        return Ok(Action::requeue(wait));
    }
    Ok(Action::requeue(RESYNC))
}

/// Writes the status with server-side apply, unless it is unchanged (no self-triggering) or
/// the last patch was less than [`STATUS_MIN_INTERVAL`] ago: then nothing is written and the
/// wait is returned (the reconcile runs again after it, with the inputs of then).
async fn patch_status(rs: &RouteState, ns: &str, ctx: &Context, status: RouteStateStatus) -> Result<Option<Duration>> {
    ctx.metrics.observe_status(&ObjectRef::from_obj(rs), &status.conditions);
    if rs.status.as_ref() == Some(&status) {
        return Ok(None);
    }
    let key = ObjectRef::from_obj(rs);
    if let Some(wait) = status_patch_wait(ctx.status_patched(&key), Instant::now()) {
        return Ok(Some(wait));
    }
    if !ctx.leader.holds() {
        return Err(Error::NotLeader("patch status"));
    }
    let api: Api<RouteState> = Api::namespaced(ctx.client.clone(), ns);
    let patch = serde_json::json!({
        "apiVersion": RouteState::api_version(&()),
        "kind": RouteState::kind(&()),
        "status": status,
    });
    ctx.set_status_patched(key, Instant::now());
    api.patch_status(&rs.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
        .map_err(Error::kube(format!("patching the status of RouteState {ns}/{}", rs.name_any())))?;
    Ok(None)
}

async fn cleanup(rs: Arc<RouteState>, ns: &str, ctx: &Context) -> Result<Action> {
    let key = ObjectRef::from_obj(rs.as_ref());
    let service = rs.service_name();
    ctx.forget_seen(&key);
    // Another RouteState naming the service (this one is being deleted, so it is not a
    // candidate) publishes it from now on: the keys stay for it.
    let note = match owner_of(ctx, ns, &service) {
        Some(successor) => {
            ctx.publisher.forget(&key);
            retrigger_service(ctx, ns, &service, &key);
            format!("service {service} is published by RouteState {successor} from now on; its keys stay")
        }
        None => {
            ctx.publisher.remove(&key, ns, &service).await?;
            format!("deleted the Redis keys of service {service} (links are kept)")
        }
    };
    // After the publisher let go of it, so no tick re-creates them.
    ctx.metrics.forget(&key);
    let done =
        Note { type_: EventType::Normal, reason: "Cleanup", action: "Delete".into(), pod: None, note, folds: true };
    record(ctx, &rs, ns, vec![done]).await;
    Ok(Action::await_change())
}

fn pod_ref(ns: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(ns.to_owned()),
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

/// Records the Events of a reconcile on its RouteState.
async fn record(ctx: &Context, rs: &RouteState, ns: &str, notes: Vec<Note>) {
    let reference = rs.object_ref(&());
    for n in notes {
        let event = Event {
            type_: n.type_,
            reason: n.reason.into(),
            note: Some(n.note),
            action: n.action,
            secondary: n.pod.map(|pod| pod_ref(ns, &pod)),
        };
        if n.folds {
            publish_event(ctx, &reference, event).await;
        } else {
            // A recorder of its own knows no earlier Event: this one is created, never folded.
            let once = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
            publish_with(ctx, &once, &reference, event).await;
        }
    }
}

/// Records one Event; an Event that cannot be written must not fail the reconcile.
pub(super) async fn publish_event(ctx: &Context, reference: &ObjectReference, event: Event) {
    publish_with(ctx, &ctx.recorder, reference, event).await;
}

async fn publish_with(ctx: &Context, recorder: &Recorder, reference: &ObjectReference, event: Event) {
    if let Err(e) = recorder.publish(&event, reference).await {
        ctx.metrics.error("event");
        tracing::warn!(error = %e.chain(), reason = %event.reason, "publishing an Event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patches_are_at_least_the_minimum_interval_apart() {
        let t0 = Instant::now();
        assert_eq!(status_patch_wait(None, t0), None, "the first is sent at once");
        assert_eq!(status_patch_wait(Some(t0), t0), Some(STATUS_MIN_INTERVAL));
        let later = t0 + Duration::from_millis(300);
        assert_eq!(status_patch_wait(Some(t0), later), Some(STATUS_MIN_INTERVAL - Duration::from_millis(300)));
        assert_eq!(status_patch_wait(Some(t0), t0 + STATUS_MIN_INTERVAL), None);
        assert_eq!(status_patch_wait(Some(t0), t0 + Duration::from_secs(60)), None);
    }
}
