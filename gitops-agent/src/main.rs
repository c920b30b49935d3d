//! `kars-gitops-agent`: keeps a cluster equal to the last verified commit of a policy repository.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kars_gitops_agent::apply::ApplyOptions;
use kars_gitops_agent::sync::{SyncError, SyncRequest, kube_client, sync_once};
use kars_gitops_agent::verify;

/// kars GitOps agent: verify every new commit of a policy repository, render it and apply it
/// with server-side apply, again and again.
#[derive(Parser, Debug)]
#[command(name = "kars-gitops-agent", version)]
struct Args {
    /// The policy repository: a local Git repository path.
    #[arg(long, env = "KARS_REPO")]
    repo: PathBuf,
    /// Branch (or tag) to follow.
    #[arg(long, env = "KARS_BRANCH", default_value = "HEAD")]
    branch: String,
    /// Cluster of kars.yaml to render.
    #[arg(long, env = "KARS_CLUSTER")]
    cluster: Option<String>,
    /// Time between syncs (e.g. 30s, 5m).
    #[arg(long, env = "KARS_INTERVAL", default_value = "60s", value_parser = parse_duration)]
    interval: Duration,
    /// Kubeconfig (default: in-cluster config, then $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// git allowed_signers file of trusted SSH signers.
    #[arg(long, env = "KARS_ALLOWED_SIGNERS")]
    allowed_signers: Option<PathBuf>,
    /// Armored OpenPGP keyring of trusted signers.
    #[arg(long, env = "KARS_OPENPGP_KEYRING")]
    openpgp_keyring: Option<PathBuf>,
    /// TrustPolicy file.
    #[arg(long, env = "KARS_TRUST")]
    trust: Option<PathBuf>,
    /// Run one sync and exit (0 when the cluster matches the verified head).
    #[arg(long)]
    once: bool,
    /// Log as JSON lines.
    #[arg(long, env = "KARS_LOG_JSON")]
    log_json: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.trim().len()),
    );
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number with a unit, e.g. 30s or 5m"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    if secs == 0 {
        return Err("the interval must be positive".into());
    }
    Ok(Duration::from_secs(secs))
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    init_logging(args.log_json);
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent stopped");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let trust = verify::load_policy(
        args.trust.as_deref(),
        args.allowed_signers.as_deref(),
        args.openpgp_keyring.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = kube_client(args.kubeconfig.as_deref()).await?;
    let mut last_applied: Option<String> = None;
    loop {
        let req = SyncRequest {
            repo_path: args.repo.clone(),
            rev: args.branch.clone(),
            cluster: args.cluster.clone(),
            since: last_applied.clone(),
            trust: trust.clone(),
        };
        let ok = match sync_once(client.clone(), &req, ApplyOptions::default()).await {
            Ok(outcome) => {
                let a = &outcome.apply;
                tracing::info!(
                    commit = %outcome.commit,
                    digest = %outcome.digest,
                    objects = a.objects.len(),
                    writes = a.writes,
                    failed = a.failures().count(),
                    "sync finished"
                );
                for f in a.failures() {
                    tracing::warn!(object = %f.object, source = %f.source, action = ?f.action, "object not applied");
                }
                if a.is_success() {
                    last_applied = Some(outcome.commit.clone());
                }
                a.is_success()
            }
            Err(e) => {
                let problem = match &e {
                    SyncError::Untrusted(v) => v.first_problem().unwrap_or_default(),
                    other => other.to_string(),
                };
                tracing::error!(reason = e.reason(), error = %problem, "sync failed; the cluster is unchanged");
                false
            }
        };
        if args.once {
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(args.interval) => {}
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; stopping between syncs");
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}
