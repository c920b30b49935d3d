//! The Helm chart `charts/kars-gitops`: it lints strictly, renders what the golden file holds,
//! refuses bad values with a message that names the value, carries upstream's CRDs unchanged
//! and ours as the Rust types generate them, and its ServiceAccount can do exactly what a sync
//! needs — a real sync as that identity applies and prunes — and nothing more.
//! (Installing it on a node and running the agent from its image: `node.rs`.)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use kars_e2e::fixture::PolicyRepoFixture;
use kars_e2e::{Cluster, Out, run_to_end, tool_path, unique_name, workspace_root};
use libtest_mimic::Trial;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "chart::lints_strictly_and_renders_the_golden_file",
            lints_strictly_and_renders_the_golden_file,
        ),
        trial(
            "chart::schema_refuses_bad_values_naming_them",
            schema_refuses_bad_values_naming_them,
        ),
        trial(
            "chart::crds_are_upstreams_and_generated_from_the_rust_types",
            crds_are_upstreams_and_generated_from_the_rust_types,
        ),
        trial(
            "chart::agent_identity_syncs_and_can_do_nothing_more",
            agent_identity_syncs_and_can_do_nothing_more,
        ),
    ]
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    workspace_root().join("charts/kars-gitops")
}

/// A helm command (the pinned build).
pub fn helm() -> Result<Command> {
    let mut c = Command::new(tool_path("helm", "helm")?);
    // Nothing of the user's helm configuration or cache is read or written.
    let home = std::env::temp_dir().join(format!("kars-e2e-helm-{}", std::process::id()));
    c.env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"));
    Ok(c)
}

fn golden_values() -> PathBuf {
    workspace_root().join("tests/golden/chart/values.yaml")
}

fn lints_strictly_and_renders_the_golden_file() -> Result<()> {
    let lint = run_to_end(
        helm()?
            .args(["lint", "--strict", "--values"])
            .arg(golden_values())
            .arg(chart_dir()),
    )?;
    ensure!(
        lint.success() && lint.stdout.contains("0 chart(s) failed"),
        "helm lint --strict: {}",
        lint.combined()
    );
    let minimal = run_to_end(helm()?.arg("lint").arg("--strict").arg(chart_dir()).args([
        "--set",
        "repository.url=https://git.example.com/p.git,trust.allowedSigners=x",
    ]))?;
    ensure!(
        minimal.success(),
        "helm lint --strict with only the required values: {}",
        minimal.combined()
    );
    let out = template(&["--values", &golden_values().display().to_string()])?;
    ensure!(out.success(), "helm template: {}", out.combined());
    kars_e2e::golden::check("chart/template", &out.stdout)?;
    // What the golden file shows is what a reviewer must see: the agent runs as its own
    // ServiceAccount from the image by digest, hardened, and only binds the spawner role.
    for needle in [
        "image: \"registry.example.com/kars-gitops-agent@sha256:0000000000000000000000000000000000000000000000000000000000000000\"",
        "readOnlyRootFilesystem: true",
        "- --leader-election",
        "resourceNames: [kars-sandbox-spawner]",
        "kind: ValidatingAdmissionPolicy",
        "helm.sh/hook: pre-delete",
    ] {
        ensure!(out.stdout.contains(needle), "the chart lost {needle:?}");
    }
    Ok(())
}

/// `helm template` of the chart with `args`, release `kars-gitops` in `kars-gitops-system`.
fn template(args: &[&str]) -> Result<Out> {
    run_to_end(
        helm()?
            .args(["template", "kars-gitops"])
            .arg(chart_dir())
            .args(["--namespace", "kars-gitops-system"])
            // Offline, helm assumes Kubernetes 1.20; the chart needs ≥ 1.30 (the admission policy).
            .args(["--kube-version", "v1.37.2"])
            .args(args),
    )
}

fn schema_refuses_bad_values_naming_them() -> Result<()> {
    let base = "repository.url=https://git.example.com/p.git,trust.allowedSigners=ops@x namespaces=\"git\" ssh-ed25519 AAAA";
    let good = template(&["--set", base])?;
    ensure!(good.success(), "good values refused: {}", good.combined());
    // (values, what the message must name)
    let cases: &[(&[&str], &[&str])] = &[
        (&["--set", "replicaCount=two"], &["replicaCount", "integer"]),
        (&["--set", "sync.enforcement=sometimes"], &["enforcement"]),
        (
            &["--set", "sync.maxDeletePercent=250"],
            &["maxDeletePercent"],
        ),
        (
            &["--set", "webhook.enabled=yes-please"],
            &["webhook", "boolean"],
        ),
        (&["--set", "repositry.url=typo"], &["repositry"]),
        (&["--set", "image.digest=latest"], &["digest"]),
        (&["--set", "repository.url=ftp://example.com/x"], &["url"]),
        (
            &["--set", "replicaCount=2,leaderElection.enabled=false"],
            &["leaderElection.enabled"],
        ),
        (&["--set", "uninstall.prune=true"], &["repository.name"]),
    ];
    for (extra, names) in cases {
        let mut args = vec!["--set", base];
        args.extend_from_slice(extra);
        let out = template(&args)?;
        let text = out.combined();
        ensure!(!out.success(), "{extra:?} was accepted");
        for n in *names {
            ensure!(
                text.contains(n),
                "{extra:?}: the message does not name {n}: {text}"
            );
        }
        ensure!(!text.contains("panic"), "{text}");
    }
    // No trust root at all: refused before anything renders, saying what to set.
    let no_trust = template(&["--set", "repository.url=https://git.example.com/p.git"])?;
    let text = no_trust.combined();
    ensure!(!no_trust.success(), "installed without a trust root");
    ensure!(
        text.contains("trust") && text.contains("allowedSigners"),
        "missing trust root, message: {text}"
    );
    let no_url = template(&["--set", "trust.allowedSigners=x"])?;
    ensure!(
        !no_url.success() && no_url.combined().contains("/repository/url"),
        "missing repository.url: {}",
        no_url.combined()
    );
    Ok(())
}

fn crds_are_upstreams_and_generated_from_the_rust_types() -> Result<()> {
    let upstream = workspace_root().join("renderer/upstream/crds");
    let chart = chart_dir().join("crds");
    let mut n = 0;
    for e in std::fs::read_dir(&upstream)? {
        let e = e?;
        let ours = chart.join(e.file_name());
        ensure!(
            std::fs::read(e.path())? == std::fs::read(&ours).unwrap_or_default(),
            "{} is not byte-identical to {} (upstream's pinned CRDs): cp renderer/upstream/crds/*.yaml charts/kars-gitops/crds/",
            ours.display(),
            e.path().display()
        );
        n += 1;
    }
    ensure!(n == 11, "expected the 11 upstream CRD files, found {n}");
    let check = run_to_end(
        Command::new(workspace_root().join("target/debug/kars-crdgen"))
            .arg("--check")
            .arg(&chart),
    )?;
    ensure!(check.success(), "kars-crdgen --check: {}", check.combined());
    // And the check can fail: a drifted copy is caught.
    let tmp = tempfile::tempdir()?;
    std::fs::write(
        tmp.path().join("policyrepos.gitops.kars.io.yaml"),
        std::fs::read_to_string(chart.join("policyrepos.gitops.kars.io.yaml"))?
            .replace("maxDeletePercent", "maxDeletePct"),
    )?;
    let drifted = run_to_end(
        Command::new(workspace_root().join("target/debug/kars-crdgen"))
            .arg("--check")
            .arg(tmp.path()),
    )?;
    ensure!(
        drifted.code == 1 && drifted.stderr.contains("--write"),
        "a drifted CRD passed: {}",
        drifted.combined()
    );
    Ok(())
}

/// A kubeconfig that authenticates as ServiceAccount `ns/sa` with a real token.
fn service_account_kubeconfig(cluster: &Cluster, ns: &str, sa: &str, out: &Path) -> Result<()> {
    let (ok, token, err) =
        cluster.kubectl(&["-n", ns, "create", "token", sa, "--duration", "30m"])?;
    ensure!(ok, "kubectl create token: {err}");
    let (_, server, _) = cluster.kubectl(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ])?;
    let (_, ca, _) = cluster.kubectl(&[
        "config",
        "view",
        "--raw",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.certificate-authority-data}",
    ])?;
    std::fs::write(
        out,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"{}\", certificate-authority-data: \"{}\"}}\nusers:\n- name: {sa}\n  user: {{token: \"{}\"}}\ncontexts:\n- name: sa\n  context: {{cluster: c, user: {sa}}}\ncurrent-context: sa\n",
            server.trim(),
            ca.trim(),
            token.trim()
        ),
    )?;
    Ok(())
}

/// Installs the chart on the shared control plane (no node: the agent pod stays Pending, which
/// does not matter here), then acts as its ServiceAccount with a real token: a sync of a signed
/// repository applies and prunes everything; reading other Secrets, writing kinds the
/// renderer does not produce, binding other roles and writing outside managed namespaces are
/// refused.
fn agent_identity_syncs_and_can_do_nothing_more() -> Result<()> {
    let cluster = Cluster::shared()?;
    kars_e2e::install_kars_crds(cluster)?;
    let release = unique_name("rbac");
    let ns = format!("{release}-system");
    let repo = PolicyRepoFixture::new(&release, &["a", "b"])?;
    let signers = std::fs::read_to_string(&repo.allowed_signers)?;
    let values = repo.path().join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "repository: {{url: \"{}\", name: {release}}}\ntrust:\n  allowedSigners: {}\n# Cluster-wide, fixed-name objects other tests on this control plane may own.\nspawner: {{create: false}}\nsre: {{create: false}}\n",
            repo.file_url(),
            serde_json::to_string(&signers)?
        ),
    )?;
    let install = run_to_end(
        helm()?
            .args(["install", &release])
            .arg(chart_dir())
            .args([
                "--namespace",
                &ns,
                "--create-namespace",
                "--skip-crds",
                "--values",
            ])
            .arg(&values)
            .arg("--kubeconfig")
            .arg(cluster.kubeconfig()),
    )?;
    ensure!(install.success(), "helm install: {}", install.combined());
    let result = as_the_agent(cluster, &repo, &release, &ns);
    let uninstall = run_to_end(
        helm()?
            .args([
                "uninstall",
                &release,
                "--namespace",
                &ns,
                "--wait",
                "--kubeconfig",
            ])
            .arg(cluster.kubeconfig()),
    )?;
    result?;
    ensure!(
        uninstall.success(),
        "helm uninstall: {}",
        uninstall.combined()
    );
    Ok(())
}

fn as_the_agent(
    cluster: &Cluster,
    repo: &PolicyRepoFixture,
    release: &str,
    ns: &str,
) -> Result<()> {
    let sa = format!("{release}-kars-gitops");
    let kubeconfig = repo.path().join("agent.kubeconfig");
    service_account_kubeconfig(cluster, ns, &sa, &kubeconfig)?;
    let as_agent = |args: &[&str]| -> Result<Out> {
        let mut c = cluster.kubectl_command();
        c.env("KUBECONFIG", &kubeconfig).args(args);
        run_to_end(&mut c)
    };
    let whoami = as_agent(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])?;
    ensure!(
        whoami.stdout.trim() == format!("system:serviceaccount:{ns}:{sa}"),
        "not the chart's ServiceAccount: {}",
        whoami.combined()
    );

    // The sync log's signing seed, from the Secret the chart generated (the agent's pod
    // mounts it; here the agent runs on the host).
    let seed_file = repo.path().join("sync-log-seed");
    let (ok, seed, err) = cluster.kubectl(&[
        "-n",
        ns,
        "get",
        "secret",
        &format!("{release}-kars-gitops-sync-log-key"),
        "-o",
        "jsonpath={.data.ed25519-seed}",
    ])?;
    ensure!(ok, "the chart generated no sync log key: {err}");
    {
        use base64::Engine;
        let seed = base64::engine::general_purpose::STANDARD.decode(seed.trim())?;
        ensure!(
            seed.len() == 64 && seed.iter().all(u8::is_ascii_hexdigit),
            "the generated seed is not 64 hex digits"
        );
        std::fs::write(&seed_file, seed)?;
    }
    let seed_arg = seed_file.display().to_string();

    // A real sync as this identity: two sandboxes applied (namespaces, bindings to the
    // spawner role, generated token Secrets, policies), then one pruned.
    let agent = |extra: &[&str]| -> Result<Out> {
        let mut c = Command::new(workspace_root().join("target/debug/kars-gitops-agent"));
        c.args([
            "--repo",
            &repo.file_url(),
            "--branch",
            "main",
            "--name",
            release,
        ])
        .args(["--namespace", ns, "--once", "--enforcement", "best-effort"])
        .args(["--health-timeout", "0s"])
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .arg("--allowed-signers")
        .arg(&repo.allowed_signers)
        .arg("--cache-dir")
        .arg(repo.path().join("cache"))
        .args(["--sync-log-key", &seed_arg])
        .args(extra);
        run_to_end(&mut c)
    };
    let sync_ok = |what: &str, extra: &[&str]| -> Result<()> {
        let out = agent(extra)?;
        if !out.success() {
            let (_, status, _) = cluster.kubectl(&[
                "-n",
                ns,
                "get",
                "policyrepo",
                release,
                "-o",
                "jsonpath={.status.conditions}{.status.failures}",
            ])?;
            bail!(
                "{what} as the chart's ServiceAccount failed:\n{}\nPolicyRepo: {status}",
                out.combined()
            );
        }
        Ok(())
    };
    sync_ok("the first sync", &[])?;
    let sandbox_ns = format!("kars-{}", repo.agent("a"));
    let (ok, token, _) = cluster.kubectl(&[
        "-n",
        &sandbox_ns,
        "get",
        "secret",
        "router-admin-token",
        "-o",
        "jsonpath={.data.token}",
    ])?;
    ensure!(
        ok && !token.trim().is_empty(),
        "no generated router token in {sandbox_ns}"
    );
    let (ok, audit_seed, _) = cluster.kubectl(&[
        "-n",
        &sandbox_ns,
        "get",
        "secret",
        "router-audit-key",
        "-o",
        "jsonpath={.data.ed25519-seed}",
    ])?;
    ensure!(
        ok && !audit_seed.trim().is_empty(),
        "no generated router audit key in {sandbox_ns}"
    );
    let first_commit = repo.head()?;
    sync_ok("a second sync", &[])?;
    repo.remove_agent("b")?;
    repo.commit_and_push("remove b")?;
    // Half of a two-agent repository: over the default mass-prune threshold. The sandbox's
    // namespace may still be terminating after that sync (Ready: Progressing); the next one
    // confirms it is gone.
    let prune = agent(&["--max-delete-percent", "60"])?;
    ensure!(
        prune.success() || prune.code == 1,
        "the pruning sync: {}",
        prune.combined()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match sync_ok("the sync after pruning", &[]) {
            Ok(()) => break,
            Err(e) if std::time::Instant::now() > deadline => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_secs(1)),
        }
    }
    let (gone, _, _) = cluster.kubectl(&[
        "-n",
        &repo.namespace(),
        "get",
        "karssandbox",
        &repo.agent("b"),
    ])?;
    ensure!(
        !gone,
        "the removed sandbox was not pruned by the agent's identity"
    );
    sync_log_proves_what_was_applied(cluster, repo, release, ns, &first_commit, &sandbox_ns)?;

    // Allowed on purpose (positive controls, so the refusals below mean something).
    let own_secret = as_agent(&[
        "-n",
        &sandbox_ns,
        "get",
        "secret",
        "router-admin-token",
        "-o",
        "name",
    ])?;
    ensure!(
        own_secret.success(),
        "cannot read its own token: {}",
        own_secret.combined()
    );

    // Refused: each with the way it would be bypassed.
    let (ok, _, err) = cluster.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "secret",
        "generic",
        &format!("{release}-x"),
        "--from-literal=k=v",
    ])?;
    ensure!(
        ok,
        "admin could not create the kube-system probe secret: {err}"
    );
    let (ok, _, err) = cluster.kubectl(&["create", "namespace", &format!("{release}-foreign")])?;
    ensure!(ok, "admin could not create the probe namespace: {err}");
    let refusals: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "read a Secret in kube-system",
            vec![
                "-n".into(),
                "kube-system".into(),
                "get".into(),
                "secret".into(),
                format!("{release}-x"),
            ],
            "forbidden",
        ),
        (
            "list Secrets cluster-wide",
            vec!["get".into(), "secrets".into(), "-A".into()],
            "forbidden",
        ),
        (
            "list Secrets in its own sandbox namespace",
            vec![
                "-n".into(),
                sandbox_ns.clone(),
                "get".into(),
                "secrets".into(),
            ],
            "forbidden",
        ),
        (
            "create a Role",
            vec![
                "-n".into(),
                sandbox_ns.clone(),
                "create".into(),
                "role".into(),
                "r".into(),
                "--verb=get".into(),
                "--resource=secrets".into(),
            ],
            "forbidden",
        ),
        (
            "create a ClusterRole",
            vec![
                "create".into(),
                "clusterrole".into(),
                format!("{release}-all"),
                "--verb=*".into(),
                "--resource=*".into(),
            ],
            "forbidden",
        ),
        (
            "bind cluster-admin (escalation)",
            vec![
                "create".into(),
                "clusterrolebinding".into(),
                format!("{release}-admin"),
                "--clusterrole=cluster-admin".into(),
                format!("--serviceaccount={ns}:{sa}"),
            ],
            "forbidden",
        ),
        (
            "bind itself to read Secrets in a namespace",
            vec![
                "-n".into(),
                sandbox_ns.clone(),
                "create".into(),
                "rolebinding".into(),
                "rb".into(),
                "--clusterrole=view".into(),
                format!("--serviceaccount={ns}:{sa}"),
            ],
            "forbidden",
        ),
        (
            "create a DaemonSet (not a rendered kind)",
            vec![
                "-n".into(),
                sandbox_ns.clone(),
                "create".into(),
                "-f".into(),
                "-".into(),
            ],
            "forbidden",
        ),
        (
            "create a Deployment in kube-system",
            vec![
                "-n".into(),
                "kube-system".into(),
                "create".into(),
                "deployment".into(),
                format!("{release}-x"),
                "--image=example.invalid/x:1".into(),
            ],
            "writes only in namespaces it manages",
        ),
        (
            "label kube-system as managed",
            vec![
                "label".into(),
                "namespace".into(),
                "kube-system".into(),
                "app.kubernetes.io/managed-by=kars-gitops".into(),
            ],
            "may create, change and delete only namespaces",
        ),
        (
            "delete a namespace it does not manage",
            vec![
                "delete".into(),
                "namespace".into(),
                format!("{release}-foreign"),
                "--wait=false".into(),
            ],
            "may create, change and delete only namespaces",
        ),
        (
            "create a ConfigMap in default",
            vec![
                "-n".into(),
                "default".into(),
                "create".into(),
                "configmap".into(),
                format!("{release}-x"),
            ],
            "writes only in namespaces it manages",
        ),
    ];
    let daemonset = format!(
        "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {{name: x, namespace: {sandbox_ns}}}\nspec:\n  selector: {{matchLabels: {{a: b}}}}\n  template:\n    metadata: {{labels: {{a: b}}}}\n    spec: {{containers: [{{name: x, image: example.invalid/x:1}}]}}\n"
    );
    let mut problems = Vec::new();
    for (what, args, expect) in &refusals {
        let mut c = cluster.kubectl_command();
        c.env("KUBECONFIG", &kubeconfig).args(args);
        let out = if args.iter().any(|a| a == "-") {
            kars_e2e::run_with_stdin(&mut c, &daemonset)?
        } else {
            run_to_end(&mut c)?
        };
        let text = out.combined().to_lowercase();
        if out.success() || !text.contains(&expect.to_lowercase()) {
            problems.push(format!("{what}: {}", out.combined().trim()));
        }
    }
    let _ = cluster.kubectl(&[
        "-n",
        "kube-system",
        "delete",
        "secret",
        &format!("{release}-x"),
    ]);
    let _ = cluster.kubectl(&[
        "delete",
        "namespace",
        &format!("{release}-foreign"),
        "--wait=false",
    ]);
    if !problems.is_empty() {
        bail!(
            "the chart's ServiceAccount was not refused:\n{}",
            problems.join("\n")
        );
    }
    // Binding the spawner role is what sandboxes need, and stays allowed.
    let spawner = as_agent(&[
        "create",
        "clusterrolebinding",
        &format!("{release}-spawner-probe"),
        "--clusterrole=kars-sandbox-spawner",
        &format!("--serviceaccount={sandbox_ns}:sandbox"),
    ])?;
    ensure!(
        spawner.success(),
        "binding kars-sandbox-spawner refused: {}",
        spawner.combined()
    );
    let _ = cluster.kubectl(&[
        "delete",
        "clusterrolebinding",
        &format!("{release}-spawner-probe"),
    ]);

    // Clean up what the sync applied (as admin), so the shared control plane stays small.
    let _ = Command::new(workspace_root().join("target/debug/kars"))
        .args([
            "delete",
            release,
            "--prune",
            "--namespace",
            ns,
            "--kubeconfig",
        ])
        .arg(cluster.kubeconfig())
        .output()
        .context("kars delete --prune")?;
    Ok(())
}

/// The sync log the agent kept (as the chart's identity, in the release namespace): what each
/// sync applied, checked by `kars audit syncs`; an edited record, a cut tail, another key and a
/// missing segment are each named.
fn sync_log_proves_what_was_applied(
    cluster: &Cluster,
    repo: &PolicyRepoFixture,
    release: &str,
    ns: &str,
    first_commit: &str,
    sandbox_ns: &str,
) -> Result<()> {
    let kars = |args: &[&str]| -> Result<Out> {
        let mut c = kars_e2e::kars_command()?;
        c.args(["audit", "syncs", release, "-n", ns, "--kubeconfig"])
            .arg(cluster.kubeconfig())
            .args(args);
        run_to_end(&mut c)
    };
    let shown = kars(&[])?;
    ensure!(shown.success(), "kars audit syncs: {}", shown.combined());
    ensure!(
        shown.stdout.contains("chain intact") && shown.stdout.contains("pin yours with --key"),
        "{}",
        shown.stdout
    );
    let json = kars(&["-o", "json"])?;
    ensure!(json.success(), "{}", json.combined());
    let v: serde_json::Value = serde_json::from_str(&json.stdout)?;
    let records = v["records"].as_array().context("records")?;
    // The first sync created the sandboxes from the first commit, signed by the fixture's
    // signer; the second changed nothing (no record); a later one pruned b at the new head.
    let first = records.first().context("no record")?;
    ensure!(
        first["commit"] == first_commit
            && first["written"]["count"].as_u64().unwrap_or_default() > 0
            && first["written"]["objects"].as_array().is_some_and(|o| o
                .iter()
                .any(|x| x.as_str().is_some_and(|x| x.contains(sandbox_ns))))
            && first["signers"].as_array().is_some_and(|s| !s.is_empty())
            && first["rendered"]
                .as_str()
                .is_some_and(|d| d.starts_with("sha256:")),
        "first record: {first}"
    );
    let head = repo.head()?;
    ensure!(
        records.iter().any(|r| r["commit"] == head.as_str()
            && r["previousCommit"] == first_commit
            && r["pruned"]["count"].as_u64().unwrap_or_default() > 0),
        "no record of the pruning sync at {head}: {records:?}"
    );
    ensure!(
        records
            .iter()
            .filter(|r| r["commit"] == first_commit)
            .count()
            == 1,
        "the sync that changed nothing was recorded: {records:?}"
    );
    let dir = repo.path();
    let public = dir.join("agent-sync-log.pub");
    std::fs::write(&public, v["publicKey"].as_str().context("publicKey")?)?;
    let public_arg = public.display().to_string();
    let pinned = kars(&["--key", &public_arg])?;
    ensure!(
        pinned.success() && !pinned.stdout.contains("pin yours"),
        "{}",
        pinned.combined()
    );
    let good_head = v["head"].as_str().context("head")?.to_string();

    // Another key: refused, named.
    let other = dir.join("other.pub");
    let gen_key = Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(dir.join("other.key"))
        .status()?;
    let pub_key = Command::new("openssl")
        .arg("pkey")
        .arg("-in")
        .arg(dir.join("other.key"))
        .args(["-pubout", "-out"])
        .arg(&other)
        .status()?;
    ensure!(gen_key.success() && pub_key.success(), "openssl");
    let out = kars(&["--key", &other.display().to_string()])?;
    ensure!(
        out.code == 1 && out.stderr.contains("not by the given key"),
        "another key: {}",
        out.combined()
    );

    // Tampering as a cluster admin, through the ConfigMap.
    let segment = format!("{release}-sync-log-0000");
    let (ok, original, err) =
        cluster.kubectl(&["-n", ns, "get", "configmap", &segment, "-o", "json"])?;
    ensure!(ok, "{segment}: {err}");
    let replace_with = |cm: &serde_json::Value| -> Result<()> {
        let file = dir.join("segment.json");
        std::fs::write(&file, cm.to_string())?;
        let (ok, _, err) = cluster.kubectl(&["replace", "-f", &file.display().to_string()])?;
        ensure!(ok, "kubectl replace {segment}: {err}");
        Ok(())
    };
    let fresh = || -> Result<serde_json::Value> {
        let (_, now, _) =
            cluster.kubectl(&["-n", ns, "get", "configmap", &segment, "-o", "json"])?;
        Ok(serde_json::from_str(&now)?)
    };
    let original: serde_json::Value = serde_json::from_str(&original)?;
    let records_text = original["data"]["records"]
        .as_str()
        .context("records")?
        .to_string();
    let heads_text = original["data"]["heads"]
        .as_str()
        .context("heads")?
        .to_string();
    let set = |records: &str, heads: &str| -> Result<()> {
        let mut cm = fresh()?;
        cm["data"]["records"] = serde_json::json!(records);
        cm["data"]["heads"] = serde_json::json!(heads);
        replace_with(&cm)
    };
    // An edited record: its hash no longer matches.
    let edited = records_text.replacen(first_commit, &"0".repeat(first_commit.len()), 1);
    ensure!(
        edited != records_text,
        "the first commit is not in the segment"
    );
    set(&edited, &heads_text)?;
    let out = kars(&[])?;
    ensure!(
        out.code == 1 && out.stderr.contains("line 1 (seq 0)") && out.stderr.contains("changed"),
        "an edited record: {}",
        out.combined()
    );
    // The last record and its head cut: the chain alone cannot tell, the kept head can.
    let keep = |text: &str| -> String {
        let lines: Vec<&str> = text.lines().collect();
        lines[..lines.len() - 1]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect()
    };
    set(&keep(&records_text), &keep(&heads_text))?;
    let out = kars(&["--expect-head", &good_head])?;
    ensure!(
        out.code == 1 && out.stderr.contains("records were cut from the end"),
        "a cut tail: {}",
        out.combined()
    );
    // The last record cut but its head kept: the signed head names the cut.
    set(&keep(&records_text), &heads_text)?;
    let out = kars(&[])?;
    ensure!(
        out.code == 1
            && out
                .stderr
                .contains("records were cut after that head was signed"),
        "a record cut under its signed head: {}",
        out.combined()
    );
    // A record appended by someone else (sealed, but no head the agent signed).
    let mut forged = records_text.clone();
    let last: serde_json::Value =
        serde_json::from_str(records_text.lines().last().context("last")?)?;
    let mut m = serde_json::Map::new();
    m.insert("commit".into(), serde_json::json!("f".repeat(40)));
    let (line, _) = kars_contract::chain::seal(
        last["seq"].as_u64().context("seq")? + 1,
        "2026-01-01T00:00:00Z",
        m,
        last["hash"].as_str().context("hash")?,
    );
    forged.push_str(&line);
    set(&forged, &heads_text)?;
    let out = kars(&[])?;
    ensure!(
        out.code == 1 && out.stderr.contains("written by something else"),
        "an appended unsigned record: {}",
        out.combined()
    );
    // Restored: it verifies again.
    set(&records_text, &heads_text)?;
    let out = kars(&["--key", &public_arg, "--expect-head", &good_head])?;
    ensure!(out.success(), "restored: {}", out.combined());
    Ok(())
}
