//! Reaping finished actions. Upstream deletes terminal `KarsSREAction`s an hour after they
//! were created; here the ones that came from Git belong to Git:
//! - the files of actions that finished (Recovered, Failed, Refused, Expired, Rejected) more than
//!   [`REAP_AFTER_SECS`] ago are removed through **one pull request** the agent opens, signed with
//!   its proposer key (someone reviews and merges it; merging prunes their CRs). Their ledger
//!   records stay, so a reaped action never runs again, even if its file came back;
//! - an in-cluster proposal whose pull request was closed without a merge is `Rejected`, and an
//!   in-cluster proposal that is Rejected or was refused is deleted once it is that old.

use kars_contract::time::{parse_rfc3339, unix_now};
use kube::api::{Api, DeleteParams, DynamicObject};

use super::forward::{AgentPull, Edit, Proposer, open_signed_pull};
use super::ledger::SreRecord;
use super::{ActionInGit, BRANCH_PREFIX};
use crate::forge::{Forge, Gitea, PullState};

/// How long after an action finished its file is proposed for removal (upstream: an hour).
pub const REAP_AFTER_SECS: i64 = 3600;

/// The branch prefix of the agent's removal pull requests.
pub fn reap_branch_prefix() -> String {
    format!("{BRANCH_PREFIX}reap-")
}

/// The finished actions whose files are due for removal (pure).
pub fn due<'a>(
    records: &'a [SreRecord],
    in_git: &[ActionInGit],
    now: i64,
    after: i64,
) -> Vec<(&'a SreRecord, String)> {
    records
        .iter()
        .filter(|r| r.phase.is_final())
        .filter(|r| {
            r.finished_at
                .as_deref()
                .or(Some(r.decided_at.as_str()))
                .and_then(parse_rfc3339)
                .is_some_and(|t| now - t >= after)
        })
        .filter_map(|r| {
            in_git
                .iter()
                .find(|a| a.name == r.name)
                .map(|a| (r, a.file.clone()))
        })
        .collect()
}

/// Opens the removal pull request for the due actions, unless one is open already (one at a
/// time). Returns its URL when one was opened.
#[allow(clippy::too_many_arguments)]
pub async fn propose_removal(
    forge: &Gitea,
    proposer: &Proposer,
    repo: &gix::ThreadSafeRepository,
    head: gix::ObjectId,
    base: &str,
    records: &[SreRecord],
    in_git: &[ActionInGit],
    after: i64,
) -> Result<Option<String>, String> {
    let due = due(records, in_git, unix_now(), after);
    if due.is_empty() {
        return Ok(None);
    }
    let prefix = reap_branch_prefix();
    let pulls = forge.pulls().await.map_err(|e| e.to_string())?;
    if pulls
        .iter()
        .any(|p| p.state == PullState::Open && p.head_ref.starts_with(&prefix))
    {
        return Ok(None);
    }
    let lines: Vec<String> = due
        .iter()
        .map(|(r, file)| {
            format!(
                "- `{}` ({} {}, {}): {file}",
                r.name,
                r.phase.as_str(),
                r.reason,
                r.operation
            )
        })
        .collect();
    let message = format!(
        "sre: remove {} finished action(s)\n\n{}\n\nTheir records stay in the PolicyRepo's ledger: none of them runs again.",
        due.len(),
        lines.join("\n")
    );
    let edits: Vec<Edit> = due
        .iter()
        .map(|(_, file)| Edit::Remove(file.clone()))
        .collect();
    let branch = format!("{prefix}{}", unix_now());
    let body = format!(
        "## Finished SRE actions\n\nThese actions finished more than {} minutes ago; merging removes their files, and the agent prunes their CRs. Their records stay in the ledger (`kars sre actions`), so none of them runs again.\n\n{}\n",
        after / 60,
        lines.join("\n")
    );
    let title = format!("SRE: remove {} finished action(s)", due.len());
    let url = open_signed_pull(
        forge,
        proposer,
        repo,
        head,
        &AgentPull {
            branch: &branch,
            base,
            edits: &edits,
            message: &message,
            title: &title,
            body: &body,
        },
    )
    .await?;
    Ok(Some(url))
}

/// What happens to an in-cluster proposal the agent forwarded or refused, given its pull
/// request's state and its age (pure).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InClusterFate {
    /// Leave it.
    Keep,
    /// Its pull request was closed unmerged: report Rejected.
    Rejected,
    /// Rejected or refused, and old enough: delete it.
    Delete,
}

/// Decides an in-cluster proposal's fate (pure): `closed` when its pull request was closed
/// without a merge, `refused` when it was never forwarded, `rejected_already` when its status
/// says Rejected.
pub fn in_cluster_fate(
    closed: bool,
    refused: bool,
    rejected_already: bool,
    age: i64,
    after: i64,
) -> InClusterFate {
    let finished = closed || refused;
    if finished && age >= after {
        InClusterFate::Delete
    } else if closed && !rejected_already {
        InClusterFate::Rejected
    } else {
        InClusterFate::Keep
    }
}

/// Deletes an in-cluster proposal (its uid as precondition).
pub async fn delete_in_cluster(api: &Api<DynamicObject>, o: &DynamicObject) {
    let name = o.metadata.name.clone().unwrap_or_default();
    let params = DeleteParams {
        preconditions: o.metadata.uid.clone().map(|u| kube::api::Preconditions {
            uid: Some(u),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => tracing::info!(action = %name, "reaped a finished in-cluster proposal"),
        Err(e) => {
            tracing::warn!(action = %name, error = %e, "could not reap a finished in-cluster proposal")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sre::ledger::SrePhase;

    fn rec(name: &str, phase: SrePhase, finished: &str) -> SreRecord {
        SreRecord {
            decided_at: finished.into(),
            finished_at: Some(finished.into()),
            ..SreRecord::new(name, phase, kars_contract::Reason::Recovered, String::new())
        }
    }

    fn in_git(name: &str) -> ActionInGit {
        ActionInGit {
            name: name.into(),
            file: format!("sre/actions/{name}.yaml"),
            spec: serde_json::from_value(serde_json::json!({"action": {"type": "DeletePod", "params": {}}, "approval": {"state": "Approved"}})).unwrap_or_else(|e| panic!("{e}")),
        }
    }

    #[test]
    fn only_finished_actions_still_in_git_and_old_enough_are_due() {
        let now = parse_rfc3339("2026-12-02T12:00:00Z").unwrap_or_default();
        let records = vec![
            rec("old-done", SrePhase::Recovered, "2026-12-02T10:00:00Z"),
            rec("new-done", SrePhase::Recovered, "2026-12-02T11:30:00Z"),
            rec("running", SrePhase::Applied, "2026-12-02T09:00:00Z"),
            rec("gone", SrePhase::Refused, "2026-12-02T09:00:00Z"),
        ];
        let git = vec![in_git("old-done"), in_git("new-done"), in_git("running")];
        let names: Vec<&str> = due(&records, &git, now, REAP_AFTER_SECS)
            .iter()
            .map(|(r, _)| r.name.as_str())
            .collect();
        assert_eq!(names, ["old-done"]);
    }

    #[test]
    fn in_cluster_proposals_are_rejected_when_closed_and_deleted_when_old() {
        assert_eq!(
            in_cluster_fate(false, false, false, 10_000, 3600),
            InClusterFate::Keep
        );
        assert_eq!(
            in_cluster_fate(true, false, false, 10, 3600),
            InClusterFate::Rejected
        );
        assert_eq!(
            in_cluster_fate(true, false, true, 10, 3600),
            InClusterFate::Keep
        );
        assert_eq!(
            in_cluster_fate(true, false, true, 3600, 3600),
            InClusterFate::Delete
        );
        assert_eq!(
            in_cluster_fate(false, true, false, 3600, 3600),
            InClusterFate::Delete
        );
    }
}
