//! YAML documents as a tree of nodes that remember their line and column.
//!
//! Parsing goes through serde-saphyr with the options that make it read Kubernetes YAML the way
//! kubectl does (YAML 1.1 booleans, legacy octal numbers such as `0644` → 420, duplicate keys are
//! an error). Every node keeps its position so validation can report `file:line:column`.
//! Anchors and aliases are accepted only within a small expansion budget, so an alias bomb
//! ("billion laughs") is refused instead of exhausting memory.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{DuplicateKeyPolicy, Spanned};

/// A position in a source file, 1-based. `line == 0` means "unknown".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

impl Pos {
    fn from_location(loc: serde_saphyr::Location) -> Self {
        Pos {
            line: u32::try_from(loc.line()).unwrap_or(u32::MAX),
            column: u32::try_from(loc.column()).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// A YAML value, resolved the way Kubernetes' YAML reader resolves scalars.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `null`, `~` or an empty value.
    Null,
    /// A boolean (YAML 1.1 spellings included: `yes`, `on`, …).
    Bool(bool),
    /// An integer that fits in i64.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order (duplicate keys are rejected while parsing).
    Map(Vec<(Key, Node)>),
}

/// A mapping key with its position.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// The key as a string (integer and boolean keys are turned into strings like kubectl does).
    pub name: String,
    /// Where the key starts.
    pub pos: Pos,
}

/// A YAML node: a value and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The value.
    pub value: Value,
    /// Where the node starts.
    pub pos: Pos,
}

impl Node {
    /// A node without a position (for values synthesised by defaulting).
    pub fn synthetic(value: Value) -> Self {
        Node {
            value,
            pos: Pos::default(),
        }
    }

    /// The mapping entry `key`, if this node is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            Value::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The mapping entry `key` together with its key position.
    pub fn get_entry(&self, key: &str) -> Option<(&Key, &Node)> {
        match &self.value {
            Value::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.name == key)
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    /// Follows a path of mapping keys.
    pub fn get_path(&self, path: &[&str]) -> Option<&Node> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }

    /// The string value, if this node is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer value, if this node is an integer.
    pub fn as_i64(&self) -> Option<i64> {
        match &self.value {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The boolean value, if this node is a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The items, if this node is a sequence.
    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The entries, if this node is a mapping.
    pub fn as_map(&self) -> Option<&[(Key, Node)]> {
        match &self.value {
            Value::Map(entries) => Some(entries),
            _ => None,
        }
    }

    /// True for `null`.
    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// A short name of the node's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self.value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Seq(_) => "array",
            Value::Map(_) => "object",
        }
    }

    /// Converts to JSON (what the API server would receive).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.value {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => serde_json::Value::from(*i),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Seq(items) => {
                serde_json::Value::Array(items.iter().map(Node::to_json).collect())
            }
            Value::Map(entries) => serde_json::Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Builds a position-less node from JSON (used for defaults taken from a schema).
    pub fn from_json(value: &serde_json::Value) -> Node {
        let v = match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(0.0)),
            },
            serde_json::Value::String(s) => Value::Str(s.clone()),
            serde_json::Value::Array(items) => {
                Value::Seq(items.iter().map(Node::from_json).collect())
            }
            serde_json::Value::Object(map) => Value::Map(
                map.iter()
                    .map(|(k, v)| {
                        (
                            Key {
                                name: k.clone(),
                                pos: Pos::default(),
                            },
                            Node::from_json(v),
                        )
                    })
                    .collect(),
            ),
        };
        Node::synthetic(v)
    }
}

/// A YAML syntax problem: where and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// Where the parser stopped (line 0 when unknown).
    pub pos: Pos,
    /// What went wrong, without the position.
    pub message: String,
}

/// Limits that keep hostile YAML from exhausting memory or time.
#[derive(Clone, Copy, Debug)]
pub struct YamlLimits {
    /// Total events replayed through aliases in one file.
    pub max_alias_replayed_events: usize,
    /// Times one anchor may be referenced.
    pub max_alias_expansions_per_anchor: usize,
    /// Maximum nesting depth of alias replays.
    pub max_alias_depth: usize,
}

impl Default for YamlLimits {
    fn default() -> Self {
        YamlLimits {
            max_alias_replayed_events: 10_000,
            max_alias_expansions_per_anchor: 64,
            max_alias_depth: 8,
        }
    }
}

fn options(limits: YamlLimits) -> serde_saphyr::Options {
    let mut o = serde_saphyr::Options::default();
    o.legacy_octal_numbers = true;
    o.duplicate_keys = DuplicateKeyPolicy::Error;
    o.with_snippet = false;
    let mut alias = o.alias_limits;
    alias.max_total_replayed_events = limits.max_alias_replayed_events;
    alias.max_alias_expansions_per_anchor = limits.max_alias_expansions_per_anchor;
    alias.max_replay_stack_depth = limits.max_alias_depth;
    o.alias_limits = alias;
    o
}

/// Parses every document of a (possibly multi-document) YAML text. Empty documents are skipped.
pub fn parse_documents(text: &str, limits: YamlLimits) -> Result<Vec<Node>, SyntaxError> {
    let docs: Vec<Node> =
        serde_saphyr::from_multiple_with_options(text, options(limits)).map_err(syntax_error)?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

fn syntax_error(err: serde_saphyr::Error) -> SyntaxError {
    let pos = err.location().map(Pos::from_location).unwrap_or_default();
    let mut message = err.to_string();
    // The rendered message ends with " at line L, column C"; we print the position ourselves.
    if let Some(idx) = message.rfind(" at line ") {
        message.truncate(idx);
    }
    let message = message.trim().trim_end_matches(':').to_string();
    SyntaxError { pos, message }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<Inner>::deserialize(d)?;
        Ok(Node {
            value: spanned.value.0,
            pos: Pos::from_location(spanned.referenced),
        })
    }
}

struct Inner(Value);

impl<'de> Deserialize<'de> for Inner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ValueVisitor).map(Inner)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(i64::try_from(v)
            .map(Value::Int)
            .unwrap_or(Value::Float(v as f64)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::Str(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Str(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(Value::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries: Vec<(Key, Node)> = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyScalar>>()? {
            let value = map.next_value::<Node>()?;
            entries.push((
                Key {
                    name: key.value.0,
                    pos: Pos::from_location(key.referenced),
                },
                value,
            ));
        }
        Ok(Value::Map(entries))
    }
}

/// A mapping key: strings, and integers or booleans turned into their string form.
struct KeyScalar(String);

impl<'de> Deserialize<'de> for KeyScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyScalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a scalar mapping key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyScalar, E> {
                Ok(KeyScalar(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<KeyScalar, E> {
                Ok(KeyScalar(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<KeyScalar, E> {
                Ok(KeyScalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<KeyScalar, E> {
                Ok(KeyScalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<KeyScalar, E> {
                Ok(KeyScalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<KeyScalar, E> {
                Ok(KeyScalar(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<KeyScalar, E> {
                Ok(KeyScalar("null".to_string()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str) -> Node {
        let mut docs = parse_documents(text, YamlLimits::default()).expect("parses");
        assert_eq!(docs.len(), 1);
        docs.remove(0)
    }

    #[test]
    fn positions_point_at_values_and_keys() {
        let n = one("a: 1\nb:\n  c: hello\n");
        assert_eq!(n.get("a").map(|v| v.pos), Some(Pos { line: 1, column: 4 }));
        let (k, v) = n.get("b").and_then(|b| b.get_entry("c")).expect("b.c");
        assert_eq!(k.pos, Pos { line: 3, column: 3 });
        assert_eq!(v.as_str(), Some("hello"));
    }

    #[test]
    fn kubernetes_scalars() {
        let n = one("mode: 0644\nflag: yes\nname: 'yes'\nport: 443\nratio: 0.5\nempty:\n");
        assert_eq!(n.get("mode").and_then(Node::as_i64), Some(420));
        assert_eq!(n.get("flag").and_then(Node::as_bool), Some(true));
        assert_eq!(n.get("name").and_then(Node::as_str), Some("yes"));
        assert_eq!(n.get("port").and_then(Node::as_i64), Some(443));
        assert_eq!(
            n.get("ratio").map(|v| v.value.clone()),
            Some(Value::Float(0.5))
        );
        assert!(n.get("empty").is_some_and(Node::is_null));
    }

    #[test]
    fn multi_document_skips_empty_documents() {
        let docs = parse_documents(
            "a: 1\n---\n---\nb: 2\n---\n# only a comment\n",
            YamlLimits::default(),
        )
        .expect("parses");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].pos.line, 4);
    }

    #[test]
    fn duplicate_keys_are_an_error_with_a_position() {
        let err = parse_documents("a: 1\nb: 2\na: 3\n", YamlLimits::default()).expect_err("dup");
        assert_eq!(err.pos.line, 3, "{err:?}");
        assert!(err.message.to_lowercase().contains("duplicate"), "{err:?}");
    }

    #[test]
    fn alias_bomb_is_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse_documents(&text, YamlLimits::default()).expect_err("bomb");
        assert!(err.pos.line > 0, "{err:?}");
    }

    #[test]
    fn small_anchor_use_is_fine() {
        let n = one("base: &b {x: 1}\nuse: *b\n");
        assert_eq!(n.get_path(&["use", "x"]).and_then(Node::as_i64), Some(1));
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_documents("a: [1, 2\nb: 3\n", YamlLimits::default()).expect_err("bad");
        assert!(err.pos.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }
}
