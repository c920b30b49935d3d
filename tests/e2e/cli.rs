//! The `kars` binary as a user runs it: `sync`, `diff`, `status`, `why` against the real
//! control plane, with their exit codes and the lines people read.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use kars_e2e::fixture::PolicyRepoFixture;
use kars_e2e::{Cluster, install_kars_crds, unique_name, workspace_root};
use libtest_mimic::Trial;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![trial("cli::sync_diff_status_why", sync_diff_status_why)]
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn kars(cluster: &Cluster, f: &PolicyRepoFixture, args: &[&str]) -> Result<Out> {
    let bin = workspace_root().join("target/debug/kars");
    ensure!(
        bin.exists(),
        "{} is not built (cargo build -p kars-cli)",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.args(args);
    if !matches!(args.first(), Some(&"status")) {
        c.arg(f.work.path.to_string_lossy().as_ref())
            .arg("--allowed-signers")
            .arg(&f.allowed_signers)
            .args(["--name", &f.prefix, "--branch", "main"]);
        c.arg("--status-namespace")
            .arg(format!("{}-status", f.prefix));
    }
    c.arg("--kubeconfig").arg(cluster.kubeconfig());
    let out = c.output().context("running kars")?;
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

fn sync_diff_status_why() -> Result<()> {
    let cluster = Cluster::shared()?;
    install_kars_crds(cluster)?;
    let f = PolicyRepoFixture::new(&unique_name("cli"), &["a"])?;
    let sync = kars(cluster, &f, &["sync", "--once"])?;
    ensure!(
        sync.code == 0,
        "kars sync failed ({}): {}{}",
        sync.code,
        sync.stdout,
        sync.stderr
    );
    ensure!(
        sync.stdout.contains(&format!(
            "KarsSandbox/{}/{} created",
            f.namespace(),
            f.agent("a")
        )),
        "{}",
        sync.stdout
    );

    let diff = kars(cluster, &f, &["diff", "--color", "never"])?;
    ensure!(
        diff.code == 0 && diff.stdout.is_empty(),
        "diff after sync should be empty: {} {}",
        diff.code,
        diff.stdout
    );

    // A signed change not synced yet: diff shows it, why explains it.
    f.add_agent("a", &["pypi.org"])?;
    let head = f.commit_and_push("allow pypi")?;
    let diff = kars(cluster, &f, &["diff", "--color", "never"])?;
    ensure!(
        diff.code == 1,
        "diff should exit 1 when something would change"
    );
    ensure!(
        diff.stdout.contains("+    - host: pypi.org") || diff.stdout.contains("pypi.org"),
        "{}",
        diff.stdout
    );
    let file = format!("agents/{}/sandbox.yaml", f.agent("a"));
    let why = kars(cluster, &f, &["why", &file])?;
    ensure!(
        why.code == 1 && why.stdout.contains("not applied yet") && why.stdout.contains(&head),
        "{}",
        why.stdout
    );

    // An unsigned commit: why names the verification failure.
    f.add_agent("a", &["evil.example"])?;
    f.commit_unsigned_and_push("unsigned")?;
    let why = kars(cluster, &f, &["why", &file])?;
    ensure!(
        why.code == 1 && why.stdout.contains("does not verify") && why.stdout.contains("Unsigned"),
        "{}",
        why.stdout
    );
    let sync = kars(cluster, &f, &["sync", "--once"])?;
    ensure!(
        sync.code == 1 && sync.stderr.contains("nothing was applied"),
        "{} {}",
        sync.code,
        sync.stderr
    );

    let status = kars(
        cluster,
        &f,
        &[
            "status",
            &f.prefix,
            "--namespace",
            &format!("{}-status", f.prefix),
        ],
    )?;
    ensure!(
        status.code == 1,
        "status of a repo whose last sync failed should exit 1"
    );
    ensure!(
        status.stdout.contains("Verified     False   Unsigned"),
        "{}",
        status.stdout
    );
    ensure!(
        status.stdout.contains("signed by ops@kars.test"),
        "{}",
        status.stdout
    );
    Ok(())
}
