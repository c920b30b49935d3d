//! "Ready means enforced": compares what a sandbox's router reports at
//! `/internal/policy-status` with the digests the renderer put on the ConfigMaps it mounts.
//!
//! The router reports, per policy mount, the directory (`source_path`) and the digest of the
//! files it loaded and enforces. The rendered router container says which ConfigMap is mounted
//! at which path, and each rendered ConfigMap carries `gitops.kars.io/content-digest`. A
//! sandbox's policies are enforced when, for every mounted policy ConfigMap, the router reports
//! that digest for that path with no load error.

use std::collections::BTreeMap;

use serde_json::Value;

/// The rendered router container's name.
pub const ROUTER_CONTAINER: &str = "inference-router";
const CONTENT_DIGEST: &str = "gitops.kars.io/content-digest";

/// Mount path → the digest the renderer annotated, for the policy ConfigMaps a rendered
/// Deployment mounts into its router container. `configmaps` are the rendered objects (any
/// kinds; only ConfigMaps in the Deployment's namespace are used).
pub fn expected_digests(deployment: &Value, configmaps: &[&Value]) -> BTreeMap<String, String> {
    let ns = deployment["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let pod = &deployment["spec"]["template"]["spec"];
    let Some(router) = pod["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == ROUTER_CONTAINER))
    else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for m in router["volumeMounts"].as_array().into_iter().flatten() {
        let (Some(path), Some(vol)) = (m["mountPath"].as_str(), m["name"].as_str()) else {
            continue;
        };
        let Some(cm_name) = pod["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == vol))
            .and_then(|v| v["configMap"]["name"].as_str())
        else {
            continue;
        };
        let digest = configmaps
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"] == cm_name
                    && o["metadata"]["namespace"] == ns
            })
            .and_then(|cm| cm["metadata"]["annotations"][CONTENT_DIGEST].as_str());
        if let Some(d) = digest {
            out.insert(path.to_string(), d.to_string());
        }
    }
    out
}

/// Checks a router's policy-status answer against `expected` (mount path → digest). `Ok` when
/// every expected policy is loaded with its digest; else one line per difference.
pub fn compare(expected: &BTreeMap<String, String>, status: &Value) -> Result<(), Vec<String>> {
    let entries = status["entries"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for (path, want) in expected {
        match entries.iter().find(|e| e["source_path"] == path.as_str()) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_mounted_policy_must_be_reported_with_its_digest() {
        let expected = BTreeMap::from([
            ("/etc/kars/egress".to_string(), "sha256:a".to_string()),
            ("/etc/agt/policies".to_string(), "sha256:b".to_string()),
        ]);
        let ok = json!({"entries": [
            {"source_path": "/etc/kars/egress", "digest": "sha256:a", "last_error": null},
            {"source_path": "/etc/agt/policies", "digest": "sha256:b", "last_error": null},
        ]});
        assert_eq!(compare(&expected, &ok), Ok(()));
        let stale = json!({"entries": [
            {"source_path": "/etc/kars/egress", "digest": "sha256:old", "last_error": null},
            {"source_path": "/etc/agt/policies", "digest": "sha256:b", "last_error": "bad.yaml: x"},
        ]});
        let problems = compare(&expected, &stale).expect_err("stale");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("could not load") || problems[1].contains("could not load"));
        assert!(compare(&expected, &json!({})).is_err(), "nothing reported");
    }
}
