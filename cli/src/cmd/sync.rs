//! `kars sync [SOURCE]`: the agent's sync, run once from the command line, recorded in the
//! same PolicyRepo object the agent uses. `--dry-run` is read-only: it reports what would be
//! created, configured and pruned, and writes nothing (no status, no Events, no objects).

use std::process::ExitCode;
use std::time::Duration;

use kars_gitops_agent::apply::Action;
use kars_gitops_agent::prune::PruneResult;
use kars_gitops_agent::status::PolicyRepo;
use kars_gitops_agent::sync::{SyncError, SyncOutcome, sync_once};
use kube::api::{Api, ListParams};

use super::source::{SourceArgs, sync_failure};
use crate::access;
use crate::failure::{CHECK, Failure};
use crate::ui::{self, ProgressView};

/// Arguments of `kars sync`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run one sync and exit (the only mode of the CLI; the agent runs continuously).
    #[arg(long)]
    once: bool,
    /// Verify from this commit instead of the last applied one recorded in the cluster.
    #[arg(long)]
    since: Option<String>,
    /// Report what would be created, configured and pruned; write nothing at all.
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
    /// Wait this long for applied objects to become healthy (e.g. 60s; default: do not
    /// wait). Objects still not healthy then make the exit code 1.
    #[arg(long, value_name = "DURATION", value_parser = parse_seconds)]
    wait: Option<Duration>,
    /// `required`: Ready only when every sandbox that should run has router pods reporting the
    /// rendered policy digests. `best-effort`: sandboxes without a running router pod do not
    /// hold Ready back (clusters where pods cannot run); a router reporting other digests
    /// still does.
    #[arg(
        long,
        value_name = "MODE",
        env = "KARS_ENFORCEMENT",
        hide_env_values = true,
        default_value = "required"
    )]
    enforcement: kars_gitops_agent::enforcement::Mode,
    #[command(flatten)]
    source: SourceArgs,
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
    let mut cfg = args.source.named_config().await?;
    cfg.since_override = args.since.clone();
    cfg.apply.dry_run = args.dry_run;
    cfg.apply.force_conflicts = args.force_conflicts;
    cfg.prune.enabled = !args.no_prune;
    cfg.prune.allow_mass_prune = args.allow_mass_prune;
    cfg.health_timeout = args.wait.unwrap_or(Duration::ZERO);
    cfg.enforcement = args.enforcement;
    args.source.note_worktree(&cfg);
    let at = access::connect(&args.source.cluster_args).await?;
    warn_about_other_policy_repos(&at, &cfg).await;
    let view = ProgressView::new();
    cfg.progress = view.sink();
    let result = sync_once(at.client.clone(), &cfg, None, &|| false).await;
    view.finish();
    let outcome = match result {
        Ok(o) => o,
        Err(SyncError::Untrusted(verdict)) => {
            for c in verdict.commits.iter().filter(|c| !c.ok()) {
                if let Some(r) = &c.refusal {
                    eprintln!("commit {} {}: {r}", &c.id[..12.min(c.id.len())], r.reason());
                }
            }
            if let Some(h) = &verdict.history {
                eprintln!("{}: {h}", h.reason());
            }
            let detail = serde_json::to_value(&*verdict).unwrap_or_default();
            let reason = verdict.reason().map(|r| r.to_string()).unwrap_or_default();
            return Err(Failure::msg(
                CHECK,
                format!(
                    "verification failed ({reason}); nothing was applied and the cluster is unchanged"
                ),
            )
            .reason(reason)
            .detail(detail)
            .hint(format!(
                "kars why FILE explains a file; status: kubectl -n {} get policyrepo {}",
                cfg.status_namespace, cfg.name
            )));
        }
        Err(e) => return Err(sync_failure(e, Some(&at))),
    };
    let unhealthy = args
        .wait
        .filter(|_| outcome.health.healthy() != Some(true) && !args.dry_run);
    if ui::get().machine() {
        ui::emit(&outcome)?;
    } else {
        print_outcome(&outcome);
        print_summary(&outcome, args.dry_run);
        if !args.dry_run {
            ui::note(format!(
                "status: kubectl -n {} get policyrepo {} -o yaml",
                cfg.status_namespace, cfg.name
            ));
        }
    }
    if let Some(waited) = unhealthy {
        let pending: Vec<String> = outcome
            .health
            .not_ready
            .iter()
            .take(5)
            .map(|(k, h)| format!("{k} ({h})"))
            .collect();
        eprintln!(
            "{} not healthy after --wait {}s: {}",
            ui::get().paint_err("31", "error:"),
            waited.as_secs(),
            pending.join(", ")
        );
        return Ok(ExitCode::from(CHECK));
    }
    if outcome.converged() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "{} the sync finished but the PolicyRepo is not Ready: {}",
        ui::get().paint_err("31", "error:"),
        outcome.ready
    );
    Ok(ExitCode::from(CHECK))
}

/// Says so when another PolicyRepo in the namespace already records the same source: the two
/// would compete for the same objects (the applier refuses objects another one owns).
async fn warn_about_other_policy_repos(
    at: &access::Connected,
    cfg: &kars_gitops_agent::sync::SyncConfig,
) {
    let api: Api<PolicyRepo> = Api::namespaced(at.client.clone(), &cfg.status_namespace);
    let Ok(list) = api.list(&ListParams::default()).await else {
        return;
    };
    for other in list.items {
        let name = other.metadata.name.clone().unwrap_or_default();
        if name != cfg.name && other.spec.url == cfg.source {
            ui::warn(format!(
                "PolicyRepo {}/{name} already syncs {}; objects it owns are refused here (OwnedByAnotherPolicyRepo). Use --name {name} to continue that one",
                cfg.status_namespace, cfg.source
            ));
        }
    }
}

fn print_outcome(outcome: &SyncOutcome) {
    let signers: std::collections::BTreeSet<&str> = outcome
        .verification
        .commits
        .iter()
        .flat_map(|c| c.signers.iter().map(|s| s.signer.as_str()))
        .collect();
    ui::note(format!(
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
    ));
    let ui = ui::get();
    for o in &outcome.apply.objects {
        let what = match &o.action {
            Action::Created => ui.paint_out("32", "created"),
            Action::Configured => ui.paint_out("33", "configured"),
            Action::Unchanged => "unchanged".to_string(),
            Action::WouldCreate => ui.paint_out("32", "would be created (dry run)"),
            Action::WouldConfigure => ui.paint_out("33", "would be configured (dry run)"),
            Action::Skipped => "skipped (an earlier object failed)".to_string(),
            Action::Drifted(d) => format!("drifted at {} (self-heal off: left as is)", d.at),
            Action::Failed(r) => format!(
                "{} [{}]: {}\n    (from {})",
                ui.paint_out("31", "FAILED"),
                r.reason,
                r.message,
                o.source
            ),
        };
        crate::outln!("{} {what}", o.object);
    }
    for s in &outcome.apply.generated_secrets_created {
        crate::outln!("{s} created (random token, generated in the cluster)");
    }
    for (key, r) in &outcome.prune {
        let what = match r {
            PruneResult::Deleted => ui.paint_out("31", "pruned"),
            PruneResult::Gone => "pruned (was already gone)".to_string(),
            PruneResult::Terminating => {
                "deleting (terminating; stays in the inventory until gone)".to_string()
            }
            PruneResult::WouldDelete => ui.paint_out("31", "would be pruned (dry run)"),
            PruneResult::Orphaned(m) => format!("left in place: {m}"),
            PruneResult::Kept(m) | PruneResult::Failed(m) => format!("NOT pruned: {m}"),
        };
        crate::outln!("{key} {what}");
    }
    if let Some(r) = &outcome.prune_refused {
        ui::warn(format!("prune held back: {r}"));
    }
}

fn print_summary(outcome: &SyncOutcome, dry_run: bool) {
    let a = &outcome.apply;
    let pruned = |want: &PruneResult| outcome.prune.iter().filter(|(_, r)| r == want).count();
    let failed = a.count(|x| matches!(x, Action::Failed(_)));
    if dry_run {
        ui::note(format!(
            "\ndry run of repository {:?} cluster {:?} commit {}: {} would be created, {} would be configured, {} unchanged, {} would be pruned, {failed} refused; nothing was written",
            outcome.repository,
            outcome.cluster,
            outcome.commit,
            a.count(|x| *x == Action::WouldCreate),
            a.count(|x| *x == Action::WouldConfigure),
            a.count(|x| *x == Action::Unchanged),
            pruned(&PruneResult::WouldDelete),
        ));
        return;
    }
    ui::note(format!(
        "\nrepository {:?} cluster {:?} commit {}: {} created, {} configured, {} unchanged, {} pruned, {failed} failed; {} write request(s)",
        outcome.repository,
        outcome.cluster,
        outcome.commit,
        a.count(|x| *x == Action::Created),
        a.count(|x| *x == Action::Configured),
        a.count(|x| *x == Action::Unchanged),
        pruned(&PruneResult::Deleted) + pruned(&PruneResult::Gone),
        a.writes
    ));
}
