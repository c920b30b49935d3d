//! The flags of the commands that read a policy repository and compare it with a cluster
//! (`sync`, `diff`, `why`): where the repository is, whom to trust, which PolicyRepo records
//! it; and the mapping of a sync's errors to exit codes and one-line messages.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kars_gitops_agent::apply::ApplyOptions;
use kars_gitops_agent::bundles::BundleArgs;
use kars_gitops_agent::prune::PruneOptions;
use kars_gitops_agent::source::{self, Credentials, GitSourceError};
use kars_gitops_agent::sync::{SyncConfig, SyncError, repository_name};
use kars_renderer::RenderError;

use crate::access::{self, ClusterArgs, Connected};
use crate::failure::{CHECK, Failure, UNREACHABLE, USAGE};

/// Where to get the repository and whom to trust.
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// The policy repository: a local Git repository path, or a URL (https://, ssh://,
    /// git://, file://). A local path is recorded as an absolute path.
    #[arg(default_value = ".")]
    pub source: String,
    /// Branch to follow (default: the current HEAD of a local path, main for a URL).
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// Which cluster of kars.yaml to render.
    #[arg(long)]
    pub cluster: Option<String>,
    /// git's allowed_signers file of trusted SSH signers.
    #[arg(long, value_name = "FILE", env = "KARS_ALLOWED_SIGNERS")]
    pub allowed_signers: Option<PathBuf>,
    /// Armored OpenPGP keyring of trusted signers.
    #[arg(long, value_name = "FILE", env = "KARS_OPENPGP_KEYRING")]
    pub openpgp_keyring: Option<PathBuf>,
    /// TrustPolicy file (signers, path rules, repository signer list, forge keys).
    #[arg(long, value_name = "FILE", env = "KARS_TRUST")]
    pub trust: Option<PathBuf>,
    /// Name of the PolicyRepo object (default: metadata.name of the repository's kars.yaml,
    /// so every checkout of one repository records into the same PolicyRepo).
    #[arg(long)]
    pub name: Option<String>,
    /// HTTPS token file (sent as the password).
    #[arg(long, value_name = "FILE", env = "KARS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// SSH private key for ssh:// sources.
    #[arg(long, value_name = "FILE", env = "KARS_SSH_KEY")]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file for ssh:// sources.
    #[arg(long, value_name = "FILE", env = "KARS_KNOWN_HOSTS")]
    pub known_hosts: Option<PathBuf>,
    /// Where fetched repositories are cached (default: ~/.cache/kars/repos).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten, next_help_heading = "Signed bundles")]
    pub bundles: BundleArgs,
    #[command(flatten)]
    pub cluster_args: ClusterArgs,
}

impl SourceArgs {
    /// The source as the PolicyRepo records it: a local path made absolute, a URL as given.
    pub fn absolute_source(&self) -> String {
        if source::is_remote_url(&self.source) {
            return self.source.clone();
        }
        std::path::absolute(&self.source)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| self.source.clone())
    }

    /// The sync configuration these flags describe; the name is empty when `--name` is not
    /// given (see [`SourceArgs::named_config`]).
    pub fn config(&self) -> Result<SyncConfig, Failure> {
        let trust = kars_gitops_agent::verify::load_policy(
            self.trust.as_deref(),
            self.allowed_signers.as_deref(),
            self.openpgp_keyring.as_deref(),
        )
        .map_err(|e| {
            Failure::usage(e).hint(
                "pass the trusted signers with --allowed-signers (or KARS_ALLOWED_SIGNERS), --openpgp-keyring or --trust",
            )
        })?;
        let token = match &self.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading --token-file {}", p.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let cache_dir = self.cache_dir.clone().unwrap_or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir)
                .join(".cache/kars/repos")
        });
        Ok(SyncConfig {
            source: self.absolute_source(),
            branch: self.branch.clone(),
            cluster: self.cluster.clone(),
            trust,
            credentials: Credentials {
                token,
                username: None,
                ssh_key: self.ssh_key.clone(),
                ssh_known_hosts: self.known_hosts.clone(),
            },
            status_namespace: self.cluster_args.namespace.clone(),
            name: self.name.clone().unwrap_or_default(),
            apply: ApplyOptions::default(),
            prune: PruneOptions::default(),
            health_timeout: Duration::ZERO,
            since_override: None,
            bundles: self
                .bundles
                .verifier(Some(&cache_dir))
                .map_err(|e| Failure::usage(anyhow::anyhow!("signed bundles: {e}")))?,
            cache_dir,
            progress: Default::default(),
            enforcement: Default::default(),
            sre: Default::default(),
            sync_log: None,
            render_memo: None,
            live_view: None,
        })
    }

    /// [`SourceArgs::config`] with the PolicyRepo name resolved (from `kars.yaml` at the head
    /// when `--name` is not given).
    pub async fn named_config(&self) -> Result<SyncConfig, Failure> {
        let mut cfg = self.config()?;
        if cfg.name.is_empty() {
            let probe = cfg.clone();
            cfg.name = tokio::task::spawn_blocking(move || repository_name(&probe))
                .await
                .context("reading kars.yaml")?
                .map_err(|e| sync_failure(e, None))?;
        }
        Ok(cfg)
    }

    /// The head of the source, verified and rendered, next to the cluster (`kars diff`,
    /// `kars why`): the sync's own steps, read-only.
    pub async fn inspect(
        &self,
    ) -> Result<(kars_gitops_agent::inspect::Inspection, SyncConfig), Failure> {
        let cfg = self.named_config().await?;
        let at = access::connect(&self.cluster_args).await?;
        let view = kars_gitops_agent::inspect::inspect(&at.client, &cfg)
            .await
            .map_err(|e| sync_failure(e, Some(&at)))?;
        Ok((view, cfg))
    }

    /// A note when a local repository's working tree differs from the commit a sync reads.
    pub fn note_worktree(&self, cfg: &SyncConfig) {
        if let Some(n) = worktree_difference(&self.source, &cfg.effective_branch()) {
            crate::ui::warn(format!(
                "{n}; this command reads the commit, not the working tree (commit and sign the changes to include them)"
            ));
        }
    }
}

/// How a local repository's working tree differs from `rev` (`None`: the same, or not a local
/// repository).
pub fn worktree_difference(path: &str, rev: &str) -> Option<String> {
    if source::is_remote_url(path) {
        return None;
    }
    let repo = source::open(std::path::Path::new(path)).ok()?;
    let commit = source::resolve_commit(&repo, rev).ok()?;
    let committed = source::read_tree(
        &repo,
        commit,
        kars_renderer::source::SourceLimits::default(),
    )
    .ok()?;
    let worktree = kars_renderer::RepoTree::from_dir(
        std::path::Path::new(path),
        kars_renderer::source::SourceLimits::default(),
    )
    .ok()?;
    let a: std::collections::BTreeMap<&str, &[u8]> = committed.files().collect();
    let b: std::collections::BTreeMap<&str, &[u8]> = worktree.files().collect();
    let mut differing: Vec<&str> = a
        .iter()
        .filter(|(p, bytes)| b.get(*p) != Some(*bytes))
        .map(|(p, _)| *p)
        .chain(b.keys().filter(|p| !a.contains_key(*p)).copied())
        .collect();
    if differing.is_empty() {
        return None;
    }
    differing.sort_unstable();
    differing.dedup();
    let shown: Vec<&str> = differing.iter().take(5).copied().collect();
    let more = differing.len().saturating_sub(shown.len());
    Some(format!(
        "the working tree of {path} differs from {rev} ({} {}: {}{})",
        &commit.to_string()[..12],
        if differing.len() == 1 {
            "file"
        } else {
            "files"
        },
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    ))
}

/// A sync error as a failure with its exit code, one line and what to do. `at` names the
/// cluster for errors of talking to it.
pub fn sync_failure(e: SyncError, at: Option<&Connected>) -> Failure {
    let reason = e.reason();
    let f = match e {
        SyncError::Source(GitSourceError::Fetch { url, message }) => Failure::msg(
            UNREACHABLE,
            format!("cannot fetch {url}: {message}"),
        )
        .hint("check the URL, the network and the credentials (--token-file, --ssh-key, --known-hosts)"),
        SyncError::Source(
            ref s @ (GitSourceError::NotARepository { .. } | GitSourceError::UnknownRevision { .. }),
        ) => {
            let hint = match s {
                GitSourceError::UnknownRevision { .. } => "name an existing branch with --branch",
                _ => "pass the path of a Git repository (or a URL)",
            };
            Failure::msg(USAGE, s).hint(hint)
        }
        SyncError::Render {
            source: RenderError::Cluster(m),
            commit,
        } => Failure::msg(USAGE, format!("commit {commit}: {m}"))
            .hint("name a cluster of kars.yaml with --cluster"),
        SyncError::Status(ref name, ref k) => match at {
            Some(at) => access::explain(k, &format!("PolicyRepo {name}"), at),
            None => Failure::msg(UNREACHABLE, e.to_string()),
        },
        SyncError::Apply(kars_gitops_agent::apply::ApplyError::Kube(ref k)) => match at {
            Some(at) => access::explain(k, "applying", at),
            None => Failure::msg(UNREACHABLE, e.to_string()),
        },
        SyncError::Unnamed { .. } => Failure::msg(USAGE, e.to_string()),
        other => Failure::msg(CHECK, other),
    };
    if f.reason.is_none() {
        f.reason(reason)
    } else {
        f
    }
}
