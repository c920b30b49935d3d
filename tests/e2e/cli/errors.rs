//! Errors like kubectl's: one line, each cause once, no debug output, the server URL when the
//! cluster cannot be reached, the missing CRD with the command that installs it, trust-file
//! mistakes named with the expected form, kubectl's KUBECONFIG list semantics.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use kars_e2e::golden;
use libtest_mimic::Trial;

use super::{Repo, expect_clean_error, expect_code};
use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("cli::errors_name_the_cause_once_and_say_what_to_do", errors),
        trial(
            "cli::a_cluster_without_the_crds_or_stopped",
            private_cluster,
        ),
    ]
}

/// A copy of the repository's kubeconfig whose server is a closed loopback port.
pub fn dead_kubeconfig(r: &Repo) -> Result<PathBuf> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let text = std::fs::read_to_string(&r.kubeconfig)?;
    let re = regex::Regex::new(r"https://127\.0\.0\.1:[0-9]+")?;
    let dead = re.replace_all(&text, format!("https://127.0.0.1:{port}").as_str());
    let path = r.f.path().join("dead.kubeconfig");
    std::fs::write(&path, dead.as_bytes())?;
    Ok(path)
}

fn errors() -> Result<()> {
    let r = Repo::shared("cli-err", &["a"])?;
    expect_code("sync", &r.kars(&["sync"])?, 0)?;
    let n = r.normalizer();

    let missing = r.kars(&["status", "nosuch"])?;
    expect_code("status nosuch", &missing, 1)?;
    expect_clean_error("status nosuch", &missing)?;
    golden::check("cli/error-status-not-found", &n.apply(&missing.stderr))?;
    let json = r.kars(&["status", "nosuch", "-o", "json"])?;
    let doc: serde_json::Value = serde_json::from_str(&json.stdout)?;
    ensure!(
        doc["ok"] == false && doc["exitCode"] == 1 && doc["reason"] == "NotFound",
        "{doc}"
    );

    // KUBECONFIG is a list; a file that does not exist is skipped, as kubectl does.
    let kc = r.kubeconfig.display().to_string();
    let list = format!("/nonexistent/kubeconfig:{kc}");
    let ns = r.status_ns();
    let listed = super::kars_at(None, &["get", "-n", &ns], &[("KUBECONFIG", &list)])?;
    expect_code("KUBECONFIG list with a missing file", &listed, 0)?;
    ensure!(listed.stdout.contains(&r.f.prefix), "{}", listed.stdout);
    let none = super::kars_at(
        None,
        &["get"],
        &[("KUBECONFIG", "/nonexistent/a:/nonexistent/b")],
    )?;
    expect_code("KUBECONFIG of missing files", &none, 2)?;
    expect_clean_error("KUBECONFIG of missing files", &none)?;
    golden::check("cli/error-kubeconfig-missing", &n.apply(&none.stderr))?;
    let context = r.kars(&["get", "--context", "nope"])?;
    expect_code("--context nope", &context, 2)?;
    ensure!(
        context.stderr.contains("no such context"),
        "{}",
        context.stderr
    );
    golden::check("cli/error-unknown-context", &n.apply(&context.stderr))?;

    // The cluster is unreachable: its URL, the cause, what to do; exit 3.
    let dead = dead_kubeconfig(&r)?.display().to_string();
    for args in [vec!["get"], vec!["status", "x"], vec!["sync"]] {
        let mut a = args.clone();
        a.extend(["--kubeconfig", &dead]);
        let out = r.kars(&a)?;
        expect_code(&format!("{args:?} against a stopped cluster"), &out, 3)?;
        expect_clean_error(&format!("{args:?}"), &out)?;
        ensure!(
            out.stderr
                .contains("cannot reach the cluster at https://127.0.0.1:")
                && out.stderr.contains("Connection refused")
                && out.stderr.contains("hint:"),
            "{}",
            out.stderr
        );
    }
    golden::check(
        "cli/error-unreachable",
        &n.apply(&r.kars(&["get", "--kubeconfig", &dead])?.stderr),
    )?;

    // Trust-file mistakes are named, with the expected form and the flag.
    let public = format!("{}.pub", r.f.signer.display());
    let bare = r.kars(&["sync", "--allowed-signers", &public])?;
    expect_code("a bare public key as --allowed-signers", &bare, 2)?;
    expect_clean_error("bare key", &bare)?;
    ensure!(
        bare.stderr.contains("bare public key")
            && bare.stderr.contains("namespaces=\"git\"")
            && bare.stderr.contains("--allowed-signers"),
        "{}",
        bare.stderr
    );
    golden::check("cli/error-bare-public-key", &n.apply(&bare.stderr))?;
    let private = r.f.signer.display().to_string();
    let key = r.kars(&["sync", "--allowed-signers", &private])?;
    expect_code("a private key as --allowed-signers", &key, 2)?;
    ensure!(key.stderr.contains("private key"), "{}", key.stderr);

    // A verification failure with -o json is a JSON document naming the reason.
    r.f.add_agent("a", &["evil.example"])?;
    r.f.commit_unsigned_and_push("unsigned")?;
    let text = r.kars(&["sync"])?;
    expect_code("unsigned sync", &text, 1)?;
    golden::check("cli/error-unsigned-sync", &n.apply(&text.stderr))?;
    let refused = r.kars(&["sync", "--json"])?;
    expect_code("unsigned sync --json", &refused, 1)?;
    let doc: serde_json::Value = serde_json::from_str(&refused.stdout)?;
    ensure!(
        doc["reason"] == "Unsigned" && doc["detail"]["commits"].is_array(),
        "{doc}"
    );
    Ok(())
}

fn private_cluster() -> Result<()> {
    let pc = kars_e2e::PrivateCluster::up()?;
    let r = Repo {
        f: kars_e2e::fixture::PolicyRepoFixture::new(&kars_e2e::unique_name("cli-crd"), &["a"])?,
        kubeconfig: pc.kubeconfig(),
    };
    let out = pc
        .kubectl()
        .args(["delete", "crd", "policyrepos.gitops.kars.io", "--wait"])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = r.normalizer();
    for args in [vec!["sync"], vec!["get"], vec!["status", "x"]] {
        let out = r.kars(&args)?;
        expect_code(&format!("{args:?} without the CRD"), &out, 1)?;
        expect_clean_error(&format!("{args:?}"), &out)?;
        ensure!(
            out.stderr
                .contains("the PolicyRepo CRD (policyrepos.gitops.kars.io) is not installed")
                && out
                    .stderr
                    .contains("kubectl apply -f charts/kars-gitops/crds/"),
            "{}",
            out.stderr
        );
    }
    golden::check("cli/error-no-crd", &n.apply(&r.kars(&["sync"])?.stderr))?;
    Ok(())
}
