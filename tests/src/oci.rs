//! Real OCI components for the bundle tests: the CNCF distribution registry on a loopback
//! port, and the `cosign` and `oras` CLIs, all built by `ci/build-tools.sh oci`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::tool_path;

/// The password of every test cosign key.
pub const COSIGN_PASSWORD: &str = "kars-test-password";

/// A `registry serve` process on 127.0.0.1; stopped when dropped.
pub struct Registry {
    child: Option<Child>,
    config: PathBuf,
    scheme: &'static str,
    /// `127.0.0.1:<port>`.
    pub host: String,
}

/// How a test registry is secured (default: plain HTTP, anonymous).
#[derive(Clone, Debug, Default)]
pub struct RegistrySecurity {
    /// Serve HTTPS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Require basic auth from this htpasswd file (bcrypt hashes).
    pub htpasswd: Option<PathBuf>,
}

impl Registry {
    /// Starts a plain-HTTP, anonymous registry storing its data under `dir`, on a free
    /// loopback port.
    pub fn start(dir: &Path) -> Result<Registry> {
        Registry::start_with(dir, &RegistrySecurity::default())
    }

    /// Starts a registry secured as `security` says.
    pub fn start_with(dir: &Path, security: &RegistrySecurity) -> Result<Registry> {
        std::fs::create_dir_all(dir.join("data"))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
            dir.join("data").display()
        );
        if let Some((cert, key)) = &security.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some(htpasswd) = &security.htpasswd {
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kars-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        std::fs::write(&config, yaml)?;
        let mut r = Registry {
            child: None,
            config,
            scheme: if security.tls.is_some() {
                "https"
            } else {
                "http"
            },
            host,
        };
        r.resume()?;
        Ok(r)
    }

    /// Starts the registry process again (same port, same data) after [`Registry::stop`].
    pub fn resume(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.config.with_extension("log"))?;
        let child = Command::new(tool_path("oci", "registry")?)
            .arg("serve")
            .arg(&self.config)
            .env("OTEL_TRACES_EXPORTER", "none")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the registry")?;
        self.child = Some(child);
        let url = format!("{}://{}/v2/", self.scheme, self.host);
        for _ in 0..200 {
            if std::net::TcpStream::connect(&self.host).is_ok() {
                // Any HTTP answer (200, or 401 when auth is on) means it is serving.
                let answered = Command::new("curl")
                    .args(["-ksS", "-o", "/dev/null", "-w", "%{http_code}", &url])
                    .output()
                    .is_ok_and(|o| {
                        let code = String::from_utf8_lossy(&o.stdout).to_string();
                        code.starts_with('2') || code == "401"
                    });
                if answered {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "the registry did not answer on {url}; see {}",
            self.config.with_extension("log").display()
        )
    }

    /// Stops the registry process (the data stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command, failing with its output when it fails; returns stdout.
fn checked(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `cosign` with the test password and no network beyond the given registry.
pub fn cosign() -> Result<Command> {
    let mut c = Command::new(tool_path("oci", "cosign")?);
    c.env("COSIGN_PASSWORD", COSIGN_PASSWORD)
        .env("COSIGN_YES", "true")
        .env("SIGSTORE_NO_CACHE", "true")
        .env("TUF_ROOT", std::env::temp_dir().join("kars-e2e-no-tuf"));
    Ok(c)
}

/// `cosign generate-key-pair` in `dir` with prefix `name`: returns (private, public) paths.
pub fn cosign_key_pair(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    checked(
        cosign()?
            .current_dir(dir)
            .args(["generate-key-pair", "--output-key-prefix", name]),
        "cosign generate-key-pair",
    )?;
    Ok((
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pub")),
    ))
}

/// `cosign sign --key KEY REF@DIGEST` without a transparency log (offline).
pub fn cosign_sign(key: &Path, reference: &str) -> Result<()> {
    checked(
        cosign()?.arg("sign").arg("--key").arg(key).args([
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--allow-http-registry",
            "-y",
            reference,
        ]),
        "cosign sign",
    )
    .map(drop)
}

/// `cosign verify --key PUB REF@DIGEST` without a transparency log; returns (ok, output).
pub fn cosign_verify(public: &Path, reference: &str) -> Result<(bool, String)> {
    let out = cosign()?
        .arg("verify")
        .arg("--key")
        .arg(public)
        .args([
            "--insecure-ignore-tlog",
            "--allow-insecure-registry",
            "--allow-http-registry",
            reference,
        ])
        .output()
        .context("running cosign verify")?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// `oras push --plain-http --artifact-type TYPE REF FILE:TYPE`; returns the manifest digest.
pub fn oras_push(reference: &str, file: &Path, artifact_type: &str) -> Result<String> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out = checked(
        Command::new(tool_path("oci", "oras")?)
            .current_dir(dir)
            .args([
                "push",
                "--plain-http",
                "--no-tty",
                "--artifact-type",
                artifact_type,
                "--format",
                "json",
                reference,
                &format!("{name}:{artifact_type}"),
            ]),
        "oras push",
    )?;
    let v: serde_json::Value =
        serde_json::from_str(&out).with_context(|| format!("oras push output: {out}"))?;
    v["digest"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no digest in oras push output: {out}"))
}

/// `oras cp` between two references of a plain-HTTP registry (manifest and blobs).
pub fn oras_copy(from: &str, to: &str) -> Result<()> {
    checked(
        Command::new(tool_path("oci", "oras")?).args([
            "cp",
            "--from-plain-http",
            "--to-plain-http",
            "--no-tty",
            from,
            to,
        ]),
        "oras cp",
    )
    .map(drop)
}
