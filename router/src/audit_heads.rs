//! Signed heads of the audit chain: proof, later, of what the log held at a time.
//!
//! The hash chain ([`crate::audit`]) shows an edited, deleted or moved record, but not a log
//! whose tail was cut, nor one rewritten from some record on with fresh hashes. So the router,
//! given an Ed25519 key (`--audit-signing-key`, PKCS#8 PEM as `openssl genpkey -algorithm
//! ed25519` writes it), signs the chain's head at an interval and when it stops, and appends the
//! signed head to `<log>.heads` (one JSON line each, synced):
//!
//! `{"records":N,"head":"<hash of record N-1>","at":"<RFC 3339>","key":"<key id>","sig":"<base64>"}`
//!
//! The signature covers `kars-audit-head-v1\n<records>\n<head>\n<at>\n`. [`verify_heads`]
//! (`kars audit verify LOG --key PUB`) checks every signed head against the chain: a signature
//! that does not verify with the given public key (another key, an edited line), a log shorter
//! than a signed head (records cut after it was signed), or a record that is not the one signed
//! (the chain rewritten) are each named. What is appended after the last signed head is as
//! provable as the chain alone: the interval bounds it. Keep a copy of the heads elsewhere to
//! prove the heads file itself was not cut.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::audit::{ChainError, Summary, verify_reader_with};

/// The suffix of the signed-heads file next to the log.
pub const HEADS_SUFFIX: &str = ".heads";

/// The heads file of the log at `log`.
pub fn heads_path(log: &Path) -> PathBuf {
    let mut p = log.as_os_str().to_owned();
    p.push(HEADS_SUFFIX);
    PathBuf::from(p)
}

/// Why heads cannot be signed or checked.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    /// A key file could not be read or parsed.
    #[error("{path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The heads file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What a check of the chain with its signed heads found wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadsFailure {
    /// The chain itself is broken.
    #[error("{0}")]
    Chain(ChainError),
    /// The log could not be read.
    #[error("{0}")]
    Unreadable(String),
    /// No signed head to check.
    #[error("{path} holds no signed head")]
    NoHeads {
        /// The heads file.
        path: String,
    },
    /// A line of the heads file is not a signed head.
    #[error("{path} line {line}: not a signed head: {reason}")]
    Malformed {
        /// The heads file.
        path: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// Signed by another key.
    #[error("{path} line {line}: signed by key {found}, not by the given key {expected}")]
    OtherKey {
        /// The heads file.
        path: String,
        /// 1-based line.
        line: usize,
        /// The key id the line names.
        found: String,
        /// The given key's id.
        expected: String,
    },
    /// The signature does not verify.
    #[error(
        "{path} line {line}: the signature does not verify with the given key (the line was edited)"
    )]
    BadSignature {
        /// The heads file.
        path: String,
        /// 1-based line.
        line: usize,
    },
    /// The log ends before a signed head.
    #[error(
        "the log ends after {records} record(s), but {path} line {line} signed {signed} record(s) at {at}: records were cut after that head was signed"
    )]
    Truncated {
        /// The heads file.
        path: String,
        /// 1-based line.
        line: usize,
        /// Records in the log.
        records: u64,
        /// Records signed.
        signed: u64,
        /// When.
        at: String,
    },
    /// The record at a signed head is not the one signed.
    #[error(
        "record seq {seq} is not the one signed at {at} ({path} line {line}): the chain was rewritten after that head was signed"
    )]
    Rewritten {
        /// The heads file.
        path: String,
        /// 1-based line.
        line: usize,
        /// The record's seq.
        seq: u64,
        /// When it was signed.
        at: String,
    },
}

pub use kars_contract::chain::SignedHead;

/// The bytes a head signature covers.
pub use kars_contract::chain::head_message as message;

/// A public key's id: the first 16 hex digits of SHA-256 of its 32 bytes.
pub fn key_id(key: &VerifyingKey) -> String {
    kars_contract::chain::key_id(key.as_bytes())
}

/// Reads an Ed25519 private key: PKCS#8 PEM (`openssl genpkey -algorithm ed25519`), or a
/// 32-byte seed as 64 hex digits (what the generated `router-audit-key` Secret holds).
pub fn read_signing_key(path: &Path) -> Result<SigningKey, HeadError> {
    match try_read_signing_key(path)? {
        Some(key) => Ok(key),
        None => Err(HeadError::Key {
            path: path.display().to_string(),
            message: "no such file".into(),
        }),
    }
}

/// [`read_signing_key`], or `None` when the file does not exist (yet: a Secret volume the
/// kubelet has not written).
pub fn try_read_signing_key(path: &Path) -> Result<Option<SigningKey>, HeadError> {
    let err = |message: String| HeadError::Key {
        path: path.display().to_string(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    signing_key_from_text(&text).map(Some).map_err(err)
}

/// An Ed25519 private key from the text of a key file (PKCS#8 PEM or a hex seed).
pub fn signing_key_from_text(text: &str) -> Result<SigningKey, String> {
    let trimmed = text.trim();
    if !trimmed.starts_with("-----") {
        let mut seed = [0u8; 32];
        return match hex::decode_to_slice(trimmed, &mut seed) {
            Ok(()) => Ok(SigningKey::from_bytes(&seed)),
            Err(_) => Err(format!(
                "neither a PKCS#8 PEM Ed25519 private key nor a 32-byte seed in hex ({} characters); create one with: openssl genpkey -algorithm ed25519 -out audit.key",
                trimmed.len()
            )),
        };
    }
    SigningKey::from_pkcs8_pem(trimmed).map_err(|e| {
        format!(
            "not a PKCS#8 PEM Ed25519 private key ({e}); create one with: openssl genpkey -algorithm ed25519 -out audit.key"
        )
    })
}

/// The PEM (SubjectPublicKeyInfo) text of a public key, as `openssl pkey -pubout` writes it and
/// `kars audit verify --key` reads it.
pub fn public_key_pem(key: &VerifyingKey) -> String {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    key.to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap_or_default()
}

/// Reads a PEM (SubjectPublicKeyInfo) Ed25519 public key.
pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, HeadError> {
    let err = |message: String| HeadError::Key {
        path: path.display().to_string(),
        message,
    };
    let pem = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
        err(format!(
            "not a PEM Ed25519 public key ({e}); derive it with: openssl pkey -in audit.key -pubout -out audit.pub"
        ))
    })
}

/// Signs heads of one log into its heads file.
pub struct HeadSigner {
    key: SigningKey,
    id: String,
    path: PathBuf,
    last: Mutex<Option<(u64, String)>>,
}

impl HeadSigner {
    /// A signer appending to `heads` with `key`.
    pub fn new(key: SigningKey, heads: PathBuf) -> HeadSigner {
        let id = key_id(&key.verifying_key());
        HeadSigner {
            key,
            id,
            path: heads,
            last: Mutex::new(None),
        }
    }

    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// The public key, PEM.
    pub fn public_key_pem(&self) -> String {
        public_key_pem(&self.key.verifying_key())
    }

    /// The heads file.
    pub fn heads_path(&self) -> &Path {
        &self.path
    }

    /// The last head this signer wrote (records, head).
    pub fn last_signed(&self) -> Option<(u64, String)> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Signs `summary` at `at` unless it was the last head signed; returns whether it wrote.
    pub fn sign_if_moved(&self, summary: &Summary, at: &str) -> Result<bool, HeadError> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = (summary.records, summary.head.clone());
        if last.as_ref() == Some(&now) {
            return Ok(false);
        }
        let sig = self.key.sign(&message(summary.records, &summary.head, at));
        let line = SignedHead {
            records: summary.records,
            head: summary.head.clone(),
            at: at.to_string(),
            key: self.id.clone(),
            sig: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        };
        let io = |source| HeadError::Io {
            path: self.path.display().to_string(),
            source,
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_data().map_err(io)?;
        *last = Some(now);
        Ok(true)
    }
}

/// What a check with signed heads proved.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HeadsSummary {
    /// The chain.
    pub chain: Summary,
    /// Signed heads checked.
    pub signed_heads: usize,
    /// The last signed head.
    pub last: SignedHead,
    /// Records appended after the last signed head (proven by the chain only).
    pub unsigned_tail: u64,
}

/// Checks the log at `log` and every head in `heads` signed by `key`.
pub fn verify_heads(
    log: &Path,
    heads: &Path,
    key: &VerifyingKey,
) -> Result<HeadsSummary, HeadsFailure> {
    let hp = heads.display().to_string();
    let text = std::fs::read_to_string(heads)
        .map_err(|e| HeadsFailure::Unreadable(format!("{hp}: {e}")))?;
    let f =
        File::open(log).map_err(|e| HeadsFailure::Unreadable(format!("{}: {e}", log.display())))?;
    verify_heads_in(BufReader::new(f), &text, &hp, key)
}

/// [`verify_heads`] of a chain read from `log` and heads given as text (`heads_name` names
/// them in errors): the agent's sync log, read from the cluster.
pub fn verify_heads_in(
    log: impl std::io::Read,
    heads_text: &str,
    heads_name: &str,
    key: &VerifyingKey,
) -> Result<HeadsSummary, HeadsFailure> {
    let hp = heads_name.to_string();
    let want_id = key_id(key);
    let mut signed: Vec<(usize, SignedHead)> = Vec::new();
    for (i, raw) in heads_text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let h: SignedHead = serde_json::from_str(raw).map_err(|e| HeadsFailure::Malformed {
            path: hp.clone(),
            line,
            reason: e.to_string(),
        })?;
        if h.key != want_id {
            return Err(HeadsFailure::OtherKey {
                path: hp.clone(),
                line,
                found: h.key,
                expected: want_id,
            });
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&h.sig)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok())
            .ok_or_else(|| HeadsFailure::Malformed {
                path: hp.clone(),
                line,
                reason: "sig is not a base64 Ed25519 signature".into(),
            })?;
        key.verify(&message(h.records, &h.head, &h.at), &sig)
            .map_err(|_| HeadsFailure::BadSignature {
                path: hp.clone(),
                line,
            })?;
        signed.push((line, h));
    }
    let Some((_, last)) = signed.last().cloned() else {
        return Err(HeadsFailure::NoHeads { path: hp });
    };
    // The hash of every record a head names.
    let wanted: std::collections::BTreeSet<u64> = signed
        .iter()
        .filter(|(_, h)| h.records > 0)
        .map(|(_, h)| h.records - 1)
        .collect();
    let mut at_seq: std::collections::BTreeMap<u64, String> = std::collections::BTreeMap::new();
    let chain = verify_reader_with(log, |seq, hash| {
        if wanted.contains(&seq) {
            at_seq.insert(seq, hash.to_string());
        }
    })
    .map_err(HeadsFailure::Chain)?;
    for (line, h) in &signed {
        if h.records > chain.records {
            return Err(HeadsFailure::Truncated {
                path: hp.clone(),
                line: *line,
                records: chain.records,
                signed: h.records,
                at: h.at.clone(),
            });
        }
        let actual = if h.records == 0 {
            crate::audit::GENESIS.to_string()
        } else {
            at_seq.get(&(h.records - 1)).cloned().unwrap_or_default()
        };
        if actual != h.head {
            return Err(HeadsFailure::Rewritten {
                path: hp.clone(),
                line: *line,
                seq: h.records.saturating_sub(1),
                at: h.at.clone(),
            });
        }
    }
    Ok(HeadsSummary {
        unsigned_tail: chain.records - last.records,
        chain,
        signed_heads: signed.len(),
        last,
    })
}

/// Reads the last signed head of a heads file, if any (for a restarted router to continue).
pub fn last_head(heads: &Path) -> Option<SignedHead> {
    let f = File::open(heads).ok()?;
    BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<SignedHead>(&l).ok())
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditLog, Fsync};

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn log_with(dir: &Path, n: usize) -> (PathBuf, AuditLog) {
        let path = dir.join("audit.jsonl");
        let log = AuditLog::open(&path, Fsync::Never).expect("open");
        for i in 0..n {
            let mut m = serde_json::Map::new();
            m.insert("i".into(), serde_json::json!(i));
            log.append("2026-01-01T00:00:00Z", m).expect("append");
        }
        (path, log)
    }

    #[test]
    fn keys_are_read_from_a_hex_seed_or_pkcs8_and_a_missing_file_is_not_an_error() {
        let d = tempfile::tempdir().expect("dir");
        let seed = d.path().join("seed");
        assert!(
            try_read_signing_key(&seed)
                .expect("missing is fine")
                .is_none(),
            "a Secret volume not written yet"
        );
        std::fs::write(&seed, format!("{}\n", "01".repeat(32))).expect("w");
        let k = read_signing_key(&seed).expect("hex seed");
        assert_eq!(k.to_bytes(), [1u8; 32]);
        for bad in [
            "01".repeat(31),
            "zz".repeat(32),
            String::new(),
            "-----BEGIN nonsense".into(),
        ] {
            std::fs::write(&seed, &bad).expect("w");
            let e = read_signing_key(&seed).expect_err(&bad).to_string();
            assert!(e.contains("seed") || e.contains("PKCS#8"), "{bad}: {e}");
        }
        // The PEM public key round-trips through what `kars audit verify --key` reads.
        let pem = d.path().join("pub");
        std::fs::write(&pem, public_key_pem(&k.verifying_key())).expect("w");
        assert_eq!(read_verifying_key(&pem).expect("pem"), k.verifying_key());
    }

    #[test]
    fn signed_heads_prove_the_chain_and_catch_cuts_rewrites_and_other_keys() {
        let d = tempfile::tempdir().expect("dir");
        let (path, log) = log_with(d.path(), 3);
        let heads = heads_path(&path);
        let signer = HeadSigner::new(key(1), heads.clone());
        assert!(
            signer
                .sign_if_moved(&log.summary(), "2026-01-01T00:00:01Z")
                .expect("sign")
        );
        assert!(
            !signer
                .sign_if_moved(&log.summary(), "2026-01-01T00:00:02Z")
                .expect("again")
        );
        let mut m = serde_json::Map::new();
        m.insert("i".into(), serde_json::json!(3));
        log.append("2026-01-01T00:00:03Z", m).expect("append");
        assert!(
            signer
                .sign_if_moved(&log.summary(), "2026-01-01T00:00:04Z")
                .expect("sign")
        );
        let mut m = serde_json::Map::new();
        m.insert("i".into(), serde_json::json!(4));
        log.append("2026-01-01T00:00:05Z", m).expect("append");
        drop(log);
        let vk = key(1).verifying_key();
        let ok = verify_heads(&path, &heads, &vk).expect("verifies");
        assert_eq!(
            (ok.signed_heads, ok.last.records, ok.unsigned_tail),
            (2, 4, 1)
        );

        // Another key: refused, named.
        let other = key(2).verifying_key();
        assert!(matches!(
            verify_heads(&path, &heads, &other),
            Err(HeadsFailure::OtherKey { line: 1, .. })
        ));
        // An edited head line: the signature fails.
        let text = std::fs::read_to_string(&heads).expect("heads");
        std::fs::write(&heads, text.replacen("\"records\":3", "\"records\":2", 1)).expect("w");
        assert!(matches!(
            verify_heads(&path, &heads, &vk),
            Err(HeadsFailure::BadSignature { line: 1, .. })
        ));
        std::fs::write(&heads, &text).expect("w");
        // Cut after a signed head: the chain alone still verifies, the heads do not.
        let log_text = std::fs::read_to_string(&path).expect("log");
        let first3: String = log_text.lines().take(3).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, &first3).expect("w");
        assert!(crate::audit::verify(&path).is_ok());
        assert!(matches!(
            verify_heads(&path, &heads, &vk),
            Err(HeadsFailure::Truncated {
                line: 2,
                records: 3,
                signed: 4,
                ..
            })
        ));
        // Rewritten from record 1 on with fresh, consistent hashes: only the heads catch it.
        let d2 = tempfile::tempdir().expect("dir");
        let (path2, log2) = log_with(d2.path(), 1);
        for i in 0..3 {
            let mut m = serde_json::Map::new();
            m.insert("forged".into(), serde_json::json!(i));
            log2.append("2026-01-01T00:00:00Z", m).expect("append");
        }
        drop(log2);
        std::fs::copy(&path2, &path).expect("copy");
        assert!(
            crate::audit::verify(&path).is_ok(),
            "a consistent forged chain"
        );
        assert!(matches!(
            verify_heads(&path, &heads, &vk),
            Err(HeadsFailure::Rewritten { seq: 2, .. })
        ));
        // No heads at all.
        std::fs::write(&heads, "").expect("w");
        assert!(matches!(
            verify_heads(&path, &heads, &vk),
            Err(HeadsFailure::NoHeads { .. })
        ));
    }
}
