//! The CEL rules (`x-kubernetes-validations`) of the upstream CRDs, re-expressed in Rust.
//!
//! Each entry names the kind, the schema path the rule sits on, and the exact CEL text; a test
//! checks that every rule in the embedded CRDs has exactly one entry here, so a CRD update that
//! adds a rule fails the build's tests until the rule is ported. The failure message is the
//! CRD's own `message`; the position is the most precise node we can point at (the offending
//! list entry or field), where the API server would only name the rule's path.
//!
//! Semantics follow Kubernetes CEL: `has(x.f)` is false for an absent or `null` field, `size()`
//! of a string counts Unicode code points, `matches()` is an unanchored RE2 search. Rules are
//! evaluated on the defaulted object, as the API server does.

use crate::diagnostics::Diagnostics;
use crate::schema::{FieldPath, Schema};
use crate::yaml::{Node, Pos, Value};

/// The result of one rule: `Err(pos)` points at what violates it.
type Check = fn(&Node) -> Result<(), Pos>;

/// One CEL rule ported to Rust.
pub struct Rule {
    /// The kind whose CRD carries the rule.
    pub kind: &'static str,
    /// Path of the schema node the rule sits on (`[]` = the root).
    pub path: &'static [&'static str],
    /// The rule's CEL text, exactly as in the CRD.
    pub cel: &'static str,
    /// The Rust re-expression.
    pub check: Check,
}

// ---- helpers with CEL semantics -------------------------------------------------------------

/// `has(n.key)`: present and not null.
fn has(n: &Node, key: &str) -> bool {
    n.get(key).is_some_and(|v| !v.is_null())
}

fn field<'a>(n: &'a Node, key: &str) -> Option<&'a Node> {
    n.get(key).filter(|v| !v.is_null())
}

/// `size()` of a string (code points), list or map; 0 for anything else.
fn size(n: Option<&Node>) -> usize {
    match n.map(|n| &n.value) {
        Some(Value::Str(s)) => s.chars().count(),
        Some(Value::Seq(items)) => items.len(),
        Some(Value::Map(entries)) => entries.len(),
        _ => 0,
    }
}

fn str_of<'a>(n: &'a Node, key: &str) -> &'a str {
    field(n, key).and_then(Node::as_str).unwrap_or("")
}

fn int_of(n: &Node, key: &str) -> Option<i64> {
    field(n, key).and_then(Node::as_i64)
}

fn bool_of(n: &Node, key: &str) -> Option<bool> {
    field(n, key).and_then(Node::as_bool)
}

fn items<'a>(n: &'a Node, key: &str) -> &'a [Node] {
    field(n, key).and_then(Node::as_seq).unwrap_or(&[])
}

/// Position of `n.key` if present, else of `n`.
fn pos_of(n: &Node, key: &str) -> Pos {
    match n.get_entry(key) {
        Some((_, v)) if v.pos.line > 0 => v.pos,
        Some((k, _)) => k.pos,
        None => n.pos,
    }
}

fn ok_if(cond: bool, pos: Pos) -> Result<(), Pos> {
    if cond { Ok(()) } else { Err(pos) }
}

/// `list.all(x, pred)`, failing at the first element that does not satisfy `pred`.
fn all(list: &[Node], pred: impl Fn(&Node) -> bool) -> Result<(), Pos> {
    match list.iter().find(|x| !pred(x)) {
        Some(bad) => Err(bad.pos),
        None => Ok(()),
    }
}

fn has_control_byte(s: &str) -> bool {
    s.chars()
        .any(|c| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}'))
}

fn matches(s: &str, re: &str) -> bool {
    crate::schema::cached_regex(re).is_ok_and(|r| r.is_match(s))
}

fn runtime_block(n: &Node, kind: &str, block: &str) -> Result<(), Pos> {
    let pos = if has(n, block) {
        pos_of(n, block)
    } else {
        pos_of(n, "kind")
    };
    ok_if((str_of(n, "kind") == kind) == has(n, block), pos)
}

fn agent_code(n: &Node) -> Result<(), Pos> {
    ok_if(has(n, "oci") != has(n, "git"), n.pos)
}

fn len_between(n: &Node, key: &str, lo: usize, hi: usize) -> Result<(), Pos> {
    let s = size(field(n, key));
    ok_if(s >= lo && s <= hi, pos_of(n, key))
}

fn optional_len_between(n: &Node, key: &str, lo: usize, hi: usize) -> Result<(), Pos> {
    if has(n, key) {
        len_between(n, key, lo, hi)
    } else {
        Ok(())
    }
}

const SEVERITIES: [&str; 4] = ["Safe", "Low", "Medium", "High"];

// ---- the rules ------------------------------------------------------------------------------

/// Every CEL rule of the upstream CRDs.
pub const RULES: &[Rule] = &[
    // A2AAgent
    Rule {
        kind: "A2AAgent",
        path: &["spec"],
        cel: "size(self.signingKeys) > 0",
        check: |s| ok_if(size(field(s, "signingKeys")) > 0, pos_of(s, "signingKeys")),
    },
    Rule {
        kind: "A2AAgent",
        path: &["spec"],
        cel: "self.signingKeys.all(k, k.alg == 'EdDSA')",
        check: |s| all(items(s, "signingKeys"), |k| str_of(k, "alg") == "EdDSA"),
    },
    Rule {
        kind: "A2AAgent",
        path: &["spec"],
        cel: "self.productionMode == false || self.endpointUrl.startsWith('https://')",
        check: |s| {
            ok_if(
                bool_of(s, "productionMode") != Some(true)
                    || str_of(s, "endpointUrl").starts_with("https://"),
                pos_of(s, "endpointUrl"),
            )
        },
    },
    Rule {
        kind: "A2AAgent",
        path: &["spec"],
        cel: "self.federation.all(p, (p.kind == 'in-cluster' && has(p.agentRef) && !has(p.endpointUrl)) || (p.kind == 'external' && has(p.endpointUrl) && has(p.pinnedKid) && !has(p.agentRef)))",
        check: |s| {
            all(items(s, "federation"), |p| {
                (str_of(p, "kind") == "in-cluster" && has(p, "agentRef") && !has(p, "endpointUrl"))
                    || (str_of(p, "kind") == "external"
                        && has(p, "endpointUrl")
                        && has(p, "pinnedKid")
                        && !has(p, "agentRef"))
            })
        },
    },
    // EgressApproval
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "size(self.sandbox) > 0 && size(self.sandbox) <= 253",
        check: |s| len_between(s, "sandbox", 1, 253),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "size(self.hosts) >= 1 && size(self.hosts) <= 16",
        check: |s| len_between(s, "hosts", 1, 16),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "self.hosts.all(h, size(h.host) > 0 && size(h.host) <= 253)",
        check: |s| {
            all(items(s, "hosts"), |h| {
                (1..=253).contains(&size(field(h, "host")))
            })
        },
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "self.hosts.all(h, !has(h.port) || (h.port >= 1 && h.port <= 65535))",
        check: |s| {
            all(items(s, "hosts"), |h| {
                !has(h, "port") || int_of(h, "port").is_some_and(|p| (1..=65535).contains(&p))
            })
        },
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "size(self.reason) >= 1 && size(self.reason) <= 512",
        check: |s| len_between(s, "reason", 1, 512),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "!self.reason.matches('[\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F]')",
        check: |s| ok_if(!has_control_byte(str_of(s, "reason")), pos_of(s, "reason")),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "!has(self.ticket) || (size(self.ticket) >= 1 && size(self.ticket) <= 128)",
        check: |s| optional_len_between(s, "ticket", 1, 128),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "self.ttl.matches('^P(\\\\d+Y)?(\\\\d+M)?(\\\\d+W)?(\\\\d+D)?(T(\\\\d+H)?(\\\\d+M)?(\\\\d+S)?)?$')",
        check: |s| {
            ok_if(
                matches(
                    str_of(s, "ttl"),
                    r"^P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?$",
                ),
                pos_of(s, "ttl"),
            )
        },
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "self.ttl.matches('[1-9]')",
        check: |s| {
            ok_if(
                str_of(s, "ttl").chars().any(|c| ('1'..='9').contains(&c)),
                pos_of(s, "ttl"),
            )
        },
    },
    // InferencePolicy
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.bundleRef) || (!has(self.tokenBudget) && !has(self.contentSafety) && !has(self.modelPreference) && !has(self.displayName))",
        check: |s| {
            ok_if(
                !has(s, "bundleRef")
                    || ![
                        "tokenBudget",
                        "contentSafety",
                        "modelPreference",
                        "displayName",
                    ]
                    .iter()
                    .any(|k| has(s, k)),
                pos_of(s, "bundleRef"),
            )
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.tokenBudget) || !has(self.tokenBudget.monthlyTokens) || !has(self.tokenBudget.dailyTokens) || self.tokenBudget.monthlyTokens >= self.tokenBudget.dailyTokens",
        check: |s| match field(s, "tokenBudget") {
            Some(tb) => match (int_of(tb, "monthlyTokens"), int_of(tb, "dailyTokens")) {
                (Some(m), Some(d)) => ok_if(m >= d, pos_of(tb, "monthlyTokens")),
                _ => Ok(()),
            },
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.tokenBudget) || !has(self.tokenBudget.monthlyTokens) || !has(self.tokenBudget.perRequestTokens) || self.tokenBudget.monthlyTokens >= self.tokenBudget.perRequestTokens",
        check: |s| match field(s, "tokenBudget") {
            Some(tb) => match (int_of(tb, "monthlyTokens"), int_of(tb, "perRequestTokens")) {
                (Some(m), Some(p)) => ok_if(m >= p, pos_of(tb, "monthlyTokens")),
                _ => Ok(()),
            },
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.contentSafety) || ((!has(self.contentSafety.hate)      || self.contentSafety.hate      in ['Safe','Low','Medium','High']) && (!has(self.contentSafety.selfHarm)  || self.contentSafety.selfHarm  in ['Safe','Low','Medium','High']) && (!has(self.contentSafety.sexual)    || self.contentSafety.sexual    in ['Safe','Low','Medium','High']) && (!has(self.contentSafety.violence)  || self.contentSafety.violence  in ['Safe','Low','Medium','High']))",
        check: |s| match field(s, "contentSafety") {
            Some(cs) => {
                for k in ["hate", "selfHarm", "sexual", "violence"] {
                    if has(cs, k) && !SEVERITIES.contains(&str_of(cs, k)) {
                        return Err(pos_of(cs, k));
                    }
                }
                Ok(())
            }
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.modelPreference) || (size(self.modelPreference.primary.provider) > 0 && size(self.modelPreference.primary.deployment) > 0)",
        check: |s| match field(s, "modelPreference") {
            Some(mp) => {
                let primary = field(mp, "primary");
                let ok = primary.is_some_and(|p| {
                    size(field(p, "provider")) > 0 && size(field(p, "deployment")) > 0
                });
                ok_if(ok, primary.map_or(mp.pos, |p| p.pos))
            }
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.modelPreference) || self.modelPreference.fallback.all(f, size(f.provider) > 0 && size(f.deployment) > 0)",
        check: |s| match field(s, "modelPreference") {
            Some(mp) => all(items(mp, "fallback"), |f| {
                size(field(f, "provider")) > 0 && size(field(f, "deployment")) > 0
            }),
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.appliesTo.action) || self.appliesTo.action in ['chat','responses','image','embeddings','*']",
        check: |s| match field(s, "appliesTo") {
            Some(a) if has(a, "action") => ok_if(
                ["chat", "responses", "image", "embeddings", "*"].contains(&str_of(a, "action")),
                pos_of(a, "action"),
            ),
            _ => Ok(()),
        },
    },
    // KarsAuthConfig: a transition rule that always holds.
    Rule {
        kind: "KarsAuthConfig",
        path: &["spec"],
        cel: "self == oldSelf || true",
        check: |_| Ok(()),
    },
    // KarsEval
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "size(self.targetSandboxRef.name) > 0 && size(self.targetSandboxRef.name) <= 253",
        check: |s| match field(s, "targetSandboxRef") {
            Some(t) => len_between(t, "name", 1, 253),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "has(self.corpus.builtin) != has(self.corpus.bundleRef)",
        check: |s| match field(s, "corpus") {
            Some(c) => ok_if(has(c, "builtin") != has(c, "bundleRef"), c.pos),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "!has(self.corpus.builtin) || (size(self.corpus.builtin) > 0 && size(self.corpus.builtin) <= 253)",
        check: |s| match field(s, "corpus") {
            Some(c) => optional_len_between(c, "builtin", 1, 253),
            None => Ok(()),
        },
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "!has(self.schedule) || (size(self.schedule) > 0 && size(self.schedule) <= 256 && (size(self.schedule.split(' ')) == 5 || size(self.schedule.split(' ')) == 6))",
        check: |s| {
            if !has(s, "schedule") {
                return Ok(());
            }
            let sched = str_of(s, "schedule");
            let n = sched.chars().count();
            let fields = sched.split(' ').count();
            ok_if(
                n > 0 && n <= 256 && (fields == 5 || fields == 6),
                pos_of(s, "schedule"),
            )
        },
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "!has(self.displayName) || (size(self.displayName) > 0 && size(self.displayName) <= 256)",
        check: |s| optional_len_between(s, "displayName", 1, 256),
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "!has(self.runnerImage) || (size(self.runnerImage) > 0 && size(self.runnerImage) <= 512)",
        check: |s| optional_len_between(s, "runnerImage", 1, 512),
    },
    // KarsMemory
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "has(self.bundleRef) || (has(self.storeName) && size(self.storeName) > 0 && size(self.storeName) <= 63 && self.storeName.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",
        check: |s| {
            ok_if(
                has(s, "bundleRef")
                    || (has(s, "storeName") && is_dns_label(str_of(s, "storeName"))),
                pos_of(s, "storeName"),
            )
        },
    },
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "size(self.sandboxRef.name) > 0 && size(self.sandboxRef.name) <= 253",
        check: |s| match field(s, "sandboxRef") {
            Some(r) => len_between(r, "name", 1, 253),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "has(self.bundleRef) || (has(self.scope) && size(self.scope) > 0 && size(self.scope) <= 256 && self.scope.matches('^[A-Za-z0-9_./%+@-]+$'))",
        check: |s| {
            ok_if(
                has(s, "bundleRef")
                    || (has(s, "scope")
                        && size(field(s, "scope")) <= 256
                        && matches(str_of(s, "scope"), "^[A-Za-z0-9_./%+@-]+$")),
                pos_of(s, "scope"),
            )
        },
    },
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "!has(self.retentionDays) || self.retentionDays > 0",
        check: |s| {
            ok_if(
                !has(s, "retentionDays") || int_of(s, "retentionDays").is_some_and(|d| d > 0),
                pos_of(s, "retentionDays"),
            )
        },
    },
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "!has(self.bundleRef) || (!has(self.storeName) && !has(self.scope) && !has(self.retentionDays) && !has(self.deleteOnSandboxDelete) && !has(self.displayName))",
        check: |s| {
            ok_if(
                !has(s, "bundleRef")
                    || ![
                        "storeName",
                        "scope",
                        "retentionDays",
                        "deleteOnSandboxDelete",
                        "displayName",
                    ]
                    .iter()
                    .any(|k| has(s, k)),
                pos_of(s, "bundleRef"),
            )
        },
    },
    // KarsSREAction
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "self.action.type in ['DeleteResourceQuota', 'PatchDeploymentImage', 'ScaleDeployment', 'RolloutRestart', 'DeletePod']",
        check: |s| match field(s, "action") {
            Some(a) => ok_if(
                SRE_ACTION_TYPES.contains(&str_of(a, "type")),
                pos_of(a, "type"),
            ),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "self.approval.state in ['Pending', 'Approved', 'Rejected']",
        check: |s| match field(s, "approval") {
            Some(a) => ok_if(
                ["Pending", "Approved", "Rejected"].contains(&str_of(a, "state")),
                pos_of(a, "state"),
            ),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.ttlMinutes) || (self.ttlMinutes >= 1 && self.ttlMinutes <= 60)",
        check: |s| {
            ok_if(
                !has(s, "ttlMinutes")
                    || int_of(s, "ttlMinutes").is_some_and(|m| (1..=60).contains(&m)),
                pos_of(s, "ttlMinutes"),
            )
        },
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.rationale) || size(self.rationale) <= 2048",
        check: |s| ok_if(size(field(s, "rationale")) <= 2048, pos_of(s, "rationale")),
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.diagnosis) || size(self.diagnosis) <= 512",
        check: |s| ok_if(size(field(s, "diagnosis")) <= 512, pos_of(s, "diagnosis")),
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.approval.note) || size(self.approval.note) <= 512",
        check: |s| match field(s, "approval") {
            Some(a) => ok_if(size(field(a, "note")) <= 512, pos_of(a, "note")),
            None => Ok(()),
        },
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.rationale) || !self.rationale.matches('[\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F]')",
        check: |s| {
            ok_if(
                !has_control_byte(str_of(s, "rationale")),
                pos_of(s, "rationale"),
            )
        },
    },
    // McpServer
    Rule {
        kind: "McpServer",
        path: &["spec"],
        cel: "has(self.bundleRef) || !has(self.productionMode) || self.productionMode == false || (has(self.oauth) && size(self.oauth.issuer) > 0)",
        check: |s| {
            ok_if(
                has(s, "bundleRef")
                    || bool_of(s, "productionMode") != Some(true)
                    || field(s, "oauth").is_some_and(|o| size(field(o, "issuer")) > 0),
                pos_of(s, "productionMode"),
            )
        },
    },
    Rule {
        kind: "McpServer",
        path: &["spec"],
        cel: "has(self.bundleRef) || !has(self.productionMode) || self.productionMode == false || (has(self.url) && self.url.startsWith('https://'))",
        check: |s| {
            ok_if(
                has(s, "bundleRef")
                    || bool_of(s, "productionMode") != Some(true)
                    || str_of(s, "url").starts_with("https://"),
                pos_of(s, "url"),
            )
        },
    },
    Rule {
        kind: "McpServer",
        path: &["spec"],
        cel: "!has(self.oauth) || !has(self.oauth.pkce) || self.oauth.pkce == 'S256'",
        check: |s| match field(s, "oauth") {
            Some(o) if has(o, "pkce") => ok_if(str_of(o, "pkce") == "S256", pos_of(o, "pkce")),
            _ => Ok(()),
        },
    },
    Rule {
        kind: "McpServer",
        path: &["spec"],
        cel: "!has(self.bundleRef) || (!has(self.url) && !has(self.oauth) && !has(self.productionMode) && !has(self.scopes) && !has(self.allowedTools) && !has(self.displayName))",
        check: |s| {
            ok_if(
                !has(s, "bundleRef")
                    || ![
                        "url",
                        "oauth",
                        "productionMode",
                        "scopes",
                        "allowedTools",
                        "displayName",
                    ]
                    .iter()
                    .any(|k| has(s, k)),
                pos_of(s, "bundleRef"),
            )
        },
    },
    // ToolPolicy
    Rule {
        kind: "ToolPolicy",
        path: &["spec"],
        cel: "has(self.appliesTo.sandboxMatchLabels) && size(self.appliesTo.sandboxMatchLabels) > 0",
        check: |s| match field(s, "appliesTo") {
            Some(a) => ok_if(
                size(field(a, "sandboxMatchLabels")) > 0,
                pos_of(a, "sandboxMatchLabels"),
            ),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "ToolPolicy",
        path: &["spec"],
        cel: "!has(self.agtProfile) || !(has(self.agtProfile.inline) && has(self.agtProfile.bundleRef))",
        check: |s| match field(s, "agtProfile") {
            Some(p) => ok_if(!(has(p, "inline") && has(p, "bundleRef")), p.pos),
            None => Ok(()),
        },
    },
    // TrustGraph
    Rule {
        kind: "TrustGraph",
        path: &["spec"],
        cel: "size(self.vertices) > 0",
        check: |s| ok_if(size(field(s, "vertices")) > 0, pos_of(s, "vertices")),
    },
    Rule {
        kind: "TrustGraph",
        path: &["spec"],
        cel: "self.vertices.all(v, v.alg == 'EdDSA')",
        check: |s| all(items(s, "vertices"), |v| str_of(v, "alg") == "EdDSA"),
    },
    Rule {
        kind: "TrustGraph",
        path: &["spec"],
        cel: "!has(self.edges) || self.edges.all(e, e.score >= 0 && e.score <= 1000)",
        check: |s| {
            all(items(s, "edges"), |e| {
                int_of(e, "score").is_some_and(|x| (0..=1000).contains(&x))
            })
        },
    },
    Rule {
        kind: "TrustGraph",
        path: &["spec"],
        cel: "!has(self.edges) || self.edges.all(e, !has(e.notAfter) || e.notAfter >= e.issuedAt)",
        check: |s| {
            all(items(s, "edges"), |e| {
                match (int_of(e, "notAfter"), int_of(e, "issuedAt")) {
                    (Some(na), Some(ia)) => na >= ia,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
            })
        },
    },
    // KarsSandbox
    Rule {
        kind: "KarsSandbox",
        path: &["spec"],
        cel: "self.runtime.kind != 'BYO' || !has(self.agent)",
        check: |s| {
            ok_if(
                field(s, "runtime").is_none_or(|r| str_of(r, "kind") != "BYO") || !has(s, "agent"),
                pos_of(s, "agent"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec"],
        cel: "!has(self.governance) || !has(self.governance.toolPolicyRef) || !has(self.governance.toolPolicyRef.name) || (!self.governance.toolPolicyRef.name.contains('/') && !self.governance.toolPolicyRef.name.contains(':'))",
        check: |s| match field(s, "governance").and_then(|g| field(g, "toolPolicyRef")) {
            Some(r) => {
                let name = str_of(r, "name");
                ok_if(
                    !name.contains('/') && !name.contains(':'),
                    pos_of(r, "name"),
                )
            }
            None => Ok(()),
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'OpenClaw') == has(self.openclaw)",
        check: |r| runtime_block(r, "OpenClaw", "openclaw"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'OpenAIAgents') == has(self.openaiAgents)",
        check: |r| runtime_block(r, "OpenAIAgents", "openaiAgents"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'MicrosoftAgentFramework') == has(self.microsoftAgentFramework)",
        check: |r| runtime_block(r, "MicrosoftAgentFramework", "microsoftAgentFramework"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'SemanticKernel') == has(self.semanticKernel)",
        check: |r| runtime_block(r, "SemanticKernel", "semanticKernel"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'LangGraph') == has(self.langGraph)",
        check: |r| runtime_block(r, "LangGraph", "langGraph"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'Anthropic') == has(self.anthropic)",
        check: |r| runtime_block(r, "Anthropic", "anthropic"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'PydanticAi') == has(self.pydanticAi)",
        check: |r| runtime_block(r, "PydanticAi", "pydanticAi"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'Hermes') == has(self.hermes)",
        check: |r| runtime_block(r, "Hermes", "hermes"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'BYO') == has(self.byo)",
        check: |r| runtime_block(r, "BYO", "byo"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "openaiAgents", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "microsoftAgentFramework", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "semanticKernel", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "langGraph", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "anthropic", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "pydanticAi", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "hermes", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "inferenceRef"],
        cel: "self.name.size() > 0",
        check: |r| ok_if(size(field(r, "name")) > 0, pos_of(r, "name")),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "memoryRef"],
        cel: "self.name.size() > 0",
        check: |r| ok_if(size(field(r, "name")) > 0, pos_of(r, "name")),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!has(self.enabled) || !self.enabled || (has(self.toolPolicyRef) && self.toolPolicyRef.name.size() > 0)",
        check: |g| {
            ok_if(
                bool_of(g, "enabled") != Some(true)
                    || field(g, "toolPolicyRef").is_some_and(|r| size(field(r, "name")) > 0),
                pos_of(g, "enabled"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!has(self.trustThreshold) || (self.trustThreshold >= 0 && self.trustThreshold <= 1000)",
        check: |g| {
            ok_if(
                !has(g, "trustThreshold")
                    || int_of(g, "trustThreshold").is_some_and(|t| (0..=1000).contains(&t)),
                pos_of(g, "trustThreshold"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!(has(self.mcpServerRef) && has(self.mcpServerRefs) && self.mcpServerRefs.size() > 0)",
        check: |g| {
            ok_if(
                !(has(g, "mcpServerRef") && size(field(g, "mcpServerRefs")) > 0),
                pos_of(g, "mcpServerRefs"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!has(self.mcpServerRefs) || self.mcpServerRefs.size() <= 8",
        check: |g| {
            ok_if(
                size(field(g, "mcpServerRefs")) <= 8,
                pos_of(g, "mcpServerRefs"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!has(self.mcpServerRefs) || self.mcpServerRefs.all(r, self.mcpServerRefs.exists_one(s, s.name == r.name))",
        check: |g| {
            let refs = items(g, "mcpServerRefs");
            all(refs, |r| {
                refs.iter()
                    .filter(|s| str_of(s, "name") == str_of(r, "name"))
                    .count()
                    == 1
            })
        },
    },
    // KarsPairing (rules on the root)
    Rule {
        kind: "KarsPairing",
        path: &[],
        cel: "!has(self.spec.slotsMax) || self.spec.slotsMax >= 1",
        check: |root| match field(root, "spec") {
            Some(s) => ok_if(
                !has(s, "slotsMax") || int_of(s, "slotsMax").is_some_and(|v| v >= 1),
                pos_of(s, "slotsMax"),
            ),
            None => Ok(()),
        },
    },
    Rule {
        kind: "KarsPairing",
        path: &[],
        cel: "!has(self.spec.tokenBudget) || self.spec.tokenBudget >= 0",
        check: |root| match field(root, "spec") {
            Some(s) => ok_if(
                !has(s, "tokenBudget") || int_of(s, "tokenBudget").is_some_and(|v| v >= 0),
                pos_of(s, "tokenBudget"),
            ),
            None => Ok(()),
        },
    },
];

/// The typed SRE actions upstream kars executes.
pub const SRE_ACTION_TYPES: [&str; 5] = [
    "DeleteResourceQuota",
    "PatchDeploymentImage",
    "ScaleDeployment",
    "RolloutRestart",
    "DeletePod",
];

/// True for a DNS-1123 label: 1–63 lowercase alphanumerics or `-`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Runs every rule of `kind` on the defaulted object `root`, reporting failures with the
/// CRD's message. `schema` is the kind's root schema (for the messages).
pub fn check_object(kind: &str, schema: &Schema, root: &Node, diags: &mut Diagnostics) {
    for rule in RULES.iter().filter(|r| r.kind == kind) {
        let Some(target) = rule.path.iter().try_fold(root, |n, k| field(n, k)) else {
            // CEL rules only run on fields that are present.
            continue;
        };
        if let Err(pos) = (rule.check)(target) {
            let message = schema_at(schema, rule.path)
                .and_then(|s| s.validations.iter().find(|v| v.rule == rule.cel))
                .and_then(|v| v.message.clone())
                .unwrap_or_else(|| format!("failed rule: {}", rule.cel));
            let path = rule.path.iter().fold(FieldPath::root(), |p, k| p.field(k));
            let pos = if pos.line == 0 { target.pos } else { pos };
            let shown = if rule.path.is_empty() {
                String::new()
            } else {
                format!("{path}: ")
            };
            diags.error(pos, format!("{shown}{message}"));
        }
    }
}

fn schema_at<'s>(schema: &'s Schema, path: &[&str]) -> Option<&'s Schema> {
    path.iter().try_fold(schema, |s, k| s.properties.get(*k))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crds;

    fn collect(
        kind: &str,
        schema: &Schema,
        path: &mut Vec<String>,
        out: &mut Vec<(String, Vec<String>, String)>,
    ) {
        for v in &schema.validations {
            out.push((kind.to_string(), path.clone(), v.rule.clone()));
        }
        for (name, child) in &schema.properties {
            path.push(name.clone());
            collect(kind, child, path, out);
            path.pop();
        }
        assert!(
            schema
                .items
                .as_ref()
                .is_none_or(|i| i.validations.is_empty()
                    && i.properties.values().all(|p| p.validations.is_empty())),
            "rules inside array items are not supported by this port"
        );
    }

    #[test]
    fn every_crd_rule_is_ported_exactly_once() {
        let mut in_crds = Vec::new();
        for crd in crds::all() {
            collect(&crd.kind, &crd.schema, &mut Vec::new(), &mut in_crds);
        }
        let mut ported: Vec<(String, Vec<String>, String)> = RULES
            .iter()
            .map(|r| {
                (
                    r.kind.to_string(),
                    r.path.iter().map(|s| s.to_string()).collect(),
                    r.cel.to_string(),
                )
            })
            .collect();
        in_crds.sort();
        ported.sort();
        let missing: Vec<_> = in_crds.iter().filter(|r| !ported.contains(r)).collect();
        let extra: Vec<_> = ported.iter().filter(|r| !in_crds.contains(r)).collect();
        assert!(
            missing.is_empty(),
            "CEL rules without a Rust port: {missing:#?}"
        );
        assert!(extra.is_empty(), "ported rules no CRD has: {extra:#?}");
        assert_eq!(in_crds.len(), 76);
    }

    #[test]
    fn dns_labels() {
        assert!(is_dns_label("a") && is_dns_label("agent-1"));
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}

#[cfg(test)]
mod rule_tests {
    use crate::diagnostics::Diagnostics;
    use crate::yaml::{YamlLimits, parse_documents};

    fn errors(kind: &str, doc: &str) -> Vec<String> {
        let crd = crate::crds::find(kind).expect("kind");
        let node = parse_documents(doc, YamlLimits::default())
            .expect("yaml")
            .remove(0);
        let node = crate::schema::apply_defaults(&crd.schema, &node);
        let mut d = Diagnostics::new("t.yaml");
        super::check_object(kind, &crd.schema, &node, &mut d);
        d.into_vec().into_iter().map(|x| x.to_string()).collect()
    }

    /// Regression: equal names at different positions are duplicates (found by the API-server
    /// parity test).
    #[test]
    fn duplicate_mcp_refs_are_refused() {
        let e = errors(
            "KarsSandbox",
            "spec:\n  runtime: {kind: BYO, byo: {image: x, contractVersion: v1}}\n  sandbox: {}\n  inferenceRef: {name: ip}\n  governance:\n    mcpServerRefs: [{name: m}, {name: m}]\n",
        );
        assert!(e.iter().any(|x| x.contains("unique by name")), "{e:?}");
        let ok = errors(
            "KarsSandbox",
            "spec:\n  runtime: {kind: BYO, byo: {image: x, contractVersion: v1}}\n  sandbox: {}\n  inferenceRef: {name: ip}\n  governance:\n    mcpServerRefs: [{name: m}, {name: n}]\n",
        );
        assert!(ok.is_empty(), "{ok:?}");
    }
}
