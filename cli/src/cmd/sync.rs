//! `kars sync SOURCE --once`: the agent's sync, run once from the command line, recorded in the
//! same PolicyRepo status object the agent uses.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use kars_gitops_agent::apply::{Action, ApplyOptions};
use kars_gitops_agent::bundles::BundleArgs;
use kars_gitops_agent::prune::{PruneOptions, PruneResult};
use kars_gitops_agent::source::Credentials;
use kars_gitops_agent::status::DEFAULT_NAMESPACE;
use kars_gitops_agent::sync::{SyncConfig, SyncError, default_name, sync_once};

use crate::Failure;

/// Where to get the repository and whom to trust: shared by `sync`, `diff` and `status`.
#[derive(clap::Args, Debug, Clone)]
pub struct SourceArgs {
    /// The policy repository: a local Git repository path, or a URL (https://, ssh://, git://, file://).
    pub source: String,
    /// Branch to follow (default: the current HEAD of a local path, main for a URL).
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// Which cluster of kars.yaml to render.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Kubeconfig of the target cluster (default: $KUBECONFIG, ~/.kube/config or in-cluster).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// git's allowed_signers file of trusted SSH signers.
    #[arg(long, value_name = "FILE")]
    pub allowed_signers: Option<PathBuf>,
    /// Armored OpenPGP keyring of trusted signers.
    #[arg(long, value_name = "FILE")]
    pub openpgp_keyring: Option<PathBuf>,
    /// TrustPolicy file (signers, path rules, repository signer list, forge keys).
    #[arg(long, value_name = "FILE")]
    pub trust: Option<PathBuf>,
    /// Name of the PolicyRepo status object (default: from the source's last path segment).
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace of the PolicyRepo status object.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub status_namespace: String,
    /// HTTPS token file (sent as the password).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// SSH private key for ssh:// sources.
    #[arg(long, value_name = "FILE")]
    pub ssh_key: Option<PathBuf>,
    /// known_hosts file for ssh:// sources.
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Where fetched repositories are cached.
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    #[command(flatten)]
    pub bundles: BundleArgs,
}

impl SourceArgs {
    /// The head of the source, verified and rendered, next to the cluster (`kars diff`,
    /// `kars why`): the sync's own steps, read-only.
    pub async fn inspect(&self) -> Result<kars_gitops_agent::inspect::Inspection, Failure> {
        let cfg = self.config()?;
        let client = super::connect(self.kubeconfig.as_deref()).await?;
        kars_gitops_agent::inspect::inspect(&client, &cfg)
            .await
            .map_err(|e| Failure::check(anyhow::anyhow!("{e}")))
    }

    /// The sync configuration these arguments describe.
    pub fn config(&self) -> Result<SyncConfig, Failure> {
        let trust = kars_gitops_agent::verify::load_policy(
            self.trust.as_deref(),
            self.allowed_signers.as_deref(),
            self.openpgp_keyring.as_deref(),
        )
        .map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
        let token = match &self.token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?
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
            source: self.source.clone(),
            branch: self.branch.clone(),
            cluster: self.cluster.clone(),
            trust,
            credentials: Credentials {
                token,
                username: None,
                ssh_key: self.ssh_key.clone(),
                ssh_known_hosts: self.known_hosts.clone(),
            },
            status_namespace: self.status_namespace.clone(),
            name: self
                .name
                .clone()
                .unwrap_or_else(|| default_name(&self.source)),
            apply: ApplyOptions::default(),
            prune: PruneOptions::default(),
            health_timeout: Duration::ZERO,
            since_override: None,
            bundles: self
                .bundles
                .verifier(Some(&cache_dir))
                .map_err(|e| Failure::usage(anyhow::anyhow!("signed bundles: {e}")))?,
            cache_dir,
        })
    }
}

/// Arguments of `kars sync`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Run one sync and exit (the only mode of the CLI; the agent runs continuously).
    #[arg(long)]
    once: bool,
    /// Verify from this commit instead of the last applied one recorded in the cluster.
    #[arg(long)]
    since: Option<String>,
    /// Report what would change without writing anything.
    #[arg(long)]
    dry_run: bool,
    /// Take over fields owned by other field managers.
    #[arg(long)]
    force_conflicts: bool,
    /// Do not delete objects that left Git.
    #[arg(long)]
    no_prune: bool,
    /// Delete even when more than the threshold share of the inventory would go (this sync only).
    #[arg(long)]
    allow_mass_prune: bool,
    /// Wait this long for applied objects to become healthy (e.g. 60s; default: do not wait).
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    wait: Option<Duration>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// `30s`, `5m`, `1h`, `500ms` or plain seconds.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    kars_contract::time::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs `kars sync`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let _ = args.once;
    super::block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<ExitCode, Failure> {
    let mut cfg = args.source.config()?;
    cfg.since_override = args.since.clone();
    cfg.apply.dry_run = args.dry_run;
    cfg.apply.force_conflicts = args.force_conflicts;
    cfg.prune.enabled = !args.no_prune;
    cfg.prune.allow_mass_prune = args.allow_mass_prune;
    cfg.health_timeout = args.wait.unwrap_or(Duration::ZERO);
    let client = super::connect(args.source.kubeconfig.as_deref()).await?;
    let outcome = match sync_once(client, &cfg, None, &|| false).await {
        Ok(o) => o,
        Err(e @ SyncError::Source(_)) => return Err(Failure::usage(anyhow::anyhow!("{e}"))),
        Err(SyncError::Untrusted(verdict)) => {
            for c in verdict.commits.iter().filter(|c| !c.ok()) {
                if let Some(r) = &c.refusal {
                    eprintln!("commit {} {}: {r}", &c.id[..12.min(c.id.len())], r.reason());
                }
            }
            if let Some(h) = &verdict.history {
                eprintln!("{}: {h}", h.reason());
            }
            return Err(Failure::check(anyhow::anyhow!(
                "verification failed; nothing was applied and the cluster is unchanged (status: kubectl -n {} get policyrepo {})",
                cfg.status_namespace,
                cfg.name
            )));
        }
        Err(e) => return Err(Failure::check(anyhow::anyhow!("{e}"))),
    };
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        let signers: std::collections::BTreeSet<&str> = outcome
            .verification
            .commits
            .iter()
            .flat_map(|c| c.signers.iter().map(|s| s.signer.as_str()))
            .collect();
        eprintln!(
            "verified {} new commit(s) up to {}{}",
            outcome.verification.commits.len(),
            outcome.commit,
            if signers.is_empty() {
                String::new()
            } else {
                format!(
                    " (signed by {})",
                    signers.into_iter().collect::<Vec<_>>().join(", ")
                )
            }
        );
        for o in &outcome.apply.objects {
            let what = match &o.action {
                Action::Created => "created".to_string(),
                Action::Configured => "configured".to_string(),
                Action::Unchanged => "unchanged".to_string(),
                Action::WouldChange => "would change (dry run)".to_string(),
                Action::Skipped => "skipped (an earlier object failed)".to_string(),
                Action::Drifted(d) => format!("drifted at {} (self-heal off: left as is)", d.at),
                Action::Failed(r) => format!("FAILED: {}\n    (from {})", r.message, o.source),
            };
            crate::outln!("{} {what}", o.object);
        }
        for s in &outcome.apply.generated_secrets_created {
            crate::outln!("{s} created (random token, generated in the cluster)");
        }
        for (key, r) in &outcome.prune {
            let what = match r {
                PruneResult::Deleted => "pruned".to_string(),
                PruneResult::Gone => "pruned (was already gone)".to_string(),
                PruneResult::Terminating => {
                    "deleting (terminating; stays in the inventory until gone)".to_string()
                }
                PruneResult::WouldDelete => "would be pruned (dry run)".to_string(),
                PruneResult::Orphaned(m) => format!("left in place: {m}"),
                PruneResult::Kept(m) | PruneResult::Failed(m) => format!("NOT pruned: {m}"),
            };
            crate::outln!("{key} {what}");
        }
        if let Some(r) = &outcome.prune_refused {
            eprintln!("prune held back: {r}");
        }
        let a = &outcome.apply;
        eprintln!(
            "\nrepository {:?} cluster {:?} commit {}: {} created, {} configured, {} unchanged, {} pruned, {} failed; {} write request(s)",
            outcome.repository,
            outcome.cluster,
            outcome.commit,
            a.count(|x| *x == Action::Created),
            a.count(|x| *x == Action::Configured),
            a.count(|x| *x == Action::Unchanged),
            outcome
                .prune
                .iter()
                .filter(|(_, r)| *r == PruneResult::Deleted)
                .count(),
            a.count(|x| matches!(x, Action::Failed(_))),
            a.writes
        );
        eprintln!(
            "status: kubectl -n {} get policyrepo {} -o yaml",
            cfg.status_namespace, cfg.name
        );
    }
    Ok(if outcome.converged() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
