//! `kars-bench router`: the router's figures, measured in this run on loopback.
//!
//! - decision time: egress decisions against a 10,000-entry allowlist, governance decisions
//!   on upstream's default AGT profile;
//! - memory: resident set added by a 10,000-entry egress policy;
//! - added latency at a fixed request rate (open loop): a new connection per request,
//!   `CONNECT` + one HTTP exchange through the kars proxy, through a minimal tokio pass-through
//!   proxy (the floor), and direct; p50/p99 of each and kars minus direct;
//! - requests/s at saturation (closed loop, N connections): CONNECT and plain HTTP through
//!   kars, the pass-through, and direct.
//!
//! Client, proxies and upstream share the machine's cores, as a sidecar shares its node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use kars_router::audit::{AuditLog, Fsync};
use kars_router::egress::{EgressPolicy, Mode};
use kars_router::governance::{Engine, Profile};
use kars_router::proxy::{ProxyLimits, ProxyState, Resolver, serve};
use kars_router::reload::{Policies, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// An upstream answering one request per connection.
async fn upstream() -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(RESPONSE).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// The floor: accept, read the CONNECT head, connect to the fixed upstream, relay.
async fn passthrough(to: SocketAddr) -> Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let mut got = Vec::new();
                let end = loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                };
                let Ok(mut up) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = up.set_nodelay(true);
                if got.starts_with(b"CONNECT") {
                    if s.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = up.write_all(&got[end..]).await;
                } else {
                    let _ = up.write_all(&got).await;
                }
                let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
            });
        }
    });
    Ok(addr)
}

async fn kars_proxy(up: SocketAddr, audit: Option<Arc<AuditLog>>) -> Result<SocketAddr> {
    let policy = EgressPolicy::new(
        Mode::Strict,
        [("upstream.bench".to_string(), up.port())],
        Vec::new(),
        Vec::new(),
        vec!["127.0.0.0/8".parse().context("cidr")?],
    );
    let state = Arc::new(ProxyState::new(
        Arc::new(Policies::fixed(Snapshot::with_egress(policy))),
        Resolver::Static(HashMap::from([(
            "upstream.bench".to_string(),
            vec![up.ip()],
        )])),
        audit,
        ProxyLimits::default(),
        Arc::default(),
    ));
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(serve(l, state));
    Ok(addr)
}

#[derive(Clone, Copy, PartialEq)]
enum Via {
    Direct,
    Connect,
    AbsoluteForm,
}

/// One request on a new connection; true when the response arrived whole.
async fn one(target: SocketAddr, via: Via, up_port: u16) -> bool {
    one_to(target, via, "upstream.bench", up_port).await
}

/// One request for `host:up_port` on a new connection.
async fn one_to(target: SocketAddr, via: Via, host: &str, up_port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(target).await else {
        return false;
    };
    let _ = s.set_nodelay(true);
    let request = match via {
        Via::Direct => "GET / HTTP/1.1\r\nHost: upstream.bench\r\n\r\n".to_string(),
        Via::Connect => format!(
            "CONNECT {host}:{up_port} HTTP/1.1\r\nHost: {host}:{up_port}\r\n\r\nGET / HTTP/1.1\r\nHost: {host}\r\n\r\n"
        ),
        Via::AbsoluteForm => {
            format!("GET http://{host}:{up_port}/ HTTP/1.1\r\nHost: {host}:{up_port}\r\n\r\n")
        }
    };
    if s.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut out = Vec::with_capacity(256);
    if s.read_to_end(&mut out).await.is_err() {
        return false;
    }
    out.ends_with(b"\r\n\r\nok")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Open loop: one request every 1/rate s for `seconds`; returns sorted latencies and errors.
async fn at_rate(
    target: SocketAddr,
    via: Via,
    up_port: u16,
    rate: u64,
    seconds: u64,
) -> (Vec<Duration>, u64) {
    at_rate_to(target, via, "upstream.bench", up_port, rate, seconds).await
}

async fn at_rate_to(
    target: SocketAddr,
    via: Via,
    host: &'static str,
    up_port: u16,
    rate: u64,
    seconds: u64,
) -> (Vec<Duration>, u64) {
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due.into()).await;
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let ok = one_to(target, via, host, up_port).await;
            (t.elapsed(), ok)
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((d, true)) => lat.push(d),
            _ => errors += 1,
        }
    }
    lat.sort();
    (lat, errors)
}

/// Closed loop: `conns` workers for `seconds`; requests per second.
async fn saturate(target: SocketAddr, via: Via, up_port: u16, conns: usize, seconds: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..conns {
        let (stop, done) = (stop.clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if one(target, via, up_port).await {
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let t = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = t.elapsed().as_secs_f64();
    for w in workers {
        let _ = w.await;
    }
    n as f64 / elapsed
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn decisions() -> Result<()> {
    let before = rss_kib();
    let entries: Vec<(String, u16)> = (0..10_000)
        .map(|i| (format!("host-{i}.svc-{}.example.com", i % 97), 443))
        .collect();
    let policy = EgressPolicy::new(Mode::Strict, entries, Vec::new(), Vec::new(), Vec::new());
    let added = rss_kib().saturating_sub(before);
    let asks: Vec<String> = (0..1_000)
        .map(|i| match i % 4 {
            0 => format!("host-{}.svc-{}.example.com", i * 7, (i * 7) % 97),
            1 => format!("API.sub.host-{}.svc-{}.example.com.", i, i % 97),
            2 => format!("nothere-{i}.example.org"),
            _ => format!("host-{i}.svc-0.example.com"),
        })
        .collect();
    let rounds = 200;
    let t = Instant::now();
    let mut allowed = 0u64;
    for _ in 0..rounds {
        for a in &asks {
            allowed += u64::from(policy.decide(a, 443, 0).is_ok());
        }
    }
    let per = t.elapsed().as_nanos() as f64 / (rounds * asks.len()) as f64;
    figure("router.egress_decision", per / 1000.0, "us");
    figure("router.egress_policy_rss", added as f64 / 1024.0, "MiB");
    println!(
        "egress decision, 10,000-entry allowlist: {:.2} µs/decision mean over {} decisions ({} allowed), policy RSS +{:.1} MiB",
        per / 1000.0,
        rounds * asks.len(),
        allowed,
        added as f64 / 1024.0
    );
    let profile = std::fs::read_to_string(
        crate::workspace_root().join("router/testdata/kars-default-agt-profile.yaml"),
    )?;
    let engine = Engine::new(vec![
        Profile::parse("default.yaml", &profile).map_err(anyhow::Error::msg)?,
    ]);
    let actions = [
        "tool:web_fetch:https://x",
        "shell:rm",
        "shell:ls",
        "admin:bulk_delete",
        "mesh:send:peer",
        "unknown:x",
    ];
    let n = 200_000;
    let t = Instant::now();
    let now = Instant::now();
    for i in 0..n {
        std::hint::black_box(engine.decide(actions[i % actions.len()], now));
    }
    let per = t.elapsed().as_nanos() as f64 / n as f64 / 1000.0;
    figure("router.governance_decision", per, "us");
    println!(
        "governance decision, upstream default AGT profile (18 rules): {per:.2} µs/decision mean over {n}"
    );
    Ok(())
}

/// A row's name as a figure name: lowercase letters and digits, `_` between words.
fn slug(name: &str) -> String {
    name.to_ascii_lowercase()
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join("_")
}

use crate::figure;

fn row(name: &str, (lat, errors): &(Vec<Duration>, u64), direct: &(Vec<Duration>, u64)) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let (p50, p99) = (percentile(lat, 0.5), percentile(lat, 0.99));
    let (d50, d99) = (percentile(&direct.0, 0.5), percentile(&direct.0, 0.99));
    let key = format!("router.latency.{}", slug(name));
    figure(&format!("{key}.p50"), us(p50), "us");
    figure(&format!("{key}.p99"), us(p99), "us");
    figure(&format!("{key}.p99_added"), us(p99) - us(d99), "us");
    figure(&format!("{key}.failed"), *errors as f64, "requests");
    println!(
        "  {name:<34} p50 {:>7.0} µs  p99 {:>7.0} µs  added p50 {:>+6.0} µs  p99 {:>+6.0} µs  ({} ok, {errors} failed)",
        us(p50),
        us(p99),
        us(p50) - us(d50),
        us(p99) - us(d99),
        lat.len()
    );
}

fn proc_field_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start after ") ".
            let rest = s.rsplit_once(") ")?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

struct RouterProcess {
    child: std::process::Child,
    proxy: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the release `kars-router` with an allowlist of `entries` hosts plus `localhost:up`.
fn router_process(up: u16, entries: usize) -> Result<RouterProcess> {
    let bin = crate::workspace_root().join("target/release/kars-router");
    anyhow::ensure!(
        bin.exists(),
        "{} is not built (cargo build --release -p kars-router)",
        bin.display()
    );
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("egress"))?;
    let mut eps: Vec<String> = (0..entries)
        .map(|i| {
            format!(
                r#"{{"host":"host-{i}.svc-{}.example.com","port":443}}"#,
                i % 97
            )
        })
        .collect();
    eps.push(format!(r#"{{"host":"localhost","port":{up}}}"#));
    std::fs::write(
        dir.path().join("egress/allowlist.json"),
        format!(r#"{{"endpoints":[{}],"schemaVersion":1}}"#, eps.join(",")),
    )?;
    let port = |()| -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let (http, proxy) = (port(())?, port(())?);
    let child = std::process::Command::new(bin)
        .args([
            "--address",
            "127.0.0.1",
            "--port",
            &http.to_string(),
            "--proxy-port",
            &proxy.to_string(),
        ])
        .args([
            "--allow-private-cidr",
            "127.0.0.0/8",
            "--audit-fsync",
            "100ms",
        ])
        .arg("--audit-log")
        .arg(dir.path().join("audit.jsonl"))
        .env("EGRESS_ALLOWLIST_DIR", dir.path().join("egress"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let proxy: SocketAddr = format!("127.0.0.1:{proxy}").parse()?;
    for _ in 0..200 {
        if std::net::TcpStream::connect(proxy).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    Ok(RouterProcess {
        child,
        proxy,
        _dir: dir,
    })
}

/// Runs the router benchmarks.
pub fn run(seconds: u64, rate: u64, conns: usize) -> Result<()> {
    decisions()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let up = upstream().await?;
        let floor = passthrough(up).await?;
        let kars = kars_proxy(up, None).await?;
        let dir = tempfile::tempdir()?;
        let audited_100ms = kars_proxy(
            up,
            Some(Arc::new(AuditLog::open(
                &dir.path().join("a.jsonl"),
                Fsync::Interval(Duration::from_millis(100)),
            )?)),
        )
        .await?;
        let audited_always = kars_proxy(
            up,
            Some(Arc::new(AuditLog::open(
                &dir.path().join("b.jsonl"),
                Fsync::Always,
            )?)),
        )
        .await?;
        let p = up.port();
        // Warm up every path.
        for (t, v) in [
            (up, Via::Direct),
            (floor, Via::Connect),
            (kars, Via::Connect),
        ] {
            for _ in 0..200 {
                one(t, v, p).await;
            }
        }
        println!(
            "latency at {rate} requests/s for {seconds} s (new connection per request, open loop):"
        );
        let direct = at_rate(up, Via::Direct, p, rate, seconds).await;
        row("direct", &direct, &direct);
        for (name, target, via) in [
            ("minimal tokio pass-through (CONNECT)", floor, Via::Connect),
            ("kars CONNECT", kars, Via::Connect),
            ("kars plain HTTP (absolute form)", kars, Via::AbsoluteForm),
            ("kars CONNECT, audit fsync 100ms", audited_100ms, Via::Connect),
            ("kars CONNECT, audit fsync always", audited_always, Via::Connect),
        ] {
            row(name, &at_rate(target, via, p, rate, seconds).await, &direct);
        }
        // The router as its own process: CPU and memory at the rate, and with 10k entries.
        {
            let small = router_process(p, 0)?;
            let big = router_process(p, 10_000)?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (pid_small, pid_big) = (small.child.id(), big.child.id());
            println!(
                "kars-router process, idle: RSS {:.1} MiB with a 1-entry allowlist, {:.1} MiB with 10,001 entries",
                proc_field_kib(pid_small, "VmRSS:") as f64 / 1024.0,
                proc_field_kib(pid_big, "VmRSS:") as f64 / 1024.0
            );
            for _ in 0..200 {
                one_to(small.proxy, Via::Connect, "localhost", p).await;
            }
            let ticks = proc_cpu_ticks(pid_small);
            let t = Instant::now();
            let run = at_rate_to(small.proxy, Via::Connect, "localhost", p, rate, seconds).await;
            // USER_HZ (the unit of /proc/PID/stat times) is 100 on Linux.
            let cpu = (proc_cpu_ticks(pid_small) - ticks) as f64 / 100.0 / t.elapsed().as_secs_f64();
            row("kars-router process CONNECT (audit fsync 100ms, system resolver)", &run, &direct);
            figure("router.process.vcpu", cpu, "vCPU");
            figure(
                "router.process.rss",
                proc_field_kib(pid_small, "VmRSS:") as f64 / 1024.0,
                "MiB",
            );
            println!(
                "  kars-router process at {rate} req/s: {:.3} vCPU, RSS {:.1} MiB (peak {:.1} MiB)",
                cpu,
                proc_field_kib(pid_small, "VmRSS:") as f64 / 1024.0,
                proc_field_kib(pid_small, "VmHWM:") as f64 / 1024.0
            );
        }
        println!("saturation, {conns} connections in a loop for {seconds} s:");
        for (name, t, v) in [
            ("direct", up, Via::Direct),
            ("minimal tokio pass-through (CONNECT)", floor, Via::Connect),
            ("kars CONNECT", kars, Via::Connect),
            ("kars plain HTTP (absolute form)", kars, Via::AbsoluteForm),
            (
                "kars CONNECT, audit fsync 100ms",
                audited_100ms,
                Via::Connect,
            ),
        ] {
            let rps = saturate(t, v, p, conns, seconds).await;
            figure(&format!("router.saturation.{}", slug(name)), rps, "requests/s");
            println!("  {name:<34} {rps:>8.0} requests/s");
        }
        anyhow::Ok(())
    })
}
