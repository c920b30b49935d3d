//! The recovery observer (upstream's rule): after an action ran, its namespace has recovered
//! when every Deployment there has at least as many available replicas as it asks for and no
//! Event with reason FailedCreate, BackOff, FailedScheduling or Failed is newer than 30 s.
//! Not recovered within [`RECOVERY_DEADLINE_SECS`] → Failed; a Failed action is looked at again
//! until [`LATE_RECOVERY_SECS`] after it ran and flips to Recovered (LateRecovery).

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

/// Event reasons that mean the namespace is not healthy.
pub const FAILURE_REASONS: [&str; 4] = ["FailedCreate", "BackOff", "FailedScheduling", "Failed"];
/// A failure Event newer than this blocks recovery.
pub const QUIET_SECS: i64 = 30;
/// Applied → Failed after this long without recovery.
pub const RECOVERY_DEADLINE_SECS: i64 = 600;
/// A Failed action is re-observed until this long after it ran.
pub const LATE_RECOVERY_SECS: i64 = 1800;
/// How often the agent looks while an action is being observed.
pub const OBSERVE_INTERVAL_SECS: u64 = 10;

/// What the observer saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// True when recovered.
    pub recovered: bool,
    /// What holds recovery back (or what recovered), one line.
    pub summary: String,
}

/// Pure: decides from the Deployments and Events of the namespace at `now` (Unix seconds).
pub fn judge(deployments: &[Deployment], events: &[Event], now: i64) -> Observation {
    let mut blockers = Vec::new();
    for d in deployments {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let have = d
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if have < want {
            blockers.push(format!(
                "Deployment {}: {have}/{want} available",
                d.metadata.name.as_deref().unwrap_or("?")
            ));
        }
    }
    for e in events {
        let Some(reason) = e.reason.as_deref().filter(|r| FAILURE_REASONS.contains(r)) else {
            continue;
        };
        let last = e
            .series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0.as_second()))
            .or_else(|| e.last_timestamp.as_ref().map(|t| t.0.as_second()))
            .or_else(|| e.event_time.as_ref().map(|t| t.0.as_second()))
            .or_else(|| {
                e.metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_second())
            })
            .unwrap_or(0);
        if now - last < QUIET_SECS {
            let object = e.involved_object.name.as_deref().unwrap_or("?");
            let message: String = e
                .message
                .as_deref()
                .unwrap_or("")
                .chars()
                .take(160)
                .collect();
            blockers.push(format!(
                "{reason} on {object} {}s ago: {message}",
                now - last
            ));
        }
    }
    if blockers.is_empty() {
        Observation {
            recovered: true,
            summary: format!(
                "every Deployment available ({}), no failure Event in the last {QUIET_SECS} s",
                deployments.len()
            ),
        }
    } else {
        blockers.truncate(3);
        Observation {
            recovered: false,
            summary: blockers.join("; "),
        }
    }
}

/// Looks at `namespace` now.
pub async fn observe(
    client: &kube::Client,
    namespace: &str,
    now: i64,
) -> Result<Observation, kube::Error> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let d = deployments.list(&ListParams::default()).await?.items;
    let e = events.list(&ListParams::default()).await?.items;
    Ok(judge(&d, &e, now))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(want: i32, have: i32) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {"replicas": want, "selector": {}, "template": {}}, "status": {"availableReplicas": have}}))
            .unwrap_or_default()
    }

    fn event(reason: &str, at: &str) -> Event {
        serde_json::from_value(json!({"metadata": {"name": "e"}, "involvedObject": {"name": "web-1"}, "reason": reason, "message": "exceeded quota", "lastTimestamp": at}))
            .unwrap_or_default()
    }

    #[test]
    fn recovery_needs_available_deployments_and_a_quiet_namespace() {
        let now = 1_800_000_000; // 2027-01-15T08:00:00Z
        let recent = "2027-01-15T07:59:50Z";
        let old = "2027-01-15T07:58:00Z";
        assert!(judge(&[deployment(1, 1)], &[], now).recovered);
        let o = judge(&[deployment(2, 1)], &[], now);
        assert!(!o.recovered && o.summary.contains("1/2 available"), "{o:?}");
        let o = judge(&[deployment(1, 1)], &[event("FailedCreate", recent)], now);
        assert!(!o.recovered && o.summary.contains("FailedCreate"), "{o:?}");
        assert!(judge(&[deployment(1, 1)], &[event("FailedCreate", old)], now).recovered);
        assert!(judge(&[deployment(1, 1)], &[event("Scheduled", recent)], now).recovered);
        assert!(judge(&[deployment(0, 0)], &[], now).recovered);
    }
}
