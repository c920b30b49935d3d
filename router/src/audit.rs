//! The audit log: append-only JSON lines, each record chained to the one before it.
//!
//! A record is one JSON object on one line. Its last two fields are always
//! `"prev":"<hex>"` — the `hash` of the record before it (64 zeros for the first record) — and
//! `"hash":"<hex>"` — SHA-256 of the line's bytes up to (not including) `,"hash":`, followed by
//! `}`. `seq` counts from 0 without gaps. So an edited record no longer matches its own hash, a
//! record rewritten with a fresh hash no longer matches the next record's `prev`, and a deleted
//! or moved record breaks `seq` and `prev`; [`verify`] names the first record that fails.
//! Deleting records at the end leaves a valid shorter chain: compare the head
//! ([`Summary::head`]) with one kept elsewhere (`kars audit verify --expect-head`).
//!
//! Durability ([`Fsync`]): `Always` syncs the file after every record before the caller gets
//! its answer (a decision is never acknowledged without its record on disk); `Interval` syncs at
//! most every given duration (faster, can lose the last records on power loss, never reorders);
//! `Never` leaves it to the kernel. A torn last line (a crash mid-write) is cut off when the log
//! is opened again and reported in the log's `recovered` field; the chain continues from the
//! last complete record.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// When the log file is synced to disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    /// After every record, before `append` returns.
    Always,
    /// At most once per interval (on the append that crosses it).
    Interval(Duration),
    /// Never explicitly.
    Never,
}

impl std::str::FromStr for Fsync {
    type Err = String;
    fn from_str(s: &str) -> Result<Fsync, String> {
        match s {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            other => other
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|ms| Fsync::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| {
                    format!("{other:?}: expected always, never, or an interval like 100ms")
                }),
        }
    }
}

/// Why the audit log could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The log file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The existing log does not verify; appending would hide the break.
    #[error("{0}")]
    Broken(ChainError),
    /// The record is not a JSON object, or uses a reserved field.
    #[error("invalid record: {0}")]
    InvalidRecord(String),
}

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

const HASH_MARK: &str = ",\"hash\":\"";

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

/// Verifies a whole log from a reader.
pub fn verify_reader(reader: impl Read) -> Result<Summary, ChainError> {
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
        head = hash;
        expected_seq += 1;
    }
    Ok(Summary {
        records: expected_seq,
        head,
    })
}

/// Verifies the log file at `path`.
pub fn verify(path: &Path) -> Result<Summary, AuditError> {
    let f = File::open(path).map_err(|source| AuditError::Io {
        path: path.display().to_string(),
        source,
    })?;
    verify_reader(f).map_err(AuditError::Broken)
}

struct Inner {
    file: File,
    next_seq: u64,
    head: String,
    last_sync: Instant,
}

/// An open audit log (safe to share between tasks).
pub struct AuditLog {
    path: PathBuf,
    fsync: Fsync,
    inner: Mutex<Inner>,
    /// Bytes cut from a torn last line when the log was opened (0 when none).
    pub recovered: u64,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`. An existing log must verify, except for a torn
    /// last line, which is cut off.
    pub fn open(path: &Path, fsync: Fsync) -> Result<AuditLog, AuditError> {
        let io = |source| AuditError::Io {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        let mut content = Vec::new();
        file.read_to_end(&mut content).map_err(io)?;
        let complete = content
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let recovered = (content.len() - complete) as u64;
        if recovered > 0 {
            file.set_len(complete as u64).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
            tracing::warn!(path = %path.display(), bytes = recovered, "cut a torn last audit record");
        }
        let summary = verify_reader(&content[..complete]).map_err(AuditError::Broken)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            fsync,
            inner: Mutex::new(Inner {
                file,
                next_seq: summary.records,
                head: summary.head,
                last_sync: Instant::now(),
            }),
            recovered,
        })
    }

    /// Appends `fields` (a JSON object; `seq`, `prev` and `hash` are set here) with the time
    /// `ts`. Returns the record's hash.
    pub fn append(&self, ts: &str, fields: Map<String, Value>) -> Result<String, AuditError> {
        for reserved in ["seq", "ts", "prev", "hash"] {
            if fields.contains_key(reserved) {
                return Err(AuditError::InvalidRecord(format!(
                    "{reserved} is set by the log"
                )));
            }
        }
        let mut inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut record = Map::new();
        record.insert("seq".into(), Value::from(inner.next_seq));
        record.insert("ts".into(), Value::from(ts));
        record.extend(fields);
        record.insert("prev".into(), Value::from(inner.head.clone()));
        let body = serde_json::to_string(&Value::Object(record))
            .map_err(|e| AuditError::InvalidRecord(e.to_string()))?;
        let hash = sha256_hex(body.as_bytes());
        let mut line = body;
        line.pop(); // the closing brace
        line.push_str(HASH_MARK);
        line.push_str(&hash);
        line.push_str("\"}\n");
        let io = |source| AuditError::Io {
            path: self.path.display().to_string(),
            source,
        };
        inner.file.write_all(line.as_bytes()).map_err(io)?;
        let sync = match self.fsync {
            Fsync::Always => true,
            Fsync::Interval(d) => inner.last_sync.elapsed() >= d,
            Fsync::Never => false,
        };
        if sync {
            inner.file.sync_data().map_err(io)?;
            inner.last_sync = Instant::now();
        }
        inner.next_seq += 1;
        inner.head = hash.clone();
        Ok(hash)
    }

    /// Number of records and the head hash.
    pub fn summary(&self) -> Summary {
        let inner = self
            .inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Summary {
            records: inner.next_seq,
            head: inner.head.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(i: u64) -> Map<String, Value> {
        let Value::Object(m) = json!({"event": "governance.decision", "action": format!("tool:x:{i}"), "allowed": i.is_multiple_of(2)})
        else {
            unreachable!()
        };
        m
    }

    fn log_with(n: u64) -> (tempfile::TempDir, PathBuf, Vec<String>) {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Fsync::Always).expect("open");
        for i in 0..n {
            log.append("2026-11-24T00:00:00Z", fields(i))
                .expect("append");
        }
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .map(str::to_string)
            .collect();
        (dir, path, lines)
    }

    fn verify_lines(lines: &[String]) -> Result<Summary, ChainError> {
        let mut text = lines.join("\n");
        if !lines.is_empty() {
            text.push('\n');
        }
        verify_reader(text.as_bytes())
    }

    #[test]
    fn a_written_log_verifies_and_reopens_where_it_stopped() {
        let (_d, path, lines) = log_with(5);
        let s = verify(&path).expect("verifies");
        assert_eq!(s.records, 5);
        let log = AuditLog::open(&path, Fsync::Never).expect("reopen");
        assert_eq!(log.summary(), s);
        log.append("2026-11-24T00:00:01Z", fields(5))
            .expect("append");
        assert_eq!(verify(&path).expect("verifies").records, 6);
        assert!(lines[0].contains(&format!("\"prev\":\"{GENESIS}\"")));
    }

    #[test]
    fn an_edit_names_the_edited_record() {
        let (_d, _p, mut lines) = log_with(5);
        lines[2] = lines[2].replace("\"allowed\":true", "\"allowed\":false");
        let e = verify_lines(&lines).expect_err("edited");
        assert_eq!((e.line, e.seq), (3, Some(2)), "{e}");
        assert!(e.reason.contains("changed"), "{e}");
    }

    #[test]
    fn a_rehashed_edit_is_caught_by_the_next_record() {
        let (_d, _p, mut lines) = log_with(5);
        let edited = lines[2].replace("\"allowed\":true", "\"allowed\":false");
        let at = edited.rfind(HASH_MARK).expect("hash");
        let body = format!("{}}}", &edited[..at]);
        lines[2] = format!(
            "{}{HASH_MARK}{}\"}}",
            &edited[..at],
            sha256_hex(body.as_bytes())
        );
        let e = verify_lines(&lines).expect_err("rehashed");
        assert_eq!((e.line, e.seq), (4, Some(3)), "{e}");
    }

    #[test]
    fn deletion_and_reordering_are_caught() {
        let (_d, _p, lines) = log_with(5);
        let mut deleted = lines.clone();
        deleted.remove(1);
        let e = verify_lines(&deleted).expect_err("deleted");
        assert_eq!((e.line, e.seq), (2, Some(2)), "{e}");
        assert!(e.reason.contains("missing"), "{e}");
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        let e = verify_lines(&swapped).expect_err("swapped");
        assert_eq!(e.line, 2, "{e}");
        let mut first_gone = lines.clone();
        first_gone.remove(0);
        assert_eq!(verify_lines(&first_gone).expect_err("first").line, 1);
        // Truncating the tail leaves a valid, shorter chain whose head differs.
        let full = verify_lines(&lines).expect("full");
        let short = verify_lines(&lines[..3]).expect("prefix");
        assert_ne!(full.head, short.head);
    }

    #[test]
    fn a_torn_last_line_is_cut_on_open_and_the_chain_continues() {
        let (_d, path, _) = log_with(3);
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"{\"seq\":3,\"ts\":\"x\",\"ev").expect("torn");
        drop(f);
        assert!(verify(&path).is_err(), "a torn line does not verify");
        let log = AuditLog::open(&path, Fsync::Always).expect("recovers");
        assert!(log.recovered > 0);
        log.append("t", fields(3)).expect("append");
        assert_eq!(verify(&path).expect("verifies").records, 4);
    }

    #[test]
    fn a_broken_log_is_not_appended_to_and_reserved_fields_are_refused() {
        let (_d, path, mut lines) = log_with(3);
        lines[1] = lines[1].replace("tool:x:1", "tool:y:1");
        std::fs::write(&path, lines.join("\n") + "\n").expect("write");
        assert!(matches!(
            AuditLog::open(&path, Fsync::Always),
            Err(AuditError::Broken(_))
        ));
        let dir = tempfile::tempdir().expect("tmp");
        let log = AuditLog::open(&dir.path().join("a.jsonl"), Fsync::Never).expect("open");
        let mut f = fields(0);
        f.insert("prev".into(), Value::from("x"));
        assert!(matches!(
            log.append("t", f),
            Err(AuditError::InvalidRecord(_))
        ));
    }

    #[test]
    fn fsync_policy_parses() {
        assert_eq!("always".parse::<Fsync>(), Ok(Fsync::Always));
        assert_eq!(
            "250ms".parse::<Fsync>(),
            Ok(Fsync::Interval(Duration::from_millis(250)))
        );
        assert!("sometimes".parse::<Fsync>().is_err());
    }
}
