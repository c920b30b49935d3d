//! Gitea's REST API (`/api/v1`, the parts the pull-request flows use).

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use super::{
    Comment, CommitState, Forge, ForgeError, ForgeRepo, MergeStyle, PullRequest, PullState, Review,
    ReviewState, Token,
};

/// How many times a merge Gitea is not ready for is asked again (every 500 ms).
const MERGE_RETRIES: u32 = 20;

/// A Gitea repository, through one token.
#[derive(Clone, Debug)]
pub struct Gitea {
    repo: ForgeRepo,
    token: Token,
    http: reqwest::Client,
}

#[derive(Deserialize)]
struct User {
    login: String,
}

#[derive(Deserialize)]
struct Branch {
    #[serde(rename = "ref")]
    ref_: String,
    sha: String,
}

#[derive(Deserialize)]
struct Pull {
    number: u64,
    #[serde(default)]
    title: String,
    #[serde(default)]
    body: String,
    state: String,
    #[serde(default)]
    merged: bool,
    user: User,
    head: Branch,
    base: Branch,
    html_url: String,
    #[serde(default)]
    merge_commit_sha: Option<String>,
}

impl From<Pull> for PullRequest {
    fn from(p: Pull) -> PullRequest {
        PullRequest {
            number: p.number,
            title: p.title,
            body: p.body,
            state: if p.merged {
                PullState::Merged
            } else if p.state == "open" {
                PullState::Open
            } else {
                PullState::Closed
            },
            author: p.user.login,
            head_ref: p.head.ref_,
            head_sha: p.head.sha,
            base_ref: p.base.ref_,
            url: p.html_url,
            merge_commit: p.merge_commit_sha.filter(|s| !s.is_empty()),
        }
    }
}

#[derive(Deserialize)]
struct GiteaReview {
    user: Option<User>,
    state: String,
    #[serde(default)]
    commit_id: String,
    #[serde(default)]
    stale: bool,
    #[serde(default)]
    dismissed: bool,
}

#[derive(Deserialize)]
struct GiteaComment {
    id: u64,
    user: User,
    #[serde(default)]
    body: String,
}

#[derive(Deserialize)]
struct Created {
    id: u64,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

/// Pull requests read per page, and pages read at most (1,000 pull requests).
const PAGE: usize = 50;
const MAX_PAGES: usize = 20;

impl Gitea {
    /// A client for `repo` with `token`.
    pub fn new(repo: ForgeRepo, token: Token) -> Result<Gitea, ForgeError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("kars-gitops/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ForgeError::Config(format!("cannot build the HTTP client: {e}")))?;
        Ok(Gitea { repo, token, http })
    }

    /// The repository this client talks to.
    pub fn repo(&self) -> &ForgeRepo {
        &self.repo
    }

    /// Creates branch `branch` at `commit` on the forge's repository, sending `objects` (Git's
    /// smart HTTP push, authenticated with the token).
    pub async fn push_new_branch(
        &self,
        branch: &str,
        commit: &str,
        objects: &[super::push::PackObject],
    ) -> Result<(), ForgeError> {
        let user = self.whoami().await?;
        let git_url = format!(
            "{}/{}/{}.git",
            self.repo.url, self.repo.owner, self.repo.name
        );
        super::push::create_branch(
            &self.http,
            &git_url,
            &user,
            &self.token,
            branch,
            commit,
            objects,
        )
        .await
    }

    fn repo_url(&self, rest: &str) -> String {
        format!(
            "{}/api/v1/repos/{}/{}{rest}",
            self.repo.url, self.repo.owner, self.repo.name
        )
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        method: reqwest::Method,
        url: String,
        body: Option<serde_json::Value>,
    ) -> Result<Option<T>, ForgeError> {
        let mut req = self
            .http
            .request(method, &url)
            .header("Authorization", format!("token {}", self.token.expose()))
            .header("Accept", "application/json");
        if let Some(b) = &body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ForgeError::Transport {
            url: self.repo.url.clone(),
            error: e.without_url().to_string(),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| ForgeError::Transport {
            url: self.repo.url.clone(),
            error: e.without_url().to_string(),
        })?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|b| b.message)
                .ok()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            return Err(ForgeError::Refused {
                what: what.to_string(),
                status: status.as_u16(),
                message,
            });
        }
        if bytes.is_empty() || status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ForgeError::Decode {
                what: what.to_string(),
                error: e.to_string(),
            })
    }

    async fn call_some<T: serde::de::DeserializeOwned>(
        &self,
        what: &str,
        method: reqwest::Method,
        url: String,
        body: Option<serde_json::Value>,
    ) -> Result<T, ForgeError> {
        self.call(what, method, url, body)
            .await?
            .ok_or_else(|| ForgeError::Decode {
                what: what.to_string(),
                error: "empty answer".into(),
            })
    }
}

impl Forge for Gitea {
    async fn whoami(&self) -> Result<String, ForgeError> {
        let url = format!("{}/api/v1/user", self.repo.url);
        let u: User = self
            .call_some("read the token's user", reqwest::Method::GET, url, None)
            .await?;
        Ok(u.login)
    }

    async fn open_pull(
        &self,
        head: &str,
        base: &str,
        title: &str,
        body: &str,
    ) -> Result<PullRequest, ForgeError> {
        let p: Pull = self
            .call_some(
                &format!("open a pull request from {head}"),
                reqwest::Method::POST,
                self.repo_url("/pulls"),
                Some(json!({"head": head, "base": base, "title": title, "body": body})),
            )
            .await?;
        Ok(p.into())
    }

    async fn pull(&self, number: u64) -> Result<PullRequest, ForgeError> {
        let p: Pull = self
            .call_some(
                &format!("read pull request #{number}"),
                reqwest::Method::GET,
                self.repo_url(&format!("/pulls/{number}")),
                None,
            )
            .await?;
        Ok(p.into())
    }

    async fn pulls(&self) -> Result<Vec<PullRequest>, ForgeError> {
        let mut out = Vec::new();
        for page in 1..=MAX_PAGES {
            let batch: Vec<Pull> = self
                .call_some(
                    "list pull requests",
                    reqwest::Method::GET,
                    self.repo_url(&format!(
                        "/pulls?state=all&sort=newest&limit={PAGE}&page={page}"
                    )),
                    None,
                )
                .await?;
            let n = batch.len();
            out.extend(batch.into_iter().map(PullRequest::from));
            if n < PAGE {
                break;
            }
        }
        Ok(out)
    }

    async fn comments(&self, number: u64) -> Result<Vec<Comment>, ForgeError> {
        let list: Vec<GiteaComment> = self
            .call_some(
                &format!("list the comments of #{number}"),
                reqwest::Method::GET,
                self.repo_url(&format!("/issues/{number}/comments")),
                None,
            )
            .await?;
        Ok(list
            .into_iter()
            .map(|c| Comment {
                id: c.id,
                user: c.user.login,
                body: c.body,
            })
            .collect())
    }

    async fn comment(&self, number: u64, body: &str) -> Result<u64, ForgeError> {
        let c: Created = self
            .call_some(
                &format!("comment on #{number}"),
                reqwest::Method::POST,
                self.repo_url(&format!("/issues/{number}/comments")),
                Some(json!({ "body": body })),
            )
            .await?;
        Ok(c.id)
    }

    async fn edit_comment(&self, id: u64, body: &str) -> Result<(), ForgeError> {
        self.call::<serde_json::Value>(
            &format!("edit comment {id}"),
            reqwest::Method::PATCH,
            self.repo_url(&format!("/issues/comments/{id}")),
            Some(json!({ "body": body })),
        )
        .await
        .map(|_| ())
    }

    async fn set_status(
        &self,
        sha: &str,
        state: CommitState,
        context: &str,
        description: &str,
    ) -> Result<(), ForgeError> {
        let description: String = description.chars().take(250).collect();
        self.call::<serde_json::Value>(
            &format!("set the {context} status of {sha}"),
            reqwest::Method::POST,
            self.repo_url(&format!("/statuses/{sha}")),
            Some(json!({"state": state.as_str(), "context": context, "description": description})),
        )
        .await
        .map(|_| ())
    }

    async fn reviews(&self, number: u64) -> Result<Vec<Review>, ForgeError> {
        let list: Vec<GiteaReview> = self
            .call_some(
                &format!("list the reviews of #{number}"),
                reqwest::Method::GET,
                self.repo_url(&format!("/pulls/{number}/reviews")),
                None,
            )
            .await?;
        Ok(list
            .into_iter()
            .map(|r| Review {
                user: r.user.map(|u| u.login).unwrap_or_default(),
                state: match r.state.as_str() {
                    "APPROVED" => ReviewState::Approved,
                    "REQUEST_CHANGES" => ReviewState::ChangesRequested,
                    "COMMENT" => ReviewState::Commented,
                    _ => ReviewState::Other,
                },
                commit: r.commit_id,
                stale: r.stale || r.dismissed,
            })
            .collect())
    }

    async fn approve(&self, number: u64, body: &str) -> Result<(), ForgeError> {
        self.call::<serde_json::Value>(
            &format!("approve #{number}"),
            reqwest::Method::POST,
            self.repo_url(&format!("/pulls/{number}/reviews")),
            Some(json!({"event": "APPROVED", "body": body})),
        )
        .await
        .map(|_| ())
    }

    async fn merge(&self, number: u64, style: MergeStyle) -> Result<(), ForgeError> {
        let style = match style {
            MergeStyle::FastForwardOnly => "fast-forward-only",
            MergeStyle::MergeCommit => "merge",
        };
        // Gitea answers 405 "Please try again later" while it is still computing whether the
        // pull request can merge (right after a push or an approval): wait and ask again, for
        // at most about ten seconds; any other refusal is final.
        let mut attempt = 0;
        loop {
            let result = self
                .call::<serde_json::Value>(
                    &format!("merge #{number} ({style})"),
                    reqwest::Method::POST,
                    self.repo_url(&format!("/pulls/{number}/merge")),
                    Some(json!({"Do": style, "delete_branch_after_merge": false})),
                )
                .await;
            match result {
                Err(ForgeError::Refused {
                    status: 405,
                    ref message,
                    ..
                }) if attempt < MERGE_RETRIES && message.contains("try again later") => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                other => return other.map(|_| ()),
            }
        }
    }

    async fn close(&self, number: u64) -> Result<(), ForgeError> {
        self.call::<serde_json::Value>(
            &format!("close #{number}"),
            reqwest::Method::PATCH,
            self.repo_url(&format!("/pulls/{number}")),
            Some(json!({"state": "closed"})),
        )
        .await
        .map(|_| ())
    }
}
