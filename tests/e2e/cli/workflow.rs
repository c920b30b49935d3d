//! The policy repository's own CI (`repo-template/.github/workflows/validate.yaml`): its steps
//! run as written, offline and without bundle keys, on the template plus an agent whose
//! allowlist is a signed bundle (held back and reported, not a failure); a broken file fails
//! them; and it installs `kars` with the command the README gives.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use kars_e2e::{run_to_end, workspace_root};
use libtest_mimic::Trial;
use serde_json::Value;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![trial(
        "cli::policy_repo_workflow_validates_and_renders_offline",
        workflow_runs_offline,
    )]
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()))?;
        } else {
            std::fs::copy(e.path(), to.join(e.file_name()))?;
        }
    }
    Ok(())
}

/// The workflow's steps: (name, run script).
fn steps() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(
        workspace_root().join("repo-template/.github/workflows/validate.yaml"),
    )?;
    let docs = kars_renderer::yaml::parse_documents(&text, Default::default())
        .map_err(|e| anyhow::anyhow!("the workflow: {}", e.message))?;
    let doc: Value = docs.first().context("empty workflow")?.to_json();
    let steps = doc["jobs"]["validate"]["steps"]
        .as_array()
        .context("jobs.validate.steps")?;
    Ok(steps
        .iter()
        .filter_map(|s| {
            Some((
                s["name"].as_str().unwrap_or("checkout").to_string(),
                s["run"].as_str()?.to_string(),
            ))
        })
        .collect())
}

/// Runs every step after the install, as the runner would (`bash -e`), with the built `kars`
/// first on PATH and none of the user's kars settings.
fn run_steps(repo: &Path, steps: &[(String, String)]) -> Result<Vec<(String, kars_e2e::Out)>> {
    let bin = workspace_root().join("target/debug");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut out = Vec::new();
    for (name, script) in steps.iter().filter(|(n, _)| n != "Install kars") {
        let mut c = std::process::Command::new("bash");
        c.args(["-e", "-c", script])
            .current_dir(repo)
            .env("PATH", &path);
        for v in [
            "KARS_BUNDLE_KEYS",
            "KARS_TRUST",
            "KARS_ALLOWED_SIGNERS",
            "KUBECONFIG",
        ] {
            c.env_remove(v);
        }
        let o = run_to_end(&mut c)?;
        let failed = !o.success();
        out.push((name.clone(), o));
        if failed {
            break;
        }
    }
    Ok(out)
}

fn workflow_runs_offline() -> Result<()> {
    let steps = steps()?;
    let install = steps
        .iter()
        .find(|(n, _)| n == "Install kars")
        .context("no Install kars step")?;
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    let command = install
        .1
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo install"))
        .context("the install step runs no cargo install")?;
    ensure!(
        readme.lines().any(|l| l.trim() == command),
        "the workflow installs kars with {command:?}, which README.md does not give"
    );
    ensure!(
        steps.iter().any(|(_, r)| r.contains("kars validate"))
            && steps.iter().any(|(_, r)| r.contains("kars render")),
        "the workflow must validate and render: {steps:?}"
    );

    // The template plus an agent whose allowlist is a signed bundle.
    let dir = tempfile::tempdir()?;
    let repo = dir.path().join("policies");
    copy_dir(&workspace_root().join("repo-template"), &repo)?;
    let hello = repo.join("agents/hello-agent");
    let bundled = repo.join("agents/bundled-agent");
    std::fs::create_dir_all(&bundled)?;
    for f in ["sandbox.yaml", "inference.yaml", "tools.yaml"] {
        let text = std::fs::read_to_string(hello.join(f))?.replace("hello-agent", "bundled-agent");
        std::fs::write(bundled.join(f), text)?;
    }
    let sandbox = std::fs::read_to_string(bundled.join("sandbox.yaml"))?;
    let at = sandbox
        .find("    allowedEndpoints:")
        .context("the template sandbox has allowedEndpoints")?;
    std::fs::write(
        bundled.join("sandbox.yaml"),
        format!(
            "{}    allowlistRef:\n      registry: registry.example.com\n      repository: policy/egress-allowlist/bundled-agent\n      digest: sha256:{}\n      artifactType: application/vnd.kars.egress-allowlist.v1+yaml\n",
            &sandbox[..at],
            "ab".repeat(32)
        ),
    )?;
    let ran = run_steps(&repo, &steps)?;
    for (name, o) in &ran {
        ensure!(o.success(), "step {name:?} failed: {}", o.combined());
    }
    let render = ran
        .iter()
        .find(|(_, o)| o.stderr.contains("held back"))
        .context("no step reported the held-back agent")?;
    ensure!(
        render.1.stderr.contains("bundled-agent") && render.1.stderr.contains("--allow-held-back"),
        "the held-back report: {}",
        render.1.stderr
    );

    // A broken file fails the workflow, naming it.
    std::fs::write(
        bundled.join("tools.yaml"),
        "kind: ToolPolicy\nmetadata: [\n",
    )?;
    let ran = run_steps(&repo, &steps)?;
    let last = ran.last().context("no step ran")?;
    ensure!(
        !last.1.success()
            && last
                .1
                .combined()
                .contains("agents/bundled-agent/tools.yaml"),
        "a broken repository passed the workflow: {:?}",
        ran.iter().map(|(n, o)| (n, o.code)).collect::<Vec<_>>()
    );
    Ok(())
}
