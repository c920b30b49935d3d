//! Test support for the end-to-end suite: one real control plane per test run, a fresh
//! namespace per test, and teardown that happens even when tests panic or the run is killed.
//!
//! The control plane is the one `ci/cluster.sh` starts (etcd + kube-apiserver +
//! kube-controller-manager on free loopback ports). It is started lazily by the first test
//! that needs it and stopped when the test binary ends; a watchdog process stops it too if the
//! test binary dies without running its teardown (SIGKILL, abort).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, bail};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The repository root (parent of `tests/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Out {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Out {
    /// True when it exited 0.
    pub fn success(&self) -> bool {
        self.code == 0
    }

    /// Standard output followed by standard error.
    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// A command running the `kars` CLI built by `cargo build` (fails when it is not built), with
/// `KARS_ENFORCEMENT=best-effort`: the shared control plane has no node, so no router pod ever
/// runs there and Ready cannot wait for one (the node tests use `required`).
pub fn kars_command() -> Result<Command> {
    let bin = workspace_root().join("target/debug/kars");
    anyhow::ensure!(
        bin.exists(),
        "{} is not built (cargo build -p kars-cli)",
        bin.display()
    );
    let mut c = Command::new(bin);
    c.env("KARS_ENFORCEMENT", "best-effort");
    Ok(c)
}

/// A benchmark figure's machine-readable line on stdout: `name value unit` (`kars-bench`
/// prints one after its text for every figure it measured).
pub fn figure(name: &str, value: f64, unit: &str) {
    println!("{name} {value:.3} {unit}");
}

/// Runs `cmd` to the end and keeps what it printed.
pub fn run_to_end(cmd: &mut Command) -> Result<Out> {
    let out = cmd.output().context("running a command")?;
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs `cmd` with `input` on its stdin, to the end, and keeps what it printed.
pub fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<Out> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running a command")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Idempotent.
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A running local control plane.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
static STARTED: Mutex<bool> = Mutex::new(false);

impl Cluster {
    /// The shared control plane of this test run, started on first use.
    pub fn shared() -> Result<&'static Cluster> {
        CLUSTER
            .get_or_init(|| {
                let started = Cluster::start().map_err(|e| format!("{e:#}"));
                if let Ok(mut s) = STARTED.lock() {
                    *s = started.is_ok();
                }
                started
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("the local control plane did not start: {e}"))
    }

    /// Stops the shared control plane if this run started one. Call at the end of `main`.
    /// Its state directory (logs included) is kept when `keep_state` is true (failed runs).
    pub fn shutdown_shared(keep_state: bool) {
        if let Some(Ok(c)) = CLUSTER.get() {
            c.stop();
            if keep_state {
                eprintln!("[e2e] control-plane logs kept in {}/logs", c.dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&c.dir);
            }
        }
    }

    fn start() -> Result<Cluster> {
        let root = workspace_root();
        let dir = root
            .join("target")
            .join("e2e")
            .join(format!("cluster-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let script = root.join("ci/cluster.sh");
        eprintln!(
            "[e2e] starting the local control plane in {}",
            dir.display()
        );
        let status = Command::new("bash")
            .arg(&script)
            .arg("up")
            .arg(&dir)
            .stdin(Stdio::null())
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!(
                "{} up {} failed ({status}); see {}/logs",
                script.display(),
                dir.display(),
                dir.display()
            );
        }
        down_when_this_process_dies(&dir)?;
        Ok(Cluster { dir })
    }

    fn stop(&self) {
        let script = workspace_root().join("ci/cluster.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("down")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .status();
    }

    /// The admin kubeconfig file.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The cluster's state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kube client for the admin user. Create one per test (clients belong to a runtime).
    pub async fn client(&self) -> Result<kube::Client> {
        init_crypto();
        let kc = Kubeconfig::read_from(self.kubeconfig())?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Waits (up to 60 s) until the CRDs selected by `args` are Established. `kubectl wait`
    /// fails at once (".status.conditions accessor error") when it reads a CRD before the
    /// apiserver wrote any status, so this retries until the deadline.
    pub fn wait_established(&self, what: &str, args: &[&str]) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let mut full = vec!["wait", "--for=condition=Established", "--timeout=30s"];
            full.extend_from_slice(args);
            let (ok, _, err) = self.kubectl(&full)?;
            if ok {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                bail!("{what} not established: {err}");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// A pinned kubectl command for this cluster.
    pub fn kubectl_command(&self) -> Command {
        let mut c = Command::new(
            tool_path("control-plane", "kubectl").unwrap_or_else(|_| "kubectl".into()),
        );
        c.env("KUBECONFIG", self.kubeconfig());
        c
    }

    /// Runs the pinned kubectl against this cluster; returns (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> Result<(bool, String, String)> {
        let out = Command::new(tool_path("control-plane", "kubectl")?)
            .env("KUBECONFIG", self.kubeconfig())
            .args(args)
            .output()
            .context("running kubectl")?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// Path of a tool built by `ci/build-tools.sh` (tool set `set`, binary `name`).
pub fn tool_path(set: &str, name: &str) -> Result<PathBuf> {
    let out = Command::new("bash")
        .arg(workspace_root().join("ci/build-tools.sh"))
        .args(["print-dir", set])
        .output()
        .context("running ci/build-tools.sh print-dir")?;
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let path = PathBuf::from(dir).join(name);
    if !path.exists() {
        bail!(
            "{} is not built; run ci/build-tools.sh {set}",
            path.display()
        );
    }
    Ok(path)
}

/// One HTTP/1.1 request on a new loopback connection to `port` (with `Connection: close` and
/// the body's length added); returns the status code and the response body.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(s, "{head}Content-Length: {}\r\n\r\n{body}", body.len())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {out:?}"))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// A control plane of its own (fault tests, benchmarks), stopped when dropped; the shared one
/// of [`Cluster::shared`] must keep running for the other tests.
pub struct PrivateCluster {
    dir: tempfile::TempDir,
}

impl PrivateCluster {
    fn cluster_sh(&self, verb: &str) -> Result<bool> {
        Ok(Command::new("bash")
            .arg(workspace_root().join("ci/cluster.sh"))
            .arg(verb)
            .arg(self.dir.path())
            .status()?
            .success())
    }

    /// Starts one, with the kars CRDs and the PolicyRepo CRD installed and Established.
    pub fn up() -> Result<PrivateCluster> {
        let c = PrivateCluster {
            dir: tempfile::tempdir()?,
        };
        if !c.cluster_sh("up")? {
            bail!("the private control plane did not start");
        }
        install_crds(|| c.kubectl())?;
        Ok(c)
    }

    /// Its kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// Its state directory (`run/<component>.pid`, logs, certificates).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A kubectl command for it.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(
            tool_path("control-plane", "kubectl").unwrap_or_else(|_| "kubectl".into()),
        );
        c.env("KUBECONFIG", self.kubeconfig());
        c
    }

    /// Stops it (etcd keeps its data).
    pub fn stop(&self) -> Result<()> {
        self.cluster_sh("down")?;
        Ok(())
    }

    /// Starts it again after [`PrivateCluster::stop`], on the same data.
    pub fn start_again(&self) -> Result<()> {
        if !self.cluster_sh("up")? {
            bail!("the private control plane did not start again");
        }
        Ok(())
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Starts a watchdog that runs `ci/cluster.sh down DIR` once this process is gone, so a crashed
/// or killed test run still stops what it started (and, with a node, cleans the machine).
pub fn down_when_this_process_dies(dir: &Path) -> Result<()> {
    run_when_this_process_dies(&workspace_root().join("ci/cluster.sh"), dir)
}

/// Starts a detached watchdog that runs `bash SCRIPT down DIR` once this process is gone (a
/// crashed or killed test run leaves nothing running).
pub fn run_when_this_process_dies(script: &Path, dir: &Path) -> Result<()> {
    let watchdog = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; bash '{script}' down '{dir}' >/dev/null 2>&1",
        pid = std::process::id(),
        script = script.display(),
        dir = dir.display()
    );
    Command::new("setsid")
        .args(["sh", "-c", &watchdog])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting a watchdog")?;
    Ok(())
}

/// Installs the kars CRDs and the PolicyRepo CRD with `kubectl` (a fresh command per call) and
/// waits until every CRD is Established.
pub fn install_crds(kubectl: impl Fn() -> Command) -> Result<()> {
    // The chart carries upstream's kars CRDs (byte-identical to renderer/upstream/crds, a test
    // checks) and the PolicyRepo CRD.
    let out = kubectl()
        .args(["apply", "--server-side", "-f"])
        .arg(workspace_root().join("charts/kars-gitops/crds"))
        .output()?;
    if !out.status.success() {
        bail!("installing CRDs: {}", String::from_utf8_lossy(&out.stderr));
    }
    // `kubectl wait` fails at once on a CRD without status yet: retry up to 60 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = kubectl()
            .args([
                "wait",
                "--for=condition=Established",
                "--timeout=30s",
                "crd",
                "--all",
            ])
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            bail!(
                "CRDs not established: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique, DNS-label-safe name for a test's objects: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}-{}-{n}",
        kars_contract::dns_label_of(prefix, 40),
        std::process::id() % 100_000
    )
}

/// Runs an async test body on its own runtime and returns its result.
pub fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    block_on_value(f)?
}

/// Runs a future on its own runtime and returns its output.
pub fn block_on_value<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("building a tokio runtime")?
        .block_on(f))
}

/// A namespace owned by one test, deleted when dropped (without waiting).
pub struct TestNamespace {
    name: String,
    cluster: &'static Cluster,
}

impl TestNamespace {
    /// Creates a fresh namespace named after the test.
    pub fn create(cluster: &'static Cluster, test: &str) -> Result<TestNamespace> {
        let name = unique_name(test);
        let (ok, _, err) = cluster.kubectl(&["create", "namespace", &name])?;
        if !ok {
            bail!("creating namespace {name}: {err}");
        }
        Ok(TestNamespace { name, cluster })
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = self
            .cluster
            .kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

pub mod dns;
pub mod fixture;
pub mod forge;
pub mod git;
pub mod golden;
pub mod node;
pub mod oci;
pub mod pki;
pub mod router_bench;

static CRDS_INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

/// Installs the chart's CRDs (upstream kars' and ours, `charts/kars-gitops/crds`) into the
/// shared control plane, once per run, and waits until
/// they are Established.
pub fn install_kars_crds(cluster: &'static Cluster) -> Result<()> {
    CRDS_INSTALLED
        .get_or_init(|| {
            // The chart's crds/ holds upstream's (byte-identical to renderer/upstream/crds, a
            // test checks) and ours.
            let dirs = [workspace_root().join("charts/kars-gitops/crds")];
            let run = || -> Result<()> {
                for dir in &dirs {
                    let path = dir.to_string_lossy();
                    let (ok, _, err) = cluster.kubectl(&[
                        "apply",
                        "--server-side",
                        "--field-manager",
                        "kars-e2e",
                        "-f",
                        &path,
                    ])?;
                    if !ok {
                        bail!("installing the CRDs in {path}: {err}");
                    }
                }
                cluster.wait_established("PolicyRepo CRD", &["crd/policyrepos.gitops.kars.io"])?;
                cluster
                    .wait_established("kars CRDs", &["crd", "-l", "app.kubernetes.io/name=kars"])?;
                Ok(())
            };
            run().map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

/// Applies YAML with `kubectl apply --server-side` (optionally `--dry-run=server`); returns
/// (accepted, combined output).
pub fn kubectl_apply(cluster: &Cluster, yaml: &str, dry_run: bool) -> Result<(bool, String)> {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile()?;
    std::fs::write(file.path(), yaml)?;
    let path = file.path().to_string_lossy().to_string();
    let mut args = vec![
        "apply",
        "--server-side",
        "--field-manager",
        "kars-e2e",
        "-f",
        path.as_str(),
    ];
    if dry_run {
        args.push("--dry-run=server");
    }
    let (ok, out, err) = cluster.kubectl(&args)?;
    Ok((ok, format!("{out}{err}")))
}
