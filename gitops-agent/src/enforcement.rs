//! "Ready means enforced": compares what a sandbox's router reports at
//! `/internal/policy-status` with the digests the renderer put on the ConfigMaps it mounts.
//!
//! The router reports, per policy kind, the digest of the files it loaded and enforces. The
//! rendered router container says (through its `*_DIR` environment and volume mounts) which
//! ConfigMap holds each kind, and each rendered ConfigMap carries
//! `gitops.kars.io/content-digest`. A sandbox's policies are enforced when, for every kind, the
//! router reports that digest with no load error.

use std::collections::BTreeMap;

use serde_json::Value;

/// The rendered router container's name.
pub const ROUTER_CONTAINER: &str = "inference-router";
const CONTENT_DIGEST: &str = "gitops.kars.io/content-digest";

/// The router's policy kinds (as `/internal/policy-status` names them) and the environment
/// variable that tells the router where each is mounted.
pub const POLICY_MOUNTS: [(&str, &str); 5] = [
    ("EgressAllowlist", "EGRESS_ALLOWLIST_DIR"),
    ("EgressApproval", "EGRESS_APPROVAL_DIR"),
    ("AgtProfile", "AGT_POLICY_DIR"),
    ("InferencePolicy", "INFERENCE_POLICY_DIR"),
    ("Memory", "MEMORY_BINDING_DIR"),
];

/// The rendered router container of a Deployment, if it has one.
pub fn router_container(deployment: &Value) -> Option<&Value> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == ROUTER_CONTAINER))
}

/// (mount path, ConfigMap) for every rendered ConfigMap a Deployment mounts into its router.
/// `objects` are rendered objects (only ConfigMaps in the Deployment's namespace are used).
pub fn router_configmaps<'a>(
    deployment: &Value,
    objects: &[&'a Value],
) -> Vec<(String, &'a Value)> {
    let ns = deployment["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    let Some(router) = router_container(deployment) else {
        return Vec::new();
    };
    router["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let path = m["mountPath"].as_str()?;
            let cm_name = volumes
                .as_array()?
                .iter()
                .find(|v| v["name"] == m["name"])?["configMap"]["name"]
                .as_str()?;
            let cm = objects.iter().copied().find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"] == cm_name
                    && o["metadata"]["namespace"] == ns
            })?;
            Some((path.to_string(), cm))
        })
        .collect()
}

/// Policy kind → the digest the renderer annotated on the ConfigMap mounted where the
/// router reads that kind (its `*_DIR` environment variable).
pub fn expected_digests(deployment: &Value, objects: &[&Value]) -> BTreeMap<String, String> {
    let Some(router) = router_container(deployment) else {
        return BTreeMap::new();
    };
    let mounted = router_configmaps(deployment, objects);
    let env = |name: &str| {
        router["env"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["name"] == name))
            .and_then(|e| e["value"].as_str())
    };
    POLICY_MOUNTS
        .iter()
        .filter_map(|(kind, var)| {
            let path = env(var)?;
            let (_, cm) = mounted.iter().find(|(p, _)| p == path)?;
            let digest = cm["metadata"]["annotations"][CONTENT_DIGEST].as_str()?;
            Some((kind.to_string(), digest.to_string()))
        })
        .collect()
}

/// Checks a router's policy-status answer against `expected` (kind → digest). `Ok` when every
/// expected policy is loaded with its digest; else one line per difference.
pub fn compare(expected: &BTreeMap<String, String>, status: &Value) -> Result<(), Vec<String>> {
    let entries = status["entries"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for (path, want) in expected {
        match entries.iter().find(|e| e["kind"] == path.as_str()) {
            None => problems.push(format!("{path}: the router does not report this policy")),
            Some(e) => {
                if let Some(err) = e["last_error"].as_str() {
                    problems.push(format!("{path}: the router could not load it: {err}"));
                } else if e["digest"] != want.as_str() {
                    problems.push(format!(
                        "{path}: the router enforces {}, the rendered policy is {want}",
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
    expected: &BTreeMap<String, String>,
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

/// The router port the renderer gives every sandbox.
pub const ROUTER_PORT: u16 = 8443;

/// What the check found for one sandbox Deployment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Enforcement {
    /// Every running router pod reports the rendered digests.
    Enforced {
        /// How many pods were asked.
        pods: usize,
    },
    /// A running router pod reports something else (or cannot be asked).
    NotEnforced(Vec<String>),
    /// No router pod is running (nothing can enforce yet, nothing contradicts).
    NoRunningPods,
}

/// Checks every rendered router Deployment in `objects` against its running pods.
/// Returns (`Deployment namespace/name`, result) per Deployment with a router.
pub async fn check_all(
    kube: &kube::Client,
    http: &reqwest::Client,
    objects: &[&Value],
) -> Vec<(String, Enforcement)> {
    use k8s_openapi::api::core::v1::{Pod, Secret};
    let configmaps: Vec<&Value> = objects
        .iter()
        .copied()
        .filter(|o| o["kind"] == "ConfigMap")
        .collect();
    let deployments: Vec<(&Value, BTreeMap<String, String>)> = objects
        .iter()
        .filter(|o| o["kind"] == "Deployment")
        .map(|d| (*d, expected_digests(d, &configmaps)))
        .filter(|(_, e)| !e.is_empty())
        .collect();
    let mut out = Vec::new();
    if deployments.is_empty() {
        return out;
    }
    // One list for all sandboxes (every sandbox pod carries this label), not one per sandbox.
    let all: kube::Api<Pod> = kube::Api::all(kube.clone());
    let pods = match all
        .list(&kube::api::ListParams::default().labels("kars.azure.com/sandbox"))
        .await
    {
        Ok(l) => l.items,
        Err(e) => {
            for (dep, _) in &deployments {
                let key = format!(
                    "{}/{}",
                    dep["metadata"]["namespace"].as_str().unwrap_or_default(),
                    dep["metadata"]["name"].as_str().unwrap_or_default()
                );
                out.push((
                    key,
                    Enforcement::NotEnforced(vec![format!(
                        "cannot list pods to ask their routers: {e}"
                    )]),
                ));
            }
            return out;
        }
    };
    for (dep, expected) in &deployments {
        let ns = dep["metadata"]["namespace"].as_str().unwrap_or_default();
        let name = dep["metadata"]["name"].as_str().unwrap_or_default();
        let key = format!("{ns}/{name}");
        let selector: BTreeMap<String, String> = dep["spec"]["selector"]["matchLabels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let running: Vec<String> = pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|p| {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .filter_map(|p| {
                let st = p.status.as_ref()?;
                (st.phase.as_deref() == Some("Running"))
                    .then(|| st.pod_ip.clone())
                    .flatten()
            })
            .collect();
        if running.is_empty() {
            out.push((key, Enforcement::NoRunningPods));
            continue;
        }
        let secrets: kube::Api<Secret> = kube::Api::namespaced(kube.clone(), ns);
        let token = match secrets.get("router-admin-token").await {
            Ok(s) => s
                .data
                .and_then(|d| {
                    d.get("token")
                        .map(|b| String::from_utf8_lossy(&b.0).trim().to_string())
                })
                .unwrap_or_default(),
            Err(e) => {
                out.push((
                    key,
                    Enforcement::NotEnforced(vec![format!("router-admin-token: {e}")]),
                ));
                continue;
            }
        };
        let mut problems = Vec::new();
        for ip in &running {
            let host = if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip.clone()
            };
            if let Err(p) = probe(
                http,
                &format!("http://{host}:{ROUTER_PORT}"),
                &token,
                expected,
            )
            .await
            {
                problems.extend(p.into_iter().map(|x| format!("pod {ip}: {x}")));
            }
        }
        out.push((
            key,
            if problems.is_empty() {
                Enforcement::Enforced {
                    pods: running.len(),
                }
            } else {
                Enforcement::NotEnforced(problems)
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_mounted_policy_must_be_reported_with_its_digest() {
        let expected = BTreeMap::from([
            ("EgressAllowlist".to_string(), "sha256:a".to_string()),
            ("AgtProfile".to_string(), "sha256:b".to_string()),
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
