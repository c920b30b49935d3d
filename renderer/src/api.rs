//! Typed kars API (`kars.azure.com/v1alpha1`): every kind of the upstream CRDs, with the
//! upstream field names. Unknown fields are refused (`deny_unknown_fields`).
//!
//! Objects are deserialised *after* [`crate::schema`] has validated them and applied the CRD
//! defaults, so a `Option` here means "optional in the CRD without a default"; fields with a
//! CRD default are plain values. Free-form fields (`x-kubernetes-preserve-unknown-fields`) are
//! `serde_json::Value`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Free-form JSON kept as written.
pub type FreeForm = serde_json::Value;

/// The metadata a policy repository may set on an object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Object name.
    pub name: String,
    /// Namespace (namespaced kinds; the repository default applies when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A reference to a signed OCI artifact (`bundleRef`, `allowlistRef`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciArtifactRef {
    /// Registry host, e.g. `registry.example.com:5000`.
    pub registry: String,
    /// Repository path inside the registry.
    pub repository: String,
    /// Manifest digest, `sha256:<64 hex>`.
    pub digest: String,
    /// The artifact's media type; must match the referencing kind.
    pub artifact_type: String,
}

/// A same-namespace reference by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRef {
    /// The referenced object's name.
    pub name: String,
}

/// A same-namespace reference whose name may be omitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionalNameRef {
    /// The referenced object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

macro_rules! kars_object {
    ($(#[$doc:meta])* $name:ident, $spec:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// Always `kars.azure.com/v1alpha1`.
            pub api_version: String,
            /// The kind name.
            pub kind: String,
            /// Name, namespace, labels, annotations.
            pub metadata: ObjectMeta,
            /// The desired state.
            pub spec: $spec,
        }
    };
}

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
    pub openai_agents: Option<PythonRuntime>,
    /// Microsoft Agent Framework settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub microsoft_agent_framework: Option<LanguageRuntime>,
    /// Semantic Kernel settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_kernel: Option<LanguageRuntime>,
    /// LangGraph settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lang_graph: Option<LanguageRuntime>,
    /// Anthropic settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic: Option<PythonRuntime>,
    /// Pydantic AI settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pydantic_ai: Option<PythonRuntime>,
    /// Hermes settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hermes: Option<HermesRuntime>,
    /// BYO settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byo: Option<ByoRuntime>,
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

/// Python-based runtimes (`openaiAgents`, `anthropic`, `pydanticAi`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PythonRuntime {
    /// Python version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_version: Option<String>,
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

/// Runtimes with a `language` choice (`microsoftAgentFramework`, `semanticKernel`, `langGraph`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LanguageRuntime {
    /// Programming language.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
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

/// `runtime.hermes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HermesRuntime {
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

// ---- InferencePolicy ------------------------------------------------------------------------

kars_object!(
    /// Which models an agent may call and with what budget.
    InferencePolicy,
    InferencePolicySpec
);

/// `InferencePolicy.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferencePolicySpec {
    /// Selector.
    pub applies_to: InferenceAppliesTo,
    /// Signed bundle with the content fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_ref: Option<OciArtifactRef>,
    /// Token budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<TokenBudget>,
    /// Content-safety thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_safety: Option<ContentSafety>,
    /// Model routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_preference: Option<ModelPreference>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// `InferencePolicy.spec.appliesTo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InferenceAppliesTo {
    /// `chat`, `responses`, `image`, `embeddings` or `*`.
    #[serde(default)]
    pub action: Option<String>,
    /// Label selector on sandboxes.
    pub sandbox_match_labels: BTreeMap<String, String>,
    /// A single sandbox by name.
    #[serde(default)]
    pub sandbox_name: Option<String>,
}

/// `tokenBudget`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenBudget {
    /// Per request cap.
    #[serde(default)]
    pub per_request_tokens: Option<u64>,
    /// Per UTC day.
    #[serde(default)]
    pub daily_tokens: Option<u64>,
    /// Per UTC month.
    #[serde(default)]
    pub monthly_tokens: Option<u64>,
}

/// `contentSafety`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContentSafety {
    /// Hate threshold.
    #[serde(default)]
    pub hate: Option<String>,
    /// Self-harm threshold.
    #[serde(default)]
    pub self_harm: Option<String>,
    /// Sexual threshold.
    #[serde(default)]
    pub sexual: Option<String>,
    /// Violence threshold.
    #[serde(default)]
    pub violence: Option<String>,
    /// Prompt shields (controller default: true).
    #[serde(default)]
    pub require_prompt_shields: Option<bool>,
}

/// `modelPreference`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelPreference {
    /// Primary model.
    pub primary: ModelTarget,
    /// Fallbacks, in order.
    pub fallback: Vec<ModelTarget>,
}

/// A provider + deployment pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModelTarget {
    /// Provider.
    pub provider: String,
    /// Deployment / model name.
    pub deployment: String,
}

// ---- ToolPolicy -----------------------------------------------------------------------------

kars_object!(
    /// Which tools and actions an agent may use (AGT profile), rate limits, commerce caps.
    ToolPolicy,
    ToolPolicySpec
);

/// `ToolPolicy.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolPolicySpec {
    /// Selector.
    pub applies_to: ToolAppliesTo,
    /// The AGT profile, inline or as a signed bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agt_profile: Option<AgtProfileSource>,
    /// Approval settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Commerce caps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commerce: Option<Commerce>,
    /// Display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// `ToolPolicy.spec.appliesTo`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ToolAppliesTo {
    /// Tool name (`*` = all).
    #[serde(default)]
    pub tool: Option<String>,
    /// MCP server name.
    #[serde(default)]
    pub mcp_server: Option<String>,
    /// Label selector on sandboxes (must be non-empty).
    pub sandbox_match_labels: BTreeMap<String, String>,
}

/// `agtProfile`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgtProfileSource {
    /// Inline profile YAML.
    #[serde(default)]
    pub inline: Option<String>,
    /// Signed profile bundle.
    #[serde(default)]
    pub bundle_ref: Option<OciArtifactRef>,
}

/// `approval`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Approval {
    /// never / always / aboveThreshold.
    #[serde(default)]
    pub mode: Option<String>,
    /// Currency threshold.
    #[serde(default)]
    pub threshold: Option<String>,
    /// Channel.
    #[serde(default)]
    pub channel: Option<String>,
}

/// `commerce`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Commerce {
    /// Allowed counterparties (empty = deny all).
    pub counterparty_allowlist: Vec<String>,
    /// Daily cap, e.g. `USD 100.00`.
    #[serde(default)]
    pub daily_cap: Option<String>,
    /// Monthly cap.
    #[serde(default)]
    pub monthly_cap: Option<String>,
    /// Per-transfer cap.
    #[serde(default)]
    pub per_transfer_cap: Option<String>,
}

/// `rateLimit`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second.
    #[serde(default)]
    pub rps: Option<u32>,
    /// Burst.
    #[serde(default)]
    pub burst: Option<u32>,
    /// Window, e.g. `1m`.
    #[serde(default)]
    pub window: Option<String>,
}

// ---- EgressApproval -------------------------------------------------------------------------

kars_object!(
    /// A time-boxed extra egress grant for one sandbox.
    EgressApproval,
    EgressApprovalSpec
);

/// `EgressApproval.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressApprovalSpec {
    /// The KarsSandbox (same namespace).
    pub sandbox: String,
    /// Hosts granted (1..=16).
    pub hosts: Vec<ApprovalHost>,
    /// Why (audited).
    pub reason: String,
    /// Ticket reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// ISO-8601 duration, at most 7 days.
    pub ttl: String,
}

/// A granted host; port defaults to 443.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalHost {
    /// Host name.
    pub host: String,
    /// Port.
    #[serde(default)]
    pub port: Option<u16>,
}

// ---- McpServer ------------------------------------------------------------------------------

kars_object!(
    /// An MCP server agents may call.
    McpServer,
    McpServerSpec
);

/// `McpServer.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpServerSpec {
    /// Server URL.
    #[serde(default)]
    pub url: Option<String>,
    /// OAuth settings.
    #[serde(default)]
    pub oauth: Option<McpOauth>,
    /// Production mode (requires https + issuer).
    #[serde(default)]
    pub production_mode: Option<bool>,
    /// OAuth scopes.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Allowed tools (empty = none, `["*"]` = all).
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Router env var holding a bearer token.
    #[serde(default)]
    pub bearer_from_env: Option<String>,
    /// Which sandboxes may use it.
    #[serde(default)]
    pub allowed_sandboxes: Option<LabelSelectorLite>,
    /// Signed bundle.
    #[serde(default)]
    pub bundle_ref: Option<OciArtifactRef>,
}

/// `oauth`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct McpOauth {
    /// Issuer.
    pub issuer: String,
    /// Audience.
    #[serde(default)]
    pub audience: Option<String>,
    /// Resource.
    #[serde(default)]
    pub resource: Option<String>,
    /// PKCE method (`S256`).
    pub pkce: String,
}

/// `{matchLabels}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorLite {
    /// Labels that must match.
    pub match_labels: BTreeMap<String, String>,
}

// ---- KarsMemory -----------------------------------------------------------------------------

kars_object!(
    /// A memory-store binding for one sandbox.
    KarsMemory,
    KarsMemorySpec
);

/// `KarsMemory.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KarsMemorySpec {
    /// The sandbox (same namespace).
    pub sandbox_ref: NameRef,
    /// Store name (DNS label).
    #[serde(default)]
    pub store_name: Option<String>,
    /// Scope.
    #[serde(default)]
    pub scope: Option<String>,
    /// Retention in days.
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// Delete with the sandbox.
    #[serde(default)]
    pub delete_on_sandbox_delete: Option<bool>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Signed bundle.
    #[serde(default)]
    pub bundle_ref: Option<OciArtifactRef>,
}

// ---- KarsEval -------------------------------------------------------------------------------

kars_object!(
    /// A scheduled evaluation of a sandbox against a corpus.
    KarsEval,
    KarsEvalSpec
);

/// `KarsEval.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KarsEvalSpec {
    /// The sandbox under test.
    pub target_sandbox_ref: NameRef,
    /// The corpus.
    pub corpus: EvalCorpus,
    /// Cron schedule.
    #[serde(default)]
    pub schedule: Option<String>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Runner image.
    #[serde(default)]
    pub runner_image: Option<String>,
    /// Degrade the sandbox on drift.
    #[serde(default)]
    pub fail_sandbox_on_drift: Option<bool>,
}

/// `corpus`: exactly one of `builtin` / `bundleRef`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EvalCorpus {
    /// A built-in corpus name.
    #[serde(default)]
    pub builtin: Option<String>,
    /// A signed corpus bundle.
    #[serde(default)]
    pub bundle_ref: Option<OciArtifactRef>,
}

// ---- TrustGraph -----------------------------------------------------------------------------

kars_object!(
    /// Signed trust edges between agents (cluster-scoped).
    TrustGraph,
    TrustGraphSpec
);

/// `TrustGraph.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustGraphSpec {
    /// Vertices (agents and their keys).
    pub vertices: Vec<TrustVertex>,
    /// Signed edges.
    pub edges: Vec<TrustEdge>,
}

/// A vertex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustVertex {
    /// Vertex id.
    pub id: String,
    /// `EdDSA`.
    pub alg: String,
    /// Ed25519 public key, base64url without padding.
    pub public_key_b64u: String,
    /// Label.
    #[serde(default)]
    pub label: Option<String>,
}

/// An edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustEdge {
    /// From vertex.
    pub from: String,
    /// To vertex.
    pub to: String,
    /// Score 0..=1000.
    pub score: u32,
    /// Issued at (unix seconds).
    pub issued_at: i64,
    /// Not after (unix seconds).
    #[serde(default)]
    pub not_after: Option<i64>,
    /// Ed25519 signature, base64url without padding.
    pub signature: String,
    /// Reason.
    #[serde(default)]
    pub reason: Option<String>,
}

// ---- A2AAgent -------------------------------------------------------------------------------

kars_object!(
    /// An agent-to-agent endpoint with its signing keys.
    A2AAgent,
    A2AAgentSpec
);

/// `A2AAgent.spec`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct A2AAgentSpec {
    /// Endpoint URL.
    pub endpoint_url: String,
    /// Signing keys (≥ 1, EdDSA).
    pub signing_keys: Vec<A2ASigningKey>,
    /// Capabilities.
    pub capabilities: Vec<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<String>,
    /// Display name.
    #[serde(default)]
    pub display_name: Option<String>,
    /// Federation peers.
    pub federation: Vec<A2AFederationPeer>,
    /// Policy references.
    #[serde(default)]
    pub policy_refs: Option<A2APolicyRefs>,
    /// Production mode (requires https).
    pub production_mode: bool,
    /// Trust settings.
    #[serde(default)]
    pub trust: Option<A2ATrust>,
}

/// A signing key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct A2ASigningKey {
    /// Key id.
    pub kid: String,
    /// `EdDSA`.
    pub alg: String,
    /// Public key, base64url.
    pub public_key_b64u: String,
    /// Not after (unix seconds).
    #[serde(default)]
    pub not_after: Option<i64>,
}

/// A federation peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct A2AFederationPeer {
    /// `in-cluster` or `external`.
    pub kind: String,
    /// Label.
    pub label: String,
    /// In-cluster agent.
    #[serde(default)]
    pub agent_ref: Option<String>,
    /// External endpoint.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Pinned key id.
    #[serde(default)]
    pub pinned_kid: Option<String>,
}

/// `policyRefs`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct A2APolicyRefs {
    /// ToolPolicy name.
    #[serde(default)]
    pub tool_policy: Option<String>,
}

/// `trust`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct A2ATrust {
    /// Clock skew.
    #[serde(default)]
    pub max_clock_skew_seconds: Option<i64>,
    /// Minimum signatures.
    #[serde(default)]
    pub min_signatures_required: Option<u32>,
    /// Require signed requests.
    pub require_signed_requests: bool,
}

// ---- KarsAuthConfig -------------------------------------------------------------------------

kars_object!(
    /// Cluster-wide Entra identity settings (singleton named `default`).
    KarsAuthConfig,
    KarsAuthConfigSpec
);

/// `KarsAuthConfig.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KarsAuthConfigSpec {
    /// Tenant.
    pub tenant: AuthTenant,
    /// Agent identity blueprint.
    pub agent_id: AuthAgentId,
    /// Controller identity.
    pub controller: AuthController,
    /// `Anonymous` or `EntraAgentIdentity`.
    pub mesh_auth_backend: String,
    /// Mesh audience.
    #[serde(default)]
    pub mesh_auth_audience: Option<String>,
    /// Downstream APIs (free-form).
    #[serde(default)]
    pub downstream_apis: Option<FreeForm>,
    /// Foundry role assignments.
    #[serde(default)]
    pub foundry_rbac: Vec<FoundryRbac>,
}

/// `tenant`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthTenant {
    /// Tenant id.
    pub tenant_id: String,
    /// Authority host.
    pub authority_host: String,
    /// Service management reference.
    #[serde(default)]
    pub service_management_reference: Option<String>,
}

/// `agentId`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthAgentId {
    /// Blueprint client id.
    pub blueprint_client_id: String,
    /// Blueprint object id.
    pub blueprint_object_id: String,
    /// Sponsors.
    #[serde(default)]
    pub sponsor_user_object_ids: Vec<String>,
}

/// `controller`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthController {
    /// Managed identity client id.
    pub managed_identity_client_id: String,
    /// Managed identity resource id.
    pub managed_identity_resource_id: String,
    /// Managed identity principal id.
    #[serde(default)]
    pub managed_identity_principal_id: Option<String>,
}

/// `foundryRbac[]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FoundryRbac {
    /// Scope.
    pub scope: String,
    /// Role definition ids.
    pub role_definition_ids: Vec<String>,
}

// ---- KarsSREAction --------------------------------------------------------------------------

kars_object!(
    /// A typed SRE remediation, approved through Git.
    KarsSREAction,
    KarsSREActionSpec
);

/// `KarsSREAction.spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KarsSREActionSpec {
    /// The action.
    pub action: SreAction,
    /// Approval state.
    pub approval: SreApproval,
    /// Diagnosis.
    #[serde(default)]
    pub diagnosis: Option<String>,
    /// Rationale.
    #[serde(default)]
    pub rationale: Option<String>,
    /// Minutes before a pending action expires (1..=60, default 15).
    #[serde(default)]
    pub ttl_minutes: Option<u32>,
}

/// `action`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SreAction {
    /// One of the five typed actions.
    #[serde(rename = "type")]
    pub type_: String,
    /// Parameters.
    pub params: BTreeMap<String, FreeForm>,
}

/// `approval`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SreApproval {
    /// Pending, Approved or Rejected.
    pub state: String,
    /// Note.
    #[serde(default)]
    pub note: Option<String>,
}

// ---- One typed value per kars object -------------------------------------------------------

macro_rules! kars_objects {
    ($($kind:ident => $accessor:ident),+ $(,)?) => {
        /// A kars object in its typed form, deserialised once when the repository is loaded
        /// (after schema validation and defaulting) and kept: validation and rendering read
        /// this value, never the YAML again.
        #[derive(Clone, Debug, PartialEq)]
        pub enum KarsObject {
            $(
                #[doc = concat!("A `", stringify!($kind), "`.")]
                $kind(Box<$kind>),
            )+
        }

        impl KarsObject {
            /// Deserialises the defaulted document of a `kind` object; `None` for a kind that is
            /// not a kars kind.
            pub fn parse(kind: &str, defaulted: &serde_json::Value) -> Option<Result<KarsObject, String>> {
                match kind {
                    $(stringify!($kind) => Some(
                        $kind::deserialize(defaulted)
                            .map(|o| KarsObject::$kind(Box::new(o)))
                            .map_err(|e| e.to_string()),
                    ),)+
                    _ => None,
                }
            }

            $(
                #[doc = concat!("The `", stringify!($kind), "`, if this is one.")]
                pub fn $accessor(&self) -> Option<&$kind> {
                    match self {
                        KarsObject::$kind(o) => Some(o),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            )+
        }
    };
}

kars_objects! {
    KarsSandbox => sandbox,
    KarsPairing => pairing,
    InferencePolicy => inference_policy,
    ToolPolicy => tool_policy,
    EgressApproval => egress_approval,
    McpServer => mcp_server,
    KarsMemory => memory,
    KarsEval => eval,
    TrustGraph => trust_graph,
    A2AAgent => a2a_agent,
    KarsAuthConfig => auth_config,
    KarsSREAction => sre_action,
}
