//! `kars-gitops-agent`: keeps a cluster equal to the last verified commit of a policy repository.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kars_gitops_agent::agent::{self, AgentConfig};
use kars_gitops_agent::apply::ApplyOptions;
use kars_gitops_agent::bundles::BundleArgs;
use kars_gitops_agent::cluster::kube_config;
use kars_gitops_agent::forge::{ForgeRepo, Gitea, Token};
use kars_gitops_agent::lease::LeaseConfig;
use kars_gitops_agent::prune::PruneOptions;
use kars_gitops_agent::source::Credentials;
use kars_gitops_agent::sre::execute::Executor;
use kars_gitops_agent::sre::forward::Proposer;
use kars_gitops_agent::status::DEFAULT_NAMESPACE;
use kars_gitops_agent::sync::{SyncConfig, repository_name, sync_once};
use kars_gitops_agent::verify;

/// kars GitOps agent: fetch a policy repository, verify every new commit's signature, render it
/// and apply it with server-side apply, prune what left Git, and report in a PolicyRepo object —
/// again and again, on an interval, on push webhooks, or when a watched local repository changes.
#[derive(Parser, Debug)]
#[command(name = "kars-gitops-agent", version)]
struct Args {
    /// The policy repository: a Git URL (https://, ssh://, git://, file://) or a local path.
    #[arg(long, env = "KARS_REPO")]
    repo: String,
    /// Branch to follow (default: main for URLs, HEAD for a local path).
    #[arg(long, env = "KARS_BRANCH")]
    branch: Option<String>,
    /// Cluster of kars.yaml to render.
    #[arg(long, env = "KARS_CLUSTER")]
    cluster: Option<String>,
    /// Time between syncs (e.g. 30s, 5m); ±10% jitter is added.
    #[arg(long, env = "KARS_INTERVAL", default_value = "60s", value_parser = duration_arg)]
    interval: Duration,
    /// After a sync that did not end Ready, sync again after this: at this pace while waiting
    /// for routers, pods or a terminating namespace; doubling up to --interval after failures.
    #[arg(long, env = "KARS_RETRY_INTERVAL", default_value = "5s", value_parser = duration_arg)]
    retry_interval: Duration,
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
    /// Directory of trust roots (a mounted Secret): `allowed_signers`, `openpgp.asc` and
    /// `trust.yaml`, each used when present; an explicit flag for a file wins.
    #[arg(long, env = "KARS_TRUST_DIR")]
    trust_dir: Option<PathBuf>,
    /// File with an HTTPS token for the repository.
    #[arg(long, env = "KARS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// SSH private key for ssh:// repositories.
    #[arg(long, env = "KARS_SSH_KEY")]
    ssh_key: Option<PathBuf>,
    /// known_hosts for ssh:// repositories.
    #[arg(long, env = "KARS_KNOWN_HOSTS")]
    known_hosts: Option<PathBuf>,
    /// Directory for fetched repositories.
    #[arg(long, env = "KARS_CACHE_DIR", default_value = "/tmp/kars-gitops-cache")]
    cache_dir: PathBuf,
    /// Name of the PolicyRepo status object (default: `metadata.name` of the repository's
    /// kars.yaml, read from the head at start-up).
    #[arg(long, env = "KARS_NAME")]
    name: Option<String>,
    /// Namespace of the PolicyRepo object and the leader-election Lease.
    #[arg(long, env = "KARS_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// Address of /healthz, /readyz, /metrics and the webhook receiver.
    #[arg(long, env = "KARS_LISTEN", default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// File with the push-webhook HMAC secret (GitHub and Gitea).
    #[arg(long, env = "KARS_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// Elect a leader with a Lease (run several replicas safely).
    #[arg(long, env = "KARS_LEADER_ELECTION")]
    leader_election: bool,
    /// How long a leader's Lease lasts without renewal (a stopped leader is replaced after
    /// at most this long; renewed every third of it).
    #[arg(long, env = "KARS_LEASE_DURATION", default_value = "30s", value_parser = duration_arg)]
    lease_duration: Duration,
    /// This replica's identity for leader election (default: the host name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Do not delete objects that left Git.
    #[arg(long)]
    no_prune: bool,
    /// Refuse a sync that would delete more than this share of the inventory (percent).
    #[arg(long, default_value_t = 30)]
    max_delete_percent: u32,
    /// Do not restore fields changed by hand (drift is then only reported).
    #[arg(long)]
    no_self_heal: bool,
    /// Objects applied (and kars status patches sent) at once within a wave. The API server's
    /// own limits (priority and fairness) still apply; the client adds no rate limit of its own.
    #[arg(long, env = "KARS_APPLY_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    apply_concurrency: u16,
    /// Wait this long for applied objects to become healthy.
    #[arg(long, default_value = "60s", value_parser = duration_arg)]
    health_timeout: Duration,
    /// `required`: Ready waits until every sandbox that should run has router pods reporting
    /// the rendered policy digests. `best-effort`: a sandbox without a running router pod does
    /// not hold Ready back (for clusters where pods cannot run); a router reporting other
    /// digests always does.
    #[arg(
        long,
        env = "KARS_ENFORCEMENT",
        hide_env_values = true,
        default_value = "required"
    )]
    enforcement: kars_gitops_agent::enforcement::Mode,
    /// Watch a local repository for new commits (ignored for URLs).
    #[arg(long)]
    watch: bool,
    /// The forge the policy repository lives on (`http(s)://host`): SRE action outcomes are
    /// posted to their pull requests. Needs --forge-repo and a token.
    #[arg(long, env = "KARS_FORGE_URL", requires = "forge_repo")]
    forge_url: Option<String>,
    /// The repository on the forge, OWNER/NAME.
    #[arg(long, env = "KARS_FORGE_REPO", requires = "forge_url")]
    forge_repo: Option<String>,
    /// File holding the forge API token (else $KARS_FORGE_TOKEN). Never logged.
    #[arg(long, env = "KARS_FORGE_TOKEN_FILE")]
    forge_token_file: Option<PathBuf>,
    /// Do not comment on open pull requests with what merging them would change (the
    /// preview needs the --forge-* flags; it never applies anything from a pull request).
    #[arg(long, env = "KARS_NO_PR_PREVIEWS")]
    no_pr_previews: bool,
    /// Do not run approved SRE actions (they are reported, not decided).
    #[arg(long, env = "KARS_NO_SRE_EXECUTOR")]
    no_sre_executor: bool,
    /// An unencrypted OpenSSH private key: in-cluster SRE proposals (KarsSREActions created in
    /// kars-sre) are committed with it as pull requests. The trust policy must list its public
    /// key, with --sre-proposer-email, as a signer (not an approver). Needs the --forge-* flags.
    #[arg(long, env = "KARS_SRE_PROPOSER_KEY", requires_all = ["sre_proposer_email", "forge_url"])]
    sre_proposer_key: Option<PathBuf>,
    /// The committer e-mail of those commits.
    #[arg(long, env = "KARS_SRE_PROPOSER_EMAIL")]
    sre_proposer_email: Option<String>,
    /// The committer name of those commits.
    #[arg(long, env = "KARS_SRE_PROPOSER_NAME", default_value = "kars-gitops")]
    sre_proposer_name: String,
    /// Keep a signed log of what each sync applied (commit, signers, rendered digest, objects
    /// written and pruned) in ConfigMaps `<name>-sync-log-NNNN` beside the PolicyRepo,
    /// signed with the Ed25519 seed (64 hex digits) in this file. `kars audit syncs` checks it.
    #[arg(long, env = "KARS_SYNC_LOG_KEY", value_name = "FILE")]
    sync_log_key: Option<PathBuf>,
    /// Run one sync and exit (0 when the cluster matches the verified head).
    #[arg(long)]
    once: bool,
    /// Log as JSON lines.
    #[arg(long, env = "KARS_LOG_JSON")]
    log_json: bool,
    #[command(flatten)]
    bundles: BundleArgs,
}

fn duration_arg(s: &str) -> Result<Duration, String> {
    kars_contract::time::parse_duration(s).map_err(|e| e.to_string())
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

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// A local path as an absolute path (what the PolicyRepo records); URLs as given.
fn absolute_source(source: &str) -> String {
    if kars_gitops_agent::source::is_remote_url(source) {
        return source.to_string();
    }
    std::path::absolute(source)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| source.to_string())
}

/// The PolicyRepo name from the source's `kars.yaml` (`--name` not given). The long-running
/// agent retries until the source can be read; `--once` fails at once.
async fn name_from_repository(sync: &SyncConfig, once: bool) -> anyhow::Result<String> {
    let mut wait = std::time::Duration::from_secs(2);
    loop {
        let cfg = sync.clone();
        match tokio::task::spawn_blocking(move || repository_name(&cfg)).await? {
            Ok(name) => return Ok(name),
            Err(e) if once => anyhow::bail!("naming the PolicyRepo: {e}"),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?wait, "cannot read kars.yaml to name the PolicyRepo (or pass --name)");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(60));
            }
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let from_dir = |explicit: &Option<PathBuf>, file: &str| -> Option<PathBuf> {
        explicit.clone().or_else(|| {
            let p = args.trust_dir.as_ref()?.join(file);
            p.is_file().then_some(p)
        })
    };
    let (trust_file, signers, keyring) = (
        from_dir(&args.trust, "trust.yaml"),
        from_dir(&args.allowed_signers, "allowed_signers"),
        from_dir(&args.openpgp_keyring, "openpgp.asc"),
    );
    if let Some(dir) = &args.trust_dir
        && trust_file.is_none()
        && signers.is_none()
        && keyring.is_none()
    {
        anyhow::bail!(
            "no trust root in {}: it must hold allowed_signers, openpgp.asc or trust.yaml (with the Helm chart: set trust.allowedSigners, trust.openpgpKeyring or trust.existingSecret)",
            dir.display()
        );
    }
    let trust = verify::load_policy(
        trust_file.as_deref(),
        signers.as_deref(),
        keyring.as_deref(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let token = match &args.token_file {
        Some(p) => Some(std::fs::read_to_string(p)?.trim().to_string()),
        None => None,
    };
    let mut sync = SyncConfig {
        name: args.name.clone().unwrap_or_default(),
        source: absolute_source(&args.repo),
        branch: args.branch.clone(),
        cluster: args.cluster.clone(),
        trust,
        credentials: Credentials {
            token,
            username: None,
            ssh_key: args.ssh_key.clone(),
            ssh_known_hosts: args.known_hosts.clone(),
        },
        cache_dir: args.cache_dir.clone(),
        status_namespace: args.namespace.clone(),
        apply: ApplyOptions {
            self_heal: !args.no_self_heal,
            concurrency: usize::from(args.apply_concurrency),
            ..ApplyOptions::default()
        },
        prune: PruneOptions {
            enabled: !args.no_prune,
            max_delete_percent: args.max_delete_percent,
            ..PruneOptions::default()
        },
        health_timeout: args.health_timeout,
        since_override: None,
        bundles: args
            .bundles
            .verifier(Some(&args.cache_dir))
            .map_err(|e| anyhow::anyhow!("signed bundles: {e}"))?,
        progress: Default::default(),
        enforcement: args.enforcement,
        sre: Default::default(),
        sync_log: None,
        render_memo: None,
        live_view: None,
    };
    if sync.name.is_empty() {
        sync.name = name_from_repository(&sync, args.once).await?;
        tracing::info!(name = %sync.name, "PolicyRepo named after kars.yaml metadata.name");
    }
    let kube_config = kube_config(args.kubeconfig.as_deref()).await?;
    let client = kube::Client::try_from(kube_config.clone())?;
    if let Some(key) = &args.sync_log_key {
        let key = kars_gitops_agent::sync_log::read_key(key)
            .map_err(|e| anyhow::anyhow!("--sync-log-key: {e}"))?;
        let log = kars_gitops_agent::sync_log::SyncLog::new(
            client.clone(),
            &sync.status_namespace,
            &sync.name,
            key,
        );
        tracing::info!(key = log.key_id(), configmaps = %format!("{}/{}", sync.status_namespace, kars_gitops_agent::sync_log::segment_name(&sync.name, 0)), "keeping a signed sync log");
        sync.sync_log = Some(std::sync::Arc::new(log));
    }
    if !args.no_sre_executor {
        sync.sre.executor = Some(Executor::new(client.clone(), Some(kube_config)));
    }
    if let (Some(url), Some(repo)) = (&args.forge_url, &args.forge_repo) {
        let repo = ForgeRepo::parse(url, repo).map_err(|e| anyhow::anyhow!("--forge-repo: {e}"))?;
        let token = Token::from_file_or_env(args.forge_token_file.as_deref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        sync.sre.forge = Some(Gitea::new(repo, token).map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    if let (Some(key), Some(email)) = (&args.sre_proposer_key, &args.sre_proposer_email) {
        sync.sre.proposer = Some(
            Proposer::from_file(key, &args.sre_proposer_name, email)
                .map_err(|e| anyhow::anyhow!("--sre-proposer-key: {e}"))?,
        );
    }
    if args.once {
        let result = sync_once(client, &sync, None, &|| false).await;
        return Ok(match result {
            Ok(o) if o.converged() => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                tracing::error!(reason = %e.reason(), error = %e, "sync failed");
                ExitCode::from(1)
            }
        });
    }
    // A running agent keeps a live view across its syncs (watches instead of lists).
    sync.live_view = Some(std::sync::Arc::new(kars_gitops_agent::live::LiveView::new()));
    sync.render_memo = Some(std::sync::Arc::new(
        kars_gitops_agent::sync::memo::RenderMemo::new(),
    ));
    let webhook_secret = match &args.webhook_secret_file {
        Some(p) => Some(std::fs::read(p)?.trim_ascii().to_vec()),
        None => None,
    };
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| format!("kars-gitops-{}", std::process::id()))
    });
    let lease = args.leader_election.then(|| LeaseConfig {
        namespace: args.namespace.clone(),
        name: format!("{}-leader", sync.name),
        identity,
        duration: args.lease_duration,
    });
    let cfg = AgentConfig {
        sync,
        interval: args.interval,
        retry_interval: args.retry_interval,
        listen: args.listen,
        webhook_secret,
        lease,
        watch_local: args.watch,
        previews: !args.no_pr_previews,
    };
    agent::run(client, cfg, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}
