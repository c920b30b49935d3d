//! Cross-object rules: what a single object's schema cannot see.
//!
//! Run per cluster (a reference must resolve among the objects that cluster receives):
//! references between kars objects resolve in the same namespace, no two objects share
//! kind/namespace/name, sandboxes do not collide on their `kars-<name>` namespace, EgressApproval
//! TTLs parse and stay under the cap, SRE actions carry the parameters their type needs, and
//! the repository layout holds one KarsSandbox per folder.

use std::collections::BTreeMap;

use kars_contract::labels::APPROVED_AT_ANNOTATION;
use kars_contract::time::{parse_iso8601_duration, parse_rfc3339};

use crate::api::{self, KarsObject};
use crate::cel::SRE_ACTION_TYPES;
use crate::diagnostics::{Diagnostics, Report};
use crate::egress::egress_host;
use crate::repo::{ClusterView, Index, SourceObject};

/// Longest EgressApproval TTL accepted (upstream's hard ceiling).
pub const MAX_APPROVAL_TTL_SECS: u64 = 7 * 24 * 3600;
/// Namespaces an SRE action may never touch (upstream denylist).
pub const SRE_DENIED_NAMESPACES: [&str; 6] = [
    "kube-system",
    "kube-public",
    "kube-node-lease",
    "kars-system",
    "kars-sre",
    "agentmesh",
];
/// The ToolPolicy a sandbox without a `governance` block uses (upstream default).
pub const DEFAULT_TOOL_POLICY: &str = "kars-default";

/// Runs every cross-object rule on what one cluster receives.
pub fn validate_cluster(view: &ClusterView<'_>, report: &mut Report) {
    let mut per_file = PerFile::default();
    let cluster = &view.cluster.name;

    // Signed-bundle references: pinned by digest, with the artifactType of the field's kind.
    for o in &view.objects {
        for u in crate::bundle::uses_of(o) {
            if let Err(why) = crate::bundle::check_reference(u.kind, &u.reference) {
                per_file.of(o).error(u.pos, format!("{}: {why}", u.field));
            }
        }
    }

    // Fields accepted and not enforced by this version (one list: crate::maturity).
    for o in &view.objects {
        for u in crate::maturity::unenforced(o) {
            let pos = crate::yaml::Pos {
                line: u.line,
                column: u.column,
            };
            per_file.of(o).warning(pos, u.message());
        }
    }

    // Unique kind/namespace/name.
    let mut seen: BTreeMap<(String, Option<String>, String), &SourceObject> = BTreeMap::new();
    for o in &view.objects {
        let group = o
            .api_version
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let key = (
            format!("{group}/{}", o.kind),
            o.namespace.clone(),
            o.name.clone(),
        );
        if let Some(first) = seen.get(&key) {
            let msg = format!(
                "{} is defined twice for cluster {cluster:?} (first in {}:{})",
                o.key(),
                first.file,
                first.pos.line
            );
            per_file.of(o).error(o.pos, msg);
        } else {
            seen.insert(key, o);
        }
    }

    let index = Index::new(view.objects.iter());
    let providers = view.config.providers_of(view.cluster);
    let mut sandbox_namespaces: BTreeMap<String, &SourceObject> = BTreeMap::new();
    let mut sandbox_dirs: BTreeMap<String, &SourceObject> = BTreeMap::new();
    for o in view.objects.iter().filter(|o| o.is_kars()) {
        let ns = o.namespace.as_deref();
        let missing = |kind: &str, name: &str, field: &str| {
            format!(
                "{field}: {kind} {name:?} not found in namespace {:?} for cluster {cluster:?}; add it to the repository (references never cross namespaces)",
                ns.unwrap_or_default()
            )
        };
        match o.kind.as_str() {
            "KarsSandbox" => {
                let Some(sb) = o.sandbox() else {
                    continue;
                };
                // Namespace collision: kars-<name> is independent of the CR's namespace.
                if let Some(first) = sandbox_namespaces.insert(o.name.clone(), o) {
                    let msg = format!(
                        "KarsSandbox {:?} also exists in namespace {:?} ({}); both would run in namespace kars-{}; rename one",
                        o.name,
                        first.namespace.as_deref().unwrap_or_default(),
                        first.file,
                        o.name
                    );
                    per_file.of(o).error(o.pos, msg);
                }
                // Layout: one sandbox per folder.
                let dir = o
                    .file
                    .rsplit_once('/')
                    .map(|(d, _)| d.to_string())
                    .unwrap_or_default();
                if let Some(first) = sandbox_dirs.insert(dir.clone(), o) {
                    if first.name != o.name {
                        let msg = format!(
                            "folder {dir:?} already holds KarsSandbox {:?} ({}); give each agent its own folder (agents/<name>/)",
                            first.name, first.file
                        );
                        per_file.of(o).error(o.pos, msg);
                    }
                } else if !dir.is_empty()
                    && !dir.ends_with(&format!("/{}", o.name))
                    && dir != o.name
                {
                    let msg = format!(
                        "KarsSandbox {:?} lives in folder {dir:?}; the convention is agents/{}/",
                        o.name, o.name
                    );
                    per_file.of(o).warning(o.pos, msg);
                }
                let ip = &sb.spec.inference_ref.name;
                match index.get("InferencePolicy", ns, ip) {
                    None => {
                        let m = missing("InferencePolicy", ip, "spec.inferenceRef.name");
                        per_file
                            .of(o)
                            .error(o.pos_of(&["spec", "inferenceRef", "name"]), m);
                    }
                    Some(p) => {
                        if let Some(p) = p.kars().and_then(KarsObject::inference_policy) {
                            if let Some(why) = inference_selector_mismatch(o, &p.spec.applies_to) {
                                let m = format!(
                                    "spec.inferenceRef.name: InferencePolicy {ip:?} {why}; reference a policy that applies to this sandbox, or widen its spec.appliesTo"
                                );
                                per_file
                                    .of(o)
                                    .error(o.pos_of(&["spec", "inferenceRef", "name"]), m);
                            }
                            let has_model = p
                                .spec
                                .model_preference
                                .as_ref()
                                .is_some_and(|m| !m.primary.deployment.is_empty());
                            if !has_model && p.spec.bundle_ref.is_none() {
                                let m = format!(
                                    "spec.inferenceRef.name: InferencePolicy {ip:?} has no spec.modelPreference.primary.deployment; the router would have no model to call"
                                );
                                per_file
                                    .of(o)
                                    .error(o.pos_of(&["spec", "inferenceRef", "name"]), m);
                            }
                        }
                    }
                }
                if let Some(m) = &sb.spec.memory_ref
                    && index.get("KarsMemory", ns, &m.name).is_none()
                {
                    let msg = missing("KarsMemory", &m.name, "spec.memoryRef.name");
                    per_file
                        .of(o)
                        .error(o.pos_of(&["spec", "memoryRef", "name"]), msg);
                }
                let (enabled, tp_name, path): (bool, Option<String>, &[&str]) =
                    match &sb.spec.governance {
                        None => (true, Some(DEFAULT_TOOL_POLICY.to_string()), &["spec"]),
                        Some(g) => (
                            g.enabled,
                            g.tool_policy_ref.as_ref().and_then(|r| r.name.clone()),
                            &["spec", "governance", "toolPolicyRef", "name"],
                        ),
                    };
                if enabled && let Some(tp) = tp_name {
                    match index.get("ToolPolicy", ns, &tp) {
                        None => {
                            let mut m = missing("ToolPolicy", &tp, "governance");
                            if sb.spec.governance.is_none() {
                                m.push_str("; without a spec.governance block a sandbox uses ToolPolicy kars-default (the template ships one in policies/), or set spec.governance.enabled: false");
                            }
                            per_file.of(o).error(o.pos_of(path), m);
                        }
                        Some(p) => {
                            if let Some(p) = p.kars().and_then(KarsObject::tool_policy) {
                                let inline_empty = p
                                    .spec
                                    .agt_profile
                                    .as_ref()
                                    .and_then(|a| a.inline.as_deref())
                                    .is_none_or(|s| s.trim().is_empty());
                                let bundle = p
                                    .spec
                                    .agt_profile
                                    .as_ref()
                                    .is_some_and(|a| a.bundle_ref.is_some());
                                if inline_empty && !bundle {
                                    let m = format!(
                                        "governance: ToolPolicy {tp:?} has no spec.agtProfile (inline or bundleRef); the router would enforce nothing"
                                    );
                                    per_file.of(o).error(o.pos_of(path), m);
                                }
                            }
                        }
                    }
                }
                if let Some(g) = &sb.spec.governance {
                    let refs = g.mcp_server_refs.iter().chain(g.mcp_server_ref.iter());
                    for r in refs {
                        if let Some(name) = &r.name
                            && index.get("McpServer", ns, name).is_none()
                        {
                            let m = missing("McpServer", name, "spec.governance.mcpServerRefs");
                            per_file
                                .of(o)
                                .error(o.pos_of(&["spec", "governance", "mcpServerRefs"]), m);
                        }
                    }
                    if g.mcp_server_ref.is_some() {
                        per_file.of(o).warning(
                            o.pos_of(&["spec", "governance", "mcpServerRef"]),
                            "spec.governance.mcpServerRef is deprecated; use mcpServerRefs: [{name: …}]",
                        );
                    }
                }
                if let Some(np) = &sb.spec.network_policy {
                    for (i, e) in np.allowed_endpoints.iter().enumerate() {
                        if !(1..=65535).contains(&e.port) {
                            let pos = o
                                .node
                                .get_path(&["spec", "networkPolicy", "allowedEndpoints"])
                                .and_then(|n| n.as_seq())
                                .and_then(|s| s.get(i))
                                .map_or(o.pos, |n| n.pos);
                            per_file.of(o).error(pos, format!("spec.networkPolicy.allowedEndpoints[{i}].port: {} is not a TCP port (1-65535)", e.port));
                        }
                        if let Err(why) = egress_host(&e.host) {
                            let pos = o.pos_of(&["spec", "networkPolicy", "allowedEndpoints"]);
                            per_file.of(o).error(
                                pos,
                                format!("spec.networkPolicy.allowedEndpoints[{i}].host: {why}"),
                            );
                        }
                    }
                }
            }
            "InferencePolicy" => {
                let Some(ip) = o.kars().and_then(KarsObject::inference_policy) else {
                    continue;
                };
                let Some(pref) = &ip.spec.model_preference else {
                    continue;
                };
                let targets = std::iter::once(("primary".to_string(), &pref.primary)).chain(
                    pref.fallback
                        .iter()
                        .enumerate()
                        .map(|(i, t)| (format!("fallback[{i}]"), t)),
                );
                for (which, t) in targets {
                    if !t.provider.is_empty() && !providers.contains_key(&t.provider) {
                        let pos = match which.as_str() {
                            "primary" => {
                                o.pos_of(&["spec", "modelPreference", "primary", "provider"])
                            }
                            _ => o.pos_of(&["spec", "modelPreference", "fallback"]),
                        };
                        let known = if providers.is_empty() {
                            "none are configured".to_string()
                        } else {
                            format!(
                                "configured: {}",
                                providers.keys().cloned().collect::<Vec<_>>().join(", ")
                            )
                        };
                        per_file.of(o).error(
                            pos,
                            format!(
                                "spec.modelPreference.{which}.provider: provider {:?} has no endpoint for cluster {cluster:?} ({known}); add it to kars.yaml spec.providers (or the cluster's providers) with its endpoint and credentials Secret",
                                t.provider
                            ),
                        );
                    }
                }
            }
            "ToolPolicy" => {
                let Some(tp) = o.kars().and_then(KarsObject::tool_policy) else {
                    continue;
                };
                check_tool_policy(o, tp, per_file.of(o));
            }
            "EgressApproval" => {
                let Some(ea) = o.kars().and_then(KarsObject::egress_approval) else {
                    continue;
                };
                if index.get("KarsSandbox", ns, &ea.spec.sandbox).is_none() {
                    let m = missing("KarsSandbox", &ea.spec.sandbox, "spec.sandbox");
                    per_file.of(o).error(o.pos_of(&["spec", "sandbox"]), m);
                }
                match parse_iso8601_duration(&ea.spec.ttl) {
                    Err(e) => per_file.of(o).error(o.pos_of(&["spec", "ttl"]), format!("spec.ttl: {e}")),
                    Ok(secs) if secs > MAX_APPROVAL_TTL_SECS => per_file.of(o).error(
                        o.pos_of(&["spec", "ttl"]),
                        format!("spec.ttl: {} is {secs} s, over the 7-day cap (P7D); ask for a shorter grant", ea.spec.ttl),
                    ),
                    Ok(_) => {}
                }
                match o.annotation(APPROVED_AT_ANNOTATION) {
                    None => per_file.of(o).error(
                        o.pos_of(&["metadata"]),
                        format!("metadata.annotations[{APPROVED_AT_ANNOTATION:?}] is required: the RFC 3339 time the grant starts (expiry = it + spec.ttl), e.g. \"2026-01-02T15:04:05Z\"; `kars egress allow-extra` writes it"),
                    ),
                    Some(t) if parse_rfc3339(t).is_none() => per_file.of(o).error(
                        o.pos_of(&["metadata", "annotations", APPROVED_AT_ANNOTATION]),
                        format!("metadata.annotations[{APPROVED_AT_ANNOTATION:?}]: {t:?} is not an RFC 3339 time such as 2026-01-02T15:04:05Z"),
                    ),
                    Some(_) => {}
                }
                for (i, h) in ea.spec.hosts.iter().enumerate() {
                    if let Err(why) = egress_host(&h.host) {
                        per_file.of(o).error(
                            o.pos_of(&["spec", "hosts"]),
                            format!("spec.hosts[{i}].host: {why}"),
                        );
                    }
                }
            }
            "KarsMemory" | "KarsEval" => {
                let sandbox_ref = match o.kars() {
                    Some(KarsObject::KarsMemory(m)) => {
                        Some((&m.spec.sandbox_ref.name, "sandboxRef"))
                    }
                    Some(KarsObject::KarsEval(e)) => {
                        Some((&e.spec.target_sandbox_ref.name, "targetSandboxRef"))
                    }
                    _ => None,
                };
                if let Some((name, field)) = sandbox_ref
                    && index.get("KarsSandbox", ns, name).is_none()
                {
                    let msg = missing("KarsSandbox", name, &format!("spec.{field}.name"));
                    per_file
                        .of(o)
                        .error(o.pos_of(&["spec", field, "name"]), msg);
                }
            }
            "A2AAgent" => {
                let Some(a) = o.kars().and_then(KarsObject::a2a_agent) else {
                    continue;
                };
                if let Some(tp) = a
                    .spec
                    .policy_refs
                    .as_ref()
                    .and_then(|r| r.tool_policy.as_ref())
                    && index.get("ToolPolicy", ns, tp).is_none()
                {
                    let msg = missing("ToolPolicy", tp, "spec.policyRefs.toolPolicy");
                    per_file
                        .of(o)
                        .error(o.pos_of(&["spec", "policyRefs", "toolPolicy"]), msg);
                }
            }
            "KarsAuthConfig" if o.name != "default" => {
                per_file.of(o).error(
                    o.pos_of(&["metadata", "name"]),
                    "KarsAuthConfig is a singleton: metadata.name must be \"default\"",
                );
            }
            "KarsSREAction" => {
                let Some(a) = o.kars().and_then(KarsObject::sre_action) else {
                    continue;
                };
                check_sre_params(o, a, per_file.of(o));
            }
            _ => {}
        }
    }
    for (_, d) in per_file.0 {
        report.add(d);
    }
}

/// Why the InferencePolicy selector `applies` does not select sandbox `o`, if it does not
/// (`sandboxName` empty or absent: any sandbox in the namespace; every `sandboxMatchLabels`
/// entry must be one of the sandbox's labels).
fn inference_selector_mismatch(
    o: &SourceObject,
    applies: &api::InferenceAppliesTo,
) -> Option<String> {
    if let Some(name) = applies.sandbox_name.as_deref().filter(|n| !n.is_empty())
        && name != o.name
    {
        return Some(format!(
            "applies only to sandbox {name:?} (spec.appliesTo.sandboxName)"
        ));
    }
    let labels = o.node.get_path(&["metadata", "labels"]);
    let missing: Vec<String> = applies
        .sandbox_match_labels
        .iter()
        .filter(|(k, v)| {
            labels
                .and_then(|l| l.get(k))
                .and_then(crate::yaml::Node::as_str)
                != Some(v.as_str())
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "applies only to sandboxes labelled {} (spec.appliesTo.sandboxMatchLabels), and this sandbox is not",
            missing.join(", ")
        )
    })
}

/// The rules the CRD's descriptions promise for a ToolPolicy and its router enforces: amounts
/// in the strict currency syntax, `monthlyCap >= dailyCap` in one currency, a known approval
/// mode, a positive rate and a window the router parses.
fn check_tool_policy(o: &SourceObject, tp: &api::ToolPolicy, diags: &mut Diagnostics) {
    let money =
        |diags: &mut Diagnostics, field: &str, v: Option<&String>| -> Option<(String, u64)> {
            let v = v?;
            let mut full = vec!["spec"];
            full.extend(field.split('.'));
            match kars_contract::money::Money::parse(v) {
                Ok(m) => Some((m.code().to_string(), m.minor)),
                Err(e) => {
                    diags.error(o.pos_of(&full), format!("spec.{field}: {e}"));
                    None
                }
            }
        };
    if let Some(c) = &tp.spec.commerce {
        let _ = money(
            diags,
            "commerce.perTransferCap",
            c.per_transfer_cap.as_ref(),
        );
        let daily = money(diags, "commerce.dailyCap", c.daily_cap.as_ref());
        let monthly = money(diags, "commerce.monthlyCap", c.monthly_cap.as_ref());
        if let (Some((dc, d)), Some((mc, m))) = (daily, monthly) {
            if dc != mc {
                diags.error(o.pos_of(&["spec", "commerce", "monthlyCap"]), format!("spec.commerce.monthlyCap is in {mc} and dailyCap in {dc}; use one currency (amounts are never converted)"));
            } else if m < d {
                diags.error(
                    o.pos_of(&["spec", "commerce", "monthlyCap"]),
                    "spec.commerce.monthlyCap must be at least dailyCap".to_string(),
                );
            }
        }
    }
    if let Some(a) = &tp.spec.approval {
        let _ = money(diags, "approval.threshold", a.threshold.as_ref());
        match a.mode.as_deref() {
            // auto and human: the spellings of upstream's full-stack example (never, always).
            None | Some("never" | "always" | "aboveThreshold" | "auto" | "human") => {}
            Some(other) => diags.error(
                o.pos_of(&["spec", "approval", "mode"]),
                format!("spec.approval.mode: {other:?} is not never, always or aboveThreshold (or auto/human)"),
            ),
        }
    }
    // Without a mode, commerce means aboveThreshold (the CRD's default).
    let approval = tp.spec.approval.as_ref();
    let mode = approval.and_then(|a| a.mode.as_deref());
    let above = mode == Some("aboveThreshold") || (mode.is_none() && tp.spec.commerce.is_some());
    if above && approval.and_then(|a| a.threshold.as_ref()).is_none() {
        diags.warning(
            o.pos_of(&["spec", "approval"]),
            "spec.approval: aboveThreshold (the default with commerce) without a threshold asks for approval of every amount; set spec.approval.threshold",
        );
    }
    if let Some(r) = &tp.spec.rate_limit {
        if r.rps.is_none_or(|n| n == 0) {
            diags.error(
                o.pos_of(&["spec", "rateLimit"]),
                "spec.rateLimit.rps must be a positive number of calls per window",
            );
        }
        if let Some(w) = &r.window
            && !is_window(w)
        {
            diags.error(o.pos_of(&["spec", "rateLimit", "window"]), format!("spec.rateLimit.window: {w:?} is not a duration from 1s to 24h such as 30s, 1m, 1h or 24h"));
        }
    }
}

/// A `<digits><ms|s|m|h>` duration of at least 1 s and at most 24 h, as the router takes
/// rate-limit windows.
fn is_window(w: &str) -> bool {
    let digits = w.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &w[digits.len()..];
    let ms_per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return false,
    };
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && digits
            .parse::<u64>()
            .is_ok_and(|n| (1_000..=86_400_000).contains(&n.saturating_mul(ms_per)))
}

/// Diagnostics collectors keyed by file.
#[derive(Default)]
struct PerFile(BTreeMap<String, Diagnostics>);

impl PerFile {
    fn of(&mut self, o: &SourceObject) -> &mut Diagnostics {
        self.0
            .entry(o.file.clone())
            .or_insert_with(|| Diagnostics::new(o.file.clone()))
    }
}

fn check_sre_params(o: &SourceObject, a: &api::KarsSREAction, diags: &mut Diagnostics) {
    let t = a.spec.action.type_.as_str();
    if !SRE_ACTION_TYPES.contains(&t) {
        return; // the CEL rule already reported it
    }
    if let Err(problems) = crate::sre::SreOperation::parse(t, &a.spec.action.params) {
        for p in problems {
            let pos = match p.param() {
                Some(param) if a.spec.action.params.contains_key(param) => {
                    o.pos_of(&["spec", "action", "params", param])
                }
                _ => o.pos_of(&["spec", "action", "params"]),
            };
            diags.error(pos, p.to_string());
        }
    }
}
