//! The `kars-gitops-agent` binary running as it does in a cluster: push webhooks (signed,
//! replay-protected), a watched local repository, leader election between two replicas,
//! suspend, metrics and graceful shutdown.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
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
    let child = Command::new(bin)
        .arg("--repo")
        .arg(source)
        .args([
            "--branch",
            "main",
            "--name",
            &f.prefix,
            "--namespace",
            &format!("{}-status", f.prefix),
        ])
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig())
        .arg("--allowed-signers")
        .arg(&f.allowed_signers)
        .arg("--cache-dir")
        .arg(f.path().join(format!("cache-{port}")))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--health-timeout",
            "0s",
        ])
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

fn applied(pr: &PolicyRepo) -> Option<String> {
    pr.status
        .as_ref()
        .and_then(|s| s.last_applied_revision.clone())
}

/// POSTs a GitHub push hook; returns the HTTP status code.
fn post_hook(port: u16, body: &str, secret: &[u8], delivery: &str) -> Result<u16> {
    use std::io::{Read, Write};
    let sig = format!(
        "sha256={}",
        hex::encode(hmac_sha256(secret, body.as_bytes()))
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "POST /hooks/github HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-GitHub-Event: push\r\nX-GitHub-Delivery: {delivery}\r\nX-Hub-Signature-256: {sig}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")
}

fn get(port: u16, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, resp))
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
    wait_status(
        &f,
        cluster,
        Duration::from_secs(60),
        "the first sync",
        |pr| applied(pr).as_deref() == Some(first.as_str()),
    )?;
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
    wait_status(
        &f,
        cluster,
        Duration::from_secs(30),
        "the push announced by the hook",
        |pr| applied(pr).as_deref() == Some(second.as_str()),
    )?;
    drop(agent);

    // A watched local repository: a commit is applied without any hook.
    let watch = start_agent(
        cluster,
        &f,
        &f.work.path.to_string_lossy(),
        &["--interval", "600s", "--watch"],
    )?;
    wait_status(
        &f,
        cluster,
        Duration::from_secs(30),
        "the agent's first sync of the local path",
        |pr| applied(pr).as_deref() == Some(second.as_str()),
    )?;
    f.add_agent("c", &["crates.io"])?;
    let third = f.commit_and_push("add c")?;
    wait_status(
        &f,
        cluster,
        Duration::from_secs(30),
        "the commit seen by the watcher",
        |pr| applied(pr).as_deref() == Some(third.as_str()),
    )?;
    drop(watch);
    Ok(())
}

fn leader_election() -> Result<()> {
    let cluster = Cluster::shared()?;
    install_kars_crds(cluster)?;
    let f = PolicyRepoFixture::new(&unique_name("leader"), &["a"])?;
    let first = f.work.git(&["rev-parse", "HEAD"])?.trim().to_string();
    let mut one = start_agent(
        cluster,
        &f,
        &f.file_url(),
        &[
            "--interval",
            "1s",
            "--leader-election",
            "--identity",
            "replica-1",
        ],
    )?;
    wait_status(
        &f,
        cluster,
        Duration::from_secs(60),
        "the first sync",
        |pr| applied(pr).as_deref() == Some(first.as_str()),
    )?;
    let two = start_agent(
        cluster,
        &f,
        &f.file_url(),
        &[
            "--interval",
            "1s",
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
    wait_status(
        &f,
        cluster,
        Duration::from_secs(60),
        "the new leader's sync",
        |pr| applied(pr).as_deref() == Some(second.as_str()),
    )?;
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
    wait_status(
        &f,
        cluster,
        Duration::from_secs(60),
        "the first sync",
        |pr| applied(pr).as_deref() == Some(first.as_str()),
    )?;
    block_on(async {
        let client = cluster.client().await?;
        let api: Api<PolicyRepo> = Api::namespaced(client, &format!("{}-status", f.prefix));
        api.patch(
            &f.prefix,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": true}})),
        )
        .await?;
        Ok(())
    })?;
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
    let (ok, out, _) = cluster.kubectl(&[
        "-n",
        &format!("{}-status", f.prefix),
        "get",
        "policyrepo",
        &f.prefix,
        "-o",
        "jsonpath={.status.lastAppliedRevision}",
    ])?;
    ensure!(ok && out == first, "a suspended PolicyRepo applied {out}");
    block_on(async {
        let client = cluster.client().await?;
        let api: Api<PolicyRepo> = Api::namespaced(client, &format!("{}-status", f.prefix));
        api.patch(
            &f.prefix,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"suspend": false}})),
        )
        .await?;
        Ok(())
    })?;
    wait_status(&f, cluster, Duration::from_secs(30), "resumed sync", |pr| {
        applied(pr).as_deref() == Some(second.as_str())
    })?;
    Ok(())
}
