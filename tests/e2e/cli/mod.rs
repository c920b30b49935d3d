//! The `kars` binary as a user runs it, against the real control plane: what it prints (golden
//! files in `tests/golden/cli/`), its exit codes, and what it leaves in the cluster.
//!
//! [`help`]: every `--help` and the README's copy; [`dry_run`]: a dry run writes nothing and
//! says everything; [`exits`]: the exit-code table; [`ownership`]: one repository, one
//! PolicyRepo; [`errors`]: one-line errors that say what to do; [`verbs`]: get, events, trace,
//! suspend, resume, reconcile, delete; [`progress`]: progress, working-tree notes, colour.

mod dry_run;
mod errors;
mod exits;
mod help;
mod ownership;
mod progress;
mod verbs;
mod workflow;

use std::path::Path;

use anyhow::{Result, ensure};
use kars_e2e::fixture::PolicyRepoFixture;
use kars_e2e::golden::Normalizer;
use kars_e2e::{Cluster, Out, install_kars_crds, kars_command, run_to_end, unique_name};
use libtest_mimic::Trial;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    let mut t = vec![trial("cli::sync_diff_status_why", sync_diff_status_why)];
    t.extend(help::tests());
    t.extend(dry_run::tests());
    t.extend(exits::tests());
    t.extend(ownership::tests());
    t.extend(errors::tests());
    t.extend(verbs::tests());
    t.extend(progress::tests());
    t.extend(workflow::tests());
    t
}

/// Environment variables a user's shell may set that would change what kars prints.
const USER_ENV: [&str; 9] = [
    "KUBECONFIG",
    "KARS_NAMESPACE",
    "KARS_ALLOWED_SIGNERS",
    "KARS_OPENPGP_KEYRING",
    "KARS_TRUST",
    "KARS_BUNDLE_KEYS",
    "KARS_TOKEN_FILE",
    "NO_COLOR",
    "KARS_CACHE_DIR",
];

/// `kars ARGS` with a clean environment (none of [`USER_ENV`]) in `dir`.
pub fn kars_at(dir: Option<&Path>, args: &[&str], env: &[(&str, &str)]) -> Result<Out> {
    let mut c = kars_command()?;
    for v in USER_ENV {
        c.env_remove(v);
    }
    if let Some(d) = dir {
        c.current_dir(d);
    }
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    run_to_end(&mut c)
}

/// A repository fixture on a cluster: `kars` runs with its signer, its PolicyRepo namespace
/// and the cluster's kubeconfig, and never with `--name` (the name comes from kars.yaml).
pub struct Repo {
    /// The repository.
    pub f: PolicyRepoFixture,
    /// The kubeconfig.
    pub kubeconfig: std::path::PathBuf,
}

impl Repo {
    /// A new repository with `agents` on the shared cluster.
    pub fn shared(prefix: &str, agents: &[&str]) -> Result<Repo> {
        let cluster = Cluster::shared()?;
        install_kars_crds(cluster)?;
        Ok(Repo {
            f: PolicyRepoFixture::new(&unique_name(prefix), agents)?,
            kubeconfig: cluster.kubeconfig(),
        })
    }

    /// The PolicyRepo namespace.
    pub fn status_ns(&self) -> String {
        format!("{}-status", self.f.prefix)
    }

    /// `kars ARGS` for this repository: run in its working tree (SOURCE defaults to `.`), the
    /// signer from KARS_ALLOWED_SIGNERS, `-n` its namespace, `--kubeconfig` its cluster.
    pub fn kars(&self, args: &[&str]) -> Result<Out> {
        self.kars_env(args, &[])
    }

    /// [`Repo::kars`] with more environment.
    pub fn kars_env(&self, args: &[&str], env: &[(&str, &str)]) -> Result<Out> {
        let mut all: Vec<&str> = args.to_vec();
        let ns = self.status_ns();
        let kc = self.kubeconfig.display().to_string();
        let offline = matches!(
            args.first(),
            Some(&("render" | "validate" | "verify" | "init"))
        );
        if !offline && !args.contains(&"-n") {
            all.extend(["-n", ns.as_str()]);
        }
        if !offline && !args.contains(&"--kubeconfig") {
            all.extend(["--kubeconfig", kc.as_str()]);
        }
        let signers = self.f.allowed_signers.display().to_string();
        let mut env: Vec<(&str, &str)> = env.to_vec();
        env.push(("KARS_ALLOWED_SIGNERS", signers.as_str()));
        kars_at(Some(&self.f.work.path), &all, &env)
    }

    /// Placeholders for this repository's varying parts.
    pub fn normalizer(&self) -> Normalizer {
        Normalizer::default()
            .replace(self.f.path().display().to_string(), "DIR")
            .replace(self.kubeconfig.display().to_string(), "KUBECONFIG")
            .replace(self.f.prefix.clone(), "P")
    }

    /// `kubectl ARGS` against the repository's cluster; stdout.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = std::process::Command::new(kars_e2e::tool_path("control-plane", "kubectl")?)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `kind/namespace/name=resourceVersion` of every object of the repository, sorted.
    pub fn resource_versions(&self) -> Result<String> {
        let kinds = "namespaces,serviceaccounts,configmaps,services,deployments,networkpolicies,clusterrolebindings,karssandboxes.kars.azure.com,inferencepolicies.kars.azure.com,toolpolicies.kars.azure.com";
        let sel = format!("gitops.kars.io/repository={}", self.f.prefix);
        let out = self.kubectl(&[
            "get",
            kinds,
            "-A",
            "-l",
            &sel,
            "-o",
            "jsonpath={range .items[*]}{.kind}/{.metadata.namespace}/{.metadata.name}={.metadata.resourceVersion}{\"\\n\"}{end}",
        ])?;
        let mut lines: Vec<&str> = out.lines().collect();
        lines.sort_unstable();
        Ok(lines.join("\n"))
    }

    /// The PolicyRepo's resourceVersion and status (empty when it does not exist).
    pub fn policy_repo(&self, name: &str) -> Result<String> {
        let out = std::process::Command::new(kars_e2e::tool_path("control-plane", "kubectl")?)
            .env("KUBECONFIG", &self.kubeconfig)
            .args([
                "-n",
                &self.status_ns(),
                "get",
                "policyrepo",
                name,
                "-o",
                "json",
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The Events in the PolicyRepo namespace, one line each.
    pub fn events(&self) -> Result<String> {
        self.kubectl(&[
            "-n",
            &self.status_ns(),
            "get",
            "events",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.reason}{\"\\n\"}{end}",
        ])
    }
}

/// Fails unless `out` exited with `code`.
pub fn expect_code(what: &str, out: &Out, code: i32) -> Result<()> {
    ensure!(
        out.code == code,
        "{what}: exit {} (want {code})\nstdout:\n{}\nstderr:\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    Ok(())
}

/// Fails when an error is said twice or Rust debug output shows.
pub fn expect_clean_error(what: &str, out: &Out) -> Result<()> {
    for bad in [
        "Status {",
        "ApiError",
        "Error {",
        "ErrorResponse",
        "Some(\"",
    ] {
        ensure!(
            !out.stderr.contains(bad),
            "{what}: debug output in: {}",
            out.stderr
        );
    }
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    ensure!(
        errors.len() == 1,
        "{what}: want one error line: {}",
        out.stderr
    );
    let line = errors[0];
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, p) in parts.iter().enumerate() {
        ensure!(
            !parts[i + 1..].contains(p),
            "{what}: a cause is said twice in {line:?}"
        );
    }
    Ok(())
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
        status.stdout.contains("Verified        False   Unsigned"),
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
