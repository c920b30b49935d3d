//! Signed policy bundles: the canonical byte form of each kind's content, so the same logical
//! content always gives the same bytes (and the same digest), and the media type
//! (`artifactType`) each kind is published under.
//!
//! | kind | media type | canonical form |
//! |---|---|---|
//! | `egress-allowlist` | `application/vnd.kars.egress-allowlist.v1+yaml` | fixed YAML (below): hosts normalised, sorted by (host, port), deduplicated |
//! | `agt-profile` | `application/vnd.kars.agt-profile.v1+yaml` | YAML with keys sorted at every level, no comments |
//! | `inference-policy` | `application/vnd.kars.inference-policy.v1+json` | canonical JSON (sorted keys, compact) of the content fields |
//! | `memory-binding` | `application/vnd.kars.memory-binding.v1+json` | canonical JSON |
//! | `mcp-server-bundle` | `application/vnd.kars.mcp-server-bundle.v1+json` | canonical JSON |
//! | `eval-corpus` | `application/vnd.kars.eval-corpus.v1+json` | canonical JSON |
//!
//! Canonical egress allowlist (upstream kars' strict form):
//!
//! ```yaml
//! apiVersion: kars.dev/v1alpha1
//! kind: EgressAllowlist
//! metadata:
//!   generation: 1
//! spec:
//!   endpoints:
//!   - host: api.example.com
//!     port: 443
//! ```

use serde_json::{Map, Value, json};

use crate::api::{self, OciArtifactRef};
use crate::canonical;
use crate::repo::SourceObject;
use crate::yaml::{Node, Pos, YamlLimits, parse_documents};

/// The bundle kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BundleKind {
    /// Egress allowlist (KarsSandbox `networkPolicy.allowlistRef`).
    EgressAllowlist,
    /// AGT profile (ToolPolicy `agtProfile.bundleRef`).
    AgtProfile,
    /// Inference policy content (InferencePolicy `bundleRef`).
    InferencePolicy,
    /// Memory binding content (KarsMemory `bundleRef`).
    MemoryBinding,
    /// MCP server content (McpServer `bundleRef`).
    McpServer,
    /// Evaluation corpus (KarsEval `corpus.bundleRef`).
    EvalCorpus,
}

/// Every kind, for listings and tests.
pub const ALL_KINDS: [BundleKind; 6] = [
    BundleKind::EgressAllowlist,
    BundleKind::AgtProfile,
    BundleKind::InferencePolicy,
    BundleKind::MemoryBinding,
    BundleKind::McpServer,
    BundleKind::EvalCorpus,
];

impl BundleKind {
    /// The CLI name (`--kind`).
    pub fn name(self) -> &'static str {
        match self {
            BundleKind::EgressAllowlist => "egress-allowlist",
            BundleKind::AgtProfile => "agt-profile",
            BundleKind::InferencePolicy => "inference-policy",
            BundleKind::MemoryBinding => "memory-binding",
            BundleKind::McpServer => "mcp-server-bundle",
            BundleKind::EvalCorpus => "eval-corpus",
        }
    }

    /// The OCI `artifactType` (and layer media type).
    pub fn media_type(self) -> &'static str {
        match self {
            BundleKind::EgressAllowlist => "application/vnd.kars.egress-allowlist.v1+yaml",
            BundleKind::AgtProfile => "application/vnd.kars.agt-profile.v1+yaml",
            BundleKind::InferencePolicy => "application/vnd.kars.inference-policy.v1+json",
            BundleKind::MemoryBinding => "application/vnd.kars.memory-binding.v1+json",
            BundleKind::McpServer => "application/vnd.kars.mcp-server-bundle.v1+json",
            BundleKind::EvalCorpus => "application/vnd.kars.eval-corpus.v1+json",
        }
    }

    /// The kars kind and field path that reference bundles of this kind.
    pub fn referenced_by(self) -> (&'static str, &'static [&'static str]) {
        match self {
            BundleKind::EgressAllowlist => {
                ("KarsSandbox", &["spec", "networkPolicy", "allowlistRef"])
            }
            BundleKind::AgtProfile => ("ToolPolicy", &["spec", "agtProfile", "bundleRef"]),
            BundleKind::InferencePolicy => ("InferencePolicy", &["spec", "bundleRef"]),
            BundleKind::MemoryBinding => ("KarsMemory", &["spec", "bundleRef"]),
            BundleKind::McpServer => ("McpServer", &["spec", "bundleRef"]),
            BundleKind::EvalCorpus => ("KarsEval", &["spec", "corpus", "bundleRef"]),
        }
    }

    /// The referencing field as a dotted path (`spec.networkPolicy.allowlistRef`).
    pub fn field(self) -> &'static str {
        match self {
            BundleKind::EgressAllowlist => "spec.networkPolicy.allowlistRef",
            BundleKind::AgtProfile => "spec.agtProfile.bundleRef",
            BundleKind::InferencePolicy | BundleKind::MemoryBinding | BundleKind::McpServer => {
                "spec.bundleRef"
            }
            BundleKind::EvalCorpus => "spec.corpus.bundleRef",
        }
    }

    /// Parses a CLI name.
    pub fn from_name(name: &str) -> Option<BundleKind> {
        ALL_KINDS.iter().copied().find(|k| k.name() == name)
    }

    /// The kind published under `media_type`.
    pub fn from_media_type(media_type: &str) -> Option<BundleKind> {
        ALL_KINDS
            .iter()
            .copied()
            .find(|k| k.media_type() == media_type)
    }
}

/// Why content is not a valid bundle of its kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind} bundle: {message}")]
pub struct BundleError {
    /// The kind's CLI name.
    pub kind: &'static str,
    /// What is wrong.
    pub message: String,
}

fn err(kind: BundleKind, message: impl Into<String>) -> BundleError {
    BundleError {
        kind: kind.name(),
        message: message.into(),
    }
}

/// Parses the content (YAML or JSON; JSON is YAML) into a JSON value.
fn parse_any(kind: BundleKind, bytes: &[u8]) -> Result<Value, BundleError> {
    let text = std::str::from_utf8(bytes).map_err(|_| err(kind, "not UTF-8 text"))?;
    let mut docs = parse_documents(text, YamlLimits::default())
        .map_err(|e| err(kind, format!("line {}: {}", e.pos.line, e.message)))?;
    if docs.len() != 1 {
        return Err(err(
            kind,
            format!("expected one document, found {}", docs.len()),
        ));
    }
    let node: Node = docs.remove(0);
    Ok(node.to_json())
}

/// True when `map[key]` is a non-empty string.
fn has_text(map: &Map<String, Value>, key: &str) -> bool {
    map.get(key)
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
}

fn object<'a>(
    kind: BundleKind,
    v: &'a Value,
    what: &str,
) -> Result<&'a Map<String, Value>, BundleError> {
    v.as_object()
        .ok_or_else(|| err(kind, format!("{what} must be a mapping")))
}

fn only_fields(
    kind: BundleKind,
    m: &Map<String, Value>,
    allowed: &[&str],
    what: &str,
) -> Result<(), BundleError> {
    for k in m.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(err(
                kind,
                format!(
                    "{what}: unknown field {k:?} (allowed: {})",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn opt_string(
    kind: BundleKind,
    m: &Map<String, Value>,
    key: &str,
    non_empty: bool,
) -> Result<(), BundleError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(s)) if non_empty && s.is_empty() => {
            Err(err(kind, format!("{key} must not be empty")))
        }
        Some(Value::String(_)) => Ok(()),
        Some(_) => Err(err(kind, format!("{key} must be a string"))),
    }
}

fn opt_u64(
    kind: BundleKind,
    m: &Map<String, Value>,
    key: &str,
    max: u64,
) -> Result<(), BundleError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if v.as_u64().is_some_and(|n| n <= max) => Ok(()),
        Some(_) => Err(err(kind, format!("{key} must be an integer in 0..={max}"))),
    }
}

fn opt_bool(kind: BundleKind, m: &Map<String, Value>, key: &str) -> Result<(), BundleError> {
    match m.get(key) {
        None | Some(Value::Null) | Some(Value::Bool(_)) => Ok(()),
        Some(_) => Err(err(kind, format!("{key} must be true or false"))),
    }
}

fn at_least_one(
    kind: BundleKind,
    m: &Map<String, Value>,
    keys: &[&str],
) -> Result<(), BundleError> {
    if keys.iter().any(|k| m.get(*k).is_some_and(|v| !v.is_null())) {
        Ok(())
    } else {
        Err(err(
            kind,
            format!("at least one of {} must be set", keys.join(", ")),
        ))
    }
}

/// The endpoints of an egress allowlist, normalised, sorted and deduplicated.
pub fn allowlist_endpoints(bytes: &[u8]) -> Result<Vec<(String, i64)>, BundleError> {
    let kind = BundleKind::EgressAllowlist;
    let v = parse_any(kind, bytes)?;
    let m = object(kind, &v, "the document")?;
    only_fields(
        kind,
        m,
        &["apiVersion", "kind", "metadata", "spec"],
        "the document",
    )?;
    if m.get("apiVersion").and_then(Value::as_str) != Some("kars.dev/v1alpha1")
        || m.get("kind").and_then(Value::as_str) != Some("EgressAllowlist")
    {
        return Err(err(
            kind,
            "must be apiVersion: kars.dev/v1alpha1, kind: EgressAllowlist",
        ));
    }
    let meta = object(kind, m.get("metadata").unwrap_or(&Value::Null), "metadata")?;
    only_fields(kind, meta, &["generation", "name"], "metadata")?;
    if meta
        .get("generation")
        .and_then(Value::as_u64)
        .is_none_or(|g| g == 0)
    {
        return Err(err(kind, "metadata.generation must be a positive integer"));
    }
    let spec = object(kind, m.get("spec").unwrap_or(&Value::Null), "spec")?;
    only_fields(kind, spec, &["endpoints"], "spec")?;
    let eps = spec
        .get("endpoints")
        .and_then(Value::as_array)
        .ok_or_else(|| err(kind, "spec.endpoints must be a list"))?;
    let mut out = std::collections::BTreeSet::new();
    for (i, e) in eps.iter().enumerate() {
        let e = object(kind, e, &format!("spec.endpoints[{i}]"))?;
        only_fields(kind, e, &["host", "port"], &format!("spec.endpoints[{i}]"))?;
        let host = e
            .get("host")
            .and_then(Value::as_str)
            .ok_or_else(|| err(kind, format!("spec.endpoints[{i}].host is required")))?;
        let host = crate::egress::egress_host(host)
            .map_err(|why| err(kind, format!("spec.endpoints[{i}].host: {why}")))?;
        let port = match e.get("port") {
            None => 443,
            Some(p) => p
                .as_i64()
                .filter(|p| (1..=65535).contains(p))
                .ok_or_else(|| err(kind, format!("spec.endpoints[{i}].port must be 1-65535")))?,
        };
        out.insert((host, port));
    }
    Ok(out.into_iter().collect())
}

/// The canonical bytes of `bytes` as a bundle of `kind`, validating the content on the way.
pub fn canonicalize(kind: BundleKind, bytes: &[u8]) -> Result<Vec<u8>, BundleError> {
    match kind {
        BundleKind::EgressAllowlist => {
            let endpoints = allowlist_endpoints(bytes)?;
            let v = parse_any(kind, bytes)?;
            let generation = v["metadata"]["generation"].as_u64().unwrap_or(1);
            let mut out = format!(
                "apiVersion: kars.dev/v1alpha1\nkind: EgressAllowlist\nmetadata:\n  generation: {generation}\n"
            );
            if let Some(name) = v["metadata"]["name"].as_str() {
                out.push_str(&format!("  name: {}\n", yaml_scalar(name)));
            }
            if endpoints.is_empty() {
                out.push_str("spec:\n  endpoints: []\n");
            } else {
                out.push_str("spec:\n  endpoints:\n");
                for (h, p) in endpoints {
                    out.push_str(&format!("  - host: {h}\n    port: {p}\n"));
                }
            }
            Ok(out.into_bytes())
        }
        BundleKind::AgtProfile => {
            let v = parse_any(kind, bytes)?;
            let m = object(kind, &v, "the profile")?;
            for key in ["version", "agent"] {
                if !has_text(m, key) {
                    return Err(err(kind, format!("{key} must be a non-empty string")));
                }
            }
            if !m.get("policies").is_some_and(Value::is_array) {
                return Err(err(kind, "policies must be a list"));
            }
            crate::output::object_yaml(&v)
                .map(String::into_bytes)
                .map_err(|e| err(kind, e))
        }
        BundleKind::InferencePolicy => {
            let v = parse_any(kind, bytes)?;
            let m = object(kind, &v, "the policy")?;
            let fields = [
                "tokenBudget",
                "contentSafety",
                "modelPreference",
                "displayName",
            ];
            only_fields(kind, m, &fields, "the policy")?;
            at_least_one(kind, m, &fields)?;
            if let Some(tb) = m.get("tokenBudget").filter(|v| !v.is_null()) {
                let tb = object(kind, tb, "tokenBudget")?;
                only_fields(
                    kind,
                    tb,
                    &["perRequestTokens", "dailyTokens", "monthlyTokens"],
                    "tokenBudget",
                )?;
                for k in ["perRequestTokens", "dailyTokens", "monthlyTokens"] {
                    opt_u64(kind, tb, k, u64::MAX)?;
                }
            }
            if let Some(cs) = m.get("contentSafety").filter(|v| !v.is_null()) {
                let cs = object(kind, cs, "contentSafety")?;
                only_fields(
                    kind,
                    cs,
                    &[
                        "hate",
                        "selfHarm",
                        "sexual",
                        "violence",
                        "requirePromptShields",
                    ],
                    "contentSafety",
                )?;
                for k in ["hate", "selfHarm", "sexual", "violence"] {
                    opt_string(kind, cs, k, true)?;
                }
                opt_bool(kind, cs, "requirePromptShields")?;
            }
            if let Some(mp) = m.get("modelPreference").filter(|v| !v.is_null()) {
                let mp = object(kind, mp, "modelPreference")?;
                only_fields(kind, mp, &["primary", "fallback"], "modelPreference")?;
                let targets = std::iter::once(mp.get("primary").cloned().unwrap_or(Value::Null))
                    .chain(
                        mp.get("fallback")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default(),
                    );
                for (i, t) in targets.enumerate() {
                    let t = object(
                        kind,
                        &t,
                        if i == 0 {
                            "modelPreference.primary"
                        } else {
                            "modelPreference.fallback[]"
                        },
                    )?;
                    for k in ["provider", "deployment"] {
                        if !has_text(t, k) {
                            return Err(err(
                                kind,
                                format!("modelPreference entries need a non-empty {k}"),
                            ));
                        }
                    }
                }
            }
            opt_string(kind, m, "displayName", false)?;
            Ok(canonical::json(&v).into_bytes())
        }
        BundleKind::MemoryBinding => {
            let v = parse_any(kind, bytes)?;
            let m = object(kind, &v, "the binding")?;
            let fields = [
                "storeName",
                "scope",
                "retentionDays",
                "deleteOnSandboxDelete",
                "displayName",
            ];
            only_fields(kind, m, &fields, "the binding (sandboxRef stays in the CR)")?;
            at_least_one(kind, m, &fields)?;
            opt_string(kind, m, "storeName", true)?;
            opt_string(kind, m, "scope", true)?;
            opt_u64(kind, m, "retentionDays", u64::from(u32::MAX))?;
            opt_bool(kind, m, "deleteOnSandboxDelete")?;
            opt_string(kind, m, "displayName", false)?;
            Ok(canonical::json(&v).into_bytes())
        }
        BundleKind::McpServer => {
            let v = parse_any(kind, bytes)?;
            let m = object(kind, &v, "the server")?;
            let fields = api::MCP_SERVER_BUNDLE_FIELDS;
            only_fields(
                kind,
                m,
                &fields,
                "the server (allowedSandboxes stays in the CR)",
            )?;
            at_least_one(kind, m, &fields)?;
            opt_string(kind, m, "url", true)?;
            opt_bool(kind, m, "productionMode")?;
            if let Some(o) = m.get("oauth").filter(|v| !v.is_null()) {
                let o = object(kind, o, "oauth")?;
                only_fields(
                    kind,
                    o,
                    &["issuer", "audience", "resource", "pkce"],
                    "oauth",
                )?;
                if !has_text(o, "issuer") {
                    return Err(err(kind, "oauth.issuer must be a non-empty string"));
                }
            }
            for k in ["scopes", "allowedTools"] {
                if let Some(list) = m.get(k).filter(|v| !v.is_null()) {
                    let ok = list.as_array().is_some_and(|a| {
                        a.iter().all(|x| x.as_str().is_some_and(|s| !s.is_empty()))
                    });
                    if !ok {
                        return Err(err(
                            kind,
                            format!("{k} must be a list of non-empty strings"),
                        ));
                    }
                }
            }
            Ok(canonical::json(&v).into_bytes())
        }
        BundleKind::EvalCorpus => {
            let v = parse_any(kind, bytes)?;
            let m = object(kind, &v, "the corpus")?;
            let cases = m
                .get("cases")
                .and_then(Value::as_array)
                .filter(|c| !c.is_empty())
                .ok_or_else(|| err(kind, "cases must be a non-empty list"))?;
            for (i, c) in cases.iter().enumerate() {
                let c = object(kind, c, &format!("cases[{i}]"))?;
                if !has_text(c, "id") {
                    return Err(err(
                        kind,
                        format!("cases[{i}].id must be a non-empty string"),
                    ));
                }
            }
            Ok(canonical::json(&v).into_bytes())
        }
    }
}

/// True when `bytes` are already the canonical form of their content.
pub fn is_canonical(kind: BundleKind, bytes: &[u8]) -> Result<bool, BundleError> {
    Ok(canonicalize(kind, bytes)? == bytes)
}

/// Quotes a YAML scalar only when needed (names are DNS-like; anything else is JSON-quoted).
fn yaml_scalar(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && s.parse::<f64>().is_err()
    {
        s.to_string()
    } else {
        serde_json::to_string(s).unwrap_or_default()
    }
}

/// The allowlist bundle of `endpoints` (canonical bytes), as `kars egress` or a test builds one.
pub fn allowlist_bundle(
    endpoints: &[(String, i64)],
    generation: u64,
) -> Result<Vec<u8>, BundleError> {
    let doc = json!({
        "apiVersion": "kars.dev/v1alpha1",
        "kind": "EgressAllowlist",
        "metadata": {"generation": generation.max(1)},
        "spec": {"endpoints": endpoints.iter().map(|(h, p)| json!({"host": h, "port": p})).collect::<Vec<_>>()},
    });
    canonicalize(
        BundleKind::EgressAllowlist,
        serde_json::to_string(&doc).unwrap_or_default().as_bytes(),
    )
}

/// The YAML patch that points an object's field at a published bundle: the referencing kind,
/// optional `metadata` (name and namespace) and the reference, always the same bytes for the
/// same input (merge it into the object's file in the policy repository).
pub fn reference_patch(kind: BundleKind, r: &OciArtifactRef, name: Option<(&str, &str)>) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let (object_kind, path) = kind.referenced_by();
    let mut out = format!(
        "# Signed {} bundle; merge into the {object_kind}'s file in the policy repository.\napiVersion: {}\nkind: {object_kind}\n",
        kind.name(),
        kars_contract::KARS_API_VERSION
    );
    if let Some((name, namespace)) = name {
        out.push_str(&format!(
            "metadata:\n  name: {}\n  namespace: {}\n",
            q(name),
            q(namespace)
        ));
    }
    for (depth, key) in path.iter().enumerate() {
        out.push_str(&format!("{}{key}:\n", "  ".repeat(depth)));
    }
    let indent = "  ".repeat(path.len());
    for (key, value) in [
        ("registry", &r.registry),
        ("repository", &r.repository),
        ("digest", &r.digest),
        ("artifactType", &r.artifact_type),
    ] {
        out.push_str(&format!("{indent}{key}: {}\n", q(value)));
    }
    out
}

/// One reference from a kars object to a signed bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleUse {
    /// The referencing object, `Kind/namespace/name`.
    pub object: String,
    /// Repository file of the object.
    pub file: String,
    /// Where the reference is in that file.
    pub pos: Pos,
    /// The field holding the reference, e.g. `spec.networkPolicy.allowlistRef`.
    pub field: &'static str,
    /// The bundle kind the field takes.
    pub kind: BundleKind,
    /// The reference as written.
    pub reference: OciArtifactRef,
}

impl BundleUse {
    /// `registry/repository@digest`.
    pub fn location(&self) -> String {
        format!(
            "{}/{}@{}",
            self.reference.registry, self.reference.repository, self.reference.digest
        )
    }
}

/// The bundle references of one object (none for objects that take no bundle; a kars kind
/// takes at most one, at [`BundleKind::referenced_by`]).
pub fn uses_of(o: &SourceObject) -> Vec<BundleUse> {
    use api::KarsObject as K;
    let (kind, reference) = match o.kars() {
        Some(K::KarsSandbox(s)) => (
            BundleKind::EgressAllowlist,
            s.spec
                .network_policy
                .as_ref()
                .and_then(|n| n.allowlist_ref.as_ref()),
        ),
        Some(K::ToolPolicy(t)) => (
            BundleKind::AgtProfile,
            t.spec
                .agt_profile
                .as_ref()
                .and_then(|a| a.bundle_ref.as_ref()),
        ),
        Some(K::InferencePolicy(t)) => (BundleKind::InferencePolicy, t.spec.bundle_ref.as_ref()),
        Some(K::KarsMemory(t)) => (BundleKind::MemoryBinding, t.spec.bundle_ref.as_ref()),
        Some(K::McpServer(t)) => (BundleKind::McpServer, t.spec.bundle_ref.as_ref()),
        Some(K::KarsEval(t)) => (BundleKind::EvalCorpus, t.spec.corpus.bundle_ref.as_ref()),
        _ => return Vec::new(),
    };
    reference
        .map(|reference| BundleUse {
            object: o.key(),
            file: o.file.clone(),
            pos: o.pos_of(kind.referenced_by().1),
            field: kind.field(),
            kind,
            reference: reference.clone(),
        })
        .into_iter()
        .collect()
}

/// True for `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}

/// Checks a reference as written: a manifest digest (never a tag), a registry host, a
/// repository path, and the `artifactType` of the field's kind. Names the rule broken.
pub fn check_reference(kind: BundleKind, r: &OciArtifactRef) -> Result<(), String> {
    if !is_sha256_digest(&r.digest) {
        return Err(format!(
            "InvalidRef: digest {:?} is not sha256:<64 lowercase hex>; bundles are pinned by manifest digest, never by tag (kars policy sign prints the digest)",
            r.digest
        ));
    }
    let host_ok = !r.registry.is_empty()
        && r.registry.len() <= 253
        && r.registry
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b".-:[]".contains(&c))
        && !r.registry.starts_with(['.', '-', ':']);
    if !host_ok {
        return Err(format!(
            "InvalidRef: registry {:?} must be a host name with an optional port (no scheme, no path)",
            r.registry
        ));
    }
    let repo_ok = !r.repository.is_empty()
        && r.repository.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-".contains(&c))
                && !seg.starts_with(['.', '_', '-'])
        });
    if !repo_ok {
        return Err(format!(
            "InvalidRef: repository {:?} must be lowercase path segments (a-z 0-9 . _ -) separated by /",
            r.repository
        ));
    }
    if r.artifact_type != kind.media_type() {
        return Err(format!(
            "ArtifactTypeMismatch: artifactType {:?} is not {:?}, the media type of {} bundles",
            r.artifact_type,
            kind.media_type(),
            kind.name()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_patch_points_the_kinds_field_at_the_bundle() {
        for kind in ALL_KINDS {
            let r = OciArtifactRef {
                registry: "127.0.0.1:5000".into(),
                repository: "policies/a-b".into(),
                digest: format!("sha256:{}", "c".repeat(64)),
                artifact_type: kind.media_type().into(),
            };
            let patch = reference_patch(kind, &r, Some(("agent: x", "ns")));
            assert_eq!(patch, reference_patch(kind, &r, Some(("agent: x", "ns"))));
            let v: Value = serde_saphyr::from_str(&patch).expect("the patch is YAML");
            let (object_kind, path) = kind.referenced_by();
            assert_eq!(v["kind"], object_kind);
            assert_eq!(v["metadata"]["name"], "agent: x", "names are quoted");
            let mut at = &v;
            for key in path {
                at = &at[*key];
            }
            assert_eq!(at, &serde_json::to_value(&r).expect("json"), "{kind:?}");
            assert!(check_reference(kind, &r).is_ok());
        }
    }

    /// Regression: the patch once said `apiVersion: kars.dev/v1alpha1`, which no kars CRD
    /// serves; merged into a sandbox file it made the object invalid.
    #[test]
    fn reference_patch_is_a_kars_azure_com_object_byte_for_byte() {
        let r = OciArtifactRef {
            registry: "127.0.0.1:5000".into(),
            repository: "policies/a".into(),
            digest: format!("sha256:{}", "c".repeat(64)),
            artifact_type: BundleKind::EgressAllowlist.media_type().into(),
        };
        let patch = reference_patch(BundleKind::EgressAllowlist, &r, Some(("agent-a", "team-a")));
        let expected = [
            "# Signed egress-allowlist bundle; merge into the KarsSandbox's file in the policy repository.",
            "apiVersion: kars.azure.com/v1alpha1",
            "kind: KarsSandbox",
            "metadata:",
            "  name: \"agent-a\"",
            "  namespace: \"team-a\"",
            "spec:",
            "  networkPolicy:",
            "    allowlistRef:",
            "      registry: \"127.0.0.1:5000\"",
            "      repository: \"policies/a\"",
            &format!("      digest: \"sha256:{}\"", "c".repeat(64)),
            "      artifactType: \"application/vnd.kars.egress-allowlist.v1+yaml\"",
            "",
        ]
        .join("\n");
        assert_eq!(patch, expected);
        for kind in ALL_KINDS {
            let v: Value = serde_saphyr::from_str(&reference_patch(kind, &r, None)).expect("YAML");
            assert_eq!(v["apiVersion"], crate::crds::API_VERSION, "{kind:?}");
        }
    }

    #[test]
    fn allowlist_canonical_form_is_stable_whatever_the_input_style() {
        let messy = b"# comment\nkind: EgressAllowlist\napiVersion: kars.dev/v1alpha1\nspec:\n  endpoints:\n    - {port: 8443, host: B.example.com.}\n    - host: a.example.com\n    - {host: b.example.com, port: 8443}\nmetadata: {generation: 3}\n";
        let c = canonicalize(BundleKind::EgressAllowlist, messy).expect("valid");
        let expected = "apiVersion: kars.dev/v1alpha1\nkind: EgressAllowlist\nmetadata:\n  generation: 3\nspec:\n  endpoints:\n  - host: a.example.com\n    port: 443\n  - host: b.example.com\n    port: 8443\n";
        assert_eq!(String::from_utf8_lossy(&c), expected);
        assert_eq!(
            canonicalize(BundleKind::EgressAllowlist, &c).expect("idempotent"),
            c
        );
        assert!(is_canonical(BundleKind::EgressAllowlist, &c).expect("valid"));
        assert!(!is_canonical(BundleKind::EgressAllowlist, messy).expect("valid"));
        let json_input = br#"{"apiVersion":"kars.dev/v1alpha1","kind":"EgressAllowlist","metadata":{"generation":3},"spec":{"endpoints":[{"host":"b.example.com","port":8443},{"host":"a.example.com"}]}}"#;
        assert_eq!(
            canonicalize(BundleKind::EgressAllowlist, json_input).expect("json"),
            c
        );
    }

    #[test]
    fn allowlist_rejects_bad_content() {
        for (bad, why) in [
            (
                "apiVersion: v1\nkind: EgressAllowlist\nmetadata: {generation: 1}\nspec: {endpoints: []}\n",
                "kars.dev",
            ),
            (
                "apiVersion: kars.dev/v1alpha1\nkind: EgressAllowlist\nmetadata: {generation: 0}\nspec: {endpoints: []}\n",
                "generation",
            ),
            (
                "apiVersion: kars.dev/v1alpha1\nkind: EgressAllowlist\nmetadata: {generation: 1}\nspec: {endpoints: [{host: '*.x.com'}]}\n",
                "wildcard",
            ),
            (
                "apiVersion: kars.dev/v1alpha1\nkind: EgressAllowlist\nmetadata: {generation: 1}\nspec: {endpoints: [{host: x.com, port: 70000}]}\n",
                "port",
            ),
            (
                "apiVersion: kars.dev/v1alpha1\nkind: EgressAllowlist\nmetadata: {generation: 1}\nspec: {endpoints: [{host: x.com, proto: tcp}]}\n",
                "unknown field",
            ),
        ] {
            let e = canonicalize(BundleKind::EgressAllowlist, bad.as_bytes()).expect_err(why);
            assert!(
                e.to_string().contains(why) || e.message.contains(why),
                "{why}: {e}"
            );
        }
    }

    #[test]
    fn json_kinds_are_canonical_json() {
        let c = canonicalize(
            BundleKind::InferencePolicy,
            b"{ \"displayName\": \"x\", \"tokenBudget\": {\"dailyTokens\": 5} }",
        )
        .expect("valid");
        assert_eq!(c, br#"{"displayName":"x","tokenBudget":{"dailyTokens":5}}"#);
        assert!(canonicalize(BundleKind::InferencePolicy, b"{}").is_err());
        assert!(
            canonicalize(BundleKind::MemoryBinding, br#"{"sandboxRef":{"name":"a"}}"#).is_err()
        );
        assert!(canonicalize(BundleKind::McpServer, br#"{"oauth":{"issuer":""}}"#).is_err());
        assert!(canonicalize(BundleKind::EvalCorpus, br#"{"cases":[]}"#).is_err());
        assert!(
            canonicalize(
                BundleKind::EvalCorpus,
                br#"{"cases":[{"id":"c1","prompt":"hi"}]}"#
            )
            .is_ok()
        );
    }

    #[test]
    fn agt_profiles_sort_keys_and_drop_comments() {
        let a = canonicalize(
            BundleKind::AgtProfile,
            b"# x\nversion: '1'\nagent: a\npolicies: []\n",
        )
        .expect("valid");
        let b = canonicalize(
            BundleKind::AgtProfile,
            b"policies: []\nagent: a\nversion: '1'\n",
        )
        .expect("valid");
        assert_eq!(a, b);
        assert!(canonicalize(BundleKind::AgtProfile, b"version: '1'\npolicies: []\n").is_err());
    }

    #[test]
    fn media_types_round_trip() {
        for k in ALL_KINDS {
            assert_eq!(BundleKind::from_media_type(k.media_type()), Some(k));
            assert_eq!(BundleKind::from_name(k.name()), Some(k));
        }
    }
}
