//! The Git side of proposals, through the user's own `git` (their signing settings, their
//! credentials): fetch, a temporary worktree, signed commits, push. Remote URLs are never
//! printed (they may carry credentials).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::failure::{CHECK, Failure, UNREACHABLE, USAGE};

fn git(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("git");
    c.current_dir(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0");
    c
}

/// Runs git; the error names what was being done and git's own message.
pub fn run(dir: &Path, what: &str, args: &[&str]) -> Result<String, Failure> {
    let out = git(dir, args).output().map_err(|e| {
        Failure::msg(USAGE, format!("{what}: cannot run git: {e}")).hint("install git")
    })?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let message: String = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| redact_userinfo(l.trim_start_matches("remote: ").trim()))
        .take(4)
        .collect::<Vec<_>>()
        .join("; ");
    let unreachable = [
        "Could not resolve",
        "Connection refused",
        "unable to access",
        "Failed to connect",
    ]
    .iter()
    .any(|m| stderr.contains(m));
    Err(Failure::msg(
        if unreachable { UNREACHABLE } else { CHECK },
        format!("{what}: {message}"),
    ))
}

/// `line` with the user information of every URL in it (`scheme://user:secret@`) replaced by
/// `***`: git quotes remote URLs in its errors, and a remote may carry a token.
fn redact_userinfo(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let (before, after) = rest.split_at(i + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c.is_whitespace() || c == '/' || c == '\'' || c == '"')
            .unwrap_or(after.len());
        match after[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// True when git succeeds.
fn ok(dir: &Path, args: &[&str]) -> bool {
    git(dir, args).output().is_ok_and(|o| o.status.success())
}

/// The URL of `remote` (never printed).
pub fn remote_url(repo: &Path, remote: &str) -> Result<String, Failure> {
    run(
        repo,
        &format!("reading remote {remote:?}"),
        &["remote", "get-url", remote],
    )
    .map(|s| s.trim().to_string())
    .map_err(|f| {
        f.with_code(USAGE).hint(format!(
            "{} needs a Git remote {remote:?} for the forge repository (or pass --remote)",
            repo.display()
        ))
    })
}

/// Fetches `refs/heads/<branch>` of `remote`; returns the commit.
pub fn fetch(repo: &Path, remote: &str, branch: &str) -> Result<String, Failure> {
    let refspec = format!("+refs/heads/{branch}:refs/kars-sre/fetched/{branch}");
    run(
        repo,
        &format!("fetching {branch} from {remote}"),
        &["fetch", "-q", "--no-tags", remote, &refspec],
    )?;
    rev(repo, &format!("refs/kars-sre/fetched/{branch}"))
}

/// Fetches the approval tags (`refs/tags/approvals/*`) of `remote`.
pub fn fetch_approval_tags(repo: &Path, remote: &str) -> Result<(), Failure> {
    run(
        repo,
        &format!("fetching approval tags from {remote}"),
        &[
            "fetch",
            "-q",
            remote,
            "+refs/tags/approvals/*:refs/tags/approvals/*",
        ],
    )
    .map(|_| ())
}

/// The commit `rev` names.
pub fn rev(repo: &Path, rev: &str) -> Result<String, Failure> {
    run(
        repo,
        &format!("resolving {rev}"),
        &["rev-parse", "--verify", &format!("{rev}^{{commit}}")],
    )
    .map(|s| s.trim().to_string())
}

/// True when `ancestor` is an ancestor of (or equal to) `commit`.
pub fn is_ancestor(repo: &Path, ancestor: &str, commit: &str) -> bool {
    ok(repo, &["merge-base", "--is-ancestor", ancestor, commit])
}

/// The file at `commit:path`, if it exists.
pub fn show_file(repo: &Path, commit: &str, path: &str) -> Option<String> {
    git(repo, &["show", &format!("{commit}:{path}")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
}

/// `git config user.email` in `repo`.
pub fn user_email(repo: &Path) -> Option<String> {
    git(repo, &["config", "user.email"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_lowercase())
}

/// The committer e-mail of `commit`.
pub fn committer_email(repo: &Path, commit: &str) -> Option<String> {
    git(repo, &["log", "-1", "--format=%ce", commit])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_lowercase())
}

/// A temporary worktree of `repo` at `commit`, removed when dropped.
pub struct Worktree {
    repo: PathBuf,
    /// Its directory.
    pub path: PathBuf,
}

impl Worktree {
    /// Adds a detached worktree at `commit`.
    pub fn at(repo: &Path, commit: &str) -> Result<Worktree, Failure> {
        let base = std::env::temp_dir().join(format!(
            "kars-pr-{}-{}",
            std::process::id(),
            &commit[..commit.len().min(12)]
        ));
        let _ = std::fs::remove_dir_all(&base);
        let path_s = base.display().to_string();
        run(
            repo,
            "creating a temporary worktree",
            &["worktree", "add", "-q", "--detach", &path_s, commit],
        )?;
        Ok(Worktree {
            repo: repo.to_path_buf(),
            path: base,
        })
    }

    /// Writes `rel` (creating directories).
    pub fn write(&self, rel: &str, body: &str) -> Result<(), Failure> {
        let p = self.path.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)
                .map_err(|e| Failure::msg(CHECK, format!("{}: {e}", d.display())))?;
        }
        std::fs::write(&p, body).map_err(|e| Failure::msg(CHECK, format!("{}: {e}", p.display())))
    }

    /// Removes `rel`.
    pub fn remove(&self, rel: &str) -> Result<(), Failure> {
        let p = self.path.join(rel);
        std::fs::remove_file(&p).map_err(|e| Failure::msg(CHECK, format!("{}: {e}", p.display())))
    }

    /// Commits `paths` with `message`, signed with the user's signing settings.
    pub fn commit_signed(&self, paths: &[&str], message: &str) -> Result<String, Failure> {
        let mut add = vec!["add", "--"];
        add.extend_from_slice(paths);
        run(&self.path, "staging the change", &add)?;
        run(&self.path, "making a signed commit", &["commit", "-q", "-S", "-m", message]).map_err(|f| {
            f.hint("kars signs the commits it proposes with your Git signing key: set user.signingkey (and gpg.format ssh for an SSH key), and user.email to the identity the trust policy lists")
        })?;
        rev(&self.path, "HEAD")
    }

    /// A signed merge commit of `other` into the worktree's HEAD (HEAD stays the first parent).
    pub fn merge_signed(&self, other: &str, message: &str) -> Result<String, Failure> {
        run(&self.path, "merging the proposal onto the base branch", &["merge", "-q", "--no-ff", "-S", "-m", message, other])
            .map_err(|f| f.hint("the proposal conflicts with the base branch: propose it again from the current base"))?;
        rev(&self.path, "HEAD")
    }

    /// A signed annotated tag on `commit`.
    pub fn tag_signed(&self, name: &str, commit: &str, message: &str) -> Result<(), Failure> {
        run(
            &self.path,
            "making a signed approval tag",
            &["tag", "-s", "-m", message, name, commit],
        )
        .map(|_| ())
    }

    /// Pushes `what` (a refspec) to `remote`.
    pub fn push(&self, remote: &str, refspec: &str) -> Result<(), Failure> {
        run(
            &self.path,
            &format!("pushing to {remote}"),
            &["push", "-q", remote, refspec],
        )
        .map(|_| ())
    }
}

impl Drop for Worktree {
    fn drop(&mut self) {
        let p = self.path.display().to_string();
        let _ = git(&self.repo, &["worktree", "remove", "--force", &p]).output();
        let _ = std::fs::remove_dir_all(&self.path);
        let _ = git(&self.repo, &["worktree", "prune"]).output();
    }
}

#[cfg(test)]
mod tests {
    use super::redact_userinfo;

    #[test]
    fn credentials_in_git_messages_are_hidden() {
        assert_eq!(
            redact_userinfo(
                "fatal: unable to access 'http://alice:s3cret@127.0.0.1:3000/a/b.git/': refused"
            ),
            "fatal: unable to access 'http://***@127.0.0.1:3000/a/b.git/': refused"
        );
        assert_eq!(
            redact_userinfo("push to https://tok@h/x and http://h2/y"),
            "push to https://***@h/x and http://h2/y"
        );
        assert_eq!(redact_userinfo("no url here"), "no url here");
        assert_eq!(
            redact_userinfo("git@host:owner/repo"),
            "git@host:owner/repo"
        );
    }
}
