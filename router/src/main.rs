//! `kars-router`: the sidecar beside every kars agent container.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kars_router::config::env;
use kars_router::policy::{PolicyStore, mounts_from_env};
use kars_router::proxy::{ProxyLimits, ProxyState, Resolver, system_clock};
use kars_router::server::{AppState, app};

/// kars router sidecar: loads the policies rendered for this sandbox, reloads them when they
/// change, and reports the digest of each one at /internal/policy-status (bearer token).
/// Every setting can come from the environment the renderer sets on the container.
#[derive(Parser, Debug)]
#[command(name = "kars-router", version)]
struct Args {
    /// Address of the HTTP listener.
    #[arg(long, default_value = "0.0.0.0")]
    address: std::net::IpAddr,
    /// Port of the HTTP listener.
    #[arg(long, env = env::ROUTER_PORT, default_value_t = 8443)]
    port: u16,
    /// File with the admin bearer token (protects /internal/*).
    #[arg(long, env = env::ADMIN_TOKEN_FILE)]
    admin_token_file: Option<PathBuf>,
    /// Sandbox name, for logs and status.
    #[arg(long, env = env::SANDBOX_NAME, default_value = "")]
    sandbox: String,
    /// Seconds between checks of the policy mounts.
    #[arg(long, default_value_t = 5)]
    reload_seconds: u64,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Directory of the audit log (`audit.jsonl` in it: append-only JSON lines with a hash
    /// chain; `kars audit verify` checks it). The renderer sets KARS_AUDIT_DIR.
    #[arg(long, env = "KARS_AUDIT_DIR", default_value = "/var/log/kars/audit")]
    audit_dir: PathBuf,
    /// The audit log file itself (overrides --audit-dir).
    #[arg(long, env = "KARS_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// When the audit log is synced to disk: `always` (before each decision is answered),
    /// an interval such as `100ms`, or `never`.
    #[arg(long, env = "KARS_AUDIT_FSYNC", default_value = "always")]
    audit_fsync: kars_router::audit::Fsync,
    /// Port of a second listener serving only /metrics and /healthz (the renderer sets
    /// METRICS_PORT=9090); 0 disables it. /metrics is also on the main port.
    #[arg(long, env = "METRICS_PORT", default_value_t = 0)]
    metrics_port: u16,
    /// Port of the egress forward proxy (CONNECT and absolute-form HTTP); 0 disables it.
    #[arg(long, env = "FORWARD_PROXY_PORT", default_value_t = 8444)]
    proxy_port: u16,
    /// Egress mode: strict (only the allowlist and unexpired approvals) or learn (anything not
    /// blocklisted, recorded at /egress/learned).
    #[arg(long, env = "EGRESS_MODE", default_value = "strict")]
    egress_mode: kars_router::egress::Mode,
    /// File of blocklisted host names, one per line (`#` comments); it always wins.
    #[arg(long, env = "KARS_EGRESS_BLOCKLIST_FILE")]
    blocklist_file: Option<PathBuf>,
    /// CIDRs of internal addresses the proxy may connect to (loopback, private, link-local and
    /// metadata addresses are refused otherwise), repeatable or comma-separated.
    #[arg(long, env = "KARS_EGRESS_ALLOW_CIDRS", value_delimiter = ',')]
    allow_private_cidr: Vec<ipnet::IpNet>,
    /// Inference provider base URL, `NAME=URL` (e.g. `azure-openai=https://x.openai.azure.com/openai/v1`),
    /// repeatable; the InferencePolicy names providers, the router maps them to URLs.
    #[arg(long = "provider", env = "KARS_INFERENCE_PROVIDERS", value_delimiter = ',', value_parser = kars_router::inference::name_value)]
    providers: Vec<(String, String)>,
    /// A provider's API key file, `NAME=FILE`, repeatable (sent as a bearer token).
    #[arg(long = "provider-key-file", value_parser = kars_router::inference::name_value)]
    provider_key_files: Vec<(String, String)>,
    /// Extra CA certificates (PEM) trusted for inference upstreams.
    #[arg(long, env = "KARS_INFERENCE_CA_FILE")]
    inference_ca_file: Option<PathBuf>,
    /// The token-budget ledger (daily and monthly usage; survives restarts). The renderer
    /// sets TOKEN_BUDGET_PERSIST_PATH.
    #[arg(
        long,
        env = "TOKEN_BUDGET_PERSIST_PATH",
        default_value = "/var/lib/kars/token-budgets.json"
    )]
    budget_file: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_json {
        fmt.json().init()
    } else {
        fmt.init()
    }

    let token = match &args.admin_token_file {
        Some(p) => std::fs::read_to_string(p).map(|t| t.trim().to_string()).unwrap_or_else(|e| {
            tracing::warn!(file = %p.display(), error = %e, "admin token unreadable; /internal/* refuses every request");
            String::new()
        }),
        None => String::new(),
    };
    let store = Arc::new(PolicyStore::new(mounts_from_env(|k| std::env::var(k).ok())));
    for kind in store.reload() {
        tracing::info!(?kind, "policy loaded");
    }
    let audit_log = args
        .audit_log
        .clone()
        .unwrap_or_else(|| args.audit_dir.join("audit.jsonl"));
    let audit = kars_router::audit::AuditLog::open(&audit_log, args.audit_fsync)
        .map_err(|e| anyhow::anyhow!("audit log: {e} (run `kars audit verify {}` to see where it breaks; move it aside to start a new chain)", audit_log.display()))?;
    if audit.recovered > 0 {
        tracing::warn!(
            bytes = audit.recovered,
            "a torn last audit record was cut off"
        );
    }
    let summary = audit.summary();
    tracing::info!(records = summary.records, head = %summary.head, path = %audit_log.display(), "audit log open");
    let audit = Arc::new(audit);
    let blocklist: Vec<String> = match &args.blocklist_file {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        None => Vec::new(),
    };
    let metrics = Arc::new(kars_router::metrics::RouterMetrics::default());
    let proxy = Arc::new(ProxyState {
        policy: std::sync::RwLock::new(Arc::new(kars_router::egress::EgressPolicy::new(
            args.egress_mode,
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        ))),
        resolver: Resolver::System,
        audit: Some(audit.clone()),
        limits: ProxyLimits::default(),
        clock: system_clock,
        metrics: metrics.clone(),
    });
    let rebuild = {
        let (store, proxy, mode, cidrs) = (
            store.clone(),
            proxy.clone(),
            args.egress_mode,
            args.allow_private_cidr.clone(),
        );
        move || {
            if let Err(e) = proxy.rebuild(&store, mode, &blocklist, &cidrs) {
                tracing::error!(error = %e, "egress policy not rebuilt; the previous one stays");
            }
        }
    };
    rebuild();
    let mut providers = kars_router::inference::Providers::new();
    for (name, url) in &args.providers {
        let key = args
            .provider_key_files
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| {
                std::fs::read_to_string(f)
                    .map(|k| k.trim().to_string())
                    .map_err(|e| anyhow::anyhow!("{f}: {e}"))
            })
            .transpose()?;
        providers.insert(name.clone(), (url.clone(), key));
    }
    let inference = if providers.is_empty() {
        None
    } else {
        let budget = Arc::new(
            kars_router::budget::Budget::open(&args.budget_file, Default::default())
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        let ca = match &args.inference_ca_file {
            Some(f) => Some(std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?),
            None => None,
        };
        let inf = Arc::new(
            kars_router::inference::Inference::new(Vec::new(), budget, ca.as_deref(), system_clock)
                .map_err(|e| anyhow::anyhow!("inference client: {e}"))?,
        );
        let apply = {
            let (inf, store, providers) = (inf.clone(), store.clone(), providers.clone());
            move || {
                let policy = store
                    .snapshot()
                    .into_iter()
                    .find(|e| e.kind == kars_router::policy::PolicyKind::InferencePolicy)
                    .and_then(|e| {
                        e.files
                            .iter()
                            .find(|(n, _)| n == "inference-policy.json")
                            .map(|(_, b)| b.clone())
                    });
                if let Some(p) = policy
                    && let Err(e) = inf.apply_policy(&p, &providers)
                {
                    tracing::error!(error = %e, "inference policy not applied; the previous one stays");
                }
            }
        };
        apply();
        Some((inf, apply))
    };
    // Reload on every change in a mount (notify) and every --reload-seconds anyway.
    let wake = Arc::new(tokio::sync::Notify::new());
    let _watcher = kars_router::policy::watch_mounts(store.mounts(), wake.clone());
    let (inference, apply_inference) = match inference {
        Some((i, apply)) => (Some(i), Some(apply)),
        None => (None, None),
    };
    {
        let reloader = store.clone();
        let every = Duration::from_secs(args.reload_seconds.max(1));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = wake.notified() => {
                        // Let kubelet finish its symlink swap.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                let changed = reloader.reload();
                for kind in &changed {
                    tracing::info!(?kind, "policy reloaded");
                }
                use kars_router::policy::PolicyKind;
                if changed
                    .iter()
                    .any(|k| matches!(k, PolicyKind::EgressAllowlist | PolicyKind::EgressApproval))
                {
                    rebuild();
                }
                if changed.contains(&PolicyKind::InferencePolicy)
                    && let Some(apply) = &apply_inference
                {
                    apply();
                }
            }
        });
    }
    let state = AppState {
        policies: store,
        admin_token: Arc::new(token),
        sandbox: Arc::new(args.sandbox.clone()),
        governance: Arc::default(),
        audit: Some(audit),
        egress: (args.proxy_port != 0).then(|| proxy.clone()),
        metrics,
        inference,
    };
    if args.metrics_port != 0 {
        let listener = tokio::net::TcpListener::bind((args.address, args.metrics_port)).await?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        let app = kars_router::server::metrics_app(state.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    if args.proxy_port != 0 {
        let listener = tokio::net::TcpListener::bind((args.address, args.proxy_port)).await?;
        tracing::info!(addr = %listener.local_addr()?, mode = ?args.egress_mode, "egress proxy listening");
        tokio::spawn(kars_router::proxy::serve(listener, proxy));
    }
    let listener = tokio::net::TcpListener::bind((args.address, args.port)).await?;
    tracing::info!(addr = %listener.local_addr()?, sandbox = %args.sandbox, "kars-router listening");
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
