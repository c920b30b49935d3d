//! `kars-bench`: the project's benchmarks. Every figure it prints is measured in this run.
//!
//! ```text
//! cargo run --release -p kars-e2e --bin kars-bench -- render [--agents 1000] [--runs 5]
//! cargo run --release -p kars-e2e --bin kars-bench -- verify [--commits 1000]
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
    let mut files = vec![(
        "kars.yaml".to_string(),
        "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: bench}\nspec:\n  defaultNamespace: bench-agents\n  clusters: [{name: bench, paths: [agents]}]\n".to_string(),
    )];
    for i in 0..n {
        let a = format!("agent-{i:04}");
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
    Ok(())
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
        _ => {
            eprintln!("usage: kars-bench render [--agents N] [--runs N] | verify [--commits N]");
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
