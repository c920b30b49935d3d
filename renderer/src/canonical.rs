//! Canonical bytes and digests.
//!
//! Canonical JSON: object keys sorted by their UTF-8 bytes at every level, no insignificant
//! whitespace, numbers and strings as serde_json writes them. It does not depend on
//! serde_json's `preserve_order` feature (which another crate could switch on through feature
//! unification): keys are sorted here explicitly.
//!
//! Policy digests follow upstream kars' framing, so the router can echo the same value:
//! `sha256( u64be(len(name)) ‖ name ‖ u64be(len(body)) ‖ body )`, written `sha256:<hex>`.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// True when `serde_json::Map` iterates in key order (its default `BTreeMap`); false when some
/// crate in the build switched on serde_json's `preserve_order`, in which case keys are sorted
/// explicitly. Checked once.
fn map_iterates_sorted() -> bool {
    static SORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SORTED.get_or_init(|| {
        let mut m = serde_json::Map::new();
        m.insert("b".into(), Value::Null);
        m.insert("a".into(), Value::Null);
        m.keys().next().map(String::as_str) == Some("a")
    })
}

/// A view of a JSON value that serialises objects with sorted keys.
pub struct Sorted<'a>(pub &'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut m = s.serialize_map(Some(map.len()))?;
                if map_iterates_sorted() {
                    for (k, v) in map {
                        m.serialize_entry(k, &Sorted(v))?;
                    }
                } else {
                    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                    for (k, v) in entries {
                        m.serialize_entry(k, &Sorted(v))?;
                    }
                }
                m.end()
            }
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(&Sorted(i))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

/// Canonical JSON text of `value`.
pub fn json(value: &Value) -> String {
    // Serialising a `Value` to a String cannot fail (no non-string keys, no I/O).
    serde_json::to_string(&Sorted(value)).unwrap_or_default()
}

/// `sha256:<hex>` of the canonical JSON of `value`, streamed into the hash (no string built).
pub fn json_sha256(value: &Value) -> String {
    struct HashWriter(Sha256);
    impl std::io::Write for HashWriter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.update(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut w = HashWriter(Sha256::new());
    // Writing into a hasher cannot fail.
    let _ = serde_json::to_writer(&mut w, &Sorted(value));
    format!("sha256:{}", hex::encode(w.0.finalize()))
}

/// `sha256:<hex>` of arbitrary bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The upstream-compatible digest of one named policy file.
pub fn policy_digest(name: &str, body: &[u8]) -> String {
    policy_digest_files(&[(name, body)])
}

/// The digest of several files, framed one after another in the order given (callers sort).
pub fn policy_digest_files(files: &[(&str, &[u8])]) -> String {
    let mut h = Sha256::new();
    for (name, body) in files {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((body.len() as u64).to_be_bytes());
        h.update(body);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let v: Value =
            serde_json::from_str(r#"{"b":1,"a":{"z":[{"y":1,"x":2}],"c":null}}"#).expect("json");
        assert_eq!(json(&v), r#"{"a":{"c":null,"z":[{"x":2,"y":1}]},"b":1}"#);
    }

    #[test]
    fn streamed_digest_equals_digest_of_text() {
        let v: Value = serde_json::from_str(r#"{"b":[1,{"d":2,"c":3}],"a":"x"}"#).expect("json");
        assert_eq!(json_sha256(&v), sha256(json(&v).as_bytes()));
    }

    #[test]
    fn digest_framing_matches_the_documented_rule() {
        let mut manual = Vec::new();
        manual.extend_from_slice(&14u64.to_be_bytes());
        manual.extend_from_slice(b"allowlist.json");
        manual.extend_from_slice(&2u64.to_be_bytes());
        manual.extend_from_slice(b"{}");
        assert_eq!(policy_digest("allowlist.json", b"{}"), sha256(&manual));
        assert_ne!(
            policy_digest("allowlist.json", b"{}"),
            policy_digest("allowlist.jso", b"n{}")
        );
    }
}
