//! One sync: source → verify → render → apply → prune → health → status. Both the agent and
//! `kars sync` run this function, against the same `PolicyRepo` status object, so either one
//! continues where the other stopped (last applied commit, inventory).
//!
//! Failure semantics: a source, verification or render failure applies nothing and deletes
//! nothing; an apply failure (the API server refused an object, even in the dry run) writes
//! nothing when caught by the dry run, and never prunes; pruning runs only after every object
//! applied. The status says which step failed, why, and for which object.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kars_renderer::source::SourceLimits;
use kars_renderer::{Bundles, Prepared, RenderError, Rendered};

use crate::bundles::BundleVerifier;

use crate::apply::{Action, Applier, ApplyError, ApplyOptions, ApplyReport};
use crate::health::{self, HealthReport};
use crate::metrics::{Metrics, ReasonLabel, ResultLabel};
use crate::prune::{self, PruneOptions, PruneResult};
use crate::source::{self, Credentials, GitSourceError};
use crate::status::{
    self, InventoryEntry, ObjectFailure, PolicyRepoSpec, PolicyRepoStatus, SyncCounts,
    set_condition,
};
use crate::verify::{RangeVerdict, TrustPolicy, Verifier, range::VerifyError, unix_now};

/// What to sync and how.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// A local Git repository path, or a URL (`https://`, `ssh://`, `git://`, `file://`).
    pub source: String,
    /// Branch to follow (default: `HEAD` of a local path, `main` for a URL).
    pub branch: Option<String>,
    /// Cluster of `kars.yaml` to render.
    pub cluster: Option<String>,
    /// Who may sign.
    pub trust: TrustPolicy,
    /// Fetch credentials.
    pub credentials: Credentials,
    /// Where fetched repositories are cached.
    pub cache_dir: PathBuf,
    /// Namespace of the PolicyRepo status object.
    pub status_namespace: String,
    /// Name of the PolicyRepo status object.
    pub name: String,
    /// Apply options.
    pub apply: ApplyOptions,
    /// Prune options (the PolicyRepo spec can tighten them).
    pub prune: PruneOptions,
    /// How long to wait for applied objects to become healthy (zero: one look, no waiting).
    pub health_timeout: Duration,
    /// Verify from this commit instead of the last applied one (CLI `--since`).
    pub since_override: Option<String>,
    /// Verifies the signed bundles the commit references.
    pub bundles: BundleVerifier,
}

impl SyncConfig {
    /// The branch actually followed.
    pub fn effective_branch(&self) -> String {
        match &self.branch {
            Some(b) => b.clone(),
            None if source::is_remote_url(&self.source) => "main".to_string(),
            None => "HEAD".to_string(),
        }
    }
}

/// A PolicyRepo name from a source: the last path segment, DNS-label safe.
pub fn default_name(source: &str) -> String {
    let last = source
        .trim_end_matches('/')
        .rsplit(['/', ':'])
        .next()
        .unwrap_or("policy-repo");
    let last = last.trim_end_matches(".git");
    let mut s: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s = s.trim_matches('-').chars().take(63).collect();
    if s.is_empty() {
        "policy-repo".into()
    } else {
        s
    }
}

/// The result of a sync that reached the apply step.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SyncOutcome {
    /// The commit applied.
    pub commit: String,
    /// Repository name from kars.yaml.
    pub repository: String,
    /// Cluster name.
    pub cluster: String,
    /// Digest of the rendered set.
    pub digest: String,
    /// The verification of every new commit.
    pub verification: RangeVerdict,
    /// Per-object results.
    pub apply: ApplyReport,
    /// Prune results (empty when nothing left Git).
    pub prune: Vec<(String, PruneResult)>,
    /// Why pruning was held back, if it was.
    pub prune_refused: Option<String>,
    /// Health after the apply.
    pub health: HealthReport,
    /// Seconds spent in each phase (fetch, verify+render, apply, prune, health).
    pub timings: Vec<(String, f64)>,
    /// Signed-bundle references that did not verify: (object, reason).
    pub bundle_failures: Vec<(String, String)>,
    /// Objects held back because a bundle they need is not verified (`Kind/namespace/name`).
    pub held_back: Vec<String>,
    /// Router Deployments whose running pods do not report the rendered policy digests
    /// (`namespace/name`); Ready waits for them ("Ready means enforced").
    pub not_enforced: Vec<String>,
}

impl SyncOutcome {
    /// True when the cluster matches the verified head (everything applied, pruning done).
    pub fn converged(&self) -> bool {
        self.apply.is_success()
            && self.prune_refused.is_none()
            && self.bundle_failures.is_empty()
            && self.held_back.is_empty()
            && self.not_enforced.is_empty()
            && self
                .prune
                .iter()
                .all(|(_, r)| r.leaves_inventory() || matches!(r, PruneResult::WouldDelete))
    }
}

/// Why a sync stopped before applying (or could not finish).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Reading or fetching the repository failed.
    #[error(transparent)]
    Source(#[from] GitSourceError),
    /// Verification could not run.
    #[error("verifying: {0}")]
    VerifyFailed(#[from] VerifyError),
    /// A commit (or the history) is not trusted: nothing is applied.
    #[error("verification failed, nothing applied: {}", .0.first_problem().unwrap_or_default())]
    Untrusted(Box<RangeVerdict>),
    /// The commit does not render (invalid, unknown cluster, unverified bundle).
    #[error("commit {commit}: {source}")]
    Render {
        /// The commit.
        commit: String,
        /// Why.
        #[source]
        source: RenderError,
    },
    /// Applying could not run (API server unreachable, timeouts).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Reading or writing the status object failed.
    #[error("PolicyRepo {0}: {1}")]
    Status(String, kube::Error),
    /// The PolicyRepo is suspended.
    #[error("suspended (spec.suspend: true); nothing was synced")]
    Suspended,
}

impl SyncError {
    /// A stable short reason for status conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Source(_) => "SourceUnavailable",
            SyncError::VerifyFailed(_) => "VerificationError",
            SyncError::Untrusted(v) => match (
                &v.history,
                v.commits.iter().find_map(|c| c.refusal.as_ref()),
            ) {
                (Some(h), _) => h.label(),
                (None, Some(r)) => r.label(),
                (None, None) => "VerificationFailed",
            },
            SyncError::Render { .. } => "RenderFailed",
            SyncError::Apply(e) => e.reason(),
            SyncError::Status(..) => "StatusUnavailable",
            SyncError::Suspended => "Suspended",
        }
    }
}

/// Kubernetes Events on the PolicyRepo, on transitions only: a new commit applied, the Ready
/// condition turning False or changing its reason. A failure to record an event is logged.
async fn publish_events(
    client: &kube::Client,
    pr: &status::PolicyRepo,
    before: &PolicyRepoStatus,
    after: &PolicyRepoStatus,
    result: &Result<SyncOutcome, SyncError>,
) {
    use kube::Resource;
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kars-gitops".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let reference = pr.object_ref(&());
    let ready = |s: &PolicyRepoStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .map(|c| (c.status.clone(), c.reason.clone()))
    };
    let mut events = Vec::new();
    if after.last_applied_revision != before.last_applied_revision
        && let (Some(rev), Ok(o)) = (&after.last_applied_revision, result)
    {
        events.push(Event {
            type_: EventType::Normal,
            reason: "Applied".into(),
            note: Some(format!(
                "commit {rev} applied (signed by {}): {} created, {} configured, {} pruned",
                after.last_applied_signers.join(", "),
                o.apply.count(|a| *a == Action::Created),
                o.apply.count(|a| *a == Action::Configured),
                o.prune
                    .iter()
                    .filter(|(_, r)| *r == PruneResult::Deleted)
                    .count()
            )),
            action: "Sync".into(),
            secondary: None,
        });
    }
    if ready(after) != ready(before)
        && let Some(c) = after
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready" && c.status == "False")
    {
        events.push(Event {
            type_: EventType::Warning,
            reason: c.reason.chars().take(128).collect(),
            note: Some(c.message.chars().take(1000).collect()),
            action: "Sync".into(),
            secondary: None,
        });
    }
    for ev in events {
        if let Err(e) = recorder.publish(&ev, &reference).await {
            tracing::warn!(error = %e, reason = %ev.reason, "could not record an event");
        }
    }
}

/// A local repository path, its head, and whether a pack was downloaded (fetching first when
/// the source is a URL).
pub fn resolve_source(
    cfg: &SyncConfig,
    approval_prefix: &str,
) -> Result<(PathBuf, gix::ObjectId, bool), SyncError> {
    let branch = cfg.effective_branch();
    if source::is_remote_url(&cfg.source) {
        let f = source::fetch(
            &cfg.cache_dir,
            &cfg.source,
            &branch,
            approval_prefix,
            &cfg.credentials,
        )?;
        Ok((f.repo_path, f.head, f.downloaded))
    } else {
        let path = PathBuf::from(&cfg.source);
        let repo = source::open(&path)?;
        source::ensure_not_shallow(&repo, &path)?;
        let head = source::resolve_commit(&repo, &branch)?;
        Ok((path, head, false))
    }
}

/// Verifies `since..head` (`since` = the last applied commit; `None` = the whole history).
pub fn verify(
    repo_path: &Path,
    head: gix::ObjectId,
    since: Option<&str>,
    trust: &TrustPolicy,
) -> Result<RangeVerdict, SyncError> {
    let repo = source::open(repo_path)?;
    let since = match since {
        Some(s) => match source::resolve_commit(&repo, s) {
            Ok(id) => Some(id),
            // The last applied commit vanished from the remote history: a force-push.
            Err(_) => {
                return Ok(RangeVerdict {
                    head: head.to_string(),
                    since: Some(s.to_string()),
                    commits: Vec::new(),
                    history: Some(crate::verify::range::HistoryRefusal::Rollback {
                        head: head.to_string(),
                        since: s.to_string(),
                        need: trust.rollback_min_signers,
                    }),
                    rollback_override: false,
                });
            }
        },
        None => None,
    };
    Ok(Verifier::new(&repo, trust, unix_now()).verify_range(since, head)?)
}

/// Reads `head` and validates what `cluster` receives (call only after [`verify`] accepted
/// the range); the result lists the signed bundles to verify before rendering.
pub fn prepare(
    repo_path: &Path,
    head: gix::ObjectId,
    cluster: Option<&str>,
) -> Result<Prepared, SyncError> {
    let repo = source::open(repo_path)?;
    let tree = source::read_tree(&repo, head, SourceLimits::default())?;
    kars_renderer::prepare(&tree, cluster).map_err(|source| SyncError::Render {
        commit: head.to_string(),
        source,
    })
}

/// Renders a prepared commit with the bundles resolved for it.
pub fn render(
    prepared: &Prepared,
    head: gix::ObjectId,
    bundles: &Bundles,
) -> Result<Rendered, SyncError> {
    prepared
        .render(bundles)
        .map_err(|source| SyncError::Render {
            commit: head.to_string(),
            source,
        })
}

/// Verifies `since..head` and prepares `head`. Nothing is read unless everything verifies.
pub fn verify_and_prepare(
    repo_path: &Path,
    head: gix::ObjectId,
    since: Option<&str>,
    trust: &TrustPolicy,
    cluster: Option<&str>,
) -> Result<(RangeVerdict, Prepared), SyncError> {
    let verdict = verify(repo_path, head, since, trust)?;
    if !verdict.ok() {
        return Err(SyncError::Untrusted(Box::new(verdict)));
    }
    let prepared = prepare(repo_path, head, cluster)?;
    Ok((verdict, prepared))
}

/// Runs one sync and records it in the PolicyRepo status. `stop` is polled between objects
/// (graceful shutdown). Returns the outcome, or the error that stopped the sync (already in
/// the status).
pub async fn sync_once(
    client: kube::Client,
    cfg: &SyncConfig,
    metrics: Option<&Metrics>,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<SyncOutcome, SyncError> {
    let started = Instant::now();
    let spec = PolicyRepoSpec {
        url: cfg.source.clone(),
        branch: cfg.branch.clone(),
        cluster: cfg.cluster.clone(),
        ..PolicyRepoSpec::default()
    };
    let pr = status::get_or_create(&client, &cfg.status_namespace, &cfg.name, spec)
        .await
        .map_err(|e| SyncError::Status(cfg.name.clone(), e))?;
    let generation = pr.metadata.generation;
    let before: PolicyRepoStatus = pr.status.clone().unwrap_or_default();
    let mut st: PolicyRepoStatus = before.clone();
    let result = run(&client, cfg, &pr.spec, &mut st, generation, stop).await;
    let label = match &result {
        Ok(o) if o.converged() => "success".to_string(),
        Ok(_) => "partial".to_string(),
        Err(e) => e.reason().to_string(),
    };
    // Summary condition.
    let (ready, reason, message) = match &result {
        Ok(o) if o.converged() => (
            Some(true),
            "Synced".to_string(),
            format!("commit {} applied", o.commit),
        ),
        Ok(o) => (
            Some(false),
            if !o.apply.is_success() {
                "ApplyFailed".to_string()
            } else if let Some((_, reason)) = o.bundle_failures.first() {
                reason.clone()
            } else if !o.held_back.is_empty() {
                "HeldBack".to_string()
            } else if !o.not_enforced.is_empty() {
                "NotEnforced".to_string()
            } else if o.prune_refused.is_some() {
                "PruneRefused".to_string()
            } else {
                "ApplyFailed".to_string()
            },
            st.failures
                .first()
                .map(|f| format!("{}: {}", f.object, f.message))
                .or_else(|| o.prune_refused.clone())
                .unwrap_or_default(),
        ),
        Err(SyncError::Suspended) => (None, "Suspended".into(), "spec.suspend is true".into()),
        Err(e) => (Some(false), e.reason().to_string(), e.to_string()),
    };
    set_condition(
        &mut st.conditions,
        "Ready",
        ready,
        &reason,
        &message,
        generation,
    );
    st.observed_generation = generation;
    // A no-op sync leaves the status as it was and sends no write.
    if st != before {
        status::write_status(&client, &cfg.status_namespace, &cfg.name, &st)
            .await
            .map_err(|e| SyncError::Status(cfg.name.clone(), e))?;
    }
    publish_events(&client, &pr, &before, &st, &result).await;
    if let Some(m) = metrics {
        m.sync_duration
            .get_or_create(&ResultLabel { result: label })
            .observe(started.elapsed().as_secs_f64());
        if let Err(e @ SyncError::Untrusted(_)) = &result {
            m.verification_failures
                .get_or_create(&ReasonLabel {
                    reason: e.reason().to_string(),
                })
                .inc();
        }
        if let Ok(o) = &result {
            for (_, reason) in &o.bundle_failures {
                m.bundle_failures
                    .get_or_create(&ReasonLabel {
                        reason: reason.clone(),
                    })
                    .inc();
            }
            m.objects_applied.inc_by(
                o.apply
                    .count(|a| matches!(a, Action::Created | Action::Configured))
                    as u64,
            );
            m.objects_pruned.inc_by(
                o.prune
                    .iter()
                    .filter(|(_, r)| *r == PruneResult::Deleted)
                    .count() as u64,
            );
            m.write_requests.inc_by(o.apply.writes as u64);
            if o.converged() {
                m.last_applied_timestamp.set(unix_now() as f64);
            }
        }
    }
    result
}

async fn run(
    client: &kube::Client,
    cfg: &SyncConfig,
    spec: &PolicyRepoSpec,
    st: &mut PolicyRepoStatus,
    generation: Option<i64>,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<SyncOutcome, SyncError> {
    if spec.suspend {
        return Err(SyncError::Suspended);
    }
    st.failures.clear();
    // Source.
    let mut timings: Vec<(String, f64)> = Vec::new();
    let mut mark = Instant::now();
    let mut lap = |name: &str, timings: &mut Vec<(String, f64)>| {
        timings.push((name.to_string(), mark.elapsed().as_secs_f64()));
        mark = Instant::now();
    };
    let prefix = cfg.trust.approval_tag_prefix.clone();
    let owned = cfg.clone();
    let fetched = tokio::task::spawn_blocking(move || resolve_source(&owned, &prefix))
        .await
        .map_err(|e| {
            SyncError::Source(GitSourceError::Object {
                id: cfg.source.clone(),
                message: format!("fetch task failed: {e}"),
            })
        })?;
    let (repo_path, head, _downloaded) = match fetched {
        Ok(x) => x,
        Err(e) => {
            set_condition(
                &mut st.conditions,
                "SourceReady",
                Some(false),
                e.reason(),
                &e.to_string(),
                generation,
            );
            return Err(e);
        }
    };
    st.last_fetched_revision = Some(head.to_string());
    set_condition(
        &mut st.conditions,
        "SourceReady",
        Some(true),
        "Fetched",
        &format!("fetched head {head}"),
        generation,
    );

    lap("fetch", &mut timings);
    // Verify and render.
    let since = cfg
        .since_override
        .clone()
        .or_else(|| st.last_applied_revision.clone());
    let trust = cfg.trust.clone();
    let cluster = cfg.cluster.clone();
    let path = repo_path.clone();
    let since_for_task = since.clone();
    let verified = tokio::task::spawn_blocking(move || {
        verify_and_prepare(
            &path,
            head,
            since_for_task.as_deref(),
            &trust,
            cluster.as_deref(),
        )
    })
    .await
    .map_err(|e| {
        SyncError::Source(GitSourceError::Object {
            id: head.to_string(),
            message: format!("verify task failed: {e}"),
        })
    })?;
    let (verification, prepared) = match verified {
        Ok(x) => x,
        Err(e @ (SyncError::Untrusted(_) | SyncError::VerifyFailed(_))) => {
            set_condition(
                &mut st.conditions,
                "Verified",
                Some(false),
                e.reason(),
                &e.to_string(),
                generation,
            );
            return Err(e);
        }
        Err(e) => {
            set_condition(
                &mut st.conditions,
                "Verified",
                Some(true),
                "Verified",
                "every new commit verified",
                generation,
            );
            set_condition(
                &mut st.conditions,
                "Rendered",
                Some(false),
                e.reason(),
                &e.to_string(),
                generation,
            );
            return Err(e);
        }
    };
    // Signed bundles: verify every reference of the commit, then render with what verified.
    let uses = prepared.bundle_uses();
    let (bundles, bundle_statuses) = cfg.bundles.resolve(&uses, &st.bundles).await;
    let rendered = match tokio::task::spawn_blocking(move || render(&prepared, head, &bundles))
        .await
        .map_err(|e| {
            SyncError::Source(GitSourceError::Object {
                id: head.to_string(),
                message: format!("render task failed: {e}"),
            })
        })? {
        Ok(r) => r,
        Err(e) => {
            set_condition(
                &mut st.conditions,
                "Rendered",
                Some(false),
                e.reason(),
                &e.to_string(),
                generation,
            );
            return Err(e);
        }
    };
    let file_of = |object: &str| {
        uses.iter()
            .find(|u| u.object == object)
            .map(|u| u.file.clone())
            .unwrap_or_default()
    };
    let mut bundle_failures = Vec::new();
    for b in &bundle_statuses {
        let Some(reason) = &b.reason else { continue };
        let kept = match &b.verified {
            Some(v) => format!("the last verified bundle {v} stays in use"),
            None => "nothing was verified for it before, so the object is held back".to_string(),
        };
        bundle_failures.push((b.object.clone(), reason.clone()));
        st.failures.push(ObjectFailure {
            object: b.object.clone(),
            source: file_of(&b.object),
            reason: reason.clone(),
            message: format!(
                "{} {}: {}; {kept}",
                b.field,
                b.reference,
                b.message.as_deref().unwrap_or_default()
            ),
        });
    }
    for h in &rendered.held_back {
        if !bundle_failures.iter().any(|(o, _)| *o == h.object) {
            st.failures.push(ObjectFailure {
                object: h.object.clone(),
                source: h.file.clone(),
                reason: "HeldBack".into(),
                message: h.reason.clone(),
            });
        }
    }
    let verified_count = bundle_statuses
        .iter()
        .filter(|b| b.reason.is_none())
        .count();
    if let Some((object, reason)) = bundle_failures.first() {
        set_condition(
            &mut st.conditions,
            "BundlesVerified",
            Some(false),
            reason,
            &format!(
                "{} of {} signed bundle reference(s) did not verify (first: {object}); {} object(s) held back{}",
                bundle_failures.len(),
                bundle_statuses.len(),
                rendered.held_back.len(),
                if rendered.held_back.is_empty() {
                    ""
                } else {
                    ", prune paused"
                }
            ),
            generation,
        );
    } else {
        set_condition(
            &mut st.conditions,
            "BundlesVerified",
            Some(true),
            "Verified",
            &format!("{verified_count} signed bundle reference(s) verified"),
            generation,
        );
    }
    st.bundles = bundle_statuses;
    let signers: std::collections::BTreeSet<String> = verification
        .commits
        .iter()
        .flat_map(|c| c.signers.iter().map(|s| s.signer.clone()))
        .collect();
    st.last_verified_revision = Some(head.to_string());
    set_condition(
        &mut st.conditions,
        "Verified",
        Some(true),
        "Verified",
        &format!("every commit up to {head} verified"),
        generation,
    );
    set_condition(
        &mut st.conditions,
        "Rendered",
        Some(true),
        "Rendered",
        &format!(
            "{} objects, digest {}",
            rendered.objects.len(),
            rendered.digest
        ),
        generation,
    );

    lap("verify+render", &mut timings);
    // Apply.
    let applier = Applier::new(client.clone(), cfg.apply.clone());
    let apply = match applier.apply(&rendered).await {
        Ok(a) => a,
        Err(e) => {
            set_condition(
                &mut st.conditions,
                "Applied",
                Some(false),
                e.reason(),
                &e.to_string(),
                generation,
            );
            return Err(e.into());
        }
    };
    for o in apply.objects.iter() {
        let (reason, message) = match &o.action {
            Action::Failed(m) if m.contains("conflict") => ("Conflict", m.clone()),
            Action::Failed(m) => ("ApplyFailed", m.clone()),
            Action::Skipped => (
                "Skipped",
                "not applied because an earlier object failed".to_string(),
            ),
            Action::Drifted(m) => (
                "Drifted",
                format!("changed in the cluster at {m}; not restored because self-heal is off"),
            ),
            _ => continue,
        };
        st.failures.push(ObjectFailure {
            object: o.object.clone(),
            source: o.source.clone(),
            reason: reason.into(),
            message,
        });
    }
    let rendered_inventory: Vec<InventoryEntry> =
        rendered.objects.iter().map(status::entry_of).collect();
    let old_inventory: Vec<InventoryEntry> = st
        .inventory
        .iter()
        .filter_map(|s| InventoryEntry::parse(s))
        .collect();

    lap("apply", &mut timings);
    // Prune, only after every object applied.
    let mut prune_results = Vec::new();
    let mut prune_refused = None;
    if !rendered.held_back.is_empty() {
        tracing::info!(
            held_back = rendered.held_back.len(),
            "prune paused: objects are held back until their signed bundles verify"
        );
    }
    if apply.is_success() && !cfg.apply.dry_run && rendered.held_back.is_empty() {
        let mut opts = cfg.prune.clone();
        if let Some(p) = &spec.prune {
            if let Some(enabled) = p.enabled {
                opts.enabled = opts.enabled && enabled;
            }
            if let Some(max) = p.max_delete_percent {
                opts.max_delete_percent = max;
            }
        }
        if spec.allow_mass_prune_for.as_deref() == Some(&head.to_string()) {
            opts.allow_mass_prune = true;
        }
        opts.allow_empty = opts.allow_empty || rendered.allow_empty_prune;
        match prune::plan(&old_inventory, &rendered_inventory, &opts) {
            Err(refusal) => {
                prune_refused = Some(refusal.to_string());
                st.failures.push(ObjectFailure {
                    object: format!("{} objects", old_inventory.len()),
                    source: String::new(),
                    reason: refusal.label().into(),
                    message: refusal.to_string(),
                });
            }
            Ok(planned) if !planned.is_empty() => {
                let results = prune::execute(&applier, &rendered.repository, &planned, false, stop)
                    .await
                    .map_err(|e| SyncError::Apply(ApplyError::Kube(e)))?;
                for (e, r) in &results {
                    if let PruneResult::Failed(m) | PruneResult::Kept(m) = r {
                        st.failures.push(ObjectFailure {
                            object: e.key(),
                            source: String::new(),
                            reason: "PruneFailed".into(),
                            message: m.clone(),
                        });
                    }
                }
                prune_results = results;
            }
            Ok(_) => {}
        }
    }

    // Inventory: what is applied now, plus what could not be deleted yet.
    if apply.is_success() && !cfg.apply.dry_run {
        let mut inv: std::collections::BTreeSet<String> =
            rendered_inventory.iter().map(ToString::to_string).collect();
        let deleted: std::collections::BTreeSet<String> = prune_results
            .iter()
            .filter(|(_, r)| r.leaves_inventory())
            .map(|(e, _)| e.to_string())
            .collect();
        let rendered_keys: std::collections::BTreeSet<String> =
            rendered_inventory.iter().map(InventoryEntry::key).collect();
        for e in &old_inventory {
            if !deleted.contains(&e.to_string()) && !rendered_keys.contains(&e.key()) {
                inv.insert(e.to_string());
            }
        }
        st.inventory = inv.into_iter().collect();
    } else if st.inventory.is_empty() {
        // First sync failed part-way: remember what exists, so a later prune can find it.
        st.inventory = apply
            .objects
            .iter()
            .zip(&rendered.objects)
            .filter(|(o, _)| {
                matches!(
                    o.action,
                    Action::Created | Action::Configured | Action::Unchanged
                )
            })
            .map(|(_, r)| status::entry_of(r).to_string())
            .collect();
    }

    let applied_ok = apply.is_success();
    // A sync that changed nothing and found nothing wrong leaves the Applied condition and the
    // counts of the last real change as they were, so a no-op sync writes nothing.
    let quiet = applied_ok
        && apply.writes == 0
        && prune_results.is_empty()
        && prune_refused.is_none()
        && st.failures.is_empty()
        && st
            .conditions
            .iter()
            .any(|c| c.type_ == "Applied" && c.status == "True");
    if !quiet {
        set_condition(
            &mut st.conditions,
            "Applied",
            Some(applied_ok && prune_refused.is_none()),
            if !applied_ok {
                "ApplyFailed"
            } else if prune_refused.is_some() {
                "PruneRefused"
            } else {
                "Applied"
            },
            &if applied_ok {
                format!(
                    "{} created, {} configured, {} unchanged, {} pruned; {} write request(s)",
                    apply.count(|a| *a == Action::Created),
                    apply.count(|a| *a == Action::Configured),
                    apply.count(|a| *a == Action::Unchanged),
                    prune_results
                        .iter()
                        .filter(|(_, r)| *r == PruneResult::Deleted)
                        .count(),
                    apply.writes
                )
            } else {
                status::failure_summary(&st.failures)
            },
            generation,
        );
    }

    lap("prune", &mut timings);
    // Health: wait only when something changed; otherwise one look.
    let changed = apply.count(|a| matches!(a, Action::Created | Action::Configured)) > 0;
    let timeout = if changed {
        cfg.health_timeout
    } else {
        Duration::ZERO
    };
    let health = health::wait(
        &applier,
        &rendered,
        timeout,
        (!changed && !apply.live_before.is_empty()).then_some(&apply.live_before),
    )
    .await
    .map_err(|e| SyncError::Apply(ApplyError::Kube(e)))?;
    let (h_ok, h_reason, h_msg) = match health.healthy() {
        Some(true) => (
            Some(true),
            "Healthy",
            if health.unreported > 0 {
                format!(
                    "{} objects ready; {} kars object(s) have no status (is the kars controller running?)",
                    health.checked - health.unreported,
                    health.unreported
                )
            } else {
                format!("{} objects ready", health.checked)
            },
        ),
        Some(false) => (
            Some(false),
            "Unhealthy",
            health
                .not_ready
                .iter()
                .take(3)
                .map(|(k, h)| format!("{k}: {h:?}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        None => (
            None,
            "Progressing",
            health
                .not_ready
                .iter()
                .take(3)
                .map(|(k, h)| format!("{k}: {h:?}"))
                .collect::<Vec<_>>()
                .join("; "),
        ),
    };
    set_condition(
        &mut st.conditions,
        "Healthy",
        h_ok,
        h_reason,
        &h_msg,
        generation,
    );
    for (k, h) in &health.not_ready {
        if let crate::health::ObjectHealth::Unhealthy(m) = h {
            st.failures.push(ObjectFailure {
                object: k.clone(),
                source: String::new(),
                reason: "Unhealthy".into(),
                message: m.clone(),
            });
        }
    }

    // Ready means enforced: every running router reports the digests just rendered.
    let mut not_enforced = Vec::new();
    if !cfg.apply.dry_run {
        let manifests: Vec<&serde_json::Value> =
            rendered.objects.iter().map(|o| &o.manifest).collect();
        let results =
            crate::enforcement::check_all(applier.client(), &crate::reqwest_client(), &manifests)
                .await;
        let (mut enforced, mut waiting) = (0, 0);
        for (deployment, result) in &results {
            match result {
                crate::enforcement::Enforcement::Enforced { .. } => enforced += 1,
                crate::enforcement::Enforcement::NoRunningPods => waiting += 1,
                crate::enforcement::Enforcement::NotEnforced(problems) => {
                    not_enforced.push(deployment.clone());
                    st.failures.push(ObjectFailure {
                        object: format!("Deployment/{deployment}"),
                        source: String::new(),
                        reason: "NotEnforced".into(),
                        message: problems.join("; "),
                    });
                }
            }
        }
        let (status, reason, message) = if !not_enforced.is_empty() {
            (
                Some(false),
                "NotEnforced",
                format!(
                    "{} router(s) do not report the rendered policies (first: {})",
                    not_enforced.len(),
                    not_enforced[0]
                ),
            )
        } else if enforced > 0 {
            (
                Some(true),
                "Enforced",
                format!(
                    "{enforced} router(s) report the rendered policies; {waiting} have no running pod"
                ),
            )
        } else {
            (
                None,
                "NoRunningRouters",
                format!("{waiting} sandbox(es) have no running router pod to ask yet"),
            )
        };
        set_condition(
            &mut st.conditions,
            "Enforced",
            status,
            reason,
            &message,
            generation,
        );
    }

    if applied_ok && !cfg.apply.dry_run {
        let before_revision = st.last_applied_revision.clone();
        st.last_applied_revision = Some(head.to_string());
        // A range with no new commits keeps the signers of the commits applied before.
        if !signers.is_empty() {
            st.last_applied_signers = signers.into_iter().collect();
        }
        if st.last_applied_revision != before_revision || st.last_applied_at.is_none() {
            st.last_applied_at = Some(kars_renderer::time::format_rfc3339(unix_now()));
        }
        st.rendered_digest = Some(rendered.digest.clone());
    }
    if !quiet {
        st.counts = Some(SyncCounts {
            rendered: rendered.objects.len() as u32,
            applied: apply.count(|a| matches!(a, Action::Created | Action::Configured)) as u32,
            unchanged: apply.count(|a| *a == Action::Unchanged) as u32,
            pruned: prune_results
                .iter()
                .filter(|(_, r)| *r == PruneResult::Deleted)
                .count() as u32,
            failed: st.failures.len() as u32,
            writes: apply.writes as u32,
        });
    }
    lap("health", &mut timings);
    tracing::debug!(?timings, "sync phases (seconds)");
    Ok(SyncOutcome {
        timings,
        commit: head.to_string(),
        repository: rendered.repository.clone(),
        cluster: rendered.cluster.clone(),
        digest: rendered.digest.clone(),
        verification,
        apply,
        prune: prune_results
            .into_iter()
            .map(|(e, r)| (e.key(), r))
            .collect(),
        prune_refused,
        health,
        bundle_failures,
        not_enforced,
        held_back: rendered
            .held_back
            .iter()
            .map(|h| h.object.clone())
            .collect(),
    })
}

/// Builds a kube client from a kubeconfig file, or from the environment (in-cluster config,
/// `KUBECONFIG`, `~/.kube/config`) when `None`.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, kube::Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(kube::Error::InferKubeconfig)?
        }
        None => kube::Config::infer()
            .await
            .map_err(kube::Error::InferConfig)?,
    };
    kube::Client::try_from(config)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_from_sources() {
        assert_eq!(super::default_name("/tmp/x/policy-repo"), "policy-repo");
        assert_eq!(
            super::default_name("https://git.example/org/Kars_Policies.git"),
            "kars-policies"
        );
        assert_eq!(super::default_name("git@host:org/repo.git"), "repo");
        assert_eq!(super::default_name("///"), "policy-repo");
    }
}
