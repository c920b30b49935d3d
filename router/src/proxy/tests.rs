//! The proxy end to end on loopback: refusals, limits, the audit log, transparent paths.

use super::*;
use crate::egress::{Approval, EgressPolicy, Mode};
use crate::reload::Snapshot;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::net::TcpListener;

/// An upstream that answers every connection with a fixed response after reading the
/// request head, and counts connections; returns (port, count, last request head).
async fn upstream() -> (u16, Arc<AtomicUsize>, Arc<std::sync::Mutex<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let count = Arc::new(AtomicUsize::new(0));
    let last = Arc::new(std::sync::Mutex::new(String::new()));
    let (c, seen) = (count.clone(), last.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                *seen.lock().expect("lock") = String::from_utf8_lossy(&got).into_owned();
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\nupstream")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, count, last)
}

fn clock() -> i64 {
    1_500
}

async fn proxy(policy: EgressPolicy, names: &[(&str, &str)]) -> u16 {
    proxy_with_state(policy, names).await.0
}

async fn proxy_with_state(policy: EgressPolicy, names: &[(&str, &str)]) -> (u16, Arc<ProxyState>) {
    proxy_with(policy, names, 443).await
}

async fn proxy_with(
    policy: EgressPolicy,
    names: &[(&str, &str)],
    default_tls_port: u16,
) -> (u16, Arc<ProxyState>) {
    let limits = ProxyLimits {
        head_timeout: Duration::from_millis(500),
        default_tls_port,
        ..ProxyLimits::default()
    };
    start(policy, names, None, limits).await
}

/// Serves a proxy for `policy` on a free loopback port; `names` resolve statically.
async fn start(
    policy: EgressPolicy,
    names: &[(&str, &str)],
    audit: Option<Arc<AuditLog>>,
    limits: ProxyLimits,
) -> (u16, Arc<ProxyState>) {
    let resolver = Resolver::Static(
        names
            .iter()
            .map(|(n, ip)| (n.to_string(), vec![ip.parse().expect("ip")]))
            .collect(),
    );
    let state = Arc::new(ProxyState {
        clock,
        ..ProxyState::new(
            Arc::new(Policies::fixed(Snapshot::with_egress(policy))),
            resolver,
            audit,
            limits,
            Arc::default(),
        )
    });
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(serve(l, state.clone()));
    (port, state)
}

fn loopback_ok() -> Vec<ipnet::IpNet> {
    vec!["127.0.0.0/8".parse().expect("cidr")]
}

async fn exchange(proxy: u16, request: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", proxy))
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn allowed_hosts_pass_and_everything_else_never_reaches_upstream() {
    let (up, count, last) = upstream().await;
    let policy = EgressPolicy::new(
        Mode::Strict,
        [("upstream.test".to_string(), up)],
        vec![Approval {
            name: "expired".into(),
            hosts: vec![("late.test".into(), up)],
            effective_at: 0,
            expires_at: 1_000,
        }],
        Vec::new(),
        loopback_ok(),
    );
    let p = proxy(
        policy,
        &[
            ("upstream.test", "127.0.0.1"),
            ("other.test", "127.0.0.1"),
            ("late.test", "127.0.0.1"),
        ],
    )
    .await;
    // CONNECT to an allowed host: a tunnel.
    let out = exchange(
        p,
        &format!("CONNECT UPSTREAM.test.:{up} HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200 Connection Established"),
        "{out}"
    );
    assert!(out.ends_with("upstream"), "{out}");
    // Absolute form: forwarded in origin form, Proxy-* dropped, Connection: close.
    let out = exchange(
        p,
        &format!("GET http://upstream.test:{up}/a?b=c HTTP/1.1\r\nHost: upstream.test:{up}\r\nProxy-Authorization: Basic eA==\r\nConnection: keep-alive\r\n\r\n"),
    )
    .await;
    assert!(out.contains("200 OK") && out.ends_with("upstream"), "{out}");
    let seen = last.lock().expect("lock").clone();
    assert!(seen.starts_with("GET /a?b=c HTTP/1.1\r\n"), "{seen}");
    assert!(
        !seen.to_ascii_lowercase().contains("proxy-authorization"),
        "{seen}"
    );
    assert!(seen.contains("Connection: close"), "{seen}");
    let before = count.load(Ordering::SeqCst);
    assert_eq!(before, 2);
    // Refusals, each before any upstream connection.
    for (request, status, label) in [
        (
            format!("CONNECT other.test:{up} HTTP/1.1\r\n\r\n"),
            "403",
            "NotAllowed",
        ),
        (
            "CONNECT upstream.test:1 HTTP/1.1\r\n\r\n".to_string(),
            "403",
            "NotAllowed",
        ),
        (
            format!("CONNECT late.test:{up} HTTP/1.1\r\n\r\n"),
            "403",
            "NotAllowed",
        ),
        (
            format!("CONNECT 127.0.0.1:{up} HTTP/1.1\r\n\r\n"),
            "400",
            "InvalidHost",
        ),
        (
            format!("CONNECT [::1]:{up} HTTP/1.1\r\n\r\n"),
            "400",
            "InvalidHost",
        ),
        (
            "CONNECT upstream.test HTTP/1.1\r\n\r\n".to_string(),
            "400",
            "InvalidHost",
        ),
        (
            format!(
                "GET http://upstream.test@other.test:{up}/ HTTP/1.1\r\nHost: other.test:{up}\r\n\r\n"
            ),
            "400",
            "InvalidHost",
        ),
        (
            format!("GET http://upstream.test:{up}/ HTTP/1.1\r\nHost: other.test:{up}\r\n\r\n"),
            "400",
            "InvalidHost",
        ),
        (
            format!(
                "GET http://upstream.test:{up}/ HTTP/1.1\r\nHost: upstream.test:{up}\r\nHost: other.test\r\n\r\n"
            ),
            "400",
            "InvalidHost",
        ),
        // Origin form (a transparently redirected request): port 80 is not allowed.
        (
            "GET / HTTP/1.1\r\nHost: upstream.test\r\n\r\n".to_string(),
            "403",
            "NotAllowed",
        ),
        (
            "GET / HTTP/1.1\r\nX: y\r\n\r\n".to_string(),
            "400",
            "InvalidHost",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: upstream.test:{up}\r\nHost: other.test:{up}\r\n\r\n"),
            "400",
            "InvalidHost",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{up}\r\n\r\n"),
            "400",
            "InvalidHost",
        ),
        (
            format!("GET https://upstream.test:{up}/ HTTP/1.1\r\n\r\n"),
            "400",
            "InvalidHost",
        ),
        (
            format!("GET http://2130706433:{up}/ HTTP/1.1\r\nHost: 2130706433:{up}\r\n\r\n"),
            "400",
            "InvalidHost",
        ),
    ] {
        let out = exchange(p, &request).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")) && out.contains(label),
            "{request:?} → {out}"
        );
    }
    assert_eq!(
        count.load(Ordering::SeqCst),
        before,
        "no refused request reached upstream"
    );
}

#[tokio::test]
async fn internal_addresses_need_a_cidr_and_only_checked_addresses_are_used() {
    let (up, count, _) = upstream().await;
    // Allowed by name, but resolving to loopback: refused without the CIDR.
    let strict = EgressPolicy::new(
        Mode::Strict,
        [
            ("upstream.test".to_string(), up),
            ("meta.test".to_string(), 80),
        ],
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let p = proxy(
        strict,
        &[
            ("upstream.test", "127.0.0.1"),
            ("meta.test", "169.254.169.254"),
        ],
    )
    .await;
    for target in [format!("upstream.test:{up}"), "meta.test:80".to_string()] {
        let out = exchange(p, &format!("CONNECT {target} HTTP/1.1\r\n\r\n")).await;
        assert!(
            out.starts_with("HTTP/1.1 403") && out.contains("ForbiddenAddress"),
            "{out}"
        );
    }
    assert_eq!(count.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn oversized_and_slow_heads_are_cut_off_and_learn_mode_records() {
    let (up, _, _) = upstream().await;
    let learn = EgressPolicy::new(
        Mode::Learn,
        Vec::new(),
        Vec::new(),
        Vec::new(),
        loopback_ok(),
    );
    let (p, state) = proxy_with_state(learn, &[("new.test", "127.0.0.1")]).await;
    let big = format!(
        "GET http://x.test/ HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    assert!(exchange(p, &big).await.starts_with("HTTP/1.1 431"));
    let mut s = TcpStream::connect(("127.0.0.1", p)).await.expect("connect");
    s.write_all(b"CONNECT new.test:1").await.expect("partial");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"),
        "slow head"
    );
    let out = exchange(
        p,
        &format!("CONNECT new.test:{up} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(
        state.policies.snapshot().egress.learned(),
        vec![("new.test".to_string(), up)]
    );
}

#[tokio::test]
async fn transparent_tls_and_http_are_decided_by_sni_and_host() {
    // A raw upstream that records the first bytes it receives.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = l.local_addr().expect("addr").port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).await.unwrap_or(0);
            s2.lock().expect("lock").push(buf[..n].to_vec());
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let policy = EgressPolicy::new(
        Mode::Strict,
        [
            ("upstream.test".to_string(), up),
            ("upstream.test".to_string(), 443),
        ],
        Vec::new(),
        Vec::new(),
        loopback_ok(),
    );
    let p = proxy(
        policy,
        &[("upstream.test", "127.0.0.1"), ("other.test", "127.0.0.1")],
    )
    .await;
    // TLS without a redirect: port 443 is assumed; the allowlist has upstream.test:443, but the
    // resolver sends 443 to loopback where nothing listens, so use SNI refusals here and the
    // HTTP path for a full pass.
    for name in ["other.test", "evil.example"] {
        let mut s = TcpStream::connect(("127.0.0.1", p)).await.expect("connect");
        s.write_all(&sni::tests::client_hello(name))
            .await
            .expect("hello");
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
        assert!(
            out.is_empty(),
            "a refused TLS client just sees the connection close"
        );
    }
    assert!(
        seen.lock().expect("lock").is_empty(),
        "nothing reached the upstream"
    );
    // Transparent HTTP to an allowed host:port passes, the request forwarded as it came.
    let out = exchange(
        p,
        &format!("GET /t HTTP/1.1\r\nHost: upstream.test:{up}\r\n\r\n"),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let first = seen
        .lock()
        .expect("lock")
        .first()
        .cloned()
        .unwrap_or_default();
    assert!(String::from_utf8_lossy(&first).starts_with("GET /t HTTP/1.1\r\n"));
}

/// A proxy that writes its audit log into `dir`, with `limits`.
async fn audited_proxy(
    policy: EgressPolicy,
    names: &[(&str, &str)],
    dir: &std::path::Path,
    limits: ProxyLimits,
) -> (u16, Arc<ProxyState>, Arc<AuditLog>, std::path::PathBuf) {
    let path = dir.join("audit.jsonl");
    let log = Arc::new(AuditLog::open(&path, crate::audit::Fsync::Never).expect("audit"));
    let (port, state) = start(policy, names, Some(log.clone()), limits).await;
    (port, state, log, path)
}

fn records(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn allow_upstream(up: u16) -> EgressPolicy {
    EgressPolicy::new(
        Mode::Strict,
        [("upstream.test".to_string(), up)],
        Vec::new(),
        Vec::new(),
        loopback_ok(),
    )
}

/// Regression: with the audit volume full, `CONNECT allowed.test` still succeeded with no
/// record (egress failed open).
#[tokio::test]
async fn egress_fails_closed_when_the_decision_cannot_be_recorded() {
    let dir = tempfile::tempdir().expect("tmp");
    let (up, count, _) = upstream().await;
    let (p, _, log, path) = audited_proxy(
        allow_upstream(up),
        &[("upstream.test", "127.0.0.1")],
        dir.path(),
        ProxyLimits::default(),
    )
    .await;
    log.fail_next_write_after(10);
    let out = exchange(p, &format!("CONNECT upstream.test:{up} HTTP/1.1\r\n\r\n")).await;
    assert!(
        out.starts_with("HTTP/1.1 503") && out.contains("AuditUnavailable"),
        "{out}"
    );
    assert_eq!(count.load(Ordering::SeqCst), 0, "nothing went upstream");
    let out = exchange(
        p,
        &format!("CONNECT upstream.test:{up} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n"),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "recorded again: {out}");
    assert!(crate::audit::verify(&path).is_ok(), "no torn record");
}

/// Regression: 400 (unparseable head), 431 and 502 refusals were not audited.
#[tokio::test]
async fn every_refusal_is_audited() {
    let dir = tempfile::tempdir().expect("tmp");
    let (p, _, _, path) = audited_proxy(
        allow_upstream(1),
        &[("upstream.test", "127.0.0.1")],
        dir.path(),
        ProxyLimits {
            head_timeout: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(300),
            ..ProxyLimits::default()
        },
    )
    .await;
    for (request, status) in [
        ("\x01\x02 not http\r\n\r\n".to_string(), "400"),
        (
            format!(
                "GET http://x.test/ HTTP/1.1\r\nX: {}\r\n\r\n",
                "a".repeat(18_000)
            ),
            "431",
        ),
        (
            "CONNECT upstream.test:1 HTTP/1.1\r\n\r\n".to_string(),
            "502",
        ),
        ("CONNECT other.test:443 HTTP/1.1\r\n\r\n".to_string(), "403"),
    ] {
        let out = exchange(p, &request).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")),
            "{request:.40?} → {out}"
        );
    }
    let all = records(&path);
    let reasons: Vec<&str> = all
        .iter()
        .filter(|r| r["allowed"] == false)
        .map(|r| r["refusal"]["reason"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        reasons,
        [
            "MalformedRequest",
            "HeadTooLarge",
            "ConnectFailed",
            "NotAllowed"
        ],
        "one record per refusal"
    );
    assert_eq!(
        all.iter().filter(|r| r["allowed"] == true).count(),
        1,
        "the allowed decision before the failed connect is recorded too"
    );
}

/// Regression: 300 refused CONNECTs with a 16,300-byte host added 9.9 MB to the audit log
/// in 0.33 s.
#[tokio::test]
async fn refusal_floods_do_not_fill_the_audit_volume() {
    let dir = tempfile::tempdir().expect("tmp");
    let (p, state, _, path) =
        audited_proxy(allow_upstream(1), &[], dir.path(), ProxyLimits::default()).await;
    let host = "a".repeat(16_300);
    for _ in 0..300 {
        exchange(p, &format!("CONNECT {host}.test:443 HTTP/1.1\r\n\r\n")).await;
    }
    let size = std::fs::metadata(&path).expect("log").len();
    assert!(size < 200_000, "{size} bytes of audit for one refused host");
    let written = records(&path).len();
    assert!(written <= 110, "{written} records");
    assert!(
        state
            .metrics
            .encode()
            .contains("kars_router_audit_suppressed_total{reason=\"InvalidHost\"}"),
        "held-back records are counted"
    );
    assert!(records(&path).iter().all(|r| r.to_string().len() < 1_000));
}

/// Regression: a connection sending nothing lived 20 s (two 10 s timeouts in a row), not
/// the documented 10 s; an 18 KB head passed the 16 KiB limit.
#[tokio::test]
async fn the_head_deadline_and_size_are_exact() {
    let (up, _, _) = upstream().await;
    let (p, _) = proxy_with(allow_upstream(up), &[("upstream.test", "127.0.0.1")], 443).await;
    let started = std::time::Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", p)).await.expect("connect");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(450) && lived < Duration::from_millis(800),
        "an idle connection lived {lived:?} with a 500 ms head timeout"
    );
    // A complete 18 KB head is refused although it parses.
    let big = format!(
        "CONNECT upstream.test:{up} HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(18_000)
    );
    assert!(exchange(p, &big).await.starts_with("HTTP/1.1 431"));
}

/// Regression: established tunnels had no idle timeout.
#[tokio::test]
async fn idle_tunnels_are_closed() {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let _keep = s;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    let dir = tempfile::tempdir().expect("tmp");
    let (p, _, _, _) = audited_proxy(
        allow_upstream(up),
        &[("upstream.test", "127.0.0.1")],
        dir.path(),
        ProxyLimits {
            idle_timeout: Duration::from_millis(400),
            ..ProxyLimits::default()
        },
    )
    .await;
    let mut s = TcpStream::connect(("127.0.0.1", p)).await.expect("connect");
    s.write_all(format!("CONNECT upstream.test:{up} HTTP/1.1\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(350) && lived < Duration::from_millis(1_500),
        "an idle tunnel lived {lived:?} with a 400 ms idle timeout"
    );
}
