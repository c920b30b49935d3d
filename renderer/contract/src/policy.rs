//! The compiled policies a sandbox's router enforces: each kind's ConfigMap, files, mount and
//! environment variable, and the digest framing both sides compute.
//!
//! The renderer compiles each policy into a ConfigMap named by [`PolicyKind::configmap_name`],
//! annotated with [`crate::labels::CONTENT_DIGEST_ANNOTATION`] = [`digest_files`] of the files
//! the router reads ([`PolicyKind::wants`]); the Deployment mounts it at
//! [`PolicyKind::mount_path`] and sets [`PolicyKind::dir_env`] to that path. The router reads
//! the files of each mount its environment names, compiles them, and reports the same digest at
//! `/internal/policy-status` under [`PolicyKind::name`].

use sha2::{Digest, Sha256};

/// The policy kinds a router loads, named as `/internal/policy-status` reports them.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum PolicyKind {
    /// `allowlist.json`: the sandbox's static egress allowlist.
    EgressAllowlist,
    /// `approval-<name>.json`: time-limited EgressApprovals.
    EgressApproval,
    /// `*.yaml`: the AGT governance profile of the sandbox's ToolPolicy.
    AgtProfile,
    /// `inference-policy.json`: upstreams and token budgets.
    InferencePolicy,
    /// `binding.json`: the KarsMemory binding.
    Memory,
}

/// The egress allowlist file.
pub const ALLOWLIST_FILE: &str = "allowlist.json";
/// Prefix of an EgressApproval file (`approval-<name>.json`).
pub const APPROVAL_FILE_PREFIX: &str = "approval-";
/// The compiled AGT profile file.
pub const AGT_PROFILE_FILE: &str = "agt-profile.yaml";
/// The ToolPolicy's own fields beside the AGT profile (`appliesTo`, `approval`, `commerce`,
/// `rateLimit`), enforced by the router on the tool calls they apply to (in its digest).
pub const AGT_SUMMARY_FILE: &str = "profile.json";
/// The top-level keys of an AGT profile the router reads (`version` is descriptive).
pub const AGT_PROFILE_KEYS: [&str; 3] = ["version", "agent", "policies"];
/// The keys of an AGT profile rule the router acts on; any other key is ignored by it, and
/// `kars validate` reports it (see the renderer's `maturity` module).
pub const AGT_RULE_KEYS: [&str; 8] = [
    "name",
    "type",
    "allowed_actions",
    "denied_actions",
    "actions",
    "priority",
    "max_calls",
    "window",
];
/// The inference policy file.
pub const INFERENCE_POLICY_FILE: &str = "inference-policy.json";
/// The memory binding file.
pub const MEMORY_BINDING_FILE: &str = "binding.json";
/// An MCP server's settings file (mounted for the agent runtime; the router does not load it).
pub const MCP_SERVER_FILE: &str = "server.json";
/// Environment variable naming the directory of the MCP server mounts.
pub const MCP_SERVERS_DIR_ENV: &str = "MCP_SERVERS_DIR";
/// Directory of the MCP server mounts (one subdirectory per server).
pub const MCP_SERVERS_DIR: &str = "/etc/kars/mcp";

impl PolicyKind {
    /// Every kind, in the order the renderer mounts them.
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::EgressAllowlist,
        PolicyKind::EgressApproval,
        PolicyKind::AgtProfile,
        PolicyKind::InferencePolicy,
        PolicyKind::Memory,
    ];

    /// The name `/internal/policy-status` reports.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::EgressAllowlist => "EgressAllowlist",
            PolicyKind::EgressApproval => "EgressApproval",
            PolicyKind::AgtProfile => "AgtProfile",
            PolicyKind::InferencePolicy => "InferencePolicy",
            PolicyKind::Memory => "Memory",
        }
    }

    /// The kind a policy-status name stands for.
    pub fn from_name(name: &str) -> Option<PolicyKind> {
        PolicyKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The environment variable that tells the router where this kind is mounted.
    pub fn dir_env(self) -> &'static str {
        match self {
            PolicyKind::EgressAllowlist => "EGRESS_ALLOWLIST_DIR",
            PolicyKind::EgressApproval => "EGRESS_APPROVAL_DIR",
            PolicyKind::AgtProfile => "AGT_POLICY_DIR",
            PolicyKind::InferencePolicy => "INFERENCE_POLICY_DIR",
            PolicyKind::Memory => "MEMORY_BINDING_DIR",
        }
    }

    /// Where the renderer mounts this kind's ConfigMap in the router container.
    pub fn mount_path(self) -> &'static str {
        match self {
            PolicyKind::EgressAllowlist => "/etc/kars/egress",
            PolicyKind::EgressApproval => "/etc/kars/egress-approvals",
            PolicyKind::AgtProfile => "/etc/agt/policies",
            PolicyKind::InferencePolicy => "/etc/kars/inference",
            PolicyKind::Memory => "/etc/kars/memory",
        }
    }

    /// The pod volume that carries the ConfigMap.
    pub fn volume(self) -> &'static str {
        match self {
            PolicyKind::EgressAllowlist => "egress-allowlist",
            PolicyKind::EgressApproval => "egress-approvals",
            PolicyKind::AgtProfile => "agt-policy",
            PolicyKind::InferencePolicy => "inference-policy",
            PolicyKind::Memory => "claw-memory-binding",
        }
    }

    /// The `kars.azure.com/artifact` label of the ConfigMap (upstream's names).
    pub fn artifact(self) -> &'static str {
        match self {
            PolicyKind::EgressAllowlist => "egress-allowlist",
            PolicyKind::EgressApproval => "egress-approvals",
            PolicyKind::AgtProfile => "compiled-profile",
            PolicyKind::InferencePolicy => "inference-policy-profile",
            PolicyKind::Memory => "claw-memory-binding",
        }
    }

    /// The digest annotation upstream's controller puts on the ConfigMap (beside ours).
    pub fn upstream_digest_annotation(self) -> Option<&'static str> {
        match self {
            PolicyKind::EgressAllowlist => Some("kars.azure.com/egress-allowlist-digest"),
            PolicyKind::EgressApproval => None,
            PolicyKind::AgtProfile => Some("kars.azure.com/agt-profile-digest"),
            PolicyKind::InferencePolicy => Some("kars.azure.com/inference-policy-digest"),
            PolicyKind::Memory => Some("kars.azure.com/claw-memory-digest"),
        }
    }

    /// The annotation naming the CR a shared ConfigMap is compiled from (`None` for the
    /// sandbox's own egress ConfigMaps).
    pub fn owner_annotation(self) -> Option<&'static str> {
        match self {
            PolicyKind::EgressAllowlist | PolicyKind::EgressApproval => None,
            PolicyKind::AgtProfile => Some("kars.azure.com/toolpolicy"),
            PolicyKind::InferencePolicy => Some("kars.azure.com/inferencepolicy"),
            PolicyKind::Memory => Some("kars.azure.com/karsmemory"),
        }
    }

    /// The ConfigMap name: per sandbox for the egress kinds, per referenced CR (`owner`, the
    /// ToolPolicy, InferencePolicy or KarsMemory name) for the others.
    pub fn configmap_name(self, sandbox: &str, owner: &str) -> String {
        match self {
            PolicyKind::EgressAllowlist => format!("karssandbox-{sandbox}-egress-allowlist"),
            PolicyKind::EgressApproval => format!("karssandbox-{sandbox}-egress-approvals"),
            PolicyKind::AgtProfile => format!("toolpolicy-{owner}-profile"),
            PolicyKind::InferencePolicy => format!("inferencepolicy-{owner}-profile"),
            PolicyKind::Memory => format!("karsmemory-{owner}-binding"),
        }
    }

    /// True for the files of this kind in its mount (the files its digest covers).
    pub fn wants(self, file: &str) -> bool {
        match self {
            PolicyKind::EgressAllowlist => file == ALLOWLIST_FILE,
            PolicyKind::EgressApproval => {
                file.starts_with(APPROVAL_FILE_PREFIX) && file.ends_with(".json")
            }
            PolicyKind::AgtProfile => {
                file.ends_with(".yaml") || file.ends_with(".yml") || file == AGT_SUMMARY_FILE
            }
            PolicyKind::InferencePolicy => file == INFERENCE_POLICY_FILE,
            PolicyKind::Memory => file == MEMORY_BINDING_FILE,
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The file of EgressApproval `name`.
pub fn approval_file(name: &str) -> String {
    format!("{APPROVAL_FILE_PREFIX}{name}.json")
}

/// The ConfigMap of MCP server `name`.
pub fn mcp_configmap_name(name: &str) -> String {
    format!("mcp-{name}-server")
}

/// The policy digest of a set of files, upstream kars' framing:
/// `sha256( Σ u64be(len(name)) ‖ name ‖ u64be(len(body)) ‖ body )`, written `sha256:<hex>`,
/// over the files in the order given (both sides sort them by name).
pub fn digest_files<N: AsRef<[u8]>, B: AsRef<[u8]>>(
    files: impl IntoIterator<Item = (N, B)>,
) -> String {
    let mut h = Sha256::new();
    for (name, body) in files {
        let (name, body) = (name.as_ref(), body.as_ref());
        h.update((name.len() as u64).to_be_bytes());
        h.update(name);
        h.update((body.len() as u64).to_be_bytes());
        h.update(body);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// The policy digest of one file.
pub fn digest_file(name: &str, body: &[u8]) -> String {
    digest_files([(name, body)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_matches_the_documented_rule() {
        let mut manual = Vec::new();
        manual.extend_from_slice(&14u64.to_be_bytes());
        manual.extend_from_slice(b"allowlist.json");
        manual.extend_from_slice(&2u64.to_be_bytes());
        manual.extend_from_slice(b"{}");
        assert_eq!(
            digest_file("allowlist.json", b"{}"),
            crate::sha256_digest(&manual)
        );
        assert_ne!(
            digest_file("allowlist.json", b"{}"),
            digest_file("allowlist.jso", b"n{}"),
            "the length prefix separates name and body"
        );
        let owned = [("allowlist.json".to_string(), b"{}".to_vec())];
        assert_eq!(
            digest_files(owned.iter().map(|(n, b)| (n, b))),
            digest_file("allowlist.json", b"{}")
        );
    }

    #[test]
    fn names_round_trip_and_every_file_is_wanted_by_its_kind() {
        for k in PolicyKind::ALL {
            assert_eq!(PolicyKind::from_name(k.name()), Some(k));
        }
        assert!(PolicyKind::EgressAllowlist.wants(ALLOWLIST_FILE));
        assert!(PolicyKind::EgressApproval.wants(&approval_file("a")));
        assert!(PolicyKind::AgtProfile.wants(AGT_PROFILE_FILE));
        // The ToolPolicy's own rules are enforced by the router, so they are in the digest.
        assert!(PolicyKind::AgtProfile.wants(AGT_SUMMARY_FILE));
        assert!(!PolicyKind::AgtProfile.wants("notes.json"));
        assert!(PolicyKind::InferencePolicy.wants(INFERENCE_POLICY_FILE));
        assert!(PolicyKind::Memory.wants(MEMORY_BINDING_FILE));
        assert!(!PolicyKind::EgressApproval.wants("approval-a.yaml"));
    }
}
