//! The long-running agent: triggers (interval with jitter, push webhooks, a watched local
//! repository), leader election, the HTTP endpoints (`/healthz`, `/readyz`, `/metrics`,
//! `/hooks/github`, `/hooks/gitea`) and graceful shutdown around [`crate::sync::sync_once`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokio::sync::Notify;

use crate::lease::{self, Leadership, LeaseConfig};
use crate::metrics::Metrics;
use crate::sync::{SyncConfig, SyncError, sync_once};
use crate::webhook::{self, HookState, ReplayGuard, TokenBucket};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// What each sync does.
    pub sync: SyncConfig,
    /// Time between syncs (±10% jitter).
    pub interval: Duration,
    /// After a sync that did not end Ready, the next one comes after this: at this pace while
    /// waiting (routers, pods, a terminating namespace), doubling up to `interval` after
    /// failures.
    pub retry_interval: Duration,
    /// Address of the HTTP endpoints.
    pub listen: SocketAddr,
    /// Shared secret of push webhooks (none: webhook endpoints refuse everything).
    pub webhook_secret: Option<Vec<u8>>,
    /// Leader election (none: this replica always syncs).
    pub lease: Option<LeaseConfig>,
    /// Watch a local source repository for new commits.
    pub watch_local: bool,
    /// Preview open pull requests on the forge (`sync.sre.forge`) after each sync.
    pub previews: bool,
}

#[derive(Clone)]
struct Http {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    hooks: HookState,
}

/// The HTTP router (exposed for tests).
fn router(http: Http) -> Router {
    let hooks = Router::new()
        .route("/hooks/github", post(webhook::github))
        .route("/hooks/gitea", post(webhook::gitea))
        .with_state(http.hooks.clone());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(http)
        .merge(hooks)
}

async fn readyz(State(h): State<Http>) -> impl IntoResponse {
    if h.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "first sync not finished")
    }
}

async fn metrics(State(h): State<Http>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        h.metrics.encode(),
    )
}

/// Interval with ±10% jitter (from the clock's nanoseconds; no randomness dependency needed).
fn jittered(interval: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.9 + f64::from(nanos % 1000) / 5000.0; // 0.9 ..= 1.1
    interval.mul_f64(factor)
}

/// How long a trigger (push hook, local ref change, `kars reconcile`) waits for the ones that
/// come with it before the sync starts.
pub const TRIGGER_DEBOUNCE: Duration = Duration::from_millis(25);

/// Watches `.git` of a local repository; every change to refs wakes the sync loop.
fn watch_repository(
    path: &std::path::Path,
    trigger: Arc<Notify>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let git_dir = if path.join(".git").is_dir() {
        path.join(".git")
    } else {
        path.to_path_buf()
    };
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res
            && ev.paths.iter().any(|p| {
                let s = p.to_string_lossy();
                s.contains("/refs/") || s.ends_with("HEAD") || s.ends_with("packed-refs")
            })
        {
            trigger.notify_one();
        }
    })
    .ok()?;
    watcher.watch(&git_dir, RecursiveMode::Recursive).ok()?;
    Some(watcher)
}

/// Wakes the sync loop when the PolicyRepo asks for a sync now (a new value of the
/// `gitops.kars.io/reconcile-requested-at` annotation: `kars reconcile`) or its spec changes
/// (a new generation: `kars suspend`, `kars resume`). Reconnects after errors. Sets `deleted`
/// while the PolicyRepo is gone after having existed (`kars delete`, the chart's uninstall
/// hook): the agent then stops syncing instead of re-creating it and re-applying everything.
fn watch_policy_repo(
    client: kube::Client,
    namespace: String,
    name: String,
    trigger: Arc<Notify>,
    deleted: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    use futures_util::StreamExt;
    use kube::api::{Api, WatchEvent, WatchParams};
    tokio::spawn(async move {
        let api: Api<crate::status::PolicyRepo> = Api::namespaced(client, &namespace);
        let mut seen: Option<(Option<String>, Option<i64>)> = None;
        loop {
            let wp = WatchParams::default()
                .fields(&format!("metadata.name={name}"))
                .timeout(290);
            match api.watch(&wp, "0").await {
                Ok(stream) => {
                    let mut stream = std::pin::pin!(stream);
                    while let Some(event) = stream.next().await {
                        let pr = match event {
                            Ok(WatchEvent::Added(pr) | WatchEvent::Modified(pr)) => {
                                deleted.store(false, Ordering::SeqCst);
                                pr
                            }
                            Ok(WatchEvent::Deleted(_)) => {
                                tracing::warn!(%name, "the PolicyRepo was deleted: not syncing until it exists again (or the agent restarts)");
                                deleted.store(true, Ordering::SeqCst);
                                continue;
                            }
                            Ok(WatchEvent::Bookmark(_)) => continue,
                            Ok(WatchEvent::Error(_)) | Err(_) => break,
                        };
                        let key = (
                            pr.metadata
                                .annotations
                                .as_ref()
                                .and_then(|a| a.get(kars_contract::labels::RECONCILE_ANNOTATION))
                                .cloned(),
                            pr.metadata.generation,
                        );
                        if seen.as_ref().is_some_and(|s| *s != key) {
                            tracing::info!(requested = ?key.0, generation = ?key.1, "PolicyRepo changed: syncing now");
                            trigger.notify_one();
                        }
                        seen = Some(key);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "watching the PolicyRepo failed; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    })
}

/// Now, as the value of the reconcile annotation: RFC 3339 with nanoseconds, like flux's
/// requestedAt, so two requests in one second differ (and `--wait` never takes an earlier
/// request's result for its own).
pub fn reconcile_request_time() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    kars_contract::time::format_rfc3339(now.as_secs() as i64)
        .replace('Z', &format!(".{:09}Z", now.subsec_nanos()))
}

/// Sets the PolicyRepo's reconcile annotation to now (what `kars reconcile` does): the
/// leader's watch starts a sync.
async fn request_reconcile(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<(), kube::Error> {
    use kube::api::{Api, Patch, PatchParams};
    let requested = reconcile_request_time();
    let api: Api<crate::status::PolicyRepo> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "metadata": {"annotations": {kars_contract::labels::RECONCILE_ANNOTATION: requested}}
        })),
    )
    .await?;
    Ok(())
}

/// Runs until `shutdown` resolves. The sync in progress finishes its current object and
/// records its status before the agent exits.
pub async fn run(
    client: kube::Client,
    cfg: AgentConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let trigger = Arc::new(Notify::new());
    let stopping = Arc::new(AtomicBool::new(false));
    let hooks = HookState {
        secret: Arc::new(cfg.webhook_secret.clone().unwrap_or_default()),
        replay: Arc::new(Mutex::new(ReplayGuard::new(1024))),
        limiter: Arc::new(Mutex::new(TokenBucket::new(20, 2.0))),
        trigger: trigger.clone(),
        accepted: Default::default(),
    };
    let hooks_accepted = hooks.accepted.clone();
    let mut hooks_relayed = 0;
    let http = Http {
        metrics: metrics.clone(),
        ready: ready.clone(),
        hooks,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
    tracing::info!(addr = %listener.local_addr()?, "serving /healthz /readyz /metrics /hooks/github /hooks/gitea");
    let stop_http = Arc::new(Notify::new());
    let stop_http_wait = stop_http.clone();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router(http))
            .with_graceful_shutdown(async move { stop_http_wait.notified().await })
            .await;
    });
    let _watcher = if cfg.watch_local && !crate::source::is_remote_url(&cfg.sync.source) {
        let w = watch_repository(std::path::Path::new(&cfg.sync.source), trigger.clone());
        if w.is_some() {
            tracing::info!(path = %cfg.sync.source, "watching the local repository for new commits");
        }
        w
    } else {
        None
    };
    let policy_repo_deleted = Arc::new(AtomicBool::new(false));
    let policy_repo_watch = watch_policy_repo(
        client.clone(),
        cfg.sync.status_namespace.clone(),
        cfg.sync.name.clone(),
        trigger.clone(),
        policy_repo_deleted.clone(),
    );
    let stop_flag = stopping.clone();
    let stop_trigger = trigger.clone();
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing the current object, then stopping");
        stop_flag.store(true, Ordering::SeqCst);
        stop_trigger.notify_one();
    });

    if let Some(l) = &cfg.lease {
        crate::status::ensure_namespace(&client, &l.namespace).await?;
    }
    let mut leader = cfg.lease.is_none();
    // Time to the next sync after a miss (None: the last sync ended Ready).
    let mut retry: Option<Duration> = None;
    let mut previewed = crate::preview::Previewed::default();
    loop {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        if let Some(l) = &cfg.lease {
            match lease::try_acquire(&client, l).await {
                Ok(Leadership::Leader) => {
                    if !leader {
                        tracing::info!(identity = %l.identity, "became the leader");
                    }
                    leader = true;
                }
                Ok(Leadership::Follower(holder)) => {
                    if leader {
                        tracing::warn!(%holder, "lost the lease; not syncing");
                    }
                    leader = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease check failed; not syncing until it succeeds");
                    leader = false;
                }
            }
        }
        if leader && policy_repo_deleted.load(Ordering::SeqCst) {
            retry = None;
            ready.store(true, Ordering::Relaxed);
        } else if leader {
            // Keep renewing the lease while the sync runs; losing it abandons the sync at the
            // next object boundary, so two replicas never apply at once.
            let lost = Arc::new(AtomicBool::new(false));
            let renewer = cfg.lease.clone().map(|l| {
                let (client, lost) = (client.clone(), lost.clone());
                tokio::spawn(async move {
                    loop {
                        tokio::time::sleep(l.duration / 3).await;
                        match lease::try_acquire(&client, &l).await {
                            Ok(Leadership::Leader) => {}
                            _ => {
                                tracing::warn!("lease lost during a sync; abandoning it");
                                lost.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                })
            });
            let (stop, lost_flag) = (stopping.clone(), lost.clone());
            let stop_fn = move || stop.load(Ordering::SeqCst) || lost_flag.load(Ordering::SeqCst);
            let result = sync_once(client.clone(), &cfg.sync, Some(&metrics), &stop_fn).await;
            if let Some(r) = renewer {
                r.abort();
            }
            if lost.load(Ordering::SeqCst) {
                leader = false;
            }
            // Waiting for something on its way (routers loading the policy, pods starting, a
            // namespace terminating) is retried at the same pace; a failure backs off.
            let (missed, waiting) = match &result {
                Ok(o) => (
                    !o.converged(),
                    matches!(
                        o.ready,
                        kars_contract::Reason::NotEnforced
                            | kars_contract::Reason::NoRunningRouters
                            | kars_contract::Reason::Progressing
                    ),
                ),
                Err(SyncError::Suspended) => (false, false),
                Err(_) => (true, false),
            };
            retry = missed.then(|| match retry {
                Some(r) if !waiting => (r * 2).min(cfg.interval),
                _ => cfg.retry_interval,
            });
            // An SRE action's recovery is observed every 10 s (upstream's pace).
            if let Ok(o) = &result
                && o.sre_observing
            {
                let observe = Duration::from_secs(crate::sre::observe::OBSERVE_INTERVAL_SECS);
                retry = Some(retry.map_or(observe, |r| r.min(observe)));
            }
            let applied = match &result {
                Ok(o) if o.converged() => Some(o.commit.clone()),
                _ => None,
            };
            match result {
                Ok(o) => tracing::info!(
                    commit = %o.commit,
                    digest = %o.digest,
                    converged = o.converged(),
                    writes = o.apply.writes,
                    pruned = o.prune.len(),
                    "sync finished"
                ),
                Err(SyncError::Suspended) => tracing::info!("suspended; not syncing"),
                Err(e) => {
                    let problem = match &e {
                        SyncError::Untrusted(v) => v.first_problem().unwrap_or_default(),
                        other => other.to_string(),
                    };
                    tracing::error!(reason = %e.reason(), error = %problem, "sync failed; the cluster keeps its last good state");
                }
            }
            if cfg.previews
                && !stopping.load(Ordering::SeqCst)
                && let Some(forge) = &cfg.sync.sre.forge
            {
                match crate::preview::preview_open_pulls(
                    &client,
                    &cfg.sync,
                    forge,
                    &mut previewed,
                    applied.as_deref(),
                )
                .await
                {
                    Ok(done) if !done.is_empty() => {
                        tracing::info!(count = done.len(), "pull requests previewed");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "pull request previews failed; retried next sync")
                    }
                }
            }
            ready.store(true, Ordering::Relaxed);
        } else {
            // A follower that received push hooks (the Service balances across replicas)
            // asks the leader to sync now, the way `kars reconcile` does.
            let accepted = hooks_accepted.load(Ordering::SeqCst);
            if accepted != hooks_relayed {
                match request_reconcile(&client, &cfg.sync.status_namespace, &cfg.sync.name).await {
                    Ok(()) => {
                        tracing::info!(
                            "push hook received by a follower: asked the leader to sync"
                        );
                        hooks_relayed = accepted;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "could not relay a push hook to the leader")
                    }
                }
            }
            ready.store(true, Ordering::Relaxed);
        }
        let wait = match (&cfg.lease, retry) {
            (Some(l), _) if !leader => l.duration / 3,
            (_, Some(r)) => {
                tracing::info!(retry_in = ?r, "not Ready yet; syncing again soon");
                r.min(cfg.interval)
            }
            _ => jittered(cfg.interval),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = trigger.notified() => {
                // Debounce: hooks and ref updates that arrive together (a push hook and its
                // twin, a ref's lock file and its rename) make one sync. A trigger during the
                // sync leaves a permit, so a push never waits for the interval.
                tokio::time::sleep(TRIGGER_DEBOUNCE).await;
            }
        }
    }
    if let (Some(l), true) = (&cfg.lease, leader) {
        let _ = lease::release(&client, l).await;
    }
    policy_repo_watch.abort();
    stop_http.notify_one();
    let _ = server.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(100));
            assert!(
                d >= Duration::from_secs(90) && d <= Duration::from_secs(110),
                "{d:?}"
            );
        }
    }
}
