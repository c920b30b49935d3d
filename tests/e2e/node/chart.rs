//! `helm install` of the chart on the node: the agent runs in the cluster from its image, as
//! the chart's ServiceAccount, and reconciles the template repository served by a Git server
//! on the host end of the node link until the template's sandbox pod runs with its router and
//! egress guard and the router confirms the policy. Then, as a user would: a push announced by
//! a webhook through the agent's Service is applied; `helm upgrade` rolls the agent without
//! re-applying anything; killing the agent in the middle of a sync loses nothing; `helm
//! uninstall` keeps what was applied, or deletes it when `uninstall.prune` says so.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kars_e2e::fixture::{GitDaemon, PolicyRepoFixture};
use kars_e2e::node::{HOST_IP, Images, NODE_NETNS, NodeCluster};
use kars_e2e::{Out, run_to_end, unique_name};
use serde_json::Value;

use super::{Sandbox, copy_tree};

const NAMESPACE: &str = "kars-gitops-system";
const RELEASE: &str = "kars-gitops";
const WEBHOOK_SECRET: &str = "e2e-node-webhook-secret";

struct Installed<'a> {
    node: &'a NodeCluster,
    repo: PolicyRepoFixture,
    /// The PolicyRepo's name.
    name: String,
    values: std::path::PathBuf,
    /// The key of the signer who approves SRE actions.
    approver: std::path::PathBuf,
}

impl Installed<'_> {
    fn helm(&self, args: &[&str]) -> Result<Out> {
        let mut c = crate::chart::helm()?;
        c.args(args)
            .arg("--kubeconfig")
            .arg(self.node.kubeconfig())
            .args(["--namespace", NAMESPACE]);
        run_to_end(&mut c)
    }

    fn install(&self, extra: &[&str]) -> Result<()> {
        let chart = crate::chart::chart_dir();
        let mut args = vec![
            "install",
            RELEASE,
            chart.to_str().context("chart path")?,
            "--create-namespace",
            "--skip-crds",
            "--wait",
            "--timeout",
            "3m",
            "--values",
            self.values.to_str().context("values path")?,
        ];
        args.extend_from_slice(extra);
        let out = self.helm(&args)?;
        if !out.success() {
            let describe = self
                .node
                .kubectl()
                .args(["-n", NAMESPACE, "describe", "pods"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            bail!(
                "helm install: {}\n{describe}\nagent logs:\n{}",
                out.combined(),
                self.logs().unwrap_or_default()
            );
        }
        ensure!(
            out.stdout.contains("kars status -n kars-gitops-system"),
            "NOTES.txt does not say what to run next: {}",
            out.stdout
        );
        Ok(())
    }

    fn policyrepo(&self, path: &str) -> Result<String> {
        Ok(self
            .node
            .kubectl_ok(&[
                "-n",
                NAMESPACE,
                "get",
                "policyrepo",
                &self.name,
                "-o",
                &format!("jsonpath={path}"),
            ])
            .unwrap_or_default()
            .trim()
            .to_string())
    }

    /// Waits until the PolicyRepo has applied `commit` and is Ready (routers confirming).
    fn wait_ready_at(&self, commit: &str, secs: u64) -> Result<Duration> {
        let t0 = Instant::now();
        loop {
            let applied = self.policyrepo("{.status.lastAppliedRevision}")?;
            let ready = self.policyrepo("{.status.conditions[?(@.type==\"Ready\")].status}")?;
            if applied.contains(commit) && ready == "True" {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                let reason =
                    self.policyrepo("{.status.conditions[?(@.type==\"Ready\")].message}")?;
                bail!(
                    "PolicyRepo {} not Ready at {commit} after {secs}s: applied {applied:?}, Ready {ready:?}: {reason}\nagent logs:\n{}",
                    self.name,
                    self.logs().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// The running agent pods (not terminating).
    fn agent_pods(&self) -> Result<Vec<Value>> {
        let out = self.node.kubectl_ok(&[
            "-n",
            NAMESPACE,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=kars-gitops,app.kubernetes.io/component=agent",
            "-o",
            "json",
        ])?;
        let v: Value = serde_json::from_str(&out)?;
        Ok(v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .cloned()
            .collect())
    }

    fn logs(&self) -> Result<String> {
        self.node.kubectl_ok(&[
            "-n",
            NAMESPACE,
            "logs",
            "-l",
            "app.kubernetes.io/component=agent",
            "--tail=200",
        ])
    }

    /// POSTs a Gitea push hook to the agent's Service from the node's network namespace (where
    /// kube-proxy routes the ClusterIP); returns the HTTP status.
    fn push_hook(&self, secret: &str) -> Result<String> {
        let ip = self.node.kubectl_ok(&[
            "-n",
            NAMESPACE,
            "get",
            "svc",
            RELEASE,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])?;
        let body = r#"{"ref":"refs/heads/main"}"#;
        let mac = hex::encode(kars_gitops_agent::webhook::hmac_sha256(
            secret.as_bytes(),
            body.as_bytes(),
        ));
        let out = run_to_end(
            std::process::Command::new("nsenter")
                .arg(format!("--net=/run/netns/{NODE_NETNS}"))
                .args(["--", "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}"])
                .args(["--max-time", "10", "-X", "POST"])
                .args(["-H", "Content-Type: application/json"])
                .args(["-H", &format!("X-Gitea-Signature: {mac}")])
                .args([
                    "-H",
                    &format!("X-Gitea-Delivery: {}", unique_name("delivery")),
                ])
                .args(["--data", body])
                .arg(format!("http://{}:8080/hooks/gitea", ip.trim())),
        )?;
        Ok(out.stdout.trim().to_string())
    }

    fn head(&self) -> Result<String> {
        Ok(self
            .repo
            .work
            .git(&["rev-parse", "HEAD"])?
            .trim()
            .to_string())
    }
}

/// The whole flow (see the module doc).
pub fn helm_installed_agent(node: &NodeCluster, images: &Images) -> Result<()> {
    let prefix = unique_name("template");
    let repo = PolicyRepoFixture::new(&prefix, &[])?;
    let template = kars_e2e::workspace_root().join("repo-template");
    for dir in ["agents", "policies"] {
        copy_tree(&template.join(dir), &repo.work.path.join(dir))?;
    }
    let kars_yaml = std::fs::read_to_string(template.join("kars.yaml"))?
        .replace(
            "router: ghcr.io/kars-gitops/kars-router:0.1.0",
            &format!("router: \"{}\"", images.get("KARS_IMAGE_ROUTER")?),
        )
        .replace(
            "egressGuard: ghcr.io/kars-gitops/kars-egress-guard:0.1.0",
            &format!(
                "egressGuard: \"{}\"\n    runtimes:\n      OpenClaw: \"{}\"",
                images.get("KARS_IMAGE_EGRESS_GUARD")?,
                images.get("KARS_IMAGE_TEST_AGENT")?
            ),
        );
    ensure!(
        kars_yaml.contains("OpenClaw: \"kars.local/"),
        "the template's kars.yaml changed: {kars_yaml}"
    );
    repo.work.write("kars.yaml", &kars_yaml)?;
    repo.commit_and_push("the template, with this cluster's images")?;
    let name = {
        // The PolicyRepo is named after kars.yaml (the template's own name).
        let cfg = std::fs::read_to_string(repo.work.path.join("kars.yaml"))?;
        ensure!(cfg.contains("name: kars-policies"), "{cfg}");
        "kars-policies".to_string()
    };
    // Pods reach the host end of the node link, so the Git server listens there.
    let daemon = GitDaemon::start_on(repo.path(), HOST_IP)?;
    let url = format!("git://{HOST_IP}:{}/remote.git", daemon.port);

    let agent_image = images.get("KARS_IMAGE_GITOPS_AGENT")?;
    let (image_repo, digest) = agent_image.split_once('@').context("image by digest")?;
    // A second trusted signer approves SRE actions the first one proposes.
    let approver = repo.keys.ssh("approver", "ed25519", "approver@kars.test")?;
    let signers = format!(
        "{}approver@kars.test namespaces=\"git\" {}\n",
        std::fs::read_to_string(&repo.allowed_signers)?,
        repo.keys.ssh_public(&approver)?.trim()
    );
    let values = repo.path().join("values.yaml");
    std::fs::write(
        &values,
        format!(
            "repository:\n  url: \"{url}\"\n  name: {name}\n  interval: 1h\n  retryInterval: 2s\ntrust:\n  allowedSigners: {}\nimage:\n  repository: {image_repo}\n  digest: \"{digest}\"\n  pullPolicy: Never\nwebhook:\n  secret: {WEBHOOK_SECRET}\nleaderElection:\n  leaseDuration: 6s\nresources:\n  requests: {{cpu: 50m, memory: 64Mi}}\n",
            serde_json::to_string(&signers)?
        ),
    )?;
    let i = Installed {
        node,
        repo,
        name,
        values,
        approver,
    };
    let t0 = Instant::now();
    i.install(&[])?;
    let head = i.head()?;
    let took = i.wait_ready_at(&head, 180)?;
    eprintln!(
        "[node] helm install → agent Ready (template sandbox running, router confirming) in {:.1}s",
        (t0.elapsed()).as_secs_f64().max(took.as_secs_f64())
    );

    // The agent pod: from the image by digest, as the chart's ServiceAccount, hardened.
    let pods = i.agent_pods()?;
    ensure!(pods.len() == 1, "agent pods: {}", pods.len());
    let pod = &pods[0];
    ensure!(
        pod["spec"]["serviceAccountName"] == "kars-gitops",
        "the agent runs as {}",
        pod["spec"]["serviceAccountName"]
    );
    ensure!(
        pod["spec"]["containers"][0]["image"] == agent_image,
        "agent image {}",
        pod["spec"]["containers"][0]["image"]
    );
    ensure!(
        pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] == true
            && pod["spec"]["securityContext"]["runAsNonRoot"] == true,
        "not hardened: {}",
        pod["spec"]
    );
    // What it applied: the template's sandbox pod with the egress guard and the router.
    let sb = Sandbox {
        node,
        namespace: "kars-hello-agent".into(),
        name: "hello-agent".into(),
    };
    let sandbox_pod = sb.wait_ready(120)?;
    let names = |key: &str| -> Vec<String> {
        sandbox_pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    ensure!(
        names("initContainers") == ["egress-guard"]
            && names("containers") == ["openclaw", "inference-router"],
        "sandbox pod containers: init {:?}, {:?}",
        names("initContainers"),
        names("containers")
    );
    ensure!(
        sandbox_pod["spec"]["securityContext"]["seccompProfile"]["localhostProfile"]
            == "profiles/kars-strict.json",
        "the enhanced sandbox runs under kars-strict: {}",
        sandbox_pod["spec"]["securityContext"]
    );
    let applied_by = node.kubectl_ok(&[
        "-n",
        "kars-hello-agent",
        "get",
        "deploy",
        "hello-agent",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ])?;
    ensure!(
        applied_by.contains("kars-gitops"),
        "the sandbox Deployment was not applied by the agent: managers {applied_by}"
    );

    another_sandbox_cannot_reach_its_router(node, &sb)?;
    webhook_push_is_applied(&i)?;
    sre_action_runs_with_the_charts_rights(&i)?;
    upgrade_rolls_without_reapplying(&i)?;
    killed_mid_sync_loses_nothing(&i)?;
    audit_chains_are_signed_in_the_pods(&i, &sb)?;
    uninstall_keeps_or_prunes(&i)?;
    drop(daemon);
    Ok(())
}

/// A signed push, announced by a Gitea webhook through the agent's Service, is applied (the
/// interval is 1 h, so only the hook can have started that sync); a forged hook is refused.
fn webhook_push_is_applied(i: &Installed) -> Result<()> {
    let forged = i.push_hook("not-the-secret")?;
    ensure!(forged == "401", "a forged webhook answered {forged}");
    let sandbox = i.repo.work.path.join("agents/hello-agent/sandbox.yaml");
    let text = std::fs::read_to_string(&sandbox)?;
    std::fs::write(
        &sandbox,
        text.replace(
            "      - host: api.github.com\n        port: 443\n",
            "      - host: api.github.com\n        port: 443\n      - host: pushed.kars.test\n        port: 443\n",
        ),
    )?;
    let commit = i.repo.commit_and_push("allow pushed.kars.test")?;
    let t0 = Instant::now();
    let status = i.push_hook(WEBHOOK_SECRET)?;
    ensure!(status == "202", "the webhook answered {status}");
    let took = i.wait_ready_at(&commit, 90)?;
    eprintln!(
        "[node] webhook through the Service → applied and enforced in {:.1}s",
        t0.elapsed().as_secs_f64().max(took.as_secs_f64())
    );
    Ok(())
}

/// An SRE action proposed by one signer and approved by another runs once in the cluster, by
/// the helm-installed agent with nothing but the chart's rights (the one-shot RoleBinding, the
/// impersonated sre-writer, the admission policy), and its namespace recovers for real: the
/// scaled Deployment's new pod runs on the node.
fn sre_action_runs_with_the_charts_rights(i: &Installed) -> Result<()> {
    let ns = "kars-hello-agent";
    let manifest = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: sre-target, namespace: {ns}}}\nspec:\n  replicas: 1\n  selector: {{matchLabels: {{app: sre-target}}}}\n  template:\n    metadata: {{labels: {{app: sre-target}}}}\n    spec:\n      securityContext: {{runAsNonRoot: true, runAsUser: 65535}}\n      containers: [{{name: pause, image: \"kars.local/pause:3.10\", imagePullPolicy: Never}}]\n"
    );
    let out = kars_e2e::run_with_stdin(i.node.kubectl().args(["apply", "-f", "-"]), &manifest)?;
    ensure!(out.success(), "target Deployment: {}", out.combined());
    let action = |state: &str| {
        format!(
            "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSREAction\nmetadata: {{name: scale-target, namespace: kars-sre}}\nspec:\n  action:\n    type: ScaleDeployment\n    params: {{namespace: {ns}, name: sre-target, replicas: 2}}\n  approval: {{state: {state}}}\n  diagnosis: the target needs a second replica\n  rationale: load test\n  ttlMinutes: 30\n"
        )
    };
    i.repo
        .work
        .write("sre/actions/scale-target.yaml", &action("Pending"))?;
    i.repo.commit_and_push("propose scale-target")?;
    i.repo
        .work
        .write("sre/actions/scale-target.yaml", &action("Approved"))?;
    let commit = i.repo.work.commit(
        "approve scale-target",
        "approver@kars.test",
        &kars_e2e::git::Signing::Ssh(i.approver.clone()),
    )?;
    i.repo.work.git(&["push", "-q", "origin", "HEAD:main"])?;
    let t0 = Instant::now();
    ensure!(i.push_hook(WEBHOOK_SECRET)? == "202", "webhook refused");
    let phase = |name: &str| {
        i.policyrepo(&format!(
            "{{.status.sreActions[?(@.name==\"{name}\")].phase}}"
        ))
    };
    loop {
        let p = phase("scale-target")?;
        if p == "Recovered" {
            break;
        }
        if t0.elapsed() > Duration::from_secs(120) || p == "Failed" || p == "Refused" {
            bail!(
                "the SRE action is {p:?} after {:.0}s (approval {commit}): {}\nagent logs:\n{}",
                t0.elapsed().as_secs_f64(),
                i.policyrepo("{.status.sreActions}")?,
                i.logs().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "[node] approved SRE action → run by the in-cluster agent and Recovered in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let deploy: Value = serde_json::from_str(&i.node.kubectl_ok(&[
        "-n",
        ns,
        "get",
        "deploy",
        "sre-target",
        "-o",
        "json",
        "--show-managed-fields",
    ])?)?;
    ensure!(
        deploy["spec"]["replicas"] == 2 && deploy["status"]["availableReplicas"] == 2,
        "not scaled and running: {}",
        deploy["status"]
    );
    ensure!(
        deploy["metadata"]["managedFields"]
            .to_string()
            .contains("kars-gitops/sre-action"),
        "not written by the executor"
    );
    let bindings = i
        .node
        .kubectl_ok(&["-n", ns, "get", "rolebindings", "-o", "name"])?;
    ensure!(
        !bindings.contains("kars-sre-write"),
        "the one-shot binding is still there: {bindings}"
    );
    Ok(())
}

/// `helm upgrade` with a changed value replaces the agent pod; the new one finds the state the
/// old one left (the PolicyRepo's applied commit, the generated tokens, the objects) and writes
/// nothing.
fn upgrade_rolls_without_reapplying(i: &Installed) -> Result<()> {
    let before_pod = i.agent_pods()?;
    let old = before_pod
        .first()
        .and_then(|p| p["metadata"]["name"].as_str())
        .unwrap_or_default()
        .to_string();
    // What the old pod left: the applied commit, the generated token (uid and value), the
    // sandbox Deployment (uid and generation).
    let state = || -> Result<(String, String, String)> {
        let get = |kind: &str, name: &str, path: &str| {
            i.node
                .kubectl_ok(&["-n", "kars-hello-agent", "get", kind, name, "-o", path])
        };
        Ok((
            i.policyrepo("{.status.lastAppliedRevision}")?,
            get(
                "secret",
                "router-admin-token",
                "jsonpath={.metadata.uid}{.data.token}",
            )?,
            get(
                "deploy",
                "hello-agent",
                "jsonpath={.metadata.uid}/{.metadata.generation}",
            )?,
        ))
    };
    let (applied, token, deploy) = state()?;
    let out = i.helm(&[
        "upgrade",
        RELEASE,
        crate::chart::chart_dir().to_str().context("chart path")?,
        "--reuse-values",
        "--set",
        "repository.interval=2h",
        "--wait",
        "--timeout",
        "3m",
    ])?;
    ensure!(out.success(), "helm upgrade: {}", out.combined());
    // The old pod is gone and the new one has synced once.
    let deadline = Instant::now() + Duration::from_secs(90);
    let new = loop {
        let pods = i.agent_pods()?;
        let names: Vec<String> = pods
            .iter()
            .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_string))
            .collect();
        if names.len() == 1 && names[0] != old {
            // This pod's own log (a label selector would also pick the old, terminating pod).
            let logs = i
                .node
                .kubectl_ok(&["-n", NAMESPACE, "logs", &names[0]])
                .unwrap_or_default();
            if logs.contains("sync finished") {
                break (names[0].clone(), logs);
            }
        }
        if Instant::now() > deadline {
            bail!(
                "after helm upgrade: agent pods {names:?} (old {old}):\n{}",
                i.logs().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let args = i.node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "get",
        "pod",
        &new.0,
        "-o",
        "jsonpath={.spec.containers[0].args}",
    ])?;
    ensure!(
        args.contains("--interval=2h"),
        "the new pod has the old value: {args}"
    );
    let finished: Vec<&str> = new
        .1
        .lines()
        .filter(|l| l.contains("sync finished"))
        .collect();
    ensure!(
        finished.iter().all(|l| l.contains("\"writes\":0")),
        "the upgraded agent re-applied objects: {finished:?}"
    );
    let (applied_after, token_after, deploy_after) = state()?;
    ensure!(
        applied_after == applied,
        "the applied commit changed across the upgrade"
    );
    ensure!(
        token_after == token,
        "the generated router token changed across the upgrade"
    );
    ensure!(
        deploy_after == deploy,
        "the sandbox Deployment was rewritten: {deploy} → {deploy_after}"
    );
    Ok(())
}

/// A push that adds a second sandbox; the agent pod is killed (SIGKILL, no grace) while that
/// sync is applying — the new KarsSandbox exists, the PolicyRepo does not record the commit
/// yet. The replacement pod takes the Lease over and converges: both sandboxes run, enforced.
fn killed_mid_sync_loses_nothing(i: &Installed) -> Result<()> {
    let from = i.repo.work.path.join("agents/hello-agent");
    let to = i.repo.work.path.join("agents/second-agent");
    copy_tree(&from, &to)?;
    for e in std::fs::read_dir(&to)? {
        let p = e?.path();
        let text = std::fs::read_to_string(&p)?;
        std::fs::write(&p, text.replace("hello-agent", "second-agent"))?;
    }
    let commit = i.repo.commit_and_push("a second agent")?;
    let status = i.push_hook(WEBHOOK_SECRET)?;
    ensure!(status == "202", "the webhook answered {status}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let exists = i
            .node
            .kubectl()
            .args([
                "-n",
                "kars-agents",
                "get",
                "karssandbox",
                "second-agent",
                "-o",
                "name",
            ])
            .output()?
            .status
            .success();
        if exists {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the second sandbox was never applied:\n{}",
                i.logs().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let pod = i
        .agent_pods()?
        .first()
        .and_then(|p| p["metadata"]["name"].as_str().map(str::to_string))
        .context("no agent pod")?;
    i.node.kubectl_ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "pod",
        &pod,
        "--grace-period=0",
        "--force",
    ])?;
    let recorded = i.policyrepo("{.status.lastAppliedRevision}")?;
    ensure!(
        !recorded.contains(&commit),
        "the sync had already finished when the agent was killed; the test proves nothing"
    );
    let t0 = Instant::now();
    let took = i.wait_ready_at(&commit, 180)?;
    eprintln!(
        "[node] agent killed mid-sync → the new pod converged in {:.1}s",
        t0.elapsed().as_secs_f64().max(took.as_secs_f64())
    );
    let inventory = i.policyrepo("{.status.inventory}")?;
    for key in [
        "KarsSandbox|kars-agents|hello-agent",
        "KarsSandbox|kars-agents|second-agent",
    ] {
        ensure!(
            inventory.contains(key),
            "the inventory lost {key}: {inventory}"
        );
    }
    Sandbox {
        node: i.node,
        namespace: "kars-second-agent".into(),
        name: "second-agent".into(),
    }
    .wait_ready(120)?;
    Ok(())
}

/// Both audit chains, as installed: the agent pod's sync log (signed with the seed the chart
/// generated and mounted) checks with `kars audit syncs`, and the template sandbox's router
/// (signing with the generated `router-audit-key` Secret, mounted into it only) signs its head
/// at its interval; its log and heads, copied off the node, check with the public key `kars
/// audit key` prints.
fn audit_chains_are_signed_in_the_pods(i: &Installed, sb: &Sandbox<'_>) -> Result<()> {
    let kars = |args: &[&str]| -> Result<Out> {
        let mut c = kars_e2e::kars_command()?;
        c.args(args).arg("--kubeconfig").arg(i.node.kubeconfig());
        run_to_end(&mut c)
    };
    let syncs = kars(&["audit", "syncs", &i.name, "-n", NAMESPACE, "-o", "json"])?;
    ensure!(syncs.success(), "kars audit syncs: {}", syncs.combined());
    let v: Value = serde_json::from_str(&syncs.stdout)?;
    let head = i.head()?;
    ensure!(
        v["records"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["commit"] == head.as_str())),
        "the agent pod did not record the applied head {head}: {v}"
    );

    // The router signs every 60 s (and when it stops): wait for its first head.
    let pod = sb.pod()?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let dir = i.node.dir().join(format!(
        "node/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/router-audit/audit"
    ));
    let deadline = Instant::now() + Duration::from_secs(75);
    while !dir.join("audit.jsonl.heads").exists() {
        ensure!(
            Instant::now() < deadline,
            "the template sandbox's router signed no audit head within 75 s ({})",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let copy = i.repo.path().join("router-audit");
    std::fs::create_dir_all(&copy)?;
    // The heads first: the log copied after them holds at least what they signed.
    std::fs::copy(
        dir.join("audit.jsonl.heads"),
        copy.join("audit.jsonl.heads"),
    )?;
    std::fs::copy(dir.join("audit.jsonl"), copy.join("audit.jsonl"))?;
    let key = kars(&["audit", "key", &sb.name])?;
    ensure!(
        key.success() && key.stdout.starts_with("-----BEGIN PUBLIC KEY-----"),
        "kars audit key: {}",
        key.combined()
    );
    std::fs::write(copy.join("router.pub"), &key.stdout)?;
    let log = copy.join("audit.jsonl").display().to_string();
    let public = copy.join("router.pub").display().to_string();
    let verified =
        run_to_end(kars_e2e::kars_command()?.args(["audit", "verify", &log, "--key", &public]))?;
    ensure!(
        verified.success() && verified.stdout.contains("signed head(s) by key"),
        "kars audit verify --key: {}",
        verified.combined()
    );
    Ok(())
}

/// `helm uninstall` removes the chart's objects and keeps what the agent applied; reinstalled
/// with `uninstall.prune=true`, the next `helm uninstall` deletes that too.
fn uninstall_keeps_or_prunes(i: &Installed) -> Result<()> {
    let sync_log_key = || {
        i.node.kubectl_ok(&[
            "-n",
            NAMESPACE,
            "get",
            "secret",
            &format!("{RELEASE}-sync-log-key"),
            "-o",
            "jsonpath={.data.ed25519-seed}",
        ])
    };
    let seed_before = sync_log_key()?;
    let out = i.helm(&["uninstall", RELEASE, "--wait", "--timeout", "2m"])?;
    ensure!(out.success(), "helm uninstall: {}", out.combined());
    let gone = |args: &[&str]| -> Result<bool> {
        Ok(!i.node.kubectl().args(args).output()?.status.success())
    };
    for what in [
        vec!["-n", NAMESPACE, "get", "deploy", RELEASE],
        vec!["-n", NAMESPACE, "get", "sa", RELEASE],
        vec!["get", "clusterrole", RELEASE],
        vec!["get", "validatingadmissionpolicy", "kars-gitops-scope"],
    ] {
        ensure!(gone(&what)?, "helm uninstall left {what:?}");
    }
    for kept in [
        vec!["-n", "kars-agents", "get", "karssandbox", "hello-agent"],
        vec!["-n", "kars-hello-agent", "get", "deploy", "hello-agent"],
        vec!["-n", NAMESPACE, "get", "policyrepo", &i.name],
        vec!["get", "crd", "karssandboxes.kars.azure.com"],
    ] {
        ensure!(!gone(&kept)?, "helm uninstall deleted {kept:?}");
    }

    // Installed again, it adopts what is there (same PolicyRepo, nothing re-created), and
    // signs its sync log with the same key (the chart keeps that Secret).
    i.install(&["--set", "uninstall.prune=true"])?;
    i.wait_ready_at(&i.head()?, 180)?;
    ensure!(
        !seed_before.trim().is_empty() && sync_log_key()? == seed_before,
        "the sync log key changed across helm uninstall and install"
    );
    let out = i.helm(&["uninstall", RELEASE, "--wait", "--timeout", "4m"])?;
    ensure!(out.success(), "helm uninstall (prune): {}", out.combined());
    for what in [
        vec!["-n", "kars-agents", "get", "karssandbox", "hello-agent"],
        vec!["-n", "kars-agents", "get", "karssandbox", "second-agent"],
        vec!["-n", "kars-hello-agent", "get", "deploy", "hello-agent"],
        vec!["-n", NAMESPACE, "get", "policyrepo", &i.name],
    ] {
        ensure!(gone(&what)?, "uninstall.prune=true left {what:?}");
    }
    Ok(())
}

/// Who may call a sandbox's router, from a second sandbox's pod: the first scenario's sandbox
/// still runs, and from the template sandbox's agent container neither its router port directly
/// (the egress guard drops it) nor through this sandbox's own router (an internal address) is
/// reachable; the rendered NetworkPolicy admits other sandboxes only to the runtime's gateway
/// ports, not to 8443.
fn another_sandbox_cannot_reach_its_router(node: &NodeCluster, sb: &Sandbox<'_>) -> Result<()> {
    let pods: Value = serde_json::from_str(&node.kubectl_ok(&[
        "get",
        "pods",
        "-A",
        "-l",
        "kars.azure.com/component=sandbox",
        "-o",
        "json",
    ])?)?;
    let other = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| {
            p["metadata"]["namespace"] != "kars-hello-agent" && p["status"]["podIP"].is_string()
        })
        .context("no second sandbox pod runs")?;
    let ip = other["status"]["podIP"].as_str().unwrap_or_default();
    let target = if ip.contains(':') {
        format!("[{ip}]:8443")
    } else {
        format!("{ip}:8443")
    };
    let direct = sb.agent_in("openclaw", &["tcp", &target])?;
    ensure!(
        direct["ok"] != true,
        "the other sandbox's router was reachable directly: {direct}"
    );
    let proxied = sb.agent_in("openclaw", &["connect", "127.0.0.1:8444", &target])?;
    ensure!(
        proxied["ok"] != true,
        "the other sandbox's router was reachable through this router: {proxied}"
    );
    let np: Value = serde_json::from_str(&node.kubectl_ok(&[
        "-n",
        "kars-hello-agent",
        "get",
        "networkpolicy",
        "sandbox-policy",
        "-o",
        "json",
    ])?)?;
    let from_sandboxes: Vec<&Value> = np["spec"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r.to_string()
                .contains("\"kars.azure.com/role\":\"sandbox\"")
        })
        .flat_map(|r| r["ports"].as_array().into_iter().flatten())
        .collect();
    ensure!(
        !from_sandboxes.is_empty() && from_sandboxes.iter().all(|p| p["port"] != 8443),
        "other sandboxes may reach: {from_sandboxes:?}"
    );
    eprintln!(
        "[node] a second sandbox's pod reaches neither this router's port nor, through its own router, this one"
    );
    Ok(())
}
