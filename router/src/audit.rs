//! The audit log: append-only JSON lines, each record chained to the one before it, in the
//! format of [`kars_contract::chain`] (shared with the agent's sync log): an edited, deleted or
//! moved record is named by [`verify`]. Deleting records at the end leaves a valid shorter
//! chain: compare the head ([`Summary::head`]) with one kept elsewhere (`kars audit verify
//! --expect-head`), or sign heads ([`crate::audit_heads`]).
//!
//! Durability ([`Fsync`]): `Always` syncs the file after every record before the caller gets
//! its answer (a decision is never acknowledged without its record on disk); `Interval` syncs
//! every given duration from a background thread when records were written, so no request
//! waits for a flush (faster, can lose the last interval's records on power loss, never
//! reorders; a sync that fails makes the log refuse every further record, so egress fails
//! closed); `Never` leaves it to the kernel.
//!
//! Failures never leave a broken chain behind: a write that fails (a full disk) is cut back to
//! the last whole record before the error is returned, so a later record is never appended
//! after torn bytes; if even that fails the log refuses every further record until restart. A
//! torn tail (a crash mid-write: an incomplete last line, or a last line that does not verify)
//! is moved to `<log>.torn` and cut when the log is opened again, reported in the log's
//! `recovered` field; the chain continues from the last whole record. A break anywhere else is
//! not a crash and stops the router.
//!
//! Records are bounded: a string field longer than [`MAX_FIELD_BYTES`] is cut and ends with
//! the SHA-256 and length of the whole value, so an agent cannot grow the log by sending long
//! hosts or actions (see also [`Throttle`] for refusal floods).

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub use kars_contract::chain::{ChainError, GENESIS, Summary, verify_reader, verify_reader_with};

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
    type Err = crate::config::SettingError;
    fn from_str(s: &str) -> Result<Fsync, Self::Err> {
        match s {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            other => other
                .strip_suffix("ms")
                .and_then(|n| n.parse::<u64>().ok())
                .map(|ms| Fsync::Interval(Duration::from_millis(ms)))
                .ok_or_else(|| crate::config::SettingError::Fsync(other.to_string())),
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
    /// An earlier failed write could not be cut back; nothing more is appended until restart.
    #[error(
        "{path}: the log could not be repaired after a failed write ({reason}); restart the router"
    )]
    Unusable {
        /// The log file.
        path: String,
        /// The earlier failure.
        reason: String,
    },
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
    /// Length of the file up to the end of the last whole record.
    len: u64,
    next_seq: u64,
    head: String,
    /// Set when a failed write could not be cut back.
    unusable: Option<String>,
    /// Tests: the next write stops after this many bytes with ENOSPC.
    #[cfg(test)]
    fail_after: Option<usize>,
}

impl Inner {
    fn write_line(&mut self, line: &[u8], sync: bool) -> std::io::Result<()> {
        #[cfg(test)]
        if let Some(n) = self.fail_after.take() {
            self.file.write_all(&line[..n.min(line.len())])?;
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        self.file.write_all(line)?;
        if sync {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// Longest string field kept whole in a record; longer ones are cut to
/// [`KEPT_PREFIX_BYTES`] and end with `…[sha256:<hex> <n> bytes]`.
pub const MAX_FIELD_BYTES: usize = 256;
/// How much of a cut field is kept.
pub const KEPT_PREFIX_BYTES: usize = 96;

/// `value` with every string longer than [`MAX_FIELD_BYTES`] cut (at a character boundary)
/// and marked with the SHA-256 and length of the whole string.
pub fn bounded(value: Value) -> Value {
    match value {
        Value::String(s) if s.len() > MAX_FIELD_BYTES => {
            let mut cut = KEPT_PREFIX_BYTES;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            Value::String(format!(
                "{}…[sha256:{} {} bytes]",
                &s[..cut],
                sha256_hex(s.as_bytes()),
                s.len()
            ))
        }
        Value::Array(items) => Value::Array(items.into_iter().map(bounded).collect()),
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k, bounded(v))).collect())
        }
        other => other,
    }
}

/// Syncs an `Interval` log in the background: a second handle of the same file, so the sync
/// never holds the append lock.
struct Syncer {
    file: File,
    /// Records were written since the last sync.
    dirty: AtomicBool,
    /// Why the last sync failed (the log then refuses records).
    failed: Mutex<Option<String>>,
    /// Syncs done (tests).
    syncs: AtomicU64,
    /// Tests: the next sync fails with EIO.
    #[cfg(test)]
    fail_next: AtomicBool,
}

impl Syncer {
    fn sync_if_dirty(&self) {
        if !self.dirty.swap(false, Ordering::SeqCst) {
            return;
        }
        #[cfg(test)]
        let injected = self
            .fail_next
            .swap(false, Ordering::SeqCst)
            .then(|| std::io::Error::from_raw_os_error(5));
        #[cfg(not(test))]
        let injected: Option<std::io::Error> = None;
        match injected.map_or_else(|| self.file.sync_data(), Err) {
            Ok(()) => {
                self.syncs.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::error!(error = %e, "the audit log could not be synced to disk; refusing further records");
                *self
                    .failed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(e.to_string());
            }
        }
    }

    /// Starts the thread syncing every `every`; it ends when the log is dropped.
    fn start(file: File, every: Duration) -> std::io::Result<Arc<Syncer>> {
        let syncer = Arc::new(Syncer {
            file,
            dirty: AtomicBool::new(false),
            failed: Mutex::new(None),
            syncs: AtomicU64::new(0),
            #[cfg(test)]
            fail_next: AtomicBool::new(false),
        });
        let weak = Arc::downgrade(&syncer);
        std::thread::Builder::new()
            .name("audit-fsync".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every);
                    let Some(s) = weak.upgrade() else { return };
                    s.sync_if_dirty();
                }
            })?;
        Ok(syncer)
    }
}

/// An open audit log (safe to share between tasks).
pub struct AuditLog {
    path: PathBuf,
    fsync: Fsync,
    inner: Mutex<Inner>,
    syncer: Option<Arc<Syncer>>,
    /// Bytes cut from a torn last line when the log was opened (0 when none).
    pub recovered: u64,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`. An existing log must verify, except for a torn
    /// tail (an incomplete last line, or a last line that does not verify), which is moved to
    /// `<path>.torn` and cut.
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
        let mut complete = content
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        let summary = match verify_reader(&content[..complete]) {
            Ok(s) => s,
            Err(e) => {
                // Only the last line may be torn; a break before it is not a crash.
                let last_start = content[..complete.saturating_sub(1)]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                let lines = content[..complete].iter().filter(|&&b| b == b'\n').count();
                if e.line != lines {
                    return Err(AuditError::Broken(e));
                }
                complete = last_start;
                verify_reader(&content[..complete]).map_err(AuditError::Broken)?
            }
        };
        let recovered = (content.len() - complete) as u64;
        if recovered > 0 {
            let aside = path.with_extension("jsonl.torn");
            let saved = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&aside)
                .and_then(|mut f| f.write_all(&content[complete..]));
            file.set_len(complete as u64).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
            tracing::warn!(path = %path.display(), bytes = recovered, saved_to = %aside.display(), saved = saved.is_ok(), "cut a torn audit tail");
        }
        let syncer = match fsync {
            Fsync::Interval(every) => {
                Some(Syncer::start(file.try_clone().map_err(io)?, every).map_err(io)?)
            }
            _ => None,
        };
        Ok(AuditLog {
            path: path.to_path_buf(),
            fsync,
            syncer,
            inner: Mutex::new(Inner {
                file,
                len: complete as u64,
                next_seq: summary.records,
                head: summary.head,
                unusable: None,
                #[cfg(test)]
                fail_after: None,
            }),
            recovered,
        })
    }

    /// Appends `fields` (a JSON object; `seq`, `prev` and `hash` are set here; long strings
    /// are [`bounded`]) with the time `ts`. Returns the record's hash. On error nothing of the
    /// record stays in the file.
    pub fn append(&self, ts: &str, fields: Map<String, Value>) -> Result<String, AuditError> {
        for reserved in kars_contract::chain::RESERVED_FIELDS {
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
        if let Some(reason) = &inner.unusable {
            return Err(AuditError::Unusable {
                path: self.path.display().to_string(),
                reason: reason.clone(),
            });
        }
        if let Some(reason) = self.sync_failure() {
            return Err(AuditError::Unusable {
                path: self.path.display().to_string(),
                reason: format!("syncing to disk failed: {reason}"),
            });
        }
        let bounded_fields = fields.into_iter().map(|(k, v)| (k, bounded(v))).collect();
        let (line, hash) =
            kars_contract::chain::seal(inner.next_seq, ts, bounded_fields, &inner.head);
        let sync = self.fsync == Fsync::Always;
        let written = inner.write_line(line.as_bytes(), sync);
        if let Err(source) = written {
            // Cut back to the last whole record: a later record must never follow torn bytes.
            let len = inner.len;
            if let Err(cut) = inner
                .file
                .set_len(len)
                .and_then(|()| inner.file.sync_data())
            {
                inner.unusable = Some(format!("{source}; cutting back failed: {cut}"));
            }
            return Err(AuditError::Io {
                path: self.path.display().to_string(),
                source,
            });
        }
        if let Some(s) = &self.syncer {
            s.dirty.store(true, Ordering::SeqCst);
        }
        inner.len += line.len() as u64;
        inner.next_seq += 1;
        inner.head = hash.clone();
        Ok(hash)
    }

    /// Tests: the next write stops after `bytes` bytes with ENOSPC (a full volume).
    #[cfg(test)]
    pub(crate) fn fail_next_write_after(&self, bytes: usize) {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .fail_after = Some(bytes);
    }

    fn sync_failure(&self) -> Option<String> {
        self.syncer.as_ref().and_then(|s| {
            s.failed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
    }

    /// Syncs what an `Interval` log wrote since its last sync now (the router calls it when
    /// stopping); `Always` and `Never` logs have nothing to do.
    pub fn flush(&self) {
        if let Some(s) = &self.syncer {
            s.sync_if_dirty();
        }
    }

    /// Background syncs done so far (an `Interval` log; 0 otherwise).
    pub fn background_syncs(&self) -> u64 {
        self.syncer
            .as_ref()
            .map_or(0, |s| s.syncs.load(Ordering::Relaxed))
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

/// A per-key rate limit for records that only say "refused again" (an agent hammering a
/// blocked host must not be able to fill the audit volume): each key may write `burst`
/// records at once and `per_second` after that; what is held back is counted and reported
/// in the next record of that key (`suppressed_before`), and in metrics.
#[derive(Debug)]
pub struct Throttle {
    per_second: f64,
    burst: f64,
    keys: Mutex<std::collections::HashMap<String, ThrottleKey>>,
}

#[derive(Debug)]
struct ThrottleKey {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// Most keys a [`Throttle`] tracks (keys are reason words: a handful).
const THROTTLE_KEYS: usize = 64;

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(20.0, 100.0)
    }
}

impl Throttle {
    /// `burst` records at once, `per_second` sustained, per key.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Throttle {
            per_second,
            burst,
            keys: Mutex::default(),
        }
    }

    /// `Some(n)` when a record for `key` may be written now (`n` were held back since the
    /// last one), `None` when it is held back.
    pub fn admit(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self
            .keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !keys.contains_key(key) && keys.len() >= THROTTLE_KEYS {
            return None;
        }
        let k = keys.entry(key.to_string()).or_insert(ThrottleKey {
            tokens: self.burst,
            last: now,
            suppressed: 0,
        });
        let elapsed = now.saturating_duration_since(k.last).as_secs_f64();
        k.tokens = (k.tokens + elapsed * self.per_second).min(self.burst);
        k.last = now;
        if k.tokens >= 1.0 {
            k.tokens -= 1.0;
            Some(std::mem::take(&mut k.suppressed))
        } else {
            k.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HASH_MARK: &str = ",\"hash\":\"";

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
    fn an_interval_log_syncs_in_the_background_and_refuses_records_after_a_failed_sync() {
        let d = tempfile::tempdir().expect("dir");
        let path = d.path().join("audit.jsonl");
        let log = AuditLog::open(&path, Fsync::Interval(Duration::from_millis(20))).expect("open");
        assert_eq!(log.background_syncs(), 0);
        log.append("2026-01-01T00:00:00Z", Map::new())
            .expect("append");
        let t0 = Instant::now();
        while log.background_syncs() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(5), "never synced");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Nothing written since: no further sync.
        let n = log.background_syncs();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(log.background_syncs(), n, "synced with nothing to sync");
        // A failed sync: every later record is refused (egress fails closed), nothing torn.
        if let Some(s) = &log.syncer {
            s.fail_next.store(true, Ordering::SeqCst);
        }
        log.append("2026-01-01T00:00:01Z", Map::new())
            .expect("append before the sync");
        let t0 = Instant::now();
        loop {
            match log.append("2026-01-01T00:00:02Z", Map::new()) {
                Err(AuditError::Unusable { reason, .. }) => {
                    assert!(reason.contains("syncing to disk failed"), "{reason}");
                    break;
                }
                Ok(_) => assert!(t0.elapsed() < Duration::from_secs(5), "never refused"),
                Err(e) => panic!("{e}"),
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(log);
        assert!(verify(&path).is_ok(), "the chain stays whole");
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

    /// Regression: a refused CONNECT with a 16,300-byte host wrote a 32,924-byte record.
    #[test]
    fn long_fields_are_cut_and_hashed() {
        let (_d, path, _) = log_with(0);
        let log = AuditLog::open(&path, Fsync::Never).expect("open");
        let host = "a".repeat(16_300);
        let Value::Object(f) = json!({"event": "egress.decision", "host": host, "refusal": {"reason": "InvalidHost", "detail": format!("{host:?}: not valid")}})
        else {
            unreachable!()
        };
        log.append("t", f).expect("append");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.len() < 1_000, "a {} byte record", text.len());
        let whole = format!("sha256:{}", sha256_hex(host.as_bytes()));
        assert!(
            text.contains(&whole),
            "the cut field names the whole value's hash"
        );
        assert!(text.contains("16300 bytes"));
        assert_eq!(verify(&path).expect("verifies").records, 1);
    }

    /// Regression: with the audit volume full, a failed write left a torn record, later records
    /// were appended after the torn bytes, and the router then refused to start.
    #[test]
    fn a_failed_write_leaves_no_torn_bytes_and_the_chain_continues() {
        let (_d, path, _) = log_with(2);
        let log = AuditLog::open(&path, Fsync::Always).expect("open");
        let before = std::fs::read(&path).expect("read");
        log.fail_next_write_after(17);
        assert!(matches!(
            log.append("t", fields(2)),
            Err(AuditError::Io { .. })
        ));
        assert_eq!(
            std::fs::read(&path).expect("read"),
            before,
            "cut back to the last record"
        );
        log.append("t", fields(2)).expect("the next write works");
        assert_eq!(verify(&path).expect("verifies").records, 3);
        drop(log);
        assert_eq!(
            AuditLog::open(&path, Fsync::Always)
                .expect("restarts")
                .recovered,
            0
        );
    }

    #[test]
    fn a_torn_last_line_is_moved_aside_but_a_break_before_it_stops() {
        let (_d, path, lines) = log_with(3);
        // A complete but damaged last line (a crash inside the write) is a torn tail.
        let mut damaged = lines.clone();
        damaged[2] = damaged[2][..damaged[2].len() / 2].to_string();
        std::fs::write(&path, damaged.join("\n") + "\n").expect("write");
        let log = AuditLog::open(&path, Fsync::Always).expect("recovers");
        assert!(log.recovered > 0);
        assert_eq!(log.summary().records, 2);
        let aside = std::fs::read_to_string(path.with_extension("jsonl.torn")).expect("aside");
        assert_eq!(aside, format!("{}\n", damaged[2]), "nothing is lost");
        log.append("t", fields(2)).expect("append");
        assert_eq!(verify(&path).expect("verifies").records, 3);
        drop(log);
        // Damage before the last line is not a crash.
        let (_d2, path2, mut lines2) = log_with(3);
        lines2[1] = lines2[1].replace("tool:x:1", "tool:y:1");
        std::fs::write(&path2, lines2.join("\n") + "\n").expect("write");
        assert!(matches!(
            AuditLog::open(&path2, Fsync::Always),
            Err(AuditError::Broken(_))
        ));
    }

    #[test]
    fn refusal_floods_are_throttled_per_reason_and_counted() {
        let t = Throttle::new(10.0, 3.0);
        let t0 = Instant::now();
        let admitted: Vec<Option<u64>> = (0..5).map(|_| t.admit("NotAllowed", t0)).collect();
        assert_eq!(admitted, vec![Some(0), Some(0), Some(0), None, None]);
        assert_eq!(t.admit("InvalidHost", t0), Some(0), "keys are separate");
        assert_eq!(
            t.admit("NotAllowed", t0 + Duration::from_millis(100)),
            Some(2),
            "the next record says how many were held back"
        );
    }
}
