//! `kars sync SOURCE --once`: the agent's sync, run once from the command line.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kars_gitops_agent::apply::{Action, ApplyOptions};
use kars_gitops_agent::sync::{SyncError, SyncRequest, kube_client, sync_once};
use kars_gitops_agent::verify;

use crate::Failure;

/// Arguments of `kars sync`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The policy repository: a local Git repository path.
    source: PathBuf,
    /// Run one sync and exit (the only mode of the CLI; the agent runs continuously).
    #[arg(long)]
    once: bool,
    /// Kubeconfig of the target cluster (default: $KUBECONFIG, ~/.kube/config or in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Revision to apply: a branch name (default: the current HEAD).
    #[arg(long, value_name = "NAME")]
    branch: Option<String>,
    /// Which cluster of kars.yaml to render.
    #[arg(long)]
    cluster: Option<String>,
    /// The last applied commit: commits after it are verified (default: the whole history).
    #[arg(long)]
    since: Option<String>,
    /// git's allowed_signers file of trusted SSH signers.
    #[arg(long, value_name = "FILE")]
    allowed_signers: Option<PathBuf>,
    /// Armored OpenPGP keyring of trusted signers.
    #[arg(long, value_name = "FILE")]
    openpgp_keyring: Option<PathBuf>,
    /// TrustPolicy file (signers, path rules, repository signer list, forge keys).
    #[arg(long, value_name = "FILE")]
    trust: Option<PathBuf>,
    /// Report what would change without writing anything.
    #[arg(long)]
    dry_run: bool,
    /// Take over fields owned by other field managers.
    #[arg(long)]
    force_conflicts: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `kars sync`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let _ = args.once;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<ExitCode, Failure> {
    let trust = verify::load_policy(
        args.trust.as_deref(),
        args.allowed_signers.as_deref(),
        args.openpgp_keyring.as_deref(),
    )
    .map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
    let client = kube_client(args.kubeconfig.as_deref())
        .await
        .context("connecting to the cluster (check --kubeconfig)")
        .map_err(Failure::usage)?;
    let req = SyncRequest {
        repo_path: args.source.clone(),
        rev: args.branch.clone().unwrap_or_else(|| "HEAD".to_string()),
        cluster: args.cluster.clone(),
        since: args.since.clone(),
        trust,
    };
    let options = ApplyOptions {
        dry_run: args.dry_run,
        force_conflicts: args.force_conflicts,
        ..ApplyOptions::default()
    };
    let outcome = match sync_once(client, &req, options).await {
        Ok(o) => o,
        Err(e @ SyncError::Source(_)) => return Err(Failure::usage(anyhow::anyhow!("{e}"))),
        Err(SyncError::Untrusted(verdict)) => {
            for c in verdict.commits.iter().filter(|c| !c.ok()) {
                if let Some(r) = &c.refusal {
                    eprintln!("commit {} {}: {r}", &c.id[..12.min(c.id.len())], r.label());
                }
            }
            if let Some(h) = &verdict.history {
                eprintln!("{}: {h}", h.label());
            }
            return Err(Failure::check(anyhow::anyhow!(
                "verification failed; nothing was applied and the cluster is unchanged"
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
            "verified {} commit(s) up to {} (signed by {})",
            outcome.verification.commits.len(),
            outcome.commit,
            signers.into_iter().collect::<Vec<_>>().join(", ")
        );
        for o in &outcome.apply.objects {
            let what = match &o.action {
                Action::Created => "created".to_string(),
                Action::Configured => "configured".to_string(),
                Action::Unchanged => "unchanged".to_string(),
                Action::WouldChange => "would change (dry run)".to_string(),
                Action::Skipped => "skipped (an earlier object failed)".to_string(),
                Action::Failed(why) => format!("FAILED: {why}\n    (from {})", o.source),
            };
            crate::outln!("{} {what}", o.object);
        }
        for s in &outcome.apply.generated_secrets_created {
            crate::outln!("{s} created (random token, generated in the cluster)");
        }
        let a = &outcome.apply;
        eprintln!(
            "\nrepository {:?} cluster {:?} commit {}: {} created, {} configured, {} unchanged, {} failed; {} write request(s)",
            outcome.repository,
            outcome.cluster,
            outcome.commit,
            a.count(|x| *x == Action::Created),
            a.count(|x| *x == Action::Configured),
            a.count(|x| *x == Action::Unchanged),
            a.count(|x| matches!(x, Action::Failed(_))),
            a.writes
        );
    }
    Ok(if outcome.apply.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
