//! One repository, one PolicyRepo: the name comes from kars.yaml (so two checkouts of one
//! repository share it), the recorded source is absolute, and an object another PolicyRepo
//! owns is refused and never fought over; `kars delete` releases or prunes.

use anyhow::{Result, ensure};
use libtest_mimic::Trial;

use super::{Repo, expect_code};
use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![trial(
        "cli::one_repository_is_one_policy_repo_and_owners_are_respected",
        one_repository_one_policy_repo,
    )]
}

fn one_repository_one_policy_repo() -> Result<()> {
    let r = Repo::shared("cli-own", &["a"])?;
    let p = r.f.prefix.clone();
    let ns = r.status_ns();
    // `kars sync` with SOURCE defaulting to `.` in the working tree.
    expect_code("sync .", &r.kars(&["sync"])?, 0)?;
    let url = r.kubectl(&[
        "-n",
        &ns,
        "get",
        "policyrepo",
        &p,
        "-o",
        "jsonpath={.spec.url}",
    ])?;
    let work = std::fs::canonicalize(&r.f.work.path)?;
    ensure!(
        std::path::Path::new(&url) == work,
        "spec.url {url:?} is not the absolute path {}",
        work.display()
    );
    // A second checkout of the same repository records into the same PolicyRepo.
    let clone = r.f.path().join("second-checkout");
    kars_e2e::git::run(
        std::process::Command::new("git")
            .args(["clone", "-q"])
            .arg(&r.f.remote)
            .arg(&clone),
    )?;
    let second = r.kars(&["sync", &clone.display().to_string()])?;
    expect_code("sync of the second checkout", &second, 0)?;
    ensure!(
        second.stderr.contains("verified 0 new commit(s)"),
        "{}",
        second.stderr
    );
    let names = r.kubectl(&["-n", &ns, "get", "policyrepos", "-o", "name"])?;
    ensure!(
        names.trim() == format!("policyrepo.gitops.kars.io/{p}"),
        "one PolicyRepo expected: {names}"
    );

    // Another PolicyRepo for the same objects is refused, and nothing is written.
    let before = r.resource_versions()?;
    let other = r.kars(&["sync", "--name", "other"])?;
    expect_code("sync under another name", &other, 1)?;
    ensure!(
        other.stdout.contains("FAILED [OwnedByAnotherPolicyRepo]")
            && other
                .stdout
                .contains(&format!("belongs to PolicyRepo {ns}/{p}")),
        "{}",
        other.stdout
    );
    ensure!(
        other
            .stderr
            .contains(&format!("PolicyRepo {ns}/{p} already syncs")),
        "{}",
        other.stderr
    );
    ensure!(
        r.resource_versions()? == before,
        "the refused sync changed objects"
    );
    let get = r.kars(&["get", "other"])?;
    expect_code("get other", &get, 1)?;
    ensure!(
        get.stdout.contains("OwnedByAnotherPolicyRepo"),
        "{}",
        get.stdout
    );
    let diff = r.kars(&["diff", "--name", "other"])?;
    ensure!(
        diff.stdout
            .contains(&format!("owned by PolicyRepo {ns}/{p}")),
        "{}",
        diff.stdout
    );

    // Deleting a PolicyRepo without --prune releases its objects; another may adopt them.
    expect_code("delete other", &r.kars(&["delete", "other"])?, 0)?;
    let released = r.kars(&["delete", &p])?;
    expect_code("delete", &released, 0)?;
    ensure!(
        released.stdout.contains("stay in the cluster, released"),
        "{}",
        released.stdout
    );
    let sandbox = format!("karssandbox.kars.azure.com/{}", r.f.agent("a"));
    let owner = r.kubectl(&[
        "-n",
        &r.f.namespace(),
        "get",
        &sandbox,
        "-o",
        "jsonpath={.metadata.annotations.gitops\\.kars\\.io/policy-repo}",
    ])?;
    ensure!(owner.is_empty(), "still owned after release: {owner}");
    let adopt = r.kars(&["sync", "--name", "adopter"])?;
    expect_code("adopting sync", &adopt, 0)?;
    // --prune deletes what it applied.
    let pruned = r.kars(&["delete", "adopter", "--prune"])?;
    expect_code("delete --prune", &pruned, 0)?;
    ensure!(
        pruned.stdout.contains(&format!(
            "KarsSandbox/{}/{} deleted",
            r.f.namespace(),
            r.f.agent("a")
        )),
        "{}",
        pruned.stdout
    );
    ensure!(
        r.policy_repo("adopter")?.is_empty(),
        "the PolicyRepo is still there"
    );
    Ok(())
}
