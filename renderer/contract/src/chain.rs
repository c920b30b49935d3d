//! The hash-chained record format the router's audit log and the agent's sync log share, and
//! the signed-head line both sign with Ed25519.
//!
//! A record is one JSON object on one line. Its last two fields are always `"prev":"<hex>"` —
//! the `hash` of the record before it ([`GENESIS`] for the first) — and `"hash":"<hex>"` —
//! SHA-256 of the line's bytes up to (not including) `,"hash":`, followed by `}`. `seq` counts
//! from 0 without gaps. So an edited record no longer matches its own hash, a record rewritten
//! with a fresh hash no longer matches the next record's `prev`, and a deleted or moved record
//! breaks `seq` and `prev`; [`verify_reader`] names the first record that fails.
//!
//! A signed head ([`SignedHead`]) is the Ed25519 signature of [`head_message`]: the number of
//! records and the hash of the last one, at a time. It proves what a chain held when signed,
//! so records cut after it or a chain rewritten from some record on are found.

use std::io::{BufRead, BufReader, Read};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_MARK: &str = ",\"hash\":\"";

/// The first record that breaks the chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ChainError {
    /// 1-based line number.
    pub line: usize,
    /// The record's `seq`, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for ChainError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.seq {
            Some(s) => write!(f, "line {} (seq {s}): {}", self.line, self.reason),
            None => write!(f, "line {}: {}", self.line, self.reason),
        }
    }
}

/// A verified chain.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Number of records.
    pub records: u64,
    /// `hash` of the last record (`GENESIS` when empty).
    pub head: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The line (with its newline) and hash of record `seq` at `ts` with `fields`, after `prev`.
/// `fields` must not hold `seq`, `ts`, `prev` or `hash` (they are set here).
pub fn seal(seq: u64, ts: &str, fields: Map<String, Value>, prev: &str) -> (String, String) {
    let mut record = Map::new();
    record.insert("seq".into(), Value::from(seq));
    record.insert("ts".into(), Value::from(ts));
    record.extend(fields);
    record.insert("prev".into(), Value::from(prev));
    let body = Value::Object(record).to_string();
    let hash = sha256_hex(body.as_bytes());
    let mut line = body;
    line.pop(); // the closing brace
    line.push_str(HASH_MARK);
    line.push_str(&hash);
    line.push_str("\"}\n");
    (line, hash)
}

/// The fields a record may not set itself.
pub const RESERVED_FIELDS: [&str; 4] = ["seq", "ts", "prev", "hash"];

/// Checks one line on its own: returns (seq, prev, hash).
fn check_line(line: &str) -> Result<(u64, String, String), (Option<u64>, String)> {
    let v: Value = serde_json::from_str(line).map_err(|e| (None, format!("not JSON: {e}")))?;
    let seq = v["seq"].as_u64();
    let Some(at) = line.rfind(HASH_MARK) else {
        return Err((seq, "no hash field at the end of the record".into()));
    };
    let hash = &line[at + HASH_MARK.len()..];
    let hash = hash
        .strip_suffix("\"}")
        .filter(|h| h.len() == 64 && h.bytes().all(|c| c.is_ascii_hexdigit()))
        .ok_or((seq, "the hash field must be the last field".to_string()))?;
    let mut body = line[..at].to_string();
    body.push('}');
    if sha256_hex(body.as_bytes()) != hash {
        return Err((
            seq,
            "the record was changed after it was written (its hash does not match)".into(),
        ));
    }
    let seq = seq.ok_or((None, "no seq".to_string()))?;
    let prev = v["prev"]
        .as_str()
        .ok_or((Some(seq), "no prev field".to_string()))?;
    Ok((seq, prev.to_string(), hash.to_string()))
}

/// Verifies a whole chain from a reader.
pub fn verify_reader(reader: impl Read) -> Result<Summary, ChainError> {
    verify_reader_with(reader, |_, _| {})
}

/// [`verify_reader`], calling `each(seq, hash)` for every record that verified.
pub fn verify_reader_with(
    reader: impl Read,
    mut each: impl FnMut(u64, &str),
) -> Result<Summary, ChainError> {
    let mut expected_seq = 0u64;
    let mut head = GENESIS.to_string();
    let mut lines = BufReader::new(reader);
    let mut buf = String::new();
    let mut line_no = 0usize;
    loop {
        buf.clear();
        let n = lines.read_line(&mut buf).map_err(|e| ChainError {
            line: line_no + 1,
            seq: None,
            reason: format!("unreadable: {e}"),
        })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let Some(line) = buf.strip_suffix('\n') else {
            return Err(ChainError {
                line: line_no,
                seq: None,
                reason: "the last line is incomplete (a torn write)".into(),
            });
        };
        let (seq, prev, hash) = check_line(line).map_err(|(seq, reason)| ChainError {
            line: line_no,
            seq,
            reason,
        })?;
        if seq != expected_seq {
            return Err(ChainError {
                line: line_no,
                seq: Some(seq),
                reason: if seq > expected_seq {
                    format!(
                        "seq {expected_seq} expected: record(s) {expected_seq}..{} are missing or moved",
                        seq - 1
                    )
                } else {
                    format!("seq {expected_seq} expected: records are out of order or repeated")
                },
            });
        }
        if prev != head {
            return Err(ChainError {
                line: line_no,
                seq: Some(seq),
                reason: "prev does not match the previous record's hash (a record before it was replaced)".into(),
            });
        }
        each(seq, &hash);
        head = hash;
        expected_seq += 1;
    }
    Ok(Summary {
        records: expected_seq,
        head,
    })
}

/// One signed head: a line of a heads file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHead {
    /// Records in the chain when signed.
    pub records: u64,
    /// The hash of record `records - 1` (the genesis value when empty).
    pub head: String,
    /// When (RFC 3339).
    pub at: String,
    /// The signing key's id ([`key_id`]).
    pub key: String,
    /// The Ed25519 signature of [`head_message`], base64.
    pub sig: String,
}

/// The bytes a head signature covers.
pub fn head_message(records: u64, head: &str, at: &str) -> Vec<u8> {
    format!("kars-audit-head-v1\n{records}\n{head}\n{at}\n").into_bytes()
}

/// A public key's id: the first 16 hex digits of SHA-256 of its 32 bytes.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: u64) -> String {
        let mut prev = GENESIS.to_string();
        let mut out = String::new();
        for i in 0..n {
            let mut m = Map::new();
            m.insert("i".into(), Value::from(i));
            let (line, hash) = seal(i, "2026-01-01T00:00:00Z", m, &prev);
            out.push_str(&line);
            prev = hash;
        }
        out
    }

    #[test]
    fn sealed_records_verify_and_every_kind_of_tampering_is_named() {
        let text = chain(3);
        let ok = verify_reader(text.as_bytes()).expect("verifies");
        assert_eq!(ok.records, 3);
        let edited = text.replacen("\"i\":1", "\"i\":7", 1);
        let e = verify_reader(edited.as_bytes()).expect_err("edited");
        assert_eq!((e.line, e.seq), (2, Some(1)));
        let lines: Vec<&str> = text.lines().collect();
        let dropped = format!("{}\n{}\n", lines[0], lines[2]);
        let e = verify_reader(dropped.as_bytes()).expect_err("deleted");
        assert!(e.reason.contains("missing"), "{e}");
        let torn = &text[..text.len() - 5];
        let e = verify_reader(torn.as_bytes()).expect_err("torn");
        assert!(e.reason.contains("torn"), "{e}");
    }
}
