//! One sync: source → verify → bundles → render → apply → prune → health → enforcement →
//! status. Both the agent and `kars sync` run [`sync_once`], against the same `PolicyRepo`
//! status object, so either one continues where the other stopped (last applied commit,
//! inventory); `kars render`, `kars diff` and `kars why` run the same [`pipeline`] steps up to
//! where they stop.
//!
//! The shape: [`pipeline`] runs the steps and records each one's typed outcome in a
//! [`pipeline::Run`] (stopping at the first step that fails); [`report`] turns a run into the
//! PolicyRepo status (conditions, failures, inventory, counts) as a pure function; [`events`]
//! publishes Kubernetes Events for the transitions; [`sync_once`] strings them together with
//! the status read and write and the metrics.
//!
//! Failure semantics: a source, verification or render failure applies nothing and deletes
//! nothing; an apply failure (the API server refused an object, even in the dry run) writes
//! nothing when caught by the dry run, and never prunes; pruning runs only after every object
//! applied. The status says which step failed, why, and for which object.

pub mod events;
pub mod memo;
pub mod pipeline;
pub mod report;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use kars_contract::Reason;
use kars_renderer::RenderError;

use crate::apply::{Action, ApplyError, ApplyOptions, ApplyReport};
use crate::bundles::BundleVerifier;
use crate::health::HealthReport;
use crate::metrics::{Metrics, ReasonLabel, ResultLabel};
use crate::progress::Progress;
use crate::prune::{PruneOptions, PruneResult};
use crate::source::{self, Credentials, GitSourceError};
use crate::status::{self, PolicyRepoSpec, PolicyRepoStatus};
use crate::verify::{RangeVerdict, TrustPolicy, range::VerifyError};

pub use crate::cluster::kube_client;

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
    /// Apply options (`dry_run` makes the whole sync a dry run: prune only reports).
    pub apply: ApplyOptions,
    /// Prune options (the PolicyRepo spec can tighten them).
    pub prune: PruneOptions,
    /// How long to wait for applied objects to become healthy (zero: one look, no waiting).
    pub health_timeout: Duration,
    /// Verify from this commit instead of the last applied one (CLI `--since`).
    pub since_override: Option<String>,
    /// Verifies the signed bundles the commit references.
    pub bundles: BundleVerifier,
    /// Where progress goes (`kars sync` shows it; the agent passes none).
    pub progress: Progress,
    /// Whether Ready waits for sandboxes whose router pods are not running yet.
    pub enforcement: crate::enforcement::Mode,
    /// How SRE actions run and where they are reported.
    pub sre: crate::sre::SreSettings,
    /// The agent's signed log of what each sync applied (`None`: not kept, as in `kars sync`).
    pub sync_log: Option<std::sync::Arc<crate::sync_log::SyncLog>>,
    /// The agent's live view, shared by its syncs (`None` in one-shot runs: every sync lists
    /// what it compares with).
    pub live_view: Option<std::sync::Arc<crate::live::LiveView>>,
    /// The agent's last render, reused while the head tree and bundles are the same (`None` in
    /// one-shot runs).
    pub render_memo: Option<std::sync::Arc<memo::RenderMemo>>,
}

impl SyncConfig {
    /// The PolicyRepo this sync records into, `namespace/name`: the owner written on every
    /// applied object.
    pub fn owner(&self) -> String {
        format!("{}/{}", self.status_namespace, self.name)
    }

    /// The branch actually followed.
    pub fn effective_branch(&self) -> String {
        match &self.branch {
            Some(b) => b.clone(),
            None if source::is_remote_url(&self.source) => "main".to_string(),
            None => "HEAD".to_string(),
        }
    }
}

/// The name of the PolicyRepo for `cfg`'s source when none is given: `metadata.name` of the
/// `kars.yaml` at the head of the followed branch (fetched first for a URL). Blocking.
pub fn repository_name(cfg: &SyncConfig) -> Result<String, SyncError> {
    let fetched = source::checkout(
        &cfg.source,
        &cfg.effective_branch(),
        &cfg.cache_dir,
        &cfg.trust.approval_tag_prefix,
        &cfg.credentials,
    )?;
    let text = source::read_file(&fetched.repo, fetched.head, "kars.yaml")?;
    text.as_deref()
        .and_then(kars_renderer::config::repository_name)
        .ok_or_else(|| SyncError::Unnamed {
            commit: fetched.head.to_string(),
        })
}

/// The result of a sync that reached the apply step.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
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
    /// Prune results (empty when nothing left Git; `wouldDelete` in a dry run).
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
    /// Status patches written on kars CRs after the enforce step (0 when nothing changed).
    pub kars_status_patched: usize,
    /// GET and LIST requests sent to learn the live state: the apply's, the health look's, the
    /// enforcement check's (sandbox pods, router admin tokens) and the kars status writer's (0
    /// in a no-op sync of an agent whose live view is current).
    pub reads: usize,
    /// True when the render was the render memo's (same head tree, same bundles): the tree was
    /// not read, validated or rendered again.
    pub render_reused: bool,
    /// True while an SRE action's recovery is being observed (the agent looks again within
    /// 10 s).
    pub sre_observing: bool,
    /// The reason word of the Ready condition (`Synced` when converged).
    pub ready: Reason,
}

impl SyncOutcome {
    /// True when the cluster matches the verified head (everything applied, pruning done,
    /// every bundle verified, every running router enforcing).
    pub fn converged(&self) -> bool {
        self.ready == Reason::Synced
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
    /// No PolicyRepo name was given and the head's `kars.yaml` has no valid `metadata.name`.
    #[error(
        "commit {commit}: kars.yaml has no valid metadata.name to name the PolicyRepo after; fix kars.yaml or pass --name"
    )]
    Unnamed {
        /// The head.
        commit: String,
    },
    /// A step of the sync crashed (a bug): nothing more was done.
    #[error("the {step} step stopped unexpectedly: {message}")]
    Crashed {
        /// The step.
        step: &'static str,
        /// The panic or cancellation.
        message: String,
    },
}

impl SyncError {
    /// The reason word (status conditions, metrics, CLI).
    pub fn reason(&self) -> Reason {
        match self {
            SyncError::Source(e) => e.reason(),
            SyncError::VerifyFailed(_) => Reason::VerificationError,
            SyncError::Untrusted(v) => v.reason().unwrap_or(Reason::VerificationFailed),
            SyncError::Render { source, .. } => source.reason(),
            SyncError::Apply(e) => e.reason(),
            SyncError::Status(..) => Reason::StatusUnavailable,
            SyncError::Suspended => Reason::Suspended,
            SyncError::Unnamed { .. } => Reason::ValidationFailed,
            SyncError::Crashed { .. } => Reason::TaskFailed,
        }
    }
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
    let dry_run = cfg.apply.dry_run;
    // A dry run writes nothing: not even the PolicyRepo it would create.
    let pr = if dry_run {
        status::get(&client, &cfg.status_namespace, &cfg.name)
            .await
            .map_err(|e| SyncError::Status(cfg.owner(), e))?
            .unwrap_or_else(|| status::PolicyRepo::new(&cfg.name, spec))
    } else {
        status::get_or_create(&client, &cfg.status_namespace, &cfg.name, spec)
            .await
            .map_err(|e| SyncError::Status(cfg.owner(), e))?
    };
    let before: PolicyRepoStatus = pr.status.clone().unwrap_or_default();
    let reconcile_requested = pr
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(kars_contract::labels::RECONCILE_ANNOTATION))
        .cloned();
    let run = if pr.spec.suspend {
        pipeline::Run::suspended()
    } else {
        let cluster = crate::cluster::Cluster::new(client.clone());
        pipeline::run(&cluster, cfg, &pr.spec, &before, stop).await
    };
    let mut after = report::status(&before, &run, dry_run, pr.metadata.generation);
    if reconcile_requested.is_some() {
        after.last_handled_reconcile_at = reconcile_requested;
    }
    let result = run.into_result();
    if dry_run {
        return result;
    }
    // A no-op sync leaves the status as it was and sends no write.
    if after != before {
        status::write_status(&client, &cfg.status_namespace, &cfg.name, &before, &after)
            .await
            .map_err(|e| SyncError::Status(cfg.owner(), e))?;
    }
    if let (Some(log), Ok(outcome)) = (&cfg.sync_log, &result) {
        match log
            .record(outcome, before.last_applied_revision.as_deref())
            .await
        {
            Ok(Some(seq)) => {
                tracing::info!(seq, commit = %outcome.commit, "recorded in the sync log")
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "the sync was not recorded in the sync log"),
        }
    }
    events::publish(&client, &pr, &before, &after, &result).await;
    if let Some(m) = metrics {
        record_metrics(m, &result, started.elapsed());
    }
    result
}

fn record_metrics(m: &Metrics, result: &Result<SyncOutcome, SyncError>, took: Duration) {
    let reason = match result {
        Ok(o) => o.ready,
        Err(e) => e.reason(),
    };
    m.sync_duration
        .get_or_create(&ResultLabel {
            result: reason.as_str().to_string(),
        })
        .observe(took.as_secs_f64());
    match result {
        Err(e @ SyncError::Untrusted(_)) => {
            m.verification_failures
                .get_or_create(&ReasonLabel {
                    reason: e.reason().as_str().to_string(),
                })
                .inc();
        }
        Err(_) => {}
        Ok(o) => {
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
                m.last_applied_timestamp
                    .set(kars_contract::time::unix_now() as f64);
            }
        }
    }
}
