//! What this version does with every field of the kars CRDs: one list ([`FIELDS`]), read by
//! `kars validate` (a warning naming file:line for each field that is set and not enforced), by
//! the agent (the PolicyRepo status lists them) and by `docs/feature-maturity.md`, which is
//! generated from it ([`markdown`]; a test keeps the file equal to the list, and another that
//! every field of every embedded CRD is classified, so neither can drift from the binary).
//!
//! AGT profiles are YAML inside a string field; [`agt_profile_keys`] checks the keys of inline
//! profiles against the ones the router acts on ([`kars_contract::policy::AGT_RULE_KEYS`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::repo::SourceObject;
use crate::yaml::{Node, Pos, Value, YamlLimits, parse_documents};

/// How far this version goes with a field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Support {
    /// The field has its documented effect: the renderer turns it into what Kubernetes runs,
    /// or the router or the agent acts on it (and fails closed).
    Enforced,
    /// Written into the cluster for the agent's runtime or another component (a mounted
    /// ConfigMap, an annotation); neither the router nor the agent acts on it.
    RenderedOnly,
    /// Accepted by the schema and applied with the CR as written; nothing in this version acts
    /// on it.
    NotSupported,
    /// Describes the object (a display name, a reason); there is nothing to enforce.
    Descriptive,
}

impl Support {
    /// The label used in warnings, status and the generated table.
    pub fn label(self) -> &'static str {
        match self {
            Support::Enforced => "enforced",
            Support::RenderedOnly => "rendered only",
            Support::NotSupported => "not supported",
            Support::Descriptive => "descriptive",
        }
    }

    /// True when a field with this support, once set, is reported.
    pub fn warns(self) -> bool {
        matches!(self, Support::RenderedOnly | Support::NotSupported)
    }
}

/// When a field that is not enforced is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WarnWhen {
    /// Whenever it is set to something other than an empty value.
    Set,
    /// Only when it is set to a value other than this scalar (what every sandbox gets anyway).
    NotEqual(&'static str),
}

/// One field (or a whole subtree) of one kind.
#[derive(Clone, Copy, Debug)]
pub struct FieldSupport {
    /// The kind, e.g. `ToolPolicy`.
    pub kind: &'static str,
    /// The field path under the object, dot-separated; `*` matches any one key (the runtime
    /// blocks), arrays are classified as a whole.
    pub path: &'static str,
    /// How far this version goes.
    pub support: Support,
    /// When a non-enforced field is reported.
    pub when: WarnWhen,
    /// What enforces it, or what happens instead.
    pub how: &'static str,
}

const fn f(
    kind: &'static str,
    path: &'static str,
    support: Support,
    how: &'static str,
) -> FieldSupport {
    FieldSupport {
        kind,
        path,
        support,
        when: WarnWhen::Set,
        how,
    }
}

const fn unless(
    kind: &'static str,
    path: &'static str,
    value: &'static str,
    how: &'static str,
) -> FieldSupport {
    FieldSupport {
        kind,
        path,
        support: Support::NotSupported,
        when: WarnWhen::NotEqual(value),
        how,
    }
}

use Support::{Descriptive, Enforced, NotSupported, RenderedOnly};

const SB: &str = "KarsSandbox";
const IP: &str = "InferencePolicy";
const TP: &str = "ToolPolicy";
const EA: &str = "EgressApproval";
const MCP: &str = "McpServer";
const MEM: &str = "KarsMemory";
const SRE: &str = "KarsSREAction";

/// Every field of every kars kind, most specific entries after their parents. The first entry
/// whose path is a prefix of a field decides for it.
#[rustfmt::skip]
pub const FIELDS: &[FieldSupport] = &[
    // ---- KarsSandbox ------------------------------------------------------------------------
    f(SB, "spec.runtime.kind", Enforced, "the agent container's image, name, ports and KARS_RUNTIME_KIND"),
    f(SB, "spec.runtime.openclaw.image", Enforced, "the agent container's image"),
    f(SB, "spec.runtime.openclaw.version", NotSupported, "the image is not derived from a version; set spec.runtime.openclaw.image or kars.yaml images.runtimes"),
    f(SB, "spec.runtime.openclaw.config", NotSupported, "no openclaw.json is rendered; the runtime starts with its image's configuration"),
    f(SB, "spec.runtime.*.extraEnv", Enforced, "the agent container's environment (names starting AGT_, AZURE_, FOUNDRY_AGENT_, IMDS_ or KARS_ and the names kars sets are dropped, and reported)"),
    f(SB, "spec.runtime.byo.image", Enforced, "the agent container's image"),
    f(SB, "spec.runtime.byo.command", Enforced, "the agent container's command"),
    f(SB, "spec.runtime.byo.args", Enforced, "the agent container's args"),
    f(SB, "spec.runtime.byo.env", Enforced, "the agent container's environment (reserved and kars-set names dropped, and reported)"),
    f(SB, "spec.runtime.byo.contractVersion", Enforced, "only v1 is accepted (the schema's enum); the agent gets KARS_RUNTIME_CONTRACT_VERSION=v1"),
    f(SB, "spec.runtime.*.agentCode", NotSupported, "agent code is not fetched into the pod; build it into the runtime image"),
    f(SB, "spec.runtime.*.entrypoint", NotSupported, "the runtime image's own entrypoint runs"),
    f(SB, "spec.runtime.*.pythonVersion", NotSupported, "the runtime image is used as is"),
    f(SB, "spec.runtime.*.language", NotSupported, "the runtime image is used as is"),
    f(SB, "spec.runtime.*.version", NotSupported, "the runtime image is used as is; set kars.yaml images.runtimes"),
    f(SB, "spec.sandbox.isolation", Enforced, "confidential: runtimeClass kata-vm-isolation and the sandbox-kata pool; enhanced: the Localhost seccomp profile; the router's SANDBOX_ISOLATION"),
    f(SB, "spec.sandbox.seccompProfile", Enforced, "pod seccompProfile Localhost profiles/<name>.json with isolation enhanced (RuntimeDefault otherwise, which validation reports)"),
    f(SB, "spec.sandbox.selinuxContext", Enforced, "pod seLinuxOptions.type"),
    f(SB, "spec.sandbox.readOnlyRootFilesystem", Enforced, "agent container securityContext"),
    f(SB, "spec.sandbox.runAsNonRoot", Enforced, "pod securityContext"),
    f(SB, "spec.sandbox.allowPrivilegeEscalation", Enforced, "agent container securityContext"),
    f(SB, "spec.sandbox.writablePaths", NotSupported, "only /sandbox and /tmp are writable"),
    f(SB, "spec.inferenceRef", Enforced, "the InferencePolicy compiled into the router (reference checked by validation)"),
    f(SB, "spec.memoryRef", RenderedOnly, "the KarsMemory binding is mounted into the router; no memory store is served"),
    f(SB, "spec.agent", NotSupported, "Foundry agents are not created"),
    f(SB, "spec.governance.enabled", Enforced, "false: no AGT profile, no governance route, no Service"),
    f(SB, "spec.governance.toolPolicyRef", Enforced, "the ToolPolicy's AGT profile decides every /agt/evaluate call"),
    f(SB, "spec.governance.trustThreshold", NotSupported, "no agent mesh is configured (no AGT_* environment)"),
    f(SB, "spec.governance.trustedPeers", NotSupported, "no agent mesh is configured"),
    f(SB, "spec.governance.registryMode", NotSupported, "no agent mesh is configured"),
    f(SB, "spec.governance.mcpServerRef", RenderedOnly, "mounted for the runtime under /etc/kars/mcp/<name>; the router does not check MCP calls"),
    f(SB, "spec.governance.mcpServerRefs", RenderedOnly, "mounted for the runtime under /etc/kars/mcp/<name>; the router does not check MCP calls"),
    f(SB, "spec.azureServices", RenderedOnly, "annotations on the sandbox ServiceAccount; no workload identity or role assignment is created"),
    unless(SB, "spec.networkPolicy.defaultDeny", "true", "every sandbox's NetworkPolicy denies by default; false is not honoured"),
    f(SB, "spec.networkPolicy.egressMode", Enforced, "the router's forward proxy (Strict refuses, Learn records)"),
    f(SB, "spec.networkPolicy.allowedEndpoints", Enforced, "the router's allowlist and the NetworkPolicy's ports"),
    f(SB, "spec.networkPolicy.allowlistRef", Enforced, "the verified bundle is the router's allowlist; unverified holds the sandbox back"),
    f(SB, "spec.resources", Enforced, "the agent container's requests and limits"),
    f(SB, "spec.suspended", Enforced, "the Deployment is scaled to 0"),
    // ---- KarsPairing --------------------------------------------------------------------------
    f("KarsPairing", "spec.displayName", Descriptive, "a name for people"),
    f("KarsPairing", "spec", NotSupported, "no pairing service issues or checks tokens"),
    // ---- InferencePolicy ----------------------------------------------------------------------
    f(IP, "spec.appliesTo.sandboxName", Enforced, "a sandbox with another name may not reference the policy (validation error)"),
    f(IP, "spec.appliesTo.sandboxMatchLabels", Enforced, "a sandbox without these labels may not reference the policy (validation error)"),
    unless(IP, "spec.appliesTo.action", "*", "the policy governs every inference route of the sandbox; a narrower action is not honoured"),
    f(IP, "spec.bundleRef", Enforced, "the verified bundle replaces the inline fields; unverified holds the sandbox back"),
    f(IP, "spec.tokenBudget", Enforced, "the router refuses (429) over the per-request cap and the daily and monthly UTC budgets, persisted across restarts"),
    f(IP, "spec.contentSafety", NotSupported, "the router does no content filtering; rely on the provider's"),
    f(IP, "spec.modelPreference", Enforced, "the router sends each request to the provider's endpoint from kars.yaml providers with the deployment as model (primary, then the fallbacks on failure, 429 or 5xx); validation refuses a provider without an endpoint"),
    f(IP, "spec.displayName", Descriptive, "a name for people"),
    // ---- ToolPolicy ---------------------------------------------------------------------------
    f(TP, "spec.agtProfile", Enforced, "the router decides every /agt/evaluate call with the profile (rule keys it does not act on are reported)"),
    f(TP, "spec.appliesTo.tool", Enforced, "the ToolPolicy's rateLimit, commerce and approval govern tool:<name>:… calls of this tool (`*`: every tool)"),
    f(TP, "spec.appliesTo.mcpServer", NotSupported, "calls do not say which MCP server a tool comes from; the policy applies to the tool whatever the server"),
    f(TP, "spec.appliesTo.sandboxMatchLabels", NotSupported, "a policy applies through KarsSandbox spec.governance.toolPolicyRef; the selector is not evaluated"),
    f(TP, "spec.approval.channel", NotSupported, "no approval request is sent anywhere; the runtime gets requires_approval"),
    f(TP, "spec.approval", Enforced, "always, or aboveThreshold (default with commerce) for an amount over threshold: /agt/evaluate answers requires_approval"),
    f(TP, "spec.commerce", Enforced, "every governed call is a transfer: denied without an amount, to a counterparty not listed (empty list: all), over perTransferCap, or past the UTC day's/month's cap; the spend survives restarts"),
    f(TP, "spec.rateLimit", Enforced, "a token bucket per ToolPolicy of burst calls (default rps) refilled rps per second; with window, at most rps × window calls in any such window (1s to 24h); over either /agt/evaluate answers 429 with retry_after_secs"),
    f(TP, "spec.displayName", Descriptive, "a name for people"),
    // ---- EgressApproval -----------------------------------------------------------------------
    f(EA, "spec.sandbox", Enforced, "the sandbox whose router adds the hosts"),
    f(EA, "spec.hosts", Enforced, "allowed by the router from metadata.annotations[kars.azure.com/approved-at] until the TTL"),
    f(EA, "spec.ttl", Enforced, "the router refuses the hosts after it (cap P7D, checked by validation)"),
    f(EA, "spec.reason", Descriptive, "recorded in the grant the router loads"),
    f(EA, "spec.ticket", Descriptive, "recorded in the grant the router loads"),
    // ---- McpServer ----------------------------------------------------------------------------
    f(MCP, "spec.displayName", Descriptive, "a name for people"),
    f(MCP, "spec.allowedSandboxes", NotSupported, "not evaluated: a sandbox's spec.governance.mcpServerRefs decides which servers it gets"),
    f(MCP, "spec", RenderedOnly, "server.json mounted for the runtime under /etc/kars/mcp/<name>; the router neither proxies nor checks MCP calls"),
    // ---- KarsMemory ---------------------------------------------------------------------------
    f(MEM, "spec.displayName", Descriptive, "a name for people"),
    f(MEM, "spec.sandboxRef", Enforced, "the sandbox the binding is mounted into (reference checked by validation)"),
    f(MEM, "spec", RenderedOnly, "binding.json mounted into the router; no memory store is provisioned, no retention applied"),
    // ---- KarsEval, TrustGraph, A2AAgent, KarsAuthConfig ---------------------------------------
    f("KarsEval", "spec.displayName", Descriptive, "a name for people"),
    f("KarsEval", "spec", NotSupported, "no evaluation Jobs are rendered or run"),
    f("TrustGraph", "spec", NotSupported, "the graph is not projected into sandboxes; no mesh admission uses it"),
    f("A2AAgent", "spec.displayName", Descriptive, "a name for people"),
    f("A2AAgent", "spec.description", Descriptive, "a description for people"),
    f("A2AAgent", "spec", NotSupported, "no A2A gateway is configured"),
    f("KarsAuthConfig", "spec", NotSupported, "no Entra Agent ID or mesh authentication is configured"),
    // ---- KarsSREAction ------------------------------------------------------------------------
    f(SRE, "spec.action", Enforced, "executed once by the agent after a signed approval and the merge"),
    f(SRE, "spec.approval.state", Enforced, "Approved in a signed commit by enough approvers runs it; the CR's own patches are not approvals"),
    f(SRE, "spec.approval.note", Descriptive, "recorded with the approval"),
    f(SRE, "spec.ttlMinutes", Enforced, "an approval after the TTL is refused"),
    f(SRE, "spec.diagnosis", Descriptive, "shown in the pull request"),
    f(SRE, "spec.rationale", Descriptive, "shown in the pull request"),
];

/// True when the entry path `pattern` covers the field path `field` (a prefix, `*` any key).
fn covers(pattern: &str, field: &[&str]) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    p.len() <= field.len() && p.iter().zip(field).all(|(a, b)| *a == "*" || a == b)
}

/// How this version handles `field` (dot-separated) of `kind`: the first entry that covers it.
pub fn support_of(kind: &str, field: &str) -> Option<&'static FieldSupport> {
    let segs: Vec<&str> = field.split('.').collect();
    FIELDS
        .iter()
        .find(|e| e.kind == kind && covers(e.path, &segs))
}

/// A field set in the repository that this version does not enforce.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Unenforced {
    /// Repository-relative file.
    pub file: String,
    /// 1-based line of the field.
    pub line: u32,
    /// 1-based column of the field.
    #[serde(skip)]
    pub column: u32,
    /// `kind/namespace/name`.
    pub object: String,
    /// The field as written, e.g. `spec.rateLimit` or `spec.agtProfile.inline: conditions`.
    pub field: String,
    /// How far this version goes with it.
    pub support: Support,
    /// What happens instead.
    pub detail: String,
}

impl Unenforced {
    /// The warning text (without file and line).
    pub fn message(&self) -> String {
        format!(
            "{}: accepted, not enforced by this version ({}): {}",
            self.field,
            self.support.label(),
            self.detail
        )
    }
}

fn is_empty(n: &Node) -> bool {
    match &n.value {
        Value::Null => true,
        Value::Str(s) => s.is_empty(),
        Value::Seq(s) => s.is_empty(),
        Value::Map(m) => m.is_empty(),
        _ => false,
    }
}

fn scalar_text(n: &Node) -> Option<String> {
    match &n.value {
        Value::Bool(b) => Some(b.to_string()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(x) => Some(x.to_string()),
        Value::Str(s) => Some(s.clone()),
        _ => None,
    }
}

/// Every concrete (path, key position, node) the entry path `pattern` names in `node`.
fn matches<'n>(
    node: &'n Node,
    pattern: &[&str],
    prefix: String,
    at: Pos,
    out: &mut Vec<(String, Pos, &'n Node)>,
) {
    let Some((first, rest)) = pattern.split_first() else {
        out.push((prefix, at, node));
        return;
    };
    let Value::Map(entries) = &node.value else {
        return;
    };
    for (k, v) in entries {
        if *first == "*" || k.name == *first {
            let path = if prefix.is_empty() {
                k.name.clone()
            } else {
                format!("{prefix}.{}", k.name)
            };
            matches(v, rest, path, k.pos, out);
        }
    }
}

/// The fields of `o` (as written, before defaults) that are set and not enforced. A field under
/// one already reported is not reported again; a field covered by a more specific entry is
/// judged by that entry.
pub fn unenforced(o: &SourceObject) -> Vec<Unenforced> {
    let mut out: Vec<Unenforced> = Vec::new();
    if !o.is_kars() {
        return out;
    }
    let mut reported: Vec<String> = Vec::new();
    for e in FIELDS.iter().filter(|e| e.kind == o.kind) {
        let pattern: Vec<&str> = e.path.split('.').collect();
        let mut found = Vec::new();
        matches(&o.node, &pattern, String::new(), o.pos, &mut found);
        for (path, pos, node) in found {
            // The first entry covering this concrete path decides (e.g. spec.displayName before
            // spec), and what sits under a reported field is not reported again.
            let decided_by = support_of(&o.kind, &path);
            if !decided_by.is_some_and(|d| std::ptr::eq(d, e)) {
                continue;
            }
            if reported
                .iter()
                .any(|r| path == *r || path.starts_with(&format!("{r}.")))
            {
                continue;
            }
            if !e.support.warns() || is_empty(node) {
                continue;
            }
            if let WarnWhen::NotEqual(v) = e.when
                && scalar_text(node).as_deref() == Some(v)
            {
                continue;
            }
            // A whole-spec entry reports the fields actually written, one by one.
            if e.path == "spec" {
                if let Value::Map(entries) = &node.value {
                    for (k, v) in entries {
                        let field = format!("spec.{}", k.name);
                        if is_empty(v)
                            || support_of(&o.kind, &field).is_some_and(|d| !std::ptr::eq(d, e))
                        {
                            continue;
                        }
                        out.push(entry(o, &field, k.pos, e));
                    }
                }
                reported.push(path);
                continue;
            }
            out.push(entry(o, &path, pos, e));
            reported.push(path);
        }
    }
    if o.kind == "ToolPolicy" {
        out.extend(agt_profile_keys(o));
    }
    if o.kind == "KarsSandbox" {
        out.extend(dropped_env(o));
    }
    // One conditional rule the list cannot express: a seccomp profile only applies with
    // isolation enhanced.
    if o.kind == "KarsSandbox"
        && let Some((k, v)) = o
            .node
            .get_path(&["spec", "sandbox"])
            .and_then(|s| s.get_entry("seccompProfile"))
        && let Some(name) = v.as_str()
        && !name.is_empty()
        && name != "RuntimeDefault"
        && o.node
            .get_path(&["spec", "sandbox", "isolation"])
            .and_then(Node::as_str)
            != Some("enhanced")
    {
        out.push(Unenforced {
            file: o.file.clone(),
            line: k.pos.line,
            column: k.pos.column,
            object: o.key(),
            field: "spec.sandbox.seccompProfile".into(),
            support: Support::NotSupported,
            detail: format!(
                "profile {name:?} is used only with spec.sandbox.isolation: enhanced; this sandbox runs with RuntimeDefault"
            ),
        });
    }
    out.sort();
    out
}

/// Agent environment variables from `spec.runtime.*.extraEnv` and `spec.runtime.byo.env` that
/// the renderer drops (reserved prefixes, names it sets itself, names that are not names).
fn dropped_env(o: &SourceObject) -> Vec<Unenforced> {
    let mut out = Vec::new();
    let Some(Value::Map(blocks)) = o.node.get_path(&["spec", "runtime"]).map(|n| &n.value) else {
        return out;
    };
    let mut push = |field: String, pos: Pos, detail: String| {
        out.push(Unenforced {
            file: o.file.clone(),
            line: pos.line,
            column: pos.column,
            object: o.key(),
            field,
            support: Support::NotSupported,
            detail,
        });
    };
    for (block, node) in blocks {
        if let Some(Value::Map(vars)) = node.get("extraEnv").map(|n| &n.value) {
            for (k, _) in vars {
                if let Some(why) = kars_contract::router::dropped_agent_env(&k.name) {
                    push(
                        format!("spec.runtime.{}.extraEnv.{}", block.name, k.name),
                        k.pos,
                        why,
                    );
                }
            }
        }
        if block.name == "byo" {
            for e in node.get("env").and_then(Node::as_seq).unwrap_or_default() {
                if let Some((k, n)) = e.get_entry("name")
                    && let Some(name) = n.as_str()
                    && let Some(why) = kars_contract::router::dropped_agent_env(name)
                {
                    push(format!("spec.runtime.byo.env[{name}]"), k.pos, why);
                }
            }
        }
    }
    out
}

fn entry(o: &SourceObject, field: &str, pos: Pos, e: &FieldSupport) -> Unenforced {
    Unenforced {
        file: o.file.clone(),
        line: pos.line,
        column: pos.column,
        object: o.key(),
        field: field.to_string(),
        support: e.support,
        detail: e.how.to_string(),
    }
}

/// The keys of an inline AGT profile that the router does not act on: top-level keys other
/// than [`kars_contract::policy::AGT_PROFILE_KEYS`] and rule keys other than
/// [`kars_contract::policy::AGT_RULE_KEYS`] (`min_approvals`: the router answers
/// `requires_approval` and counts no approvals). Lines point into the inline block.
pub fn agt_profile_keys(o: &SourceObject) -> Vec<Unenforced> {
    use kars_contract::policy::{AGT_PROFILE_KEYS, AGT_RULE_KEYS};
    let mut out = Vec::new();
    let Some(inline) = o.node.get_path(&["spec", "agtProfile", "inline"]) else {
        return out;
    };
    let Some(text) = inline.as_str() else {
        return out;
    };
    let Ok(docs) = parse_documents(text, YamlLimits::default()) else {
        return out; // not YAML: the router refuses it and the status says so
    };
    // A block scalar's node starts at its first content line.
    let line_of = |p: Pos| {
        if text.contains('\n') {
            inline.pos.line.saturating_add(p.line).saturating_sub(1)
        } else {
            inline.pos.line
        }
    };
    let mut push = |field: String, pos: Pos, detail: String| {
        out.push(Unenforced {
            file: o.file.clone(),
            line: line_of(pos),
            column: 0,
            object: o.key(),
            field,
            support: Support::NotSupported,
            detail,
        });
    };
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for doc in &docs {
        let Value::Map(top) = &doc.value else {
            continue;
        };
        for (k, v) in top {
            if !AGT_PROFILE_KEYS.contains(&k.name.as_str()) {
                push(
                    format!("spec.agtProfile.inline: {}", k.name),
                    k.pos,
                    "the router reads only version, agent and policies".into(),
                );
            }
            if k.name != "policies" {
                continue;
            }
            for rule in v.as_seq().unwrap_or_default() {
                let Value::Map(keys) = &rule.value else {
                    continue;
                };
                let rule_name = rule.get("name").and_then(Node::as_str).unwrap_or("?");
                for (rk, _) in keys {
                    if AGT_RULE_KEYS.contains(&rk.name.as_str()) {
                        continue;
                    }
                    let detail = match rk.name.as_str() {
                        "min_approvals" => "the router answers requires_approval; it does not collect or count approvals".to_string(),
                        "conditions" => "rule conditions are not evaluated: the rule applies whatever the context".to_string(),
                        other => format!("the router does not act on rule key {other:?}"),
                    };
                    // One warning per rule key and rule.
                    if seen.insert(format!("{rule_name}/{}", rk.name)) {
                        push(
                            format!("spec.agtProfile.inline: policies[{rule_name}].{}", rk.name),
                            rk.pos,
                            detail,
                        );
                    }
                }
            }
        }
    }
    out
}

/// `docs/feature-maturity.md`, generated from [`FIELDS`].
pub fn markdown() -> String {
    let mut s = String::new();
    s.push_str("# Feature maturity: what this version does with each kars field\n\n");
    s.push_str("<!-- Generated from renderer/src/maturity.rs (FIELDS); do not edit by hand. `KARS_UPDATE_GOLDEN=1 cargo test -p kars-renderer maturity` rewrites it. -->\n\n");
    s.push_str("Every field of the upstream kars CRDs is accepted (the schemas are upstream's, unchanged), but\n");
    s.push_str("not every field does something in this version. This page is generated from the one list the\n");
    s.push_str("binaries read: `kars validate` warns for every field that is set and not enforced, naming its\n");
    s.push_str("file and line (`accepted, not enforced by this version`), and the agent lists the same fields\n");
    s.push_str("in the PolicyRepo status (`status.unenforcedFields`, shown by `kars status`).\n\n");
    s.push_str("| Status | Meaning |\n|---|---|\n");
    s.push_str("| enforced | The field has its documented effect: the renderer turns it into what Kubernetes runs, or the router or the agent acts on it and fails closed. |\n");
    s.push_str("| rendered only | Written into the cluster (a mounted file, an annotation) for the runtime or another component; neither the router nor the agent acts on it. Reported by `kars validate`. |\n");
    s.push_str("| not supported | Accepted and applied with the CR as written; nothing in this version acts on it. Reported by `kars validate`. |\n");
    s.push_str("| descriptive | Describes the object; nothing to enforce. |\n\n");
    s.push_str("A path covers everything under it; `*` is any runtime block (`openclaw`, `hermes`, …). The\n");
    s.push_str("first row that covers a field decides.\n");
    let mut kinds: Vec<&str> = Vec::new();
    for e in FIELDS {
        if !kinds.contains(&e.kind) {
            kinds.push(e.kind);
        }
    }
    for kind in kinds {
        let _ = write!(
            s,
            "\n## {kind}\n\n| Field | Status | What happens |\n|---|---|---|\n"
        );
        for e in FIELDS.iter().filter(|e| e.kind == kind) {
            let status = match e.when {
                WarnWhen::NotEqual(v) => format!("{} unless `{v}`", e.support.label()),
                WarnWhen::Set => e.support.label().to_string(),
            };
            let _ = writeln!(
                s,
                "| `{}` | {status} | {} |",
                e.path,
                e.how.replace('|', "\\|")
            );
        }
    }
    s.push_str("\n## AGT profiles (ToolPolicy `spec.agtProfile`)\n\n");
    let _ = writeln!(
        s,
        "The router reads the top-level keys {} and, in each rule, {}. Any other key (for example\n`min_approvals` or `conditions`) is reported by `kars validate` for inline profiles: the rule\nis applied without it.",
        kars_contract::policy::AGT_PROFILE_KEYS
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", "),
        kars_contract::policy::AGT_RULE_KEYS
            .iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Schema;

    /// Every field path of a schema under `prefix`; arrays and free-form maps are leaves.
    fn leaves(s: &Schema, prefix: &str, out: &mut Vec<String>) {
        if s.properties.is_empty() {
            out.push(prefix.to_string());
            return;
        }
        for (k, v) in &s.properties {
            leaves(v, &format!("{prefix}.{k}"), out);
        }
    }

    #[test]
    fn every_crd_field_is_classified() {
        let mut missing = Vec::new();
        for crd in crate::crds::all() {
            let mut fields = Vec::new();
            if let Some(spec) = crd.schema.properties.get("spec") {
                leaves(spec, "spec", &mut fields);
            }
            assert!(!fields.is_empty(), "{}", crd.kind);
            for field in fields {
                if support_of(&crd.kind, &field).is_none() {
                    missing.push(format!("{} {field}", crd.kind));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "fields without a maturity entry:\n{}",
            missing.join("\n")
        );
    }

    #[test]
    fn every_entry_names_a_field_of_its_kind() {
        for e in FIELDS {
            let crd =
                crate::crds::find(e.kind).unwrap_or_else(|| panic!("{} is not a kind", e.kind));
            let mut level = vec![&crd.schema];
            for seg in e.path.split('.') {
                level = level
                    .iter()
                    .flat_map(|s| -> Vec<&Schema> {
                        if seg == "*" {
                            s.properties.values().collect()
                        } else {
                            s.properties.get(seg).into_iter().collect()
                        }
                    })
                    .collect();
            }
            assert!(!level.is_empty(), "{} {} is not in the CRD", e.kind, e.path);
        }
    }

    /// The unenforced fields `kars validate` reports for `files` (path, YAML).
    fn report(files: &[(&str, &str)]) -> Vec<String> {
        let mut tree = vec![(
            "kars.yaml".to_string(),
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: t}\nspec:\n  defaultNamespace: agents\n  providers: {p: {endpoint: \"https://p.example/v1\"}}\n  clusters:\n  - {name: c, paths: [agents, policies]}\n".to_string(),
        )];
        tree.extend(files.iter().map(|(p, t)| (p.to_string(), t.to_string())));
        let tree = crate::source::RepoTree::from_files(tree);
        let r = crate::validate_tree(&tree);
        assert!(!r.has_errors(), "{r}");
        r.diagnostics
            .iter()
            .filter(|d| d.message.contains("not enforced"))
            .map(|d| format!("{}:{} {}", d.file, d.line, d.message))
            .collect()
    }

    const POLICIES: &str = "apiVersion: kars.azure.com/v1alpha1\nkind: InferencePolicy\nmetadata: {name: ip}\nspec:\n  appliesTo: {sandboxName: a}\n  modelPreference: {primary: {provider: p, deployment: d}}\n---\napiVersion: kars.azure.com/v1alpha1\nkind: ToolPolicy\nmetadata: {name: kars-default}\nspec:\n  appliesTo: {tool: '*', sandboxMatchLabels: {team: a}}\n  agtProfile:\n    inline: |\n      agent: a\n      policies:\n      - name: r\n        type: approval\n        actions: ['tool:*']\n        min_approvals: 2\n        conditions: {amount: '>10'}\n  rateLimit: {rps: 5}\n  displayName: Tools\n";

    #[test]
    fn validate_names_each_unenforced_field_with_its_line() {
        let sandbox = "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata: {name: a}\nspec:\n  runtime:\n    kind: OpenClaw\n    openclaw:\n      version: '1.2'\n      extraEnv: {GOOD: x, AZURE_CLIENT_ID: y, SANDBOX_NAME: z}\n  sandbox:\n    seccompProfile: kars-strict\n  inferenceRef: {name: ip}\n  networkPolicy:\n    defaultDeny: true\n    egressMode: Strict\n";
        let got = report(&[
            ("agents/a/sandbox.yaml", sandbox),
            ("policies/p.yaml", POLICIES),
        ]);
        let joined = got.join("\n");
        for want in [
            "agents/a/sandbox.yaml:8 spec.runtime.openclaw.version: accepted, not enforced by this version (not supported)",
            "agents/a/sandbox.yaml:9 spec.runtime.openclaw.extraEnv.AZURE_CLIENT_ID: accepted, not enforced by this version (not supported): names starting with AZURE_ are reserved",
            "agents/a/sandbox.yaml:9 spec.runtime.openclaw.extraEnv.SANDBOX_NAME",
            "agents/a/sandbox.yaml:11 spec.sandbox.seccompProfile",
            "policies/p.yaml:12 spec.appliesTo.sandboxMatchLabels: accepted, not enforced by this version (not supported)",
            "policies/p.yaml:20 spec.agtProfile.inline: policies[r].min_approvals",
            "policies/p.yaml:21 spec.agtProfile.inline: policies[r].conditions",
        ] {
            assert!(joined.contains(want), "missing {want:?} in:\n{joined}");
        }
        // Enforced, descriptive, defaultDeny: true and GOOD are not reported; nothing twice.
        for absent in ["egressMode", "defaultDeny", "displayName", "GOOD", "rps"] {
            assert!(!joined.contains(absent), "{absent} reported:\n{joined}");
        }
        assert_eq!(got.len(), 7, "{joined}");
    }

    #[test]
    fn a_value_other_than_what_every_sandbox_gets_is_reported() {
        let sandbox = "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata: {name: a}\nspec:\n  runtime: {kind: BYO, byo: {image: i, contractVersion: v1, env: [{name: KARS_X, value: '1'}]}}\n  sandbox: {isolation: enhanced, seccompProfile: kars-strict}\n  inferenceRef: {name: ip}\n  networkPolicy: {defaultDeny: false}\n";
        let got = report(&[
            ("agents/a/sandbox.yaml", sandbox),
            ("policies/p.yaml", POLICIES),
        ])
        .join("\n");
        assert!(got.contains("spec.networkPolicy.defaultDeny"), "{got}");
        assert!(!got.contains("contractVersion"), "{got}");
        assert!(got.contains("spec.runtime.byo.env[KARS_X]"), "{got}");
        // With isolation enhanced the seccomp profile is used.
        assert!(!got.contains("seccompProfile"), "{got}");
    }

    #[test]
    fn a_kind_nothing_acts_on_reports_each_field_written() {
        let eval = "apiVersion: kars.azure.com/v1alpha1\nkind: KarsEval\nmetadata: {name: e}\nspec:\n  targetSandboxRef: {name: a}\n  corpus: {builtin: owasp-llm-top10}\n  displayName: nightly\n";
        let sandbox = "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata: {name: a}\nspec:\n  runtime: {kind: OpenClaw, openclaw: {}}\n  sandbox: {}\n  inferenceRef: {name: ip}\n";
        let got = report(&[
            ("agents/a/sandbox.yaml", sandbox),
            ("agents/a/eval.yaml", eval),
            ("policies/p.yaml", POLICIES),
        ]);
        let evals: Vec<&String> = got
            .iter()
            .filter(|l| l.starts_with("agents/a/eval.yaml"))
            .collect();
        assert_eq!(evals.len(), 2, "{got:#?}");
        assert!(
            evals[0].contains(":5 spec.targetSandboxRef")
                || evals[1].contains(":5 spec.targetSandboxRef"),
            "{evals:?}"
        );
        assert!(
            evals.iter().any(|l| l.contains(":6 spec.corpus")),
            "{evals:?}"
        );
    }

    #[test]
    fn feature_maturity_doc_is_generated_from_the_list() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/feature-maturity.md");
        let want = markdown();
        if std::env::var_os("KARS_UPDATE_GOLDEN").is_some() {
            std::fs::write(path, &want).expect("write docs/feature-maturity.md");
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/feature-maturity.md differs from renderer/src/maturity.rs; run KARS_UPDATE_GOLDEN=1 cargo test -p kars-renderer maturity"
        );
    }
}
