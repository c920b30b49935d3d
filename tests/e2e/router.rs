//! The router as a real process on loopback: governance decisions over HTTP, each one in the
//! audit log, and `kars audit verify` catching edits, deletions and cut-off tails.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kars_e2e::workspace_root;
use libtest_mimic::Trial;
use serde_json::Value;

use crate::trial;

mod contract;

pub fn tests() -> Vec<Trial> {
    let mut trials = contract::tests();
    trials.extend(vec![
        trial(
            "router::governance_decisions_are_audited_and_tampering_is_detected",
            governance_and_audit,
        ),
        trial(
            "router::egress_proxy_allows_the_allowlist_and_refuses_the_rest",
            egress_proxy,
        ),
        trial(
            "router::inference_over_https_with_budgets_that_survive_restarts",
            inference_over_https,
        ),
        trial(
            "router::rendered_policies_load_with_the_digests_the_renderer_annotated",
            rendered_policies_digests_agree,
        ),
        trial(
            "router::ready_waits_until_the_router_reports_the_rendered_digests",
            ready_waits_for_enforcement,
        ),
        trial(
            "router::a_full_audit_volume_refuses_egress_and_leaves_no_torn_record",
            full_audit_volume,
        ),
        trial(
            "router::listeners_survive_running_out_of_file_descriptors",
            out_of_file_descriptors,
        ),
        trial(
            "router::signed_audit_heads_prove_cuts_rewrites_and_keys",
            signed_audit_heads,
        ),
        trial(
            "router::rendered_template_answers_a_chat_completion_with_the_secrets_key",
            rendered_template_chat_completion,
        ),
        trial(
            "router::tool_policy_caps_transfers_asks_approval_and_rate_limits",
            tool_policy_enforced,
        ),
        trial(
            "router::agt_evaluate_answers_upstreams_runtimes",
            agt_evaluate,
        ),
    ]);
    trials
}

pub(crate) struct Router {
    child: Child,
    pub(crate) port: u16,
    pub(crate) proxy_port: u16,
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Router {
    /// SIGTERM (what Kubernetes sends), then waits up to 10 s for the router to exit.
    pub(crate) fn terminate(&mut self) -> Result<()> {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(killed.success(), "kill -TERM {pid}");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            ensure!(
                std::time::Instant::now() < deadline,
                "the router did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How the router process is started.
enum Launch<'a> {
    /// As it is.
    Plain,
    /// Under `prlimit --nofile=N`.
    FileLimit(u32),
    /// In a private mount namespace with a tmpfs of `size` mounted at `dir` (its audit log
    /// goes there; the machine's mounts are untouched and the tmpfs goes with the process).
    AuditTmpfs { dir: &'a Path, size: &'a str },
}

pub(crate) fn start_router(dir: &Path, extra: &[&str]) -> Result<Router> {
    start_router_as(dir, extra, Launch::Plain)
}

fn start_router_as(dir: &Path, extra: &[&str], launch: Launch<'_>) -> Result<Router> {
    let bin = workspace_root().join("target/debug/kars-router");
    ensure!(bin.exists(), "{} is not built", bin.display());
    let port = free_port()?;
    let proxy_port = free_port()?;
    std::fs::write(dir.join("token"), "admin-token\n")?;
    let audit_log = match &launch {
        Launch::AuditTmpfs { dir: audit, .. } => audit.join("audit.jsonl"),
        _ => dir.join("audit.jsonl"),
    };
    let mut command = match &launch {
        Launch::Plain => Command::new(&bin),
        Launch::FileLimit(n) => {
            let mut c = Command::new("prlimit");
            c.arg(format!("--nofile={n}:{n}")).arg("--").arg(&bin);
            c
        }
        Launch::AuditTmpfs { dir: audit, size } => {
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "sh", "-c"])
                .arg(r#"mount -t tmpfs -o "size=$1" tmpfs "$2" && shift 2 && exec "$@""#)
                .arg("sh")
                .arg(size)
                .arg(audit)
                .arg(&bin);
            c
        }
    };
    let child = command
        .args(["--address", "127.0.0.1", "--port", &port.to_string()])
        .args(["--proxy-port", &proxy_port.to_string()])
        .args(extra)
        .env("EGRESS_ALLOWLIST_DIR", dir.join("egress"))
        .env("INFERENCE_POLICY_DIR", dir.join("inference"))
        .arg("--audit-log")
        .arg(&audit_log)
        .arg("--admin-token-file")
        .arg(dir.join("token"))
        .env("AGT_POLICY_DIR", dir.join("agt"))
        .env("KARS_COMMERCE_LEDGER", dir.join("commerce-ledger.json"))
        .env("SANDBOX_NAME", "e2e")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kars-router")?;
    let r = Router {
        child,
        port,
        proxy_port,
    };
    for _ in 0..100 {
        if http(r.port, "GET", "/healthz", "", None).is_ok_and(|(c, _)| c == 200) {
            return Ok(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("kars-router did not answer on port {port}")
}

/// A minimal HTTP/1.1 client (one request per connection).
pub(crate) fn http(
    port: u16,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> Result<(u16, String)> {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(b) = &bearer {
        headers.push(("Authorization", b.as_str()));
    }
    kars_e2e::http_request(port, method, path, &headers, body)
}

fn kars_audit(args: &[&str]) -> Result<(i32, String)> {
    let out = kars_e2e::run_to_end(kars_e2e::kars_command()?.arg("audit").args(args))?;
    Ok((out.code, out.combined()))
}

fn governance_and_audit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("agt"))?;
    std::fs::copy(
        workspace_root().join("router/testdata/kars-default-agt-profile.yaml"),
        d.join("agt/default.yaml"),
    )?;
    let router = start_router(d, &[])?;
    let mut expected = Vec::new();
    for (action, allowed) in [
        ("shell:ls", true),
        ("shell:rm", false),
        ("tool:web_fetch:https://example.com", true),
        ("admin:bulk_delete", false),
        ("nothing:matches", false),
    ] {
        let (code, body) = http(
            router.port,
            "POST",
            "/governance/check",
            &format!(r#"{{"action":"{action}"}}"#),
            None,
        )?;
        let v: Value = serde_json::from_str(&body).with_context(|| body.clone())?;
        ensure!(
            code == 200 && v["allowed"] == allowed,
            "{action}: {code} {v}"
        );
        expected.push(action);
    }
    let (code, body) = http(
        router.port,
        "GET",
        "/internal/audit-head",
        "",
        Some("admin-token"),
    )?;
    ensure!(code == 200, "audit head: {code} {body}");
    let head: Value = serde_json::from_str(&body)?;
    ensure!(head["records"] == 5, "{head}");
    let head_hash = head["head"].as_str().context("head")?.to_string();
    drop(router);

    let log = d.join("audit.jsonl");
    let log_s = log.to_string_lossy().to_string();
    let (code, out) = kars_audit(&["verify", &log_s, "--expect-head", &head_hash])?;
    ensure!(
        code == 0 && out.contains("5 record(s)"),
        "verify: {code} {out}"
    );
    let lines: Vec<String> = std::fs::read_to_string(&log)?
        .lines()
        .map(str::to_string)
        .collect();
    for (i, action) in expected.iter().enumerate() {
        ensure!(
            lines[i].contains(action),
            "record {i} is not {action}: {}",
            lines[i]
        );
    }
    let write = |ls: &[String]| std::fs::write(&log, ls.join("\n") + "\n");
    // An edit: turn a deny into an allow.
    let mut edited = lines.clone();
    edited[1] = edited[1].replace("\"verdict\":\"deny\"", "\"verdict\":\"allow\"");
    write(&edited)?;
    let (code, out) = kars_audit(&["verify", &log_s])?;
    ensure!(
        code == 1 && out.contains("line 2 (seq 1)"),
        "edit: {code} {out}"
    );
    // A deletion.
    let mut deleted = lines.clone();
    deleted.remove(2);
    write(&deleted)?;
    let (code, out) = kars_audit(&["verify", &log_s, "--json"])?;
    let v: Value = serde_json::from_str(&out).with_context(|| out.clone())?;
    ensure!(
        code == 1 && v["line"] == 3 && v["seq"] == 3,
        "deletion: {v}"
    );
    // Reordering.
    let mut swapped = lines.clone();
    swapped.swap(3, 4);
    write(&swapped)?;
    let (code, out) = kars_audit(&["verify", &log_s])?;
    ensure!(code == 1 && out.contains("line 4"), "reorder: {code} {out}");
    // The tail cut off: only the head kept elsewhere tells.
    write(&lines[..3])?;
    let (code, _) = kars_audit(&["verify", &log_s])?;
    ensure!(code == 0, "a prefix is a valid chain");
    let (code, out) = kars_audit(&["verify", &log_s, "--expect-head", &head_hash])?;
    ensure!(
        code == 1 && out.contains("cut from the end"),
        "truncation: {code} {out}"
    );
    // The router refuses to start on a broken log rather than appending after the break.
    write(&edited)?;
    let bin = workspace_root().join("target/debug/kars-router");
    let out = Command::new(bin)
        .args([
            "--address",
            "127.0.0.1",
            "--port",
            "0",
            "--audit-log",
            &log_s,
        ])
        .output()?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("kars audit verify"),
        "router on a broken log: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A loopback upstream answering one fixed response per connection; counts connections.
pub(crate) fn upstream() -> Result<(u16, std::sync::Arc<std::sync::atomic::AtomicUsize>)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
            );
        }
    });
    Ok((port, count))
}

pub(crate) fn raw(port: u16, request: &str) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request.as_bytes())?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn egress_proxy() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (up, count) = upstream()?;
    std::fs::create_dir_all(d.join("egress"))?;
    std::fs::write(
        d.join("egress/allowlist.json"),
        format!(r#"{{"endpoints":[{{"host":"localhost","port":{up}}}],"schemaVersion":1}}"#),
    )?;
    std::fs::write(d.join("blocklist"), "# blocked\nblocked.localhost\n")?;
    let blocklist = d.join("blocklist").to_string_lossy().to_string();
    let metrics_port = free_port()?;
    let router = start_router(
        d,
        &[
            "--allow-private-cidr",
            "127.0.0.0/8",
            "--blocklist-file",
            &blocklist,
            "--reload-seconds",
            "3600",
            "--metrics-port",
            &metrics_port.to_string(),
        ],
    )?;
    // Allowed: a CONNECT tunnel and an absolute-form request through the real process.
    let out = raw(
        router.proxy_port,
        &format!(
            "CONNECT localhost:{up} HTTP/1.1\r\nHost: localhost:{up}\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
        ),
    )?;
    ensure!(
        out.starts_with("HTTP/1.1 200 Connection Established") && out.ends_with("hello"),
        "CONNECT: {out}"
    );
    let out = raw(
        router.proxy_port,
        &format!("GET http://localhost:{up}/x HTTP/1.1\r\nHost: localhost:{up}\r\n\r\n"),
    )?;
    ensure!(
        out.contains("200 OK") && out.ends_with("hello"),
        "absolute form: {out}"
    );
    let reached = count.load(std::sync::atomic::Ordering::SeqCst);
    ensure!(reached == 2, "upstream saw {reached} connections");
    // Refused: other port, IP literal, blocklisted subdomain, Host mismatch.
    for (request, label) in [
        (
            format!("CONNECT localhost:{} HTTP/1.1\r\n\r\n", up + 1),
            "NotAllowed",
        ),
        (
            format!("CONNECT 127.0.0.1:{up} HTTP/1.1\r\n\r\n"),
            "InvalidHost",
        ),
        (
            format!("CONNECT blocked.localhost:{up} HTTP/1.1\r\n\r\n"),
            "Blocklisted",
        ),
        (
            format!("GET http://localhost:{up}/ HTTP/1.1\r\nHost: evil.example\r\n\r\n"),
            "InvalidHost",
        ),
    ] {
        let out = raw(router.proxy_port, &request)?;
        ensure!(
            out.contains(label) && !out.contains("hello"),
            "{request:?}: {out}"
        );
    }
    ensure!(
        count.load(std::sync::atomic::Ordering::SeqCst) == reached,
        "a refused request reached upstream"
    );
    // The metrics port (METRICS_PORT in the rendered pod) serves the same counters.
    let (code, metrics) = http(metrics_port, "GET", "/metrics", "", None)?;
    ensure!(
        code == 200
            && metrics.contains(
                r#"kars_router_egress_decisions_total{outcome="refused",reason="Blocklisted"} 1"#
            )
            && metrics.contains(
                r#"kars_router_egress_decisions_total{outcome="allowed",reason="allowlist"} 2"#
            ),
        "metrics: {metrics}"
    );
    // A new allowlist is picked up without a restart (a file-system event: polling is hourly
    // here); the old entry stops working.
    std::fs::write(
        d.join("egress/allowlist.json"),
        r#"{"endpoints":[{"host":"localhost","port":1}],"schemaVersion":1}"#,
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let out = raw(
            router.proxy_port,
            &format!("CONNECT localhost:{up} HTTP/1.1\r\n\r\n"),
        )?;
        if out.contains("NotAllowed") {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "reload not applied: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every decision is in the audit log, and the chain verifies.
    drop(router);
    let log = d.join("audit.jsonl");
    let (code, out) = kars_audit(&["verify", &log.to_string_lossy()])?;
    ensure!(code == 0, "audit: {out}");
    let text = std::fs::read_to_string(&log)?;
    ensure!(
        text.contains("\"event\":\"egress.decision\"") && text.contains("Blocklisted"),
        "audit content"
    );
    Ok(())
}

const HTTPS_UPSTREAM: &str = r#"
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        with open(sys.argv[3], "a") as f:
            f.write(json.dumps({"path": self.path, "auth": self.headers.get("authorization", ""), "body": json.loads(body)}) + "\n")
        out = json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": 40}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
srv = http.server.HTTPServer(("127.0.0.1", 0), H)
if sys.argv[1] != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn inference_over_https() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // A private CA and an HTTPS upstream on 127.0.0.1.
    kars_e2e::pki::root_ca(d, "ca")?;
    let (srv_pem, srv_key) =
        kars_e2e::pki::leaf(d, "ca", "srv", "/CN=upstream", kars_e2e::pki::SERVER_127)?;
    let (_upstream, up_port, log) = python_upstream(d, Some((&srv_pem, &srv_key)))?;
    std::fs::create_dir_all(d.join("inference"))?;
    std::fs::write(
        d.join("inference/inference-policy.json"),
        r#"{"modelPreference":{"primary":{"provider":"up","deployment":"dep-1"}},"tokenBudget":{"perRequestTokens":50,"dailyTokens":100}}"#,
    )?;
    std::fs::write(d.join("up.key"), "sk-test\n")?;
    let provider = format!("up=https://127.0.0.1:{up_port}/v1");
    let key = format!("up={}", d.join("up.key").display());
    let ca = d.join("ca.pem").to_string_lossy().to_string();
    let budget = d.join("budget.json").to_string_lossy().to_string();
    let args = [
        "--provider",
        provider.as_str(),
        "--provider-key-file",
        key.as_str(),
        "--inference-ca-file",
        ca.as_str(),
        "--budget-file",
        budget.as_str(),
    ];
    let upstream_calls = || {
        std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let chat = |port: u16, id: &str, max: u64| -> Result<(u16, String)> {
        let body = format!(
            r#"{{"model":"whatever","max_tokens":{max},"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        kars_e2e::http_request(
            port,
            "POST",
            "/v1/chat/completions",
            &[("Content-Type", "application/json"), ("x-request-id", id)],
            &body,
        )
    };
    {
        let router = start_router(d, &args)?;
        // Over the per-request cap: refused, the upstream is not called.
        let (code, out) = chat(router.port, "r0", 500)?;
        ensure!(code == 429 && out.contains("budget_exceeded"), "cap: {out}");
        ensure!(
            upstream_calls() == 0,
            "the upstream was called for a refused request"
        );
        // Two requests fit the day (0+50, 40+50 ≤ 100) and go over TLS to the private-CA upstream.
        for id in ["r1", "r2"] {
            let (code, out) = chat(router.port, id, 50)?;
            ensure!(
                code == 200 && out.contains("\"total_tokens\": 40"),
                "{id}: {out}"
            );
        }
        // 80 used + 50 asked > 100: refused before the upstream.
        let (code, out) = chat(router.port, "r3", 50)?;
        ensure!(
            code == 429 && out.contains("dailyExhausted"),
            "budget: {out}"
        );
        ensure!(
            upstream_calls() == 2,
            "upstream calls: {}",
            upstream_calls()
        );
    }
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&log)?
            .lines()
            .next()
            .context("log")?,
    )?;
    ensure!(
        first["auth"] == "Bearer sk-test"
            && first["body"]["model"] == "dep-1"
            && first["path"] == "/v1/chat/completions",
        "upstream saw {first}"
    );
    // A restart keeps the day's usage.
    {
        let router = start_router(d, &args)?;
        let (code, out) = chat(router.port, "r4", 50)?;
        ensure!(code == 429, "after restart: {out}");
    }
    // Without the private CA the upstream's certificate is not trusted: nothing is sent.
    std::fs::remove_file(d.join("budget.json"))?;
    let no_ca = [
        "--provider",
        provider.as_str(),
        "--provider-key-file",
        key.as_str(),
        "--budget-file",
        budget.as_str(),
    ];
    let router = start_router(d, &no_ca)?;
    let (code, out) = chat(router.port, "r5", 50)?;
    ensure!(
        code == 502 && out.contains("upstream_unavailable"),
        "without the CA: {out}"
    );
    ensure!(upstream_calls() == 2);
    Ok(())
}

/// Policy mounts of a started router: (mountPath, directory, annotated digest).
pub(crate) type Mounts = Vec<(String, std::path::PathBuf, String)>;

/// Replaces the mounted egress allowlist with an empty one (a stale or tampered mount); returns
/// the mount path.
fn make_allowlist_stale(mounted: &Mounts) -> Result<String> {
    let (path, target, _) = mounted
        .iter()
        .find(|(p, _, _)| p.ends_with("/egress"))
        .context("the allowlist mount")?;
    std::fs::write(
        target.join("allowlist.json"),
        r#"{"endpoints":[],"schemaVersion":1}"#,
    )?;
    Ok(path.clone())
}

/// A condition field of a fixture's PolicyRepo, via kubectl.
fn policyrepo_condition(
    cluster: &kars_e2e::Cluster,
    f: &kars_e2e::fixture::PolicyRepoFixture,
    kind: &str,
    field: &str,
) -> Result<String> {
    f.policyrepo_jsonpath(
        cluster,
        &format!("{{.status.conditions[?(@.type==\"{kind}\")].{field}}}"),
    )
}

/// The rendered router container of a Deployment, if it has one.
fn router_container(deployment: &Value) -> Option<&Value> {
    deployment["spec"]["template"]["spec"]["containers"]
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["name"] == kars_contract::router::CONTAINER)
        })
}

/// (mount path, ConfigMap) for every rendered ConfigMap a Deployment mounts into its router,
/// read from the Deployment the way kubelet reads it (volumeMounts → volumes → ConfigMap).
fn router_configmaps<'a>(deployment: &Value, objects: &[&'a Value]) -> Vec<(String, &'a Value)> {
    let ns = deployment["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    let Some(router) = router_container(deployment) else {
        return Vec::new();
    };
    router["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| {
            let path = m["mountPath"].as_str()?;
            let cm_name = volumes
                .as_array()?
                .iter()
                .find(|v| v["name"] == m["name"])?["configMap"]["name"]
                .as_str()?;
            let cm = objects.iter().copied().find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"] == cm_name
                    && o["metadata"]["namespace"] == ns
            })?;
            Some((path.to_string(), cm))
        })
        .collect()
}

/// Mounts the ConfigMaps a rendered Deployment gives its router under `d` (as kubelet would:
/// one file per key), writes the admin token, and starts `kars-router` on `address:port` with
/// the container's rendered environment (paths moved under `d`). Returns the mounts
/// (mountPath, directory, annotated digest) and the process.
pub(crate) fn start_rendered_router(
    objects: &[&Value],
    deployment: &Value,
    d: &Path,
    address: &str,
    port: u16,
    token: &str,
) -> Result<(Mounts, Router)> {
    start_rendered_router_with_proxy(objects, deployment, d, address, port, 0, token)
}

/// [`start_rendered_router`] with its egress proxy on `proxy_port` (0: none).
pub(crate) fn start_rendered_router_with_proxy(
    objects: &[&Value],
    deployment: &Value,
    d: &Path,
    address: &str,
    port: u16,
    proxy_port: u16,
    token: &str,
) -> Result<(Mounts, Router)> {
    let router = router_container(deployment).context("router container")?;
    let mut mounted: Mounts = Vec::new();
    for (path, cm) in router_configmaps(deployment, objects) {
        let target = d.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&target)?;
        for (k, v) in cm["data"].as_object().into_iter().flatten() {
            std::fs::write(target.join(k), v.as_str().unwrap_or_default())?;
        }
        let digest = cm["metadata"]["annotations"]["gitops.kars.io/content-digest"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        mounted.push((path, target, digest));
    }
    ensure!(
        mounted.len() >= 3,
        "expected the allowlist, approvals, AGT and inference mounts: {mounted:?}"
    );
    std::fs::create_dir_all(d.join("etc/kars/secrets"))?;
    std::fs::write(d.join("etc/kars/secrets/admin-token"), token)?;
    let mut cmd = Command::new(workspace_root().join("target/debug/kars-router"));
    cmd.args([
        "--address",
        address,
        "--port",
        &port.to_string(),
        "--proxy-port",
        &proxy_port.to_string(),
        // The rendered router signs its audit head every 60 s; tests do not wait that long.
        "--audit-sign-interval",
        "1s",
    ]);
    for e in router["env"].as_array().into_iter().flatten() {
        let (Some(name), Some(value)) = (e["name"].as_str(), e["value"].as_str()) else {
            continue;
        };
        // Paths the renderer chose point into the temporary root; ports are ours.
        if name.ends_with("_FILES") {
            let items: Vec<String> = value
                .split(',')
                .map(|item| match item.split_once("=/") {
                    Some((k, path)) => format!("{k}={}", d.join(path).display()),
                    None => item.to_string(),
                })
                .collect();
            cmd.env(name, items.join(","));
        } else if value.starts_with('/') {
            cmd.env(name, d.join(value.trim_start_matches('/')));
        } else if !name.ends_with("_PORT") {
            cmd.env(name, value);
        }
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    Ok((
        mounted,
        Router {
            child,
            port,
            proxy_port,
        },
    ))
}

/// The OpenAI-compatible upstream of [`HTTPS_UPSTREAM`] on 127.0.0.1, over TLS with
/// `tls = (certificate, key)` or plain HTTP: the process, its port, and the file it logs each
/// request to (path, authorization, body).
fn python_upstream(
    d: &Path,
    tls: Option<(&Path, &Path)>,
) -> Result<(Killed, u16, std::path::PathBuf)> {
    let log = d.join("upstream.log");
    let (cert, key) = tls.unwrap_or((Path::new("-"), Path::new("-")));
    let mut child = Command::new("python3")
        .args(["-c", HTTPS_UPSTREAM])
        .arg(cert)
        .arg(key)
        .arg(&log)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the upstream")?;
    let mut line = String::new();
    {
        use std::io::BufRead;
        let out = child.stdout.take().context("stdout")?;
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let child = Killed(child);
    let port = line
        .trim()
        .parse()
        .with_context(|| format!("upstream port: {line:?}"))?;
    Ok((child, port, log))
}

/// The ToolPolicy's own fields on the real router process: a transfer within the caps is
/// allowed, one over the threshold needs approval, over the per-transfer cap or to an unlisted
/// counterparty is denied and audited; the day's spend survives a restart (the cap still
/// holds); a burst of calls ends in 429 with retry_after_secs.
fn tool_policy_enforced() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("agt"))?;
    std::fs::write(
        d.join("agt/profile.yaml"),
        "agent: e2e\npolicies:\n- {name: tools, allowed_actions: ['tool:*'], priority: 1}\n",
    )?;
    std::fs::write(
        d.join("agt/profile.json"),
        r#"{"appliesTo":{"tool":"pay","sandboxMatchLabels":{"team":"a"}},"commerce":{"counterpartyAllowlist":["acme.example"],"perTransferCap":"USD 100.00","dailyCap":"USD 150.00","monthlyCap":"USD 1000.00"},"approval":{"mode":"aboveThreshold","threshold":"USD 50.00"},"rateLimit":{"rps":1,"burst":20},"displayName":null}"#,
    )?;
    let evaluate = |r: &Router, action: &str| -> Result<(u16, Value)> {
        let body = serde_json::to_string(&serde_json::json!({"action": action}))?;
        let (code, text) = http(r.port, "POST", "/agt/evaluate", &body, None)?;
        Ok((code, serde_json::from_str(&text)?))
    };
    let decision = |r: &Router, action: &str| -> Result<(String, String)> {
        let (code, v) = evaluate(r, action)?;
        ensure!(code == 200, "{action}: {code} {v}");
        Ok((
            v["decision"].as_str().unwrap_or_default().to_string(),
            v["reason"].as_str().unwrap_or_default().to_string(),
        ))
    };
    let router = start_router(d, &[])?;
    let (word, why) = decision(&router, "tool:pay:USD 40.00 acme.example")?;
    ensure!(word == "allow", "within the caps: {word} {why}");
    let (word, why) = decision(&router, "tool:pay:USD 60.00 acme.example")?;
    ensure!(
        word == "requires_approval" && why.contains("above the threshold USD 50.00"),
        "over the threshold: {word} {why}"
    );
    let (word, why) = decision(&router, "tool:pay:USD 120.00 acme.example")?;
    ensure!(
        word == "deny" && why.contains("over perTransferCap USD 100.00"),
        "over the per-transfer cap: {word} {why}"
    );
    let (word, why) = decision(&router, "tool:pay:USD 10.00 evil.example")?;
    ensure!(
        word == "deny" && why.contains("counterparty"),
        "unlisted counterparty: {word} {why}"
    );
    for _ in 0..2 {
        let (word, why) = decision(&router, "tool:pay:USD 45.00 acme.example")?;
        ensure!(word == "allow", "{word} {why}");
    }
    drop(router);
    // 130.00 allowed today, across a restart: 30.00 more would pass the 150.00 daily cap.
    let router = start_router(d, &[])?;
    let (word, why) = decision(&router, "tool:pay:USD 30.00 acme.example")?;
    ensure!(
        word == "deny" && why.contains("on top of USD 130.00 would pass dailyCap USD 150.00"),
        "after a restart: {word} {why}"
    );
    let audit = std::fs::read_to_string(d.join("audit.jsonl"))?;
    ensure!(
        audit
            .lines()
            .filter(|l| l.contains("governance.decision"))
            .any(|l| l.contains("over perTransferCap"))
            && audit
                .lines()
                .any(|l| l.contains("no counterparty of counterpartyAllowlist"))
            && audit.lines().any(|l| l.contains("would pass dailyCap")),
        "the refusals are audited: {audit}"
    );
    // A burst of calls (1 per second, 20 at once) ends in 429 with the time to wait.
    let mut limited = None;
    for _ in 0..30 {
        let (code, v) = evaluate(&router, "tool:pay:USD 0.01 acme.example")?;
        if code == 429 {
            limited = Some(v);
            break;
        }
    }
    let v = limited.context("no 429 after 30 quick calls")?;
    ensure!(
        v["rate_limited"] == true
            && v["allowed"] == false
            && v["retry_after_secs"].as_u64() == Some(1)
            && v["matched_rule"]
                .as_str()
                .is_some_and(|r| r.contains("rateLimit")),
        "rate limited: {v}"
    );
    Ok(())
}

/// Inference configured from Git: the template with kars.yaml's provider pointed at a local
/// OpenAI-compatible upstream renders a router (exactly the environment and mounts written in
/// the Deployment) that answers a chat completion with the deployment as model and the key from
/// the provider's Secret; before the Secret's file exists, 503 provider_credentials_missing and
/// the upstream is not called without a key.
fn rendered_template_chat_completion() -> Result<()> {
    use kars_renderer::source::SourceLimits;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (_upstream, up_port, log) = python_upstream(d, None)?;
    let template = workspace_root().join("repo-template");
    let tree = kars_renderer::RepoTree::from_dir(&template, SourceLimits::default())?;
    let template_endpoint = "endpoint: https://example.openai.azure.com/openai/v1";
    let files: Vec<(String, Vec<u8>)> = tree
        .files()
        .map(|(p, b)| {
            let b = if p == "kars.yaml" {
                String::from_utf8_lossy(b)
                    .replace(
                        template_endpoint,
                        &format!("endpoint: http://127.0.0.1:{up_port}/v1"),
                    )
                    .into_bytes()
            } else {
                b.to_vec()
            };
            (p.to_string(), b)
        })
        .collect();
    ensure!(
        files.iter().any(|(p, b)| p == "kars.yaml"
            && String::from_utf8_lossy(b).contains(&format!("127.0.0.1:{up_port}"))),
        "the template's kars.yaml no longer has {template_endpoint:?}"
    );
    let tree = kars_renderer::RepoTree::from_files(files);
    let rendered = kars_renderer::render_tree(&tree, None, &kars_renderer::Bundles::none())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let objects: Vec<&Value> = rendered.objects.iter().map(|o| &o.manifest).collect();
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == "hello-agent")
        .context("the template's Deployment")?;
    // The key comes from a Secret volume mounted into the router only.
    let pod = &deployment["spec"]["template"]["spec"];
    let secret_volume = pod["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == "provider-azure-openai")
        .context("no Secret volume for the provider")?;
    ensure!(
        secret_volume["secret"]["secretName"] == "azure-openai-key"
            && secret_volume["secret"]["items"][0]["key"] == "api-key",
        "{secret_volume}"
    );
    for c in pod["containers"].as_array().into_iter().flatten() {
        let mounts_key = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == "provider-azure-openai");
        ensure!(
            mounts_key == (c["name"] == "inference-router"),
            "container {} mounts the key: {mounts_key}",
            c["name"]
        );
    }
    let root = d.join("root");
    let port = free_port()?;
    let (_mounted, router) = start_rendered_router_with_proxy(
        &objects,
        deployment,
        &root,
        "127.0.0.1",
        port,
        free_port()?,
        "t0k",
    )?;
    let body =
        r#"{"model":"anything","messages":[{"role":"user","content":"hello"}],"max_tokens":100}"#;
    let chat = || http(router.port, "POST", "/v1/chat/completions", body, None);
    let mut first = (0, String::new());
    for _ in 0..100 {
        match chat() {
            Ok(r) => {
                first = r;
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    ensure!(
        first.0 == 503
            && first.1.contains("provider_credentials_missing")
            && first.1.contains("azure-openai"),
        "without the Secret's key: {first:?}"
    );
    ensure!(
        std::fs::read_to_string(&log).unwrap_or_default().is_empty(),
        "the upstream was called without a key"
    );
    // The Secret appears (kubelet writes the volume): used from the next request on.
    let key = root.join("etc/kars/providers/azure-openai/key");
    std::fs::create_dir_all(key.parent().context("key dir")?)?;
    std::fs::write(&key, "sk-template\n")?;
    let (status, answer) = chat()?;
    ensure!(
        status == 200 && answer.contains("\"hi\""),
        "{status} {answer}"
    );
    let logged: Value = serde_json::from_str(
        std::fs::read_to_string(&log)?
            .lines()
            .next()
            .context("the upstream saw nothing")?,
    )?;
    ensure!(
        logged["path"] == "/v1/chat/completions"
            && logged["auth"] == "Bearer sk-template"
            && logged["body"]["model"] == "gpt-4.1",
        "upstream saw {logged}"
    );
    rendered_router_signs_its_audit_head(&root, router)
}

/// The rendered router's audit signing seed (the generated Secret `router-audit-key`, mounted
/// into the router only) appears after the router started: the router picks it up, shows its
/// public key on `/internal/audit-head`, signs the head when stopped, and `kars audit verify
/// --key` proves the log with it.
fn rendered_router_signs_its_audit_head(root: &Path, mut router: Router) -> Result<()> {
    let seed = root.join(kars_contract::router::audit_key_file().trim_start_matches('/'));
    std::fs::create_dir_all(seed.parent().context("seed dir")?)?;
    std::fs::write(&seed, format!("{}\n", "5a".repeat(32)))?;
    let key = kars_router::audit_heads::signing_key_from_text(&"5a".repeat(32))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let public = key.verifying_key();
    let id = kars_router::audit_heads::key_id(&public);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let (code, body) = http(router.port, "GET", "/internal/audit-head", "", Some("t0k"))?;
        ensure!(code == 200, "/internal/audit-head: {code} {body}");
        let v: Value = serde_json::from_str(&body)?;
        if !v["signing"].is_null() {
            break v;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the router did not pick up its signing key within 10 s: {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        shown["signing"]["key"] == id.as_str()
            && shown["signing"]["publicKey"]
                == kars_router::audit_heads::public_key_pem(&public).as_str(),
        "{shown}"
    );
    router.terminate()?;
    let log = root.join("var/log/kars/audit/audit.jsonl");
    let pem = root.join("router-audit.pub");
    std::fs::write(&pem, kars_router::audit_heads::public_key_pem(&public))?;
    let mut c = kars_e2e::kars_command()?;
    c.args(["audit", "verify"]).arg(&log).arg("--key").arg(&pem);
    let out = kars_e2e::run_to_end(&mut c)?;
    ensure!(
        out.success() && out.stdout.contains(&format!("by key {id} verify")),
        "kars audit verify --key: {}",
        out.combined()
    );
    Ok(())
}

/// "Ready means enforced": the router, given exactly the ConfigMaps and environment the renderer
/// wrote for a sandbox (mounted as kubelet would), reports for every policy the digest the
/// renderer annotated on its ConfigMap.
fn rendered_policies_digests_agree() -> Result<()> {
    use kars_renderer::source::SourceLimits;
    let tree = kars_renderer::RepoTree::from_dir(
        &workspace_root().join("repo-template"),
        SourceLimits::default(),
    )?;
    let rendered = kars_renderer::render_tree(&tree, None, &kars_renderer::Bundles::none())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let objects: Vec<&Value> = rendered.objects.iter().map(|o| &o.manifest).collect();
    let deployment = objects
        .iter()
        .find(|o| {
            o["kind"] == "Deployment"
                && o["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .is_some_and(|cs| cs.iter().any(|c| c["name"] == "inference-router"))
        })
        .context("no Deployment with the router")?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (mounted, r) =
        start_rendered_router(&objects, deployment, d, "127.0.0.1", free_port()?, "t0k")?;
    let mut status = Value::Null;
    for _ in 0..100 {
        if let Ok((200, body)) = http(r.port, "GET", "/internal/policy-status", "", Some("t0k")) {
            status = serde_json::from_str(&body)?;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let entries = status["entries"]
        .as_array()
        .context("policy-status entries")?;
    for (path, target, expected) in &mounted {
        let entry = entries
            .iter()
            .find(|e| e["source_path"] == target.to_string_lossy().as_ref())
            .with_context(|| format!("the router did not load {path}: {status}"))?;
        ensure!(
            entry["digest"] == expected.as_str() && entry["last_error"].is_null(),
            "{path}: the router reports {} (error {}), the renderer annotated {expected}",
            entry["digest"],
            entry["last_error"]
        );
    }
    // The agent's check agrees: enforced now; not enforced once a mounted policy differs from
    // the rendered one (here: edited on disk, as a stale or tampered mount would be). What the
    // agent expects is the renderer's record, not read back from the Deployment.
    let namespace = deployment["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default();
    let expectation = rendered
        .routers
        .iter()
        .find(|r| r.namespace == namespace)
        .context("the renderer's router expectation")?;
    let expected = kars_gitops_agent::enforcement::expected_digests(expectation);
    ensure!(
        expected.len() >= 3
            && expected
                .values()
                .all(|d| mounted.iter().any(|(_, _, m)| m == d)),
        "agent view {expected:?} vs mounts {mounted:?}"
    );
    let client = kars_gitops_agent::reqwest_client()?;
    let base = format!("http://127.0.0.1:{}", r.port);
    let probe = |token: &'static str| {
        let (client, base, expected) = (client.clone(), base.clone(), expected.clone());
        kars_e2e::block_on_value(async move {
            kars_gitops_agent::enforcement::probe(&client, &base, token, &expected).await
        })
    };
    probe("t0k")?.map_err(|p| anyhow::anyhow!("not enforced: {p:?}"))?;
    ensure!(
        probe("wrong")?.is_err(),
        "the wrong token must not read the status"
    );
    let path = make_allowlist_stale(&mounted)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match probe("t0k")? {
            Err(problems) if problems.iter().any(|p| p.contains("EgressAllowlist")) => break,
            other => ensure!(
                std::time::Instant::now() < deadline,
                "{path}: still enforced after a change: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// On the real control plane: a sandbox whose router pod runs (a Pod object marked Running at
/// 127.0.0.2, where a real kars-router serves the rendered mounts) is Ready only while that
/// router reports the rendered digests.
fn ready_waits_for_enforcement() -> Result<()> {
    use kars_e2e::fixture::PolicyRepoFixture;
    use kars_gitops_agent::sync::sync_once;
    let cluster = kars_e2e::Cluster::shared()?;
    kars_e2e::install_kars_crds(cluster)?;
    let f = PolicyRepoFixture::new(&kars_e2e::unique_name("enforce"), &["a"])?;
    let cfg = f.config(&f.file_url())?;
    let agent = f.agent("a");
    let ns = format!("kars-{agent}");
    // First sync: no router pod runs, so nothing contradicts; Enforced is Unknown.
    let o = kars_e2e::block_on_value(async {
        let client = cluster.client().await?;
        sync_once(client, &cfg, None, &|| false)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })??;
    ensure!(
        o.converged() && o.not_enforced.is_empty(),
        "first sync: {:?}",
        o.not_enforced
    );
    // The token the agent generated for this sandbox's router.
    let (ok, token, err) = cluster.kubectl(&[
        "-n",
        &ns,
        "get",
        "secret",
        "router-admin-token",
        "-o",
        "jsonpath={.data.token}",
    ])?;
    ensure!(ok, "router-admin-token: {err}");
    let token = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, token.trim())
            .context("token is base64")?,
    )?;
    // The router, serving exactly what was rendered, on the pod's address.
    use kars_renderer::source::SourceLimits;
    let tree = kars_renderer::RepoTree::from_dir(&f.work.path, SourceLimits::default())?;
    let rendered = kars_renderer::render_tree(&tree, None, &kars_renderer::Bundles::none())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let objects: Vec<&Value> = rendered.objects.iter().map(|o| &o.manifest).collect();
    let deployment = objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == agent.as_str())
        .context("the sandbox Deployment")?;
    let dir = tempfile::tempdir()?;
    let (mounted, router) = start_rendered_router(
        &objects,
        deployment,
        dir.path(),
        "127.0.0.2",
        kars_gitops_agent::enforcement::ROUTER_PORT,
        &token,
    )?;
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.2", router.port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // A Pod of the sandbox, marked Running at 127.0.0.2 (no kubelet runs here).
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: router-probe\n  namespace: {ns}\n  labels:\n    kars.azure.com/sandbox: {agent}\nspec:\n  containers:\n  - name: x\n    image: example.invalid/x:1\n"
    );
    let (ok, out) = kars_e2e::kubectl_apply(cluster, &pod, false)?;
    ensure!(ok, "creating the pod: {out}");
    let (ok, _, err) = cluster.kubectl(&[
        "-n",
        &ns,
        "patch",
        "pod",
        "router-probe",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","podIP":"127.0.0.2","podIPs":[{"ip":"127.0.0.2"}]}}"#,
    ])?;
    ensure!(ok, "marking the pod Running: {err}");
    let sync = || {
        kars_e2e::block_on_value(async {
            let client = cluster.client().await?;
            sync_once(client, &cfg, None, &|| false)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))
        })?
    };
    let o = sync()?;
    ensure!(
        o.converged(),
        "with the router enforcing: {:?} {:?}",
        o.not_enforced,
        o.apply.failures().collect::<Vec<_>>()
    );
    let enforced = policyrepo_condition(cluster, &f, "Enforced", "status")?;
    ensure!(enforced == "True", "Enforced condition: {enforced:?}");
    // The router stops enforcing what was rendered (a stale mount): not Ready, named.
    make_allowlist_stale(&mounted)?;
    std::thread::sleep(Duration::from_millis(500));
    let o = sync()?;
    ensure!(
        o.not_enforced == vec![format!("{ns}/{agent}")] && !o.converged(),
        "after the change: {:?}",
        o.not_enforced
    );
    let ready = policyrepo_condition(cluster, &f, "Ready", "reason")?;
    ensure!(ready == "NotEnforced", "Ready reason: {ready:?}");
    drop(router);
    Ok(())
}

/// An allowlist of `localhost:<port>` and the upstream default AGT profile in `d`.
fn allow_localhost(d: &Path, port: u16) -> Result<()> {
    std::fs::create_dir_all(d.join("egress"))?;
    std::fs::write(
        d.join("egress/allowlist.json"),
        format!(r#"{{"endpoints":[{{"host":"localhost","port":{port}}}],"schemaVersion":1}}"#),
    )?;
    std::fs::create_dir_all(d.join("agt"))?;
    std::fs::copy(
        workspace_root().join("router/testdata/kars-default-agt-profile.yaml"),
        d.join("agt/default.yaml"),
    )?;
    Ok(())
}

/// Regression: with the audit volume full, `CONNECT allowed.test` still succeeded with no
/// record, the failed write left a torn record, later records were appended after it, and the
/// router then refused to start. Here the audit log is on a real 64 KiB tmpfs (in the router's
/// own mount namespace) that the test fills up.
fn full_audit_volume() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (up, count) = upstream()?;
    allow_localhost(d, up)?;
    let audit_dir = d.join("audit");
    std::fs::create_dir_all(&audit_dir)?;
    let router = start_router_as(
        d,
        &[
            "--allow-private-cidr",
            "127.0.0.0/8",
            "--audit-fsync",
            "always",
        ],
        Launch::AuditTmpfs {
            dir: &audit_dir,
            size: "64k",
        },
    )?;
    // The router's view of the audit directory (its mount namespace).
    let inside = Path::new("/proc")
        .join(router.child.id().to_string())
        .join("root")
        .join(audit_dir.strip_prefix("/")?);
    let connect = || {
        raw(
            router.proxy_port,
            &format!(
                "CONNECT localhost:{up} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
            ),
        )
    };
    ensure!(
        connect()?.starts_with("HTTP/1.1 200"),
        "before the volume is full"
    );
    // Fill the volume.
    let filler = inside.join("filler");
    {
        let mut f = std::fs::File::create(&filler)?;
        let block = vec![b'x'; 4096];
        while f.write_all(&block).is_ok() {}
    }
    // The log's last page may still hold a few records; after that, nothing fits.
    let mut refused = None;
    for _ in 0..60 {
        let reached = count.load(std::sync::atomic::Ordering::SeqCst);
        let out = connect()?;
        if out.starts_with("HTTP/1.1 200") {
            continue; // recorded in the page's slack
        }
        ensure!(
            out.starts_with("HTTP/1.1 503") && out.contains("AuditUnavailable"),
            "egress with a full audit volume must fail closed: {out}"
        );
        ensure!(
            count.load(std::sync::atomic::Ordering::SeqCst) == reached,
            "the upstream was reached although the decision was not recorded"
        );
        refused = Some(out);
        break;
    }
    ensure!(refused.is_some(), "the audit volume never filled up");
    let (code, _) = http(
        router.port,
        "POST",
        "/governance/check",
        r#"{"action":"shell:ls"}"#,
        None,
    )?;
    ensure!(code == 503, "governance with a full audit volume: {code}");
    // Space again: egress works, and the chain has no torn record in it.
    std::fs::remove_file(&filler)?;
    ensure!(
        connect()?.starts_with("HTTP/1.1 200"),
        "after space came back"
    );
    let copy = d.join("audit-copy.jsonl");
    std::fs::copy(inside.join("audit.jsonl"), &copy)?;
    let (code, out) = kars_audit(&["verify", &copy.to_string_lossy()])?;
    ensure!(code == 0, "the audit chain after a full volume: {out}");
    drop(router);
    // A router starts on that log and continues the chain.
    std::fs::copy(&copy, d.join("audit.jsonl"))?;
    let again = start_router(d, &["--allow-private-cidr", "127.0.0.0/8"])?;
    ensure!(
        raw(
            again.proxy_port,
            &format!("CONNECT localhost:{up} HTTP/1.1\r\n\r\n")
        )?
        .starts_with("HTTP/1.1 200")
    );
    drop(again);
    let (code, out) = kars_audit(&["verify", &d.join("audit.jsonl").to_string_lossy()])?;
    ensure!(code == 0, "the continued chain: {out}");
    Ok(())
}

/// Regression: the proxy's accept loop ended for good on the first accept() error (EMFILE),
/// silently, while /healthz kept answering 200 — reproduced under `prlimit --nofile` with idle
/// connections to the API port.
fn out_of_file_descriptors() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (up, _) = upstream()?;
    allow_localhost(d, up)?;
    let router = start_router_as(
        d,
        &[
            "--allow-private-cidr",
            "127.0.0.0/8",
            "--head-timeout",
            "120s",
        ],
        Launch::FileLimit(64),
    )?;
    // Idle connections to the API port until the router has no descriptor left.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(TcpStream::connect(("127.0.0.1", router.port))?);
    }
    std::thread::sleep(Duration::from_millis(500));
    // A proxy connection now makes the proxy's accept() fail with EMFILE.
    let mut starved = TcpStream::connect(("127.0.0.1", router.proxy_port))?;
    starved.set_read_timeout(Some(Duration::from_millis(800)))?;
    let _ = starved.write_all(format!("CONNECT localhost:{up} HTTP/1.1\r\n\r\n").as_bytes());
    let mut buf = [0u8; 64];
    let answered = matches!(starved.read(&mut buf), Ok(n) if n > 0);
    ensure!(
        !answered,
        "the router still had descriptors: raise the idle connection count"
    );
    drop(starved);
    drop(idle);
    // Descriptors back: both listeners accept again and health is green.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = raw(
            router.proxy_port,
            &format!(
                "CONNECT localhost:{up} HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
            ),
        )
        .unwrap_or_default();
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the proxy stopped accepting after running out of descriptors: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let (code, body) = http(router.port, "GET", "/healthz", "", None)?;
    ensure!(code == 200, "healthz after recovery: {code} {body}");
    Ok(())
}

/// An Ed25519 key pair made by openssl (as the docs tell users to): (private, public).
fn openssl_ed25519(dir: &Path, name: &str) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    let key = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.pub"));
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl").args(args).output()?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    run(&[
        "genpkey",
        "-algorithm",
        "ed25519",
        "-out",
        &key.to_string_lossy(),
    ])?;
    run(&[
        "pkey",
        "-in",
        &key.to_string_lossy(),
        "-pubout",
        "-out",
        &public.to_string_lossy(),
    ])?;
    Ok((key, public))
}

/// The router signs its audit head on an interval and on SIGTERM; `kars audit verify --key`
/// proves the log, and names a cut after a signed head and a head signed by another key.
fn signed_audit_heads() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("agt"))?;
    std::fs::copy(
        workspace_root().join("router/testdata/kars-default-agt-profile.yaml"),
        d.join("agt/default.yaml"),
    )?;
    let (key, public) = openssl_ed25519(d, "audit")?;
    let (_, other_public) = openssl_ed25519(d, "other")?;
    let key_arg = key.to_string_lossy().to_string();
    let mut router = start_router(
        d,
        &[
            "--audit-signing-key",
            &key_arg,
            "--audit-sign-interval",
            "1s",
        ],
    )?;
    let check = |action: &str| -> Result<()> {
        let (code, body) = http(
            router.port,
            "POST",
            "/governance/check",
            &format!(r#"{{"action":"{action}"}}"#),
            None,
        )?;
        ensure!(code == 200, "{action}: {code} {body}");
        Ok(())
    };
    for a in ["shell:ls", "shell:rm", "shell:cat"] {
        check(a)?;
    }
    let log = d.join("audit.jsonl");
    let heads = d.join("audit.jsonl.heads");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&heads)
        .unwrap_or_default()
        .lines()
        .count()
        < 1
    {
        ensure!(
            std::time::Instant::now() < deadline,
            "no head signed within 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check("shell:pwd")?;
    // SIGTERM (what Kubernetes sends): the final head is signed before the router exits.
    router.terminate()?;
    let records = std::fs::read_to_string(&log)?.lines().count();
    let last: Value = serde_json::from_str(
        std::fs::read_to_string(&heads)?
            .lines()
            .last()
            .context("a head")?,
    )?;
    ensure!(
        last["records"] == records,
        "the last signed head ({last}) is not the log's end ({records} records)"
    );
    let verify = |key: &Path| -> Result<(i32, String)> {
        let mut c = kars_e2e::kars_command()?;
        c.args(["audit", "verify"]).arg(&log).arg("--key").arg(key);
        let out = kars_e2e::run_to_end(&mut c)?;
        Ok((out.code, out.combined()))
    };
    let (code, out) = verify(&public)?;
    ensure!(
        code == 0
            && out.contains("signed head(s)")
            && out.contains(&format!("{records} record(s)")),
        "kars audit verify --key: {code} {out}"
    );
    let (code, out) = verify(&other_public)?;
    ensure!(
        code == 1 && out.contains("not by the given key"),
        "another key: {code} {out}"
    );
    // Cut the last record: the chain alone still verifies; the signed heads do not.
    let text = std::fs::read_to_string(&log)?;
    let kept: String = text
        .lines()
        .take(records - 1)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, kept)?;
    let (code, _) = kars_audit(&["verify", &log.to_string_lossy()])?;
    ensure!(code == 0, "the shorter chain alone verifies");
    let (code, out) = verify(&public)?;
    ensure!(
        code == 1 && out.contains("records were cut"),
        "a cut log: {code} {out}"
    );
    Ok(())
}

/// `POST /agt/evaluate` with upstream's request and answer, from a real router process: allow,
/// deny, requires_approval from the default profile, and the per-tool window (here 2 per 60 s;
/// upstream's TOOL_RATE_LIMIT_* variables set the same flags) with retry_after_secs.
fn agt_evaluate() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("agt"))?;
    std::fs::copy(
        workspace_root().join("router/testdata/kars-default-agt-profile.yaml"),
        d.join("agt/default.yaml"),
    )?;
    let router = start_router(
        d,
        &[
            "--tool-rate-limit-max",
            "2",
            "--tool-rate-limit-window-secs",
            "60",
        ],
    )?;
    let evaluate = |body: &str| -> Result<Value> {
        let (code, text) = http(router.port, "POST", "/agt/evaluate", body, None)?;
        let v: Value = serde_json::from_str(&text)?;
        // 429 exactly when rate limited.
        ensure!(
            code == if v["rate_limited"] == true { 429 } else { 200 },
            "/agt/evaluate {body}: {code} {text}"
        );
        Ok(v)
    };
    let fields = |v: &Value| {
        (
            v["allowed"].clone(),
            v["decision"].clone(),
            v["rate_limited"].clone(),
        )
    };
    let v = evaluate(r#"{"agent_id":"e2e","action":"shell:ls","context":{"cwd":"/"}}"#)?;
    ensure!(
        fields(&v) == (Value::Bool(true), "allow".into(), Value::Bool(false))
            && v["action"] == "shell:ls"
            && v["reason"].is_string(),
        "allow: {v}"
    );
    let v = evaluate(r#"{"action":"shell:rm"}"#)?;
    ensure!(
        fields(&v) == (Value::Bool(false), "deny".into(), Value::Bool(false)),
        "deny: {v}"
    );
    let v = evaluate(r#"{"action":"admin:bulk_delete"}"#)?;
    ensure!(
        fields(&v)
            == (
                Value::Bool(false),
                "requires_approval".into(),
                Value::Bool(false)
            ),
        "approval: {v}"
    );
    for _ in 0..2 {
        let v = evaluate(r#"{"action":"tool:web_fetch:https://example.com"}"#)?;
        ensure!(v["allowed"] == true, "within the window: {v}");
    }
    let v = evaluate(r#"{"action":"tool:web_fetch:https://example.com"}"#)?;
    ensure!(
        fields(&v) == (Value::Bool(false), "deny".into(), Value::Bool(true))
            && v["retry_after_secs"]
                .as_u64()
                .is_some_and(|s| (1..=60).contains(&s)),
        "over the per-tool window: {v}"
    );
    // Another tool has its own window; the kars route gives the same decision.
    let v = evaluate(r#"{"action":"tool:read_file:/tmp/x"}"#)?;
    ensure!(v["allowed"] == true, "another tool: {v}");
    let (code, text) = http(
        router.port,
        "POST",
        "/governance/check",
        r#"{"action":"shell:ls"}"#,
        None,
    )?;
    let k: Value = serde_json::from_str(&text)?;
    ensure!(
        code == 200 && k["allowed"] == true && k["verdict"] == "allow",
        "{text}"
    );
    let (code, _) = http(
        router.port,
        "POST",
        "/agt/evaluate",
        r#"{"agent_id":7,"action":"x"}"#,
        None,
    )?;
    ensure!(code == 400, "a bad body: {code}");
    Ok(())
}
