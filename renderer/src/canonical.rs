//! Canonical JSON and its digests (policy digests are the contract's framing,
//! [`kars_contract::policy::digest_files`]).
//!
//! Canonical JSON: object keys sorted by their UTF-8 bytes at every level, no insignificant
//! whitespace, numbers and strings as serde_json writes them. It does not depend on
//! serde_json's `preserve_order` feature (which another crate could switch on through feature
//! unification): keys are sorted here explicitly.

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
        assert_eq!(
            json_sha256(&v),
            kars_contract::sha256_digest(json(&v).as_bytes())
        );
    }
}
