//! SRE remediations approved through Git: the step of a sync that decides on every
//! `KarsSREAction` the head renders, runs the approved ones exactly once with scoped rights,
//! observes their recovery and reports each transition (the action's own status, an Event,
//! the pull request it came through).
//!
//! - [`approval`]: is it approved? From the signed history alone.
//! - [`ledger`]: what was decided and run, in the PolicyRepo status (written before running).
//! - [`execute`]: the scoped run (one-shot RoleBinding, impersonated writer, SSA).
//! - [`observe`]: the recovery observer.
//!
//! The decision for one action ([`decide`]) is pure; [`step`] does the I/O around it.

pub mod approval;
pub mod execute;
pub mod forward;
pub mod ledger;
pub mod observe;
pub mod reap;

use std::collections::BTreeMap;

use kars_contract::Reason;
use kars_contract::time::{format_rfc3339, parse_rfc3339, unix_now};
use kars_renderer::Rendered;
use kars_renderer::api::KarsSREActionSpec;
use kars_renderer::sre::{DEFAULT_TTL_MINUTES, MAX_TTL_MINUTES, SreOperation};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{Value, json};

use crate::forge::{CommitState, Forge, Gitea};
use crate::verify::TrustPolicy;
use approval::{ApprovalEvidence, ApprovalRefusal};
use execute::Executor;
use ledger::{SrePhase, SreRecord};

/// The branch `kars sre propose` pushes an action on: `kars-sre/<id>`.
pub const BRANCH_PREFIX: &str = "kars-sre/";
/// The commit-status context the agent sets on an approval commit.
pub const STATUS_CONTEXT: &str = "kars-gitops/sre";
/// Where action files live in the repository.
pub const ACTIONS_DIR: &str = "sre/actions";

/// The repository file of action `id`.
pub fn file_of(id: &str) -> String {
    format!("{ACTIONS_DIR}/{id}.yaml")
}

/// Environment variable naming a crash point, for the crash-consistency tests only: the agent
/// aborts (as a SIGKILL would stop it) at `sre-before-execute` (intent recorded, nothing run)
/// or `sre-after-execute` (run, result not recorded).
pub const CRASH_POINT_ENV: &str = "KARS_TEST_CRASH_POINT";

fn crash_point(name: &str) {
    if std::env::var(CRASH_POINT_ENV).is_ok_and(|v| v == name) {
        eprintln!("{CRASH_POINT_ENV}={name}: aborting here");
        std::process::abort();
    }
}

/// What the SRE step needs besides the cluster.
#[derive(Clone, Debug)]
pub struct SreSettings {
    /// Runs actions (`None`: nothing is decided or run here, as in `kars sync`; the agent
    /// runs them).
    pub executor: Option<Executor>,
    /// Posts transitions to the pull requests (`None`: status and Events only).
    pub forge: Option<Gitea>,
    /// Applied → Failed when the namespace has not recovered after this long (upstream: 600 s).
    pub recovery_deadline_secs: i64,
    /// Commits in-cluster proposals as pull requests (needs `forge` too; `None`: they are left
    /// alone, never run).
    pub proposer: Option<forward::Proposer>,
    /// Finished actions are reaped this long after they finished (upstream: an hour).
    pub reap_after_secs: i64,
}

impl Default for SreSettings {
    fn default() -> Self {
        SreSettings {
            executor: None,
            forge: None,
            recovery_deadline_secs: observe::RECOVERY_DEADLINE_SECS,
            proposer: None,
            reap_after_secs: reap::REAP_AFTER_SECS,
        }
    }
}

/// One `KarsSREAction` of the rendered head.
#[derive(Clone, Debug)]
pub struct ActionInGit {
    /// `metadata.name`.
    pub name: String,
    /// Repository file.
    pub file: String,
    /// `metadata.generation` is not known here; the spec as rendered.
    pub spec: KarsSREActionSpec,
}

/// The rendered `KarsSREAction`s.
pub fn actions_in(rendered: &Rendered) -> Vec<ActionInGit> {
    rendered
        .objects
        .iter()
        .filter(|o| o.kind() == "KarsSREAction")
        .filter_map(|o| {
            Some(ActionInGit {
                name: o.name().to_string(),
                file: o.source.clone(),
                spec: serde_json::from_value(o.manifest["spec"].clone()).ok()?,
            })
        })
        .collect()
}

/// What to do with one action.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing new (already decided, or pending): keep the record as it is.
    Keep,
    /// Pending in Git: awaiting approval (not recorded).
    Proposed,
    /// Approved, but by fewer approvers than the trust policy needs: not decided yet (more
    /// signed approval tags may come before the TTL).
    Waiting(String),
    /// Record a final decision without running.
    Record(SrePhase, Reason, String),
    /// Run it.
    Run(SreOperation),
}

/// Decides on `action`, given its record, the approval evidence (for Approved ones) and the
/// time (pure).
pub fn decide(
    action: &ActionInGit,
    record: Option<&SreRecord>,
    evidence: Option<&Result<ApprovalEvidence, ApprovalRefusal>>,
    now: i64,
) -> Decision {
    if record.is_some() {
        return Decision::Keep;
    }
    match action.spec.approval.state.as_str() {
        "Rejected" => Decision::Record(
            SrePhase::Rejected,
            Reason::Rejected,
            format!(
                "rejected{}",
                action
                    .spec
                    .approval
                    .note
                    .as_deref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            ),
        ),
        "Approved" => {
            let op =
                match SreOperation::parse(&action.spec.action.type_, &action.spec.action.params) {
                    Ok(op) => op,
                    Err(problems) => {
                        return Decision::Record(
                            SrePhase::Refused,
                            Reason::ActionInvalid,
                            problems
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join("; "),
                        );
                    }
                };
            let ttl_secs = i64::from(
                action
                    .spec
                    .ttl_minutes
                    .unwrap_or(DEFAULT_TTL_MINUTES)
                    .clamp(1, MAX_TTL_MINUTES),
            ) * 60;
            if let Some(Err(r @ ApprovalRefusal::NotEnoughApprovers { proposed_at, .. })) = evidence
            {
                if now > proposed_at + ttl_secs {
                    return Decision::Record(
                        SrePhase::Expired,
                        Reason::Expired,
                        format!("the TTL passed before enough approvers signed: {r}"),
                    );
                }
                return Decision::Waiting(r.to_string());
            }
            let evidence = match evidence {
                Some(Ok(e)) => e,
                Some(Err(r)) => {
                    return Decision::Record(SrePhase::Refused, r.reason(), r.to_string());
                }
                None => {
                    return Decision::Record(
                        SrePhase::Refused,
                        Reason::ApprovalMissing,
                        "no approval evidence could be computed".into(),
                    );
                }
            };
            let ttl = i64::from(
                action
                    .spec
                    .ttl_minutes
                    .unwrap_or(DEFAULT_TTL_MINUTES)
                    .clamp(1, MAX_TTL_MINUTES),
            );
            let deadline = evidence.proposed_at + ttl * 60;
            if now > deadline {
                return Decision::Record(
                    SrePhase::Expired,
                    Reason::Expired,
                    format!(
                        "proposed in {} at {}, TTL {ttl} min: it reached the cluster at {}, after {}; not run (propose it again)",
                        short(&evidence.proposal_commit),
                        format_rfc3339(evidence.proposed_at),
                        format_rfc3339(now),
                        format_rfc3339(deadline)
                    ),
                );
            }
            Decision::Run(op)
        }
        _ => Decision::Proposed,
    }
}

fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

/// What the SRE step did.
#[derive(Clone, Debug, Default)]
pub struct SreOutcome {
    /// The ledger after the step.
    pub records: Vec<SreRecord>,
    /// True while an action is being observed (the agent looks again soon).
    pub observing: bool,
    /// Actions pending approval in Git.
    pub proposed: Vec<String>,
    /// What a dry run would do (`name: decision`).
    pub planned: Vec<String>,
}

fn new_record(
    action: &ActionInGit,
    op: &str,
    phase: SrePhase,
    reason: Reason,
    message: String,
    ev: Option<&ApprovalEvidence>,
) -> SreRecord {
    SreRecord {
        operation: op.to_string(),
        file: action.file.clone(),
        approval_commit: ev.map(|e| e.approval_commit.clone()),
        approvers: ev.map(|e| e.approvers.clone()).unwrap_or_default(),
        proposers: ev.map(|e| e.proposers.clone()).unwrap_or_default(),
        ..SreRecord::new(&action.name, phase, reason, message)
    }
}

fn operation_label(action: &ActionInGit) -> String {
    match SreOperation::parse(&action.spec.action.type_, &action.spec.action.params) {
        Ok(op) => format!("{} {}", op.type_name(), op.target()),
        Err(_) => action.spec.action.type_.clone(),
    }
}

/// The SRE step of a sync: decide, run, observe, report. `evidence` holds the approval
/// evidence of every Approved action (computed from Git by the caller, who has the
/// repository); `live_before` the live objects before the apply (a `KarsSREAction` patched to
/// Approved in the cluster is reported, never run).
#[allow(clippy::too_many_arguments)]
pub async fn step(
    client: &kube::Client,
    settings: &SreSettings,
    status_ns: &str,
    status_name: &str,
    before: &[SreRecord],
    actions: &[ActionInGit],
    evidence: &BTreeMap<String, Result<ApprovalEvidence, ApprovalRefusal>>,
    live_before: &BTreeMap<String, Value>,
    repo_at_head: Option<(gix::ThreadSafeRepository, gix::ObjectId)>,
    base_branch: &str,
    dry_run: bool,
) -> SreOutcome {
    let mut out = SreOutcome {
        records: before.to_vec(),
        ..SreOutcome::default()
    };
    // Without an executor (`kars sync`), nothing is decided here: the agent runs actions.
    let dry_run = dry_run || settings.executor.is_none();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "kars-gitops".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let now = unix_now();
    for action in actions {
        let record = ledger::find(&out.records, &action.name).cloned();
        let live = live_before.get(&format!(
            "KarsSREAction/{}/{}",
            kars_renderer::sre::SRE_NAMESPACE,
            action.name
        ));
        if action.spec.approval.state != "Approved"
            && live.is_some_and(|l| l["spec"]["approval"]["state"] == "Approved")
            && !dry_run
        {
            publish(
                &recorder,
                &action.name,
                EventType::Warning,
                Reason::ApprovalNotFromGit,
                format!(
                    "{} was set to Approved in the cluster, but Git says {}: nothing runs (approve it with a signed commit through a pull request; the cluster copy was reset from Git)",
                    action.name, action.spec.approval.state
                ),
            )
            .await;
        }
        let decision = decide(action, record.as_ref(), evidence.get(&action.name), now);
        let op_label = operation_label(action);
        match decision {
            Decision::Keep => {}
            Decision::Proposed => out.proposed.push(action.name.clone()),
            Decision::Waiting(message) => {
                out.proposed.push(action.name.clone());
                let shown = live.is_some_and(|l| {
                    l["status"]["conditions"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["message"] == message.as_str()))
                });
                if !dry_run && !shown {
                    let rec = SreRecord::new(
                        &action.name,
                        SrePhase::Proposed,
                        Reason::NotEnoughApprovers,
                        message,
                    );
                    write_cr_status(client, &rec).await;
                }
            }
            Decision::Record(phase, reason, message) => {
                if dry_run {
                    out.planned.push(format!(
                        "{}: {} ({reason}): {message}",
                        action.name,
                        phase.as_str()
                    ));
                    continue;
                }
                let ev = evidence.get(&action.name).and_then(|e| e.as_ref().ok());
                ledger::upsert(
                    &mut out.records,
                    new_record(action, &op_label, phase, reason, message, ev),
                );
            }
            Decision::Run(op) => {
                if dry_run {
                    out.planned
                        .push(format!("{}: would run: {}", action.name, op.change()));
                    continue;
                }
                let ev = evidence.get(&action.name).and_then(|e| e.as_ref().ok());
                if let Some(rec) = run_once(
                    client,
                    settings,
                    status_ns,
                    status_name,
                    &mut out.records,
                    action,
                    &op,
                    &op_label,
                    ev,
                )
                .await
                {
                    ledger::upsert(&mut out.records, rec);
                }
            }
        }
    }
    if dry_run {
        return out;
    }
    // Executing left by a crash, and Applied / late Failed: look at the cluster.
    let by_name: BTreeMap<&str, &ActionInGit> =
        actions.iter().map(|a| (a.name.as_str(), a)).collect();
    let mut updated = Vec::new();
    for rec in &out.records {
        let Some(action) = by_name.get(rec.name.as_str()) else {
            continue;
        };
        let Ok(op) = SreOperation::parse(&action.spec.action.type_, &action.spec.action.params)
        else {
            continue;
        };
        let next = match rec.phase {
            SrePhase::Executing => resolve_interrupted(settings, client, rec, &op).await,
            SrePhase::Applied | SrePhase::Failed => {
                observe_record(client, rec, &op, now, settings.recovery_deadline_secs).await
            }
            _ => None,
        };
        if let Some(n) = next {
            updated.push(n);
        }
    }
    for n in updated {
        ledger::upsert(&mut out.records, n);
    }
    out.observing = out.records.iter().any(|r| {
        r.phase == SrePhase::Applied
            || (r.phase == SrePhase::Failed
                && r.reason == Reason::RecoveryFailed.as_str()
                && r.applied_at
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .is_some_and(|t| now - t <= observe::LATE_RECOVERY_SECS))
    });
    // Report every transition once: the CR status, an Event, the pull request.
    let mut reported = Vec::new();
    for rec in &out.records {
        if rec.reported_phase == Some(rec.phase) {
            continue;
        }
        let Some(action) = by_name.get(rec.name.as_str()) else {
            continue;
        };
        write_cr_status(client, rec).await;
        let type_ = if matches!(rec.phase, SrePhase::Applied | SrePhase::Recovered) {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let reason = rec
            .reason
            .parse::<Reason>()
            .unwrap_or(Reason::ExecutionFailed);
        publish(
            &recorder,
            &rec.name,
            type_,
            reason,
            format!("{} {}: {}", rec.operation, rec.phase.as_str(), rec.message),
        )
        .await;
        let mut r = rec.clone();
        if let Some(forge) = &settings.forge {
            match post_to_forge(forge, &mut r, action).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(action = %rec.name, error = %e, "could not report the SRE action to the pull request")
                }
            }
        }
        r.reported_phase = Some(r.phase);
        reported.push(r);
    }
    let any_reported = !reported.is_empty();
    for r in reported {
        ledger::upsert(&mut out.records, r);
    }
    if any_reported
        && let Err(e) = ledger::write(client, status_ns, status_name, &out.records).await
    {
        tracing::warn!(error = %e, "could not record the SRE ledger");
    }
    if let (Some(forge), Some(proposer), Some((repo, head))) =
        (&settings.forge, &settings.proposer, &repo_at_head)
    {
        forward::forward(
            client,
            &recorder,
            forge,
            proposer,
            repo,
            *head,
            base_branch,
            actions,
            settings.reap_after_secs,
        )
        .await;
        match reap::propose_removal(
            forge,
            proposer,
            repo,
            *head,
            base_branch,
            &out.records,
            actions,
            settings.reap_after_secs,
        )
        .await
        {
            Ok(Some(url)) => tracing::info!(%url, "proposed the removal of finished SRE actions"),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not propose the removal of finished SRE actions")
            }
        }
    }
    for a in actions {
        let live = live_before.get(&format!(
            "KarsSREAction/{}/{}",
            kars_renderer::sre::SRE_NAMESPACE,
            a.name
        ));
        let shown = live.is_some_and(|l| l["status"]["phase"] == SrePhase::Proposed.as_str());
        if a.spec.approval.state == "Pending"
            && ledger::find(&out.records, &a.name).is_none()
            && !shown
        {
            write_cr_status(client, &proposed_record(a)).await;
        }
    }
    out
}

fn proposed_record(a: &ActionInGit) -> SreRecord {
    SreRecord {
        phase: SrePhase::Proposed,
        ..new_record(
            a,
            &operation_label(a),
            SrePhase::Proposed,
            Reason::Proposed,
            "awaiting approval through a signed commit".into(),
            None,
        )
    }
}

/// Records the intent, runs, records the result. Never runs when the intent could not be
/// recorded (then `None`: nothing is recorded and the next sync decides again).
#[allow(clippy::too_many_arguments)]
async fn run_once(
    client: &kube::Client,
    settings: &SreSettings,
    status_ns: &str,
    status_name: &str,
    records: &mut Vec<SreRecord>,
    action: &ActionInGit,
    op: &SreOperation,
    op_label: &str,
    ev: Option<&ApprovalEvidence>,
) -> Option<SreRecord> {
    let fail = |reason: Reason, message: String| {
        new_record(action, op_label, SrePhase::Failed, reason, message, ev)
    };
    let Some(executor) = &settings.executor else {
        return Some(fail(
            Reason::ExecutionFailed,
            execute::ExecError::NoWriter.to_string(),
        ));
    };
    let stamp = format_rfc3339(unix_now());
    let marker = match execute::effect_marker(client, op, &stamp).await {
        Ok(m) => m,
        Err(e) => return Some(fail(e.reason(), e.to_string())),
    };
    let mut intent = new_record(
        action,
        op_label,
        SrePhase::Executing,
        Reason::Executed,
        format!("running: {}", op.change()),
        ev,
    );
    intent.effect_marker = marker.clone();
    ledger::upsert(records, intent.clone());
    if let Err(e) = ledger::write(client, status_ns, status_name, records).await {
        // Not recorded, so not run: the next sync decides again.
        records.retain(|r| r.name != action.name);
        tracing::warn!(action = %action.name, error = %e, "could not record the SRE intent; not running it");
        return None;
    }
    crash_point("sre-before-execute");
    let result = executor.run(&action.name, op, marker.as_deref()).await;
    crash_point("sre-after-execute");
    let mut rec = intent;
    match result {
        Ok(()) => {
            rec.phase = SrePhase::Applied;
            rec.reason = Reason::Executed.as_str().into();
            rec.message = format!(
                "ran: {} (as {}/{}, binding removed); observing recovery",
                op.change(),
                kars_renderer::sre::SRE_NAMESPACE,
                execute::WRITER_SERVICE_ACCOUNT
            );
            rec.applied_at = Some(format_rfc3339(unix_now()));
        }
        Err(e) => {
            rec.phase = SrePhase::Failed;
            rec.reason = e.reason().as_str().into();
            rec.message = e.to_string();
            rec.finished_at = Some(format_rfc3339(unix_now()));
        }
    }
    ledger::upsert(records, rec.clone());
    if let Err(e) = ledger::write(client, status_ns, status_name, records).await {
        tracing::warn!(action = %action.name, error = %e, "could not record the SRE result (the next sync resolves it from the cluster)");
    }
    Some(rec)
}

async fn resolve_interrupted(
    settings: &SreSettings,
    client: &kube::Client,
    rec: &SreRecord,
    op: &SreOperation,
) -> Option<SreRecord> {
    let _ = settings;
    let mut r = rec.clone();
    match execute::effect_visible(client, op, rec.effect_marker.as_deref()).await {
        Ok(true) => {
            r.phase = SrePhase::Applied;
            r.reason = Reason::Executed.as_str().into();
            r.message = format!(
                "ran: {} (found in the cluster after the agent restarted; not run again); observing recovery",
                op.change()
            );
            r.applied_at = Some(format_rfc3339(unix_now()));
        }
        Ok(false) => {
            r.phase = SrePhase::Failed;
            r.reason = Reason::ExecutionInterrupted.as_str().into();
            r.message = format!(
                "the agent stopped while running it and its effect is not in the cluster: it was not run again ({}); propose it again under a new id",
                op.change()
            );
            r.finished_at = Some(format_rfc3339(unix_now()));
        }
        Err(e) => {
            tracing::warn!(action = %rec.name, error = %e, "could not look for the effect of an interrupted SRE action");
            return None;
        }
    }
    Some(r)
}

async fn observe_record(
    client: &kube::Client,
    rec: &SreRecord,
    op: &SreOperation,
    now: i64,
    deadline: i64,
) -> Option<SreRecord> {
    let applied = rec.applied_at.as_deref().and_then(parse_rfc3339)?;
    let late = rec.phase == SrePhase::Failed;
    if late
        && (rec.reason != Reason::RecoveryFailed.as_str()
            || now - applied > observe::LATE_RECOVERY_SECS)
    {
        return None;
    }
    let seen = match observe::observe(client, op.namespace(), now).await {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(action = %rec.name, error = %e, "could not observe the namespace");
            return None;
        }
    };
    let mut r = rec.clone();
    if seen.recovered {
        r.phase = SrePhase::Recovered;
        r.reason = if late {
            Reason::LateRecovery
        } else {
            Reason::Recovered
        }
        .as_str()
        .into();
        r.message = format!(
            "recovered {} s after it ran: {}",
            now - applied,
            seen.summary
        );
        r.finished_at = Some(format_rfc3339(now));
        return Some(r);
    }
    if !late && now - applied >= deadline {
        r.phase = SrePhase::Failed;
        r.reason = Reason::RecoveryFailed.as_str().into();
        r.message = format!(
            "not recovered {} s after it ran: {}",
            now - applied,
            seen.summary
        );
        r.finished_at = Some(format_rfc3339(now));
        return Some(r);
    }
    let message = format!("ran; not recovered yet: {}", seen.summary);
    (message != r.message && !late).then(|| {
        r.message = message;
        r
    })
}

/// Upstream's conditions for a phase.
fn conditions(rec: &SreRecord) -> Value {
    let t = rec
        .finished_at
        .clone()
        .or_else(|| rec.applied_at.clone())
        .unwrap_or_else(|| rec.decided_at.clone());
    let c = |type_: &str, ok: bool, reason: &str| json!({"type": type_, "status": if ok {"True"} else {"False"}, "reason": reason, "message": rec.message.chars().take(1000).collect::<String>(), "lastTransitionTime": t});
    let ran = rec.phase.ran() && rec.reason != Reason::ExecutionInterrupted.as_str();
    let approved = rec.approval_commit.is_some() && rec.phase != SrePhase::Refused;
    json!([
        c(
            "Available",
            rec.phase == SrePhase::Recovered,
            if rec.phase == SrePhase::Applied {
                "PendingRecovery"
            } else {
                rec.phase.as_str()
            }
        ),
        c(
            "Approved",
            approved,
            if approved { "Approved" } else { &rec.reason }
        ),
        c(
            "Executed",
            ran && rec.phase != SrePhase::Executing,
            if ran { "Executed" } else { &rec.reason }
        ),
        c(
            "Degraded",
            matches!(
                rec.phase,
                SrePhase::Failed | SrePhase::Refused | SrePhase::Expired | SrePhase::Rejected
            ),
            &rec.reason
        ),
    ])
}

/// Writes upstream's status fields on the `KarsSREAction` (phase `Refused` shows as `Failed`,
/// upstream's word for "not run"; `Executing` as `Applied`).
async fn write_cr_status(client: &kube::Client, rec: &SreRecord) {
    let phase = match rec.phase {
        SrePhase::Refused => "Failed",
        SrePhase::Executing => "Applied",
        p => p.as_str(),
    };
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        kars_contract::KARS_GROUP,
        "v1alpha1",
        "KarsSREAction",
    ));
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), kars_renderer::sre::SRE_NAMESPACE, &ar);
    let mut status = json!({"phase": phase, "conditions": conditions(rec)});
    if let Some(a) = &rec.applied_at {
        status["appliedAt"] = json!(a);
    }
    if rec.phase.ran() {
        status["writerCrbName"] = json!(execute::binding_name(&rec.name));
    }
    let params = PatchParams {
        field_manager: Some(crate::kars_status::STATUS_MANAGER.into()),
        ..PatchParams::default()
    };
    if let Err(e) = api
        .patch_status(&rec.name, &params, &Patch::Merge(json!({"status": status})))
        .await
        && !crate::cluster::is_not_found(&e)
    {
        tracing::warn!(action = %rec.name, error = %e, "could not write the status of the SRE action");
    }
}

async fn publish(recorder: &Recorder, name: &str, type_: EventType, reason: Reason, note: String) {
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some(format!("{}/v1alpha1", kars_contract::KARS_GROUP)),
        kind: Some("KarsSREAction".into()),
        name: Some(name.to_string()),
        namespace: Some(kars_renderer::sre::SRE_NAMESPACE.into()),
        ..Default::default()
    };
    let ev = Event {
        type_,
        reason: reason.as_str().into(),
        note: Some(note.chars().take(1000).collect()),
        action: "SREAction".into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, &reference).await {
        tracing::warn!(error = %e, action = name, "could not record an SRE event");
    }
}

/// The body of an action's pull request: diagnosis, rationale, the exact change, the rights it
/// runs with, its blast radius, how to approve or reject, and the file. `origin` says where the
/// proposal came from when it was not `kars sre propose` (an in-cluster proposal).
pub fn pull_request_body(
    p: &kars_renderer::sre::Proposal,
    op: &SreOperation,
    file: &str,
    text: &str,
    origin: Option<&str>,
) -> String {
    format!(
        "## SRE action `{id}`\n\n{origin}**Diagnosis.** {diagnosis}\n\n**Rationale.** {rationale}\n\n\
         **The exact change.** {change}. It runs once, after this pull request merges and the agent \
         verifies the approval, as `kars-sre/sre-writer` bound to `{role}` in namespace `{ns}` only \
         for the duration of the action.\n\n**Blast radius.** {radius}. If the target is managed by this \
         repository, the next sync re-applies Git's value: change it in Git instead.\n\n\
         **Expiry.** The approval must reach the cluster within {ttl} minutes of this proposal, or the \
         action expires unrun.\n\n**Approve** with a signed commit by someone other than the proposer \
         (`kars sre approve {id} --note …`); merging without it does nothing. **Reject** with \
         `kars sre reject {id} --reason …`.\n\n`{file}`:\n\n```yaml\n{text}```\n",
        id = p.id,
        origin = origin.map(|o| format!("*{o}*\n\n")).unwrap_or_default(),
        diagnosis = p.diagnosis,
        rationale = p.rationale,
        change = op.change(),
        role = op.writer_role(),
        ns = op.namespace(),
        radius = op.blast_radius(),
        ttl = p.ttl_minutes,
    )
}

/// The comment marker of an action's outcome comment on its pull request.
pub fn comment_marker(name: &str) -> String {
    format!("<!-- kars-gitops:sre:{name} -->")
}

/// The outcome comment (kept up to date, one per action).
pub fn outcome_comment(rec: &SreRecord) -> String {
    let mut s = format!(
        "{}\n### kars GitOps: SRE action `{}` is **{}** ({})\n\n",
        comment_marker(&rec.name),
        rec.name,
        rec.phase.as_str(),
        rec.reason
    );
    s.push_str(&format!("- action: {}\n- {}\n", rec.operation, rec.message));
    if let Some(c) = &rec.approval_commit {
        s.push_str(&format!(
            "- approved in commit `{c}` by {}\n",
            if rec.approvers.is_empty() {
                "-".into()
            } else {
                rec.approvers.join(", ")
            }
        ));
    }
    if !rec.proposers.is_empty() {
        s.push_str(&format!("- proposed by {}\n", rec.proposers.join(", ")));
    }
    if let Some(a) = &rec.applied_at {
        s.push_str(&format!("- ran at {a}\n"));
    }
    if let Some(f) = &rec.finished_at {
        s.push_str(&format!("- finished at {f}\n"));
    }
    s.push_str(&format!(
        "\n`kars sre show {}` prints the full record.\n",
        rec.name
    ));
    s
}

async fn post_to_forge(
    forge: &Gitea,
    rec: &mut SreRecord,
    action: &ActionInGit,
) -> Result<(), crate::forge::ForgeError> {
    let number = match rec.pull_request {
        Some(n) => Some(n),
        None => forge
            .pull_for_branch(&format!("{BRANCH_PREFIX}{}", action.name))
            .await?
            .map(|p| p.number),
    };
    let Some(number) = number else { return Ok(()) };
    rec.pull_request = Some(number);
    forge
        .upsert_comment(number, &comment_marker(&rec.name), &outcome_comment(rec))
        .await?;
    if let Some(sha) = &rec.approval_commit {
        let state = match rec.phase {
            SrePhase::Executing | SrePhase::Applied | SrePhase::Proposed => CommitState::Pending,
            SrePhase::Recovered => CommitState::Success,
            _ => CommitState::Failure,
        };
        forge
            .set_status(
                sha,
                state,
                STATUS_CONTEXT,
                &format!("{}: {}", rec.phase.as_str(), rec.reason),
            )
            .await?;
    }
    Ok(())
}

/// Loads the trust policy's view for evidence: every Approved action of `actions` whose name
/// has no record yet gets its evidence from the repository at `head` (blocking).
pub fn evidence_for(
    repo: &gix::Repository,
    policy: &TrustPolicy,
    head: gix::ObjectId,
    actions: &[ActionInGit],
    records: &[SreRecord],
) -> BTreeMap<String, Result<ApprovalEvidence, ApprovalRefusal>> {
    let now = unix_now();
    actions
        .iter()
        .filter(|a| a.spec.approval.state == "Approved" && ledger::find(records, &a.name).is_none())
        .map(|a| {
            (
                a.name.clone(),
                approval::evidence(repo, policy, now, head, &a.file),
            )
        })
        .collect()
}
