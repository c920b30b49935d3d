//! "Ready means enforced": compares what each sandbox's router reports at
//! `/internal/policy-status` with what the renderer says it must report
//! ([`kars_renderer::RouterExpectation`]: per policy kind, the digest of the ConfigMap mounted
//! for it).
//!
//! The router reports, per policy kind, the digest of the files it compiled and enforces. A
//! sandbox's policies are enforced when every running router pod reports, for every kind the
//! renderer mounted, that digest with no load error.

use std::collections::BTreeMap;

use kars_contract::PolicyKind;
use kars_contract::labels::SANDBOX_LABEL;
use kars_contract::router::{ADMIN_TOKEN_SECRET, TOKEN_KEY};
use kars_renderer::RouterExpectation;

use crate::live::{LiveView, PodSummary};
use serde_json::Value;

/// The router port the renderer gives every sandbox.
pub use kars_contract::router::PORT as ROUTER_PORT;

/// Policy kind → digest a router must report (from [`RouterExpectation::policies`]).
pub fn expected_digests(r: &RouterExpectation) -> BTreeMap<PolicyKind, String> {
    r.policies
        .iter()
        .map(|(k, m)| (*k, m.digest.clone()))
        .collect()
}

/// Checks a router's policy-status answer against `expected` (kind → digest). `Ok` when every
/// expected policy is loaded with its digest; else one line per difference.
pub fn compare(expected: &BTreeMap<PolicyKind, String>, status: &Value) -> Result<(), Vec<String>> {
    let entries = status["entries"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for (kind, want) in expected {
        match entries.iter().find(|e| e["kind"] == kind.name()) {
            None => problems.push(format!("{kind}: the router does not report this policy")),
            Some(e) => {
                if let Some(err) = e["last_error"].as_str() {
                    problems.push(format!("{kind}: the router could not load it: {err}"));
                } else if e["digest"] != want.as_str() {
                    problems.push(format!(
                        "{kind}: the router enforces {}, the rendered policy is {want}",
                        e["digest"].as_str().unwrap_or("nothing")
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Asks the router at `base_url` (e.g. `http://10.0.0.5:8443`) for its policy status with the
/// admin `token`, and compares it with `expected`.
pub async fn probe(
    client: &reqwest::Client,
    base_url: &str,
    token: &str,
    expected: &BTreeMap<PolicyKind, String>,
) -> Result<(), Vec<String>> {
    let url = format!("{}/internal/policy-status", base_url.trim_end_matches('/'));
    let res = client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| vec![format!("{url}: {e}")])?;
    if !res.status().is_success() {
        return Err(vec![format!("{url}: HTTP {}", res.status())]);
    }
    let status: Value = res
        .json()
        .await
        .map_err(|e| vec![format!("{url}: not JSON: {e}")])?;
    compare(expected, &status)
}

/// Whether Ready waits for routers that are not running yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Ready needs every sandbox that should run (not suspended) to have running router pods
    /// that report the rendered digests; until then Ready=False `NoRunningRouters`.
    #[default]
    Required,
    /// A sandbox without a running router pod does not hold Ready back (Enforced stays
    /// Unknown): for clusters where pods cannot run, such as a control plane without nodes.
    /// A running router that reports other digests still makes Ready False.
    BestEffort,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s {
            "required" => Ok(Mode::Required),
            "best-effort" => Ok(Mode::BestEffort),
            other => Err(format!(
                "{other:?} is not an enforcement mode (required or best-effort)"
            )),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Required => "required",
            Mode::BestEffort => "best-effort",
        })
    }
}

/// What the check found for one sandbox Deployment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Enforcement {
    /// Every running router pod reports the rendered digests.
    Enforced {
        /// The pods asked (names).
        pods: Vec<String>,
    },
    /// A running router pod reports something else (or cannot be asked).
    NotEnforced(Vec<String>),
    /// No router pod is running (nothing can enforce yet, nothing contradicts).
    NoRunningPods,
}

/// Asks the routers of every rendered sandbox that should run what they enforce; returns the
/// result per router Deployment (`namespace/name`) and the requests sent to the API server.
/// With a live view, the sandbox pods come from its pod watch, and a router pod that already
/// reported the expected digests and has not changed since (same resourceVersion: a restart
/// or a new pod moves it) is not asked again.
pub async fn check_all(
    kube: &kube::Client,
    http: &reqwest::Client,
    routers: &[RouterExpectation],
    view: Option<&LiveView>,
) -> (Vec<(String, Enforcement)>, usize) {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    let mut out = Vec::new();
    let mut reads = 0;
    if routers.is_empty() {
        return (out, reads);
    }
    let key = |r: &RouterExpectation| format!("{}/{}", r.namespace, r.deployment);
    let watched = view.and_then(|v| {
        v.watch_pods(kube);
        v.pods()
    });
    let pods = match watched {
        Some(pods) => pods,
        None => {
            // One list for all sandboxes (every sandbox pod carries this label), not one per
            // sandbox.
            reads += 1;
            let all: kube::Api<Pod> = kube::Api::all(kube.clone());
            match all
                .list(&kube::api::ListParams::default().labels(SANDBOX_LABEL))
                .await
            {
                Ok(l) => l.items.iter().map(PodSummary::of).collect(),
                Err(e) => {
                    let why = format!("cannot list pods to ask their routers: {e}");
                    let out = routers
                        .iter()
                        .map(|r| (key(r), Enforcement::NotEnforced(vec![why.clone()])))
                        .collect();
                    return (out, reads);
                }
            }
        }
    };
    for r in routers.iter().filter(|r| r.should_run) {
        let expected = expected_digests(r);
        let fingerprint = format!("{expected:?}");
        let mut running: Vec<&PodSummary> = pods
            .iter()
            .filter(|p| p.namespace == r.namespace && p.running_ip.is_some())
            .filter(|p| {
                !r.pod_selector.is_empty()
                    && r.pod_selector
                        .iter()
                        .all(|(k, v)| p.labels.get(k) == Some(v))
            })
            .collect();
        running.sort_by(|a, b| a.name.cmp(&b.name));
        if running.is_empty() {
            out.push((key(r), Enforcement::NoRunningPods));
            continue;
        }
        let names = || running.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        if let Some(v) = view
            && running.iter().all(|p| v.enforced(p, &fingerprint))
        {
            out.push((key(r), Enforcement::Enforced { pods: names() }));
            continue;
        }
        reads += 1;
        let secrets: kube::Api<Secret> = kube::Api::namespaced(kube.clone(), &r.namespace);
        let token = match secrets.get(ADMIN_TOKEN_SECRET).await {
            Ok(s) => s
                .data
                .and_then(|d| {
                    d.get(TOKEN_KEY)
                        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
                })
                .unwrap_or_default(),
            Err(e) => {
                out.push((
                    key(r),
                    Enforcement::NotEnforced(vec![format!("{ADMIN_TOKEN_SECRET}: {e}")]),
                ));
                continue;
            }
        };
        let mut problems = Vec::new();
        for p in &running {
            let ip = p.running_ip.clone().unwrap_or_default();
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.clone()
            };
            match probe(
                http,
                &format!("http://{host}:{ROUTER_PORT}"),
                &token,
                &expected,
            )
            .await
            {
                Ok(()) => {
                    if let Some(v) = view {
                        v.confirm_enforced(p, &fingerprint);
                    }
                }
                Err(e) => problems.extend(e.into_iter().map(|x| format!("pod {ip}: {x}"))),
            }
        }
        out.push((
            key(r),
            if problems.is_empty() {
                Enforcement::Enforced { pods: names() }
            } else {
                Enforcement::NotEnforced(problems)
            },
        ));
    }
    (out, reads)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_mounted_policy_must_be_reported_with_its_digest() {
        let expected = BTreeMap::from([
            (PolicyKind::EgressAllowlist, "sha256:a".to_string()),
            (PolicyKind::AgtProfile, "sha256:b".to_string()),
        ]);
        let ok = json!({"entries": [
            {"kind": "EgressAllowlist", "digest": "sha256:a", "last_error": null},
            {"kind": "AgtProfile", "digest": "sha256:b", "last_error": null},
        ]});
        assert_eq!(compare(&expected, &ok), Ok(()));
        let stale = json!({"entries": [
            {"kind": "EgressAllowlist", "digest": "sha256:old", "last_error": null},
            {"kind": "AgtProfile", "digest": "sha256:b", "last_error": "bad.yaml: x"},
        ]});
        let problems = compare(&expected, &stale).expect_err("stale");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("could not load") || problems[1].contains("could not load"));
        assert!(compare(&expected, &json!({})).is_err(), "nothing reported");
    }
}
