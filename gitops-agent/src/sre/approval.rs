//! Whether an SRE action is approved, decided from Git alone.
//!
//! An action file (`sre/actions/<id>.yaml`) with `spec.approval.state: Approved` at the applied
//! head counts as approved only when:
//! - one commit (the *approval commit*) changed the state to Approved from a Pending version
//!   that some earlier commit wrote (a file created already Approved has no proposal);
//! - the approval commit changed nothing but `spec.approval`, and the file has not changed
//!   since (what was approved is what runs);
//! - the approval commit and every commit that wrote the action are signed by signers the
//!   trust policy knows (checked against the signers trusted before each commit);
//! - at least `sreApprovals.minApprovers` distinct signers of the approval commit (its own
//!   signature and signed approval tags on it) are allowed to approve (`sreApprovals.approvers`
//!   and every path rule on the file) and none of them signed a commit that wrote the action.
//!
//! The forge's reviews, merge button and the cluster's copy of the CR never count.

use std::collections::BTreeSet;

use gix::ObjectId;
use kars_contract::Reason;
use serde_json::Value;

use crate::verify::keys::SignerClass;
use crate::verify::{TrustPolicy, Verifier};

/// Commits walked at most, newest first, to find an action's approval and proposal.
pub const HISTORY_LIMIT: usize = 20_000;

/// Who proposed and who approved an action, and in which commits.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApprovalEvidence {
    /// The action file.
    pub file: String,
    /// The commit that set Approved.
    pub approval_commit: String,
    /// Its committer time (Unix seconds).
    pub approved_at: i64,
    /// Signers counted as approvers.
    pub approvers: Vec<String>,
    /// The newest commit before the approval that wrote the action.
    pub proposal_commit: String,
    /// Its committer time (Unix seconds): the TTL counts from here.
    pub proposed_at: i64,
    /// Everyone who signed a commit that wrote the action.
    pub proposers: Vec<String>,
}

/// Why an action does not count as approved.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalRefusal {
    /// No commit changes the state to Approved (nothing to point at).
    #[error("no commit in the history sets {file} to Approved from a Pending proposal")]
    NoApprovalCommit {
        /// The file.
        file: String,
    },
    /// The file was created already Approved: nobody approved someone else's proposal.
    #[error(
        "commit {commit} created {file} already Approved: an approval must be a separate commit on a proposal someone else made"
    )]
    CreatedApproved {
        /// The file.
        file: String,
        /// The commit.
        commit: String,
    },
    /// The approval commit also changed the action.
    #[error(
        "commit {commit} changed the action itself while approving it (only spec.approval may change in the approving commit)"
    )]
    ChangedWithApproval {
        /// The commit.
        commit: String,
    },
    /// The file changed after the approval commit.
    #[error(
        "{file} changed after its approval in commit {commit}: what was approved is not what is in Git now"
    )]
    ChangedAfterApproval {
        /// The file.
        file: String,
        /// The approval commit.
        commit: String,
    },
    /// A commit that approved or wrote the action is not signed by a trusted signer.
    #[error("commit {commit} ({role}) is not signed by a trusted signer: {why}")]
    Untrusted {
        /// The commit.
        commit: String,
        /// `approval` or `proposal`.
        role: &'static str,
        /// Why.
        why: String,
    },
    /// Every signer of the approval commit also proposed or changed the action.
    #[error(
        "commit {commit} is approved only by {signers}, who proposed or changed the action; another approver must approve"
    )]
    SelfApproval {
        /// The commit.
        commit: String,
        /// Its signers.
        signers: String,
    },
    /// No signer of the approval commit may approve.
    #[error(
        "commit {commit} is signed by {signers}, who may not approve SRE actions in {file} (trust policy sreApprovals and path rules)"
    )]
    NotAnApprover {
        /// The commit.
        commit: String,
        /// Its signers.
        signers: String,
        /// The file.
        file: String,
    },
    /// Too few distinct approvers.
    #[error(
        "commit {commit} carries {have} approver(s) ({approvers}); the trust policy needs {need} (add signed approval tags on it)"
    )]
    NotEnoughApprovers {
        /// The commit.
        commit: String,
        /// Approvers counted.
        approvers: String,
        /// How many.
        have: usize,
        /// How many are needed.
        need: usize,
        /// When it was proposed (the TTL counts from here; more approvals may still come).
        proposed_at: i64,
    },
    /// History could not be read.
    #[error("reading the history of {file}: {message}")]
    Unreadable {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
}

impl ApprovalRefusal {
    /// The reason word.
    pub fn reason(&self) -> Reason {
        match self {
            ApprovalRefusal::NoApprovalCommit { .. } | ApprovalRefusal::CreatedApproved { .. } => {
                Reason::ApprovalMissing
            }
            ApprovalRefusal::ChangedWithApproval { .. }
            | ApprovalRefusal::ChangedAfterApproval { .. } => Reason::ChangedAfterApproval,
            ApprovalRefusal::Untrusted { .. } | ApprovalRefusal::Unreadable { .. } => {
                Reason::ApprovalUntrusted
            }
            ApprovalRefusal::SelfApproval { .. } => Reason::SelfApproval,
            ApprovalRefusal::NotAnApprover { .. } => Reason::ApproverNotAllowed,
            ApprovalRefusal::NotEnoughApprovers { .. } => Reason::NotEnoughApprovers,
        }
    }
}

/// The parsed action file at one commit.
#[derive(Clone, Debug, PartialEq)]
struct Version {
    blob: ObjectId,
    approved: bool,
    /// `spec` without `approval` (what is proposed).
    proposal: Value,
}

fn version_at(repo: &gix::Repository, commit: ObjectId, path: &str) -> Option<Version> {
    let tree = repo.find_commit(commit).ok()?.tree().ok()?;
    let entry = tree.lookup_entry_by_path(path).ok()??;
    if !entry.mode().is_blob() {
        return None;
    }
    let blob = entry.object_id();
    let data = repo.find_object(blob).ok()?.detach().data;
    let doc: Value = serde_saphyr::from_str(&String::from_utf8_lossy(&data)).unwrap_or(Value::Null);
    let mut spec = doc.get("spec").cloned().unwrap_or(Value::Null);
    let approved = spec["approval"]["state"].as_str() == Some("Approved");
    if let Some(m) = spec.as_object_mut() {
        m.remove("approval");
    }
    Some(Version {
        blob,
        approved,
        proposal: serde_json::json!({"metadata": doc.get("metadata").cloned(), "spec": spec}),
    })
}

/// Decides whether the action in `file` at `head` is approved (see the module documentation).
pub fn evidence(
    repo: &gix::Repository,
    policy: &TrustPolicy,
    now: i64,
    head: ObjectId,
    file: &str,
) -> Result<ApprovalEvidence, ApprovalRefusal> {
    let unreadable = |message: String| ApprovalRefusal::Unreadable {
        file: file.to_string(),
        message,
    };
    let at_head =
        version_at(repo, head, file).ok_or_else(|| unreadable("not in the head".into()))?;
    let walk = repo
        .rev_walk([head])
        .all()
        .map_err(|e| unreadable(e.to_string()))?;
    // Newest first: the first commit that sets Approved from non-Approved parents.
    let mut approval: Option<(ObjectId, Vec<ObjectId>, Version)> = None;
    for (seen, info) in walk.enumerate() {
        if seen >= HISTORY_LIMIT {
            return Err(unreadable(format!(
                "more than {HISTORY_LIMIT} commits without finding its approval"
            )));
        }
        let info = info.map_err(|e| unreadable(e.to_string()))?;
        let parents: Vec<ObjectId> = info.parent_ids.iter().copied().collect();
        let Some(here) = version_at(repo, info.id, file).filter(|v| v.approved) else {
            continue;
        };
        if parents
            .iter()
            .all(|p| !version_at(repo, *p, file).is_some_and(|v| v.approved))
        {
            approval = Some((info.id, parents, here));
            break;
        }
    }
    let Some((approval_id, approval_parents, approved)) = approval else {
        return Err(ApprovalRefusal::NoApprovalCommit {
            file: file.to_string(),
        });
    };
    let commit = approval_id.to_string();
    if approved.blob != at_head.blob {
        return Err(ApprovalRefusal::ChangedAfterApproval {
            file: file.to_string(),
            commit,
        });
    }
    let pending: Vec<Version> = approval_parents
        .iter()
        .filter_map(|p| version_at(repo, *p, file))
        .collect();
    if pending.is_empty() {
        return Err(ApprovalRefusal::CreatedApproved {
            file: file.to_string(),
            commit,
        });
    }
    if !pending.iter().any(|p| p.proposal == approved.proposal) {
        return Err(ApprovalRefusal::ChangedWithApproval { commit });
    }
    // Every commit before the approval that wrote the action (created or changed it).
    let mut writers: Vec<ObjectId> = Vec::new();
    let walk = repo
        .rev_walk(approval_parents.iter().copied())
        .all()
        .map_err(|e| unreadable(e.to_string()))?;
    for (seen, info) in walk.enumerate() {
        if seen >= HISTORY_LIMIT {
            return Err(unreadable(format!(
                "more than {HISTORY_LIMIT} commits in the history of its proposal"
            )));
        }
        let info = info.map_err(|e| unreadable(e.to_string()))?;
        let Some(here) = version_at(repo, info.id, file) else {
            continue;
        };
        let wrote = info
            .parent_ids
            .iter()
            .all(|p| version_at(repo, *p, file).map(|v| v.blob) != Some(here.blob));
        if wrote {
            writers.push(info.id);
        }
    }
    let Some(proposal_id) = writers.first().copied() else {
        return Err(ApprovalRefusal::CreatedApproved {
            file: file.to_string(),
            commit,
        });
    };

    let mut verifier = Verifier::new(repo, policy, now);
    let persons = |verifier: &mut Verifier<'_>,
                   id: ObjectId,
                   role: &'static str|
     -> Result<BTreeSet<String>, ApprovalRefusal> {
        let signers = verifier
            .signers_of(id)
            .map_err(|e| unreadable(e.to_string()))?
            .map_err(|r| ApprovalRefusal::Untrusted {
                commit: id.to_string(),
                role,
                why: r.to_string(),
            })?;
        Ok(signers
            .into_iter()
            .filter(|s| s.class == SignerClass::Person)
            .map(|s| s.signer)
            .collect())
    };
    let mut proposers: BTreeSet<String> = BTreeSet::new();
    for w in &writers {
        let p = persons(&mut verifier, *w, "proposal")?;
        if p.is_empty() {
            return Err(ApprovalRefusal::Untrusted {
                commit: w.to_string(),
                role: "proposal",
                why: "signed by a forge key only; a person must propose".into(),
            });
        }
        proposers.extend(p);
    }
    let signers = persons(&mut verifier, approval_id, "approval")?;
    let shown = |set: &BTreeSet<String>| set.iter().cloned().collect::<Vec<_>>().join(", ");
    if signers.is_empty() {
        return Err(ApprovalRefusal::Untrusted {
            commit,
            role: "approval",
            why: "signed by a forge key only; a person must approve".into(),
        });
    }
    let not_proposers: BTreeSet<String> = signers.difference(&proposers).cloned().collect();
    if not_proposers.is_empty() {
        return Err(ApprovalRefusal::SelfApproval {
            commit,
            signers: shown(&signers),
        });
    }
    let approvers: BTreeSet<String> = not_proposers
        .into_iter()
        .filter(|s| policy.may_approve(s, file))
        .collect();
    if approvers.is_empty() {
        return Err(ApprovalRefusal::NotAnApprover {
            commit,
            signers: shown(&signers),
            file: file.to_string(),
        });
    }
    let time_of = |id: ObjectId| {
        repo.find_commit(id)
            .ok()
            .and_then(|c| c.time().ok())
            .map_or(0, |t| t.seconds)
    };
    let need = policy.sre_approvals.min_approvers.max(1);
    if approvers.len() < need {
        return Err(ApprovalRefusal::NotEnoughApprovers {
            commit,
            approvers: shown(&approvers),
            have: approvers.len(),
            need,
            proposed_at: time_of(proposal_id),
        });
    }
    Ok(ApprovalEvidence {
        file: file.to_string(),
        approval_commit: commit,
        approved_at: time_of(approval_id),
        approvers: approvers.into_iter().collect(),
        proposal_commit: proposal_id.to_string(),
        proposed_at: time_of(proposal_id),
        proposers: proposers.into_iter().collect(),
    })
}
