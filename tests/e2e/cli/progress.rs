//! Long work shows progress on stderr (not with -q, not with -o json); `render`, `diff` and
//! `sync` of a local path say when the working tree differs from the commit; colour follows
//! --color and NO_COLOR.

use anyhow::{Result, ensure};
use libtest_mimic::Trial;

use super::{Repo, expect_code};
use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![trial(
        "cli::progress_worktree_notes_and_colour",
        progress_and_notes,
    )]
}

fn progress_and_notes() -> Result<()> {
    let r = Repo::shared("cli-prog", &["a", "b", "c"])?;
    let sync = r.kars(&["sync"])?;
    expect_code("sync", &sync, 0)?;
    for step in [
        "fetching and verifying …",
        "applying …",
        "pruning what left Git …",
    ] {
        ensure!(
            sync.stderr.contains(step),
            "no progress {step:?}:\n{}",
            sync.stderr
        );
    }
    let applied = regex::Regex::new(r"\] applied (\d+)/(\d+)")?;
    ensure!(
        applied.captures_iter(&sync.stderr).any(|c| c[1] == c[2]),
        "no final applied N/N line:\n{}",
        sync.stderr
    );
    let quiet = r.kars(&["sync", "-q"])?;
    ensure!(
        quiet.stderr.trim().is_empty(),
        "-q printed: {}",
        quiet.stderr
    );
    let json = r.kars(&["sync", "-o", "json"])?;
    ensure!(
        !json.stderr.contains('['),
        "-o json printed progress: {}",
        json.stderr
    );
    serde_json::from_str::<serde_json::Value>(&json.stdout)?;

    // An uncommitted edit: render reads it, diff and sync read the commit; both say so.
    r.f.add_agent("a", &["api.example.com", "edited.example"])?;
    let render = r.kars(&["render", "."])?;
    expect_code("render", &render, 0)?;
    ensure!(
        render.stderr.contains("differs from HEAD")
            && render.stderr.contains("kars render read the working tree"),
        "{}",
        render.stderr
    );
    ensure!(
        render.stdout.contains("edited.example"),
        "render did not read the working tree"
    );
    let diff = r.kars(&["diff"])?;
    expect_code("diff", &diff, 0)?;
    ensure!(
        diff.stderr.contains("differs from HEAD") && diff.stderr.contains("reads the commit"),
        "{}",
        diff.stderr
    );

    // Colour: --color always paints, NO_COLOR keeps auto plain, never is plain.
    r.f.commit_and_push("commit the edit")?;
    let painted = r.kars(&["diff", "--color", "always"])?;
    ensure!(
        painted.stdout.contains("\x1b["),
        "--color always did not paint"
    );
    let plain = r.kars_env(&["diff"], &[("NO_COLOR", "1")])?;
    ensure!(
        !plain.stdout.contains("\x1b[") && !plain.stdout.is_empty(),
        "{}",
        plain.stdout
    );
    Ok(())
}
