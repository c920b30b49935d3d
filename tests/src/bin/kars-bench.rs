//! `kars-bench`: the project's benchmarks. Every figure it prints is measured in this run.
//!
//! ```text
//! cargo run --release -p kars-e2e --bin kars-bench -- render [--agents 1000] [--runs 5]
//! cargo run --release -p kars-e2e --bin kars-bench -- verify [--commits 1000]
//! cargo build --release --workspace --bins && \
//!   cargo run --release -p kars-e2e --bin kars-bench -- sync [--agents 1000]
//! cargo run --release -p kars-e2e --bin kars-bench -- router [--seconds 3] [--rate 1000] [--conns 16]
//! ```
//!
//! Peak memory is the child process's `VmHWM` (peak resident set): each measured phase runs in
//! its own child process so phases do not inflate each other's peak.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kars_e2e::git::{Keys, Repo, Signing};
use kars_renderer::source::RepoTree;
use kars_renderer::{Bundles, render_tree};

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.windows(2)
        .find(|w| w[0] == name)
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A generated policy repository with `n` agents (KarsSandbox + InferencePolicy + ToolPolicy).
pub fn generated_repo(n: usize) -> Vec<(String, String)> {
    generated_repo_named(n, "bench", "agent")
}

/// Like [`generated_repo`], with the repository name and the agent-name prefix chosen.
pub fn generated_repo_named(n: usize, repo: &str, prefix: &str) -> Vec<(String, String)> {
    let mut files = vec![(
        "kars.yaml".to_string(),
        format!(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {{name: {repo}}}\nspec:\n  defaultNamespace: {repo}-agents\n  clusters: [{{name: bench, paths: [agents]}}]\n  providers: {{azure-openai: {{endpoint: \"https://example.openai.azure.com/openai/v1\"}}}}\n"
        ),
    )];
    for i in 0..n {
        let a = format!("{prefix}-{i:04}");
        files.push((
            format!("agents/{a}/sandbox.yaml"),
            format!(
                "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata:\n  name: {a}\n  labels: {{team: t{}}}\nspec:\n  runtime:\n    kind: OpenClaw\n    openclaw:\n      config: {{agent: {{model: azure/gpt-4.1}}}}\n  sandbox:\n    isolation: enhanced\n  inferenceRef: {{name: {a}-inference}}\n  governance:\n    enabled: true\n    toolPolicyRef: {{name: {a}-tools}}\n  networkPolicy:\n    egressMode: Strict\n    allowedEndpoints:\n      - {{host: api.github.com, port: 443}}\n      - {{host: svc-{i}.example.com, port: 443}}\n",
                i % 10
            ),
        ));
        files.push((
            format!("agents/{a}/inference.yaml"),
            format!(
                "apiVersion: kars.azure.com/v1alpha1\nkind: InferencePolicy\nmetadata: {{name: {a}-inference}}\nspec:\n  appliesTo: {{sandboxName: {a}}}\n  modelPreference:\n    primary: {{provider: azure-openai, deployment: gpt-4.1}}\n  tokenBudget: {{perRequestTokens: 8000, dailyTokens: 200000, monthlyTokens: 4000000}}\n"
            ),
        ));
        files.push((
            format!("agents/{a}/tools.yaml"),
            format!(
                "apiVersion: kars.azure.com/v1alpha1\nkind: ToolPolicy\nmetadata: {{name: {a}-tools}}\nspec:\n  appliesTo:\n    tool: \"*\"\n    sandboxMatchLabels: {{kars.azure.com/sandbox: {a}}}\n  agtProfile:\n    inline: |\n      version: \"1.0\"\n      agent: {a}\n      policies:\n        - name: deny-shell\n          type: capability\n          denied_actions: [\"shell:*\"]\n          priority: 100\n        - name: allow-inference\n          type: capability\n          allowed_actions: [\"inference:*\"]\n          priority: 50\n"
            ),
        ));
    }
    files
}

/// One measured phase in this process; prints `name seconds objects peak_kib`.
fn phase(name: &str, agents: usize, runs: usize) -> Result<()> {
    let files = generated_repo(agents);
    let mut best = Duration::MAX;
    let mut objects = 0;
    for _ in 0..runs {
        let t = Instant::now();
        match name {
            "render" => {
                let tree = RepoTree::from_files(files.iter().map(|(p, b)| (p.clone(), b.clone())));
                let rendered = render_tree(&tree, None, &Bundles::none())
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let yaml = kars_renderer::output::to_yaml(&rendered)?;
                objects = rendered.objects.len();
                std::hint::black_box(yaml);
            }
            "floor" => {
                // The floor: parse every document of the same files as plain YAML and write it back.
                let mut out = String::new();
                let mut docs = 0;
                for (_, text) in &files {
                    let values: Vec<serde_json::Value> = serde_saphyr::from_multiple(text)?;
                    for v in values {
                        out.push_str(&serde_saphyr::to_string(&v)?);
                        docs += 1;
                    }
                }
                objects = docs;
                std::hint::black_box(out);
            }
            "breakdown" => {
                // Where the render time goes, step by step (printed to stderr).
                let tree = RepoTree::from_files(files.iter().map(|(p, b)| (p.clone(), b.clone())));
                let t0 = Instant::now();
                let (repo, report) = kars_renderer::repo::load(&tree);
                let repo = repo.context("load")?;
                let t1 = Instant::now();
                let view = repo.for_cluster(None).map_err(|e| anyhow::anyhow!(e))?;
                let mut report = report;
                kars_renderer::validate::validate_cluster(&view, &mut report);
                let t2 = Instant::now();
                let rendered = kars_renderer::render::render_cluster(&view, &Bundles::none())
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                let t3 = Instant::now();
                let yaml = kars_renderer::output::to_yaml(&rendered)?;
                let t4 = Instant::now();
                objects = rendered.objects.len();
                std::hint::black_box(yaml);
                eprintln!(
                    "load+schema+CEL {:.0} ms, cross-object {:.0} ms, render {:.0} ms, YAML {:.0} ms",
                    (t1 - t0).as_secs_f64() * 1e3,
                    (t2 - t1).as_secs_f64() * 1e3,
                    (t3 - t2).as_secs_f64() * 1e3,
                    (t4 - t3).as_secs_f64() * 1e3
                );
            }
            other => bail!("unknown phase {other}"),
        }
        best = best.min(t.elapsed());
    }
    println!("{name} {} {objects} {}", best.as_secs_f64(), peak_rss_kib());
    Ok(())
}

fn run_phase(name: &str, agents: usize, runs: usize) -> Result<(f64, usize, u64)> {
    let exe = std::env::current_exe()?;
    let out = Command::new(exe)
        .args([
            "phase",
            name,
            "--agents",
            &agents.to_string(),
            "--runs",
            &runs.to_string(),
        ])
        .output()?;
    if !out.status.success() {
        bail!(
            "phase {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = line.split_whitespace().collect();
    Ok((f[1].parse()?, f[2].parse()?, f[3].parse()?))
}

fn bench_render(args: &[String]) -> Result<()> {
    let agents = arg(args, "--agents", 1000);
    let runs = arg(args, "--runs", 5);
    let (floor_s, docs, floor_kib) = run_phase("floor", agents, runs)?;
    let (render_s, objects, render_kib) = run_phase("render", agents, runs)?;
    println!(
        "render benchmark: {agents} agents (KarsSandbox + InferencePolicy + ToolPolicy), best of {runs} runs"
    );
    println!(
        "  plain YAML parse+serialize (floor): {:>8.1} ms  {docs} documents  peak RSS {:.1} MiB",
        floor_s * 1e3,
        floor_kib as f64 / 1024.0
    );
    println!(
        "  kars validate+render+YAML:          {:>8.1} ms  {objects} objects ({:.0} objects/s)  peak RSS {:.1} MiB",
        render_s * 1e3,
        objects as f64 / render_s,
        render_kib as f64 / 1024.0
    );
    println!("  ratio to floor: {:.2}x", render_s / floor_s);
    use kars_e2e::figure;
    figure("render.floor", floor_s * 1e3, "ms");
    figure("render.kars", render_s * 1e3, "ms");
    figure("render.objects", objects as f64, "objects");
    figure("render.ratio_to_floor", render_s / floor_s, "x");
    figure("render.peak_rss", render_kib as f64 / 1024.0, "MiB");
    Ok(())
}

fn bench_verify(args: &[String]) -> Result<()> {
    let commits = arg(args, "--commits", 1000);
    let dir = tempfile::tempdir()?;
    let keys = Keys::new(dir.path())?;
    let repo = Repo::init(&dir.path().join("repo"), &keys)?;
    let ssh = keys.ssh("ssh", "ed25519", "ssh@bench.example")?;
    let gpg = keys.gpg_key("Bench <gpg@bench.example>", "ed25519", "0", None)?;
    let allowed = keys.allowed_signers("allowed", &[("ssh@bench.example", &ssh, "")])?;
    let keyring = keys.gpg_keyring("keyring.asc", &[&gpg])?;
    eprintln!("creating {commits} signed commits (half SSH, half OpenPGP) with git …");
    let t = Instant::now();
    let mut ids = Vec::with_capacity(commits);
    for i in 0..commits {
        repo.write(&format!("agents/a{}.yaml", i % 50), &format!("n: {i}\n"))?;
        let id = if i % 2 == 0 {
            repo.commit(
                &format!("c{i}"),
                "ssh@bench.example",
                &Signing::Ssh(ssh.clone()),
            )?
        } else {
            repo.commit(
                &format!("c{i}"),
                "gpg@bench.example",
                &Signing::Gpg(gpg.clone(), None),
            )?
        };
        ids.push(id);
        if (i + 1) % 200 == 0 {
            eprintln!("  {} commits ({:.0} s)", i + 1, t.elapsed().as_secs_f64());
        }
    }
    let policy = kars_gitops_agent::verify::load_policy(None, Some(&allowed), Some(&keyring))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let head = gix::ObjectId::from_hex(ids.last().context("no commits")?.as_bytes())?;
    let gix_repo = gix::open(&repo.path)?;
    let t = Instant::now();
    let verdict = kars_gitops_agent::verify::Verifier::new(
        &gix_repo,
        &policy,
        kars_gitops_agent::verify::unix_now(),
    )
    .verify_range(None, head)?;
    let ours = t.elapsed();
    if !verdict.ok() || verdict.commits.len() != commits {
        bail!("verification failed: {:?}", verdict.first_problem());
    }
    let t = Instant::now();
    let mut cmd = Command::new("git");
    cmd.current_dir(&repo.path)
        .env("GNUPGHOME", keys.gnupg_home())
        .arg("-c")
        .arg(format!("gpg.ssh.allowedSignersFile={}", allowed.display()))
        .arg("verify-commit")
        .args(&ids);
    let out = cmd.output()?;
    let git = t.elapsed();
    if !out.status.success() {
        bail!(
            "git verify-commit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "verify benchmark: {commits} signed commits ({} SSH ed25519, {} OpenPGP ed25519), one run each",
        commits.div_ceil(2),
        commits / 2
    );
    println!(
        "  kars (in process, range walk + rules): {:>8.1} ms  {:>8.0} commits/s",
        ours.as_secs_f64() * 1e3,
        commits as f64 / ours.as_secs_f64()
    );
    println!(
        "  git verify-commit <all ids> (one run): {:>8.1} ms  {:>8.0} commits/s",
        git.as_secs_f64() * 1e3,
        commits as f64 / git.as_secs_f64()
    );
    println!("  speed-up: {:.1}x", git.as_secs_f64() / ours.as_secs_f64());
    kars_e2e::figure("verify.kars", ours.as_secs_f64() * 1e3, "ms");
    kars_e2e::figure("verify.git_verify_commit", git.as_secs_f64() * 1e3, "ms");
    kars_e2e::figure("verify.commits", commits as f64, "commits");
    Ok(())
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn bench_sync(args: &[String]) -> Result<()> {
    let agents = arg(args, "--agents", 1000);
    // --quick: only the kars first and no-op syncs (for profiling the phases).
    let quick = args.iter().any(|a| a == "--quick");
    // --concurrency N: objects applied (and statuses written) at once, as the agent's
    // --apply-concurrency.
    let concurrency = arg(
        args,
        "--concurrency",
        kars_gitops_agent::apply::ApplyOptions::default().concurrency,
    );
    let release = kars_e2e::workspace_root().join("target/release");
    let agent_bin = release.join("kars-gitops-agent");
    if !agent_bin.exists() {
        bail!(
            "{} missing: cargo build --release --workspace --bins",
            agent_bin.display()
        );
    }
    let cluster = kars_e2e::PrivateCluster::up()?;
    let dir = tempfile::tempdir()?;
    let keys = Keys::new(dir.path())?;
    let key = keys.ssh("signer", "ed25519", "bench@kars.test")?;
    let allowed = keys.allowed_signers("allowed_signers", &[("bench@kars.test", &key, "")])?;
    let repo = Repo::init(&dir.path().join("work"), &keys)?;
    for (path, body) in generated_repo_named(agents, "gbench", "g") {
        repo.write(&path, &body)?;
    }
    let head = repo.commit(
        "bench policies",
        "bench@kars.test",
        &Signing::Ssh(key.clone()),
    )?;
    let remote = dir.path().join("remote.git");
    kars_e2e::git::run(
        Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&remote),
    )?;
    repo.git(&["push", "-q", &remote.to_string_lossy(), "HEAD:main"])?;
    let trust = kars_gitops_agent::verify::load_policy(None, Some(&allowed), None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = kars_gitops_agent::sync::SyncConfig {
        source: format!("file://{}", remote.display()),
        branch: Some("main".into()),
        cluster: None,
        trust,
        credentials: Default::default(),
        cache_dir: dir.path().join("cache"),
        status_namespace: "kars-gitops-system".into(),
        name: "gbench".into(),
        apply: kars_gitops_agent::apply::ApplyOptions {
            concurrency,
            ..Default::default()
        },
        prune: Default::default(),
        health_timeout: Duration::ZERO,
        since_override: None,
        bundles: Default::default(),
        progress: Default::default(),
        // The bench's control plane has no node: no router pod can confirm anything.
        enforcement: kars_gitops_agent::enforcement::Mode::BestEffort,
        sre: Default::default(),
        sync_log: None,
        render_memo: Some(std::sync::Arc::new(
            kars_gitops_agent::sync::memo::RenderMemo::new(),
        )),
        // As the running agent: a live view kept by watches across syncs.
        live_view: Some(std::sync::Arc::new(kars_gitops_agent::live::LiveView::new())),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let never = || false;

    // (1) kubectl apply --server-side of the same shape of manifests, rendered from a twin repo.
    let twin = RepoTree::from_files(generated_repo_named(agents, "kbench", "k"));
    let twin_yaml = kars_renderer::output::to_yaml(
        &render_tree(&twin, None, &Bundles::none()).map_err(|e| anyhow::anyhow!("{e}"))?,
    )?;
    // The twin is kubectl's, not ours: relabelled (same size), so the kars syncs that follow
    // do not list 13,001 objects of another "repository" on top of their own.
    let twin_yaml = twin_yaml.replace(
        "app.kubernetes.io/managed-by: kars-gitops",
        "app.kubernetes.io/managed-by: kubectl-bch",
    );
    let twin_file = dir.path().join("kubectl.yaml");
    std::fs::write(&twin_file, &twin_yaml)?;
    eprintln!(
        "kubectl apply --server-side of {} objects …",
        twin_yaml.matches("\n---\n").count()
    );
    let t = Instant::now();
    let out = cluster
        .kubectl()
        .args([
            "apply",
            "--server-side",
            "--field-manager",
            "kubectl-bench",
            "-f",
        ])
        .arg(&twin_file)
        .output()?;
    let kubectl_time = t.elapsed();
    if !out.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    eprintln!("kars sync (first, full) …");
    let client = rt.block_on(kars_gitops_agent::sync::kube_client(Some(
        &cluster.kubeconfig(),
    )))?;
    let timed_sync = || -> Result<(kars_gitops_agent::sync::SyncOutcome, Duration)> {
        let t = Instant::now();
        let o = rt
            .block_on(kars_gitops_agent::sync::sync_once(
                client.clone(),
                &cfg,
                None,
                &never,
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((o, t.elapsed()))
    };
    let (first, first_time) = timed_sync()?;
    if !first.converged() || first.commit != head {
        bail!(
            "first sync did not converge: {:?}",
            first.apply.failures().next()
        );
    }

    // (2) A no-op sync, in the steady state: the live view has listed every kind, and one sync
    // has read what the controllers changed after the first (Deployment status).
    let view_current = Instant::now();
    if let Some(view) = &cfg.live_view
        && !rt.block_on(view.wait_current(Duration::from_secs(120)))
    {
        bail!("the live view did not list every kind within 120 s");
    }
    eprintln!(
        "live view current {:.2} s after the first sync",
        view_current.elapsed().as_secs_f64()
    );
    let (settle, settle_time) = timed_sync()?;
    eprintln!(
        "settling sync {:.2} s: {} reads, {} writes",
        settle_time.as_secs_f64(),
        settle.reads,
        settle.apply.writes
    );
    let (noop, noop_time) = timed_sync()?;

    if quick {
        // A one-file change through the library (no trigger, no agent process): where the time
        // of push → applied goes.
        repo.write("agents/g-0000/inference.yaml", "apiVersion: kars.azure.com/v1alpha1\nkind: InferencePolicy\nmetadata: {name: g-0000-inference}\nspec:\n  appliesTo: {sandboxName: g-0000}\n  modelPreference:\n    primary: {provider: azure-openai, deployment: gpt-4.1-quick}\n")?;
        repo.commit(
            "quick change",
            "bench@kars.test",
            &Signing::Ssh(key.clone()),
        )?;
        repo.git(&["push", "-q", &remote.to_string_lossy(), "HEAD:main"])?;
        let (change, change_time) = timed_sync()?;
        println!(
            "kubectl apply {:.2} s; one-file change sync {:.2} s ({} reads, {} writes): {}",
            kubectl_time.as_secs_f64(),
            change_time.as_secs_f64(),
            change.reads,
            change.apply.writes,
            phases(&change.timings)
        );
        println!(
            "no-op sync {:.2} s ({} reads, {} writes): {}",
            noop_time.as_secs_f64(),
            noop.reads,
            noop.apply.writes,
            phases(&noop.timings)
        );
        println!(
            "first sync {:.2} s: {}",
            first_time.as_secs_f64(),
            phases(&first.timings)
        );
        return Ok(());
    }
    // (3) push → applied latency, webhook and local watch, with the release agent; (4) its memory.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "bench")?;
    let measure = |label: &str,
                   agent_args: Vec<String>,
                   trigger: &dyn Fn(u16) -> Result<()>|
     -> Result<(Duration, u64, u64)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new(&agent_bin)
            .args(&agent_args)
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig())
            .arg("--allowed-signers")
            .arg(&allowed)
            .args([
                "--name",
                "gbench",
                "--branch",
                "main",
                "--interval",
                "600s",
                "--health-timeout",
                "0s",
            ])
            .args(["--apply-concurrency", &concurrency.to_string()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--cache-dir")
            .arg(dir.path().join(format!("cache-{label}")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        // Read through the API (a GET takes about a millisecond; a kubectl process per look
        // would add its own start-up time to the figure).
        let policy_repos: kube::Api<kars_gitops_agent::status::PolicyRepo> =
            kube::Api::namespaced(client.clone(), "kars-gitops-system");
        let applied = || -> Result<String> {
            let pr = rt.block_on(policy_repos.get_opt("gbench"))?;
            Ok(pr
                .and_then(|p| p.status)
                .and_then(|s| s.last_applied_revision)
                .unwrap_or_default())
        };
        // Wait for the agent's first (no-op) sync to finish.
        let ready = Instant::now();
        loop {
            let o = Command::new("curl")
                .args(["-fsS", &format!("http://127.0.0.1:{port}/readyz")])
                .output();
            if o.is_ok_and(|o| o.status.success()) {
                break;
            }
            if ready.elapsed() > Duration::from_secs(600) {
                let _ = child.kill();
                bail!("{label}: agent not ready");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        repo.write("agents/g-0000/inference.yaml", &format!("apiVersion: kars.azure.com/v1alpha1\nkind: InferencePolicy\nmetadata: {{name: g-0000-inference}}\nspec:\n  appliesTo: {{sandboxName: g-0000}}\n  modelPreference:\n    primary: {{provider: azure-openai, deployment: gpt-4.1-{label}}}\n"))?;
        let new_head = repo.commit(
            &format!("change for {label}"),
            "bench@kars.test",
            &Signing::Ssh(key.clone()),
        )?;
        let t = Instant::now();
        repo.git(&["push", "-q", &remote.to_string_lossy(), "HEAD:main"])?;
        trigger(port)?;
        while applied()? != new_head {
            if t.elapsed() > Duration::from_secs(600) {
                let _ = child.kill();
                bail!("{label}: the change was not applied within 600 s");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let latency = t.elapsed();
        let rss = proc_status_kib(child.id(), "VmRSS:");
        let hwm = proc_status_kib(child.id(), "VmHWM:");
        let _ = child.kill();
        let _ = child.wait();
        Ok((latency, rss, hwm))
    };
    let hook = |port: u16| -> Result<()> {
        let body = r#"{"ref":"refs/heads/main"}"#;
        let sig = format!(
            "sha256={}",
            hex::encode(kars_gitops_agent::webhook::hmac_sha256(
                b"bench",
                body.as_bytes()
            ))
        );
        let out = Command::new("curl")
            .args([
                "-fsS",
                "-X",
                "POST",
                "-H",
                &format!("X-Hub-Signature-256: {sig}"),
                "-H",
                "X-GitHub-Delivery: bench-1",
                "-d",
                body,
            ])
            .arg(format!("http://127.0.0.1:{port}/hooks/github"))
            .output()?;
        if !out.status.success() {
            bail!("hook refused: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    let (hook_latency, hook_rss, hook_hwm) = measure(
        "webhook",
        vec![
            "--repo".into(),
            format!("file://{}", remote.display()),
            "--webhook-secret-file".into(),
            secret.display().to_string(),
        ],
        &hook,
    )?;
    let (watch_latency, _, _) = measure(
        "watch",
        vec![
            "--repo".into(),
            repo.path.display().to_string(),
            "--watch".into(),
        ],
        &|_| Ok(()),
    )?;

    println!(
        "sync benchmark: {agents} agents, {} objects, on the local control plane (2 cores)",
        first.apply.objects.len()
    );
    println!(
        "  kubectl apply --server-side (same shape, {} objects):   {:>9.1} s",
        twin_yaml.matches("\n---\n").count(),
        kubectl_time.as_secs_f64()
    );
    println!(
        "  kars first full sync (fetch, verify, render, apply):     {:>9.1} s  ({} writes)",
        first_time.as_secs_f64(),
        first.apply.writes
    );
    println!(
        "  kars no-op sync:                                         {:>9.2} s  ({} write, {} read requests)",
        noop_time.as_secs_f64(),
        noop.apply.writes,
        noop.reads
    );
    println!(
        "  push → applied, one-file change, webhook:                {:>9.2} s",
        hook_latency.as_secs_f64()
    );
    println!(
        "  push → applied, one-file change, local path watch:       {:>9.2} s",
        watch_latency.as_secs_f64()
    );
    println!(
        "  agent memory after the webhook sync: RSS {:.1} MiB, peak {:.1} MiB",
        hook_rss as f64 / 1024.0,
        hook_hwm as f64 / 1024.0
    );
    // Every figure, and its ratio to the kubectl run of this same benchmark run (the machine's
    // speed varies from day to day; the ratios do not).
    let kubectl_s = kubectl_time.as_secs_f64();
    let sync_figures = [
        ("sync.first_full", first_time.as_secs_f64()),
        ("sync.noop", noop_time.as_secs_f64()),
        ("sync.push_to_applied.webhook", hook_latency.as_secs_f64()),
        (
            "sync.push_to_applied.path_watch",
            watch_latency.as_secs_f64(),
        ),
    ];
    kars_e2e::figure("sync.kubectl_apply", kubectl_s, "s");
    for (name, secs) in sync_figures {
        kars_e2e::figure(name, secs, "s");
        kars_e2e::figure(&format!("{name}.ratio_to_kubectl"), secs / kubectl_s, "x");
    }
    kars_e2e::figure("sync.objects", first.apply.objects.len() as f64, "objects");
    kars_e2e::figure("sync.noop.writes", noop.apply.writes as f64, "requests");
    kars_e2e::figure("sync.noop.reads", noop.reads as f64, "requests");
    kars_e2e::figure("sync.agent_rss", hook_rss as f64 / 1024.0, "MiB");
    kars_e2e::figure("sync.agent_peak_rss", hook_hwm as f64 / 1024.0, "MiB");
    Ok(())
}

/// `name 0.12 s, …` of a sync's phase timings.
fn phases(timings: &[(String, f64)]) -> String {
    timings
        .iter()
        .map(|(n, t)| format!("{n} {t:.2} s"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("phase") => phase(
            args.get(1).map(String::as_str).unwrap_or_default(),
            arg(&args, "--agents", 1000),
            arg(&args, "--runs", 5),
        ),
        Some("render") => bench_render(&args),
        Some("verify") => bench_verify(&args),
        Some("sync") => bench_sync(&args),
        Some("router") => kars_e2e::router_bench::run(
            arg(&args, "--seconds", 3) as u64,
            arg(&args, "--rate", 1000) as u64,
            arg(&args, "--conns", 16),
        ),
        _ => {
            eprintln!(
                "usage: kars-bench render [--agents N] [--runs N] | verify [--commits N] | sync [--agents N] | router [--seconds N] [--rate N] [--conns N]"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
