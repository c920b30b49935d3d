//! `KarsSandbox` (one AI agent behind the router) and `KarsPairing`.

#[allow(unused_imports)]
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

// ---- KarsSandbox ----------------------------------------------------------------------------

kars_object!(
    /// One AI agent: a runtime in its own namespace behind the router sidecar.
    KarsSandbox,
    KarsSandboxSpec
);

/// `KarsSandbox.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KarsSandboxSpec {
    /// Which agent runtime runs, and its settings.
    pub runtime: Runtime,
    /// Pod hardening.
    pub sandbox: SandboxSettings,
    /// The InferencePolicy (same namespace) the router enforces.
    pub inference_ref: NameRef,
    /// Optional KarsMemory binding (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_ref: Option<NameRef>,
    /// Foundry agent settings (not with BYO).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<FoundryAgent>,
    /// Tool governance; absent means enabled with ToolPolicy `kars-default` (upstream rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub governance: Option<Governance>,
    /// Azure services the agent's identity may use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub azure_services: Vec<AzureService>,
    /// Egress policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// Container resources of the agent container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Scale the agent to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspended: Option<bool>,
}

/// The agent runtimes upstream kars knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RuntimeKind {
    /// OpenClaw.
    OpenClaw,
    /// OpenAI Agents SDK.
    OpenAIAgents,
    /// Microsoft Agent Framework.
    MicrosoftAgentFramework,
    /// Semantic Kernel (no adapter upstream yet).
    SemanticKernel,
    /// LangGraph.
    LangGraph,
    /// Anthropic SDK.
    Anthropic,
    /// Pydantic AI.
    PydanticAi,
    /// Hermes.
    Hermes,
    /// Bring your own image.
    #[serde(rename = "BYO")]
    Byo,
}

impl RuntimeKind {
    /// The CRD spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::OpenClaw => "OpenClaw",
            RuntimeKind::OpenAIAgents => "OpenAIAgents",
            RuntimeKind::MicrosoftAgentFramework => "MicrosoftAgentFramework",
            RuntimeKind::SemanticKernel => "SemanticKernel",
            RuntimeKind::LangGraph => "LangGraph",
            RuntimeKind::Anthropic => "Anthropic",
            RuntimeKind::PydanticAi => "PydanticAi",
            RuntimeKind::Hermes => "Hermes",
            RuntimeKind::Byo => "BYO",
        }
    }
}

/// `spec.runtime`: the kind and exactly the matching block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Runtime {
    /// The runtime kind.
    pub kind: RuntimeKind,
    /// OpenClaw settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openclaw: Option<OpenClawRuntime>,
    /// OpenAI Agents settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub openai_agents: Option<CodeRuntime>,
    /// Microsoft Agent Framework settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microsoft_agent_framework: Option<CodeRuntime>,
    /// Semantic Kernel settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_kernel: Option<CodeRuntime>,
    /// LangGraph settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang_graph: Option<CodeRuntime>,
    /// Anthropic settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic: Option<CodeRuntime>,
    /// Pydantic AI settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pydantic_ai: Option<CodeRuntime>,
    /// Hermes settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hermes: Option<CodeRuntime>,
    /// BYO settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byo: Option<ByoRuntime>,
}

impl Runtime {
    /// The code-runtime blocks, in the CRD's order (exactly one is set for its kind).
    pub fn code_blocks(&self) -> [Option<&CodeRuntime>; 7] {
        [
            self.openai_agents.as_ref(),
            self.anthropic.as_ref(),
            self.pydantic_ai.as_ref(),
            self.hermes.as_ref(),
            self.microsoft_agent_framework.as_ref(),
            self.semantic_kernel.as_ref(),
            self.lang_graph.as_ref(),
        ]
    }
}

/// `runtime.openclaw`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OpenClawRuntime {
    /// OpenClaw version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Image override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// OpenClaw configuration (free-form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<FreeForm>,
    /// Extra environment variables (name → value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_env: Option<FreeForm>,
}

/// Where agent code comes from: exactly one of `oci` and `git`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentCode {
    /// An OCI image holding the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<OciCode>,
    /// A git repository holding the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitCode>,
}

/// `agentCode.oci`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciCode {
    /// Image reference.
    pub image: String,
}

/// `agentCode.git`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GitCode {
    /// Repository URL.
    pub url: String,
    /// Branch, tag or commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r#ref: Option<String>,
    /// Sub-directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// The code-based runtimes (`openaiAgents`, `anthropic`, `pydanticAi` with `pythonVersion`;
/// `microsoftAgentFramework`, `semanticKernel`, `langGraph` with `language`; `hermes` with
/// `version`). Which of the three version fields a block may carry is the CRD schema's rule,
/// checked before this type is read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CodeRuntime {
    /// Python version (Python runtimes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_version: Option<String>,
    /// Programming language (runtimes with a language choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Hermes version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Agent code source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_code: Option<AgentCode>,
    /// Entry point command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// Extra environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_env: Option<FreeForm>,
}

/// `runtime.byo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ByoRuntime {
    /// The agent image.
    pub image: String,
    /// Command override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Raw Kubernetes EnvVar objects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<FreeForm>,
    /// Runtime contract version (`v1`).
    pub contract_version: String,
}

/// `spec.sandbox`: pod hardening.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SandboxSettings {
    /// `standard`, `enhanced` or `confidential`.
    pub isolation: String,
    /// Seccomp profile name.
    pub seccomp_profile: String,
    /// SELinux type (the CRD's default is a quirk: see [`SELINUX_DEFAULT_QUIRK`]).
    pub selinux_context: String,
    /// Read-only root filesystem.
    pub read_only_root_filesystem: bool,
    /// Run as non-root.
    pub run_as_non_root: bool,
    /// Allow privilege escalation.
    pub allow_privilege_escalation: bool,
    /// Writable paths (not read by the upstream controller; mounts are fixed).
    pub writable_paths: Vec<String>,
}

/// The CRD declares `default: \"\"` for `selinuxContext` as a plain scalar, which is the
/// 4-character string `\"\"`, not an empty string. We treat it as "unset".
pub const SELINUX_DEFAULT_QUIRK: &str = "\\\"\\\"";

/// `spec.agent`: a Foundry agent definition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FoundryAgent {
    /// System instructions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Built-in tools.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// File ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub file_ids: Vec<String>,
}

/// `spec.governance`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Governance {
    /// Whether tool governance runs (schema default: false when the block is present).
    pub enabled: bool,
    /// The ToolPolicy (same namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_policy_ref: Option<OptionalNameRef>,
    /// Trust threshold 0..=1000.
    pub trust_threshold: i64,
    /// `name:AMID,name:AMID`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_peers: Option<String>,
    /// `local` or `global`.
    pub registry_mode: String,
    /// Deprecated singular MCP reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcp_server_ref: Option<OptionalNameRef>,
    /// MCP servers (same namespace), at most 8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcp_server_refs: Vec<OptionalNameRef>,
}

/// `spec.azureServices[]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AzureService {
    /// Service name.
    pub service: String,
    /// Account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// Permissions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<String>,
}

/// `spec.networkPolicy`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkPolicySpec {
    /// Default deny (always rendered upstream).
    pub default_deny: bool,
    /// `Strict` or `Learn`.
    pub egress_mode: String,
    /// Inline allowlist.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_endpoints: Vec<Endpoint>,
    /// Signed allowlist bundle; authoritative when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowlist_ref: Option<OciArtifactRef>,
}

/// A `host:port` egress endpoint.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Host name.
    pub host: String,
    /// TCP port.
    pub port: i64,
}

/// `spec.resources`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Requests (free-form quantities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<FreeForm>,
    /// Limits (free-form quantities).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<FreeForm>,
}

// ---- KarsPairing ----------------------------------------------------------------------------

kars_object!(
    /// A pairing slot (normally written by the controller).
    KarsPairing,
    KarsPairingSpec
);

/// `KarsPairing.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KarsPairingSpec {
    /// Hex SHA-256 of the pairing token.
    pub token_hash: String,
    /// ISO-8601 expiry.
    pub expires_at: String,
    /// Slots.
    pub slots_max: i64,
    /// Token budget.
    pub token_budget: i64,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Isolation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<String>,
}
