//! The verbs a flux user reaches for: `get` (a table), `events`, `trace` (commit, signer,
//! file:line), `why` with kubectl-style names, `suspend`/`resume`/`reconcile` with a running
//! agent, `delete --prune`.

use std::time::Duration;

use anyhow::{Result, ensure};
use kars_e2e::golden;
use libtest_mimic::Trial;

use super::{Repo, expect_code};
use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![trial(
        "cli::get_events_trace_suspend_resume_reconcile_delete",
        verbs,
    )]
}

/// Stops the agent when dropped.
struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn verbs() -> Result<()> {
    let r = Repo::shared("cli-verbs", &["a"])?;
    let p = r.f.prefix.clone();
    let n = r.normalizer().columns();
    expect_code("sync", &r.kars(&["sync"])?, 0)?;

    let get = r.kars(&["get"])?;
    expect_code("get", &get, 0)?;
    golden::check("cli/get", &n.apply(&get.stdout))?;
    let wide = r.kars(&["get", "-o", "wide"])?;
    ensure!(
        wide.stdout.contains("SOURCE")
            && wide.stdout.contains(&r.f.work.path.display().to_string()),
        "{}",
        wide.stdout
    );
    let json = r.kars(&["get", "-o", "json"])?;
    let items: serde_json::Value = serde_json::from_str(&json.stdout)?;
    ensure!(items[0]["metadata"]["name"] == p.as_str(), "{items}");
    let yaml = r.kars(&["get", &p, "-o", "yaml"])?;
    ensure!(yaml.stdout.contains("kind: PolicyRepo"), "{}", yaml.stdout);

    let events = r.kars(&["events", &p])?;
    expect_code("events", &events, 0)?;
    ensure!(
        events.stdout.contains("Applied") && events.stdout.contains(&format!("policyrepo/{p}")),
        "{}",
        events.stdout
    );

    let deployment = format!("deployment/kars-{}/{}", r.f.agent("a"), r.f.agent("a"));
    let trace = r.kars(&["trace", &deployment])?;
    expect_code("trace", &trace, 0)?;
    golden::check("cli/trace", &n.apply(&trace.stdout))?;
    ensure!(
        trace.stdout.contains(&format!(
            "agents/{}/sandbox.yaml:1 (KarsSandbox/{})",
            r.f.agent("a"),
            r.f.agent("a")
        )) && trace.stdout.contains("Signed by:  ops@kars.test"),
        "{}",
        trace.stdout
    );
    let not_ours = r.kars(&["trace", "namespace/default"])?;
    expect_code("trace of an object kars does not manage", &not_ours, 1)?;
    let sandbox = format!("KARSSANDBOXES/{}/{}", r.f.namespace(), r.f.agent("a"));
    let why = r.kars(&["why", &sandbox])?;
    expect_code("why in any case", &why, 0)?;
    ensure!(why.stdout.contains("applied and in sync"), "{}", why.stdout);

    // suspend: the agent leaves it alone; reconcile refuses; resume syncs again.
    let suspended = r.kars(&["suspend", &p])?;
    expect_code("suspend", &suspended, 0)?;
    let table = r.kars(&["get"])?.stdout;
    let suspended_column = table
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_default()
        .to_string();
    ensure!(
        suspended_column == "True",
        "not shown as suspended:\n{table}"
    );
    let refused = r.kars(&["reconcile", &p])?;
    expect_code("reconcile while suspended", &refused, 1)?;
    ensure!(refused.stderr.contains("kars resume"), "{}", refused.stderr);
    let cache = r.f.path().join("agent-cache");
    let mut cmd =
        r.f.agent_command(&r.f.work.path.display().to_string(), &r.kubeconfig, &cache);
    cmd.args(["--interval", "1h", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let agent = Agent(cmd.spawn()?);
    std::thread::sleep(Duration::from_secs(2));
    let resumed = r.kars(&["resume", &p, "--wait", "--timeout", "60s"])?;
    expect_code("resume --wait", &resumed, 0)?;
    ensure!(resumed.stdout.contains("synced"), "{}", resumed.stdout);
    r.f.add_agent("a", &["api.example.com", "pypi.org"])?;
    let head = r.f.commit_and_push("allow pypi")?;
    let reconciled = r.kars(&["reconcile", &p, "--wait", "--timeout", "60s"])?;
    expect_code("reconcile --wait", &reconciled, 0)?;
    ensure!(
        reconciled.stdout.contains(&head),
        "the reconcile did not apply {head}: {}",
        reconciled.stdout
    );
    drop(agent);
    let nobody = r.kars(&["reconcile", &p, "--wait", "--timeout", "2s"])?;
    expect_code("reconcile without an agent", &nobody, 1)?;
    ensure!(
        nobody.stderr.contains("no agent synced"),
        "{}",
        nobody.stderr
    );

    let deleted = r.kars(&["delete", &p, "--prune"])?;
    expect_code("delete --prune", &deleted, 0)?;
    ensure!(
        r.policy_repo(&p)?.is_empty(),
        "the PolicyRepo is still there"
    );
    let left = r.kubectl(&["-n", &r.f.namespace(), "get", "karssandboxes", "-o", "name"])?;
    ensure!(
        left.trim().is_empty(),
        "objects left after delete --prune: {left}"
    );
    Ok(())
}
