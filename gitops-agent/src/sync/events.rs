//! Kubernetes Events on the PolicyRepo, on transitions only: a new commit applied, the Ready
//! condition turning False or changing its reason. A failure to record an event is logged.

use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use super::{SyncError, SyncOutcome};
use crate::apply::Action;
use crate::prune::PruneResult;
use crate::status::{self, Condition as c, PolicyRepo, PolicyRepoStatus};

/// The Events a status change calls for (pure).
pub fn events_for(
    before: &PolicyRepoStatus,
    after: &PolicyRepoStatus,
    result: &Result<SyncOutcome, SyncError>,
) -> Vec<Event> {
    let ready = |s: &PolicyRepoStatus| {
        status::condition(&s.conditions, c::Ready).map(|c| (c.status.clone(), c.reason.clone()))
    };
    let mut events = Vec::new();
    if after.last_applied_revision != before.last_applied_revision
        && let (Some(rev), Ok(o)) = (&after.last_applied_revision, result)
    {
        events.push(Event {
            type_: EventType::Normal,
            reason: kars_contract::Reason::Applied.as_str().into(),
            note: Some(format!(
                "commit {rev} applied (signed by {}): {} created, {} configured, {} pruned",
                after.last_applied_signers.join(", "),
                o.apply.count(|a| *a == Action::Created),
                o.apply.count(|a| *a == Action::Configured),
                o.prune
                    .iter()
                    .filter(|(_, r)| *r == PruneResult::Deleted)
                    .count()
            )),
            action: "Sync".into(),
            secondary: None,
        });
    }
    if ready(after) != ready(before)
        && let Some(c) =
            status::condition(&after.conditions, c::Ready).filter(|c| c.status == "False")
    {
        events.push(Event {
            type_: EventType::Warning,
            reason: c.reason.chars().take(128).collect(),
            note: Some(c.message.chars().take(1000).collect()),
            action: "Sync".into(),
            secondary: None,
        });
    }
    events
}

/// Publishes the Events of a status change on `pr`.
pub async fn publish(
    client: &kube::Client,
    pr: &PolicyRepo,
    before: &PolicyRepoStatus,
    after: &PolicyRepoStatus,
    result: &Result<SyncOutcome, SyncError>,
) {
    let events = events_for(before, after, result);
    if events.is_empty() {
        return;
    }
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kars-gitops".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let reference = pr.object_ref(&());
    for ev in events {
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason = %ev.reason, "could not record an event");
        }
    }
}
