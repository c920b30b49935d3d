//! The HTTP surface: health (every listener), the policy-status echo, governance decisions
//! (audited), the inference routes, Learn mode's hosts and the audit head. Every handler reads
//! the policy snapshot in force once ([`crate::reload::Policies::snapshot`]).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::audit::AuditLog;
use crate::auth::bearer_matches;
use crate::listeners::Listeners;
use crate::reload::Policies;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The policies in force.
    pub policies: Arc<Policies>,
    /// Admin bearer token (empty = protected endpoints refuse everyone).
    pub admin_token: Arc<String>,
    /// `ROUTER_ADMIN_ALLOW_IPS`: when not empty, protected routes answer only these peers
    /// (and still need the token).
    pub admin_allow_ips: Arc<Vec<std::net::IpAddr>>,
    /// Sandbox name.
    pub sandbox: Arc<String>,
    /// The audit log (`None`: decisions are not recorded — tests only).
    pub audit: Option<Arc<AuditLog>>,
    /// True when the egress proxy runs (`/egress/learned` answers).
    pub egress_proxy: bool,
    /// Counters (shared with the proxy).
    pub metrics: Arc<crate::metrics::RouterMetrics>,
    /// The inference proxy, when providers are configured.
    pub inference: Option<Arc<crate::inference::Inference>>,
    /// The health of every listener (`/healthz`).
    pub listeners: Arc<Listeners>,
    /// The per-tool sliding window on `tool:` actions.
    pub tool_window: Arc<crate::governance::ToolWindow>,
    /// The ToolPolicy rules' rate buckets and commerce ledger.
    pub tool_state: Arc<crate::tool_policy::ToolState>,
    /// The audit head signer, once its key was read (`/internal/audit-head` shows it).
    pub audit_signer: Arc<std::sync::OnceLock<crate::audit_heads::HeadSigner>>,
}

/// The metrics listener's routes (`/metrics`, `/healthz`), for the separate metrics port.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// 200 while every listener accepts connections, else 503 naming the failing ones.
async fn healthz(State(s): State<AppState>) -> Response {
    if s.listeners.all_serving() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"listeners": s.listeners.states()})),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.encode(),
    )
        .into_response()
}

/// Answers a request only when its connection came from loopback — in a sandbox pod, the pod
/// itself (the agent container shares the router's network namespace). The decision and
/// inference routes need no token (upstream's runtimes call them without one), so without this
/// another pod that can reach port 8443 could spend this sandbox's inference budget and rate
/// limits or read its decisions. A request without a peer (not from [`serve_http`]) is refused.
async fn pod_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    match req.extensions().get::<crate::listeners::Peer>() {
        Some(p) if p.is_loopback() => next.run(req).await,
        peer => {
            let from = peer.map_or("an unknown peer".to_string(), |p| p.0.ip().to_string());
            (
                StatusCode::FORBIDDEN,
                Json(json!({
                    "error": format!("{} answers only the sandbox's own pod (loopback), not {from}", req.uri().path()),
                    "reason": "NotFromThisPod",
                })),
            )
                .into_response()
        }
    }
}

/// The trace header upstream's router echoes (or generates) on every answer.
pub const TRACE_HEADER: &str = "x-azureclaw-trace-id";

static TRACE_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Echoes the caller's trace id (1-128 visible ASCII characters) or answers with a new one.
async fn trace_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let given = req
        .headers()
        .get(TRACE_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|t| !t.is_empty() && t.len() <= 128 && t.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string);
    let id = given.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = TRACE_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{nanos:x}-{n:x}")
    });
    let mut res = next.run(req).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        res.headers_mut().insert(TRACE_HEADER, v);
    }
    res
}

/// `ROUTER_ADMIN_ALLOW_IPS`: when set, a protected route answers 403 to any other peer before
/// the token is looked at.
async fn admin_peer(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if s.admin_allow_ips.is_empty() {
        return next.run(req).await;
    }
    match req.extensions().get::<crate::listeners::Peer>() {
        Some(p) if s.admin_allow_ips.contains(&canonical_ip(p.0.ip())) => next.run(req).await,
        peer => {
            let from = peer.map_or("an unknown peer".to_string(), |p| p.0.ip().to_string());
            (
                StatusCode::FORBIDDEN,
                Json(json!({
                    "error": format!("{} is not in ROUTER_ADMIN_ALLOW_IPS", from),
                    "reason": "NotAllowedPeer",
                })),
            )
                .into_response()
        }
    }
}

/// An IPv4 address written as `::ffff:a.b.c.d` compares as the IPv4 address.
fn canonical_ip(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    }
}

/// Builds the router (handlers are testable without sockets).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(protected_routes(state.clone()))
        .merge(pod_routes())
        .layer(axum::middleware::from_fn(trace_id))
        .with_state(state)
}

/// The routes that need the admin token from every caller (and, with
/// `ROUTER_ADMIN_ALLOW_IPS`, a listed peer).
fn protected_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/internal/policy-status", get(policy_status))
        .route("/internal/audit-head", get(audit_head))
        .route("/egress/learn", post(egress_learn))
        .route("/egress/learned", get(egress_learned))
        .route("/egress/learned/blocked", get(egress_blocked))
        .route("/internal/egress/blocked", get(egress_blocked))
        .route("/egress/learned/clear", post(egress_learned_clear))
        .route("/egress/allowlist", get(egress_allowlist))
        .route_layer(axum::middleware::from_fn_with_state(state, admin_peer))
}

/// `POST /egress/learn {"enabled": bool}` (upstream's toggle): `false` forces Strict until
/// `true` or a restart; `true` is refused (409) when Git says Strict.
async fn egress_learn(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(denied) = require_admin(&s, &headers) {
        return denied;
    }
    let Some(enabled) = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["enabled"].as_bool())
    else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "expected {\"enabled\": true|false}"})),
        )
            .into_response();
    };
    match s.policies.set_learn(enabled) {
        Ok(mode) => {
            if let Some(log) = &s.audit {
                let mut fields = serde_json::Map::new();
                fields.insert("event".into(), json!("egress.mode"));
                fields.insert("sandbox".into(), json!(*s.sandbox));
                fields.insert("mode".into(), json!(mode));
                if let Err(e) = log.append(&kars_contract::time::now_rfc3339(), fields) {
                    tracing::error!(error = %e, "audit write failed for an egress mode change");
                }
            }
            Json(json!({"mode": mode, "learn": mode == crate::egress::Mode::Learn})).into_response()
        }
        Err(why) => (
            StatusCode::CONFLICT,
            Json(json!({"error": why, "reason": "ModeFromGit"})),
        )
            .into_response(),
    }
}

/// `POST` of one inference API (`chat/completions`, `messages`, …) to the policy's upstreams.
fn inference_route(api_path: &'static str) -> axum::routing::MethodRouter<AppState> {
    post(
        move |State(s): State<AppState>, h: HeaderMap, b: axum::body::Bytes| async move {
            inference(s, api_path, h, b).await
        },
    )
}

/// The routes only the pod itself may call: governance decisions and inference.
fn pod_routes() -> Router<AppState> {
    Router::new()
        .route("/governance/check", post(governance_check))
        .route("/agt/evaluate", post(agt_evaluate))
        .route("/v1/chat/completions", inference_route("chat/completions"))
        .route("/v1/completions", inference_route("completions"))
        .route("/v1/models", get(models))
        .route("/v1/embeddings", inference_route("embeddings"))
        .route("/v1/messages", inference_route("messages"))
        .route("/anthropic/v1/messages", inference_route("messages"))
        .route("/v1/responses", inference_route("responses"))
        .route_layer(axum::middleware::from_fn(pod_only))
}

async fn readyz(State(s): State<AppState>) -> Response {
    let snapshot = s.policies.snapshot();
    let entries = &snapshot.entries;
    if entries.is_empty() || entries.iter().any(|e| e.digest.is_some()) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no policy loaded").into_response()
    }
}

/// `None` when the request carries the admin token, else the 401 to send.
fn require_admin(s: &AppState, headers: &HeaderMap) -> Option<Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer_matches(auth, &s.admin_token) {
        return None;
    }
    Some(
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "bearer token required",
        )
            .into_response(),
    )
}

async fn audit_head(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(denied) = require_admin(&s, &headers) {
        return denied;
    }
    let Some(log) = &s.audit else {
        return (StatusCode::NOT_FOUND, "no audit log").into_response();
    };
    let summary = log.summary();
    let signing = s.audit_signer.get().map(|signer| {
        let last = signer.last_signed();
        json!({
            "key": signer.key_id(),
            "publicKey": signer.public_key_pem(),
            "heads": signer.heads_path().display().to_string(),
            "lastSignedRecords": last.as_ref().map(|(n, _)| *n),
            "lastSignedHead": last.map(|(_, h)| h),
        })
    });
    Json(json!({"records": summary.records, "head": summary.head, "signing": signing}))
        .into_response()
}

async fn egress_learned(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(denied) = require_admin(&s, &headers) {
        return denied;
    }
    if !s.egress_proxy {
        return (StatusCode::NOT_FOUND, "the egress proxy is not running").into_response();
    }
    let policy = s.policies.snapshot().egress.clone();
    let learned: Vec<_> = policy
        .learned()
        .into_iter()
        .map(|(host, port)| json!({"host": host, "port": port}))
        .collect();
    let (blocked, dropped) = policy.blocked(DEFAULT_BLOCKED_LIMIT);
    Json(json!({"mode": policy.mode, "learned": learned, "blocked": blocked, "blockedDropped": dropped}))
        .into_response()
}

async fn egress_allowlist(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(denied) = require_admin(&s, &headers) {
        return denied;
    }
    let policy = s.policies.snapshot().egress.clone();
    Json(policy.effective(kars_contract::time::unix_now())).into_response()
}

async fn egress_learned_clear(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(denied) = require_admin(&s, &headers) {
        return denied;
    }
    if !s.egress_proxy {
        return (StatusCode::NOT_FOUND, "the egress proxy is not running").into_response();
    }
    let cleared = s.policies.snapshot().egress.clear_learned();
    Json(json!({"cleared": cleared})).into_response()
}

/// Refused destinations listed by default (`x-kars-limit` asks for up to [`MAX_BLOCKED_LIMIT`]).
const DEFAULT_BLOCKED_LIMIT: usize = 256;
/// The most refused destinations one answer lists.
const MAX_BLOCKED_LIMIT: usize = 4096;

async fn egress_blocked(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(denied) = require_admin(&s, &headers) {
        return denied;
    }
    if !s.egress_proxy {
        return (StatusCode::NOT_FOUND, "the egress proxy is not running").into_response();
    }
    let limit = match headers
        .get("x-kars-limit")
        .map(|v| v.to_str().ok().and_then(|t| t.parse::<usize>().ok()))
    {
        None => DEFAULT_BLOCKED_LIMIT,
        Some(Some(n)) if (1..=MAX_BLOCKED_LIMIT).contains(&n) => n,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("x-kars-limit: a number in 1..={MAX_BLOCKED_LIMIT}"),
            )
                .into_response();
        }
    };
    let (blocked, dropped) = s.policies.snapshot().egress.blocked(limit);
    Json(json!({"blocked": blocked, "dropped": dropped})).into_response()
}

async fn inference(
    s: AppState,
    api: &str,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match &s.inference {
        Some(i) => {
            let routes = s.policies.snapshot().inference.clone();
            i.clone().handle(routes, api, headers, body).await
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"type": "no_upstream", "message": "no inference policy or provider is configured for this sandbox"}})),
        )
            .into_response(),
    }
}

/// `GET /v1/models`: the deployments this sandbox's InferencePolicy routes to, in OpenAI's list
/// format (answered here, without calling an upstream).
async fn models(State(s): State<AppState>) -> Response {
    let routes = s.policies.snapshot().inference.clone();
    let mut seen = std::collections::BTreeSet::new();
    let data: Vec<serde_json::Value> = routes
        .upstreams
        .iter()
        .filter(|u| seen.insert(u.deployment.clone()))
        .map(|u| json!({"id": u.deployment, "object": "model", "owned_by": u.provider}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// Longest action string accepted.
pub const MAX_ACTION_LEN: usize = 1024;

/// The answer format of a decision route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `POST /governance/check`: `{allowed, verdict, rule, action}`.
    Kars,
    /// `POST /agt/evaluate` (upstream's runtimes): `{allowed, action, decision, matched_rule,
    /// reason, rate_limited, retry_after_secs?}`.
    Agt,
}

async fn governance_check(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    decide(&s, &body, Shape::Kars)
}

async fn agt_evaluate(State(s): State<AppState>, body: axum::body::Bytes) -> Response {
    decide(&s, &body, Shape::Agt)
}

fn text_ok(t: &str, max: usize) -> bool {
    !t.is_empty() && t.len() <= max && !t.chars().any(char::is_control)
}

/// One decision, for either route: the per-tool window, then the AGT profiles; audited before
/// it is answered (no record, no decision).
fn decide(s: &AppState, body: &[u8], shape: Shape) -> Response {
    use crate::governance::{Decision, Verdict, tool_of};
    let v = serde_json::from_slice::<serde_json::Value>(body).unwrap_or_default();
    let action = v["action"].as_str().filter(|a| text_ok(a, MAX_ACTION_LEN));
    let agent_id = &v["agent_id"];
    let agent_ok = agent_id.is_null() || agent_id.as_str().is_some_and(|a| text_ok(a, 253));
    let context_ok = v["context"].is_null() || v["context"].is_object();
    let (Some(action), true, true) = (action, agent_ok, context_ok) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"allowed": false, "error": format!("expected {{\"action\": \"tool:<name>:<arg>\"}} (a non-empty string of at most {MAX_ACTION_LEN} bytes without control characters), an optional \"agent_id\" string and an optional \"context\" object")})),
        )
            .into_response();
    };
    let now = std::time::Instant::now();
    let (decision, retry_after) = match tool_of(action).map(|t| s.tool_window.admit(t, now)) {
        Some(Err(wait)) => (
            Decision {
                action: action.to_string(),
                verdict: Verdict::RateLimited,
                rule: Some(format!("tool rate limit ({})", s.tool_window.describe())),
            },
            Some(wait),
        ),
        _ => {
            let snapshot = s.policies.snapshot();
            let decision = snapshot.governance.decide(action, now);
            // What the AGT profile allows, the ToolPolicy's own rules may still limit.
            match decision.verdict {
                Verdict::Allow => match crate::tool_policy::decide(
                    &snapshot.tools,
                    &s.tool_state,
                    action,
                    &v["context"],
                    now,
                    kars_contract::time::unix_now(),
                ) {
                    Some(t) if t.verdict != Verdict::Allow => (
                        Decision {
                            action: action.to_string(),
                            verdict: t.verdict,
                            rule: Some(t.rule),
                        },
                        t.retry_after,
                    ),
                    _ => (decision, None),
                },
                _ => (decision, None),
            }
        }
    };
    s.metrics
        .governance
        .get_or_create(&crate::metrics::VerdictLabel {
            verdict: serde_json::to_value(decision.verdict)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
        })
        .inc();
    if let Some(log) = &s.audit {
        let mut fields = serde_json::Map::new();
        fields.insert("event".into(), json!("governance.decision"));
        fields.insert("sandbox".into(), json!(*s.sandbox));
        if let Some(a) = agent_id.as_str() {
            fields.insert("agent_id".into(), json!(a));
        }
        fields.insert("action".into(), json!(decision.action));
        fields.insert("verdict".into(), json!(decision.verdict));
        fields.insert("rule".into(), json!(decision.rule));
        // No record, no decision: a failed write refuses the action.
        if let Err(e) = log.append(&kars_contract::time::now_rfc3339(), fields) {
            s.metrics.audit_write_failures.inc();
            tracing::error!(error = %e, "audit write failed; refusing the action");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"allowed": false, "error": "the audit log cannot be written"})),
            )
                .into_response();
        }
    }
    let retry_secs = retry_after.map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0));
    // A rate-limited decision is a 429 with Retry-After; the body says the same as for 200s.
    let answer = |out: serde_json::Value| -> Response {
        if decision.verdict == Verdict::RateLimited {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, Json(out)).into_response();
            if let Some(secs) = retry_secs
                && let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string())
            {
                r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
            }
            r
        } else {
            Json(out).into_response()
        }
    };
    match shape {
        Shape::Kars => {
            let mut out = json!({
                "allowed": decision.allowed(),
                "verdict": decision.verdict,
                "rule": decision.rule,
                "action": decision.action,
            });
            if let Some(r) = retry_secs {
                out["retry_after_secs"] = json!(r);
            }
            answer(out)
        }
        Shape::Agt => {
            let rule = decision.rule.clone().unwrap_or_else(|| "no rule".into());
            let (word, reason) = match decision.verdict {
                Verdict::Allow => ("allow", format!("allowed by {rule}")),
                Verdict::Deny => ("deny", format!("denied: {rule}")),
                Verdict::ApprovalRequired => {
                    ("requires_approval", format!("requires approval: {rule}"))
                }
                Verdict::RateLimited => ("deny", format!("rate limited: {rule}")),
            };
            let mut out = json!({
                "allowed": decision.allowed(),
                "action": decision.action,
                "decision": word,
                "matched_rule": decision.rule,
                "reason": reason,
                "rate_limited": decision.verdict == Verdict::RateLimited,
            });
            if let Some(r) = retry_secs {
                out["retry_after_secs"] = json!(r);
            }
            answer(out)
        }
    }
}

async fn policy_status(State(s): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(denied) = require_admin(&s, &headers) {
        return denied;
    }
    let snapshot = s.policies.snapshot();
    let entries: Vec<_> = snapshot.entries.iter().map(|e| json!(e)).collect();
    Json(json!({
        "schema_version": 1,
        "sandbox": *s.sandbox,
        "count": entries.len(),
        "entries": entries,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reload::{Mount, Settings};
    use axum::body::Body;
    use axum::http::Request;
    use kars_contract::PolicyKind;
    use tower::ServiceExt;

    fn state(dir: &std::path::Path) -> AppState {
        std::fs::write(dir.join("allowlist.json"), "{}").expect("write");
        let store = Policies::new(
            vec![Mount {
                kind: PolicyKind::EgressAllowlist,
                dir: dir.into(),
            }],
            Settings::default(),
        );
        store.reload();
        AppState {
            policies: Arc::new(store),
            admin_token: Arc::new("tok".into()),
            admin_allow_ips: Arc::default(),
            sandbox: Arc::new("a".into()),
            audit: None,
            egress_proxy: false,
            metrics: Arc::default(),
            inference: None,
            listeners: Arc::default(),
            tool_window: Arc::default(),
            tool_state: Arc::default(),
            audit_signer: Arc::default(),
        }
    }

    #[tokio::test]
    async fn policy_status_needs_the_token_and_echoes_digests() {
        let dir = tempfile::tempdir().expect("tmp");
        let app = app(state(dir.path()));
        let res = get(&app, "/internal/policy-status", None).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = get(&app, "/internal/policy-status", Some("wrong")).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = get(&app, "/internal/policy-status", Some("tok")).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["entries"][0]["kind"], "EgressAllowlist");
        assert_eq!(
            v["entries"][0]["digest"],
            kars_contract::policy::digest_file("allowlist.json", b"{}")
        );
    }

    /// `GET path`, with the bearer `token` when given.
    async fn get(app: &Router, path: &str, token: Option<&str>) -> Response {
        let mut req = Request::get(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        app.clone()
            .oneshot(req.body(Body::empty()).expect("req"))
            .await
            .expect("res")
    }

    async fn check(app: &Router, body: &str) -> (StatusCode, serde_json::Value) {
        let res = app
            .clone()
            .oneshot(
                Request::post("/governance/check")
                    .header("content-type", "application/json")
                    .extension(crate::listeners::Peer(([127, 0, 0, 1], 40000).into()))
                    .body(Body::from(body.to_string()))
                    .expect("req"),
            )
            .await
            .expect("res");
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn egress_views_need_the_token_and_models_answer_locally() {
        let dir = tempfile::tempdir().expect("tmp");
        let app = app(state(dir.path()));
        assert_eq!(
            get(&app, "/egress/allowlist", None).await.status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            get(&app, "/internal/egress/blocked", Some("nope"))
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
        let res = get(&app, "/egress/allowlist", Some("tok")).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            (v["endpoints"].clone(), v["approvals"].clone()),
            (json!([]), json!([])),
            "{v}"
        );
        let clear = app
            .clone()
            .oneshot(
                Request::post("/egress/learned/clear")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("res");
        assert_eq!(
            clear.status(),
            StatusCode::UNAUTHORIZED,
            "clearing needs the token too"
        );
        let models = |peer: std::net::SocketAddr| {
            let app = app.clone();
            async move {
                app.oneshot(
                    Request::get("/v1/models")
                        .extension(crate::listeners::Peer(peer))
                        .body(Body::empty())
                        .expect("req"),
                )
                .await
                .expect("res")
            }
        };
        let res = models(([127, 0, 0, 1], 1).into()).await;
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&body).expect("json"),
            json!({"object": "list", "data": []})
        );
        assert_eq!(
            models(([10, 0, 0, 9], 1).into()).await.status(),
            StatusCode::FORBIDDEN
        );
    }

    #[tokio::test]
    async fn decisions_and_inference_answer_only_the_pod_itself() {
        let dir = tempfile::tempdir().expect("tmp");
        let app = app(state(dir.path()));
        let ask = |peer: Option<std::net::SocketAddr>, path: &'static str| {
            let app = app.clone();
            async move {
                let mut req = Request::post(path).header("content-type", "application/json");
                if let Some(p) = peer {
                    req = req.extension(crate::listeners::Peer(p));
                }
                let res = app
                    .oneshot(
                        req.body(Body::from(r#"{"action":"shell:ls"}"#))
                            .expect("req"),
                    )
                    .await
                    .expect("res");
                let status = res.status();
                let body = axum::body::to_bytes(res.into_body(), 1 << 20)
                    .await
                    .expect("body");
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };
        for path in [
            "/governance/check",
            "/agt/evaluate",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/responses",
        ] {
            for peer in [
                Some(([10, 244, 0, 7], 5000).into()),
                Some("[fd00::7]:5000".parse().expect("addr")),
                None,
            ] {
                let (status, body) = ask(peer, path).await;
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{path} from {peer:?}: {body}"
                );
                assert!(body.contains("NotFromThisPod"), "{body}");
            }
            for peer in ["127.0.0.1:5000", "[::1]:5000", "[::ffff:127.0.0.1]:5000"] {
                let (status, body) = ask(Some(peer.parse().expect("addr")), path).await;
                assert_ne!(status, StatusCode::FORBIDDEN, "{path} from {peer}: {body}");
            }
        }
    }

    #[tokio::test]
    async fn governance_decisions_are_audited_and_follow_reloads() {
        let dir = tempfile::tempdir().expect("tmp");
        let profiles = dir.path().join("agt");
        std::fs::create_dir_all(&profiles).expect("mkdir");
        let profile = profiles.join("tools.yaml");
        std::fs::write(&profile, "version: '1'\nagent: a\npolicies:\n- {name: tools, allowed_actions: ['tool:*'], priority: 1}\n- {name: no-rm, denied_actions: ['tool:shell:rm*'], priority: 5}\n").expect("write");
        let store = Policies::new(
            vec![Mount {
                kind: PolicyKind::AgtProfile,
                dir: profiles.clone(),
            }],
            Settings::default(),
        );
        store.reload();
        let audit_path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(&audit_path, crate::audit::Fsync::Always).expect("audit");
        let state = AppState {
            policies: Arc::new(store),
            admin_token: Arc::new("tok".into()),
            admin_allow_ips: Arc::default(),
            sandbox: Arc::new("a".into()),
            audit: Some(Arc::new(log)),
            egress_proxy: false,
            metrics: Arc::default(),
            inference: None,
            listeners: Arc::default(),
            tool_window: Arc::default(),
            tool_state: Arc::default(),
            audit_signer: Arc::default(),
        };
        let app = app(state.clone());
        // Upstream's route and body, the same decision: three calls of one tool through a window
        // of two are allow, allow, then rate limited with the wait.
        let windowed = super::app(AppState {
            tool_state: Arc::default(),
            audit_signer: Arc::default(),
            tool_window: Arc::new(crate::governance::ToolWindow::new(
                2,
                std::time::Duration::from_secs(60),
            )),
            audit: None,
            ..state.clone()
        });
        let evaluate = |body: &'static str| {
            let app = windowed.clone();
            async move {
                let res = app
                    .oneshot(
                        Request::post("/agt/evaluate")
                            .header("content-type", "application/json")
                            .extension(crate::listeners::Peer(([127, 0, 0, 1], 40000).into()))
                            .body(Body::from(body))
                            .expect("req"),
                    )
                    .await
                    .expect("res");
                let status = res.status();
                let body = axum::body::to_bytes(res.into_body(), 1 << 20)
                    .await
                    .expect("body");
                (
                    status,
                    serde_json::from_slice::<serde_json::Value>(&body).expect("json"),
                )
            }
        };
        for _ in 0..2 {
            let (code, v) = evaluate(
                r#"{"agent_id":"a","action":"tool:web_fetch:https://x","context":{"k":"v"}}"#,
            )
            .await;
            assert_eq!(code, StatusCode::OK, "{v}");
            assert_eq!(
                (
                    v["allowed"].clone(),
                    v["decision"].clone(),
                    v["rate_limited"].clone()
                ),
                (json!(true), json!("allow"), json!(false)),
                "{v}"
            );
            assert!(
                v["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("allowed by")),
                "{v}"
            );
        }
        let (code, v) = evaluate(r#"{"action":"tool:web_fetch:https://y"}"#).await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS, "{v}");
        assert_eq!(
            (
                v["allowed"].clone(),
                v["decision"].clone(),
                v["rate_limited"].clone()
            ),
            (json!(false), json!("deny"), json!(true)),
            "{v}"
        );
        assert!(
            v["retry_after_secs"]
                .as_u64()
                .is_some_and(|s| (1..=60).contains(&s)),
            "{v}"
        );
        let (_, v) = evaluate(r#"{"action":"shell:rm"}"#).await;
        assert_eq!(
            (v["allowed"].clone(), v["decision"].clone()),
            (json!(false), json!("deny")),
            "{v}"
        );
        let (code, _) = evaluate(r#"{"action":"tool:x","context":"not an object"}"#).await;
        assert_eq!(code, StatusCode::BAD_REQUEST);
        let (code, v) = check(&app, r#"{"action":"tool:web_fetch:x"}"#).await;
        assert_eq!(
            (code, v["allowed"].clone()),
            (StatusCode::OK, json!(true)),
            "{v}"
        );
        let (_, v) = check(&app, r#"{"action":"tool:shell:rm -rf /"}"#).await;
        assert_eq!(v["allowed"], false);
        assert_eq!(v["rule"], "tools.yaml/no-rm");
        for bad in [
            r#"{}"#,
            r#"{"action":""}"#,
            r#"{"action":"tool:a\u0000b"}"#,
            "not json",
        ] {
            let (code, v) = check(&app, bad).await;
            assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
            assert_eq!(v["allowed"], false);
        }
        // A reloaded profile takes effect; a broken one keeps the previous policy.
        std::fs::write(&profile, "version: '1'\nagent: a\npolicies:\n- {name: none, denied_actions: ['*'], priority: 1}\n").expect("write");
        state.policies.reload();
        assert_eq!(
            check(&app, r#"{"action":"tool:web_fetch:x"}"#).await.1["allowed"],
            false
        );
        std::fs::write(&profile, "policies:\n- {name: x, type: bogus}\n").expect("write");
        state.policies.reload();
        let (_, v) = check(&app, r#"{"action":"tool:web_fetch:x"}"#).await;
        assert_eq!(
            v["rule"], "tools.yaml/none",
            "the last good profile stays: {v}"
        );
        let summary = crate::audit::verify(&audit_path).expect("chain verifies");
        assert_eq!(summary.records, 4, "one record per answered decision");
        let text = std::fs::read_to_string(&audit_path).expect("read");
        assert!(text.lines().nth(1).is_some_and(
            |l| l.contains("tool:shell:rm -rf /") && l.contains("\"verdict\":\"deny\"")
        ));
        // The head is served to the admin only.
        let res = get(&app, "/internal/audit-head", None).await;
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    }
}
