//! `kars sync --dry-run` is read-only — no status, no Events, no object touched (the
//! resourceVersions prove it) — and complete: what would be created, configured and pruned.

use anyhow::{Result, ensure};
use kars_e2e::golden;
use libtest_mimic::Trial;

use super::{Repo, expect_code};
use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![trial(
        "cli::dry_run_writes_nothing_and_says_what_would_change",
        dry_run_writes_nothing,
    )]
}

fn dry_run_writes_nothing() -> Result<()> {
    // Four agents, so one leaving stays under the 30% prune threshold.
    let r = Repo::shared("cli-dry", &["a", "b", "d", "e"])?;
    let p = r.f.prefix.clone();
    expect_code("first sync", &r.kars(&["sync"])?, 0)?;
    // Git changes: b leaves, c arrives, a changes.
    r.f.remove_agent("b")?;
    r.f.add_agent("c", &["api.example.com"])?;
    r.f.add_agent("a", &["api.example.com", "pypi.org"])?;
    r.f.commit_and_push("b leaves, c arrives, a may reach pypi")?;

    let objects = r.resource_versions()?;
    let status = r.policy_repo(&p)?;
    let events = r.events()?;
    ensure!(!objects.is_empty() && !status.is_empty(), "nothing synced");

    let dry = r.kars(&["sync", "--dry-run"])?;
    expect_code("dry run", &dry, 0)?;
    let ns = r.f.namespace();
    for (object, verb) in [
        (
            format!("KarsSandbox/{ns}/{p}-c"),
            "would be created (dry run)",
        ),
        (
            format!("KarsSandbox/{ns}/{p}-a"),
            "would be configured (dry run)",
        ),
        (
            format!("KarsSandbox/{ns}/{p}-b"),
            "would be pruned (dry run)",
        ),
    ] {
        ensure!(
            dry.stdout
                .lines()
                .any(|l| l.contains(&object) && l.contains(verb)),
            "{object} {verb} missing:\n{}",
            dry.stdout
        );
    }
    ensure!(
        dry.stderr.contains("nothing was written") && !dry.stderr.contains(" 0 would be pruned"),
        "{}",
        dry.stderr
    );
    golden::check("cli/sync-dry-run", &r.normalizer().apply(&dry.stdout))?;
    ensure!(
        r.resource_versions()? == objects,
        "a dry run changed objects"
    );
    ensure!(
        r.policy_repo(&p)? == status,
        "a dry run changed the PolicyRepo"
    );
    ensure!(r.events()? == events, "a dry run emitted Events");

    // -o json: the same, as one document.
    let json = r.kars(&["sync", "--dry-run", "-o", "json"])?;
    expect_code("dry run json", &json, 0)?;
    let doc: serde_json::Value = serde_json::from_str(&json.stdout)?;
    let actions: Vec<&str> = doc["apply"]["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["action"].as_str())
        .collect();
    ensure!(
        actions.contains(&"wouldCreate") && actions.contains(&"wouldConfigure"),
        "{actions:?}"
    );

    // A dry run under a new name does not create its PolicyRepo (the objects belong to the
    // first one, so it reports them as owned elsewhere).
    let fresh = r.kars(&["sync", "--dry-run", "--name", "fresh"])?;
    expect_code("dry run under another name", &fresh, 1)?;
    ensure!(
        fresh.stdout.contains("OwnedByAnotherPolicyRepo"),
        "{}",
        fresh.stdout
    );
    ensure!(
        r.policy_repo("fresh")?.is_empty(),
        "a dry run created a PolicyRepo"
    );
    ensure!(r.events()? == events, "a dry run emitted Events");

    // A failed dry run (an unsigned head) writes nothing either.
    r.f.add_agent("a", &["evil.example"])?;
    r.f.commit_unsigned_and_push("unsigned")?;
    let failed = r.kars(&["sync", "--dry-run"])?;
    expect_code("failed dry run", &failed, 1)?;
    ensure!(
        r.policy_repo(&p)? == status,
        "a failed dry run changed the PolicyRepo"
    );
    ensure!(r.events()? == events, "a failed dry run emitted Events");

    Ok(())
}
