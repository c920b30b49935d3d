//! The executed-actions ledger: one record per SRE action the agent decided on, kept in the
//! PolicyRepo status (`status.sreActions`), so "executed" survives restarts, re-syncs, a revert
//! and re-merge of the file, and the CR being pruned and re-created. The record is written
//! *before* an action runs (phase `Executing`, with everything needed to recognise its
//! effect), so an agent killed between running it and recording the result never runs it
//! again: on restart the record is resolved by looking at the target.

use kube::api::{Api, Patch, PatchParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::status::PolicyRepo;

/// Records kept at most; beyond it the oldest terminal ones go (an action re-appearing after
/// that is still refused once its TTL has passed, which is at most an hour).
pub const MAX_RECORDS: usize = 2000;

/// Field manager of the ledger's writes between the status writes of a sync.
pub const LEDGER_MANAGER: &str = "kars-gitops-sre";

/// Where an action is (upstream's phases, plus `Executing` and `Refused`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SrePhase {
    /// In Git, approval state Pending (not terminal, not recorded in the ledger).
    Proposed,
    /// The intent is recorded and the action is running (or the agent stopped while it ran).
    Executing,
    /// Ran; the recovery of its namespace is being observed.
    Applied,
    /// The namespace recovered.
    Recovered,
    /// Ran, and the namespace did not recover in time (or the run failed).
    Failed,
    /// Not run: the approval or the action did not pass a rule.
    Refused,
    /// Not run: the TTL passed first.
    Expired,
    /// Not run: the approval state is Rejected.
    Rejected,
}

impl SrePhase {
    /// True when nothing more happens to the action (Failed is still re-observed for late
    /// recovery, but never run again).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SrePhase::Recovered
                | SrePhase::Failed
                | SrePhase::Refused
                | SrePhase::Expired
                | SrePhase::Rejected
        )
    }

    /// True once the action ran (or may have run): it is never run again.
    pub fn ran(self) -> bool {
        matches!(
            self,
            SrePhase::Executing | SrePhase::Applied | SrePhase::Recovered | SrePhase::Failed
        )
    }

    /// The phase word.
    pub fn as_str(self) -> &'static str {
        match self {
            SrePhase::Proposed => "Proposed",
            SrePhase::Executing => "Executing",
            SrePhase::Applied => "Applied",
            SrePhase::Recovered => "Recovered",
            SrePhase::Failed => "Failed",
            SrePhase::Refused => "Refused",
            SrePhase::Expired => "Expired",
            SrePhase::Rejected => "Rejected",
        }
    }
}

/// One action the agent decided on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SreRecord {
    /// The action's name (`metadata.name`, the id in `sre/actions/<id>.yaml`).
    pub name: String,
    /// Phase.
    pub phase: SrePhase,
    /// Reason word of the phase.
    pub reason: String,
    /// What happened, one line.
    pub message: String,
    /// The action, `Type Kind/namespace/name`.
    pub operation: String,
    /// The repository file.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub file: String,
    /// The commit that approved it (when it was approved in Git).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_commit: Option<String>,
    /// Who approved it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvers: Vec<String>,
    /// Who proposed or changed it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proposers: Vec<String>,
    /// When the decision was made (RFC 3339).
    pub decided_at: String,
    /// When it ran (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<String>,
    /// When it reached Recovered or Failed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// What recognises the effect after a crash: the restart stamp, the deleted object's uid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect_marker: Option<String>,
    /// The pull request the action came through (number), when the forge knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<u64>,
    /// The last phase posted to the pull request (so each transition is posted once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported_phase: Option<SrePhase>,
}

impl SreRecord {
    /// A record of `name` decided now, with nothing else known yet.
    pub fn new(
        name: &str,
        phase: SrePhase,
        reason: kars_contract::Reason,
        message: String,
    ) -> SreRecord {
        SreRecord {
            name: name.to_string(),
            phase,
            reason: reason.as_str().to_string(),
            message,
            operation: String::new(),
            file: String::new(),
            approval_commit: None,
            approvers: Vec::new(),
            proposers: Vec::new(),
            decided_at: kars_contract::time::now_rfc3339(),
            applied_at: None,
            finished_at: None,
            effect_marker: None,
            pull_request: None,
            reported_phase: None,
        }
    }
}

/// Finds the record of `name`.
pub fn find<'a>(records: &'a [SreRecord], name: &str) -> Option<&'a SreRecord> {
    records.iter().find(|r| r.name == name)
}

/// Inserts or replaces the record of `rec.name`, keeping at most [`MAX_RECORDS`].
pub fn upsert(records: &mut Vec<SreRecord>, rec: SreRecord) {
    match records.iter_mut().find(|r| r.name == rec.name) {
        Some(slot) => *slot = rec,
        None => records.push(rec),
    }
    while records.len() > MAX_RECORDS {
        let Some(oldest) = records
            .iter()
            .enumerate()
            .filter(|(_, r)| r.phase.is_final())
            .min_by(|a, b| a.1.decided_at.cmp(&b.1.decided_at))
            .map(|(i, _)| i)
        else {
            break;
        };
        records.remove(oldest);
    }
}

/// Writes the ledger (the whole list) into the PolicyRepo status with a JSON merge patch:
/// nothing else of the status is touched.
pub async fn write(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    records: &[SreRecord],
) -> Result<(), kube::Error> {
    let api: Api<PolicyRepo> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"status": {"sreActions": records}});
    api.patch_status(
        name,
        &PatchParams {
            field_manager: Some(LEDGER_MANAGER.into()),
            ..PatchParams::default()
        },
        &Patch::Merge(&patch),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(name: &str, phase: SrePhase, at: &str) -> SreRecord {
        SreRecord {
            decided_at: at.into(),
            ..SreRecord::new(name, phase, kars_contract::Reason::Executed, String::new())
        }
    }

    #[test]
    fn the_ledger_is_bounded_and_never_forgets_an_action_in_flight() {
        let mut records = vec![rec("running", SrePhase::Executing, "2000-01-01T00:00:00Z")];
        for i in 0..MAX_RECORDS + 5 {
            upsert(
                &mut records,
                rec(
                    &format!("a{i}"),
                    SrePhase::Recovered,
                    &format!("2026-01-01T00:00:{:02}Z", i % 60),
                ),
            );
        }
        assert_eq!(records.len(), MAX_RECORDS);
        assert!(
            find(&records, "running").is_some(),
            "an Executing record is never dropped"
        );
        upsert(
            &mut records,
            rec("running", SrePhase::Applied, "2000-01-01T00:00:00Z"),
        );
        assert_eq!(
            find(&records, "running").map(|r| r.phase),
            Some(SrePhase::Applied)
        );
        assert!(SrePhase::Executing.ran() && !SrePhase::Refused.ran());
    }
}
