//! Changes proposed as pull requests on the forge (`kars sre`, `kars egress`): the forge and
//! repository settings every such command shares, the connection to the forge, and the Git
//! side ([`git`]): a temporary worktree of the user's clone, signed commits, push.
//!
//! Every command validates offline first and reads no forge setting before that.

pub mod git;

use std::path::{Path, PathBuf};

use kars_gitops_agent::forge::{ForgeRepo, Gitea, Token};

use crate::failure::{CHECK, Failure, USAGE};

/// Where the repository and its forge are (the same flags on every command that opens pull requests).
#[derive(clap::Args, Debug, Clone)]
pub struct ForgeArgs {
    /// The local clone of the policy repository (its remote is the forge's repository).
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub repo: PathBuf,
    /// The Git remote of the forge repository.
    #[arg(long, value_name = "NAME", default_value = "origin")]
    pub remote: String,
    /// The branch the cluster follows (pull requests target it).
    #[arg(long, value_name = "BRANCH", default_value = "main")]
    pub base: String,
    /// The forge, `http(s)://host[:port]` (default: `spec.forge.url` in kars.yaml, else the
    /// remote's host).
    #[arg(long, env = "KARS_FORGE_URL", value_name = "URL")]
    pub forge_url: Option<String>,
    /// The repository on the forge, OWNER/NAME (default: `spec.forge.repository`, else the
    /// remote's path).
    #[arg(long, env = "KARS_FORGE_REPO", value_name = "OWNER/NAME")]
    pub forge_repo: Option<String>,
    /// File holding your forge API token (default: $KARS_FORGE_TOKEN). Never printed.
    #[arg(long, env = "KARS_FORGE_TOKEN_FILE", value_name = "FILE")]
    pub forge_token_file: Option<PathBuf>,
}

/// The resolved forge and repository.
pub struct Connection {
    /// The forge client (your token).
    pub forge: Gitea,
    /// Your login on the forge.
    pub me: String,
    /// The local repository.
    pub repo: PathBuf,
    /// The remote.
    pub remote: String,
    /// The base branch.
    pub base: String,
}

/// `spec.forge` of the repository's `kars.yaml`, if set.
fn forge_config(repo: &Path) -> Result<Option<kars_renderer::config::ForgeConfig>, Failure> {
    let text = match std::fs::read_to_string(repo.join("kars.yaml")) {
        Ok(t) => t,
        Err(_) => return Ok(None),
    };
    let docs =
        kars_renderer::yaml::parse_documents(&text, kars_renderer::yaml::YamlLimits::default())
            .map_err(|e| {
                Failure::msg(
                    CHECK,
                    format!("{}: {e:?}", repo.join("kars.yaml").display()),
                )
            })?;
    let Some(doc) = docs.first() else {
        return Ok(None);
    };
    let mut diags = kars_renderer::diagnostics::Diagnostics::new("kars.yaml".to_string());
    let cfg = kars_renderer::config::parse(doc, &mut diags);
    Ok(cfg.and_then(|c| c.spec.forge))
}

/// `scheme://host[:port]` and `owner/name` from a remote URL (`http(s)://[user@]host/owner/name.git`).
fn split_remote(url: &str) -> Option<(String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let (host, path) = rest.split_once('/')?;
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    Some((
        format!("{scheme}://{host}"),
        path.trim_end_matches('/')
            .trim_end_matches(".git")
            .to_string(),
    ))
}

impl ForgeArgs {
    /// The repository directory (checked to be a Git work tree with the remote).
    pub fn check_repo(&self) -> Result<(), Failure> {
        if !self.repo.join("kars.yaml").is_file() {
            return Err(Failure::msg(
                USAGE,
                format!(
                    "{} is not a policy repository (no kars.yaml)",
                    self.repo.display()
                ),
            )
            .hint("run it in a clone of the policy repository, or pass --repo DIR"));
        }
        git::remote_url(&self.repo, &self.remote).map(|_| ())
    }

    /// Reads the forge settings (flags, then kars.yaml, then the remote) and the token, and
    /// asks the forge who the token belongs to.
    pub async fn connect(&self) -> Result<Connection, Failure> {
        let from_config = forge_config(&self.repo)?;
        let remote = git::remote_url(&self.repo, &self.remote)?;
        let from_remote = split_remote(&remote);
        let url = self
            .forge_url
            .clone()
            .or_else(|| from_config.as_ref().map(|c| c.url.clone()))
            .or_else(|| from_remote.as_ref().map(|r| r.0.clone()))
            .ok_or_else(|| {
                Failure::msg(USAGE, "no forge URL: pass --forge-url, set spec.forge.url in kars.yaml, or use an http(s) remote")
            })?;
        let full = self
            .forge_repo
            .clone()
            .or_else(|| from_config.as_ref().map(|c| c.repository.clone()))
            .or_else(|| from_remote.as_ref().map(|r| r.1.clone()))
            .ok_or_else(|| Failure::msg(USAGE, "no forge repository: pass --forge-repo OWNER/NAME or set spec.forge.repository in kars.yaml"))?;
        let repo = ForgeRepo::parse(&url, &full).map_err(|e| Failure::msg(USAGE, e))?;
        let token = Token::from_file_or_env(self.forge_token_file.as_deref())
            .map_err(|e| Failure::msg(USAGE, e))?;
        let forge = Gitea::new(repo, token).map_err(|e| Failure::msg(USAGE, e))?;
        let me = kars_gitops_agent::forge::Forge::whoami(&forge)
            .await
            .map_err(forge_failure)?;
        Ok(Connection {
            forge,
            me,
            repo: self.repo.clone(),
            remote: self.remote.clone(),
            base: self.base.clone(),
        })
    }
}

/// A forge error as a failure (unreachable: exit 3; refused: exit 1).
pub fn forge_failure(e: kars_gitops_agent::forge::ForgeError) -> Failure {
    use kars_gitops_agent::forge::ForgeError;
    match e {
        ForgeError::Transport { .. } => Failure::unreachable(anyhow::anyhow!("{e}")),
        ForgeError::Config(_) | ForgeError::TokenFile { .. } => Failure::msg(USAGE, e),
        ForgeError::Refused { status: 401, .. } => Failure::msg(USAGE, e)
            .hint("the forge token is not valid: check --forge-token-file or $KARS_FORGE_TOKEN"),
        _ => Failure::msg(CHECK, e),
    }
}

/// One change to propose: files to write (`Some`) or remove (`None`), and the pull request.
#[derive(Debug, Clone, Default)]
pub struct Change {
    /// Repository-relative path → new content, or `None` to remove the file.
    pub files: std::collections::BTreeMap<String, Option<String>>,
    /// The branch (`kars-egress/…`).
    pub branch: String,
    /// The commit message.
    pub message: String,
    /// The pull request's title.
    pub title: String,
    /// The pull request's body (Markdown).
    pub body: String,
}

/// What [`propose`] did.
pub struct Proposed {
    /// The signed commit.
    pub commit: String,
    /// The pull request.
    pub pull: kars_gitops_agent::forge::PullRequest,
}

/// Validates the repository at `dir` as `kars validate` does; the errors as one failure.
pub fn validate_dir(dir: &Path, what: &str) -> Result<(), Failure> {
    let tree =
        kars_renderer::RepoTree::from_dir(dir, kars_renderer::source::SourceLimits::default())
            .map_err(|e| Failure::msg(CHECK, format!("{what}: {e}")))?;
    let report = kars_renderer::validate_tree(&tree);
    if report.error_count() == 0 {
        return Ok(());
    }
    let errors: Vec<String> = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == kars_renderer::diagnostics::Severity::Error)
        .take(5)
        .map(ToString::to_string)
        .collect();
    Err(Failure::msg(
        CHECK,
        format!("{what} does not validate: {}", errors.join("; ")),
    )
    .reason(kars_contract::Reason::ValidationFailed)
    .hint("kars validate shows every problem"))
}

/// Proposes a change: fetches the base branch, plans the change on it again (`plan`, which the
/// caller already ran offline on the local clone), checks that the result validates, commits
/// it signed in a temporary worktree, pushes the branch and opens the pull request. Nothing is
/// pushed when any step before the push fails.
pub async fn propose(
    conn: &Connection,
    plan: impl Fn(&Path) -> Result<Change, Failure>,
) -> Result<Option<Proposed>, Failure> {
    use kars_gitops_agent::forge::Forge;
    let base = git::fetch(&conn.repo, &conn.remote, &conn.base)?;
    let wt = git::Worktree::at(&conn.repo, &base)?;
    let change = plan(&wt.path).map_err(|f| {
        let m = f.message();
        Failure::msg(
            f.code,
            format!("on {} ({}): {m}", conn.base, &base[..12.min(base.len())]),
        )
    })?;
    if change.files.is_empty() {
        return Ok(None);
    }
    if conn
        .forge
        .pull_for_branch(&change.branch)
        .await
        .map_err(forge_failure)?
        .is_some_and(|p| p.state == kars_gitops_agent::forge::PullState::Open)
    {
        return Err(Failure::msg(
            CHECK,
            format!("an open pull request for {} exists already", change.branch),
        )
        .hint("review or close it first, or pass another --name"));
    }
    for (path, body) in &change.files {
        match body {
            Some(b) => wt.write(path, b)?,
            None => wt.remove(path)?,
        }
    }
    validate_dir(&wt.path, "the changed repository")?;
    let paths: Vec<&str> = change.files.keys().map(String::as_str).collect();
    let commit = wt.commit_signed(&paths, &change.message)?;
    wt.push(
        &conn.remote,
        &format!("{commit}:refs/heads/{}", change.branch),
    )?;
    let pull = conn
        .forge
        .open_pull(&change.branch, &conn.base, &change.title, &change.body)
        .await
        .map_err(forge_failure)?;
    Ok(Some(Proposed { commit, pull }))
}

/// A short random suffix for branch and object names.
pub fn suffix() -> String {
    use sha2::Digest;
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remotes_give_the_forge_and_the_repository() {
        assert_eq!(
            split_remote("http://alice:pw@127.0.0.1:3000/alice/policy.git"),
            Some(("http://127.0.0.1:3000".into(), "alice/policy".into()))
        );
        assert_eq!(split_remote("git@host:alice/policy.git"), None);
        assert_eq!(split_remote("file:///tmp/x"), None);
    }
}
