//! Structural OpenAPI v3 schemas, as the upstream CRDs declare them, applied to YAML nodes.
//!
//! Two operations, the same ones the API server runs on a custom resource:
//! [`apply_defaults`] fills in `default:` values, and [`validate`] checks types, required
//! fields, enums, patterns, lengths, ranges and unknown fields (an unknown field is an error, as
//! with `kubectl apply --validate=strict`, so a typo is never silently dropped). CEL rules
//! (`x-kubernetes-validations`) are not interpreted here; they are re-expressed in Rust in
//! [`crate::cel`].

use std::collections::BTreeMap;

use regex::Regex;
use serde::Deserialize;

use crate::diagnostics::Diagnostics;
use crate::yaml::{Key, Node, Pos, Value};

/// A structural schema node (the subset of OpenAPI v3 that Kubernetes CRDs use).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema {
    /// `object`, `string`, `integer`, `number`, `boolean` or `array`.
    #[serde(rename = "type")]
    pub type_: Option<String>,
    /// Named properties of an object.
    #[serde(default)]
    pub properties: BTreeMap<String, Schema>,
    /// Required property names.
    #[serde(default)]
    pub required: Vec<String>,
    /// Item schema of an array.
    pub items: Option<Box<Schema>>,
    /// Value schema of a map-like object.
    pub additional_properties: Option<AdditionalProperties>,
    /// Allowed values.
    #[serde(rename = "enum")]
    pub enum_: Option<Vec<serde_json::Value>>,
    /// Regular expression a string must match.
    pub pattern: Option<String>,
    /// Minimum string length.
    pub min_length: Option<u64>,
    /// Maximum string length.
    pub max_length: Option<u64>,
    /// Minimum number.
    pub minimum: Option<f64>,
    /// Maximum number.
    pub maximum: Option<f64>,
    /// Minimum number of array items.
    pub min_items: Option<u64>,
    /// Maximum number of array items.
    pub max_items: Option<u64>,
    /// Whether `null` is allowed.
    #[serde(default)]
    pub nullable: bool,
    /// Default applied when the field is absent.
    pub default: Option<serde_json::Value>,
    /// Format hint (`int32`, `uint32`, `date-time`, …).
    pub format: Option<String>,
    /// Keep fields the schema does not declare.
    #[serde(rename = "x-kubernetes-preserve-unknown-fields", default)]
    pub preserve_unknown_fields: bool,
    /// Accept an integer or a string.
    #[serde(rename = "x-kubernetes-int-or-string", default)]
    pub int_or_string: bool,
    /// CEL rules; evaluated by [`crate::cel`], listed here so tests can check coverage.
    #[serde(rename = "x-kubernetes-validations", default)]
    pub validations: Vec<CelValidation>,
}

/// `additionalProperties`: either a boolean or a schema.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum AdditionalProperties {
    /// `true` (anything) or `false` (nothing).
    Bool(bool),
    /// Every value must match this schema.
    Schema(Box<Schema>),
}

/// One `x-kubernetes-validations` entry.
#[derive(Clone, Debug, Deserialize)]
pub struct CelValidation {
    /// The CEL expression.
    pub rule: String,
    /// The message shown when it fails.
    pub message: Option<String>,
}

/// A dotted field path such as `spec.hosts[2].port`, built while walking a document.
#[derive(Clone, Debug, Default)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    /// The empty path (document root).
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }
    /// A child field.
    pub fn field(&self, name: &str) -> Self {
        let mut p = self.clone();
        p.0.push(format!(".{name}"));
        p
    }
    /// An array index.
    pub fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(format!("[{i}]"));
        p
    }
    /// A map key.
    pub fn key(&self, k: &str) -> Self {
        let mut p = self.clone();
        p.0.push(format!("[{k:?}]"));
        p
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: String = self.0.concat();
        f.write_str(s.strip_prefix('.').unwrap_or(&s))
    }
}

/// True for a `null` in a field `name` of `schema` that is not nullable (the API server prunes it).
fn pruned_null(schema: &Schema, name: &str, value: &Node) -> bool {
    value.is_null() && schema.properties.get(name).is_some_and(|s| !s.nullable)
}

/// Returns a copy of `node` without the `null`s in fields that are not nullable (recursively),
/// as the API server prunes them on create and update. Server-side apply refuses them instead
/// ("must be of type array: null"), so a kars object is rendered without them.
pub fn prune_nulls(schema: &Schema, node: &Node) -> Node {
    let value = match &node.value {
        Value::Map(entries) if is_object(schema) => Value::Map(
            entries
                .iter()
                .filter(|(k, v)| !pruned_null(schema, &k.name, v))
                .map(|(k, v)| {
                    let v = match child_schema(schema, &k.name) {
                        Some(s) => prune_nulls(s, v),
                        None => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Seq(items) => match &schema.items {
            Some(item) => Value::Seq(items.iter().map(|i| prune_nulls(item, i)).collect()),
            None => Value::Seq(items.clone()),
        },
        other => other.clone(),
    };
    Node {
        value,
        pos: node.pos,
    }
}

/// Returns a copy of `node` with every schema default filled in (recursively), like the API
/// server's structural defaulting. A `null` in a non-nullable field with a default is replaced.
pub fn apply_defaults(schema: &Schema, node: &Node) -> Node {
    match &node.value {
        Value::Map(entries) if is_object(schema) => {
            // Like the API server: a null in a field that is not nullable is pruned first (and
            // then defaulted like an absent field).
            let mut out: Vec<(Key, Node)> = entries
                .iter()
                .filter(|(k, v)| !pruned_null(schema, &k.name, v))
                .map(|(k, v)| {
                    let v = match child_schema(schema, &k.name) {
                        Some(s) => apply_defaults(s, v),
                        None => v.clone(),
                    };
                    (k.clone(), v)
                })
                .collect();
            for (name, prop) in &schema.properties {
                if prop.default.is_some()
                    && let Some((k, v)) = entries
                        .iter()
                        .find(|(k, v)| &k.name == name && v.is_null() && !prop.nullable)
                {
                    out.push((k.clone(), default_node(prop, v.pos)));
                    continue;
                }
                if prop.default.is_some() && !entries.iter().any(|(k, _)| &k.name == name) {
                    out.push((
                        Key {
                            name: name.clone(),
                            pos: Pos::default(),
                        },
                        default_node(prop, Pos::default()),
                    ));
                }
            }
            Node {
                value: Value::Map(out),
                pos: node.pos,
            }
        }
        Value::Seq(items) => match &schema.items {
            Some(item_schema) => Node {
                value: Value::Seq(
                    items
                        .iter()
                        .map(|i| apply_defaults(item_schema, i))
                        .collect(),
                ),
                pos: node.pos,
            },
            None => node.clone(),
        },
        _ => node.clone(),
    }
}

fn default_node(schema: &Schema, pos: Pos) -> Node {
    let mut n = match &schema.default {
        Some(d) => Node::from_json(d),
        None => Node::synthetic(Value::Null),
    };
    n = apply_defaults(schema, &n);
    n.pos = pos;
    n
}

fn is_object(schema: &Schema) -> bool {
    schema.type_.as_deref() == Some("object")
}

fn child_schema<'s>(schema: &'s Schema, name: &str) -> Option<&'s Schema> {
    schema
        .properties
        .get(name)
        .or(match &schema.additional_properties {
            Some(AdditionalProperties::Schema(s)) => Some(s),
            _ => None,
        })
}

/// Where a node's problems are reported: its own position, or the nearest known one.
fn at(node: &Node, fallback: Pos) -> Pos {
    if node.pos.line == 0 {
        fallback
    } else {
        node.pos
    }
}

/// Validates `node` against `schema`, adding one diagnostic per problem.
pub fn validate(
    schema: &Schema,
    node: &Node,
    path: &FieldPath,
    fallback: Pos,
    diags: &mut Diagnostics,
) {
    let pos = at(node, fallback);
    if node.is_null() {
        if !schema.nullable && schema.type_.is_some() {
            diags.error(
                pos,
                format!("{path}: must be of type {}, got null", type_label(schema)),
            );
        }
        return;
    }
    if schema.int_or_string {
        if !matches!(node.value, Value::Int(_) | Value::Str(_)) {
            diags.error(
                pos,
                format!(
                    "{path}: must be an integer or a string, got {}",
                    node.type_name()
                ),
            );
        }
        return;
    }
    match schema.type_.as_deref() {
        Some("object") => validate_object(schema, node, path, pos, diags),
        Some("array") => validate_array(schema, node, path, pos, diags),
        Some("string") => validate_string(schema, node, path, pos, diags),
        Some("integer") => validate_integer(schema, node, path, pos, diags),
        Some("number") => match node.value {
            Value::Int(i) => check_range(schema, i as f64, path, pos, diags),
            Value::Float(f) => check_range(schema, f, path, pos, diags),
            _ => type_error(schema, node, path, pos, diags),
        },
        Some("boolean") if !matches!(node.value, Value::Bool(_)) => {
            type_error(schema, node, path, pos, diags)
        }
        _ => {}
    }
    if let Some(allowed) = &schema.enum_ {
        let json = node.to_json();
        if !allowed.contains(&json) {
            let list: Vec<String> = allowed.iter().map(json_scalar).collect();
            diags.error(
                pos,
                format!(
                    "{path}: unsupported value {}; supported values: {}",
                    json_scalar(&json),
                    list.join(", ")
                ),
            );
        }
    }
}

fn json_scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn type_label(schema: &Schema) -> &str {
    schema.type_.as_deref().unwrap_or("any")
}

fn type_error(schema: &Schema, node: &Node, path: &FieldPath, pos: Pos, diags: &mut Diagnostics) {
    let hint = match (&node.value, schema.type_.as_deref()) {
        (Value::Bool(_), Some("string")) => {
            " (YAML reads yes/no/on/off/true/false as booleans; quote the value)"
        }
        (Value::Int(_) | Value::Float(_), Some("string")) => {
            " (quote the value to make it a string)"
        }
        _ => "",
    };
    diags.error(
        pos,
        format!(
            "{path}: must be of type {}, got {}{hint}",
            type_label(schema),
            node.type_name()
        ),
    );
}

fn validate_object(
    schema: &Schema,
    node: &Node,
    path: &FieldPath,
    pos: Pos,
    diags: &mut Diagnostics,
) {
    let Some(entries) = node.as_map() else {
        type_error(schema, node, path, pos, diags);
        return;
    };
    for (key, value) in entries {
        if let Some(prop) = schema.properties.get(&key.name) {
            validate(prop, value, &path.field(&key.name), key.pos, diags);
            continue;
        }
        match &schema.additional_properties {
            Some(AdditionalProperties::Schema(s)) => {
                validate(s, value, &path.key(&key.name), key.pos, diags);
            }
            Some(AdditionalProperties::Bool(true)) => {}
            _ if schema.preserve_unknown_fields => {}
            _ => unknown_field(schema, key, path, diags),
        }
    }
    for name in &schema.required {
        if !entries.iter().any(|(k, _)| &k.name == name) {
            diags.error(
                pos,
                format!("{}: required field is missing", path.field(name)),
            );
        }
    }
}

fn unknown_field(schema: &Schema, key: &Key, path: &FieldPath, diags: &mut Diagnostics) {
    let suggestion = closest(&key.name, schema.properties.keys().map(String::as_str))
        .map(|s| format!("; did you mean {s:?}?"))
        .unwrap_or_default();
    let known = if schema.properties.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = schema.properties.keys().map(String::as_str).collect();
        format!(" (known fields: {})", names.join(", "))
    };
    diags.error(
        key.pos,
        format!(
            "{}: unknown field {:?}{suggestion}{known}",
            path.field(&key.name),
            key.name
        ),
    );
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely typo.
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    candidates
        .map(|c| (edit_distance(&lower, &c.to_ascii_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn validate_array(
    schema: &Schema,
    node: &Node,
    path: &FieldPath,
    pos: Pos,
    diags: &mut Diagnostics,
) {
    let Some(items) = node.as_seq() else {
        type_error(schema, node, path, pos, diags);
        return;
    };
    if let Some(max) = schema.max_items
        && items.len() as u64 > max
    {
        diags.error(
            pos,
            format!("{path}: must have at most {max} items, has {}", items.len()),
        );
    }
    if let Some(min) = schema.min_items
        && (items.len() as u64) < min
    {
        diags.error(
            pos,
            format!(
                "{path}: must have at least {min} items, has {}",
                items.len()
            ),
        );
    }
    if let Some(item_schema) = &schema.items {
        for (i, item) in items.iter().enumerate() {
            validate(item_schema, item, &path.index(i), pos, diags);
        }
    }
}

fn validate_string(
    schema: &Schema,
    node: &Node,
    path: &FieldPath,
    pos: Pos,
    diags: &mut Diagnostics,
) {
    let Some(s) = node.as_str() else {
        type_error(schema, node, path, pos, diags);
        return;
    };
    let len = s.chars().count() as u64;
    if let Some(max) = schema.max_length
        && len > max
    {
        diags.error(
            pos,
            format!("{path}: may not be longer than {max} characters (is {len})"),
        );
    }
    if let Some(min) = schema.min_length
        && len < min
    {
        diags.error(pos, format!("{path}: must be at least {min} characters"));
    }
    if let Some(pattern) = &schema.pattern {
        match cached_regex(pattern) {
            Ok(re) if !re.is_match(s) => {
                diags.error(
                    pos,
                    format!("{path}: {s:?} does not match the pattern {pattern}"),
                );
            }
            Ok(_) => {}
            Err(e) => diags.error(
                pos,
                format!("{path}: the schema's pattern {pattern:?} does not compile: {e}"),
            ),
        }
    }
    if schema.format.as_deref() == Some("date-time") && !is_rfc3339(s) {
        diags.error(
            pos,
            format!("{path}: {s:?} is not an RFC 3339 date-time (e.g. 2026-01-02T15:04:05Z)"),
        );
    }
}

/// A compiled regular expression, cached by pattern (schemas and CEL rules use a handful).
pub fn cached_regex(pattern: &str) -> Result<Regex, regex::Error> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, Regex>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(re) = cache.lock().ok().and_then(|c| c.get(pattern).cloned()) {
        return Ok(re);
    }
    let re = Regex::new(pattern)?;
    if let Ok(mut c) = cache.lock() {
        c.insert(pattern.to_string(), re.clone());
    }
    Ok(re)
}

/// True for an RFC 3339 date-time such as `2026-01-02T15:04:05Z` or `…05.123+01:00`.
pub fn is_rfc3339(s: &str) -> bool {
    kars_contract::time::parse_rfc3339(s).is_some()
}

fn validate_integer(
    schema: &Schema,
    node: &Node,
    path: &FieldPath,
    pos: Pos,
    diags: &mut Diagnostics,
) {
    let Value::Int(i) = node.value else {
        type_error(schema, node, path, pos, diags);
        return;
    };
    let bounds: Option<(i64, i64)> = match schema.format.as_deref() {
        Some("int32") => Some((i32::MIN.into(), i32::MAX.into())),
        Some("uint32") => Some((0, u32::MAX.into())),
        Some("uint16") => Some((0, u16::MAX.into())),
        Some("uint64") => Some((0, i64::MAX)),
        _ => None,
    };
    if let Some((lo, hi)) = bounds
        && (i < lo || i > hi)
    {
        diags.error(
            pos,
            format!(
                "{path}: {i} does not fit in {} ({lo}..={hi})",
                schema.format.as_deref().unwrap_or("")
            ),
        );
    }
    check_range(schema, i as f64, path, pos, diags);
}

fn check_range(schema: &Schema, v: f64, path: &FieldPath, pos: Pos, diags: &mut Diagnostics) {
    if let Some(min) = schema.minimum
        && v < min
    {
        diags.error(
            pos,
            format!("{path}: should be greater than or equal to {min}"),
        );
    }
    if let Some(max) = schema.maximum
        && v > max
    {
        diags.error(
            pos,
            format!("{path}: should be less than or equal to {max}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{YamlLimits, parse_documents};

    fn schema(yaml: &str) -> Schema {
        let docs = parse_documents(yaml, YamlLimits::default()).expect("schema yaml");
        serde_json::from_value(docs[0].to_json()).expect("schema")
    }

    fn check(s: &Schema, doc: &str) -> Vec<String> {
        let node = parse_documents(doc, YamlLimits::default())
            .expect("doc")
            .remove(0);
        let node = apply_defaults(s, &node);
        let mut d = Diagnostics::new("f.yaml");
        validate(s, &node, &FieldPath::root(), node.pos, &mut d);
        d.into_vec().iter().map(ToString::to_string).collect()
    }

    const S: &str = r#"
type: object
required: [name]
properties:
  name: {type: string, maxLength: 5, pattern: "^[a-z]+$"}
  port: {type: integer, format: uint16, minimum: 1}
  mode: {type: string, enum: [Strict, Learn], default: Learn}
  tags: {type: array, maxItems: 2, items: {type: string}}
  labels: {type: object, additionalProperties: {type: string}}
  free: {type: object, x-kubernetes-preserve-unknown-fields: true}
"#;

    #[test]
    fn reports_every_problem_with_positions() {
        let s = schema(S);
        let errs = check(
            &s,
            "port: 70000\nmode: strict\ntags: [a, b, c]\nlabels: {a: 1}\nnmae: x\n",
        );
        let all = errs.join("\n");
        assert!(
            all.contains("f.yaml:1:7: port: 70000 does not fit in uint16"),
            "{all}"
        );
        assert!(
            all.contains("f.yaml:2:7: mode: unsupported value \"strict\""),
            "{all}"
        );
        assert!(
            all.contains("f.yaml:3:7: tags: must have at most 2 items"),
            "{all}"
        );
        assert!(
            all.contains("labels[\"a\"]: must be of type string, got integer"),
            "{all}"
        );
        assert!(
            all.contains("f.yaml:5:1: nmae: unknown field \"nmae\"; did you mean \"name\"?"),
            "{all}"
        );
        assert!(all.contains("name: required field is missing"), "{all}");
    }

    #[test]
    fn defaults_are_applied_and_free_form_kept() {
        let s = schema(S);
        let node = parse_documents("name: ab\nfree: {anything: [1]}\n", YamlLimits::default())
            .expect("doc")
            .remove(0);
        let d = apply_defaults(&s, &node);
        assert_eq!(d.get("mode").and_then(Node::as_str), Some("Learn"));
        assert!(check(&s, "name: ab\nfree: {anything: [1]}\n").is_empty());
    }

    #[test]
    fn pattern_and_length() {
        let s = schema(S);
        let errs = check(&s, "name: Abcdefg\n").join("\n");
        assert!(errs.contains("may not be longer than 5"), "{errs}");
        assert!(errs.contains("does not match the pattern"), "{errs}");
    }

    #[test]
    fn boolean_looking_strings_get_a_quoting_hint() {
        let s = schema(S);
        let errs = check(&s, "name: yes\n").join("\n");
        assert!(errs.contains("quote the value"), "{errs}");
    }
}
