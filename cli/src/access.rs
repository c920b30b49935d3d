//! Reaching the cluster the way kubectl does: `--kubeconfig FILE`, else `$KUBECONFIG` (a list;
//! files that do not exist are skipped, the rest merged, the first file's value winning), else
//! `~/.kube/config`, else the in-cluster service account; `--context` picks the context. API
//! errors become one line that says what to do (see [`explain`]).

use std::path::{Path, PathBuf};

use kars_gitops_agent::status::DEFAULT_NAMESPACE;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::failure::{CHECK, Failure, UNREACHABLE, USAGE};

/// The flags of every command that talks to the cluster.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Cluster")]
pub struct ClusterArgs {
    /// The kubeconfig file (default: $KUBECONFIG — a list, missing files skipped — then
    /// ~/.kube/config, then the in-cluster service account).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current-context).
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace of the PolicyRepo objects.
    #[arg(
        short = 'n',
        long,
        visible_alias = "status-namespace",
        env = "KARS_NAMESPACE",
        default_value = DEFAULT_NAMESPACE,
        value_name = "NAMESPACE"
    )]
    pub namespace: String,
}

/// A client and where it points, for messages.
#[derive(Clone)]
pub struct Connected {
    /// The client.
    pub client: kube::Client,
    /// The API server URL.
    pub server: String,
    /// The context used (`in-cluster` for the service account).
    pub context: String,
}

fn kubeconfig_error(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::msg(USAGE, format!("{what}: {e}"))
}

/// Reads the kubeconfig files kubectl would, in its order and with its list semantics.
fn load_kubeconfig(explicit: Option<&Path>) -> Result<Option<(Kubeconfig, String)>, Failure> {
    if let Some(path) = explicit {
        if !path.exists() {
            return Err(Failure::msg(
                USAGE,
                format!("--kubeconfig {}: no such file", path.display()),
            ));
        }
        let kc = Kubeconfig::read_from(path)
            .map_err(|e| kubeconfig_error(&path.display().to_string(), e))?;
        return Ok(Some((kc, path.display().to_string())));
    }
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        let paths: Vec<PathBuf> = std::env::split_paths(&list).collect();
        let mut merged: Option<Kubeconfig> = None;
        let mut used = Vec::new();
        for p in paths.iter().filter(|p| p.is_file()) {
            let kc = Kubeconfig::read_from(p)
                .map_err(|e| kubeconfig_error(&p.display().to_string(), e))?;
            merged = Some(match merged {
                None => kc,
                Some(m) => m
                    .merge(kc)
                    .map_err(|e| kubeconfig_error(&p.display().to_string(), e))?,
            });
            used.push(p.display().to_string());
        }
        return match merged {
            Some(kc) => Ok(Some((kc, format!("KUBECONFIG ({})", used.join(", "))))),
            None => Err(Failure::msg(
                USAGE,
                format!(
                    "KUBECONFIG names no file that exists ({})",
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
            .hint("point KUBECONFIG or --kubeconfig at a kubeconfig file")),
        };
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    if let Some(default) = home.map(|h| h.join(".kube/config")).filter(|p| p.is_file()) {
        let kc = Kubeconfig::read_from(&default)
            .map_err(|e| kubeconfig_error(&default.display().to_string(), e))?;
        return Ok(Some((kc, default.display().to_string())));
    }
    Ok(None)
}

/// A client for the cluster `args` name.
pub async fn connect(args: &ClusterArgs) -> Result<Connected, Failure> {
    let (config, context) = match load_kubeconfig(args.kubeconfig.as_deref())? {
        Some((kc, from)) => {
            let context = args
                .context
                .clone()
                .or_else(|| kc.current_context.clone())
                .unwrap_or_default();
            if let Some(want) = &args.context
                && !kc.contexts.iter().any(|c| &c.name == want)
            {
                let known: Vec<&str> = kc.contexts.iter().map(|c| c.name.as_str()).collect();
                return Err(Failure::msg(
                    USAGE,
                    format!(
                        "--context {want}: no such context in {from} (contexts: {})",
                        known.join(", ")
                    ),
                ));
            }
            let options = KubeConfigOptions {
                context: args.context.clone(),
                ..KubeConfigOptions::default()
            };
            let config = kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| kubeconfig_error(&from, e))?;
            (config, context)
        }
        None => match kube::Config::incluster() {
            Ok(c) => (c, "in-cluster".to_string()),
            Err(_) => {
                return Err(Failure::msg(
                    USAGE,
                    "no kubeconfig: KUBECONFIG is not set, ~/.kube/config does not exist, and this is not a pod",
                )
                .hint("pass --kubeconfig FILE or set KUBECONFIG"));
            }
        },
    };
    let server = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| {
        Failure::msg(
            USAGE,
            format!("the kubeconfig for {server}: {}", root_cause(&e)),
        )
    })?;
    Ok(Connected {
        client,
        server: server.trim_end_matches('/').to_string(),
        context,
    })
}

/// The innermost cause of an error (what actually went wrong: `Connection refused`, …).
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut last = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !t.is_empty() {
            last = t;
        }
        cur = c.source();
    }
    last
}

/// True when the API server answered with a plain-text 404 (the path is not served: a CRD
/// that is not installed), not with a Kubernetes `Status`.
pub fn is_unserved_path(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404 && s.reason == "Failed to parse error data")
}

/// The command that installs our CRDs.
pub const CRD_INSTALL: &str =
    "kubectl apply -f charts/kars-gitops/crds/ (or helm install kars-gitops charts/kars-gitops)";

/// One line for a failed API call on `what` (e.g. `PolicyRepo kars-gitops-system/x`), the
/// exit code it maps to, and what to do.
pub fn explain(e: &kube::Error, what: &str, at: &Connected) -> Failure {
    match e {
        kube::Error::Api(s) if is_unserved_path(e) => {
            let missing = if what.starts_with("PolicyRepo") {
                "the PolicyRepo CRD (policyrepos.gitops.kars.io) is not installed".to_string()
            } else {
                format!("the kind is not served ({})", s.message)
            };
            Failure::msg(
                CHECK,
                format!("{what}: {missing} in the cluster at {}", at.server),
            )
            .hint(format!("install it: {CRD_INSTALL}"))
            .reason("KindNotServed")
        }
        kube::Error::Api(s) if s.code == 404 => {
            Failure::msg(CHECK, format!("{what} not found")).reason("NotFound")
        }
        kube::Error::Api(s) if s.code == 401 => Failure::msg(
            UNREACHABLE,
            format!("{what}: the cluster at {} refused our credentials: {}", at.server, s.message),
        )
        .hint(format!(
            "check the user of context {} (kubectl --context {} auth whoami)",
            at.context, at.context
        )),
        kube::Error::Api(s) if s.code == 403 => Failure::msg(
            CHECK,
            format!("{what}: forbidden: {}", s.message),
        )
        .reason("Forbidden")
        .hint("ask for RBAC that allows it (kubectl auth can-i …)"),
        kube::Error::Api(s) => Failure::msg(
            CHECK,
            format!("{what}: {} ({})", s.message, s.code),
        ),
        other => Failure::msg(
            UNREACHABLE,
            format!(
                "cannot reach the cluster at {} (context {}): {}",
                at.server,
                at.context,
                root_cause(other)
            ),
        )
        .hint("is the API server running and reachable? Check --kubeconfig and --context (kubectl cluster-info)")
        .reason("ApiServerUnavailable"),
    }
}
