//! One sync: source → verify → render → apply, the code path both `kars sync` and the agent run.

use std::path::{Path, PathBuf};

use kars_renderer::source::SourceLimits;
use kars_renderer::{Bundles, RenderError, Rendered};

use crate::apply::{Applier, ApplyError, ApplyOptions, ApplyReport};
use crate::source::{self, GitSourceError};
use crate::verify::{RangeVerdict, TrustPolicy, Verifier, range::VerifyError, unix_now};

/// What to sync.
#[derive(Clone, Debug)]
pub struct SyncRequest {
    /// A local Git repository (working directory or bare).
    pub repo_path: PathBuf,
    /// The revision to apply (branch, tag, commit, `HEAD`).
    pub rev: String,
    /// The cluster of `kars.yaml` to render (the only one when `None`).
    pub cluster: Option<String>,
    /// The last applied commit; commits after it are verified (the whole history when `None`).
    pub since: Option<String>,
    /// Who may sign.
    pub trust: TrustPolicy,
}

/// The result of a sync that ran to the end (object failures included).
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
}

/// Why a sync stopped before applying (or could not finish).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Reading the repository failed.
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
    /// Applying could not run.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

impl SyncError {
    /// A stable short reason for status conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::Source(_) => "SourceUnavailable",
            SyncError::VerifyFailed(_) => "VerificationError",
            SyncError::Untrusted(_) => "VerificationFailed",
            SyncError::Render { .. } => "RenderFailed",
            SyncError::Apply(e) => e.reason(),
        }
    }
}

/// Resolves, verifies and renders one revision of a local repository. Nothing is rendered
/// unless every commit since the last applied one verifies.
pub fn verify_and_render(req: &SyncRequest) -> Result<(String, RangeVerdict, Rendered), SyncError> {
    let repo = source::open(&req.repo_path)?;
    let commit = source::resolve_commit(&repo, &req.rev)?;
    let since = match &req.since {
        Some(s) => Some(source::resolve_commit(&repo, s)?),
        None => None,
    };
    let verdict = Verifier::new(&repo, &req.trust, unix_now()).verify_range(since, commit)?;
    if !verdict.ok() {
        return Err(SyncError::Untrusted(Box::new(verdict)));
    }
    let tree = source::read_tree(&repo, commit, SourceLimits::default())?;
    let rendered = kars_renderer::render_tree(&tree, req.cluster.as_deref(), &Bundles::none())
        .map_err(|source| SyncError::Render {
            commit: commit.to_string(),
            source,
        })?;
    Ok((commit.to_string(), verdict, rendered))
}

/// Runs one sync against the cluster `client` talks to.
pub async fn sync_once(
    client: kube::Client,
    req: &SyncRequest,
    options: ApplyOptions,
) -> Result<SyncOutcome, SyncError> {
    let owned = req.clone();
    // gix is blocking: keep it off the async workers.
    let (commit, verification, rendered) =
        tokio::task::spawn_blocking(move || verify_and_render(&owned))
            .await
            .map_err(|e| {
                SyncError::Source(GitSourceError::Object {
                    id: req.rev.clone(),
                    message: format!("reader task failed: {e}"),
                })
            })??;
    let applier = Applier::new(client, options);
    let apply = applier.apply(&rendered).await?;
    Ok(SyncOutcome {
        commit,
        repository: rendered.repository.clone(),
        cluster: rendered.cluster.clone(),
        digest: rendered.digest.clone(),
        verification,
        apply,
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
