//! Health: after an apply, wait (bounded) for what was applied to become ready — Deployments
//! rolled out, CRDs Established, kars CRs reporting `Ready` when a controller reports at all.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kars_contract::KARS_API_VERSION;
use kars_renderer::{Rendered, RenderedObject};
use serde_json::Value;

use crate::cluster::Cluster;
use crate::live::LiveView;

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
    /// GET and LIST requests sent.
    pub reads: usize,
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

/// True for the kinds health looks at: Deployments, CRDs and kars CRs.
pub(crate) fn is_checked(api_version: &str, kind: &str) -> bool {
    matches!(kind, "Deployment" | "CustomResourceDefinition") || api_version == KARS_API_VERSION
}

/// A look that must read more objects than this lists their kinds instead of reading each.
const GET_LIMIT: usize = 64;

/// GETs in flight at once in one look.
const GET_CONCURRENCY: usize = 8;

/// Waits up to `timeout` for the rendered Deployments, CRDs and kars CRs to be ready; returns
/// what is still not ready at the end (polling every second). `known` holds live objects read
/// by this sync before it applied (empty: none): an object in `known` and not in `stale` (what
/// this sync created or changed) is judged from it, so a sync reads only what it changed; so is
/// one the live `view` has seen unchanged since its health was last judged. Each
/// later look reads only what was not ready at the one before (one GET each, or one LIST per
/// kind when more than [`GET_LIMIT`] are to be read).
pub async fn wait(
    cluster: &Cluster,
    rendered: &Rendered,
    timeout: Duration,
    known: &BTreeMap<String, Value>,
    stale: &BTreeSet<String>,
    view: Option<&LiveView>,
    progress: &crate::progress::Progress,
) -> Result<HealthReport, kube::Error> {
    let deadline = Instant::now() + timeout;
    let reads_before = cluster.reads();
    let targets: Vec<&RenderedObject> = rendered
        .objects
        .iter()
        .filter(|o| is_checked(o.api_version(), o.kind()))
        .collect();
    // Per target: judged from `known` now, or read in the loop below.
    let mut health: Vec<Option<ObjectHealth>> = targets
        .iter()
        .map(|o| {
            let key = o.key();
            if stale.contains(&key) {
                return None;
            }
            match known.get(&key) {
                Some(l) => Some(judge(o, Some(l))),
                None => view.and_then(|v| v.health(o)),
            }
        })
        .collect();
    let mut to_read: Vec<&RenderedObject> = targets
        .iter()
        .zip(&health)
        .filter(|(_, h)| h.is_none())
        .map(|(o, _)| *o)
        .collect();
    loop {
        let fresh = read(cluster, rendered, &to_read).await?;
        for (o, h) in targets.iter().zip(health.iter_mut()) {
            if h.is_none() {
                let live = fresh.get(&o.key());
                if let (Some(v), Some(l)) = (view, live) {
                    v.observe(o, l);
                }
                *h = Some(judge(o, live));
            }
        }
        let mut report = HealthReport {
            checked: targets.len(),
            ..HealthReport::default()
        };
        to_read.clear();
        for (o, h) in targets.iter().zip(health.iter_mut()) {
            match h {
                Some(ObjectHealth::Ready) => {}
                Some(ObjectHealth::Unreported) => report.unreported += 1,
                // Not ready: reported, and read again at the next look.
                other => {
                    if let Some(not_ready) = other.take() {
                        report.not_ready.push((o.key(), not_ready));
                    }
                    to_read.push(o);
                }
            }
        }
        let now = Instant::now();
        if report.healthy().is_some() || now >= deadline {
            report.reads = cluster.reads().saturating_sub(reads_before);
            return Ok(report);
        }
        progress.emit(crate::progress::Event::Waiting {
            pending: report.not_ready.len(),
            left: deadline - now,
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The health of `o` from its live copy (`None`: not found).
pub(crate) fn judge(o: &RenderedObject, live: Option<&Value>) -> ObjectHealth {
    match live {
        None => ObjectHealth::Progressing("not found (or its kind is not served yet)".into()),
        // A kars object's status written by this agent is not a controller's report.
        Some(l) if o.api_version() == KARS_API_VERSION && crate::kars_status::written_by_us(l) => {
            ObjectHealth::Unreported
        }
        Some(l) => assess(o.kind(), o.api_version() == KARS_API_VERSION, l),
    }
}

/// The live copies of `objects` (absent when not found): one GET each, or the LIST of every
/// checked kind when there are many.
async fn read(
    cluster: &Cluster,
    rendered: &Rendered,
    objects: &[&RenderedObject],
) -> Result<BTreeMap<String, Value>, kube::Error> {
    if objects.is_empty() {
        return Ok(BTreeMap::new());
    }
    if objects.len() > GET_LIMIT {
        return cluster.list_live(rendered, is_checked).await;
    }
    cluster.get_many(objects, GET_CONCURRENCY).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::{Arc, Mutex};

    /// A Deployment `name` in `ns`, ready or still rolling out.
    fn deployment(ns: &str, name: &str, ready: bool) -> Value {
        let available = i64::from(ready);
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "generation": 1},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 1, "updatedReplicas": 1, "availableReplicas": available}})
    }

    fn rendered(names: &[&str]) -> Rendered {
        Rendered {
            repository: "repo".into(),
            cluster: "prod".into(),
            objects: names
                .iter()
                .map(|n| RenderedObject {
                    manifest: deployment("ns", n, true),
                    source: "agents/x.yaml".into(),
                    wave: 9,
                })
                .collect(),
            generated_secrets: Vec::new(),
            routers: Vec::new(),
            allow_empty_prune: false,
            digest: String::new(),
            held_back: Vec::new(),
        }
    }

    /// An API server serving apps/v1 Deployments (each ready) that records every request.
    fn recording_cluster() -> (Cluster, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let path = req.uri().path().to_string();
            if let Ok(mut l) = log.lock() {
                l.push(format!("{} {path}", req.method()));
            }
            async move {
                let (code, body) = if path == "/apis/apps/v1" {
                    (
                        200,
                        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
                        "resources": [{"name": "deployments", "singularName": "deployment", "namespaced": true,
                            "kind": "Deployment", "verbs": ["get", "list", "patch"]}]}),
                    )
                } else if let Some(name) =
                    path.strip_prefix("/apis/apps/v1/namespaces/ns/deployments/")
                {
                    (200, deployment("ns", name, true))
                } else {
                    (
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404, "reason": "NotFound", "message": "not here"}),
                    )
                };
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                http::Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(kube::client::Body::from(bytes))
            }
        });
        (Cluster::new(kube::Client::new(service, "default")), seen)
    }

    /// The Deployment reads recorded so far, sorted (discovery requests left out).
    fn deployment_gets(seen: &Mutex<Vec<String>>) -> Vec<String> {
        let mut gets: Vec<String> = seen
            .lock()
            .expect("log")
            .iter()
            .filter(|r| r.contains("/deployments"))
            .cloned()
            .collect();
        gets.sort();
        gets
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_sync_reads_again_only_what_it_changed() {
        block_on(async {
            let (cluster, seen) = recording_cluster();
            let r = rendered(&["a", "b", "c"]);
            // Listed before the apply: a ready, b (changed by this sync) and c still rolling out.
            let known: BTreeMap<String, Value> = [
                ("Deployment/ns/a", deployment("ns", "a", true)),
                ("Deployment/ns/b", deployment("ns", "b", false)),
                ("Deployment/ns/c", deployment("ns", "c", false)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let stale: BTreeSet<String> = ["Deployment/ns/b".to_string()].into();
            let report = wait(
                &cluster,
                &r,
                Duration::ZERO,
                &known,
                &stale,
                None,
                &Default::default(),
            )
            .await
            .expect("health");
            assert_eq!(
                deployment_gets(&seen),
                ["GET /apis/apps/v1/namespaces/ns/deployments/b"],
                "only the changed object is read again"
            );
            // b read again is ready; c is judged from the list before the apply.
            assert_eq!(report.checked, 3);
            let not_ready: Vec<&str> = report.not_ready.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(not_ready, ["Deployment/ns/c"]);
        });
    }

    #[test]
    fn the_live_view_spares_reading_what_has_not_changed_since_it_was_judged() {
        use crate::live::Change;
        block_on(async {
            let (cluster, seen) = recording_cluster();
            let r = rendered(&["a", "b"]);
            let view = LiveView::new();
            let mut a = deployment("ns", "a", false);
            a["metadata"]["resourceVersion"] = json!("7");
            view.observe(&r.objects[0], &a);
            let kind = crate::cluster::gvk("apps/v1", "Deployment");
            view.apply_change(&kind, Change::Init);
            view.apply_change(
                &kind,
                Change::InitApply("Deployment/ns/a".into(), "7".into()),
            );
            view.apply_change(
                &kind,
                Change::InitApply("Deployment/ns/b".into(), "3".into()),
            );
            view.apply_change(&kind, Change::InitDone);
            // a: judged not ready at version 7 and still at 7, so not read; b never judged: read.
            let report = wait(
                &cluster,
                &r,
                Duration::ZERO,
                &BTreeMap::new(),
                &BTreeSet::new(),
                Some(&view),
                &Default::default(),
            )
            .await
            .expect("health");
            assert_eq!(
                deployment_gets(&seen),
                ["GET /apis/apps/v1/namespaces/ns/deployments/b"]
            );
            assert_eq!(report.reads, 1);
            let not_ready: Vec<&str> = report.not_ready.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(not_ready, ["Deployment/ns/a"]);
            // a moved on (its rollout progressed): read again.
            seen.lock().expect("log").clear();
            view.apply_change(&kind, Change::Apply("Deployment/ns/a".into(), "8".into()));
            let report = wait(
                &cluster,
                &r,
                Duration::ZERO,
                &BTreeMap::new(),
                &BTreeSet::new(),
                Some(&view),
                &Default::default(),
            )
            .await
            .expect("health");
            assert_eq!(
                deployment_gets(&seen),
                [
                    "GET /apis/apps/v1/namespaces/ns/deployments/a",
                    "GET /apis/apps/v1/namespaces/ns/deployments/b"
                ],
                "b's body from the stand-in carries no resourceVersion, so it is never kept"
            );
            assert_eq!(report.healthy(), Some(true));
        });
    }

    #[test]
    fn without_a_list_every_object_is_read_and_later_looks_read_only_what_is_not_ready() {
        block_on(async {
            let (cluster, seen) = recording_cluster();
            let r = rendered(&["a", "b"]);
            let report = wait(
                &cluster,
                &r,
                Duration::ZERO,
                &BTreeMap::new(),
                &BTreeSet::new(),
                None,
                &Default::default(),
            )
            .await
            .expect("health");
            assert_eq!(report.healthy(), Some(true));
            assert_eq!(
                deployment_gets(&seen),
                [
                    "GET /apis/apps/v1/namespaces/ns/deployments/a",
                    "GET /apis/apps/v1/namespaces/ns/deployments/b"
                ]
            );

            // Known not ready, not changed, with time to wait: the second look reads it (and
            // finds it ready); the ready one is never read.
            seen.lock().expect("log").clear();
            let known: BTreeMap<String, Value> = [
                ("Deployment/ns/a".to_string(), deployment("ns", "a", true)),
                ("Deployment/ns/b".to_string(), deployment("ns", "b", false)),
            ]
            .into();
            let report = wait(
                &cluster,
                &r,
                Duration::from_secs(5),
                &known,
                &BTreeSet::new(),
                None,
                &Default::default(),
            )
            .await
            .expect("health");
            assert_eq!(report.healthy(), Some(true));
            assert_eq!(
                deployment_gets(&seen),
                ["GET /apis/apps/v1/namespaces/ns/deployments/b"]
            );
        });
    }

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
