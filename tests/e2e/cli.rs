//! The `kars` binary as a user runs it: `sync`, `diff`, `status`, `why` against the real
//! control plane, with their exit codes and the lines people read.

use anyhow::{Result, ensure};
use kars_e2e::fixture::PolicyRepoFixture;
use kars_e2e::{Cluster, Out, install_kars_crds, kars_command, run_to_end, unique_name};
use libtest_mimic::Trial;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![trial("cli::sync_diff_status_why", sync_diff_status_why)]
}

fn kars(cluster: &Cluster, f: &PolicyRepoFixture, args: &[&str]) -> Result<Out> {
    let mut c = kars_command()?;
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
    run_to_end(&mut c)
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
