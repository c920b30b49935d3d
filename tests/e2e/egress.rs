//! Egress as pull requests, end to end: the `kars egress` CLI against a real Gitea, the agent's
//! sync and pull-request previews against the real control plane, and a real `kars-router`
//! serving the ConfigMaps the cluster holds.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kars_e2e::{Out, block_on_value as block_on, run_to_end};
use kars_gitops_agent::forge::{Forge, ForgeRepo, Gitea, MergeStyle, PullRequest, Token};
use kars_gitops_agent::sync::{SyncConfig, sync_once};
use libtest_mimic::Trial;
use serde_json::Value;

use crate::router::{free_port, raw, start_rendered_router_with_proxy, upstream};
use crate::sre::Setup;
use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "egress::commands_refuse_bad_input_offline",
            commands_refuse_bad_input_offline,
        ),
        trial(
            "egress::approve_and_allow_extra_reach_the_router_only_after_merge",
            approve_and_allow_extra,
        ),
        trial(
            "egress::pull_request_preview_lists_changes_and_prunes_and_follows_pushes",
            preview_follows_pushes,
        ),
        trial(
            "egress::approve_re_signs_and_re_pins_a_bundle_allowlist",
            approve_re_signs_a_bundle,
        ),
        trial(
            "egress::learned_shows_what_a_learn_mode_router_recorded",
            learned_from_a_router,
        ),
    ]
}

/// A Setup whose repository holds two agents (`<name>-a`, `<name>-b`) whose routers may reach
/// loopback (the test's upstream servers).
fn egress_setup(prefix: &str) -> Result<(Setup, String, String)> {
    let s = Setup::new(prefix)?;
    let alice = s.repo("alice");
    let ns = format!("{}-ns", s.name);
    alice.write(
        "kars.yaml",
        &format!(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {{name: {}}}\nspec:\n  defaultNamespace: {ns}\n  clusters: [{{name: test, paths: [agents, egress, sre]}}]\n  providers: {{azure-openai: {{endpoint: \"https://example.openai.azure.com/openai/v1\"}}}}\n  forge: {{url: \"{}\", repository: alice/{}}}\n  router:\n    allowPrivateCidrs: [127.0.0.0/8]\n",
            s.name,
            s.forge.url(),
            s.name
        ),
    )?;
    let (a, b) = (format!("{}-a", s.name), format!("{}-b", s.name));
    for agent in [&a, &b] {
        for (path, body) in kars_e2e::fixture::agent_files(agent, &ns, &["api.example.com"]) {
            alice.write(&path, &body)?;
        }
    }
    s.commit("alice", "two agents")?;
    s.push("alice", "main")?;
    Ok((s, a, b))
}

fn sync(s: &Setup, cfg: &SyncConfig) -> Result<kars_gitops_agent::sync::SyncOutcome> {
    block_on(async {
        let client = s.cluster.client().await?;
        sync_once(client, cfg, None, &|| false)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?
}

fn agent_config(s: &Setup) -> Result<SyncConfig> {
    block_on(async {
        let client = s.cluster.client().await?;
        s.config(&client).await
    })?
}

/// The forge as `user`.
fn forge_as(s: &Setup, user: &str) -> Result<Gitea> {
    let repo = ForgeRepo::parse(s.forge.url(), &format!("alice/{}", s.name))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Gitea::new(
        repo,
        Token::from_file(&s.forge.token_file(user)).map_err(|e| anyhow::anyhow!("{e}"))?,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))
}

fn json(out: &Out) -> Result<Value> {
    serde_json::from_str(&out.stdout).with_context(|| format!("not JSON: {}", out.combined()))
}

/// `kars egress ARGS… -o json` as alice; the pull request it opened.
fn propose(s: &Setup, args: &[&str]) -> Result<PullRequest> {
    let mut full = vec!["egress"];
    full.extend_from_slice(args);
    full.extend(["-o", "json"]);
    let out = s.kars_cli("alice", &full)?;
    ensure!(out.success(), "kars {}: {}", full.join(" "), out.combined());
    let v = json(&out)?;
    let number = v["pullRequest"]["number"]
        .as_u64()
        .with_context(|| format!("no pull request: {v}"))?;
    block_on(async {
        forge_as(s, "alice")?
            .pull(number)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?
}

/// bob approves and fast-forward merges (the signed head becomes main's head).
fn approve_and_merge(s: &Setup, number: u64) -> Result<()> {
    block_on(async {
        let bob = forge_as(s, "bob")?;
        bob.approve(number, "ok")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        bob.merge(number, MergeStyle::FastForwardOnly)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?
}

/// The live objects of the sandbox namespace `kars-<agent>` (ConfigMaps and the Deployment).
fn live_objects(s: &Setup, agent: &str) -> Result<Vec<Value>> {
    let ns = format!("kars-{agent}");
    let mut out = Vec::new();
    for kind in ["configmaps", "deployments"] {
        let (ok, text, err) = s.cluster.kubectl(&["-n", &ns, "get", kind, "-o", "json"])?;
        ensure!(ok, "kubectl get {kind}: {err}");
        let v: Value = serde_json::from_str(&text)?;
        out.extend(v["items"].as_array().cloned().unwrap_or_default());
    }
    Ok(out)
}

/// A real router serving exactly what the cluster holds for `agent` (mounted as kubelet would);
/// returns what `CONNECT localhost:<port>` through it answers.
fn connect_through_live_router(s: &Setup, agent: &str, port: u16) -> Result<String> {
    let objects = live_objects(s, agent)?;
    let refs: Vec<&Value> = objects.iter().collect();
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == agent)
        .context("the sandbox Deployment")?;
    let dir = tempfile::tempdir()?;
    let proxy = free_port()?;
    let (_, router) = start_rendered_router_with_proxy(
        &refs,
        deployment,
        dir.path(),
        "127.0.0.1",
        free_port()?,
        proxy,
        "t0k",
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", router.proxy_port)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "the router's proxy did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = raw(
        router.proxy_port,
        &format!(
            "CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
        ),
    )?;
    drop(router);
    Ok(answer)
}

fn allowlist_of(s: &Setup, agent: &str) -> Result<String> {
    let (_, text, _) = s.cluster.kubectl(&[
        "-n",
        &format!("kars-{agent}"),
        "get",
        "configmaps",
        "-o",
        "jsonpath={.items[*].data}",
    ])?;
    Ok(text)
}

fn commands_refuse_bad_input_offline() -> Result<()> {
    // A clone with no forge, no token and no remote: every refusal comes before any of them.
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("repo");
    std::fs::create_dir_all(work.join("agents/x"))?;
    std::fs::write(
        work.join("kars.yaml"),
        "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: t}\nspec:\n  defaultNamespace: team\n  clusters: [{name: c, paths: [agents, egress]}]\n  providers: {azure-openai: {endpoint: \"https://example.openai.azure.com/openai/v1\"}}\n",
    )?;
    for (path, body) in kars_e2e::fixture::agent_files("x", "team", &["api.example.com"]) {
        let p = work.join(&path);
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(p, body)?;
    }
    let run = |args: &[&str]| -> Result<Out> {
        let mut c = kars_e2e::kars_command()?;
        c.current_dir(&work)
            .env_remove("KARS_FORGE_TOKEN")
            .env_remove("KARS_FORGE_TOKEN_FILE")
            .env_remove("KARS_FORGE_URL")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .arg("egress")
            .args(args);
        run_to_end(&mut c)
    };
    std::process::Command::new("git")
        .args(["init", "-q", "-b", "main"])
        .current_dir(&work)
        .output()?;
    std::process::Command::new("git")
        .args([
            "remote",
            "add",
            "origin",
            "http://127.0.0.1:9/none/none.git",
        ])
        .current_dir(&work)
        .output()?;
    for (args, want) in [
        (
            vec!["approve", "nope", "pypi.org"],
            "no KarsSandbox \"nope\"",
        ),
        (vec!["approve", "x", "*.pypi.org"], "wildcard"),
        (vec!["approve", "x", "https://pypi.org/"], "not a URL"),
        (vec!["approve", "x", "10.0.0.1"], "IP"),
        (vec!["deny", "x", "pypi.org"], "is not in the allowlist"),
        (
            vec![
                "allow-extra",
                "x",
                "--host",
                "pypi.org",
                "--ttl",
                "P8D",
                "--reason",
                "r",
            ],
            "7-day cap",
        ),
        (
            vec![
                "allow-extra",
                "x",
                "--host",
                "pypi.org",
                "--ttl",
                "P1M",
                "--reason",
                "r",
            ],
            "years, months or weeks",
        ),
        (
            vec![
                "allow-extra",
                "nope",
                "--host",
                "pypi.org",
                "--ttl",
                "PT1H",
                "--reason",
                "r",
            ],
            "no KarsSandbox",
        ),
        (vec!["revoke", "nope"], "no EgressApproval"),
    ] {
        let out = run(&args)?;
        ensure!(
            out.code == 1 && out.stderr.contains(want),
            "kars egress {}: exit {} (want 1 naming {want:?}): {}",
            args.join(" "),
            out.code,
            out.combined()
        );
        ensure!(
            !out.combined().contains("forge") || want.contains("forge"),
            "{args:?} reached the forge settings: {}",
            out.combined()
        );
    }
    // Already allowed: nothing to change locally; then the forge is needed (and absent here).
    let out = run(&["approve", "x", "api.example.com"])?;
    ensure!(
        out.code != 0 && out.stderr.contains("already has it"),
        "an existing host: {}",
        out.combined()
    );
    Ok(())
}

fn approve_and_allow_extra() -> Result<()> {
    let (s, a, _b) = egress_setup("egress")?;
    let mut cfg = agent_config(&s)?;
    cfg.sre.proposer = Some(s.proposer()?);
    let first = sync(&s, &cfg)?;
    ensure!(first.converged(), "first sync: {:?}", first.ready);
    let (up, reached) = upstream()?;

    // approve → a pull request editing allowedEndpoints; nothing changes before the merge.
    let endpoint = format!("localhost:{up}");
    let pr = propose(
        &s,
        &["approve", &a, &endpoint, "--reason", "the build needs it"],
    )?;
    ensure!(
        pr.head_ref.starts_with("kars-egress/approve-") && pr.title.contains(&endpoint),
        "pull request: {pr:?}"
    );
    let (code, files) = s.repo_get(&format!("/pulls/{}/files", pr.number))?;
    ensure!(
        code == 200
            && files
                .to_string()
                .contains(&format!("agents/{a}/sandbox.yaml")),
        "files of the pull request: {files}"
    );
    let before = sync(&s, &cfg)?;
    ensure!(
        before.converged(),
        "sync with the PR open: {:?}",
        before.ready
    );
    ensure!(
        !allowlist_of(&s, &a)?.contains("localhost"),
        "the PR branch was applied before its merge"
    );
    let refused = connect_through_live_router(&s, &a, up)?;
    ensure!(
        refused.starts_with("HTTP/1.1 403"),
        "before the merge: {refused}"
    );
    approve_and_merge(&s, pr.number)?;
    let t = Instant::now();
    let merged = sync(&s, &cfg)?;
    ensure!(merged.converged(), "after the merge: {:?}", merged.ready);
    ensure!(
        allowlist_of(&s, &a)?.contains(&format!("\\\"localhost\\\",\\\"port\\\":{up}")),
        "the allowlist after the merge: {}",
        allowlist_of(&s, &a)?
    );
    let allowed = connect_through_live_router(&s, &a, up)?;
    ensure!(
        allowed.starts_with("HTTP/1.1 200") && allowed.ends_with("hello"),
        "after the merge: {allowed}"
    );
    eprintln!(
        "[egress] approve merged → applied in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    // allow-extra → an EgressApproval, allowed until its TTL, refused after it.
    let (up2, _) = upstream()?;
    let host2 = format!("localhost:{up2}");
    s.pull("alice")?;
    let pr = propose(
        &s,
        &[
            "allow-extra",
            &a,
            "--host",
            &host2,
            "--ttl",
            "PT40S",
            "--reason",
            "debug session",
            "--ticket",
            "OPS-7",
        ],
    )?;
    ensure!(pr.head_ref.starts_with("kars-egress/grant-"), "{pr:?}");
    let granted_at = Instant::now();
    ensure!(
        connect_through_live_router(&s, &a, up2)?.starts_with("HTTP/1.1 403"),
        "the grant before its merge"
    );
    approve_and_merge(&s, pr.number)?;
    let o = sync(&s, &cfg)?;
    ensure!(o.converged(), "after merging the grant: {:?}", o.ready);
    let during = connect_through_live_router(&s, &a, up2)?;
    ensure!(
        during.starts_with("HTTP/1.1 200"),
        "the grant within its TTL ({:.0}s in): {during}",
        granted_at.elapsed().as_secs_f64()
    );
    s.pull("alice")?;
    let list = s.kars_cli("alice", &["egress", "approvals", &a, "-o", "json"])?;
    let v = json(&list)?;
    ensure!(
        v["approvals"][0]["state"] == "Active" && v["approvals"][0]["ticket"] == "OPS-7",
        "kars egress approvals: {v}"
    );
    let wait = Duration::from_secs(42).saturating_sub(granted_at.elapsed());
    std::thread::sleep(wait);
    let after = connect_through_live_router(&s, &a, up2)?;
    ensure!(
        after.starts_with("HTTP/1.1 403"),
        "the grant after its TTL: {after}"
    );
    // The agent proposes removing the expired grant, once.
    let o = sync(&s, &cfg)?;
    ensure!(o.converged(), "{:?}", o.ready);
    let expired_prs = || -> Result<Vec<PullRequest>> {
        block_on(async {
            Ok::<_, anyhow::Error>(
                forge_as(&s, "alice")?
                    .pulls()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .into_iter()
                    .filter(|p| {
                        p.head_ref
                            .starts_with(kars_gitops_agent::expired::BRANCH_PREFIX)
                    })
                    .collect(),
            )
        })?
    };
    let prs = expired_prs()?;
    ensure!(prs.len() == 1, "expired-grant pull requests: {prs:?}");
    sync(&s, &cfg)?;
    ensure!(expired_prs()?.len() == 1, "proposed twice");
    let (_, files) = s.repo_get(&format!("/pulls/{}/files", prs[0].number))?;
    ensure!(
        files.to_string().contains("\"status\":\"deleted\""),
        "the removal pull request: {files}"
    );
    let v = json(&s.kars_cli("alice", &["egress", "approvals", &a, "-o", "json"])?)?;
    ensure!(v["approvals"][0]["state"] == "Expired", "{v}");
    ensure!(reached.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    Ok(())
}

fn preview_follows_pushes() -> Result<()> {
    let (s, a, b) = egress_setup("preview")?;
    let cfg = agent_config(&s)?;
    ensure!(sync(&s, &cfg)?.converged());
    // A pull request that denies a's only host …
    let pr = propose(&s, &["deny", &a, "api.example.com"])?;
    let forge = cfg.sre.forge.clone().context("forge")?;
    let mut previewed = kars_gitops_agent::preview::Previewed::default();
    let run = |previewed: &mut kars_gitops_agent::preview::Previewed| {
        block_on(async {
            let client = s.cluster.client().await?;
            kars_gitops_agent::preview::preview_open_pulls(&client, &cfg, &forge, previewed, None)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        })?
    };
    let first = run(&mut previewed)?;
    ensure!(first.len() == 1, "previews: {first:?}");
    let comment = &first[0].comment;
    let removed_line = comment
        .lines()
        .any(|l| l.starts_with('-') && !l.starts_with("---") && l.contains("api.example.com"));
    ensure!(
        comment.contains(&format!("| configure | `ConfigMap/kars-{a}/"))
            && comment.contains(&format!("| configure | `KarsSandbox/{}-ns/{a}`", s.name))
            && removed_line,
        "the first preview does not show the allowlist change: {comment}"
    );
    ensure!(
        comment.contains("✅ signed by alice"),
        "signatures: {comment}"
    );
    ensure!(
        run(&mut previewed)?.is_empty(),
        "an unchanged PR was previewed again"
    );
    let comments = |n: u64| -> Result<Vec<Value>> {
        let (code, v) = s.repo_get(&format!("/issues/{n}/comments"))?;
        ensure!(code == 200, "comments: {v}");
        Ok(v.as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|c| {
                c["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with(kars_gitops_agent::preview::MARKER))
            })
            .collect())
    };
    let before = comments(pr.number)?;
    ensure!(before.len() == 1, "preview comments: {before:?}");
    // … then a push to it that also deletes agent b.
    let alice = s.repo("alice");
    alice.git(&["fetch", "-q", "origin", &pr.head_ref])?;
    alice.git(&["checkout", "-q", "-B", "pr", "FETCH_HEAD"])?;
    for f in ["sandbox.yaml", "inference.yaml", "tools.yaml"] {
        alice.remove(&format!("agents/{b}/{f}"))?;
    }
    s.commit("alice", "remove agent b")?;
    alice.git(&[
        "push",
        "-q",
        "origin",
        &format!("HEAD:refs/heads/{}", pr.head_ref),
    ])?;
    let second = run(&mut previewed)?;
    ensure!(second.len() == 1, "the push was not previewed: {second:?}");
    let after = comments(pr.number)?;
    ensure!(
        after.len() == 1 && after[0]["id"] == before[0]["id"],
        "the same comment must be updated: {before:?} → {after:?}"
    );
    let body = after[0]["body"].as_str().unwrap_or_default();
    ensure!(
        body.contains("**prune**") && body.contains(&format!("KarsSandbox/{}-ns/{b}", s.name)),
        "the updated preview does not list b's prune: {body}"
    );
    ensure!(body.contains("mass prune"), "no mass-prune warning: {body}");
    ensure!(
        body.contains("<details><summary>diff of"),
        "no diff: {body}"
    );
    // The commit status on the head.
    let head = alice.git(&["rev-parse", "HEAD"])?.trim().to_string();
    let (_, statuses) = s.repo_get(&format!("/commits/{head}/statuses"))?;
    ensure!(
        statuses
            .to_string()
            .contains(kars_gitops_agent::preview::CONTEXT),
        "no preview status on {head}: {statuses}"
    );
    // Nothing from the PR branch was applied.
    let o = sync(&s, &cfg)?;
    ensure!(o.converged(), "{:?}", o.ready);
    let (ok, _, _) =
        s.cluster
            .kubectl(&["-n", &format!("{}-ns", s.name), "get", "karssandbox", &b])?;
    ensure!(ok, "agent b was deleted before the merge");
    ensure!(
        allowlist_of(&s, &a)?.contains("api.example.com"),
        "a's allowlist changed before the merge"
    );
    Ok(())
}

fn learned_from_a_router() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (up, _) = upstream()?;
    std::fs::create_dir_all(d.join("egress"))?;
    std::fs::write(
        d.join("egress/allowlist.json"),
        r#"{"endpoints":[],"schemaVersion":1}"#,
    )?;
    std::fs::write(d.join("blocklist"), "blocked.localhost\n")?;
    let blocklist = d.join("blocklist").to_string_lossy().to_string();
    let router = crate::router::start_router(
        d,
        &[
            "--allow-private-cidr",
            "127.0.0.0/8",
            "--egress-mode",
            "learn",
            "--blocklist-file",
            &blocklist,
            "--reload-seconds",
            "3600",
        ],
    )?;
    let out = raw(
        router.proxy_port,
        &format!(
            "CONNECT localhost:{up} HTTP/1.1\r\nHost: localhost:{up}\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
        ),
    )?;
    ensure!(out.starts_with("HTTP/1.1 200"), "learn mode CONNECT: {out}");
    let _ = raw(
        router.proxy_port,
        "CONNECT blocked.localhost:443 HTTP/1.1\r\nHost: blocked.localhost:443\r\n\r\n",
    )?;
    let token = d.join("token");
    let mut c = kars_e2e::kars_command()?;
    c.args(["egress", "learned", "x", "--router"])
        .arg(format!("http://127.0.0.1:{}", router.port))
        .arg("--token-file")
        .arg(&token);
    let text = run_to_end(&mut c)?;
    ensure!(
        text.success()
            && text.stdout.contains("mode learn")
            && text.stdout.contains(&format!("localhost:{up}"))
            && text.stdout.contains("blocked (1):")
            && text.stdout.contains("blocked.localhost:443 (1×)"),
        "kars egress learned: {}",
        text.combined()
    );
    let mut c = kars_e2e::kars_command()?;
    c.args(["egress", "learned", "x", "-o", "json", "--router"])
        .arg(format!("http://127.0.0.1:{}", router.port))
        .arg("--token-file")
        .arg(&token);
    let v = json(&run_to_end(&mut c)?)?;
    ensure!(
        v["learned"][0]["host"] == "localhost" && v["blocked"][0]["host"] == "blocked.localhost",
        "{v}"
    );
    // The router's other egress views, as upstream's CLI reads them (token from every caller).
    let (code, body) = crate::router::http(
        router.port,
        "GET",
        "/internal/egress/blocked",
        "",
        Some("admin-token"),
    )?;
    ensure!(
        code == 200 && body.contains("blocked.localhost"),
        "/internal/egress/blocked: {code} {body}"
    );
    let (code, body) = crate::router::http(
        router.port,
        "GET",
        "/egress/allowlist",
        "",
        Some("admin-token"),
    )?;
    ensure!(
        code == 200 && body.contains("\"mode\":\"learn\""),
        "/egress/allowlist: {code} {body}"
    );
    let (code, _) = crate::router::http(router.port, "GET", "/egress/allowlist", "", None)?;
    ensure!(code == 401, "/egress/allowlist without the token: {code}");
    let (code, body) = crate::router::http(
        router.port,
        "POST",
        "/egress/learned/clear",
        "",
        Some("admin-token"),
    )?;
    ensure!(
        code == 200 && body.contains("\"cleared\":1"),
        "clear: {code} {body}"
    );
    let (_, body) = crate::router::http(
        router.port,
        "GET",
        "/egress/learned",
        "",
        Some("admin-token"),
    )?;
    ensure!(body.contains("\"learned\":[]"), "after clearing: {body}");
    // The wrong token: refused, exit 1.
    std::fs::write(d.join("wrong"), "nope")?;
    let mut c = kars_e2e::kars_command()?;
    c.args(["egress", "learned", "x", "--router"])
        .arg(format!("http://127.0.0.1:{}", router.port))
        .arg("--token-file")
        .arg(d.join("wrong"));
    let out = run_to_end(&mut c)?;
    ensure!(
        out.code == 1 && out.stderr.contains("401"),
        "{}",
        out.combined()
    );
    Ok(())
}

fn approve_re_signs_a_bundle() -> Result<()> {
    use kars_e2e::oci::{COSIGN_PASSWORD, Registry, cosign_key_pair};
    use kars_gitops_agent::bundles::{BundleVerifier, RegistryOptions, SignerPolicy};
    let (s, a, _b) = egress_setup("resign")?;
    let reg = Registry::start(&s.dir.path().join("registry"))?;
    let keys = s.dir.path().join("cosign");
    let (key, public) = cosign_key_pair(&keys, "trusted")?;
    let (other_key, _) = cosign_key_pair(&keys, "other")?;
    // a's allowlist becomes a signed bundle (published with kars policy sign).
    let bundle = s.dir.path().join("allowlist.yaml");
    std::fs::write(
        &bundle,
        "apiVersion: kars.dev/v1alpha1\nkind: EgressAllowlist\nmetadata: {generation: 1}\nspec:\n  endpoints:\n  - {host: api.example.com, port: 443}\n",
    )?;
    let repository = format!("policy/egress/{a}");
    let mut c = kars_e2e::kars_command()?;
    c.args(["policy", "sign", "--kind", "egress-allowlist", "--file"])
        .arg(&bundle)
        .args([
            "--registry",
            &reg.host,
            "--repository",
            &repository,
            "--key",
        ])
        .arg(&key)
        .args(["--allow-http-loopback-registry", "-o", "json"])
        .env("COSIGN_PASSWORD", COSIGN_PASSWORD);
    let signed = json(&run_to_end(&mut c)?)?;
    let digest = signed["digest"].as_str().context("digest")?.to_string();
    let alice = s.repo("alice");
    s.pull("alice")?;
    let path = format!("agents/{a}/sandbox.yaml");
    let text = std::fs::read_to_string(alice.path.join(&path))?;
    let inline = "    allowedEndpoints:\n      - {host: api.example.com, port: 443}\n";
    ensure!(text.contains(inline), "fixture changed: {text}");
    alice.write(
        &path,
        &text.replace(
            inline,
            &format!(
                "    allowlistRef:\n      registry: \"{}\"\n      repository: {repository}\n      digest: \"{digest}\"\n      artifactType: application/vnd.kars.egress-allowlist.v1+yaml\n",
                reg.host
            ),
        ),
    )?;
    s.commit("alice", "a's allowlist from a signed bundle")?;
    s.push("alice", "main")?;
    let mut cfg = agent_config(&s)?;
    cfg.bundles = BundleVerifier::new(
        RegistryOptions {
            allow_http_loopback: true,
            ..RegistryOptions::default()
        },
        SignerPolicy::from_paths(std::slice::from_ref(&public)).map_err(anyhow::Error::msg)?,
        Some(&s.dir.path().join("bundle-cache")),
    );
    let o = sync(&s, &cfg)?;
    ensure!(o.converged(), "with the bundle: {:?}", o.ready);
    let (up, _) = upstream()?;
    let endpoint = format!("localhost:{up}");
    let approve = |extra: &[&str], key: &std::path::Path| -> Result<Out> {
        let mut args = vec![
            "egress",
            "approve",
            a.as_str(),
            endpoint.as_str(),
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let mut c = kars_e2e::kars_command()?;
        c.current_dir(&alice.path)
            .env("HOME", s.dir.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("KARS_FORGE_TOKEN_FILE", s.forge.token_file("alice"))
            .env("COSIGN_PASSWORD", COSIGN_PASSWORD)
            .args(&args)
            .arg("--sign-key")
            .arg(key)
            .arg("--bundle-keys")
            .arg(&public)
            .arg("--allow-http-loopback-registry");
        run_to_end(&mut c)
    };
    // Without --sign-key: refused, naming what is needed.
    let mut c = kars_e2e::kars_command()?;
    c.current_dir(&alice.path)
        .args(["egress", "approve", &a, &endpoint]);
    let out = run_to_end(&mut c)?;
    ensure!(
        out.code == 1 && out.stderr.contains("--sign-key"),
        "without a key: {}",
        out.combined()
    );
    let out = approve(&[], &key)?;
    ensure!(
        out.success(),
        "kars egress approve (bundle): {}",
        out.combined()
    );
    let v = json(&out)?;
    let number = v["pullRequest"]["number"]
        .as_u64()
        .context("pull request")?;
    let (_, files) = s.repo_get(&format!("/pulls/{number}/files"))?;
    ensure!(files.to_string().contains(&path), "files: {files}");
    approve_and_merge(&s, number)?;
    let o = sync(&s, &cfg)?;
    ensure!(o.converged(), "after the merge: {:?}", o.ready);
    let answer = connect_through_live_router(&s, &a, up)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "the re-signed allowlist: {answer}"
    );
    let after = std::fs::read_to_string({
        s.pull("alice")?;
        alice.path.join(&path)
    })?;
    ensure!(
        !after.contains(&digest) && after.contains("digest: sha256:"),
        "the digest was not re-pinned: {after}"
    );
    // Signed with a key the agent does not trust: the proposal is made, but the agent never
    // renders from it (the sandbox keeps the last verified allowlist) — the preview says so.
    let (up2, _) = upstream()?;
    let endpoint2 = format!("localhost:{up2}");
    let mut c = kars_e2e::kars_command()?;
    c.current_dir(&alice.path)
        .env("HOME", s.dir.path())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("KARS_FORGE_TOKEN_FILE", s.forge.token_file("alice"))
        .env("COSIGN_PASSWORD", COSIGN_PASSWORD)
        .args([
            "egress",
            "approve",
            &a,
            &endpoint2,
            "-o",
            "json",
            "--sign-key",
        ])
        .arg(&other_key)
        .arg("--bundle-keys")
        .arg(&public)
        .arg("--allow-http-loopback-registry");
    let out = run_to_end(&mut c)?;
    ensure!(out.success(), "{}", out.combined());
    let number = json(&out)?["pullRequest"]["number"]
        .as_u64()
        .context("pr")?;
    let forge = cfg.sre.forge.clone().context("forge")?;
    let previews = block_on(async {
        let client = s.cluster.client().await?;
        kars_gitops_agent::preview::preview_open_pulls(
            &client,
            &cfg,
            &forge,
            &mut kars_gitops_agent::preview::Previewed::default(),
            None,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))
    })??;
    let p = previews
        .iter()
        .find(|p| p.number == number)
        .context("no preview of the untrusted re-sign")?;
    ensure!(
        p.comment.contains("held back"),
        "the preview of a bundle signed by an untrusted key: {}",
        p.comment
    );
    Ok(())
}
