//! The runtime contract, route for route, against the real `kars-router` process: what
//! upstream's runtimes call (`shared/kars-api-details.md` §3), each route's status and body shape
//! and each documented error body, then a client that knows only upstream's API running a
//! tool check → inference → egress sequence.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use libtest_mimic::Trial;
use serde_json::{Value, json};

use super::{Killed, Router, free_port, http, python_upstream, raw, start_router, upstream};
use crate::trial;

/// Every contract trial.
pub fn tests() -> Vec<Trial> {
    vec![
        trial("router::contract::health_ready_and_metrics", health),
        trial(
            "router::contract::agt_evaluate_decisions_and_bad_requests",
            evaluate,
        ),
        trial(
            "router::contract::tool_window_is_429_with_retry_after",
            tool_window,
        ),
        trial(
            "router::contract::inference_routes_forward_upstreams_way",
            inference_routes,
        ),
        trial(
            "router::contract::budget_refusals_are_upstreams_429_bodies",
            budgets,
        ),
        trial(
            "router::contract::protected_routes_need_the_token_from_loopback_too",
            protected,
        ),
        trial(
            "router::contract::admin_allow_ips_refuse_other_peers",
            allow_ips,
        ),
        trial(
            "router::contract::egress_learn_tightens_and_never_loosens_git",
            egress_learn,
        ),
        trial(
            "router::contract::trace_header_is_echoed_or_generated",
            trace,
        ),
        trial(
            "router::contract::a_runtime_client_checks_infers_and_egresses",
            runtime_client,
        ),
    ]
}

const TOKEN: &str = "admin-token";

/// A router with an AGT profile (upstream's default), an egress allowlist naming `allowed`
/// ports on localhost, an InferencePolicy whose provider is a local OpenAI-compatible upstream,
/// token budgets, and `extra` flags.
struct Fixture {
    _dir: tempfile::TempDir,
    _upstream: Killed,
    log: std::path::PathBuf,
    router: Router,
}

fn fixture(extra: &[&str], egress_port: Option<u16>, budget: &str) -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (up, up_port, log) = python_upstream(d, None)?;
    write_policies(d, egress_port, budget)?;
    let provider = format!("up=http://127.0.0.1:{up_port}/v1");
    std::fs::write(d.join("up.key"), "sk-contract\n")?;
    let key = format!("up={}", d.join("up.key").display());
    let budget_file = d.join("budget.json").display().to_string();
    let mut args = vec![
        "--provider",
        provider.as_str(),
        "--provider-key-file",
        key.as_str(),
        "--budget-file",
        budget_file.as_str(),
        "--allow-private-cidr",
        "127.0.0.0/8",
    ];
    args.extend_from_slice(extra);
    let router = start_router(d, &args)?;
    Ok(Fixture {
        _dir: dir,
        _upstream: up,
        log,
        router,
    })
}

fn write_policies(d: &Path, egress_port: Option<u16>, budget: &str) -> Result<()> {
    std::fs::create_dir_all(d.join("agt"))?;
    std::fs::copy(
        kars_e2e::workspace_root().join("router/testdata/kars-default-agt-profile.yaml"),
        d.join("agt/default.yaml"),
    )?;
    std::fs::create_dir_all(d.join("egress"))?;
    let endpoints = egress_port
        .map(|p| format!(r#"{{"host":"localhost","port":{p}}}"#))
        .unwrap_or_default();
    std::fs::write(
        d.join("egress/allowlist.json"),
        format!(r#"{{"endpoints":[{endpoints}],"schemaVersion":1}}"#),
    )?;
    std::fs::create_dir_all(d.join("inference"))?;
    std::fs::write(
        d.join("inference/inference-policy.json"),
        format!(
            r#"{{"modelPreference":{{"primary":{{"provider":"up","deployment":"dep-1"}},"fallback":[]}},"tokenBudget":{budget}}}"#
        ),
    )?;
    Ok(())
}

fn json_of(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// Header names (lower case) and values.
type Headers = Vec<(String, String)>;

/// Status, headers and body of one raw HTTP/1.1 exchange.
fn exchange(port: u16, request: &str) -> Result<(u16, Headers, String)> {
    let out = raw(port, request)?;
    let (head, body) = out.split_once("\r\n\r\n").context("no header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body.to_string()))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn post(port: u16, path: &str, body: &str, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
        body.len()
    )
    .replace("Host: 127.0.0.1", &format!("Host: 127.0.0.1:{port}"))
}

fn health() -> Result<()> {
    let f = fixture(&[], None, "null")?;
    let p = f.router.port;
    ensure!(http(p, "GET", "/healthz", "", None)? == (200, "ok".into()));
    let (code, body) = http(p, "GET", "/readyz", "", None)?;
    ensure!(code == 200 && body == "ready", "/readyz: {code} {body}");
    let (code, body) = http(p, "GET", "/metrics", "", None)?;
    ensure!(
        code == 200 && body.contains("# TYPE"),
        "/metrics: {code} {body}"
    );
    Ok(())
}

fn evaluate() -> Result<()> {
    let f = fixture(&[], None, "null")?;
    let p = f.router.port;
    let call = |body: &str| -> Result<(u16, Value)> {
        let (code, text) = http(p, "POST", "/agt/evaluate", body, None)?;
        Ok((code, json_of(&text)?))
    };
    let shape = |v: &Value| {
        [
            "allowed",
            "action",
            "decision",
            "matched_rule",
            "reason",
            "rate_limited",
        ]
        .iter()
        .all(|k| v.get(*k).is_some())
    };
    for (body, decision, allowed) in [
        (r#"{"action":"shell:ls"}"#, "allow", true),
        (
            r#"{"agent_id":"a","action":"shell:rm","context":{"cwd":"/"}}"#,
            "deny",
            false,
        ),
        (
            r#"{"action":"admin:bulk_delete"}"#,
            "requires_approval",
            false,
        ),
        (r#"{"action":"unknown:thing"}"#, "deny", false),
    ] {
        let (code, v) = call(body)?;
        ensure!(
            code == 200 && shape(&v) && v["decision"] == decision && v["allowed"] == allowed,
            "{body}: {code} {v}"
        );
    }
    // Documented error bodies: 400 with {allowed: false, error}.
    for bad in [
        "not json",
        r#"{"action": ""}"#,
        r#"{"action": 7}"#,
        r#"{"action":"tool:x","context":"not an object"}"#,
        r#"{"action":"tool:x","agent_id":5}"#,
    ] {
        let (code, v) = call(bad).or_else(|_| Ok::<_, anyhow::Error>((0, Value::Null)))?;
        ensure!(
            code == 400 && v["allowed"] == false && v["error"].is_string(),
            "{bad}: {code} {v}"
        );
    }
    let long = format!(r#"{{"action":"tool:{}"}}"#, "x".repeat(1100));
    let (code, _) = call(&long)?;
    ensure!(code == 400, "an action over 1,024 bytes: {code}");
    // The kars route is the same handler.
    let (code, text) = http(
        p,
        "POST",
        "/governance/check",
        r#"{"action":"shell:rm"}"#,
        None,
    )?;
    let v = json_of(&text)?;
    ensure!(
        code == 200 && v["allowed"] == false && v["verdict"] == "deny",
        "/governance/check: {code} {v}"
    );
    Ok(())
}

fn tool_window() -> Result<()> {
    let f = fixture(
        &[
            "--tool-rate-limit-max",
            "1",
            "--tool-rate-limit-window-secs",
            "60",
        ],
        None,
        "null",
    )?;
    let p = f.router.port;
    let body = r#"{"action":"tool:web_fetch:https://example.com"}"#;
    let (code, _, _) = exchange(p, &post(p, "/agt/evaluate", body, ""))?;
    ensure!(code == 200, "the first call: {code}");
    let (code, headers, text) = exchange(p, &post(p, "/agt/evaluate", body, ""))?;
    let v = json_of(&text)?;
    let retry = v["retry_after_secs"].as_u64().unwrap_or(0);
    ensure!(
        code == 429
            && v["rate_limited"] == true
            && v["decision"] == "deny"
            && (1..=60).contains(&retry)
            && header(&headers, "retry-after") == Some(retry.to_string().as_str()),
        "over the window: {code} {headers:?} {v}"
    );
    Ok(())
}

fn inference_routes() -> Result<()> {
    let f = fixture(&[], None, "null")?;
    let p = f.router.port;
    for (route, upstream_path, body) in [
        (
            "/v1/chat/completions",
            "/v1/chat/completions",
            r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "/v1/completions",
            "/v1/completions",
            r#"{"model":"x","prompt":"hi"}"#,
        ),
        (
            "/v1/responses",
            "/v1/responses",
            r#"{"model":"x","input":"hi"}"#,
        ),
        (
            "/v1/embeddings",
            "/v1/embeddings",
            r#"{"model":"x","input":"hi"}"#,
        ),
        (
            "/v1/messages",
            "/v1/messages",
            r#"{"model":"x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
        (
            "/anthropic/v1/messages",
            "/v1/messages",
            r#"{"model":"x","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#,
        ),
    ] {
        let before = std::fs::read_to_string(&f.log)
            .unwrap_or_default()
            .lines()
            .count();
        let (code, _, text) = exchange(
            p,
            &post(
                p,
                route,
                body,
                "anthropic-version: 2023-06-01\r\nx-request-id: contract-1\r\n",
            ),
        )?;
        ensure!(
            code == 200 && text.contains("\"hi\""),
            "{route}: {code} {text}"
        );
        let log = std::fs::read_to_string(&f.log)?;
        let seen: Value = json_of(
            log.lines()
                .nth(before)
                .context("the upstream saw nothing")?,
        )?;
        ensure!(
            seen["path"] == upstream_path
                && seen["auth"] == "Bearer sk-contract"
                && seen["body"]["model"] == "dep-1",
            "{route}: the upstream saw {seen}"
        );
    }
    // The models route lists the policy's deployments without calling an upstream.
    let (code, text) = http(p, "GET", "/v1/models", "", None)?;
    let v = json_of(&text)?;
    ensure!(
        code == 200 && v["object"] == "list" && v["data"][0]["id"] == "dep-1",
        "/v1/models: {code} {v}"
    );
    // Not a JSON object: 400 invalid_request.
    let (code, text) = http(p, "POST", "/v1/chat/completions", "[1]", None)?;
    ensure!(
        code == 400 && json_of(&text)?["error"]["type"] == "invalid_request",
        "{code} {text}"
    );
    Ok(())
}

fn budgets() -> Result<()> {
    let f = fixture(&[], None, r#"{"perRequestTokens":50,"dailyTokens":60}"#)?;
    let p = f.router.port;
    let chat = |max: u64| -> Result<(u16, Value)> {
        let (code, text) = http(
            p,
            "POST",
            "/v1/chat/completions",
            &format!(r#"{{"messages":[],"max_tokens":{max}}}"#),
            None,
        )?;
        Ok((code, json_of(&text)?))
    };
    let (code, v) = chat(51)?;
    ensure!(
        code == 429
            && v["error"]["type"] == "token_budget_exceeded"
            && v["error"]["code"] == "per_request_tokens_exceeded",
        "over the per-request cap: {code} {v}"
    );
    // The upstream reports 40 tokens: 40 + 50 would pass the daily 60.
    let (code, _) = chat(20)?;
    ensure!(code == 200, "within the budget: {code}");
    let (code, v) = chat(50)?;
    ensure!(
        code == 429
            && v["error"]["type"] == "token_budget_exceeded"
            && v["error"]["code"] == "budget_exceeded"
            && v["error"]["budget"]["reason"] == "dailyExhausted",
        "over the daily budget: {code} {v}"
    );
    Ok(())
}

/// Every protected route: 401 without the token (loopback included, unlike upstream), 401 with
/// a wrong one, and its documented answer with it.
fn protected() -> Result<()> {
    let f = fixture(&[], Some(9), "null")?;
    let p = f.router.port;
    for (method, path, body) in [
        ("GET", "/internal/policy-status", ""),
        ("GET", "/internal/audit-head", ""),
        ("GET", "/egress/learned", ""),
        ("GET", "/egress/learned/blocked", ""),
        ("GET", "/internal/egress/blocked", ""),
        ("GET", "/egress/allowlist", ""),
        ("POST", "/egress/learned/clear", ""),
        ("POST", "/egress/learn", r#"{"enabled":false}"#),
    ] {
        for token in [None, Some("wrong")] {
            let (code, text) = http(p, method, path, body, token)?;
            ensure!(code == 401, "{method} {path} with {token:?}: {code} {text}");
        }
        let (code, text) = http(p, method, path, body, Some(TOKEN))?;
        ensure!(code == 200, "{method} {path} with the token: {code} {text}");
        json_of(&text).with_context(|| format!("{method} {path}"))?;
    }
    let (_, text) = http(p, "GET", "/egress/allowlist", "", Some(TOKEN))?;
    ensure!(text.contains("localhost"), "/egress/allowlist: {text}");
    Ok(())
}

fn allow_ips() -> Result<()> {
    let f = fixture(&["--admin-allow-ips", "10.9.9.9"], None, "null")?;
    let p = f.router.port;
    let (code, text) = http(p, "GET", "/internal/policy-status", "", Some(TOKEN))?;
    ensure!(
        code == 403 && json_of(&text)?["reason"] == "NotAllowedPeer",
        "a peer not listed, even with the token: {code} {text}"
    );
    drop(f);
    let f = fixture(&["--admin-allow-ips", "127.0.0.1,::1"], None, "null")?;
    let (code, text) = http(
        f.router.port,
        "GET",
        "/internal/policy-status",
        "",
        Some(TOKEN),
    )?;
    ensure!(code == 200, "a listed peer with the token: {code} {text}");
    let (code, _) = http(f.router.port, "GET", "/internal/policy-status", "", None)?;
    ensure!(code == 401, "a listed peer still needs the token: {code}");
    Ok(())
}

/// `POST /egress/learn` with the admin token.
fn learn(f: &Fixture, body: &str) -> Result<(u16, String)> {
    http(f.router.port, "POST", "/egress/learn", body, Some(TOKEN))
}

fn egress_learn() -> Result<()> {
    let (allowed, _) = upstream()?;
    // Git says Strict: Learn cannot be switched on by a request.
    let f = fixture(&["--egress-mode", "strict"], Some(allowed), "null")?;
    let (code, text) = learn(&f, r#"{"enabled":true}"#)?;
    ensure!(
        code == 409 && json_of(&text)?["reason"] == "ModeFromGit",
        "Learn over Git's Strict: {code} {text}"
    );
    let (code, text) = learn(&f, r#"{"on":1}"#)?;
    ensure!(code == 400, "a body without enabled: {code} {text}");
    drop(f);
    // Git says Learn: a request may tighten to Strict (an unlisted host is refused) and back.
    let f = fixture(&["--egress-mode", "learn"], Some(allowed), "null")?;
    let connect = |port: u16| {
        raw(
            f.router.proxy_port,
            &format!("CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n"),
        )
    };
    let (other, _) = upstream()?;
    ensure!(connect(other)?.starts_with("HTTP/1.1 200"), "Learn allows");
    let (code, text) = learn(&f, r#"{"enabled":false}"#)?;
    ensure!(
        code == 200 && json_of(&text)?["mode"] == "strict",
        "tighten: {code} {text}"
    );
    ensure!(
        connect(other)?.starts_with("HTTP/1.1 403"),
        "Strict refuses"
    );
    ensure!(
        connect(allowed)?.starts_with("HTTP/1.1 200"),
        "the allowlist still works"
    );
    let (code, text) = learn(&f, r#"{"enabled":true}"#)?;
    ensure!(
        code == 200 && json_of(&text)?["mode"] == "learn",
        "back to Git's Learn: {code} {text}"
    );
    Ok(())
}

fn trace() -> Result<()> {
    let f = fixture(&[], None, "null")?;
    let p = f.router.port;
    let get = |extra: &str| {
        exchange(
            p,
            &format!(
                "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\nConnection: close\r\n{extra}\r\n"
            ),
        )
    };
    let (_, headers, _) = get("X-Azureclaw-Trace-Id: trace-123\r\n")?;
    ensure!(
        header(&headers, "x-azureclaw-trace-id") == Some("trace-123"),
        "echoed: {headers:?}"
    );
    let (_, a, _) = get("")?;
    let (_, b, _) = get("")?;
    let (a, b) = (
        header(&a, "x-azureclaw-trace-id").context("generated")?,
        header(&b, "x-azureclaw-trace-id").context("generated")?,
    );
    ensure!(a != b && !a.is_empty(), "generated ids: {a} {b}");
    // An unusable id is replaced, not echoed.
    let (_, headers, _) = get("X-Azureclaw-Trace-Id: has space\r\n")?;
    ensure!(
        header(&headers, "x-azureclaw-trace-id").is_some_and(|v| v != "has space"),
        "{headers:?}"
    );
    Ok(())
}

/// A client that knows only upstream's API: it asks whether a tool call may run, runs the model
/// through the router, then fetches what the tool needs through the egress proxy.
fn runtime_client() -> Result<()> {
    let (allowed, hits) = upstream()?;
    let f = fixture(&["--egress-mode", "strict"], Some(allowed), "null")?;
    let p = f.router.port;
    let (code, text) = http(
        p,
        "POST",
        "/agt/evaluate",
        &json!({"agent_id": "runtime", "action": "tool:web_fetch:http://localhost/", "context": {"url": "http://localhost/"}}).to_string(),
        None,
    )?;
    let v = json_of(&text)?;
    ensure!(
        code == 200 && v["allowed"] == true,
        "tool check: {code} {v}"
    );
    let (code, text) = http(
        p,
        "POST",
        "/v1/chat/completions",
        r#"{"model":"gpt","messages":[{"role":"user","content":"fetch it"}],"max_tokens":16}"#,
        None,
    )?;
    ensure!(
        code == 200 && json_of(&text)?["choices"][0]["message"]["content"] == "hi",
        "inference: {code} {text}"
    );
    let out = raw(
        f.router.proxy_port,
        &format!(
            "GET http://localhost:{allowed}/page HTTP/1.1\r\nHost: localhost:{allowed}\r\n\r\n"
        ),
    )?;
    ensure!(
        out.starts_with("HTTP/1.1 200") && hits.load(std::sync::atomic::Ordering::SeqCst) == 1,
        "egress: {out}"
    );
    let blocked = raw(
        f.router.proxy_port,
        &format!(
            "CONNECT localhost:{} HTTP/1.1\r\nHost: x\r\n\r\n",
            free_port()?
        ),
    )?;
    ensure!(
        blocked.starts_with("HTTP/1.1 403"),
        "an unlisted host: {blocked}"
    );
    Ok(())
}
