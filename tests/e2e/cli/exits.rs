//! The exit-code table: 0 success, 1 the check failed (not Ready counts), 2 usage, 3
//! unreachable; `diff` 0 same, 1 different, 2 cannot diff, 3 unreachable.

use anyhow::{Result, ensure};
use libtest_mimic::Trial;

use super::{Repo, expect_code};
use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("cli::sync_that_is_not_ready_exits_1", not_ready_is_1),
        trial("cli::diff_exits_like_kubectl_diff", diff_codes),
    ]
}

fn not_ready_is_1() -> Result<()> {
    let r = Repo::shared("cli-ready", &["a"])?;
    // No node runs pods here: the Deployment never becomes available.
    let waited = r.kars(&["sync", "--wait", "2s"])?;
    expect_code("sync --wait 2s", &waited, 1)?;
    ensure!(
        waited.stderr.contains("not healthy after --wait 2s")
            && waited.stderr.contains("waiting for"),
        "{}",
        waited.stderr
    );
    // Everything leaves Git: the empty render's prune is refused, so the sync is not Ready.
    r.f.remove_agent("a")?;
    r.f.commit_and_push("remove every agent")?;
    let empty = r.kars(&["sync"])?;
    expect_code("sync of an empty render", &empty, 1)?;
    ensure!(
        empty.stderr.contains("prune held back") && empty.stderr.contains("not Ready"),
        "{}",
        empty.stderr
    );
    let status = r.kars(&["status"])?;
    expect_code("status after a refused prune", &status, 1)?;
    ensure!(status.stdout.contains("PruneRefused"), "{}", status.stdout);
    Ok(())
}

fn diff_codes() -> Result<()> {
    let r = Repo::shared("cli-diff", &["a"])?;
    expect_code("sync", &r.kars(&["sync"])?, 0)?;
    expect_code("diff in sync", &r.kars(&["diff"])?, 0)?;
    r.f.add_agent("a", &["pypi.org"])?;
    r.f.commit_and_push("allow pypi")?;
    let changed = r.kars(&["diff"])?;
    expect_code("diff with a change", &changed, 1)?;
    ensure!(changed.stdout.contains("pypi.org"), "{}", changed.stdout);
    kars_e2e::golden::check("cli/diff", &r.normalizer().apply(&changed.stdout))?;
    expect_code(
        "diff --branch nope",
        &r.kars(&["diff", "--branch", "nope"])?,
        2,
    )?;
    // A signed commit that does not validate cannot be diffed: 2, not 1.
    r.f.work.write("agents/broken.yaml", "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata: {name: x}\nspec: {nonsense: 1}\n")?;
    r.f.commit_and_push("broken")?;
    let invalid = r.kars(&["diff"])?;
    expect_code("diff of an invalid head", &invalid, 2)?;
    r.f.work.remove("agents/broken.yaml")?;
    r.f.commit_and_push("fixed")?;
    // An unsigned head cannot be diffed either.
    r.f.add_agent("a", &["evil.example"])?;
    r.f.commit_unsigned_and_push("unsigned")?;
    let unsigned = r.kars(&["diff"])?;
    expect_code("diff of an unsigned head", &unsigned, 2)?;
    ensure!(
        unsigned.stderr.contains("does not verify"),
        "{}",
        unsigned.stderr
    );
    // The cluster is gone: 3.
    let dead = super::errors::dead_kubeconfig(&r)?;
    let gone = r.kars(&["diff", "--kubeconfig", &dead.display().to_string()])?;
    expect_code("diff against a stopped cluster", &gone, 3)?;
    Ok(())
}
