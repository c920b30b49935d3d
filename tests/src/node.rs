//! A control plane with a node (`ci/cluster.sh up DIR --node`): pods really run. One per
//! machine at a time; stopped (and the machine cleaned) when dropped or when this process dies.
//! Also: the machine-state snapshot that proves `down` leaves the machine as it found it, the
//! images of `ci/images.sh`, and a small HTTP server of the test's own.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{install_crds, tool_path, workspace_root};

/// The host end of the node's link: the apiserver, and the test's servers, listen here.
pub const HOST_IP: &str = "10.250.0.1";
/// The node's address (and name).
pub const NODE_IP: &str = "10.250.0.2";
/// The host end of the node's link, IPv6.
pub const HOST_IP6: &str = "fd6b:6172:0:1::1";
/// The node's network namespace.
pub const NODE_NETNS: &str = "kars-node";

/// A control plane with a node.
pub struct NodeCluster {
    dir: PathBuf,
    stopped: AtomicBool,
}

fn cluster_sh(args: &[&std::ffi::OsStr]) -> Result<bool> {
    Ok(Command::new("bash")
        .arg(workspace_root().join("ci/cluster.sh"))
        .args(args)
        .stdin(Stdio::null())
        .status()
        .context("running ci/cluster.sh")?
        .success())
}

impl NodeCluster {
    /// Starts one in `target/e2e/node-<pid>` with the CRDs installed; a watchdog brings it
    /// down if this process dies first.
    pub fn up() -> Result<NodeCluster> {
        let dir = workspace_root()
            .join("target/e2e")
            .join(format!("node-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        crate::down_when_this_process_dies(&dir)?;
        let node = NodeCluster {
            dir,
            stopped: AtomicBool::new(false),
        };
        if !cluster_sh(&["up".as_ref(), node.dir.as_os_str(), "--node".as_ref()])? {
            bail!(
                "ci/cluster.sh up {} --node failed; logs in {}/logs",
                node.dir.display(),
                node.dir.display()
            );
        }
        install_crds(|| node.kubectl())?;
        Ok(node)
    }

    /// Its state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// A kubectl command for it.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(
            tool_path("control-plane", "kubectl").unwrap_or_else(|_| "kubectl".into()),
        );
        c.env("KUBECONFIG", self.kubeconfig());
        c
    }

    /// Runs kubectl; stdout on success, an error with stderr otherwise.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.kubectl().args(args).output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A kube client for the admin user.
    pub async fn client(&self) -> Result<kube::Client> {
        crate::init_crypto();
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig())?;
        let config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Imports OCI archives into the node's containerd.
    pub fn import(&self, archives: &[PathBuf]) -> Result<()> {
        let mut args: Vec<&std::ffi::OsStr> = vec!["import".as_ref(), self.dir.as_os_str()];
        args.extend(archives.iter().map(|a| a.as_os_str()));
        if !cluster_sh(&args)? {
            bail!("importing images into the node failed");
        }
        Ok(())
    }

    /// The apiserver's port.
    pub fn apiserver_port(&self) -> Result<u16> {
        Ok(
            std::fs::read_to_string(self.dir.join("run/apiserver.port"))?
                .trim()
                .parse()?,
        )
    }

    /// Stops it and cleans the machine (once).
    pub fn down(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        if !cluster_sh(&["down".as_ref(), self.dir.as_os_str()])? {
            bail!("ci/cluster.sh down {} failed", self.dir.display());
        }
        Ok(())
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

/// The images `ci/images.sh build` wrote: variable (`KARS_IMAGE_ROUTER`, …) → reference by
/// digest, and the archives to import.
pub struct Images {
    /// `KARS_IMAGE_<NAME>` → `kars.local/<image>@sha256:…`.
    pub refs: BTreeMap<String, String>,
    /// The OCI archives.
    pub archives: Vec<PathBuf>,
}

impl Images {
    /// Builds the images from `target/debug` into `out`.
    pub fn build(out: &Path) -> Result<Images> {
        let status = Command::new("bash")
            .arg(workspace_root().join("ci/images.sh"))
            .arg("build")
            .arg(out)
            .stdin(Stdio::null())
            .status()?;
        if !status.success() {
            bail!("ci/images.sh build {} failed", out.display());
        }
        let env = std::fs::read_to_string(out.join("images.env"))?;
        let mut refs = BTreeMap::new();
        let mut archives = Vec::new();
        for line in env.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let name = v
                .trim_start_matches("kars.local/")
                .split('@')
                .next()
                .unwrap_or_default();
            archives.push(out.join(format!("{name}.tar")));
            refs.insert(k.to_string(), v.to_string());
        }
        Ok(Images { refs, archives })
    }

    /// The reference of `KARS_IMAGE_<var>`.
    pub fn get(&self, var: &str) -> Result<&str> {
        self.refs
            .get(var)
            .map(String::as_str)
            .with_context(|| format!("ci/images.sh wrote no {var}"))
    }
}

/// A plain HTTP server of the test's own: answers every request with 200 and
/// `served by <name> (Host: <host header>)`. Stops when dropped.
pub struct HttpServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `addr`.
    pub fn start(addr: SocketAddr, name: &str) -> Result<HttpServer> {
        let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
        l.set_nonblocking(true)?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 2048];
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 65536 {
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let head = String::from_utf8_lossy(&buf);
                        let host = head
                            .lines()
                            .find_map(|l| {
                                l.split_once(':')
                                    .filter(|(k, _)| k.eq_ignore_ascii_case("host"))
                                    .map(|(_, v)| v.trim().to_string())
                            })
                            .unwrap_or_default();
                        let body = format!("served by {name} (Host: {host})");
                        let _ = write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(HttpServer {
            stop,
            addr,
            thread: Some(thread),
        })
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn command_text(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("({cmd} failed: {e})"))
}

/// What the node may change on the machine, as text, to compare before `up` and after
/// `down`: links, addresses, routes, the host's iptables and ip6tables rules, mount points,
/// cgroups, network namespaces, the sysctls the kubelet and the bridge plugin write, and
/// processes of the node's binaries.
pub fn machine_state() -> Result<String> {
    let mut out = String::new();
    out.push_str("## links\n");
    out.push_str(
        &command_text("ip", &["-o", "link", "show"])
            .lines()
            .map(|l| {
                // Keep the name and flags; drop counters-like fields that change on their own.
                l.split_whitespace().take(3).collect::<Vec<_>>().join(" ") + "\n"
            })
            .collect::<String>(),
    );
    out.push_str("## addresses\n");
    out.push_str(&command_text("ip", &["-br", "addr"]));
    out.push_str("## routes\n");
    out.push_str(&command_text("ip", &["route"]));
    out.push_str(
        &command_text("ip", &["-6", "route"])
            .lines()
            .filter(|l| !l.contains("expires"))
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    );
    for (table, cmd) in [
        ("iptables", "iptables-save"),
        ("ip6tables", "ip6tables-save"),
    ] {
        out.push_str(&format!("## {table}\n"));
        out.push_str(
            &command_text(cmd, &[])
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| {
                    // Chain counters change with traffic; the rules are what matters.
                    if l.starts_with(':') {
                        l.split_whitespace().take(2).collect::<Vec<_>>().join(" ") + "\n"
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect::<String>(),
        );
    }
    out.push_str("## mounts\n");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .collect();
    points.sort();
    for p in points {
        out.push_str(p);
        out.push('\n');
    }
    out.push_str("## cgroups\n");
    let mut cgroups = Vec::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")? {
        let h = h?.path();
        if let Ok(children) = std::fs::read_dir(&h) {
            for c in children.flatten() {
                if c.path().is_dir() {
                    cgroups.push(c.path().display().to_string());
                }
            }
        }
    }
    cgroups.sort();
    for c in cgroups {
        out.push_str(&c);
        out.push('\n');
    }
    out.push_str("## network namespaces\n");
    out.push_str(&command_text("ip", &["netns", "list"]));
    out.push_str("## sysctls\n");
    for s in [
        "vm/overcommit_memory",
        "vm/panic_on_oom",
        "kernel/panic",
        "kernel/panic_on_oops",
        "kernel/keys/root_maxkeys",
        "kernel/keys/root_maxbytes",
        "net/ipv4/ip_forward",
        "net/ipv6/conf/all/forwarding",
    ] {
        let v = std::fs::read_to_string(format!("/proc/sys/{s}")).unwrap_or_default();
        out.push_str(&format!("{s} = {}\n", v.trim()));
    }
    out.push_str("## node processes\n");
    for p in std::fs::read_dir("/proc")?.flatten() {
        if let Ok(exe) = std::fs::read_link(p.path().join("exe")) {
            let exe = exe.display().to_string();
            if exe.contains("/.cache/kars/node-") {
                out.push_str(&format!("{exe}\n"));
            }
        }
    }
    out.push_str("## files the node could leave\n");
    for d in [
        "/run/containerd",
        "/var/lib/cni",
        "/var/log/containers",
        "/var/log/pods",
        "/run/netns",
    ] {
        let mut names: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_else(|_| vec!["(absent)".into()]);
        names.sort();
        out.push_str(&format!("{d}: {}\n", names.join(" ")));
    }
    Ok(out)
}

/// Lines of `after` that differ from `before`, for an assertion message.
pub fn state_difference(before: &str, after: &str) -> String {
    let diff = similar::TextDiff::from_lines(before, after);
    diff.unified_diff().context_radius(1).to_string()
}
