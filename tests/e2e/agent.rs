//! The `kars-gitops-agent` binary running as it does in a cluster: push webhooks (signed,
//! replay-protected), a watched local repository, leader election between two replicas,
//! suspend, metrics and graceful shutdown.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use kars_e2e::fixture::PolicyRepoFixture;
use kars_e2e::{Cluster, block_on, install_kars_crds, unique_name, workspace_root};
use kars_gitops_agent::status::PolicyRepo;
use kars_gitops_agent::webhook::hmac_sha256;
use kube::api::{Api, Patch, PatchParams};
use libtest_mimic::Trial;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "agent::webhook_and_local_watch_trigger_syncs",
            webhook_and_watch,
        ),
        trial(
            "agent::two_replicas_one_leader_and_failover",
            leader_election,
        ),
        trial("agent::suspend_stops_applying", suspend),
    ]
}

/// A running agent process, killed when dropped.
struct Agent {
    child: Child,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_agent(
    cluster: &Cluster,
    f: &PolicyRepoFixture,
    source: &str,
    extra: &[&str],
) -> Result<Agent> {
    let bin = workspace_root().join("target/debug/kars-gitops-agent");
    ensure!(bin.exists(), "{} is not built", bin.display());
    let port = free_port()?;
    let log = std::fs::File::create(f.path().join(format!("agent-{port}.log")))?;
    let child = f
        .agent_command(
            source,
            &cluster.kubeconfig(),
            &f.path().join(format!("cache-{port}")),
        )
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let agent = Agent { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(agent);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "agent did not open its port; log: {}",
        std::fs::read_to_string(f.path().join(format!("agent-{port}.log"))).unwrap_or_default()
    )
}

/// Polls the PolicyRepo until `done` holds, for up to `timeout`.
fn wait_status(
    f: &PolicyRepoFixture,
    cluster: &Cluster,
    timeout: Duration,
    what: &str,
    done: impl Fn(&PolicyRepo) -> bool,
) -> Result<Duration> {
    block_on(async {
        let client = cluster.client().await?;
        let api: Api<PolicyRepo> = Api::namespaced(client, &format!("{}-status", f.prefix));
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(pr) = api.get_opt(&f.prefix).await?
                && done(&pr)
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("timed out after {timeout:?} waiting for: {what}")
    })?;
    Ok(Duration::ZERO)
}

/// Sets `spec.suspend` of the fixture's PolicyRepo.
fn set_suspend(cluster: &Cluster, f: &PolicyRepoFixture, suspend: bool) -> Result<()> {
    block_on(async {
        let client = cluster.client().await?;
        let api: Api<PolicyRepo> = Api::namespaced(client, &format!("{}-status", f.prefix));
        api.patch(
            &f.prefix,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": suspend}})),
        )
        .await?;
        Ok(())
    })
}

/// Waits up to `seconds` until the PolicyRepo says `commit` is applied.
fn wait_applied(
    f: &PolicyRepoFixture,
    cluster: &Cluster,
    seconds: u64,
    what: &str,
    commit: &str,
) -> Result<Duration> {
    wait_status(f, cluster, Duration::from_secs(seconds), what, |pr| {
        applied(pr).as_deref() == Some(commit)
    })
}

fn applied(pr: &PolicyRepo) -> Option<String> {
    pr.status
        .as_ref()
        .and_then(|s| s.last_applied_revision.clone())
}

/// POSTs a GitHub push hook; returns the HTTP status code.
fn post_hook(port: u16, body: &str, secret: &[u8], delivery: &str) -> Result<u16> {
    let sig = format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret, body.as_bytes()))
    );
    let headers = [
        ("Content-Type", "application/json"),
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", delivery),
        ("X-Hub-Signature-256", sig.as_str()),
    ];
    Ok(kars_e2e::http_request(port, "POST", "/hooks/github", &headers, body)?.0)
}

fn get(port: u16, path: &str) -> Result<(u16, String)> {
    kars_e2e::http_request(port, "GET", path, &[], "")
}

fn webhook_and_watch() -> Result<()> {
    let cluster = Cluster::shared()?;
    install_kars_crds(cluster)?;
    let f = PolicyRepoFixture::new(&unique_name("hook"), &["a"])?;
    let secret_file: PathBuf = f.path().join("webhook-secret");
    std::fs::write(&secret_file, "hook-s3cret\n")?;
    let agent = start_agent(
        cluster,
        &f,
        &f.file_url(),
        &[
            "--interval",
            "600s",
            "--webhook-secret-file",
            &secret_file.to_string_lossy(),
        ],
    )?;
    let first = f.work.git(&["rev-parse", "HEAD"])?.trim().to_string();
    wait_applied(&f, cluster, 60, "the first sync", &first)?;
    // The duration is observed when the sync returns, just after its status write: poll.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = get(agent.port, "/metrics")?;
        if code == 200 && body.contains("kars_gitops_sync_duration_seconds") {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "metrics: {code}, no kars_gitops_sync_duration_seconds in {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensure!(get(agent.port, "/readyz")?.0 == 200);

    // A push, then a signed hook: applied well before the 600 s interval.
    f.add_agent("b", &["pypi.org"])?;
    let second = f.commit_and_push("add b")?;
    ensure!(
        post_hook(
            agent.port,
            r#"{"ref":"refs/heads/main"}"#,
            b"wrong",
            "d-forged"
        )? == 401,
        "a forged hook was accepted"
    );
    ensure!(
        post_hook(
            agent.port,
            r#"{"ref":"refs/heads/main"}"#,
            b"hook-s3cret",
            "d-1"
        )? == 202,
        "a valid hook was refused"
    );
    ensure!(
        post_hook(
            agent.port,
            r#"{"ref":"refs/heads/main"}"#,
            b"hook-s3cret",
            "d-1"
        )? == 409,
        "a replayed hook was accepted"
    );
    wait_applied(&f, cluster, 30, "the push announced by the hook", &second)?;
    drop(agent);

    // A watched local repository: a commit is applied without any hook.
    let watch = start_agent(
        cluster,
        &f,
        &f.work.path.to_string_lossy(),
        &["--interval", "600s", "--watch"],
    )?;
    wait_applied(
        &f,
        cluster,
        30,
        "the agent's first sync of the local path",
        &second,
    )?;
    f.add_agent("c", &["crates.io"])?;
    let third = f.commit_and_push("add c")?;
    wait_applied(&f, cluster, 30, "the commit seen by the watcher", &third)?;
    drop(watch);
    Ok(())
}

fn leader_election() -> Result<()> {
    let cluster = Cluster::shared()?;
    install_kars_crds(cluster)?;
    let f = PolicyRepoFixture::new(&unique_name("leader"), &["a"])?;
    let first = f.work.git(&["rev-parse", "HEAD"])?.trim().to_string();
    let secret_file: PathBuf = f.path().join("webhook-secret");
    std::fs::write(&secret_file, "hook-s3cret\n")?;
    let secret_arg = secret_file.to_string_lossy().to_string();
    // A long interval: after the first sync, only a (relayed) hook or a new leader syncs.
    let mut one = start_agent(
        cluster,
        &f,
        &f.file_url(),
        &[
            "--interval",
            "1h",
            "--webhook-secret-file",
            &secret_arg,
            "--leader-election",
            "--identity",
            "replica-1",
        ],
    )?;
    wait_applied(&f, cluster, 60, "the first sync", &first)?;
    let two = start_agent(
        cluster,
        &f,
        &f.file_url(),
        &[
            "--interval",
            "1h",
            "--webhook-secret-file",
            &secret_arg,
            "--leader-election",
            "--identity",
            "replica-2",
        ],
    )?;
    let holder = || -> Result<String> {
        let (ok, out, err) = cluster.kubectl(&[
            "-n",
            &format!("{}-status", f.prefix),
            "get",
            "lease",
            &format!("{}-leader", f.prefix),
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])?;
        ensure!(ok, "{err}");
        Ok(out)
    };
    std::thread::sleep(Duration::from_secs(3));
    ensure!(
        holder()? == "replica-1",
        "the second replica took the lease from a live leader: {}",
        holder()?
    );
    // The follower never applies: its log has no finished sync.
    let log2 = std::fs::read_to_string(f.path().join(format!("agent-{}.log", two.port)))?;
    ensure!(
        !log2.contains("sync finished"),
        "the follower synced:\n{log2}"
    );
    // A push hook that lands on the follower (a Service balances across replicas) is relayed:
    // the leader syncs the pushed commit at once, not at its next interval.
    f.add_agent("c", &["crates.io"])?;
    let pushed = f.commit_and_push("add c")?;
    ensure!(
        post_hook(
            two.port,
            r#"{"ref":"refs/heads/main"}"#,
            b"hook-s3cret",
            "d-relay"
        )? == 202,
        "the follower refused a valid hook"
    );
    wait_applied(
        &f,
        cluster,
        30,
        "the leader's sync of a hook the follower received",
        &pushed,
    )?;
    let log2 = std::fs::read_to_string(f.path().join(format!("agent-{}.log", two.port)))?;
    ensure!(
        log2.contains("asked the leader to sync") && !log2.contains("sync finished"),
        "the follower did not relay (or synced itself):\n{log2}"
    );
    // The leader stops gracefully (SIGTERM releases the lease); the follower takes over.
    Command::new("kill")
        .arg("-TERM")
        .arg(one.child.id().to_string())
        .status()?;
    let status = one.child.wait()?;
    ensure!(
        status.success(),
        "the leader did not exit cleanly on SIGTERM: {status}"
    );
    f.add_agent("b", &["pypi.org"])?;
    let second = f.commit_and_push("add b")?;
    wait_applied(&f, cluster, 60, "the new leader's sync", &second)?;
    ensure!(
        holder()? == "replica-2",
        "the lease holder after failover: {}",
        holder()?
    );
    drop(two);
    Ok(())
}

fn suspend() -> Result<()> {
    let cluster = Cluster::shared()?;
    install_kars_crds(cluster)?;
    let f = PolicyRepoFixture::new(&unique_name("suspend"), &["a"])?;
    let first = f.work.git(&["rev-parse", "HEAD"])?.trim().to_string();
    let _agent = start_agent(cluster, &f, &f.file_url(), &["--interval", "1s"])?;
    wait_applied(&f, cluster, 60, "the first sync", &first)?;
    // What the commit sets and this version does not enforce is in the status, at its line.
    let listed = f.policyrepo_jsonpath(
        cluster,
        "{.status.unenforcedFields[0].source} {.status.unenforcedFields[0].field} {.status.unenforcedFieldCount}",
    )?;
    ensure!(
        listed.starts_with("agents/")
            && listed.ends_with("-a/tools.yaml:8 spec.appliesTo.sandboxMatchLabels 1"),
        "status.unenforcedFields: {listed:?}"
    );
    set_suspend(cluster, &f, true)?;
    wait_status(
        &f,
        cluster,
        Duration::from_secs(30),
        "Ready=Unknown/Suspended",
        |pr| {
            pr.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.reason == "Suspended")
            })
        },
    )?;
    f.add_agent("b", &["pypi.org"])?;
    let second = f.commit_and_push("add b while suspended")?;
    std::thread::sleep(Duration::from_secs(4));
    let out = f.policyrepo_jsonpath(cluster, "{.status.lastAppliedRevision}")?;
    ensure!(out == first, "a suspended PolicyRepo applied {out}");
    set_suspend(cluster, &f, false)?;
    wait_status(&f, cluster, Duration::from_secs(30), "resumed sync", |pr| {
        applied(pr).as_deref() == Some(second.as_str())
    })?;
    Ok(())
}
