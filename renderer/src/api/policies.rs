//! The policy kinds a sandbox references: `InferencePolicy`, `ToolPolicy`, `EgressApproval`,
//! `McpServer`, `KarsMemory`.

#[allow(unused_imports)]
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

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

/// The `McpServer` fields a signed bundle carries instead of the CR (`allowedSandboxes` and
/// `bearerFromEnv` stay in the CR).
pub const MCP_SERVER_BUNDLE_FIELDS: [&str; 6] = [
    "url",
    "oauth",
    "productionMode",
    "scopes",
    "allowedTools",
    "displayName",
];

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
