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
pub type Check = fn(&Node) -> Result<(), Pos>;

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
pub(super) fn has(n: &Node, key: &str) -> bool {
    n.get(key).is_some_and(|v| !v.is_null())
}

pub(super) fn field<'a>(n: &'a Node, key: &str) -> Option<&'a Node> {
    n.get(key).filter(|v| !v.is_null())
}

/// `size()` of a string (code points), list or map; 0 for anything else.
pub(super) fn size(n: Option<&Node>) -> usize {
    match n.map(|n| &n.value) {
        Some(Value::Str(s)) => s.chars().count(),
        Some(Value::Seq(items)) => items.len(),
        Some(Value::Map(entries)) => entries.len(),
        _ => 0,
    }
}

pub(super) fn str_of<'a>(n: &'a Node, key: &str) -> &'a str {
    field(n, key).and_then(Node::as_str).unwrap_or("")
}

pub(super) fn int_of(n: &Node, key: &str) -> Option<i64> {
    field(n, key).and_then(Node::as_i64)
}

pub(super) fn bool_of(n: &Node, key: &str) -> Option<bool> {
    field(n, key).and_then(Node::as_bool)
}

pub(super) fn items<'a>(n: &'a Node, key: &str) -> &'a [Node] {
    field(n, key).and_then(Node::as_seq).unwrap_or(&[])
}

/// Position of `n.key` if present, else of `n`.
pub(super) fn pos_of(n: &Node, key: &str) -> Pos {
    match n.get_entry(key) {
        Some((_, v)) if v.pos.line > 0 => v.pos,
        Some((k, _)) => k.pos,
        None => n.pos,
    }
}

pub(super) fn ok_if(cond: bool, pos: Pos) -> Result<(), Pos> {
    if cond { Ok(()) } else { Err(pos) }
}

/// `list.all(x, pred)`, failing at the first element that does not satisfy `pred`.
pub(super) fn all(list: &[Node], pred: impl Fn(&Node) -> bool) -> Result<(), Pos> {
    match list.iter().find(|x| !pred(x)) {
        Some(bad) => Err(bad.pos),
        None => Ok(()),
    }
}

pub(super) fn has_control_byte(s: &str) -> bool {
    s.chars()
        .any(|c| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}'))
}

pub(super) fn matches(s: &str, re: &str) -> bool {
    crate::schema::cached_regex(re).is_ok_and(|r| r.is_match(s))
}

pub(super) fn runtime_block(n: &Node, kind: &str, block: &str) -> Result<(), Pos> {
    let pos = if has(n, block) {
        pos_of(n, block)
    } else {
        pos_of(n, "kind")
    };
    ok_if((str_of(n, "kind") == kind) == has(n, block), pos)
}

pub(super) fn agent_code(n: &Node) -> Result<(), Pos> {
    ok_if(has(n, "oci") != has(n, "git"), n.pos)
}

pub(super) fn len_between(n: &Node, key: &str, lo: usize, hi: usize) -> Result<(), Pos> {
    let s = size(field(n, key));
    ok_if(s >= lo && s <= hi, pos_of(n, key))
}

pub(super) fn optional_len_between(n: &Node, key: &str, lo: usize, hi: usize) -> Result<(), Pos> {
    if has(n, key) {
        len_between(n, key, lo, hi)
    } else {
        Ok(())
    }
}

pub(super) const SEVERITIES: [&str; 4] = ["Safe", "Low", "Medium", "High"];

// ---- the rules ------------------------------------------------------------------------------

mod platform;
mod policies;
mod sandbox;

/// Every CEL rule of the upstream CRDs, by CRD group.
pub fn rules() -> impl Iterator<Item = &'static Rule> {
    sandbox::RULES
        .iter()
        .chain(policies::RULES)
        .chain(platform::RULES)
}

/// The typed SRE actions upstream kars executes.
pub const SRE_ACTION_TYPES: [&str; 5] = [
    "DeleteResourceQuota",
    "PatchDeploymentImage",
    "ScaleDeployment",
    "RolloutRestart",
    "DeletePod",
];

/// True for a DNS-1123 label: 1–63 lowercase alphanumerics or `-`, alphanumeric at both ends.
pub use kars_contract::host::is_dns_label;

/// Runs every rule of `kind` on the defaulted object `root`, reporting failures with the
/// CRD's message. `schema` is the kind's root schema (for the messages).
pub fn check_object(kind: &str, schema: &Schema, root: &Node, diags: &mut Diagnostics) {
    for rule in rules().filter(|r| r.kind == kind) {
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
        let mut ported: Vec<(String, Vec<String>, String)> = rules()
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
