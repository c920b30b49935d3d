//! The PolicyRepo status of a finished run: conditions, failures, inventory, counts, revisions,
//! in one place. Pure: the status before and the run in, the status after out (the caller
//! writes it only when it differs, so a no-op sync writes nothing).
//!
//! Conditions, in order: SourceReady, Verified, Rendered, BundlesVerified, Applied, Healthy,
//! Enforced, and the summary Ready. A run that stopped sets the condition of the step that
//! failed and Ready=False with the error's reason; the conditions of later steps keep what the
//! last sync that reached them said.

use std::collections::BTreeSet;

use kars_contract::Reason;

use super::pipeline::{PruneStep, Run, Step};
use crate::apply::Action;
use crate::enforcement::Enforcement;
use crate::health::ObjectHealth;
use crate::prune::PruneResult;
use crate::status::{
    self, Condition as c, InventoryEntry, ObjectFailure, PolicyRepoStatus, SyncCounts,
    set_condition,
};

/// The status after `run`, starting from `before`. `dry_run` runs never move the applied
/// revision or the inventory.
pub fn status(
    before: &PolicyRepoStatus,
    run: &Run,
    dry_run: bool,
    generation: Option<i64>,
) -> PolicyRepoStatus {
    let mut st = before.clone();
    steps(&mut st, run, dry_run, generation);
    if let Some(sre) = &run.sre
        && !dry_run
    {
        st.sre_actions = sre.records.clone();
    }
    if let Some(u) = &run.unenforced
        && !dry_run
    {
        st.unenforced_fields = u
            .iter()
            .take(status::UNENFORCED_LISTED)
            .map(|u| status::UnenforcedField {
                source: format!("{}:{}", u.file, u.line),
                object: u.object.clone(),
                field: u.field.clone(),
                support: u.support.label().to_string(),
                message: u.detail.clone(),
            })
            .collect();
        st.unenforced_field_count =
            (!u.is_empty()).then(|| u32::try_from(u.len()).unwrap_or(u32::MAX));
    }
    let (ready, message) = ready(&st, run);
    set_condition(
        &mut st.conditions,
        c::Ready,
        ready,
        run.ready_reason(),
        &message,
        generation,
    );
    st.observed_generation = generation;
    st
}

/// The Ready condition: True when converged, Unknown when suspended, else False with the first
/// failure (or the error that stopped the run).
fn ready(st: &PolicyRepoStatus, run: &Run) -> (Option<bool>, String) {
    if run.suspended {
        return (None, "spec.suspend is true".into());
    }
    if let Some(s) = &run.stopped {
        return (Some(false), s.error.to_string());
    }
    if run.converged() {
        let head = run
            .fetched
            .as_ref()
            .map(|f| f.head.as_str())
            .unwrap_or_default();
        return (Some(true), format!("commit {head} applied"));
    }
    let message = st
        .failures
        .first()
        .map(|f| format!("{}: {}", f.object, f.message))
        .or_else(|| match &run.prune {
            PruneStep::Refused(r) => Some(r.to_string()),
            _ => None,
        })
        .or_else(|| {
            let terminating: Vec<String> = run
                .pruned()
                .iter()
                .filter(|(_, r)| matches!(r, crate::prune::PruneResult::Terminating))
                .map(|(e, _)| e.key())
                .collect();
            (!terminating.is_empty()).then(|| {
                format!(
                    "pruned, still terminating: {} (the next sync confirms they are gone)",
                    terminating.join(", ")
                )
            })
        })
        .unwrap_or_default();
    (Some(false), message)
}

/// Every step's conditions and records, in pipeline order, up to where the run stopped.
fn steps(st: &mut PolicyRepoStatus, run: &Run, dry_run: bool, generation: Option<i64>) {
    if run.suspended {
        return;
    }
    st.failures.clear();
    let stopped = run.stopped.as_ref();
    let stopped_at = |step: Step| stopped.filter(|s| s.step == step);
    let cond = |st: &mut PolicyRepoStatus, t: c, ok: Option<bool>, r: Reason, m: &str| {
        set_condition(&mut st.conditions, t, ok, r, m, generation)
    };
    // The condition of the step that stopped the run, when it is `step`.
    let stopped_here = |st: &mut PolicyRepoStatus, step: Step, t: c| match stopped_at(step) {
        Some(s) => {
            cond(st, t, Some(false), s.error.reason(), &s.error.to_string());
            true
        }
        None => false,
    };

    // Source.
    if stopped_here(st, Step::Source, c::SourceReady) {
        return;
    }
    let Some(fetched) = &run.fetched else { return };
    let head = fetched.head.as_str();
    st.last_fetched_revision = Some(head.to_string());
    cond(
        st,
        c::SourceReady,
        Some(true),
        Reason::Fetched,
        &format!("fetched head {head}"),
    );

    // Verify.
    if stopped_here(st, Step::Verify, c::Verified) {
        return;
    }
    let verified = format!("every commit up to {head} verified");
    // Render.
    if stopped_at(Step::Render).is_some() {
        cond(st, c::Verified, Some(true), Reason::Verified, &verified);
        stopped_here(st, Step::Render, c::Rendered);
        return;
    }
    let Some(rendered) = &run.rendered else {
        return;
    };
    bundles(st, run, generation);
    st.last_verified_revision = Some(head.to_string());
    cond(st, c::Verified, Some(true), Reason::Verified, &verified);
    cond(
        st,
        c::Rendered,
        Some(true),
        Reason::Rendered,
        &format!(
            "{} objects, digest {}",
            rendered.objects.len(),
            rendered.digest
        ),
    );

    // Apply.
    if stopped_here(st, Step::Apply, c::Applied) {
        return;
    }
    let Some(apply) = &run.apply else { return };
    for o in &apply.objects {
        let message = match &o.action {
            Action::Failed(r) => r.message.clone(),
            Action::Skipped => "not applied because an earlier object failed".to_string(),
            Action::Drifted(d) => format!(
                "changed in the cluster at {}; not restored because self-heal is off",
                d.at
            ),
            _ => continue,
        };
        if let Some(reason) = o.action.failure_reason() {
            st.failures
                .push(ObjectFailure::new(&o.object, &o.source, reason, message));
        }
    }

    // Prune.
    let old_inventory = super::pipeline::old_inventory(st);
    match &run.prune {
        PruneStep::Refused(refusal) => st.failures.push(ObjectFailure::new(
            format!("{} objects", old_inventory.len()),
            "",
            refusal.reason(),
            refusal.to_string(),
        )),
        PruneStep::Ran(results) => {
            for (e, r) in results {
                if let (Some(reason), PruneResult::Failed(m) | PruneResult::Kept(m)) =
                    (r.failure_reason(), r)
                {
                    st.failures
                        .push(ObjectFailure::new(e.key(), "", reason, m.clone()));
                }
            }
        }
        _ => {}
    }
    if stopped_at(Step::Prune).is_some() {
        return;
    }
    let applied_ok = apply.is_success();
    let rendered_inventory: Vec<InventoryEntry> =
        rendered.objects.iter().map(status::entry_of).collect();
    inventory(st, run, &old_inventory, &rendered_inventory, dry_run);
    let pruned = run
        .pruned()
        .iter()
        .filter(|(_, r)| *r == PruneResult::Deleted)
        .count();
    let prune_refused = matches!(run.prune, PruneStep::Refused(_));
    // A sync that changed nothing and found nothing wrong leaves the Applied condition and the
    // counts of the last real change as they were, so a no-op sync writes nothing.
    let quiet = applied_ok
        && apply.writes == 0
        && run.pruned().is_empty()
        && !prune_refused
        && st.failures.is_empty()
        && status::condition(&st.conditions, c::Applied).is_some_and(|c| c.status == "True");
    if !quiet {
        let (reason, message) = if !applied_ok {
            (
                apply.failure_reason(),
                status::failure_summary(&st.failures),
            )
        } else {
            let summary = format!(
                "{} created, {} configured, {} unchanged, {pruned} pruned; {} write request(s)",
                apply.count(|a| *a == Action::Created),
                apply.count(|a| *a == Action::Configured),
                apply.count(|a| *a == Action::Unchanged),
                apply.writes
            );
            let reason = if prune_refused {
                Reason::PruneRefused
            } else {
                Reason::Applied
            };
            (reason, summary)
        };
        cond(
            st,
            c::Applied,
            Some(applied_ok && !prune_refused),
            reason,
            &message,
        );
    }

    // Health.
    if stopped_at(Step::Health).is_some() {
        return;
    }
    if let Some(health) = &run.health {
        let first = || {
            health
                .not_ready
                .iter()
                .take(3)
                .map(|(k, h)| format!("{k}: {h}"))
                .collect::<Vec<_>>()
                .join("; ")
        };
        let (ok, reason, message) = match health.healthy() {
            Some(true) if health.unreported > 0 => (
                Some(true),
                Reason::Healthy,
                format!(
                    "{} objects ready; {} kars object(s) have no status (is the kars controller running?)",
                    health.checked - health.unreported,
                    health.unreported
                ),
            ),
            Some(true) => (
                Some(true),
                Reason::Healthy,
                format!("{} objects ready", health.checked),
            ),
            Some(false) => (Some(false), Reason::Unhealthy, first()),
            None => (None, Reason::Progressing, first()),
        };
        cond(st, c::Healthy, ok, reason, &message);
        for (k, h) in &health.not_ready {
            if let ObjectHealth::Unhealthy(m) = h {
                st.failures
                    .push(ObjectFailure::new(k, "", Reason::Unhealthy, m.clone()));
            }
        }
    }

    // Enforcement.
    if let Some(results) = &run.enforcement {
        enforcement(st, results, run.enforcement_mode, generation);
    }

    if applied_ok && !dry_run {
        let before_revision = st.last_applied_revision.clone();
        st.last_applied_revision = Some(head.to_string());
        // A range with no new commits keeps the signers of the commits applied before.
        let signers: BTreeSet<String> = run
            .verification
            .iter()
            .flat_map(|v| &v.commits)
            .flat_map(|c| c.signers.iter().map(|s| s.signer.clone()))
            .collect();
        if !signers.is_empty() {
            st.last_applied_signers = signers.into_iter().collect();
        }
        if st.last_applied_revision != before_revision || st.last_applied_at.is_none() {
            st.last_applied_at = Some(kars_contract::time::now_rfc3339());
        }
        st.rendered_digest = Some(rendered.digest.clone());
    }
    if !quiet {
        st.counts = Some(SyncCounts {
            rendered: rendered.objects.len() as u32,
            applied: apply.count(|a| matches!(a, Action::Created | Action::Configured)) as u32,
            unchanged: apply.count(|a| *a == Action::Unchanged) as u32,
            pruned: pruned as u32,
            failed: st.failures.len() as u32,
            writes: apply.writes as u32,
        });
    }
}

/// Bundle failures, held-back objects, the BundlesVerified condition and `status.bundles`.
fn bundles(st: &mut PolicyRepoStatus, run: &Run, generation: Option<i64>) {
    let Some(rendered) = &run.rendered else {
        return;
    };
    let file_of = |object: &str| {
        run.bundle_uses
            .iter()
            .find(|u| u.object == object)
            .map(|u| u.file.clone())
            .unwrap_or_default()
    };
    let failures = run.bundle_failures();
    for b in &run.bundles {
        let Some(reason) = b.reason.as_deref().and_then(|r| r.parse::<Reason>().ok()) else {
            continue;
        };
        let kept = match &b.verified {
            Some(v) => format!("the last verified bundle {v} stays in use"),
            None => "nothing was verified for it before, so the object is held back".to_string(),
        };
        st.failures.push(ObjectFailure::new(
            &b.object,
            file_of(&b.object),
            reason,
            format!(
                "{} {}: {}; {kept}",
                b.field,
                b.reference,
                b.message.as_deref().unwrap_or_default()
            ),
        ));
    }
    for h in &rendered.held_back {
        if !failures.iter().any(|(o, _)| *o == h.object) {
            st.failures.push(ObjectFailure::new(
                &h.object,
                &h.file,
                Reason::HeldBack,
                h.reason.clone(),
            ));
        }
    }
    let (ok, reason, message) = match failures.first() {
        Some((object, reason)) => (
            Some(false),
            reason.parse().unwrap_or(Reason::HeldBack),
            format!(
                "{} of {} signed bundle reference(s) did not verify (first: {object}); {} object(s) held back{}",
                failures.len(),
                run.bundles.len(),
                rendered.held_back.len(),
                if rendered.held_back.is_empty() {
                    ""
                } else {
                    ", prune paused"
                }
            ),
        ),
        None => (
            Some(true),
            Reason::Verified,
            format!(
                "{} signed bundle reference(s) verified",
                run.bundles.len() - failures.len()
            ),
        ),
    };
    set_condition(
        &mut st.conditions,
        c::BundlesVerified,
        ok,
        reason,
        &message,
        generation,
    );
    st.bundles = run.bundles.clone();
}

/// The inventory: what is applied now, plus what could not be deleted yet. A first sync that
/// failed part-way still remembers what exists, so a later prune can find it.
fn inventory(
    st: &mut PolicyRepoStatus,
    run: &Run,
    old: &[InventoryEntry],
    rendered: &[InventoryEntry],
    dry_run: bool,
) {
    let Some(apply) = &run.apply else { return };
    if apply.is_success() && !dry_run {
        let mut inv: BTreeSet<String> = rendered.iter().map(ToString::to_string).collect();
        let deleted: BTreeSet<String> = run
            .pruned()
            .iter()
            .filter(|(_, r)| r.leaves_inventory())
            .map(|(e, _)| e.to_string())
            .collect();
        let rendered_keys: BTreeSet<String> = rendered.iter().map(InventoryEntry::key).collect();
        for e in old {
            if !deleted.contains(&e.to_string()) && !rendered_keys.contains(&e.key()) {
                inv.insert(e.to_string());
            }
        }
        st.inventory = inv.into_iter().collect();
    } else if st.inventory.is_empty() {
        st.inventory = apply
            .objects
            .iter()
            .zip(rendered)
            .filter(|(o, _)| {
                matches!(
                    o.action,
                    Action::Created | Action::Configured | Action::Unchanged
                )
            })
            .map(|(_, e)| e.to_string())
            .collect();
    }
}

/// The Enforced condition and a failure per router that does not enforce what was rendered.
fn enforcement(
    st: &mut PolicyRepoStatus,
    results: &[(String, Enforcement)],
    mode: crate::enforcement::Mode,
    generation: Option<i64>,
) {
    let (mut enforced, mut waiting, mut not) = (0, Vec::new(), Vec::new());
    for (deployment, result) in results {
        match result {
            Enforcement::Enforced { .. } => enforced += 1,
            Enforcement::NoRunningPods => waiting.push(deployment.as_str()),
            Enforcement::NotEnforced(problems) => {
                not.push(deployment.as_str());
                st.failures.push(ObjectFailure::new(
                    format!("Deployment/{deployment}"),
                    "",
                    Reason::NotEnforced,
                    problems.join("; "),
                ));
            }
        }
    }
    let (ok, reason, message) = if let Some(first) = not.first() {
        (
            Some(false),
            Reason::NotEnforced,
            format!(
                "{} router(s) do not report the rendered policies (first: {first})",
                not.len()
            ),
        )
    } else if let Some(first) = waiting.first()
        && mode == crate::enforcement::Mode::Required
    {
        (
            Some(false),
            Reason::NoRunningRouters,
            format!(
                "{} sandbox(es) that should run have no running router pod to confirm the rendered policies yet (first: {first}); {enforced} router(s) report them",
                waiting.len()
            ),
        )
    } else if enforced > 0 && waiting.is_empty() {
        (
            Some(true),
            Reason::Enforced,
            format!("{enforced} router(s) report the rendered policies"),
        )
    } else if enforced > 0 {
        (
            Some(true),
            Reason::Enforced,
            format!(
                "{enforced} router(s) report the rendered policies; {} have no running pod (enforcement: best-effort)",
                waiting.len()
            ),
        )
    } else if waiting.is_empty() {
        (
            Some(true),
            Reason::Enforced,
            "no sandbox should run, so no router has anything to enforce".to_string(),
        )
    } else {
        (
            None,
            Reason::NoRunningRouters,
            format!(
                "{} sandbox(es) have no running router pod to ask yet (enforcement: best-effort, so Ready does not wait)",
                waiting.len()
            ),
        )
    };
    set_condition(
        &mut st.conditions,
        c::Enforced,
        ok,
        reason,
        &message,
        generation,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::SyncError;
    use crate::sync::pipeline::{FetchedHead, Stopped};
    use kars_renderer::RenderError;

    fn reason_of(st: &PolicyRepoStatus, t: c) -> (String, String) {
        status::condition(&st.conditions, t)
            .map(|x| (x.status.clone(), x.reason.clone()))
            .unwrap_or_default()
    }

    fn stopped_at(step: Step, error: SyncError) -> Run {
        Run {
            fetched: Some(FetchedHead {
                head: "c0ffee".into(),
                downloaded: false,
            }),
            stopped: Some(Stopped { step, error }),
            ..Run::default()
        }
    }

    /// Render errors carry their own reasons (they were all `RenderFailed`): the same word in
    /// the Rendered condition, the Ready condition and the metric label (`Run::ready_reason`).
    #[test]
    fn a_render_stop_names_its_reason_and_keeps_the_applied_state() {
        let before = PolicyRepoStatus {
            last_applied_revision: Some("old".into()),
            inventory: vec!["v1|ConfigMap|ns|a".into()],
            ..PolicyRepoStatus::default()
        };
        for (error, word) in [
            (
                RenderError::Cluster("no cluster \"x\"".into()),
                "UnknownCluster",
            ),
            (RenderError::Problems(Vec::new()), "ObjectNotRenderable"),
        ] {
            let run = stopped_at(
                Step::Render,
                SyncError::Render {
                    commit: "c0ffee".into(),
                    source: error,
                },
            );
            assert_eq!(run.ready_reason().as_str(), word);
            let st = status(&before, &run, false, Some(3));
            assert_eq!(
                reason_of(&st, c::SourceReady),
                ("True".into(), "Fetched".into())
            );
            assert_eq!(
                reason_of(&st, c::Verified),
                ("True".into(), "Verified".into())
            );
            assert_eq!(reason_of(&st, c::Rendered), ("False".into(), word.into()));
            assert_eq!(reason_of(&st, c::Ready), ("False".into(), word.into()));
            assert_eq!(
                st.last_applied_revision.as_deref(),
                Some("old"),
                "nothing applied"
            );
            assert_eq!(st.inventory, before.inventory, "nothing forgotten");
            assert_eq!(st.last_fetched_revision.as_deref(), Some("c0ffee"));
            assert_eq!(st.observed_generation, Some(3));
        }
    }

    /// The fields accepted and not enforced by this version reach the status (bounded, with
    /// the full count); a dry run leaves them as they were; a later commit without any clears
    /// them.
    #[test]
    fn unenforced_fields_are_listed_in_the_status() {
        use kars_renderer::maturity::{Support, Unenforced};
        let field = |i: u32| Unenforced {
            file: "agents/a/tools.yaml".into(),
            line: i,
            column: 3,
            object: "ToolPolicy/agents/t".into(),
            field: "spec.rateLimit".into(),
            support: Support::RenderedOnly,
            detail: "not applied".into(),
        };
        let run = |n: u32| Run {
            fetched: Some(FetchedHead {
                head: "c0ffee".into(),
                downloaded: false,
            }),
            unenforced: Some((1..=n).map(field).collect()),
            ..Run::default()
        };
        let st = status(&PolicyRepoStatus::default(), &run(60), false, None);
        assert_eq!(st.unenforced_field_count, Some(60));
        assert_eq!(st.unenforced_fields.len(), crate::status::UNENFORCED_LISTED);
        let first = &st.unenforced_fields[0];
        assert_eq!(
            (
                first.source.as_str(),
                first.field.as_str(),
                first.support.as_str()
            ),
            ("agents/a/tools.yaml:1", "spec.rateLimit", "rendered only")
        );
        let dry = status(&PolicyRepoStatus::default(), &run(2), true, None);
        assert!(dry.unenforced_fields.is_empty() && dry.unenforced_field_count.is_none());
        let cleared = status(&st, &run(0), false, None);
        assert!(cleared.unenforced_fields.is_empty() && cleared.unenforced_field_count.is_none());
    }

    /// A pruned namespace still terminating is on its way out: Ready is False with reason
    /// Progressing and says which objects; an object the API server refused to delete is
    /// PruneFailed.
    #[test]
    fn pruned_but_terminating_is_progressing_not_a_failure() {
        use crate::prune::PruneResult;
        use crate::status::InventoryEntry;
        let with = |result: PruneResult| Run {
            fetched: Some(FetchedHead {
                head: "c0ffee".into(),
                downloaded: false,
            }),
            apply: Some(crate::apply::ApplyReport::default()),
            prune: PruneStep::Ran(vec![(
                InventoryEntry::parse("v1|Namespace||kars-b").expect("entry"),
                result,
            )]),
            ..Run::default()
        };
        let run = with(PruneResult::Terminating);
        assert_eq!(run.ready_reason(), Reason::Progressing);
        let st = status(&PolicyRepoStatus::default(), &run, false, None);
        let ready = crate::status::condition(&st.conditions, c::Ready).expect("Ready");
        assert_eq!(ready.reason, "Progressing");
        assert!(
            ready.message.contains("still terminating") && ready.message.contains("kars-b"),
            "{}",
            ready.message
        );
        assert_eq!(
            with(PruneResult::Failed("forbidden".into())).ready_reason(),
            Reason::PruneFailed
        );
        assert_eq!(with(PruneResult::Deleted).ready_reason(), Reason::Synced);
    }

    /// "Ready means enforced": with `required`, a sandbox that should run and has no running
    /// router pod holds Ready back; `best-effort` lets it pass with Enforced Unknown; a router
    /// that reports other digests holds Ready back in both modes.
    #[test]
    fn ready_waits_for_routers_unless_best_effort() {
        use crate::enforcement::{Enforcement, Mode};
        let applied = |mode: Mode, results: Vec<(&str, Enforcement)>| Run {
            fetched: Some(FetchedHead {
                head: "c0ffee".into(),
                downloaded: false,
            }),
            apply: Some(crate::apply::ApplyReport::default()),
            enforcement: Some(
                results
                    .into_iter()
                    .map(|(d, e)| (d.to_string(), e))
                    .collect(),
            ),
            enforcement_mode: mode,
            ..Run::default()
        };
        let waiting = || {
            vec![
                (
                    "kars-a/a",
                    Enforcement::Enforced {
                        pods: vec!["a-1".into()],
                    },
                ),
                ("kars-b/b", Enforcement::NoRunningPods),
            ]
        };
        let run = applied(Mode::Required, waiting());
        assert_eq!(run.ready_reason(), Reason::NoRunningRouters);
        let condition_of = |run: &Run| {
            let mut st = PolicyRepoStatus::default();
            enforcement(
                &mut st,
                run.enforcement.as_deref().unwrap_or_default(),
                run.enforcement_mode,
                None,
            );
            st
        };
        let st = condition_of(&run);
        assert_eq!(
            reason_of(&st, c::Enforced),
            ("False".into(), "NoRunningRouters".into())
        );

        let run = applied(Mode::BestEffort, waiting());
        assert_eq!(run.ready_reason(), Reason::Synced);
        let st = condition_of(&run);
        assert_eq!(
            reason_of(&st, c::Enforced),
            ("True".into(), "Enforced".into())
        );

        for mode in [Mode::Required, Mode::BestEffort] {
            let run = applied(
                mode,
                vec![("kars-a/a", Enforcement::NotEnforced(vec!["stale".into()]))],
            );
            assert_eq!(run.ready_reason(), Reason::NotEnforced, "{mode}");
        }
        assert_eq!(
            applied(Mode::Required, Vec::new()).ready_reason(),
            Reason::Synced,
            "no sandbox should run"
        );
        assert_eq!("best-effort".parse::<Mode>(), Ok(Mode::BestEffort));
        assert!("lenient".parse::<Mode>().is_err());
    }

    #[test]
    fn a_crashed_step_is_not_a_source_error() {
        let run = stopped_at(
            Step::Render,
            SyncError::Crashed {
                step: "render",
                message: "panicked".into(),
            },
        );
        let st = status(&PolicyRepoStatus::default(), &run, false, None);
        assert_eq!(
            reason_of(&st, c::Ready),
            ("False".into(), "TaskFailed".into())
        );
        assert_eq!(
            reason_of(&st, c::SourceReady),
            ("True".into(), "Fetched".into())
        );
    }

    #[test]
    fn a_suspended_run_changes_only_ready() {
        let before = PolicyRepoStatus {
            last_applied_revision: Some("a".into()),
            ..PolicyRepoStatus::default()
        };
        let st = status(&before, &Run::suspended(), false, Some(1));
        assert_eq!(
            reason_of(&st, c::Ready),
            ("Unknown".into(), "Suspended".into())
        );
        assert_eq!(st.conditions.len(), 1);
        assert_eq!(st.last_applied_revision.as_deref(), Some("a"));
    }

    /// Every word the report can write is in the catalogue (the type guarantees it; this
    /// pins that the status strings parse back).
    #[test]
    fn written_reasons_parse_back() {
        let run = stopped_at(
            Step::Apply,
            SyncError::Apply(crate::apply::ApplyError::Timeout("CRD x".into())),
        );
        let st = status(&PolicyRepoStatus::default(), &run, false, None);
        for cond in &st.conditions {
            assert!(cond.reason.parse::<Reason>().is_ok(), "{}", cond.reason);
        }
        assert_eq!(reason_of(&st, c::Ready).1, "WaitTimeout");
    }
}
