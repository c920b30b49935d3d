//! The closed set of SRE remediations (upstream's `KarsSREAction`), typed: one parse of
//! `spec.action` that `kars validate`, `kars sre propose` and the agent's executor all use, so
//! what is proposed, what validates and what runs are the same rules.
//!
//! Rules (upstream semantics): the type is one of five; each type's parameters are required;
//! the namespace is never one of [`SRE_DENIED_NAMESPACES`]; `replicas` is an integer in
//! 0..=50, refused (never clamped) outside it; names are DNS-1123.

use std::collections::BTreeMap;
use std::fmt;

use crate::api::FreeForm;
pub use crate::cel::SRE_ACTION_TYPES;
pub use crate::validate::SRE_DENIED_NAMESPACES;

/// Highest `replicas` a ScaleDeployment may ask for.
pub const MAX_SCALE_REPLICAS: i64 = 50;
/// Default `ttlMinutes` of a proposal (upstream).
pub const DEFAULT_TTL_MINUTES: u32 = 15;
/// Highest `ttlMinutes`.
pub const MAX_TTL_MINUTES: u32 = 60;
/// The namespace SRE actions live in (upstream's CLI hard-codes it).
pub const SRE_NAMESPACE: &str = "kars-sre";

/// The workload kinds RolloutRestart accepts.
pub const RESTART_KINDS: [&str; 3] = ["Deployment", "StatefulSet", "DaemonSet"];

/// One validated remediation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SreOperation {
    /// Delete a ResourceQuota (refused at run time when the live quota is controller-managed).
    DeleteResourceQuota {
        /// Target namespace.
        namespace: String,
        /// Quota name.
        name: String,
    },
    /// Set one container's image of a Deployment.
    PatchDeploymentImage {
        /// Target namespace.
        namespace: String,
        /// Deployment name.
        name: String,
        /// Container name.
        container: String,
        /// New image reference.
        image: String,
    },
    /// Set a Deployment's replicas.
    ScaleDeployment {
        /// Target namespace.
        namespace: String,
        /// Deployment name.
        name: String,
        /// 0..=50.
        replicas: i64,
    },
    /// Restart a workload's pods (template annotation `kars.azure.com/restartedAt`).
    RolloutRestart {
        /// Target namespace.
        namespace: String,
        /// Workload name.
        name: String,
        /// Deployment, StatefulSet or DaemonSet.
        kind: String,
    },
    /// Delete one pod.
    DeletePod {
        /// Target namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
}

/// Why an action is not one of the closed set (each names the field to fix).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SreProblem {
    /// The type is not one of the five.
    #[error("spec.action.type: {0:?} is not an SRE action (one of: {types})", types = SRE_ACTION_TYPES.join(", "))]
    UnknownType(String),
    /// A parameter the type needs is missing.
    #[error("spec.action.params.{param}: required for {action}")]
    MissingParam {
        /// The type.
        action: String,
        /// The parameter.
        param: &'static str,
    },
    /// A parameter has the wrong shape.
    #[error("spec.action.params.{param}: {message}")]
    BadParam {
        /// The parameter.
        param: String,
        /// What is wrong.
        message: String,
    },
    /// The namespace is on the denylist.
    #[error("spec.action.params.namespace: SRE actions may not target {0:?} (denied: {denied})", denied = SRE_DENIED_NAMESPACES.join(", "))]
    DeniedNamespace(String),
    /// `replicas` is outside 0..=50.
    #[error(
        "spec.action.params.replicas: {0} is outside 0..={MAX_SCALE_REPLICAS} (refused, not clamped)"
    )]
    ReplicasOutOfRange(String),
}

impl SreProblem {
    /// The parameter the problem is about (`None`: the type).
    pub fn param(&self) -> Option<&str> {
        match self {
            SreProblem::UnknownType(_) => None,
            SreProblem::MissingParam { param, .. } => Some(param),
            SreProblem::BadParam { param, .. } => Some(param),
            SreProblem::DeniedNamespace(_) => Some("namespace"),
            SreProblem::ReplicasOutOfRange(_) => Some("replicas"),
        }
    }
}

fn required(action: &str) -> &'static [&'static str] {
    match action {
        "PatchDeploymentImage" => &["namespace", "name", "container", "image"],
        "ScaleDeployment" => &["namespace", "name", "replicas"],
        _ => &["namespace", "name"],
    }
}

fn is_dns_label(s: &str) -> bool {
    kars_contract::host::is_dns_label(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

impl SreOperation {
    /// Parses and checks `spec.action` (`type` and `params`). Every problem is returned, not
    /// only the first.
    pub fn parse(
        action: &str,
        params: &BTreeMap<String, FreeForm>,
    ) -> Result<SreOperation, Vec<SreProblem>> {
        if !SRE_ACTION_TYPES.contains(&action) {
            return Err(vec![SreProblem::UnknownType(action.to_string())]);
        }
        let mut problems = Vec::new();
        for p in required(action) {
            if !params.contains_key(*p) {
                problems.push(SreProblem::MissingParam {
                    action: action.to_string(),
                    param: p,
                });
            }
        }
        let text = |key: &str, problems: &mut Vec<SreProblem>| -> String {
            match params.get(key) {
                None => String::new(),
                Some(v) => match v.as_str() {
                    Some(s) if !s.is_empty() => s.to_string(),
                    _ => {
                        problems.push(SreProblem::BadParam {
                            param: key.to_string(),
                            message: "must be a non-empty string".into(),
                        });
                        String::new()
                    }
                },
            }
        };
        let namespace = text("namespace", &mut problems);
        if !namespace.is_empty() {
            if SRE_DENIED_NAMESPACES.contains(&namespace.as_str()) {
                problems.push(SreProblem::DeniedNamespace(namespace.clone()));
            } else if !is_dns_label(&namespace) {
                problems.push(SreProblem::BadParam {
                    param: "namespace".into(),
                    message: format!("{namespace:?} is not a namespace name (DNS-1123 label)"),
                });
            }
        }
        let name = text("name", &mut problems);
        if !name.is_empty() && !is_dns_subdomain(&name) {
            problems.push(SreProblem::BadParam {
                param: "name".into(),
                message: format!("{name:?} is not an object name (DNS-1123 subdomain)"),
            });
        }
        for key in params.keys() {
            let known = required(action).contains(&key.as_str())
                || (action == "RolloutRestart" && key == "kind");
            if !known {
                problems.push(SreProblem::BadParam {
                    param: key.clone(),
                    message: format!("not a parameter of {action}"),
                });
            }
        }
        let op = match action {
            "DeleteResourceQuota" => SreOperation::DeleteResourceQuota { namespace, name },
            "DeletePod" => SreOperation::DeletePod { namespace, name },
            "PatchDeploymentImage" => {
                let container = text("container", &mut problems);
                let image = text("image", &mut problems);
                if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    problems.push(SreProblem::BadParam {
                        param: "image".into(),
                        message: "an image reference has no spaces or control characters".into(),
                    });
                }
                SreOperation::PatchDeploymentImage {
                    namespace,
                    name,
                    container,
                    image,
                }
            }
            "ScaleDeployment" => {
                let replicas = match params.get("replicas") {
                    None => 0,
                    Some(v) => match v.as_i64() {
                        Some(n) if (0..=MAX_SCALE_REPLICAS).contains(&n) => n,
                        Some(n) => {
                            problems.push(SreProblem::ReplicasOutOfRange(n.to_string()));
                            0
                        }
                        None => {
                            problems.push(SreProblem::ReplicasOutOfRange(v.to_string()));
                            0
                        }
                    },
                };
                SreOperation::ScaleDeployment {
                    namespace,
                    name,
                    replicas,
                }
            }
            _ => {
                let kind = match params.get("kind") {
                    None => "Deployment".to_string(),
                    Some(v) => match v.as_str() {
                        Some(k) if RESTART_KINDS.contains(&k) => k.to_string(),
                        _ => {
                            problems.push(SreProblem::BadParam {
                                param: "kind".into(),
                                message: format!("{v} is not one of {}", RESTART_KINDS.join(", ")),
                            });
                            String::new()
                        }
                    },
                };
                SreOperation::RolloutRestart {
                    namespace,
                    name,
                    kind,
                }
            }
        };
        if problems.is_empty() {
            Ok(op)
        } else {
            Err(problems)
        }
    }

    /// The type word (`ScaleDeployment`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            SreOperation::DeleteResourceQuota { .. } => "DeleteResourceQuota",
            SreOperation::PatchDeploymentImage { .. } => "PatchDeploymentImage",
            SreOperation::ScaleDeployment { .. } => "ScaleDeployment",
            SreOperation::RolloutRestart { .. } => "RolloutRestart",
            SreOperation::DeletePod { .. } => "DeletePod",
        }
    }

    /// The namespace the action writes in.
    pub fn namespace(&self) -> &str {
        match self {
            SreOperation::DeleteResourceQuota { namespace, .. }
            | SreOperation::PatchDeploymentImage { namespace, .. }
            | SreOperation::ScaleDeployment { namespace, .. }
            | SreOperation::RolloutRestart { namespace, .. }
            | SreOperation::DeletePod { namespace, .. } => namespace,
        }
    }

    /// The target object, `Kind/namespace/name`.
    pub fn target(&self) -> String {
        let (kind, ns, name) = match self {
            SreOperation::DeleteResourceQuota { namespace, name } => {
                ("ResourceQuota", namespace, name)
            }
            SreOperation::PatchDeploymentImage {
                namespace, name, ..
            }
            | SreOperation::ScaleDeployment {
                namespace, name, ..
            } => ("Deployment", namespace, name),
            SreOperation::RolloutRestart {
                namespace,
                name,
                kind,
            } => (kind.as_str(), namespace, name),
            SreOperation::DeletePod { namespace, name } => ("Pod", namespace, name),
        };
        format!("{kind}/{ns}/{name}")
    }

    /// The writer ClusterRole the action runs with (upstream's names).
    pub fn writer_role(&self) -> &'static str {
        match self {
            SreOperation::DeleteResourceQuota { .. } => "kars-sre-writer-quotas",
            _ => "kars-sre-writer-workloads",
        }
    }

    /// What the action changes, in one sentence.
    pub fn change(&self) -> String {
        match self {
            SreOperation::DeleteResourceQuota { namespace, name } => {
                format!("delete ResourceQuota {name} in namespace {namespace}")
            }
            SreOperation::PatchDeploymentImage {
                namespace,
                name,
                container,
                image,
            } => format!(
                "set the image of container {container} of Deployment {namespace}/{name} to {image}"
            ),
            SreOperation::ScaleDeployment {
                namespace,
                name,
                replicas,
            } => format!("scale Deployment {namespace}/{name} to {replicas} replicas"),
            SreOperation::RolloutRestart {
                namespace,
                name,
                kind,
            } => format!("restart every pod of {kind} {namespace}/{name} (rolling)"),
            SreOperation::DeletePod { namespace, name } => {
                format!("delete Pod {namespace}/{name} (its controller re-creates it)")
            }
        }
    }

    /// Who and what the action can affect.
    pub fn blast_radius(&self) -> String {
        let ns = self.namespace();
        match self {
            SreOperation::DeleteResourceQuota { .. } => format!(
                "namespace {ns}: every workload there may create pods beyond the quota's limits until a quota is applied again (Git re-applies it if the quota is in the repository)"
            ),
            SreOperation::PatchDeploymentImage { name, .. } => format!(
                "Deployment {ns}/{name}: all of its pods are replaced with the new image (rolling update); nothing else"
            ),
            SreOperation::ScaleDeployment { name, replicas, .. } => format!(
                "Deployment {ns}/{name}: its pod count becomes {replicas}{}",
                if *replicas == 0 {
                    " (the workload stops serving)"
                } else {
                    ""
                }
            ),
            SreOperation::RolloutRestart { name, kind, .. } => {
                format!("{kind} {ns}/{name}: every pod restarts once, rolling; nothing else")
            }
            SreOperation::DeletePod { name, .. } => {
                format!("Pod {ns}/{name} only; its owner replaces it")
            }
        }
    }
}

/// A proposal's fields (what `sre/actions/<id>.yaml` holds besides the approval).
#[derive(Clone, Debug, PartialEq)]
pub struct Proposal {
    /// The id (`metadata.name`, a DNS label).
    pub id: String,
    /// `spec.action.type`.
    pub action: String,
    /// `spec.action.params`.
    pub params: BTreeMap<String, FreeForm>,
    /// What is wrong (at most 512 characters).
    pub diagnosis: String,
    /// Why this fixes it (at most 2048 characters, no control bytes but newline and tab).
    pub rationale: String,
    /// Minutes the approval has to arrive in (1..=60).
    pub ttl_minutes: u32,
}

/// Why a proposal's text fields are refused.
pub fn check_proposal_text(p: &Proposal) -> Vec<String> {
    let mut out = Vec::new();
    if !kars_contract::host::is_dns_label(&p.id) {
        out.push(format!(
            "id {:?}: must be a DNS-1123 label (lowercase letters, digits and '-', at most 63)",
            p.id
        ));
    }
    if p.diagnosis.trim().is_empty() || p.diagnosis.chars().count() > 512 {
        out.push("diagnosis: required, at most 512 characters".into());
    }
    if p.rationale.trim().is_empty() || p.rationale.chars().count() > 2048 {
        out.push("rationale: required, at most 2048 characters".into());
    }
    if p.rationale
        .chars()
        .chain(p.diagnosis.chars())
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        out.push("diagnosis/rationale: control characters are not allowed".into());
    }
    if !(1..=MAX_TTL_MINUTES).contains(&p.ttl_minutes) {
        out.push(format!(
            "ttl-minutes: {} is outside 1..={MAX_TTL_MINUTES}",
            p.ttl_minutes
        ));
    }
    out
}

impl Proposal {
    /// The text of `sre/actions/<id>.yaml` for a new proposal (approval Pending): a comment
    /// saying how to approve or reject, then the manifest (keys sorted).
    pub fn file_text(&self) -> Result<String, String> {
        let yaml = crate::output::object_yaml(&self.manifest("Pending", None))?;
        Ok(format!(
            "# Proposed with `kars sre propose`. Approve: `kars sre approve {id}` (a signed commit by someone\n# other than the proposer, then the merge). Reject: `kars sre reject {id} --reason …`.\n{yaml}",
            id = self.id
        ))
    }

    /// The `KarsSREAction` manifest, approval state `state` (with `note`).
    pub fn manifest(&self, state: &str, note: Option<&str>) -> serde_json::Value {
        let mut approval = serde_json::json!({"state": state});
        if let Some(n) = note.filter(|n| !n.is_empty()) {
            approval["note"] = serde_json::json!(n);
        }
        serde_json::json!({
            "apiVersion": format!("{}/v1alpha1", kars_contract::KARS_GROUP),
            "kind": "KarsSREAction",
            "metadata": {"name": self.id, "namespace": SRE_NAMESPACE},
            "spec": {
                "action": {"type": self.action, "params": self.params},
                "approval": approval,
                "diagnosis": self.diagnosis,
                "rationale": self.rationale,
                "ttlMinutes": self.ttl_minutes,
            },
        })
    }
}

impl fmt::Display for SreOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.change())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: serde_json::Value) -> BTreeMap<String, FreeForm> {
        serde_json::from_value(v).unwrap_or_default()
    }

    #[test]
    fn each_type_parses_with_its_parameters() {
        let op = SreOperation::parse(
            "ScaleDeployment",
            &params(json!({"namespace": "team-a", "name": "web", "replicas": 3})),
        );
        assert_eq!(
            op,
            Ok(SreOperation::ScaleDeployment {
                namespace: "team-a".into(),
                name: "web".into(),
                replicas: 3
            })
        );
        let op = SreOperation::parse(
            "RolloutRestart",
            &params(json!({"namespace": "team-a", "name": "db"})),
        );
        assert!(
            matches!(op, Ok(SreOperation::RolloutRestart { ref kind, .. }) if kind == "Deployment")
        );
    }

    #[test]
    fn replicas_outside_the_bounds_are_refused_not_clamped() {
        for bad in [json!(51), json!(-1), json!("3"), json!(2.5)] {
            let r = SreOperation::parse(
                "ScaleDeployment",
                &params(json!({"namespace": "a", "name": "w", "replicas": bad})),
            );
            assert!(
                matches!(&r, Err(p) if matches!(p[0], SreProblem::ReplicasOutOfRange(_))),
                "{bad}: {r:?}"
            );
        }
        assert!(
            SreOperation::parse(
                "ScaleDeployment",
                &params(json!({"namespace": "a", "name": "w", "replicas": 50}))
            )
            .is_ok()
        );
    }

    #[test]
    fn denylisted_namespaces_unknown_types_and_extra_params_are_refused() {
        for ns in SRE_DENIED_NAMESPACES {
            let r =
                SreOperation::parse("DeletePod", &params(json!({"namespace": ns, "name": "p"})));
            assert_eq!(r, Err(vec![SreProblem::DeniedNamespace(ns.to_string())]));
        }
        let r = SreOperation::parse("DeleteNamespace", &params(json!({"name": "x"})));
        assert_eq!(
            r,
            Err(vec![SreProblem::UnknownType("DeleteNamespace".into())])
        );
        let r = SreOperation::parse(
            "DeletePod",
            &params(json!({"namespace": "a", "name": "p", "force": true})),
        );
        assert!(
            matches!(&r, Err(p) if p[0].param() == Some("force")),
            "{r:?}"
        );
        let r = SreOperation::parse("DeletePod", &params(json!({"namespace": "a"})));
        assert!(
            matches!(&r, Err(p) if p[0] == SreProblem::MissingParam { action: "DeletePod".into(), param: "name" })
        );
        let r = SreOperation::parse(
            "DeletePod",
            &params(json!({"namespace": "../etc", "name": "p"})),
        );
        assert!(r.is_err());
    }
}
