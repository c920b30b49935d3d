//! `kars sre`: SRE remediations as pull requests. `propose` writes one typed action to
//! `sre/actions/<id>.yaml` on a branch with a signed commit and opens a pull request;
//! `approve` is another person's signed commit that sets `spec.approval.state: Approved`, then
//! the merge; `reject` closes the pull request with the reason; `actions` and `show` list and
//! explain proposals and what the agent did with them (from the forge and the cluster).
//!
//! Every command validates what it can offline first (the action's type, parameters,
//! denylisted namespaces, bounds, the repository layout) and exits 1 naming the problem before
//! any forge setting is read or anything is pushed. Git work happens in a temporary worktree
//! of the repository (`--repo`), so the checkout is never touched; commits are signed with the
//! user's own Git signing settings (`user.signingkey`, `gpg.format`).

mod git;
mod list;
mod propose;
mod review;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kars_gitops_agent::forge::{ForgeRepo, Gitea, Token};

use crate::access::ClusterArgs;
use crate::failure::{CHECK, Failure, USAGE};

/// Arguments of `kars sre`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Propose one typed action as a pull request (validated offline first).
    Propose(propose::Args),
    /// List proposals (open pull requests) and what the agent did with merged ones.
    Actions(list::ActionsArgs),
    /// Show one action: the proposal, its reviews, the agent's record and the CR's status.
    Show(list::ShowArgs),
    /// Approve an action: your signed commit sets Approved, then the pull request merges.
    Approve(review::ApproveArgs),
    /// Reject an action: the pull request is closed with the reason.
    Reject(review::RejectArgs),
}

/// Runs `kars sre`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    match args.command {
        Command::Propose(a) => propose::run(a),
        Command::Actions(a) => list::actions(a),
        Command::Show(a) => list::show(a),
        Command::Approve(a) => review::approve(a),
        Command::Reject(a) => review::reject(a),
    }
}

/// Where the repository and its forge are (the same flags on every `kars sre` command).
#[derive(clap::Args, Debug, Clone)]
pub struct ForgeArgs {
    /// The local clone of the policy repository (its remote is the forge's repository).
    #[arg(long, value_name = "DIR", default_value = ".")]
    repo: PathBuf,
    /// The Git remote of the forge repository.
    #[arg(long, value_name = "NAME", default_value = "origin")]
    remote: String,
    /// The branch the cluster follows (pull requests target it).
    #[arg(long, value_name = "BRANCH", default_value = "main")]
    base: String,
    /// The forge, `http(s)://host[:port]` (default: `spec.forge.url` in kars.yaml, else the
    /// remote's host).
    #[arg(long, env = "KARS_FORGE_URL", value_name = "URL")]
    forge_url: Option<String>,
    /// The repository on the forge, OWNER/NAME (default: `spec.forge.repository`, else the
    /// remote's path).
    #[arg(long, env = "KARS_FORGE_REPO", value_name = "OWNER/NAME")]
    forge_repo: Option<String>,
    /// File holding your forge API token (default: $KARS_FORGE_TOKEN). Never printed.
    #[arg(long, env = "KARS_FORGE_TOKEN_FILE", value_name = "FILE")]
    forge_token_file: Option<PathBuf>,
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
            .hint("run kars sre in a clone of the policy repository, or pass --repo DIR"));
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

/// Cluster flags for reading what the agent did (optional: without a reachable cluster only
/// the forge is shown).
#[derive(clap::Args, Debug, Clone)]
pub struct LedgerArgs {
    /// The PolicyRepo whose record to read (default: kars.yaml metadata.name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Do not read the cluster (forge only).
    #[arg(long)]
    no_cluster: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The branch of action `id`.
pub fn branch_of(id: &str) -> String {
    format!("{}{id}", kars_gitops_agent::sre::BRANCH_PREFIX)
}

pub use kars_gitops_agent::sre::file_of;

/// Checks an action id (a DNS label, it names the CR).
pub fn check_id(id: &str) -> Result<(), Failure> {
    if kars_contract::host::is_dns_label(id) {
        Ok(())
    } else {
        Err(Failure::msg(
            CHECK,
            format!(
                "action id {id:?}: must be a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
            ),
        ))
    }
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
