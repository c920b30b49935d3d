//! A policy repository for end-to-end tests: agents with unique names, signed commits, a bare
//! remote to push to, and the trust files that go with it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use kars_gitops_agent::apply::ApplyOptions;
use kars_gitops_agent::prune::PruneOptions;
use kars_gitops_agent::source::Credentials;
use kars_gitops_agent::sync::SyncConfig;
use kars_gitops_agent::verify;

use crate::git::{Keys, Repo, Signing, run};

/// A signed policy repository and its bare remote.
pub struct PolicyRepoFixture {
    /// Temporary directory holding everything.
    pub dir: tempfile::TempDir,
    /// Keys.
    pub keys: Keys,
    /// The working repository.
    pub work: Repo,
    /// The bare remote (`file://` URL: [`PolicyRepoFixture::file_url`]).
    pub remote: PathBuf,
    /// The signer's key.
    pub signer: PathBuf,
    /// allowed_signers for the signer.
    pub allowed_signers: PathBuf,
    /// Unique prefix of every name in this repository.
    pub prefix: String,
}

/// The YAML of one agent folder (BYO runtime, governance on with its own ToolPolicy).
pub fn agent_files(agent: &str, namespace: &str, hosts: &[&str]) -> Vec<(String, String)> {
    let endpoints: String = hosts
        .iter()
        .map(|h| format!("      - {{host: {h}, port: 443}}\n"))
        .collect();
    vec![
        (
            format!("agents/{agent}/sandbox.yaml"),
            format!(
                "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata:\n  name: {agent}\n  namespace: {namespace}\nspec:\n  runtime:\n    kind: BYO\n    byo: {{image: example.invalid/agent:1, contractVersion: v1}}\n  sandbox: {{isolation: standard}}\n  inferenceRef: {{name: {agent}-inference}}\n  governance:\n    enabled: true\n    toolPolicyRef: {{name: {agent}-tools}}\n  networkPolicy:\n    egressMode: Strict\n    allowedEndpoints:\n{endpoints}"
            ),
        ),
        (
            format!("agents/{agent}/inference.yaml"),
            format!(
                "apiVersion: kars.azure.com/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: {agent}-inference\n  namespace: {namespace}\nspec:\n  appliesTo: {{sandboxName: {agent}}}\n  modelPreference:\n    primary: {{provider: azure-openai, deployment: gpt-4.1}}\n"
            ),
        ),
        (
            format!("agents/{agent}/tools.yaml"),
            format!(
                "apiVersion: kars.azure.com/v1alpha1\nkind: ToolPolicy\nmetadata:\n  name: {agent}-tools\n  namespace: {namespace}\nspec:\n  appliesTo:\n    sandboxMatchLabels: {{kars.azure.com/sandbox: {agent}}}\n  agtProfile:\n    inline: |\n      version: \"1.0\"\n      agent: {agent}\n      policies: []\n"
            ),
        ),
    ]
}

impl PolicyRepoFixture {
    /// `kubectl get policyrepo -o jsonpath=<path>` of this repository's PolicyRepo.
    pub fn policyrepo_jsonpath(&self, cluster: &crate::Cluster, path: &str) -> Result<String> {
        self.policyrepo_jsonpath_with(cluster.kubectl_command(), path)
    }

    /// [`PolicyRepoFixture::policyrepo_jsonpath`] with a kubectl command of any cluster.
    pub fn policyrepo_jsonpath_with(
        &self,
        mut kubectl: std::process::Command,
        path: &str,
    ) -> Result<String> {
        let out = kubectl
            .args([
                "-n",
                &format!("{}-status", self.prefix),
                "get",
                "policyrepo",
                &self.prefix,
                "-o",
                &format!("jsonpath={path}"),
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The KarsSandbox objects of this repository's namespace.
    pub fn sandboxes(&self, client: &kube::Client) -> kube::Api<kube::api::DynamicObject> {
        kube::Api::namespaced_with(
            client.clone(),
            &self.namespace(),
            &kube::api::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
                kars_contract::KARS_GROUP,
                "v1alpha1",
                "KarsSandbox",
            )),
        )
    }

    /// A `kars-gitops-agent` command for this repository: `source` (a URL or path), its
    /// PolicyRepo (`<prefix>` in `<prefix>-status`), the cluster of `kubeconfig`, the signer,
    /// `cache` as the fetch cache, no health wait, enforcement best-effort (no node runs pods
    /// beside the shared control plane).
    pub fn agent_command(
        &self,
        source: &str,
        kubeconfig: &Path,
        cache: &Path,
    ) -> std::process::Command {
        let mut c = std::process::Command::new(
            crate::workspace_root().join("target/debug/kars-gitops-agent"),
        );
        c.arg("--repo")
            .arg(source)
            .args(["--branch", "main", "--name", &self.prefix, "--namespace"])
            .arg(format!("{}-status", self.prefix))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .arg("--allowed-signers")
            .arg(&self.allowed_signers)
            .arg("--cache-dir")
            .arg(cache)
            .args(["--health-timeout", "0s", "--enforcement", "best-effort"]);
        c
    }

    /// A repository named `<prefix>` whose objects live in namespace `<prefix>-ns`, with
    /// `agents` (names are prefixed), committed and pushed with a signature.
    pub fn new(prefix: &str, agents: &[&str]) -> Result<PolicyRepoFixture> {
        let dir = tempfile::tempdir()?;
        let keys = Keys::new(dir.path())?;
        let signer = keys.ssh("signer", "ed25519", "ops@kars.test")?;
        let allowed_signers =
            keys.allowed_signers("allowed_signers", &[("ops@kars.test", &signer, "")])?;
        let work = Repo::init(&dir.path().join("work"), &keys)?;
        let remote = dir.path().join("remote.git");
        run(std::process::Command::new("git")
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(&remote))?;
        work.git(&["remote", "add", "origin", &remote.to_string_lossy()])?;
        let f = PolicyRepoFixture {
            dir,
            keys,
            work,
            remote,
            signer,
            allowed_signers,
            prefix: prefix.to_string(),
        };
        f.work.write(
            "kars.yaml",
            &format!(
                "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {{name: {prefix}}}\nspec:\n  defaultNamespace: {prefix}-ns\n  clusters: [{{name: test, paths: [agents, policies]}}]\n  providers: {{azure-openai: {{endpoint: \"https://example.openai.azure.com/openai/v1\"}}}}\n"
            ),
        )?;
        for a in agents {
            f.add_agent(a, &["api.example.com"])?;
        }
        f.commit_and_push("initial policies")?;
        Ok(f)
    }

    /// The namespace of the repository's kars objects.
    pub fn namespace(&self) -> String {
        format!("{}-ns", self.prefix)
    }

    /// The full (prefixed) name of an agent.
    pub fn agent(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Writes an agent folder.
    pub fn add_agent(&self, short: &str, hosts: &[&str]) -> Result<()> {
        for (path, body) in agent_files(&self.agent(short), &self.namespace(), hosts) {
            self.work.write(&path, &body)?;
        }
        Ok(())
    }

    /// Removes an agent folder.
    pub fn remove_agent(&self, short: &str) -> Result<()> {
        self.work.remove(&format!("agents/{}", self.agent(short)))
    }

    /// Commits everything signed by the trusted signer and pushes; returns the commit id.
    pub fn commit_and_push(&self, message: &str) -> Result<String> {
        let id = self
            .work
            .commit(message, "ops@kars.test", &Signing::Ssh(self.signer.clone()))?;
        self.work.git(&["push", "-q", "origin", "HEAD:main"])?;
        Ok(id)
    }

    /// The commit id of the working repository's HEAD.
    pub fn head(&self) -> Result<String> {
        Ok(self.work.git(&["rev-parse", "HEAD"])?.trim().to_string())
    }

    /// Commits unsigned and pushes.
    pub fn commit_unsigned_and_push(&self, message: &str) -> Result<String> {
        let id = self.work.commit(message, "ops@kars.test", &Signing::None)?;
        self.work.git(&["push", "-q", "origin", "HEAD:main"])?;
        Ok(id)
    }

    /// `file://` URL of the remote.
    pub fn file_url(&self) -> String {
        format!("file://{}", self.remote.display())
    }

    /// A sync configuration for `source`, with short health waits for tests and enforcement
    /// best-effort (set `enforcement` to `Required` where a node runs the pods).
    pub fn config(&self, source: &str) -> Result<SyncConfig> {
        let trust = verify::load_policy(None, Some(&self.allowed_signers), None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(sync_config(
            source,
            trust,
            self.dir.path().join("cache"),
            &format!("{}-status", self.prefix),
            &self.prefix,
        ))
    }

    /// The temporary directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A sync configuration for tests: `source` on branch main, verified with `trust`, recorded
/// in PolicyRepo `status_namespace/name`, no health wait, enforcement best-effort, no SRE
/// executor.
pub fn sync_config(
    source: &str,
    trust: verify::TrustPolicy,
    cache_dir: PathBuf,
    status_namespace: &str,
    name: &str,
) -> SyncConfig {
    SyncConfig {
        source: source.to_string(),
        branch: Some("main".into()),
        cluster: None,
        trust,
        credentials: Credentials::default(),
        cache_dir,
        status_namespace: status_namespace.to_string(),
        name: name.to_string(),
        apply: ApplyOptions::default(),
        prune: PruneOptions::default(),
        health_timeout: Duration::ZERO,
        since_override: None,
        bundles: Default::default(),
        progress: Default::default(),
        enforcement: kars_gitops_agent::enforcement::Mode::BestEffort,
        sre: Default::default(),
        sync_log: None,
        render_memo: None,
        live_view: None,
    }
}

/// `git daemon` serving `base` on a free loopback port; stopped when dropped.
pub struct GitDaemon {
    child: std::process::Child,
    /// The port.
    pub port: u16,
}

impl GitDaemon {
    /// Starts `git daemon --export-all --base-path=<base>` on 127.0.0.1.
    pub fn start(base: &Path) -> Result<GitDaemon> {
        GitDaemon::start_on(base, "127.0.0.1")
    }

    /// The same on `ip` (e.g. the host end of the node link, which pods reach).
    pub fn start_on(base: &Path, ip: &str) -> Result<GitDaemon> {
        let port = std::net::TcpListener::bind((ip, 0))?.local_addr()?.port();
        let child = std::process::Command::new("git")
            .args(["daemon", "--reuseaddr", "--export-all"])
            .arg(format!("--listen={ip}"))
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect((ip, port)).is_ok() {
                return Ok(GitDaemon { child, port });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("git daemon did not start on port {port}")
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
