//! The compiled-policy ConfigMaps of a sandbox, each mounted into the router where the
//! contract says ([`kars_contract::policy`]) and recorded as what the router must report.
//!
//! Every kind takes one path, [`Ctx::mount_policy`]: build the ConfigMap (files, the digest of
//! the files the router reads, upstream's digest annotation, the owning CR, the bundle it came
//! from), add its volume, its router mount and the environment variable naming the mount.

use std::collections::{BTreeMap, BTreeSet};

use kars_contract::PolicyKind;
use kars_contract::labels::{
    ARTIFACT_LABEL, BUNDLE_DIGEST_ANNOTATION, CONTENT_DIGEST_ANNOTATION, SANDBOX_LABEL,
};
use kars_contract::policy::{
    self as contract, MCP_SERVER_FILE, MCP_SERVERS_DIR, MCP_SERVERS_DIR_ENV,
};
use kars_contract::time::{format_rfc3339, parse_iso8601_duration, parse_rfc3339};
use serde_json::{Map, Value, json};

use super::Ctx;
use crate::api::{self, KarsObject, KarsSandbox};
use crate::canonical;
use crate::egress::{allowlist_endpoints, compile_allowlist};
use crate::rendered::MountedPolicy;
use crate::repo::{Index, SourceObject};
use crate::validate::DEFAULT_TOOL_POLICY;

/// The sandbox being rendered: its object, typed value, namespace, and the objects its
/// references resolve among.
#[derive(Clone, Copy)]
pub(super) struct Sandbox<'a> {
    /// The KarsSandbox as read.
    pub o: &'a SourceObject,
    /// Its typed value.
    pub sb: &'a KarsSandbox,
    /// Its namespace (`kars-<name>`).
    pub ns: &'a str,
    /// The cluster's objects.
    pub index: &'a Index<'a>,
}

/// What a sandbox's policies add to its pod.
#[derive(Default)]
pub(super) struct PodPolicies {
    /// Pod volumes (one per ConfigMap).
    pub volumes: Vec<Value>,
    /// Router container mounts.
    pub router_mounts: Vec<Value>,
    /// Agent container mounts (the AGT profile is readable by the runtime too).
    pub agent_mounts: Vec<Value>,
    /// Router environment: where each kind is mounted.
    pub router_env: Vec<(String, String)>,
    /// What the router must report, per kind.
    pub expected: BTreeMap<PolicyKind, MountedPolicy>,
}

impl PodPolicies {
    fn mount(&mut self, volume: &str, configmap: &str, path: &str, agent_too: bool) {
        self.volumes
            .push(json!({"name": volume, "configMap": {"name": configmap, "optional": true}}));
        let m = json!({"name": volume, "mountPath": path, "readOnly": true});
        if agent_too {
            self.agent_mounts.push(m.clone());
        }
        self.router_mounts.push(m);
    }
}

/// One compiled policy, ready to be mounted.
pub(super) struct Compiled {
    kind: PolicyKind,
    /// The CR it is compiled from (ToolPolicy, InferencePolicy, KarsMemory name).
    owner: Option<String>,
    /// Every data key of the ConfigMap, sorted.
    files: BTreeMap<String, String>,
    /// The signed bundle the content comes from.
    bundle_digest: Option<String>,
}

impl Compiled {
    fn new(kind: PolicyKind, owner: Option<&str>, files: BTreeMap<String, String>) -> Self {
        Compiled {
            kind,
            owner: owner.map(str::to_string),
            files,
            bundle_digest: None,
        }
    }

    fn with_bundle(mut self, digest: Option<String>) -> Self {
        self.bundle_digest = digest;
        self
    }

    /// Upstream's digest annotation: for the AGT profile, of the profile bytes only (upstream's
    /// router ignores `profile.json`); the same as [`Compiled::digest`] for the other kinds.
    fn upstream_digest(&self) -> String {
        contract::digest_files(
            self.files
                .iter()
                .filter(|(name, _)| {
                    self.kind.wants(name) && name.as_str() != contract::AGT_SUMMARY_FILE
                })
                .map(|(n, b)| (n.as_bytes(), b.as_bytes())),
        )
    }

    /// The policy digest of the files the router reads for this kind.
    fn digest(&self) -> String {
        contract::digest_files(
            self.files
                .iter()
                .filter(|(name, _)| self.kind.wants(name))
                .map(|(n, b)| (n.as_bytes(), b.as_bytes())),
        )
    }
}

impl Ctx<'_> {
    /// A ConfigMap of `sandbox`'s namespace `ns` holding `files`.
    fn config_map(
        &self,
        ns: &str,
        name: &str,
        sandbox: &str,
        artifact: &str,
        files: &BTreeMap<String, String>,
        annotations: Value,
    ) -> Value {
        let data: Map<String, Value> = files.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": self.labels(&[(SANDBOX_LABEL, sandbox), (ARTIFACT_LABEL, artifact)]),
                "annotations": annotations,
            },
            "data": data,
        })
    }

    /// The content of a policy CR: its verified JSON bundle (`spec.bundleRef`) with the bundle's
    /// digest, or the CR's own fields (`inline`); `None` when the sandbox is held back.
    fn content_or_bundle(
        &mut self,
        o: &SourceObject,
        bundle_ref: Option<&crate::api::OciArtifactRef>,
        what: &str,
        inline: impl FnOnce() -> Value,
    ) -> Option<(Value, Option<String>)> {
        match bundle_ref {
            Some(r) => self
                .json_bundle_or_hold(o, "spec.bundleRef", r, what)
                .map(|(v, digest)| (v, Some(digest))),
            None => Some((inline(), None)),
        }
    }

    /// Pushes the ConfigMap of `c`, mounts it into the router (and the agent when `agent_too`)
    /// and records what the router must report for its kind.
    fn mount_policy(
        &mut self,
        o: &SourceObject,
        ns: &str,
        c: Compiled,
        pod: &mut PodPolicies,
        agent_too: bool,
    ) {
        let sandbox = o.name.as_str();
        let kind = c.kind;
        let digest = c.digest();
        let cm_name = kind.configmap_name(sandbox, c.owner.as_deref().unwrap_or_default());
        let mut annotations = json!({CONTENT_DIGEST_ANNOTATION: digest});
        if let Some(a) = kind.upstream_digest_annotation() {
            annotations[a] = json!(c.upstream_digest());
        }
        if let (Some(a), Some(owner)) = (kind.owner_annotation(), &c.owner) {
            annotations[a] = json!(owner);
        }
        if let Some(d) = &c.bundle_digest {
            annotations[BUNDLE_DIGEST_ANNOTATION] = json!(d);
        }
        let cm = self.config_map(
            ns,
            &cm_name,
            sandbox,
            kind.artifact(),
            &c.files,
            annotations,
        );
        self.push(cm, &o.file);
        pod.mount(kind.volume(), &cm_name, kind.mount_path(), agent_too);
        pod.router_env
            .push((kind.dir_env().to_string(), kind.mount_path().to_string()));
        pod.expected.insert(
            kind,
            MountedPolicy {
                configmap: cm_name,
                digest,
                owner: c.owner.clone(),
                bundle_digest: c.bundle_digest.clone(),
            },
        );
    }
}

/// EgressApprovals grouped by (namespace, sandbox).
pub(super) type ApprovalsBySandbox<'a> =
    BTreeMap<(String, String), Vec<(&'a SourceObject, &'a api::EgressApproval)>>;

/// The EgressApprovals of a view, by the sandbox they are for.
pub(super) fn approvals_by_sandbox(objects: &[SourceObject]) -> ApprovalsBySandbox<'_> {
    let mut approvals: ApprovalsBySandbox<'_> = BTreeMap::new();
    for a in objects.iter().filter(|a| a.is_kars()) {
        if let Some(ea) = a.kars().and_then(KarsObject::egress_approval) {
            approvals
                .entry((
                    a.namespace.clone().unwrap_or_default(),
                    ea.spec.sandbox.clone(),
                ))
                .or_default()
                .push((a, ea));
        }
    }
    approvals
}

fn one_file(name: &str, body: String) -> BTreeMap<String, String> {
    BTreeMap::from([(name.to_string(), body)])
}

/// The egress allowlist (the verified bundle when referenced, else the inline endpoints) and
/// the sandbox's EgressApprovals. Returns the non-443 ports the NetworkPolicy must open, or
/// `None` when the sandbox is held back.
pub(super) fn egress(
    ctx: &mut Ctx<'_>,
    o: &SourceObject,
    sb: &KarsSandbox,
    ns: &str,
    approvals: &ApprovalsBySandbox<'_>,
    pod: &mut PodPolicies,
) -> Option<BTreeSet<i64>> {
    let np = sb.spec.network_policy.as_ref();
    let (endpoints, bundle_digest): (Vec<(String, i64)>, Option<String>) =
        match np.and_then(|n| n.allowlist_ref.as_ref()) {
            None => (
                np.map(|n| {
                    n.allowed_endpoints
                        .iter()
                        .map(|e| (e.host.clone(), e.port))
                        .collect()
                })
                .unwrap_or_default(),
                None,
            ),
            Some(r) => {
                let b = ctx.bundle_or_hold(o, "spec.networkPolicy.allowlistRef", r)?;
                match crate::bundle::allowlist_endpoints(&b.bytes) {
                    Ok(eps) => (eps, Some(b.digest)),
                    Err(e) => {
                        ctx.hold = Some(format!(
                            "the verified allowlist bundle {} does not parse: {e}",
                            b.digest
                        ));
                        return None;
                    }
                }
            }
        };
    let mut extra_ports: BTreeSet<i64> = endpoints
        .iter()
        .map(|(_, p)| *p)
        .filter(|p| *p != 443)
        .collect();
    let allowlist = Compiled::new(
        PolicyKind::EgressAllowlist,
        None,
        one_file(contract::ALLOWLIST_FILE, compile_allowlist(&endpoints)),
    )
    .with_bundle(bundle_digest);

    // Approvals for this sandbox (same namespace as the CR).
    let cr_ns = o.namespace.as_deref().unwrap_or_default();
    let mut approval_files = BTreeMap::new();
    for (a, ea) in approvals
        .get(&(cr_ns.to_string(), o.name.clone()))
        .into_iter()
        .flatten()
    {
        let approved_at = a
            .annotation(kars_contract::labels::APPROVED_AT_ANNOTATION)
            .and_then(parse_rfc3339);
        let ttl = parse_iso8601_duration(&ea.spec.ttl).ok();
        let (Some(start), Some(ttl)) = (approved_at, ttl) else {
            ctx.problem(
                a,
                "approved-at annotation or ttl does not parse (validation should have caught this)"
                    .into(),
            );
            continue;
        };
        let hosts: Vec<(String, i64)> = ea
            .spec
            .hosts
            .iter()
            .map(|h| (h.host.clone(), i64::from(h.port.unwrap_or(443))))
            .collect();
        extra_ports.extend(hosts.iter().map(|(_, p)| *p).filter(|p| *p != 443));
        let mut body = json!({
            "schemaVersion": 1,
            "approvalName": a.name,
            "sandbox": o.name,
            "hosts": allowlist_endpoints(&hosts),
            "reason": ea.spec.reason,
            "effectiveAt": format_rfc3339(start),
            "expiresAt": format_rfc3339(start.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))),
        });
        if let Some(t) = &ea.spec.ticket {
            body["ticket"] = json!(t);
        }
        approval_files.insert(contract::approval_file(&a.name), canonical::json(&body));
    }
    ctx.mount_policy(o, ns, allowlist, pod, false);
    let approvals = Compiled::new(PolicyKind::EgressApproval, None, approval_files);
    ctx.mount_policy(o, ns, approvals, pod, false);
    Some(extra_ports)
}

/// The AGT profile of the sandbox's ToolPolicy (`kars-default` without a governance block),
/// mounted into the router and, read-only, into the agent.
pub(super) fn agt_profile(ctx: &mut Ctx<'_>, s: &Sandbox<'_>, pod: &mut PodPolicies) {
    let Sandbox { o, sb, ns, index } = *s;
    let tool_policy = match &sb.spec.governance {
        None => Some(DEFAULT_TOOL_POLICY),
        Some(g) => g.tool_policy_ref.as_ref().and_then(|r| r.name.as_deref()),
    };
    let cr_ns = o.namespace.as_deref();
    let Some(tp_name) = tool_policy else { return };
    let Some(tp_obj) = index.get("ToolPolicy", cr_ns, tp_name) else {
        return;
    };
    let Some(tp) = ctx.typed(tp_obj, KarsObject::tool_policy) else {
        return;
    };
    let profile = tp.spec.agt_profile.clone().unwrap_or_default();
    let (body, bundle_digest) = match (&profile.inline, &profile.bundle_ref) {
        (_, Some(r)) => match ctx.bundle_or_hold(tp_obj, "spec.agtProfile.bundleRef", r) {
            Some(b) => (
                String::from_utf8_lossy(&b.bytes).into_owned(),
                Some(b.digest),
            ),
            None => return,
        },
        (Some(inline), None) => (inline.clone(), None),
        (None, None) => return,
    };
    let summary = json!({
        "appliesTo": tp.spec.applies_to,
        "approval": tp.spec.approval,
        "commerce": tp.spec.commerce,
        "displayName": tp.spec.display_name,
        "rateLimit": tp.spec.rate_limit,
    });
    let files = BTreeMap::from([
        (contract::AGT_PROFILE_FILE.to_string(), body),
        (
            contract::AGT_SUMMARY_FILE.to_string(),
            canonical::json(&summary),
        ),
    ]);
    let c = Compiled::new(PolicyKind::AgtProfile, Some(tp_name), files).with_bundle(bundle_digest);
    ctx.mount_policy(o, ns, c, pod, true);
}

/// What the inference policy tells the rest of the pod.
#[derive(Default)]
pub(super) struct InferenceSettings {
    /// The primary upstream's deployment (the agent's `KARS_MODEL`).
    pub model: String,
    /// `tokenBudget.dailyTokens`, if set.
    pub daily_budget: Option<u64>,
    /// `tokenBudget.perRequestTokens`, if set.
    pub per_request: Option<u64>,
    /// The providers the policy names (primary and fallbacks), each with an endpoint.
    pub providers: BTreeSet<String>,
}

/// The sandbox's InferencePolicy (the verified bundle when referenced).
pub(super) fn inference(
    ctx: &mut Ctx<'_>,
    s: &Sandbox<'_>,
    pod: &mut PodPolicies,
) -> InferenceSettings {
    let Sandbox { o, sb, ns, index } = *s;
    let mut out = InferenceSettings::default();
    let ip_name = &sb.spec.inference_ref.name;
    let Some(ip_obj) = index.get("InferencePolicy", o.namespace.as_deref(), ip_name) else {
        return out;
    };
    let Some(ip) = ctx.typed(ip_obj, KarsObject::inference_policy) else {
        return out;
    };
    let Some((mut content, bundle_digest)) = ctx.content_or_bundle(
        ip_obj,
        ip.spec.bundle_ref.as_ref(),
        "inference-policy",
        || {
            json!({
                "tokenBudget": ip.spec.token_budget,
                "contentSafety": ip.spec.content_safety,
                "modelPreference": ip.spec.model_preference,
                "displayName": ip.spec.display_name,
            })
        },
    ) else {
        return out;
    };
    content["appliesTo"] = json!(ip.spec.applies_to);
    out.model = content["modelPreference"]["primary"]["deployment"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let pref = &content["modelPreference"];
    for t in
        std::iter::once(&pref["primary"]).chain(pref["fallback"].as_array().into_iter().flatten())
    {
        let Some(p) = t["provider"].as_str().filter(|p| !p.is_empty()) else {
            continue;
        };
        if ctx.providers.contains_key(p) {
            out.providers.insert(p.to_string());
        } else {
            // Only a bundle gets here (validation refuses inline policies like this).
            ctx.problem(
                ip_obj,
                format!("provider {p:?} of the InferencePolicy has no endpoint for cluster {:?}; add it to kars.yaml spec.providers", ctx.cluster),
            );
        }
    }
    out.daily_budget = content["tokenBudget"]["dailyTokens"].as_u64();
    out.per_request = content["tokenBudget"]["perRequestTokens"].as_u64();
    let files = one_file(contract::INFERENCE_POLICY_FILE, canonical::json(&content));
    let c =
        Compiled::new(PolicyKind::InferencePolicy, Some(ip_name), files).with_bundle(bundle_digest);
    ctx.mount_policy(o, ns, c, pod, false);
    out
}

/// The sandbox's KarsMemory binding (the verified bundle when referenced).
pub(super) fn memory(ctx: &mut Ctx<'_>, s: &Sandbox<'_>, pod: &mut PodPolicies) {
    let Sandbox { o, sb, ns, index } = *s;
    let Some(m) = &sb.spec.memory_ref else { return };
    let Some(mem_obj) = index.get("KarsMemory", o.namespace.as_deref(), &m.name) else {
        return;
    };
    let Some(mem) = ctx.typed(mem_obj, KarsObject::memory) else {
        return;
    };
    let Some((mut content, bundle_digest)) = ctx.content_or_bundle(
        mem_obj,
        mem.spec.bundle_ref.as_ref(),
        "memory-binding",
        || {
            json!({
                "storeName": mem.spec.store_name,
                "scope": mem.spec.scope,
                "retentionDays": mem.spec.retention_days,
                "deleteOnSandboxDelete": mem.spec.delete_on_sandbox_delete,
                "displayName": mem.spec.display_name,
            })
        },
    ) else {
        return;
    };
    content["sandboxRef"] = json!({"name": mem.spec.sandbox_ref.name});
    let files = one_file(contract::MEMORY_BINDING_FILE, canonical::json(&content));
    let c = Compiled::new(PolicyKind::Memory, Some(&m.name), files).with_bundle(bundle_digest);
    ctx.mount_policy(o, ns, c, pod, false);
}

/// The MCP servers the sandbox's governance names: one ConfigMap each, mounted under
/// `/etc/kars/mcp/<name>` for the runtime (the router does not load them).
pub(super) fn mcp_servers(ctx: &mut Ctx<'_>, s: &Sandbox<'_>, pod: &mut PodPolicies) {
    let Sandbox { o, sb, ns, index } = *s;
    let Some(g) = &sb.spec.governance else { return };
    let names: BTreeSet<&str> = g
        .mcp_server_refs
        .iter()
        .chain(g.mcp_server_ref.iter())
        .filter_map(|r| r.name.as_deref())
        .collect();
    for m in names {
        let Some(mcp_obj) = index.get("McpServer", o.namespace.as_deref(), m) else {
            continue;
        };
        let Some(mcp) = ctx.typed(mcp_obj, KarsObject::mcp_server) else {
            continue;
        };
        let mut content = json!({
            "name": m,
            "url": mcp.spec.url,
            "oauth": mcp.spec.oauth,
            "productionMode": mcp.spec.production_mode,
            "scopes": mcp.spec.scopes,
            "allowedTools": mcp.spec.allowed_tools,
            "bearerFromEnv": mcp.spec.bearer_from_env,
        });
        let mut bundle_digest = None;
        if let Some(r) = &mcp.spec.bundle_ref {
            // The bundle carries the content fields; name and bearerFromEnv stay the CR's.
            let Some(b) = ctx.bundle_or_hold(mcp_obj, "spec.bundleRef", r) else {
                continue;
            };
            match serde_json::from_slice::<Value>(&b.bytes) {
                Ok(Value::Object(fields)) => {
                    for (k, v) in fields {
                        if k != "displayName" {
                            content[k] = v;
                        }
                    }
                    bundle_digest = Some(b.digest);
                }
                _ => {
                    ctx.hold = Some(format!(
                        "the verified mcp-server bundle {} is not a JSON object",
                        b.digest
                    ));
                    continue;
                }
            }
        }
        let files = one_file(MCP_SERVER_FILE, canonical::json(&content));
        let digest =
            contract::digest_files(files.iter().map(|(n, b)| (n.as_bytes(), b.as_bytes())));
        let mut annotations =
            json!({CONTENT_DIGEST_ANNOTATION: digest, "kars.azure.com/mcp-server": m});
        if let Some(d) = bundle_digest {
            annotations[BUNDLE_DIGEST_ANNOTATION] = json!(d);
        }
        let cm_name = contract::mcp_configmap_name(m);
        let cm = ctx.config_map(ns, &cm_name, &o.name, "mcp-server", &files, annotations);
        ctx.push(cm, &o.file);
        pod.mount(
            &format!("mcp-{m}"),
            &cm_name,
            &format!("{MCP_SERVERS_DIR}/{m}"),
            false,
        );
    }
    if !g.mcp_server_refs.is_empty() || g.mcp_server_ref.is_some() {
        pod.router_env
            .push((MCP_SERVERS_DIR_ENV.to_string(), MCP_SERVERS_DIR.to_string()));
    }
}
