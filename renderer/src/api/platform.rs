//! The platform kinds: `KarsEval`, `TrustGraph`, `A2AAgent`, `KarsAuthConfig`, `KarsSREAction`.

#[allow(unused_imports)]
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::*;

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
