//! Loading the mounted policy files and computing the digest the agent compares with the one it
//! rendered: `sha256( Σ u64be(len(name)) ‖ name ‖ u64be(len(body)) ‖ body )` over the files of a
//! mount, sorted by name (the upstream kars framing). Kubelet's `..data` indirection is followed
//! (files are read through their symlinks); hidden entries are skipped.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The policy kinds the router loads (names as upstream's policy-status reports them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum PolicyKind {
    /// `allowlist.json`.
    EgressAllowlist,
    /// `approval-*.json`.
    EgressApproval,
    /// `*.yaml` AGT profiles.
    AgtProfile,
    /// `inference-policy.json`.
    InferencePolicy,
    /// `binding.json`.
    Memory,
}

impl PolicyKind {
    /// True for files of this kind in its mount.
    pub fn wants(self, name: &str) -> bool {
        match self {
            PolicyKind::EgressAllowlist => name == "allowlist.json",
            PolicyKind::EgressApproval => name.starts_with("approval-") && name.ends_with(".json"),
            PolicyKind::AgtProfile => name.ends_with(".yaml") || name.ends_with(".yml"),
            PolicyKind::InferencePolicy => name == "inference-policy.json",
            PolicyKind::Memory => name == "binding.json",
        }
    }
}

/// One mounted directory.
#[derive(Clone, Debug)]
pub struct Mount {
    /// What it holds.
    pub kind: PolicyKind,
    /// Where.
    pub dir: PathBuf,
}

/// The state of one policy as reported by `/internal/policy-status`.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyEntry {
    /// Kind.
    pub kind: PolicyKind,
    /// `sha256:<hex>` of the loaded files, or `None` when nothing valid is loaded.
    pub digest: Option<String>,
    /// The mount directory.
    pub source_path: String,
    /// When it was (re)loaded, RFC 3339.
    pub loaded_at: String,
    /// Why the latest attempt failed (the previous content stays in force).
    pub last_error: Option<String>,
    /// The loaded files (name, bytes) — not serialised.
    #[serde(skip)]
    pub files: Vec<(String, Vec<u8>)>,
}

/// Digest of framed files, sorted by the caller.
pub fn digest(files: &[(String, Vec<u8>)]) -> String {
    let mut h = Sha256::new();
    for (name, body) in files {
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update((body.len() as u64).to_be_bytes());
        h.update(body);
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

/// Validates a file's content for its kind (JSON must parse; an AGT profile must compile).
fn check_content(kind: PolicyKind, name: &str, body: &[u8]) -> Result<(), String> {
    match kind {
        PolicyKind::AgtProfile => std::str::from_utf8(body)
            .map_err(|_| format!("{name}: not UTF-8"))
            .and_then(|text| crate::governance::Profile::parse(name, text).map(drop)),
        PolicyKind::EgressAllowlist => crate::egress::check_allowlist_file(body),
        PolicyKind::EgressApproval => crate::egress::check_approval_file(name, body),
        _ => serde_json::from_slice::<serde_json::Value>(body)
            .map(drop)
            .map_err(|e| format!("{name}: invalid JSON: {e}")),
    }
}

/// Reads one mount: `Ok(files)` sorted by name, or why it cannot be used.
pub fn read_mount(mount: &Mount) -> Result<Vec<(String, Vec<u8>)>, String> {
    let entries =
        std::fs::read_dir(&mount.dir).map_err(|e| format!("{}: {e}", mount.dir.display()))?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !mount.kind.wants(&name) {
            continue;
        }
        let path = e.path();
        // Follows kubelet's symlinks on purpose (`name -> ..data/name`).
        if !std::fs::metadata(&path)
            .map(|m| m.is_file())
            .unwrap_or(false)
        {
            continue;
        }
        let body = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        check_content(mount.kind, &name, &body)?;
        files.push((name, body));
    }
    files.sort();
    Ok(files)
}

/// The civil date `(year, month, day)` of a day count since 1970-01-01 (Howard Hinnant's
/// algorithm).
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The current UTC time, RFC 3339 with seconds.
pub fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(i64::try_from(secs / 86_400).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Watches the mount directories (kubelet swaps a `..data` symlink on every ConfigMap update,
/// which is an event in the directory); every event wakes `wake`. Directories that do not exist
/// are skipped (the periodic reload still covers them). `None` when no watch could be set.
pub fn watch_mounts(
    mounts: &[Mount],
    wake: std::sync::Arc<tokio::sync::Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            wake.notify_one();
        }
    })
    .ok()?;
    let mut watched = 0;
    for m in mounts {
        match watcher.watch(&m.dir, RecursiveMode::NonRecursive) {
            Ok(()) => watched += 1,
            Err(e) => {
                tracing::warn!(dir = %m.dir.display(), error = %e, "not watched; polled only")
            }
        }
    }
    (watched > 0).then_some(watcher)
}

/// The loaded policies; reloads swap entries atomically.
#[derive(Debug, Default)]
pub struct PolicyStore {
    mounts: Vec<Mount>,
    entries: RwLock<Vec<Arc<PolicyEntry>>>,
}

impl PolicyStore {
    /// The mounts this store reads.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// A store for `mounts` (nothing loaded yet).
    pub fn new(mounts: Vec<Mount>) -> Self {
        PolicyStore {
            mounts,
            entries: RwLock::new(Vec::new()),
        }
    }

    /// Reloads every mount. A mount that fails keeps its previous files and digest and records
    /// the error. Returns the kinds whose digest changed.
    pub fn reload(&self) -> Vec<PolicyKind> {
        let previous: Vec<Arc<PolicyEntry>> = self.snapshot();
        let mut next = Vec::with_capacity(self.mounts.len());
        let mut changed = Vec::new();
        for m in &self.mounts {
            let prev = previous.iter().find(|p| p.kind == m.kind);
            let entry = match read_mount(m) {
                Ok(files) => {
                    let d = digest(&files);
                    if prev.and_then(|p| p.digest.as_deref()) == Some(d.as_str())
                        && prev.is_some_and(|p| p.last_error.is_none())
                    {
                        prev.cloned()
                            .unwrap_or_else(|| Arc::new(new_entry(m, Some(d), files, None)))
                    } else {
                        changed.push(m.kind);
                        Arc::new(new_entry(m, Some(d), files, None))
                    }
                }
                Err(e) => match prev {
                    Some(p) if p.digest.is_some() => {
                        if p.last_error.as_deref() != Some(e.as_str()) {
                            tracing::warn!(kind = ?m.kind, error = %e, "policy reload failed; keeping the previous policy");
                        }
                        Arc::new(PolicyEntry {
                            last_error: Some(e),
                            ..(**p).clone()
                        })
                    }
                    _ => Arc::new(new_entry(m, None, Vec::new(), Some(e))),
                },
            };
            next.push(entry);
        }
        if let Ok(mut w) = self.entries.write() {
            *w = next;
        }
        changed
    }

    /// The current entries.
    pub fn snapshot(&self) -> Vec<Arc<PolicyEntry>> {
        self.entries.read().map(|r| r.clone()).unwrap_or_default()
    }
}

fn new_entry(
    m: &Mount,
    digest: Option<String>,
    files: Vec<(String, Vec<u8>)>,
    last_error: Option<String>,
) -> PolicyEntry {
    PolicyEntry {
        kind: m.kind,
        digest,
        source_path: m.dir.display().to_string(),
        loaded_at: now_rfc3339(),
        last_error,
        files,
    }
}

/// The mounts configured through the environment (each variable names a directory).
pub fn mounts_from_env(get: impl Fn(&str) -> Option<String>) -> Vec<Mount> {
    use crate::config::env;
    [
        (env::EGRESS_ALLOWLIST_DIR, PolicyKind::EgressAllowlist),
        (env::EGRESS_APPROVAL_DIR, PolicyKind::EgressApproval),
        (env::AGT_POLICY_DIR, PolicyKind::AgtProfile),
        (env::INFERENCE_POLICY_DIR, PolicyKind::InferencePolicy),
        (env::MEMORY_BINDING_DIR, PolicyKind::Memory),
    ]
    .into_iter()
    .filter_map(|(var, kind)| {
        get(var).map(|dir| Mount {
            kind,
            dir: PathBuf::from(dir),
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_of_a_single_file_matches_the_renderer_framing() {
        // The renderer's annotation for allowlist.json `{}` (see renderer canonical tests).
        let mut manual = Vec::new();
        manual.extend_from_slice(&14u64.to_be_bytes());
        manual.extend_from_slice(b"allowlist.json");
        manual.extend_from_slice(&2u64.to_be_bytes());
        manual.extend_from_slice(b"{}");
        let expected = format!("sha256:{}", hex::encode(Sha256::digest(&manual)));
        assert_eq!(
            digest(&[("allowlist.json".into(), b"{}".to_vec())]),
            expected
        );
    }

    #[test]
    fn bad_reload_keeps_the_previous_policy_and_reports() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("allowlist.json"), r#"{"endpoints":[]}"#).expect("write");
        std::fs::write(dir.path().join("ignored.txt"), "x").expect("write");
        let store = PolicyStore::new(vec![Mount {
            kind: PolicyKind::EgressAllowlist,
            dir: dir.path().into(),
        }]);
        assert_eq!(store.reload(), vec![PolicyKind::EgressAllowlist]);
        let good = store.snapshot()[0].digest.clone();
        assert!(good.is_some());
        assert!(
            store.reload().is_empty(),
            "unchanged files are not a change"
        );
        std::fs::write(dir.path().join("allowlist.json"), "{not json").expect("write");
        store.reload();
        let e = &store.snapshot()[0];
        assert_eq!(e.digest, good, "the last good policy stays in force");
        assert!(
            e.last_error
                .as_deref()
                .is_some_and(|m| m.contains("invalid JSON")),
            "{:?}",
            e.last_error
        );
        std::fs::write(
            dir.path().join("allowlist.json"),
            r#"{"endpoints":[{"host":"a","port":443}]}"#,
        )
        .expect("write");
        assert_eq!(store.reload(), vec![PolicyKind::EgressAllowlist]);
        assert!(store.snapshot()[0].last_error.is_none());
    }

    #[test]
    fn missing_mount_has_no_digest() {
        let store = PolicyStore::new(vec![Mount {
            kind: PolicyKind::Memory,
            dir: "/nonexistent/kars".into(),
        }]);
        store.reload();
        let e = &store.snapshot()[0];
        assert!(e.digest.is_none() && e.last_error.is_some());
    }

    #[tokio::test]
    async fn a_changed_file_wakes_the_watcher() {
        let dir = tempfile::tempdir().expect("tmp");
        let mounts = vec![Mount {
            kind: PolicyKind::EgressAllowlist,
            dir: dir.path().into(),
        }];
        let wake = std::sync::Arc::new(tokio::sync::Notify::new());
        let _w = watch_mounts(&mounts, wake.clone()).expect("watching");
        std::fs::write(dir.path().join("allowlist.json"), "{}").expect("write");
        tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
            .await
            .expect("an event within 5 s");
    }
}
