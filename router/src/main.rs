//! `kars-router`: the sidecar beside every kars agent container. This file reads the settings
//! and wires the library together; everything it starts is in `kars_router`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kars_contract::router::{self as contract, env};
use kars_router::inference::{ProviderKey, Providers};
use kars_router::listeners::{Listeners, serve_http};
use kars_router::proxy::{ProxyLimits, ProxyState, Resolver};
use kars_router::reload::{Policies, Settings, mounts_from_env, reload_forever, watch_mounts};
use kars_router::server::{AppState, app, metrics_app};

/// kars router sidecar: the egress forward proxy, governance decisions, the inference proxy
/// with token budgets and the audit log, for the policies the renderer mounted for this
/// sandbox (reloaded when they change; each one's digest at /internal/policy-status, bearer
/// token). Every setting can come from the environment the renderer sets on the container.
#[derive(Parser, Debug)]
#[command(name = "kars-router", version)]
struct Args {
    /// Address of the listeners.
    #[arg(long, default_value = "0.0.0.0")]
    address: std::net::IpAddr,
    /// Port of the HTTP listener (inference, governance, policy status).
    #[arg(long, env = env::ROUTER_PORT, default_value_t = contract::PORT)]
    port: u16,
    /// File with the admin bearer token (protects /internal/* and /egress/learned).
    #[arg(long, env = env::ADMIN_TOKEN_FILE)]
    admin_token_file: Option<PathBuf>,
    /// Sandbox name, for logs and status.
    #[arg(long, env = env::SANDBOX_NAME, default_value = "")]
    sandbox: String,
    /// Seconds between reloads of the policy mounts when no file-system event came.
    #[arg(long, default_value_t = 5)]
    reload_seconds: u64,
    /// Time a client has to send a complete request head, on every listener (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = duration)]
    head_timeout: Duration,
    /// An egress tunnel with no byte in either direction for this long is closed (e.g. 5m).
    #[arg(long, default_value = "5m", value_parser = duration)]
    tunnel_idle_timeout: Duration,
    /// Log as JSON lines.
    #[arg(long)]
    log_json: bool,
    /// Directory of the audit log (`audit.jsonl` in it: append-only JSON lines with a hash
    /// chain; `kars audit verify` checks it). The renderer sets KARS_AUDIT_DIR.
    #[arg(long, env = env::AUDIT_DIR, default_value = contract::AUDIT_DIR)]
    audit_dir: PathBuf,
    /// The audit log file itself (overrides --audit-dir).
    #[arg(long, env = env::AUDIT_LOG)]
    audit_log: Option<PathBuf>,
    /// When the audit log is synced to disk: `always` (before each decision is answered),
    /// an interval such as `100ms`, or `never`.
    #[arg(long, env = env::AUDIT_FSYNC, default_value = "always")]
    audit_fsync: kars_router::audit::Fsync,
    /// Calls per tool (`tool:<name>:…` actions) per --tool-rate-limit-window-secs, checked
    /// before the AGT profiles; 0 = no limit (upstream's TOOL_RATE_LIMIT_MAX).
    #[arg(long, env = "TOOL_RATE_LIMIT_MAX", default_value_t = 100)]
    tool_rate_limit_max: usize,
    /// The per-tool window in seconds (upstream's TOOL_RATE_LIMIT_WINDOW_SECS).
    #[arg(long, env = "TOOL_RATE_LIMIT_WINDOW_SECS", default_value_t = 60)]
    tool_rate_limit_window_secs: u64,
    /// Sign the audit chain's head with this Ed25519 key (PKCS#8 PEM: `openssl genpkey
    /// -algorithm ed25519`, or a 32-byte seed in hex) into `<log>.heads`, every
    /// --audit-sign-interval and when stopping; `kars audit verify LOG --key PUB` then proves
    /// the log was not cut or rewritten. A file not there yet is read once it appears.
    #[arg(long, env = env::AUDIT_SIGNING_KEY_FILE, value_name = "FILE")]
    audit_signing_key: Option<PathBuf>,
    /// How often the audit head is signed (when it moved).
    #[arg(long, env = env::AUDIT_SIGN_INTERVAL, default_value = "60s", value_parser = duration)]
    audit_sign_interval: Duration,
    /// Port of a second listener serving only /metrics and /healthz (the renderer sets
    /// METRICS_PORT=9090); 0 disables it. /metrics is also on the main port.
    #[arg(long, env = env::METRICS_PORT, default_value_t = 0)]
    metrics_port: u16,
    /// Port of the egress forward proxy (CONNECT and absolute-form HTTP); 0 disables it.
    #[arg(long, env = env::FORWARD_PROXY_PORT, default_value_t = contract::FORWARD_PROXY_PORT)]
    proxy_port: u16,
    /// Egress mode: strict (only the allowlist and unexpired approvals) or learn (anything not
    /// blocklisted, recorded at /egress/learned, at most 4,096 hosts).
    #[arg(long, env = env::EGRESS_MODE, default_value = "strict")]
    egress_mode: kars_router::egress::Mode,
    /// File of blocklisted host names, one per line (`#` comments); it always wins.
    #[arg(long, env = env::EGRESS_BLOCKLIST_FILE)]
    blocklist_file: Option<PathBuf>,
    /// CIDRs of internal addresses the proxy may connect to (loopback, private, link-local and
    /// metadata addresses are refused otherwise), repeatable or comma-separated.
    #[arg(long, env = env::EGRESS_ALLOW_CIDRS, value_delimiter = ',')]
    allow_private_cidr: Vec<ipnet::IpNet>,
    /// Inference provider base URL, `NAME=URL` (e.g. `azure-openai=https://x.openai.azure.com/openai/v1`),
    /// repeatable; the InferencePolicy names providers, the router maps them to URLs.
    #[arg(long = "provider", env = env::INFERENCE_PROVIDERS, value_delimiter = ',', value_parser = kars_router::inference::name_value)]
    providers: Vec<(String, String)>,
    /// A provider's API key file, `NAME=FILE`, repeatable: read for each request and sent as a
    /// bearer token; while it is missing or empty, requests to that provider are refused (503
    /// `provider_credentials_missing` when no other upstream answers).
    #[arg(long = "provider-key-file", env = env::INFERENCE_PROVIDER_KEY_FILES, value_delimiter = ',', value_parser = kars_router::inference::name_value)]
    provider_key_files: Vec<(String, String)>,
    /// Extra CA certificates (PEM) trusted for inference upstreams.
    #[arg(long, env = env::INFERENCE_CA_FILE)]
    inference_ca_file: Option<PathBuf>,
    /// The token-budget ledger (daily and monthly usage; survives restarts). The renderer
    /// sets TOKEN_BUDGET_PERSIST_PATH.
    #[arg(long, env = env::TOKEN_BUDGET_PERSIST_PATH, default_value = contract::BUDGET_FILE)]
    budget_file: PathBuf,
    /// The commerce ledger: what each ToolPolicy's transfers spent today and this month (kept
    /// across restarts; a damaged ledger stops the router).
    #[arg(long, env = env::COMMERCE_LEDGER, default_value = contract::COMMERCE_LEDGER_FILE)]
    commerce_ledger: PathBuf,
    /// Peers that may call the protected routes (comma list); empty: any peer with the token.
    /// The token is needed from every caller either way, loopback included.
    #[arg(long, env = "ROUTER_ADMIN_ALLOW_IPS", value_delimiter = ',')]
    admin_allow_ips: Vec<std::net::IpAddr>,
}

fn duration(s: &str) -> Result<Duration, kars_router::config::SettingError> {
    kars_router::config::positive_duration("duration", s)
}

fn read_trimmed(path: &std::path::Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| path.display().to_string())?
        .trim()
        .to_string())
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
        Some(p) => read_trimmed(p).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "admin token unreadable; /internal/* refuses every request");
            String::new()
        }),
        None => String::new(),
    };
    let audit_log = args
        .audit_log
        .clone()
        .unwrap_or_else(|| args.audit_dir.join(contract::AUDIT_FILE_NAME));
    let audit = kars_router::audit::AuditLog::open(&audit_log, args.audit_fsync)
        .map_err(|e| anyhow::anyhow!("audit log: {e} (run `kars audit verify {}` to see where it breaks; move it aside to start a new chain)", audit_log.display()))?;
    let summary = audit.summary();
    tracing::info!(records = summary.records, head = %summary.head, recovered = audit.recovered, path = %audit_log.display(), "audit log open");
    let audit = Arc::new(audit);
    // The signer: its key read now, or — a Secret volume the kubelet has not written yet — at
    // every interval until it appears. A key file that exists but is not a key stops the router.
    let head_signer: Arc<std::sync::OnceLock<kars_router::audit_heads::HeadSigner>> =
        Arc::default();
    let heads = kars_router::audit_heads::heads_path(&audit_log);
    if let Some(key_file) = args.audit_signing_key.clone() {
        if !load_signer(&head_signer, &key_file, &heads)
            .map_err(|e| anyhow::anyhow!("--audit-signing-key: {e}"))?
        {
            tracing::warn!(key = %key_file.display(), "the audit signing key is not there yet: heads are signed once it appears");
        }
        let (s, a, every, heads) = (
            head_signer.clone(),
            audit.clone(),
            args.audit_sign_interval,
            heads.clone(),
        );
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match load_signer(&s, &key_file, &heads) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "the audit signing key cannot be read");
                        continue;
                    }
                }
                if let Some(signer) = s.get() {
                    sign_head(signer, &a);
                }
            }
        });
    }

    let blocklist = match &args.blocklist_file {
        Some(p) => kars_router::config::parse_blocklist(&read_trimmed(p)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => Vec::new(),
    };
    if let Some((name, _)) = args
        .provider_key_files
        .iter()
        .find(|(n, _)| !args.providers.iter().any(|(p, _)| p == n))
    {
        anyhow::bail!("--provider-key-file {name}=…: no --provider {name}=URL is configured");
    }
    let mut providers = Providers::new();
    for (name, url) in &args.providers {
        // Read for each request: a Secret created or rotated later is used without a restart.
        let key = args
            .provider_key_files
            .iter()
            .find(|(n, _)| n == name)
            .map_or(ProviderKey::None, |(_, f)| ProviderKey::File(f.into()));
        providers.insert(name.clone(), (url.clone(), key));
    }
    let serve_inference = !providers.is_empty();
    let policies = Arc::new(Policies::new(
        mounts_from_env(|k| std::env::var(k).ok()),
        Settings {
            mode: Some(args.egress_mode),
            blocklist,
            private_allowed: args.allow_private_cidr.clone(),
            providers,
            learned: Arc::default(),
        },
    ));
    for kind in policies.reload() {
        tracing::info!(%kind, "policy loaded");
    }
    let metrics = Arc::new(kars_router::metrics::RouterMetrics::default());
    let wake = Arc::new(tokio::sync::Notify::new());
    let _watcher = watch_mounts(policies.mounts(), wake.clone());
    tokio::spawn(reload_forever(
        policies.clone(),
        wake,
        Duration::from_secs(args.reload_seconds.max(1)),
        metrics.policy_reloads.clone(),
    ));

    let inference = if serve_inference {
        let budget = Arc::new(
            kars_router::budget::Budget::open(&args.budget_file)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        );
        let ca = match &args.inference_ca_file {
            Some(f) => Some(std::fs::read(f).with_context(|| f.display().to_string())?),
            None => None,
        };
        Some(Arc::new(
            kars_router::inference::Inference::new(
                budget,
                ca.as_deref(),
                kars_router::proxy::system_clock,
            )
            .context("inference proxy")?,
        ))
    } else {
        None
    };
    let listeners = Arc::new(Listeners::default());
    let state = AppState {
        policies: policies.clone(),
        admin_token: Arc::new(token),
        admin_allow_ips: Arc::new(args.admin_allow_ips.clone()),
        sandbox: Arc::new(args.sandbox.clone()),
        audit: Some(audit.clone()),
        egress_proxy: args.proxy_port != 0,
        metrics: metrics.clone(),
        inference,
        listeners: listeners.clone(),
        tool_state: Arc::new(
            kars_router::tool_policy::ToolState::open(&args.commerce_ledger)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        tool_window: Arc::new(kars_router::governance::ToolWindow::new(
            args.tool_rate_limit_max,
            Duration::from_secs(args.tool_rate_limit_window_secs.max(1)),
        )),
        audit_signer: head_signer.clone(),
    };
    if args.metrics_port != 0 {
        let listener = tokio::net::TcpListener::bind((args.address, args.metrics_port)).await?;
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        tokio::spawn(serve_http(
            "metrics",
            listener,
            metrics_app(state.clone()),
            args.head_timeout,
            listeners.clone(),
        ));
    }
    if args.proxy_port != 0 {
        let listener = tokio::net::TcpListener::bind((args.address, args.proxy_port)).await?;
        tracing::info!(addr = %listener.local_addr()?, mode = ?args.egress_mode, "egress proxy listening");
        let proxy = Arc::new(ProxyState::new(
            policies,
            Resolver::System,
            Some(audit.clone()),
            ProxyLimits {
                head_timeout: args.head_timeout,
                idle_timeout: args.tunnel_idle_timeout,
                ..ProxyLimits::default()
            },
            metrics,
        ));
        tokio::spawn(kars_router::proxy::serve_with_health(
            listener,
            proxy,
            listeners.clone(),
        ));
    }
    let listener = tokio::net::TcpListener::bind((args.address, args.port)).await?;
    tracing::info!(addr = %listener.local_addr()?, sandbox = %args.sandbox, "kars-router listening");
    tokio::select! {
        _ = serve_http("api", listener, app(state), args.head_timeout, listeners) => {}
        _ = stop_signal() => tracing::info!("stopping"),
    }
    // What an interval log wrote since its last background sync reaches the disk now.
    audit.flush();
    if let Some(key_file) = &args.audit_signing_key {
        // A key that appeared since the last interval still signs the final head.
        if let Err(e) = load_signer(&head_signer, key_file, &heads) {
            tracing::error!(error = %e, "the audit signing key cannot be read");
        }
    }
    if let Some(s) = head_signer.get() {
        sign_head(s, &audit);
    }
    Ok(())
}

/// Reads the signing key into `signer` unless it is there already; `false` while the file does
/// not exist.
fn load_signer(
    signer: &std::sync::OnceLock<kars_router::audit_heads::HeadSigner>,
    key_file: &Path,
    heads: &Path,
) -> Result<bool, kars_router::audit_heads::HeadError> {
    if signer.get().is_some() {
        return Ok(true);
    }
    let Some(key) = kars_router::audit_heads::try_read_signing_key(key_file)? else {
        return Ok(false);
    };
    let s = kars_router::audit_heads::HeadSigner::new(key, heads.to_path_buf());
    tracing::info!(key = s.key_id(), heads = %heads.display(), "signing the audit head");
    let _ = signer.set(s);
    Ok(true)
}

/// Signs the audit head if it moved; a failure is logged (the chain itself is unaffected).
fn sign_head(signer: &kars_router::audit_heads::HeadSigner, audit: &kars_router::audit::AuditLog) {
    let summary = audit.summary();
    match signer.sign_if_moved(&summary, &kars_contract::time::now_rfc3339()) {
        Ok(true) => {
            tracing::info!(records = summary.records, head = %summary.head, "audit head signed")
        }
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "could not sign the audit head"),
    }
}

/// SIGINT or SIGTERM (what Kubernetes sends).
async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
