//! Health: after an apply, wait (bounded) for what was applied to become ready — Deployments
//! rolled out, CRDs Established, kars CRs reporting `Ready` when a controller reports at all.

use std::time::{Duration, Instant};

use kars_contract::KARS_API_VERSION;
use kars_renderer::Rendered;
use serde_json::Value;

use crate::cluster::Cluster;

/// The health of one object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", content = "message", rename_all = "camelCase")]
pub enum ObjectHealth {
    /// Ready.
    Ready,
    /// Still getting there (rollout in progress, no status yet).
    Progressing(String),
    /// Failed (deadline exceeded, Ready=False).
    Unhealthy(String),
    /// A kars object no controller reports on (no `Ready` condition): not waited for.
    Unreported,
}

impl std::fmt::Display for ObjectHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectHealth::Ready => f.write_str("ready"),
            ObjectHealth::Progressing(m) => write!(f, "progressing: {m}"),
            ObjectHealth::Unhealthy(m) => write!(f, "unhealthy: {m}"),
            ObjectHealth::Unreported => f.write_str("no status reported"),
        }
    }
}

/// Health of the checked objects.
#[derive(Clone, Debug, Default, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthReport {
    /// `kind/namespace/name` → health, for objects that are not Ready.
    pub not_ready: Vec<(String, ObjectHealth)>,
    /// Objects checked.
    pub checked: usize,
    /// kars objects without any reported status (no kars controller in the cluster?).
    pub unreported: usize,
}

impl HealthReport {
    /// Overall: `Some(true)` healthy, `Some(false)` unhealthy, `None` still progressing.
    pub fn healthy(&self) -> Option<bool> {
        if self
            .not_ready
            .iter()
            .any(|(_, h)| matches!(h, ObjectHealth::Unhealthy(_)))
        {
            Some(false)
        } else if self.not_ready.is_empty() {
            Some(true)
        } else {
            None
        }
    }
}

/// The health of one live object of `kind` (pure, for tests).
pub fn assess(kind: &str, is_kars: bool, live: &Value) -> ObjectHealth {
    let status = &live["status"];
    match kind {
        "Deployment" => {
            let want = live["spec"]["replicas"].as_i64().unwrap_or(1);
            let generation = live["metadata"]["generation"].as_i64().unwrap_or(0);
            let observed = status["observedGeneration"].as_i64().unwrap_or(-1);
            let conds = status["conditions"].as_array().cloned().unwrap_or_default();
            if conds
                .iter()
                .any(|c| c["type"] == "Progressing" && c["status"] == "False")
            {
                let msg = conds
                    .iter()
                    .find(|c| c["type"] == "Progressing")
                    .and_then(|c| c["message"].as_str())
                    .unwrap_or("");
                return ObjectHealth::Unhealthy(format!("rollout failed: {msg}"));
            }
            let updated = status["updatedReplicas"].as_i64().unwrap_or(0);
            let available = status["availableReplicas"].as_i64().unwrap_or(0);
            if observed >= generation && updated >= want && available >= want {
                ObjectHealth::Ready
            } else {
                ObjectHealth::Progressing(format!(
                    "{available}/{want} replicas available, {updated} updated"
                ))
            }
        }
        "CustomResourceDefinition" => {
            let ok = status["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            if ok {
                ObjectHealth::Ready
            } else {
                ObjectHealth::Progressing("not Established yet".into())
            }
        }
        _ if is_kars => match status["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        {
            Some(c) if c["status"] == "True" => ObjectHealth::Ready,
            Some(c) if c["status"] == "False" => ObjectHealth::Unhealthy(format!(
                "Ready=False {}: {}",
                c["reason"].as_str().unwrap_or(""),
                c["message"].as_str().unwrap_or("")
            )),
            _ if status["conditions"].as_array().is_none_or(|c| c.is_empty()) => {
                ObjectHealth::Unreported
            }
            _ => ObjectHealth::Progressing("no Ready condition yet".into()),
        },
        _ => ObjectHealth::Ready,
    }
}

fn checked_kind(api_version: &str, kind: &str) -> bool {
    matches!(kind, "Deployment" | "CustomResourceDefinition") || api_version == KARS_API_VERSION
}

/// Waits up to `timeout` for the rendered Deployments, CRDs and kars CRs to be ready; returns
/// what is still not ready at the end (polling every second, one LIST per kind). `prefetched`
/// live objects (from a sync that changed nothing) are used for the first look.
pub async fn wait(
    cluster: &Cluster,
    rendered: &Rendered,
    timeout: Duration,
    prefetched: Option<&std::collections::BTreeMap<String, Value>>,
    progress: &crate::progress::Progress,
) -> Result<HealthReport, kube::Error> {
    let deadline = Instant::now() + timeout;
    let targets: Vec<_> = rendered
        .objects
        .iter()
        .filter(|o| checked_kind(o.api_version(), o.kind()))
        .collect();
    let mut first = true;
    loop {
        let mut report = HealthReport {
            checked: targets.len(),
            ..HealthReport::default()
        };
        let listed;
        let live = match prefetched.filter(|_| first) {
            Some(p) => p,
            None => {
                listed = cluster.list_live(rendered, checked_kind).await?;
                &listed
            }
        };
        first = false;
        for o in &targets {
            let health = match live.get(&o.key()) {
                None => {
                    ObjectHealth::Progressing("not found (or its kind is not served yet)".into())
                }
                // A kars object's status written by this agent is not a controller's report.
                Some(l)
                    if o.api_version() == KARS_API_VERSION
                        && crate::kars_status::written_by_us(l) =>
                {
                    ObjectHealth::Unreported
                }
                Some(l) => assess(o.kind(), o.api_version() == KARS_API_VERSION, l),
            };
            match health {
                ObjectHealth::Ready => {}
                ObjectHealth::Unreported => report.unreported += 1,
                other => report.not_ready.push((o.key(), other)),
            }
        }
        let now = Instant::now();
        if report.healthy().is_some() || now >= deadline {
            return Ok(report);
        }
        progress.emit(crate::progress::Event::Waiting {
            pending: report.not_ready.len(),
            left: deadline - now,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deployments() {
        let ready = json!({"metadata": {"generation": 2}, "spec": {"replicas": 1}, "status": {"observedGeneration": 2, "updatedReplicas": 1, "availableReplicas": 1}});
        assert_eq!(assess("Deployment", false, &ready), ObjectHealth::Ready);
        let rolling = json!({"metadata": {"generation": 3}, "spec": {"replicas": 1}, "status": {"observedGeneration": 2, "updatedReplicas": 1, "availableReplicas": 1}});
        assert!(matches!(
            assess("Deployment", false, &rolling),
            ObjectHealth::Progressing(_)
        ));
        let failed = json!({"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": {"conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "too slow"}]}});
        assert!(
            matches!(assess("Deployment", false, &failed), ObjectHealth::Unhealthy(m) if m.contains("too slow"))
        );
        let scaled_to_zero = json!({"metadata": {"generation": 1}, "spec": {"replicas": 0}, "status": {"observedGeneration": 1}});
        assert_eq!(
            assess("Deployment", false, &scaled_to_zero),
            ObjectHealth::Ready
        );
    }

    #[test]
    fn kars_resources() {
        assert_eq!(
            assess("KarsSandbox", true, &json!({})),
            ObjectHealth::Unreported
        );
        let ok = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(assess("KarsSandbox", true, &ok), ObjectHealth::Ready);
        let bad = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "InferencePolicyNotFound", "message": "x"}]}});
        assert!(
            matches!(assess("KarsSandbox", true, &bad), ObjectHealth::Unhealthy(m) if m.contains("InferencePolicyNotFound"))
        );
    }
}
