//! Policy loading and reloading: the one path, at start-up and on every change.
//!
//! For each mount the renderer configured (one directory per [`PolicyKind`], named by the
//! contract's environment variables): read the files the kind wants (following kubelet's
//! `..data` symlinks, skipping hidden entries), compute the digest in the contract's framing,
//! and — only when the digest changed — compile them into the typed policy the router enforces.
//! Then build one [`Snapshot`] (the egress policy, the governance engine, the inference routes,
//! the policy-status entries) and swap it in atomically. A mount that fails to read or compile
//! keeps its last good policy and digest and reports `last_error`, so `/internal/policy-status`
//! only ever reports a digest that is enforced.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kars_contract::PolicyKind;
use serde::Serialize;

use crate::egress::{Approval, EgressPolicy, Learned, Mode};
use crate::governance::{Engine, Profile};
use crate::inference::{InferenceRoutes, Providers};
use crate::policy_file::PolicyFileError;

/// One mounted directory.
#[derive(Clone, Debug)]
pub struct Mount {
    /// What it holds.
    pub kind: PolicyKind,
    /// Where.
    pub dir: PathBuf,
}

/// The mounts configured through the environment (each kind's variable names a directory).
pub fn mounts_from_env(get: impl Fn(&str) -> Option<String>) -> Vec<Mount> {
    PolicyKind::ALL
        .into_iter()
        .filter_map(|kind| {
            get(kind.dir_env()).map(|dir| Mount {
                kind,
                dir: PathBuf::from(dir),
            })
        })
        .collect()
}

/// Reads one mount: the files its kind wants, sorted by name.
pub fn read_mount(mount: &Mount) -> Result<Vec<(String, Vec<u8>)>, PolicyFileError> {
    let unreadable = |path: &std::path::Path, e: std::io::Error| PolicyFileError::Unreadable {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let entries = std::fs::read_dir(&mount.dir).map_err(|e| unreadable(&mount.dir, e))?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|e| unreadable(&mount.dir, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !mount.kind.wants(&name) {
            continue;
        }
        let path = e.path();
        // Follows kubelet's symlinks on purpose (`name -> ..data/name`).
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            continue;
        }
        let body = std::fs::read(&path).map_err(|e| unreadable(&path, e))?;
        files.push((name, body));
    }
    files.sort();
    Ok(files)
}

/// A policy kind compiled from its files: what the router enforces.
#[derive(Debug)]
pub enum Compiled {
    /// `host:port` entries in normal form.
    EgressAllowlist(Vec<(String, u16)>),
    /// Time-limited approvals.
    EgressApproval(Vec<Approval>),
    /// AGT profiles, one per file, and the ToolPolicy's own rules (`profile.json`).
    AgtProfile(Vec<Profile>, Vec<crate::tool_policy::ToolRules>),
    /// Upstreams and token limits.
    InferencePolicy(InferenceRoutes),
    /// The memory binding (validated JSON; the router does not act on it).
    Memory(serde_json::Value),
}

/// Compiles the files of one mount.
pub fn compile(
    kind: PolicyKind,
    files: &[(String, Vec<u8>)],
    settings: &Settings,
) -> Result<Compiled, PolicyFileError> {
    Ok(match kind {
        PolicyKind::EgressAllowlist => Compiled::EgressAllowlist(match files.first() {
            Some((_, body)) => crate::egress::parse_allowlist(body)?,
            None => Vec::new(),
        }),
        PolicyKind::EgressApproval => Compiled::EgressApproval(
            files
                .iter()
                .map(|(name, body)| crate::egress::parse_approval(name, body))
                .collect::<Result<_, _>>()?,
        ),
        PolicyKind::AgtProfile => {
            let (summaries, profiles): (Vec<_>, Vec<_>) = files
                .iter()
                .partition(|(name, _)| name == kars_contract::policy::AGT_SUMMARY_FILE);
            Compiled::AgtProfile(
                profiles
                    .iter()
                    .map(|(name, body)| Profile::parse(name, PolicyFileError::text(name, body)?))
                    .collect::<Result<_, _>>()?,
                summaries
                    .iter()
                    .map(|(name, body)| crate::tool_policy::ToolRules::parse(name, body))
                    .collect::<Result<_, _>>()?,
            )
        }
        PolicyKind::InferencePolicy => Compiled::InferencePolicy(match files.first() {
            Some((name, body)) => InferenceRoutes::compile(name, body, &settings.providers)?,
            None => InferenceRoutes::default(),
        }),
        PolicyKind::Memory => Compiled::Memory(match files.first() {
            Some((name, body)) => PolicyFileError::json(name, body)?,
            None => serde_json::Value::Null,
        }),
    })
}

/// The state of one policy as `/internal/policy-status` reports it.
#[derive(Clone, Debug, Serialize)]
pub struct PolicyEntry {
    /// Kind.
    pub kind: PolicyKind,
    /// `sha256:<hex>` of the files in force, or `None` when nothing valid is loaded.
    pub digest: Option<String>,
    /// The mount directory.
    pub source_path: String,
    /// When what is in force was loaded, RFC 3339.
    pub loaded_at: String,
    /// Why the latest attempt failed (the previous content stays in force).
    pub last_error: Option<String>,
    /// The compiled policy in force.
    #[serde(skip)]
    pub compiled: Option<Arc<Compiled>>,
}

/// The router's own settings that shape what the policies compile to.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Strict or Learn (from the router's environment, not from a policy file).
    pub mode: Option<Mode>,
    /// Blocklisted hosts, in normal form.
    pub blocklist: Vec<String>,
    /// Internal CIDRs the proxy may connect to.
    pub private_allowed: Vec<ipnet::IpNet>,
    /// Inference providers (name → base URL, key); none: inference is not served.
    pub providers: Providers,
    /// Hosts Learn mode allowed (kept across reloads).
    pub learned: Arc<Learned>,
}

/// Everything in force, swapped as one.
#[derive(Debug)]
pub struct Snapshot {
    /// Per mount, as `/internal/policy-status` reports it.
    pub entries: Vec<PolicyEntry>,
    /// The egress policy (allowlist + approvals + settings).
    pub egress: Arc<EgressPolicy>,
    /// The governance engine (AGT profiles; rate-limit buckets survive reloads).
    pub governance: Arc<Engine>,
    /// Upstreams and token limits.
    pub inference: Arc<InferenceRoutes>,
    /// The ToolPolicy's own rules (rate limit, commerce caps, approval).
    pub tools: Arc<Vec<crate::tool_policy::ToolRules>>,
}

impl Snapshot {
    /// A snapshot with just this egress policy (tests and benchmarks).
    pub fn with_egress(egress: EgressPolicy) -> Snapshot {
        Snapshot {
            entries: Vec::new(),
            egress: Arc::new(egress),
            governance: Arc::default(),
            inference: Arc::default(),
            tools: Arc::default(),
        }
    }

    /// The compiled allowlist and approvals the egress policy is built from.
    fn egress_inputs(&self) -> (Vec<(String, u16)>, Vec<Approval>) {
        let allow = match self.compiled(PolicyKind::EgressAllowlist) {
            Some(Compiled::EgressAllowlist(a)) => a.clone(),
            _ => Vec::new(),
        };
        let approvals = match self.compiled(PolicyKind::EgressApproval) {
            Some(Compiled::EgressApproval(a)) => a.clone(),
            _ => Vec::new(),
        };
        (allow, approvals)
    }

    fn compiled(&self, kind: PolicyKind) -> Option<&Compiled> {
        self.entries
            .iter()
            .find(|e| e.kind == kind)
            .and_then(|e| e.compiled.as_deref())
    }
}

/// The policies: mounts, settings, and the snapshot in force.
#[derive(Debug)]
pub struct Policies {
    mounts: Vec<Mount>,
    settings: Settings,
    current: RwLock<Arc<Snapshot>>,
    /// Set by `POST /egress/learn {"enabled": false}`: Strict whatever the settings say, until
    /// turned off again or the router restarts (Git's mode is what a restart brings back).
    forced_strict: std::sync::atomic::AtomicBool,
}

impl Policies {
    /// Policies read from `mounts` (nothing is loaded until [`Policies::reload`]).
    pub fn new(mounts: Vec<Mount>, settings: Settings) -> Policies {
        let empty = Snapshot {
            entries: Vec::new(),
            egress: Arc::new(egress_policy(
                &settings,
                settings.mode.unwrap_or(Mode::Strict),
                &[],
                &[],
            )),
            governance: Arc::default(),
            inference: Arc::default(),
            tools: Arc::default(),
        };
        Policies {
            mounts,
            settings,
            current: RwLock::new(Arc::new(empty)),
            forced_strict: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Policies fixed to `snapshot`, without mounts (tests and benchmarks).
    pub fn fixed(snapshot: Snapshot) -> Policies {
        Policies {
            mounts: Vec::new(),
            settings: Settings::default(),
            current: RwLock::new(Arc::new(snapshot)),
            forced_strict: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The mounts read.
    pub fn mounts(&self) -> &[Mount] {
        &self.mounts
    }

    /// The settings policies are compiled with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The egress mode in force: the settings' (from Git), or Strict while forced.
    pub fn mode(&self) -> Mode {
        if self.forced_strict.load(std::sync::atomic::Ordering::SeqCst) {
            Mode::Strict
        } else {
            self.settings.mode.unwrap_or(Mode::Strict)
        }
    }

    /// `POST /egress/learn`: `learn: false` forces Strict now; `learn: true` returns to the
    /// settings' mode, and is refused when that is Strict — Learn mode comes only from Git
    /// (`spec.networkPolicy.egressMode`), never from a request. Returns the mode in force.
    pub fn set_learn(&self, learn: bool) -> Result<Mode, String> {
        let configured = self.settings.mode.unwrap_or(Mode::Strict);
        if learn && configured == Mode::Strict {
            return Err("this sandbox's egress mode is Strict in Git (spec.networkPolicy.egressMode); Learn mode is changed by a pull request, not a request to the router".into());
        }
        self.forced_strict
            .store(!learn, std::sync::atomic::Ordering::SeqCst);
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (allow, approvals) = current.egress_inputs();
        let next = Snapshot {
            entries: current.entries.clone(),
            egress: Arc::new(egress_policy(
                &self.settings,
                self.mode(),
                &allow,
                &approvals,
            )),
            governance: current.governance.clone(),
            inference: current.inference.clone(),
            tools: current.tools.clone(),
        };
        *current = Arc::new(next);
        Ok(self.mode())
    }

    /// What is in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads every mount, compiles what changed, and swaps in the new snapshot. Returns the
    /// kinds whose policy in force changed. A mount that fails keeps its previous policy and
    /// records the error.
    pub fn reload(&self) -> Vec<PolicyKind> {
        let previous = self.snapshot();
        let mut entries = Vec::with_capacity(self.mounts.len());
        let mut changed = Vec::new();
        for m in &self.mounts {
            let prev = previous.entries.iter().find(|p| p.kind == m.kind);
            let attempt = read_mount(m).and_then(|files| {
                let digest = kars_contract::policy::digest_files(
                    files.iter().map(|(n, b)| (n.as_bytes(), b.as_slice())),
                );
                // Same files as in force: nothing to compile, and a past error is over.
                if let Some(p) = prev.filter(|p| p.digest.as_deref() == Some(digest.as_str())) {
                    return Ok(PolicyEntry {
                        last_error: None,
                        ..p.clone()
                    });
                }
                let compiled = compile(m.kind, &files, &self.settings)?;
                changed.push(m.kind);
                Ok(PolicyEntry {
                    kind: m.kind,
                    digest: Some(digest),
                    source_path: m.dir.display().to_string(),
                    loaded_at: kars_contract::time::now_rfc3339(),
                    last_error: None,
                    compiled: Some(Arc::new(compiled)),
                })
            });
            let entry = match (attempt, prev) {
                (Ok(entry), _) => entry,
                (Err(e), prev) => {
                    let e = e.to_string();
                    if prev.is_none_or(|p| p.last_error.as_deref() != Some(e.as_str())) {
                        tracing::warn!(kind = %m.kind, error = %e, "policy reload failed; keeping the previous policy");
                    }
                    match prev {
                        Some(p) => PolicyEntry {
                            last_error: Some(e),
                            ..p.clone()
                        },
                        None => PolicyEntry {
                            kind: m.kind,
                            digest: None,
                            source_path: m.dir.display().to_string(),
                            loaded_at: kars_contract::time::now_rfc3339(),
                            last_error: Some(e),
                            compiled: None,
                        },
                    }
                }
            };
            entries.push(entry);
        }
        let mut next = Snapshot {
            entries,
            egress: previous.egress.clone(),
            governance: previous.governance.clone(),
            inference: previous.inference.clone(),
            tools: previous.tools.clone(),
        };
        let egress_changed = changed
            .iter()
            .any(|k| matches!(k, PolicyKind::EgressAllowlist | PolicyKind::EgressApproval));
        if egress_changed {
            let (allow, approvals) = next.egress_inputs();
            next.egress = Arc::new(egress_policy(
                &self.settings,
                self.mode(),
                &allow,
                &approvals,
            ));
        }
        if changed.contains(&PolicyKind::AgtProfile) {
            let (profiles, tools) = match next.compiled(PolicyKind::AgtProfile) {
                Some(Compiled::AgtProfile(p, t)) => (p.clone(), t.clone()),
                _ => (Vec::new(), Vec::new()),
            };
            next.governance = Arc::new(previous.governance.successor(profiles));
            next.tools = Arc::new(tools);
        }
        if changed.contains(&PolicyKind::InferencePolicy)
            && let Some(Compiled::InferencePolicy(r)) = next.compiled(PolicyKind::InferencePolicy)
        {
            next.inference = Arc::new(r.clone());
        }
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(next);
        changed
    }
}

fn egress_policy(
    settings: &Settings,
    mode: Mode,
    allow: &[(String, u16)],
    approvals: &[Approval],
) -> EgressPolicy {
    EgressPolicy::new(
        mode,
        allow.iter().cloned(),
        approvals.to_vec(),
        settings.blocklist.clone(),
        settings.private_allowed.clone(),
    )
    .with_learned(settings.learned.clone())
}

/// True for file-system events that can change what a mount holds (a write, a create, a
/// remove, kubelet's `..data` rename). Reads are not: the router's own reads of the mounts
/// must not wake it again.
pub fn changes_content(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    !matches!(kind, EventKind::Access(_))
}

/// Watches the mount directories; every event that can change content wakes `wake`.
/// Directories that do not exist are skipped (the periodic reload still covers them). `None`
/// when no watch could be set.
pub fn watch_mounts(
    mounts: &[Mount],
    wake: Arc<tokio::sync::Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && changes_content(&ev.kind)
        {
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

/// Reloads on every wake-up (after a short settle time for kubelet's symlink swap) and every
/// `every` anyway, forever; `passes` counts the reload passes.
pub async fn reload_forever(
    policies: Arc<Policies>,
    wake: Arc<tokio::sync::Notify>,
    every: Duration,
    passes: prometheus_client::metrics::counter::Counter,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = wake.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
        }
        passes.inc();
        for kind in policies.reload() {
            tracing::info!(%kind, "policy reloaded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(kind: PolicyKind, dir: &std::path::Path) -> Policies {
        Policies::new(
            vec![Mount {
                kind,
                dir: dir.into(),
            }],
            Settings::default(),
        )
    }

    #[test]
    fn digest_of_a_single_file_matches_the_renderer_framing() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("allowlist.json"), "{}").expect("write");
        let p = store(PolicyKind::EgressAllowlist, dir.path());
        p.reload();
        assert_eq!(
            p.snapshot().entries[0].digest.as_deref(),
            Some(kars_contract::policy::digest_file("allowlist.json", b"{}").as_str())
        );
    }

    #[test]
    fn bad_reload_keeps_the_previous_policy_and_reports() {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("allowlist.json"), r#"{"endpoints":[]}"#).expect("write");
        std::fs::write(dir.path().join("ignored.txt"), "x").expect("write");
        let store = store(PolicyKind::EgressAllowlist, dir.path());
        assert_eq!(store.reload(), vec![PolicyKind::EgressAllowlist]);
        let good = store.snapshot().entries[0].digest.clone();
        assert!(good.is_some());
        assert!(
            store.reload().is_empty(),
            "unchanged files are not a change"
        );
        std::fs::write(dir.path().join("allowlist.json"), "{not json").expect("write");
        store.reload();
        let e = store.snapshot().entries[0].clone();
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
        assert!(store.snapshot().entries[0].last_error.is_none());
        assert!(
            store.snapshot().egress.decide("a", 443, 0).is_ok(),
            "enforced"
        );
    }

    #[test]
    fn an_invalid_host_keeps_the_previous_egress_policy() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("allowlist.json");
        std::fs::write(&file, r#"{"endpoints":[{"host":"a.example","port":443}]}"#).expect("w");
        let store = store(PolicyKind::EgressAllowlist, dir.path());
        store.reload();
        std::fs::write(&file, r#"{"endpoints":[{"host":"10.0.0.1","port":443}]}"#).expect("w");
        assert!(store.reload().is_empty());
        let s = store.snapshot();
        assert!(s.entries[0].last_error.is_some());
        assert!(s.egress.decide("a.example", 443, 0).is_ok());
    }

    #[test]
    fn missing_mount_has_no_digest() {
        let store = store(
            PolicyKind::Memory,
            std::path::Path::new("/nonexistent/kars"),
        );
        store.reload();
        let e = &store.snapshot().entries[0];
        assert!(e.digest.is_none() && e.last_error.is_some());
    }

    #[tokio::test]
    async fn a_changed_file_wakes_the_watcher() {
        let dir = tempfile::tempdir().expect("tmp");
        let mounts = vec![Mount {
            kind: PolicyKind::EgressAllowlist,
            dir: dir.path().into(),
        }];
        let wake = Arc::new(tokio::sync::Notify::new());
        let _w = watch_mounts(&mounts, wake.clone()).expect("watching");
        std::fs::write(dir.path().join("allowlist.json"), "{}").expect("write");
        tokio::time::timeout(Duration::from_secs(5), wake.notified())
            .await
            .expect("an event within 5 s");
    }

    /// Regression: one external read of a mounted file made the router re-read its mounts
    /// about 10 times a second forever (its own reads woke the watcher again).
    #[tokio::test]
    async fn reads_of_the_mounts_do_not_make_the_router_reload_again_and_again() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("allowlist.json");
        std::fs::write(&file, r#"{"endpoints":[]}"#).expect("write");
        let policies = Arc::new(store(PolicyKind::EgressAllowlist, dir.path()));
        policies.reload();
        let wake = Arc::new(tokio::sync::Notify::new());
        let _w = watch_mounts(policies.mounts(), wake.clone()).expect("watching");
        let passes = prometheus_client::metrics::counter::Counter::default();
        let task = tokio::spawn(reload_forever(
            policies.clone(),
            wake,
            Duration::from_secs(3600),
            passes.clone(),
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = std::fs::read(&file).expect("an external read");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after_read = passes.get();
        assert!(after_read <= 1, "{after_read} reload passes after one read");
        std::fs::write(&file, r#"{"endpoints":[{"host":"b.example","port":443}]}"#).expect("w");
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after_write = passes.get();
        assert!(after_write > after_read, "a write reloads");
        assert!(
            after_write <= after_read + 2,
            "{} passes for one write: its own reads woke it again",
            after_write - after_read
        );
        assert!(
            policies
                .snapshot()
                .egress
                .decide("b.example", 443, 0)
                .is_ok()
        );
        task.abort();
    }
}
