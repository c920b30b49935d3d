//! The sync pipeline as data: each step returns a typed outcome, recorded in a [`Run`]; the
//! first step that fails stops the run ([`Stopped`]). Nothing here writes the status: that is
//! [`super::report`], from the finished run.
//!
//! Steps: [`front`] (source, verify, prepare — blocking Git and parsing work in one task, the
//! repository opened once), bundles, render, apply, prune, health, enforcement. `kars render`,
//! `kars diff` and `kars why` call [`front`] and [`bundles_and_render`] themselves and stop
//! before anything writes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kars_contract::Reason;
use kars_contract::labels::OWNER_ANNOTATION;
use kars_renderer::bundle::BundleUse;
use kars_renderer::source::SourceLimits;
use kars_renderer::{Prepared, Rendered};

use super::{SyncConfig, SyncError, SyncOutcome, memo};
use crate::apply::{Action, Applier, ApplyError, ApplyReport};
use crate::bundles::BundleVerifier;
use crate::cluster::Cluster;
use crate::enforcement::{self, Enforcement};
use crate::health::{self, HealthReport};
use crate::progress::Event;
use crate::prune::{self, PruneRefusal, PruneResult};
use crate::source::{self, Fetched};
use crate::status::{BundleStatus, InventoryEntry, PolicyRepoSpec, PolicyRepoStatus};
use crate::verify::{RangeVerdict, Verifier, resolve_since, unix_now};

/// The steps of a sync, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Fetch or open the repository, resolve the head.
    Source,
    /// Verify every new commit.
    Verify,
    /// Validate and render the head (with the verified bundles).
    Render,
    /// Server-side apply.
    Apply,
    /// Delete what left Git.
    Prune,
    /// Wait for health.
    Health,
    /// Ask the routers what they enforce.
    Enforce,
}

impl Step {
    /// The step's name in messages and timings.
    pub fn name(self) -> &'static str {
        match self {
            Step::Source => "source",
            Step::Verify => "verify",
            Step::Render => "render",
            Step::Apply => "apply",
            Step::Prune => "prune",
            Step::Health => "health",
            Step::Enforce => "enforce",
        }
    }
}

/// Where and why a run stopped.
#[derive(Debug)]
pub struct Stopped {
    /// The step that failed.
    pub step: Step,
    /// Why.
    pub error: SyncError,
}

/// What the prune step did.
#[derive(Debug, Default)]
pub enum PruneStep {
    /// It did not run (an earlier step stopped the run).
    #[default]
    NotRun,
    /// Not attempted: an object failed to apply (nothing is deleted then).
    ApplyFailed,
    /// Paused: objects are held back until their signed bundles verify.
    HeldBack,
    /// Refused by a safety rule (threshold, empty render).
    Refused(PruneRefusal),
    /// Ran (in a dry run: `WouldDelete` for what would go).
    Ran(Vec<(InventoryEntry, PruneResult)>),
}

/// One sync, step by step (a step that did not run is `None`).
#[derive(Debug, Default)]
pub struct Run {
    /// `spec.suspend`: nothing ran.
    pub suspended: bool,
    /// The source step.
    pub fetched: Option<FetchedHead>,
    /// The verification of the new commits.
    pub verification: Option<RangeVerdict>,
    /// Every signed-bundle reference of the head.
    pub bundle_uses: Vec<BundleUse>,
    /// What each reference resolved to.
    pub bundles: Vec<BundleStatus>,
    /// The render (shared with the render memo).
    pub rendered: Option<Arc<Rendered>>,
    /// The render was the memo's.
    pub render_reused: bool,
    /// API requests of the enforcement check (the pods list, admin-token reads).
    pub enforce_reads: usize,
    /// Fields set in the rendered commit that this version does not enforce (`None`: the run
    /// did not get that far).
    pub unenforced: Option<Vec<kars_renderer::maturity::Unenforced>>,
    /// The apply.
    pub apply: Option<ApplyReport>,
    /// The prune.
    pub prune: PruneStep,
    /// The health look.
    pub health: Option<HealthReport>,
    /// Per router Deployment (`namespace/name`) of a sandbox that should run, what it enforces
    /// (`None` in a dry run).
    pub enforcement: Option<Vec<(String, Enforcement)>>,
    /// Whether sandboxes without a running router hold Ready back.
    pub enforcement_mode: enforcement::Mode,
    /// The status written on the kars CRs after the enforce step.
    pub kars_status: crate::kars_status::Written,
    /// The SRE step (`None`: it did not run).
    pub sre: Option<crate::sre::SreOutcome>,
    /// The step that stopped the run, if one did.
    pub stopped: Option<Stopped>,
    /// Seconds per phase.
    pub timings: Vec<(String, f64)>,
}

/// The head the source step found.
#[derive(Clone, Debug)]
pub struct FetchedHead {
    /// The commit.
    pub head: String,
    /// True when a pack was downloaded.
    pub downloaded: bool,
}

impl Run {
    /// The run of a suspended PolicyRepo.
    pub fn suspended() -> Run {
        Run {
            suspended: true,
            ..Run::default()
        }
    }

    fn stop(mut self, step: Step, error: SyncError) -> Run {
        self.stopped = Some(Stopped { step, error });
        self
    }

    /// Signed-bundle references that did not verify: (object, reason word).
    pub fn bundle_failures(&self) -> Vec<(String, String)> {
        self.bundles
            .iter()
            .filter_map(|b| b.reason.clone().map(|r| (b.object.clone(), r)))
            .collect()
    }

    /// Router Deployments that do not enforce the rendered policies.
    pub fn not_enforced(&self) -> Vec<String> {
        self.enforcement
            .iter()
            .flatten()
            .filter(|(_, e)| matches!(e, Enforcement::NotEnforced(_)))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// Router Deployments of sandboxes that should run but have no running router pod yet.
    pub fn waiting_for_routers(&self) -> Vec<String> {
        self.enforcement
            .iter()
            .flatten()
            .filter(|(_, e)| matches!(e, Enforcement::NoRunningPods))
            .map(|(d, _)| d.clone())
            .collect()
    }

    /// The prune results.
    pub fn pruned(&self) -> &[(InventoryEntry, PruneResult)] {
        match &self.prune {
            PruneStep::Ran(r) => r,
            _ => &[],
        }
    }

    /// True when the cluster matches the verified head (everything applied, pruning done,
    /// every bundle verified, every router enforcing).
    pub fn converged(&self) -> bool {
        self.ready_reason() == Reason::Synced
    }

    /// The reason word of the Ready condition.
    pub fn ready_reason(&self) -> Reason {
        if self.suspended {
            return Reason::Suspended;
        }
        if let Some(s) = &self.stopped {
            return s.error.reason();
        }
        let apply_ok = self.apply.as_ref().is_some_and(ApplyReport::is_success);
        let held_back = self
            .rendered
            .as_ref()
            .is_some_and(|r| !r.held_back.is_empty());
        let prune_done = self
            .pruned()
            .iter()
            .all(|(_, r)| r.leaves_inventory() || matches!(r, PruneResult::WouldDelete));
        if !apply_ok {
            self.apply
                .as_ref()
                .map_or(Reason::ApplyFailed, ApplyReport::failure_reason)
        } else if let Some((_, reason)) = self.bundle_failures().first() {
            reason.parse().unwrap_or(Reason::HeldBack)
        } else if held_back {
            Reason::HeldBack
        } else if !self.not_enforced().is_empty() {
            Reason::NotEnforced
        } else if self.enforcement_mode == enforcement::Mode::Required
            && !self.waiting_for_routers().is_empty()
        {
            Reason::NoRunningRouters
        } else if matches!(self.prune, PruneStep::Refused(_)) {
            Reason::PruneRefused
        } else if !prune_done {
            // Still terminating (finalizers, a namespace emptying) is on its way; refused or
            // kept is a failure.
            let failed = self
                .pruned()
                .iter()
                .any(|(_, r)| r.failure_reason().is_some());
            if failed {
                Reason::PruneFailed
            } else {
                Reason::Progressing
            }
        } else {
            Reason::Synced
        }
    }

    /// The result for callers: the outcome when the run got through apply, else the error.
    pub fn into_result(self) -> Result<SyncOutcome, SyncError> {
        if self.suspended {
            return Err(SyncError::Suspended);
        }
        let ready = self.ready_reason();
        let bundle_failures = self.bundle_failures();
        let not_enforced = self.not_enforced();
        if let Some(s) = self.stopped {
            return Err(s.error);
        }
        let (Some(fetched), Some(verification), Some(rendered), Some(apply)) =
            (self.fetched, self.verification, self.rendered, self.apply)
        else {
            return Err(SyncError::Crashed {
                step: "report",
                message: "a run without a stop is missing a step".into(),
            });
        };
        let (prune, prune_refused) = match self.prune {
            PruneStep::Ran(r) => (r.into_iter().map(|(e, r)| (e.key(), r)).collect(), None),
            PruneStep::Refused(r) => (Vec::new(), Some(r.to_string())),
            _ => (Vec::new(), None),
        };
        let reads = apply.reads
            + self.health.as_ref().map_or(0, |h| h.reads)
            + self.kars_status.reads
            + self.enforce_reads;
        Ok(SyncOutcome {
            commit: fetched.head,
            repository: rendered.repository.clone(),
            cluster: rendered.cluster.clone(),
            digest: rendered.digest.clone(),
            verification,
            apply,
            prune,
            prune_refused,
            health: self.health.unwrap_or_default(),
            timings: self.timings,
            bundle_failures,
            held_back: rendered
                .held_back
                .iter()
                .map(|h| h.object.clone())
                .collect(),
            not_enforced,
            kars_status_patched: self.kars_status.patched,
            reads,
            render_reused: self.render_reused,
            sre_observing: self.sre.as_ref().is_some_and(|s| s.observing),
            ready,
        })
    }
}

/// What the blocking front of the pipeline produced.
#[derive(Debug)]
pub struct Front {
    /// The source step.
    pub fetched: Option<Fetched>,
    /// The verification (also when it refused the range).
    pub verification: Option<RangeVerdict>,
    /// The validated head, ready to render once its bundles are resolved (`None` also when the
    /// head's tree is the one the caller said it has rendered already).
    pub prepared: Option<Prepared>,
    /// The head commit's tree.
    pub tree: Option<gix::ObjectId>,
    /// The step that stopped it.
    pub stopped: Option<Stopped>,
}

/// Source → verify → prepare, blocking: opens (or fetches) the repository once, verifies from
/// `since` (the last applied commit) to the head, and validates the head for `cfg.cluster`.
/// Nothing of the head is read unless every commit verified. When the head's tree is
/// `rendered_tree` (the render memo's), it is not read again: `prepared` stays `None`.
pub fn front(cfg: &SyncConfig, since: Option<&str>, rendered_tree: Option<gix::ObjectId>) -> Front {
    let mut out = Front {
        fetched: None,
        verification: None,
        prepared: None,
        tree: None,
        stopped: None,
    };
    let stop = |step, error| Some(Stopped { step, error });
    let fetched = match source::checkout(
        &cfg.source,
        &cfg.effective_branch(),
        &cfg.cache_dir,
        &cfg.trust.approval_tag_prefix,
        &cfg.credentials,
    ) {
        Ok(f) => f,
        Err(e) => {
            out.stopped = stop(Step::Source, e.into());
            return out;
        }
    };
    let (repo, head) = (fetched.repo.clone(), fetched.head);
    out.fetched = Some(fetched);
    let verdict = since
        .map(|s| resolve_since(&repo, s))
        .transpose()
        .and_then(|since| {
            Verifier::new(&repo, &cfg.trust, unix_now()).verify_since(since.as_ref(), head)
        });
    match verdict {
        Err(e) => {
            out.stopped = stop(Step::Verify, e.into());
            return out;
        }
        Ok(v) if !v.ok() => {
            out.verification = Some(v.clone());
            out.stopped = stop(Step::Verify, SyncError::Untrusted(Box::new(v)));
            return out;
        }
        Ok(v) => out.verification = Some(v),
    }
    out.tree = repo
        .find_commit(head)
        .ok()
        .and_then(|c| c.tree_id().ok())
        .map(|t| t.detach());
    if out.tree.is_some() && out.tree == rendered_tree {
        return out;
    }
    match prepare_head(cfg, &repo, head) {
        Ok(p) => out.prepared = Some(p),
        Err(e) => out.stopped = stop(Step::Render, e),
    }
    out
}

/// Reads the tree of `head` and validates it for `cfg.cluster`.
fn prepare_head(
    cfg: &SyncConfig,
    repo: &gix::Repository,
    head: gix::ObjectId,
) -> Result<Prepared, SyncError> {
    source::read_tree(repo, head, SourceLimits::default())
        .map_err(SyncError::from)
        .and_then(|tree| {
            kars_renderer::prepare(&tree, cfg.cluster.as_deref()).map_err(|source| {
                SyncError::Render {
                    commit: head.to_string(),
                    source,
                }
            })
        })
}

/// Runs [`front`] on a blocking thread.
pub async fn front_task(
    cfg: &SyncConfig,
    since: Option<String>,
    rendered_tree: Option<gix::ObjectId>,
) -> Result<Front, SyncError> {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || front(&cfg, since.as_deref(), rendered_tree))
        .await
        .map_err(|e| SyncError::Crashed {
            step: Step::Source.name(),
            message: e.to_string(),
        })
}

/// Runs [`prepare_head`] on a blocking thread.
async fn prepare_task(
    cfg: &SyncConfig,
    repo: gix::Repository,
    head: gix::ObjectId,
) -> Result<Prepared, SyncError> {
    // Owned and thread-safe: a reference to a repository held across the await would make the
    // sync future not Send.
    let (cfg, repo) = (cfg.clone(), repo.into_sync());
    tokio::task::spawn_blocking(move || prepare_head(&cfg, &repo.to_thread_local(), head))
        .await
        .map_err(|e| SyncError::Crashed {
            step: Step::Render.name(),
            message: e.to_string(),
        })?
}

/// Resolves every signed-bundle reference of `prepared` (a failed one falls back to the bundle
/// verified for it before, from `previous`) and renders with what verified.
pub async fn bundles_and_render(
    prepared: Prepared,
    head: &str,
    verifier: &BundleVerifier,
    previous: &[BundleStatus],
) -> (
    Vec<BundleUse>,
    Vec<BundleStatus>,
    Result<Rendered, SyncError>,
) {
    let uses = prepared.bundle_uses();
    let (bundles, statuses) = verifier.resolve(&uses, previous).await;
    let commit = head.to_string();
    let rendered = tokio::task::spawn_blocking(move || prepared.render(&bundles))
        .await
        .map_err(|e| SyncError::Crashed {
            step: Step::Render.name(),
            message: e.to_string(),
        })
        .and_then(|r| r.map_err(|source| SyncError::Render { commit, source }));
    (uses, statuses, rendered)
}

/// Runs every step against `cluster`. `before` is the status the run starts from (the last
/// applied commit, the inventory, the bundles verified before); `stop` is polled between
/// deletions (graceful shutdown).
pub async fn run(
    cluster: &Cluster,
    cfg: &SyncConfig,
    spec: &PolicyRepoSpec,
    before: &PolicyRepoStatus,
    stop: &(dyn Fn() -> bool + Sync),
) -> Run {
    let mut run = Run::default();
    let mut mark = Instant::now();
    let mut lap = |name: &str, run: &mut Run| {
        run.timings
            .push((name.to_string(), mark.elapsed().as_secs_f64()));
        mark = Instant::now();
    };
    let since = cfg
        .since_override
        .clone()
        .or_else(|| before.last_applied_revision.clone());
    cfg.progress.emit(Event::Step("fetch"));
    let owner = cfg.owner();
    let mut memo = cfg
        .render_memo
        .as_ref()
        .and_then(|m| m.get(cfg.cluster.as_deref(), &owner));
    let front = match front_task(cfg, since, memo.as_ref().map(|m| m.tree)).await {
        Ok(f) => f,
        Err(e) => return run.stop(Step::Source, e),
    };
    run.fetched = front.fetched.as_ref().map(|f| FetchedHead {
        head: f.head.to_string(),
        downloaded: f.downloaded,
    });
    let repo_at_head = front.fetched.as_ref().map(|f| (f.repo.clone(), f.head));
    lap("fetch", &mut run);
    run.verification = front.verification;
    if let Some(s) = front.stopped {
        return run.stop(s.step, s.error);
    }
    let (Some(head), Some((repo, head_id))) = (run.fetched.clone(), repo_at_head.clone()) else {
        return run.stop(
            Step::Render,
            SyncError::Crashed {
                step: Step::Render.name(),
                message: "no head".into(),
            },
        );
    };
    cfg.progress.emit(Event::Step("render"));
    // The memo's render, when the head tree is the one it was made from and every bundle
    // reference resolves to the same bundle as then.
    let mut prepared = front.prepared;
    let mut reused = None;
    if let (None, Some(m)) = (&prepared, &memo) {
        let (_, statuses) = cfg.bundles.resolve(&m.uses, &before.bundles).await;
        if memo::bundles_fingerprint(&statuses) == m.bundles {
            reused = Some((m.uses.clone(), statuses, m.rendered.clone()));
        } else {
            prepared = match prepare_task(cfg, repo.clone(), head_id).await {
                Ok(p) => Some(p),
                Err(e) => return run.stop(Step::Render, e),
            };
        }
    }
    let rendered = match (reused, prepared) {
        (Some((uses, statuses, rendered)), _) => {
            run.render_reused = true;
            if let Some(m) = &memo {
                run.unenforced = Some(m.unenforced.clone());
            }
            run.bundle_uses = uses;
            run.bundles = statuses;
            rendered
        }
        (None, Some(prepared)) => {
            // The remembered render is of another tree: free it before rendering (the new
            // render reuses its memory, and the two are never held at once).
            if let Some(m) = &cfg.render_memo {
                m.clear();
            }
            drop(memo.take());
            let unenforced = prepared.unenforced.clone();
            run.unenforced = Some(unenforced.clone());
            let (uses, statuses, rendered) =
                bundles_and_render(prepared, &head.head, &cfg.bundles, &before.bundles).await;
            let mut rendered = match rendered {
                Ok(r) => r,
                Err(e) => return run.stop(Step::Render, e),
            };
            stamp_owner(&mut rendered, &owner);
            let rendered = Arc::new(rendered);
            if let (Some(m), Some(tree)) = (&cfg.render_memo, front.tree) {
                m.remember(memo::Remembered {
                    tree,
                    cluster: cfg.cluster.clone(),
                    owner: owner.clone(),
                    uses: uses.clone(),
                    unenforced,
                    bundles: memo::bundles_fingerprint(&statuses),
                    rendered: rendered.clone(),
                });
            }
            run.bundle_uses = uses;
            run.bundles = statuses;
            rendered
        }
        (None, None) => {
            return run.stop(
                Step::Render,
                SyncError::Crashed {
                    step: Step::Render.name(),
                    message: "nothing prepared".into(),
                },
            );
        }
    };
    lap("verify+render", &mut run);

    cfg.progress.emit(Event::Step("apply"));
    if !cfg.apply.dry_run && cfg.sre.executor.is_some() {
        // A merged in-cluster proposal's Git copy replaces the in-cluster CR of the same name.
        crate::sre::forward::supersede(cluster.client(), &crate::sre::actions_in(&rendered)).await;
    }
    let mut apply_options = cfg.apply.clone();
    apply_options.owner = Some(owner.clone());
    apply_options.progress = cfg.progress.clone();
    let apply = match Applier::new(cluster, apply_options)
        .with_view(cfg.live_view.clone())
        .apply(&rendered)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            run.rendered = Some(rendered);
            return run.stop(Step::Apply, e.into());
        }
    };
    lap("apply", &mut run);

    run.prune = if !apply.is_success() {
        PruneStep::ApplyFailed
    } else if !rendered.held_back.is_empty() {
        tracing::info!(
            held_back = rendered.held_back.len(),
            "prune paused: objects are held back until their signed bundles verify"
        );
        PruneStep::HeldBack
    } else {
        cfg.progress.emit(Event::Step("prune"));
        match prune_step(cluster, cfg, spec, before, &rendered, &head.head, stop).await {
            Ok(p) => p,
            Err(e) => {
                run.rendered = Some(rendered);
                run.apply = Some(apply);
                return run.stop(Step::Prune, SyncError::Apply(ApplyError::Kube(e)));
            }
        }
    };
    lap("prune", &mut run);

    // SRE actions: after every object applied (the KarsSREAction CRs exist), never after a
    // failed apply.
    if apply.is_success() {
        run.sre = Some(
            sre_step(
                cluster,
                cfg,
                before,
                &rendered,
                repo_at_head.clone(),
                &apply.live_before,
            )
            .await,
        );
        lap("sre", &mut run);
        // Expired egress grants: proposed for removal from Git, once.
        if let (false, Some(forge), Some(proposer), Some((repo, head))) = (
            cfg.apply.dry_run,
            &cfg.sre.forge,
            &cfg.sre.proposer,
            &repo_at_head,
        ) {
            let repo = repo.clone().into_sync();
            match crate::expired::propose_removal(
                forge,
                proposer,
                &repo,
                *head,
                &cfg.effective_branch(),
                kars_contract::time::unix_now(),
            )
            .await
            {
                Ok(Some(url)) => tracing::info!(%url, "proposed removing expired EgressApprovals"),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not propose removing expired EgressApprovals")
                }
            }
        }
    }

    // Health: wait only when something changed; otherwise one look.
    let changed = apply.changed_anything();
    let timeout = if changed {
        cfg.health_timeout
    } else {
        Duration::ZERO
    };
    // What this sync created or changed is read again; the rest is judged from the objects
    // listed before the apply.
    let stale: std::collections::BTreeSet<String> = apply
        .objects
        .iter()
        .filter(|o| matches!(o.action, Action::Created | Action::Configured))
        .map(|o| o.object.clone())
        .collect();
    cfg.progress.emit(Event::Step("health"));
    let health = health::wait(
        cluster,
        &rendered,
        timeout,
        &apply.live_before,
        &stale,
        cfg.live_view.as_deref(),
        &cfg.progress,
    )
    .await;
    run.apply = Some(apply);
    match health {
        Ok(h) => run.health = Some(h),
        Err(e) => {
            run.rendered = Some(rendered);
            return run.stop(Step::Health, SyncError::Apply(ApplyError::Kube(e)));
        }
    }
    // Ready means enforced: every running router reports the digests just rendered.
    if !cfg.apply.dry_run {
        cfg.progress.emit(Event::Step("enforce"));
        run.enforcement_mode = cfg.enforcement;
        let http = match crate::reqwest_client() {
            Ok(c) => c,
            Err(e) => {
                run.rendered = Some(rendered);
                return run.stop(
                    Step::Health,
                    SyncError::Crashed {
                        step: "enforce",
                        message: format!("cannot build the HTTP client for routers: {e}"),
                    },
                );
            }
        };
        let (results, enforce_reads) = enforcement::check_all(
            cluster.client(),
            &http,
            &rendered.routers,
            cfg.live_view.as_deref(),
        )
        .await;
        run.enforce_reads = enforce_reads;
        // The kars CRs' own status (upstream's CLI and consoles read it; no kars controller
        // writes it in a GitOps-only cluster).
        if let Some(apply) = &run.apply {
            let written = crate::kars_status::write(
                cluster.client(),
                &rendered,
                apply,
                &results,
                cfg.apply.concurrency,
                cfg.live_view.as_deref(),
            )
            .await;
            for (object, error) in &written.failed {
                tracing::warn!(%object, %error, "could not write the status of a kars object");
            }
            run.kars_status = written;
        }
        run.enforcement = Some(results);
    }
    run.rendered = Some(rendered);
    lap("health", &mut run);
    tracing::debug!(timings = ?run.timings, "sync phases (seconds)");
    run
}

/// Decides on, runs and observes the SRE actions of the head (approval evidence from the
/// repository, on a blocking thread).
async fn sre_step(
    cluster: &Cluster,
    cfg: &SyncConfig,
    before: &PolicyRepoStatus,
    rendered: &Rendered,
    repo_at_head: Option<(gix::Repository, gix::ObjectId)>,
    live_before: &std::collections::BTreeMap<String, serde_json::Value>,
) -> crate::sre::SreOutcome {
    let actions = crate::sre::actions_in(rendered);
    if actions.is_empty() && before.sre_actions.is_empty() && cfg.sre.proposer.is_none() {
        return crate::sre::SreOutcome::default();
    }
    let evidence = match repo_at_head.clone() {
        Some((repo, head)) => {
            let (policy, acts, records) = (
                cfg.trust.clone(),
                actions.clone(),
                before.sre_actions.clone(),
            );
            tokio::task::spawn_blocking(move || {
                crate::sre::evidence_for(&repo, &policy, head, &acts, &records)
            })
            .await
            .unwrap_or_default()
        }
        None => Default::default(),
    };
    crate::sre::step(
        cluster.client(),
        &cfg.sre,
        &cfg.status_namespace,
        &cfg.name,
        &before.sre_actions,
        &actions,
        &evidence,
        live_before,
        repo_at_head.map(|(r, h)| (r.into_sync(), h)),
        &cfg.effective_branch(),
        cfg.apply.dry_run,
    )
    .await
}

/// Plans and runs the deletion of what left Git (in a dry run: reports what would go).
async fn prune_step(
    cluster: &Cluster,
    cfg: &SyncConfig,
    spec: &PolicyRepoSpec,
    before: &PolicyRepoStatus,
    rendered: &Rendered,
    head: &str,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<PruneStep, kube::Error> {
    let mut opts = cfg.prune.tightened_by(spec.prune.as_ref());
    if spec.allow_mass_prune_for.as_deref() == Some(head) {
        opts.allow_mass_prune = true;
    }
    opts.allow_empty = opts.allow_empty || rendered.allow_empty_prune;
    let old = old_inventory(before);
    let now: Vec<InventoryEntry> = rendered
        .objects
        .iter()
        .map(crate::status::entry_of)
        .collect();
    match prune::plan(&old, &now, &opts) {
        Err(refusal) => Ok(PruneStep::Refused(refusal)),
        Ok(planned) if planned.is_empty() => Ok(PruneStep::Ran(Vec::new())),
        Ok(planned) => {
            let results = prune::execute(
                cluster,
                &rendered.repository,
                &cfg.owner(),
                &planned,
                cfg.apply.dry_run,
                &cfg.progress,
                stop,
            )
            .await?;
            Ok(PruneStep::Ran(results))
        }
    }
}

/// Writes the owning PolicyRepo (`ns/name`) into every rendered object's
/// [`OWNER_ANNOTATION`]: the one annotation the agent adds to what `kars render` prints.
pub fn stamp_owner(rendered: &mut Rendered, owner: &str) {
    for o in &mut rendered.objects {
        if let Some(a) = o.manifest["metadata"]["annotations"].as_object_mut() {
            a.insert(OWNER_ANNOTATION.to_string(), serde_json::json!(owner));
        }
    }
}

/// The inventory a status records.
pub fn old_inventory(st: &PolicyRepoStatus) -> Vec<InventoryEntry> {
    st.inventory
        .iter()
        .filter_map(|s| InventoryEntry::parse(s))
        .collect()
}
