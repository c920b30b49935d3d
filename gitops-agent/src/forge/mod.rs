//! The forge (Gitea today; the [`Forge`] trait is shaped so GitHub can follow): pull requests
//! opened from pushed branches, comments, commit statuses, reviews, merges. The forge is never a
//! source of trust: an approval counts only through the signed commits the agent verifies; the
//! forge carries the conversation and the merge.
//!
//! Tokens come from a file or the environment and are never logged ([`Token`]'s `Debug` and
//! `Display` print `***`).

mod gitea;
pub mod push;

use std::fmt;
use std::path::{Path, PathBuf};

pub use gitea::Gitea;

/// Environment variable that may hold the forge token.
pub const TOKEN_ENV: &str = "KARS_FORGE_TOKEN";

/// An API token. Never printed.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token from a string (trimmed).
    pub fn new(s: &str) -> Result<Token, ForgeError> {
        let t = s.trim();
        if t.is_empty() || t.chars().any(|c| c.is_control() || c == ' ') {
            return Err(ForgeError::Config(
                "the forge token is empty or has spaces or control characters".into(),
            ));
        }
        Ok(Token(t.to_string()))
    }

    /// Reads a token file (its first line).
    pub fn from_file(path: &Path) -> Result<Token, ForgeError> {
        let text = std::fs::read_to_string(path).map_err(|e| ForgeError::TokenFile {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
        Token::new(text.lines().next().unwrap_or_default()).map_err(|_| ForgeError::TokenFile {
            path: path.to_path_buf(),
            error: "empty, or not a token on its first line".into(),
        })
    }

    /// The token from `file` when given, else from [`TOKEN_ENV`].
    pub fn from_file_or_env(file: Option<&Path>) -> Result<Token, ForgeError> {
        match file {
            Some(p) => Token::from_file(p),
            None => match std::env::var(TOKEN_ENV) {
                Ok(v) => Token::new(&v),
                Err(_) => Err(ForgeError::Config(format!(
                    "no forge token: pass --forge-token-file FILE or set {TOKEN_ENV}"
                ))),
            },
        }
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where the repository lives on the forge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForgeRepo {
    /// Base URL of the forge (`https://gitea.example.com`).
    pub url: String,
    /// Owner (user or organisation).
    pub owner: String,
    /// Repository name.
    pub name: String,
}

impl ForgeRepo {
    /// Parses `owner/name`.
    pub fn parse(url: &str, full_name: &str) -> Result<ForgeRepo, ForgeError> {
        let url = url.trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(ForgeError::Config(format!(
                "forge URL {url:?}: must start with http:// or https://"
            )));
        }
        let (owner, name) = full_name
            .trim_end_matches(".git")
            .split_once('/')
            .filter(|(o, n)| !o.is_empty() && !n.is_empty() && !n.contains('/'))
            .ok_or_else(|| {
                ForgeError::Config(format!(
                    "forge repository {full_name:?}: expected OWNER/NAME"
                ))
            })?;
        let ok = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !s.starts_with('.')
        };
        if !ok(owner) || !ok(name) {
            return Err(ForgeError::Config(format!(
                "forge repository {full_name:?}: owner and name may hold letters, digits, '-', '_' and '.'"
            )));
        }
        Ok(ForgeRepo {
            url: url.to_string(),
            owner: owner.to_string(),
            name: name.to_string(),
        })
    }

    /// `owner/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

/// A pull request's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PullState {
    /// Open.
    Open,
    /// Closed without merge.
    Closed,
    /// Merged.
    Merged,
}

/// A pull request.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PullRequest {
    /// Number.
    pub number: u64,
    /// Title.
    pub title: String,
    /// Body (Markdown).
    pub body: String,
    /// State.
    pub state: PullState,
    /// Who opened it (forge login).
    pub author: String,
    /// Head branch.
    pub head_ref: String,
    /// Head commit.
    pub head_sha: String,
    /// Base branch.
    pub base_ref: String,
    /// Web URL.
    pub url: String,
    /// The commit the merge produced (for a fast-forward: the head).
    pub merge_commit: Option<String>,
}

/// A review's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ReviewState {
    /// Approved.
    Approved,
    /// Changes requested.
    ChangesRequested,
    /// A comment only.
    Commented,
    /// Anything else (pending, requested).
    Other,
}

/// A review.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Review {
    /// Reviewer (forge login).
    pub user: String,
    /// Verdict.
    pub state: ReviewState,
    /// The commit reviewed.
    pub commit: String,
    /// Stale (the head moved since) or dismissed.
    pub stale: bool,
}

/// A comment on a pull request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Comment {
    /// Id (for edits).
    pub id: u64,
    /// Author.
    pub user: String,
    /// Body.
    pub body: String,
}

/// A commit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitState {
    /// Running.
    Pending,
    /// Done, fine.
    Success,
    /// Done, not fine (refused, failed).
    Failure,
    /// Could not run.
    Error,
}

impl CommitState {
    fn as_str(self) -> &'static str {
        match self {
            CommitState::Pending => "pending",
            CommitState::Success => "success",
            CommitState::Failure => "failure",
            CommitState::Error => "error",
        }
    }
}

/// How to merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MergeStyle {
    /// Fast-forward only: the signed head commit becomes the branch head (nothing unsigned is
    /// added). Refused by the forge when the branch is behind its base.
    FastForwardOnly,
    /// A merge commit made by the forge (unsigned unless the forge has a signing key the trust
    /// policy lists under `forgeKeys`).
    MergeCommit,
}

/// A forge call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ForgeError {
    /// Settings are missing or malformed.
    #[error("{0}")]
    Config(String),
    /// The token file could not be read.
    #[error("forge token file {path}: {error}")]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The forge could not be reached.
    #[error("forge {url}: {error}")]
    Transport {
        /// Where.
        url: String,
        /// Why.
        error: String,
    },
    /// The forge answered with an error status.
    #[error("forge refused {what} ({status}): {message}")]
    Refused {
        /// What was asked (`merge pull request #3`).
        what: String,
        /// HTTP status.
        status: u16,
        /// The forge's message.
        message: String,
    },
    /// The answer was not what the API documents.
    #[error("forge answer to {what} is malformed: {error}")]
    Decode {
        /// What was asked.
        what: String,
        /// Why.
        error: String,
    },
}

impl ForgeError {
    /// The HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ForgeError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The operations the pull-request flows need.
#[allow(async_fn_in_trait)]
pub trait Forge {
    /// The login the token belongs to.
    async fn whoami(&self) -> Result<String, ForgeError>;
    /// Opens a pull request from the pushed branch `head` into `base`.
    async fn open_pull(
        &self,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError>;
    /// One pull request.
    async fn pull(&self, number: u64) -> Result<PullRequest, ForgeError>;
    /// Every pull request (open and closed), newest first.
    async fn pulls(&self) -> Result<Vec<PullRequest>, ForgeError>;
    /// Comments on a pull request, oldest first.
    async fn comments(&self, number: u64) -> Result<Vec<Comment>, ForgeError>;
    /// Adds a comment; returns its id.
    async fn comment(&self, number: u64, body: &str) -> Result<u64, ForgeError>;
    /// Replaces a comment's body.
    async fn edit_comment(&self, id: u64, body: &str) -> Result<(), ForgeError>;
    /// Sets a commit status.
    async fn set_status(
        &self,
        sha: &str,
        state: CommitState,
        context: &str,
        description: &str,
    ) -> Result<(), ForgeError>;
    /// Reviews of a pull request.
    async fn reviews(&self, number: u64) -> Result<Vec<Review>, ForgeError>;
    /// Submits an approving review.
    async fn approve(&self, number: u64, body: &str) -> Result<(), ForgeError>;
    /// Merges.
    async fn merge(&self, number: u64, style: MergeStyle) -> Result<(), ForgeError>;
    /// Closes without merging.
    async fn close(&self, number: u64) -> Result<(), ForgeError>;

    /// The newest pull request whose head branch is `head`.
    async fn pull_for_branch(&self, head: &str) -> Result<Option<PullRequest>, ForgeError> {
        Ok(self.pulls().await?.into_iter().find(|p| p.head_ref == head))
    }

    /// Keeps one comment that starts with `marker` up to date (edits it, or adds it).
    async fn upsert_comment(
        &self,
        number: u64,
        marker: &str,
        body: &str,
    ) -> Result<u64, ForgeError> {
        let me = self.whoami().await?;
        let existing = self
            .comments(number)
            .await?
            .into_iter()
            .find(|c| c.user == me && c.body.starts_with(marker));
        match existing {
            Some(c) if c.body == body => Ok(c.id),
            Some(c) => self.edit_comment(c.id, body).await.map(|()| c.id),
            None => self.comment(number, body).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_never_print() {
        let t = Token::new(" s3cr3t-token\n").unwrap_or_else(|_| panic!("valid token"));
        assert_eq!(format!("{t} {t:?}"), "*** Token(***)");
        assert!(Token::new("two words").is_err());
        assert!(Token::new("  ").is_err());
    }

    #[test]
    fn repositories_are_owner_slash_name() {
        let r = ForgeRepo::parse("http://127.0.0.1:3000/", "alice/policy.git");
        assert!(
            matches!(&r, Ok(r) if r.full_name() == "alice/policy" && r.url == "http://127.0.0.1:3000")
        );
        for bad in [
            "alice", "alice/", "/policy", "a/b/c", "../x", "a/..", "a b/c",
        ] {
            assert!(
                ForgeRepo::parse("http://f", bad).is_err(),
                "{bad} must be refused"
            );
        }
        assert!(ForgeRepo::parse("ftp://f", "a/b").is_err());
    }
}
