//! The real forge (Gitea, `ci/forge.sh`) for the pull-request tests: one per test run, started
//! on first use, stopped when the run ends (and by a watchdog if the test process dies).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::workspace_root;

/// A running forge.
pub struct Forge {
    dir: PathBuf,
    env: BTreeMap<String, String>,
}

static FORGE: OnceLock<Result<Forge, String>> = OnceLock::new();

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

impl Forge {
    /// The forge of this test run (users alice, bob, carol, mallory), started on first use.
    pub fn shared() -> Result<&'static Forge> {
        FORGE
            .get_or_init(|| Forge::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the forge did not start: {e}"))
    }

    /// Stops the shared forge if this run started one (its state is kept when `keep_state`).
    pub fn shutdown_shared(keep_state: bool) {
        if let Some(Ok(f)) = FORGE.get() {
            let _ = Command::new("bash")
                .arg(workspace_root().join("ci/forge.sh"))
                .arg("down")
                .arg(&f.dir)
                .stdin(Stdio::null())
                .status();
            if keep_state {
                eprintln!("[e2e] forge logs kept in {}/log", f.dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&f.dir);
            }
        }
    }

    fn start() -> Result<Forge> {
        let dir = workspace_root()
            .join("target/e2e")
            .join(format!("forge-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        eprintln!("[e2e] starting the forge in {}", dir.display());
        let script = workspace_root().join("ci/forge.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg("up")
            .arg(&dir)
            .args(["alice", "bob", "carol", "mallory"])
            .stdin(Stdio::null())
            .status()
            .context("running ci/forge.sh")?;
        if !status.success() {
            bail!(
                "ci/forge.sh up {} failed ({status}); see {}/log",
                dir.display(),
                dir.display()
            );
        }
        crate::run_when_this_process_dies(&script, &dir)?;
        let env = parse_env(&std::fs::read_to_string(dir.join("env"))?);
        Ok(Forge { dir, env })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        self.env.get("FORGE_URL").map_or("", String::as_str)
    }

    /// Every user's password (Git over HTTP).
    pub fn password(&self) -> &str {
        self.env.get("FORGE_PASSWORD").map_or("", String::as_str)
    }

    /// The token file of `user`.
    pub fn token_file(&self, user: &str) -> PathBuf {
        PathBuf::from(
            self.env
                .get(&format!("FORGE_TOKEN_FILE_{}", user.replace('-', "_")))
                .cloned()
                .unwrap_or_default(),
        )
    }

    /// The token of `user`.
    pub fn token(&self, user: &str) -> Result<String> {
        Ok(std::fs::read_to_string(self.token_file(user))?
            .trim()
            .to_string())
    }

    /// The Git URL of `owner/name` with `user`'s credentials in it.
    pub fn git_url(&self, user: &str, owner: &str, name: &str) -> String {
        let host = self.url().trim_start_matches("http://");
        format!(
            "http://{user}:{}@{host}/{owner}/{name}.git",
            self.password()
        )
    }

    /// Calls the API as `user`; returns (status, body).
    pub fn api(
        &self,
        user: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let mut c = Command::new("curl");
        c.args(["-sS", "-o", "-", "-w", "\n%{http_code}", "-X", method])
            .arg("-H")
            .arg(format!("Authorization: token {}", self.token(user)?))
            .args(["-H", "Content-Type: application/json"])
            .arg(format!("{}/api/v1{path}", self.url()));
        if let Some(b) = body {
            c.arg("-d").arg(b.to_string());
        }
        let out = c.output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        Ok((
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or(Value::Null),
        ))
    }

    /// Creates repository `owner/name` (owned by user `owner`), with `collaborators` given
    /// write access.
    pub fn create_repo(&self, owner: &str, name: &str, collaborators: &[&str]) -> Result<()> {
        let (code, body) = self.api(
            owner,
            "POST",
            "/user/repos",
            Some(json!({"name": name, "default_branch": "main"})),
        )?;
        if code != 201 {
            bail!("creating {owner}/{name}: {code} {body}");
        }
        for c in collaborators {
            let (code, body) = self.api(
                owner,
                "PUT",
                &format!("/repos/{owner}/{name}/collaborators/{c}"),
                Some(json!({"permission": "write"})),
            )?;
            if code != 204 {
                bail!("adding {c} to {owner}/{name}: {code} {body}");
            }
        }
        Ok(())
    }

    /// Protects `main`: merges need `approvals` approving reviews.
    pub fn protect_main(&self, owner: &str, name: &str, approvals: u32) -> Result<()> {
        let (code, body) = self.api(
            owner,
            "POST",
            &format!("/repos/{owner}/{name}/branch_protections"),
            Some(
                json!({"rule_name": "main", "required_approvals": approvals, "enable_push": true}),
            ),
        )?;
        if code != 201 {
            bail!("protecting main of {owner}/{name}: {code} {body}");
        }
        Ok(())
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
