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

/// A view of a JSON value that serialises objects with sorted keys.
pub struct Sorted<'a>(pub &'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut m = s.serialize_map(Some(keys.len()))?;
                for k in keys {
                    m.serialize_entry(k, &Sorted(&map[k]))?;
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
