//! What verification concludes: per commit ([`CommitVerdict`], refused with a
//! [`CommitRefusal`]), for the history ([`HistoryRefusal`]: rollbacks), and for a whole range
//! ([`RangeVerdict`]), each refusal with its reason word.

use kars_contract::Reason;

use super::signature::{Accepted, Refusal};

/// Why a commit is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitRefusal {
    /// The commit's own signature is not accepted.
    #[error("{0}")]
    Signature(Refusal),
    /// A path rule needs more distinct signers.
    #[error(
        "changes {paths} need {need} distinct signer(s) from [{allowed}], signed by [{have}]; add signed approval tags ({prefix}…) from other signers"
    )]
    NotEnoughSigners {
        /// Paths that triggered the rule (first few).
        paths: String,
        /// Needed.
        need: usize,
        /// Allowed signer names.
        allowed: String,
        /// Who signed.
        have: String,
        /// Approval tag prefix.
        prefix: String,
    },
    /// The repository signer list changed without enough previously trusted signers.
    #[error(
        "changes the repository signer list {path} but only [{have}] of the signers trusted before it signed; {need} needed"
    )]
    SignerListChangeUntrusted {
        /// The list's path.
        path: String,
        /// Who signed.
        have: String,
        /// Needed.
        need: usize,
    },
    /// The new signer list does not parse.
    #[error("the repository signer list is invalid: {0}")]
    InvalidSignerList(String),
    /// A forge key signed something that is not a merge.
    #[error("signed only by forge key {0}, which may sign merges only; sign the commit yourself")]
    ForgeNotMerge(String),
    /// A forge-signed merge brings in commits that do not verify.
    #[error("forge-signed merge brings in unverified commit {0}")]
    ForgeMergeUnverified(String),
    /// A forge-signed merge changes paths beyond what the merged branch has.
    #[error(
        "forge-signed merge changes {0} beyond the merged branch (conflict resolution or hidden change); a person must sign it"
    )]
    ForgeMergeExtraChanges(String),
}

impl CommitRefusal {
    /// The reason word (status, metrics, `--json`).
    pub fn reason(&self) -> Reason {
        match self {
            CommitRefusal::Signature(r) => r.reason(),
            CommitRefusal::NotEnoughSigners { .. } => Reason::NotEnoughSigners,
            CommitRefusal::SignerListChangeUntrusted { .. } => Reason::SignerListChangeUntrusted,
            CommitRefusal::InvalidSignerList(_) => Reason::InvalidSignerList,
            CommitRefusal::ForgeNotMerge(_) => Reason::ForgeKeyNotMerge,
            CommitRefusal::ForgeMergeUnverified(_) => Reason::ForgeMergeUnverified,
            CommitRefusal::ForgeMergeExtraChanges(_) => Reason::ForgeMergeExtraChanges,
        }
    }
}

/// The verdict on one commit.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CommitVerdict {
    /// Commit id.
    pub id: String,
    /// First line of the message.
    pub summary: String,
    /// Committer e-mail.
    pub committer: String,
    /// Accepted signatures (the commit's own, then approval tags).
    pub signers: Vec<Accepted>,
    /// `None` when the commit is accepted.
    #[serde(serialize_with = "ser_refusal")]
    pub refusal: Option<CommitRefusal>,
}

fn ser_refusal<S: serde::Serializer>(r: &Option<CommitRefusal>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    match r {
        None => s.serialize_none(),
        Some(r) => {
            let mut m = s.serialize_map(Some(2))?;
            m.serialize_entry("reason", &r.reason())?;
            m.serialize_entry("message", &r.to_string())?;
            m.end()
        }
    }
}

impl CommitVerdict {
    /// True when accepted.
    pub fn ok(&self) -> bool {
        self.refusal.is_none()
    }
}

/// History problems that are not about one commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "reason", content = "message")]
pub enum HistoryRefusal {
    /// The head does not descend from the last applied commit and carries no valid override.
    #[error(
        "head {head} does not descend from the last applied commit {since}: a rollback or force-push; refused. To roll back on purpose, commit on top of the target with the trailer \"Kars-Allow-Rollback: {since}\" signed by {need} trusted signers"
    )]
    Rollback {
        /// New head.
        head: String,
        /// Last applied.
        since: String,
        /// Signers an override needs.
        need: usize,
    },
    /// An override is present but not signed by enough signers.
    #[error(
        "rollback override on {head} is signed by [{have}], but {need} distinct trusted signers are required"
    )]
    RollbackOverrideUnderSigned {
        /// New head.
        head: String,
        /// Signers.
        have: String,
        /// Needed.
        need: usize,
    },
}

impl HistoryRefusal {
    /// The reason word.
    pub fn reason(&self) -> Reason {
        match self {
            HistoryRefusal::Rollback { .. } => Reason::Rollback,
            HistoryRefusal::RollbackOverrideUnderSigned { .. } => {
                Reason::RollbackOverrideUnderSigned
            }
        }
    }
}

/// The verdict on a range.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RangeVerdict {
    /// The new head.
    pub head: String,
    /// The last applied commit, if any.
    pub since: Option<String>,
    /// Every new commit, parents before children.
    pub commits: Vec<CommitVerdict>,
    /// A history-level refusal.
    pub history: Option<HistoryRefusal>,
    /// True when a signed rollback override was honoured.
    pub rollback_override: bool,
}

impl RangeVerdict {
    /// True when everything passed.
    pub fn ok(&self) -> bool {
        self.history.is_none() && self.commits.iter().all(CommitVerdict::ok)
    }

    /// The first problem, as one line (for status conditions).
    pub fn first_problem(&self) -> Option<String> {
        if let Some(h) = &self.history {
            return Some(format!("{}: {h}", h.reason()));
        }
        self.commits.iter().find_map(|c| {
            c.refusal.as_ref().map(|r| {
                format!(
                    "{}: commit {}: {r}",
                    r.reason(),
                    &c.id[..12.min(c.id.len())]
                )
            })
        })
    }

    /// The reason word of the refusal (the history's, else the first refused commit's).
    pub fn reason(&self) -> Option<Reason> {
        self.history
            .as_ref()
            .map(HistoryRefusal::reason)
            .or_else(|| {
                self.commits
                    .iter()
                    .find_map(|c| c.refusal.as_ref().map(CommitRefusal::reason))
            })
    }
}
