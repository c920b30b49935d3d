//! The inference proxy: OpenAI-compatible `POST /v1/chat/completions`, `/v1/completions` and `/v1/responses`
//! forwarded to the upstreams of the InferencePolicy (primary, then each fallback in order).
//!
//! Per request: the body must be a JSON object; its token cap (`max_tokens`,
//! `max_completion_tokens` or `max_output_tokens`) is checked against the per-request cap and
//! the daily and monthly budgets *before* any upstream is called (429 otherwise). The request
//! id (`x-request-id`, else generated) keys the usage record, so a retried request is counted
//! once. The `model` is replaced by the chosen upstream's deployment. An upstream that cannot be
//! reached or answers 429 or 5xx is skipped for the next; any other answer is returned as is.
//! Streaming responses (`"stream": true`) are passed through chunk by chunk; the usage the
//! upstream reports (in the body, or in a server-sent event) is recorded when the response
//! ends, and when an upstream reports none the request's cap is recorded instead.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::budget::{Budget, BudgetRefusal};
use crate::policy_file::PolicyFileError;

/// One upstream: where a provider's deployment is served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    /// Provider name (as in the InferencePolicy).
    pub provider: String,
    /// Deployment (sent as `model`).
    pub deployment: String,
    /// Base URL, e.g. `https://example.openai.azure.com/openai/v1`; the API path is appended.
    pub base_url: String,
    /// Bearer key for the upstream.
    pub api_key: ProviderKey,
}

/// Where a provider's API key comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderKey {
    /// No key: requests carry no `Authorization`.
    None,
    /// A key given when the router started.
    Value(String),
    /// A file read for each request (a mounted Secret: a rotated key is used at once; a missing
    /// or empty file refuses the request instead of calling the provider without a key).
    File(std::path::PathBuf),
}

/// Provider name → (base URL, key), from the router's settings (never from the policy).
pub type Providers = std::collections::BTreeMap<String, (String, ProviderKey)>;

/// A compiled `inference-policy.json`: the upstreams in order (primary first) and the token
/// limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InferenceRoutes {
    /// Upstreams in order; empty when the router has no providers (inference is not served).
    pub upstreams: Vec<Upstream>,
    /// `tokenBudget` (absent: unlimited).
    pub limits: crate::budget::Limits,
}

impl InferenceRoutes {
    /// Compiles the `inference-policy.json` body `file`, resolving each provider through
    /// `providers`. With providers configured, a provider without a base URL is an error (the
    /// policy could not be enforced); without any, only the limits are read.
    pub fn compile(
        file: &str,
        body: &[u8],
        providers: &Providers,
    ) -> Result<InferenceRoutes, PolicyFileError> {
        let v: Value = PolicyFileError::json(file, body)?;
        let limits = if v["tokenBudget"].is_null() {
            crate::budget::Limits::default()
        } else {
            serde_json::from_value(v["tokenBudget"].clone())
                .map_err(|e| PolicyFileError::content(file, format!("tokenBudget: {e}")))?
        };
        if providers.is_empty() {
            return Ok(InferenceRoutes {
                upstreams: Vec::new(),
                limits,
            });
        }
        let pref = &v["modelPreference"];
        let mut targets: Vec<&Value> = Vec::new();
        if pref["primary"].is_object() {
            targets.push(&pref["primary"]);
        }
        if let Some(f) = pref["fallback"].as_array() {
            targets.extend(f.iter());
        }
        let upstreams = targets
            .into_iter()
            .map(|t| {
                let provider = t["provider"].as_str().unwrap_or_default().to_string();
                let deployment = t["deployment"].as_str().unwrap_or_default().to_string();
                let (base_url, api_key) = providers.get(&provider).cloned().ok_or_else(|| {
                    PolicyFileError::content(
                        file,
                        format!(
                            "provider {provider:?} has no base URL (router flag --provider {provider}=URL)"
                        ),
                    )
                })?;
                Ok(Upstream {
                    provider,
                    deployment,
                    base_url,
                    api_key,
                })
            })
            .collect::<Result<_, PolicyFileError>>()?;
        Ok(InferenceRoutes { upstreams, limits })
    }
}

/// Parses `NAME=VALUE` (the `--provider` and `--provider-key-file` forms).
pub fn name_value(s: &str) -> Result<(String, String), crate::config::SettingError> {
    s.split_once('=')
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .ok_or_else(|| crate::config::SettingError::NameValue(s.to_string()))
}

/// Why the inference proxy could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum InferenceSetupError {
    /// The upstream CA bundle is not PEM certificates.
    #[error("upstream CA bundle: {0}")]
    CaBundle(#[source] reqwest::Error),
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The inference proxy's state (the routes come with each request, from the policy snapshot).
pub struct Inference {
    client: reqwest::Client,
    /// The token budget.
    pub budget: Arc<Budget>,
    /// The router's clock, Unix seconds.
    pub clock: fn() -> i64,
    next_id: AtomicU64,
    started_ns: u128,
}

/// Largest request body accepted.
pub const MAX_BODY: usize = 4 << 20;

fn error(status: StatusCode, kind: &str, message: String, extra: Value) -> Response {
    let mut body = json!({"error": {"type": kind, "message": message}});
    if let (Some(e), Value::Object(x)) = (body["error"].as_object_mut(), extra) {
        e.extend(x);
    }
    (status, axum::Json(body)).into_response()
}

/// Request headers passed on to the upstream as they came: Anthropic's API version and beta
/// flags (`/v1/messages`).
fn passthrough_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in ["anthropic-version", "anthropic-beta"] {
        if let Some(v) = headers.get(name) {
            out.insert(name, v.clone());
        }
    }
    out
}

/// Total tokens in a usage object (`total_tokens`, else input + output).
fn usage_tokens(v: &Value) -> Option<u64> {
    let u = &v["usage"];
    u["total_tokens"]
        .as_u64()
        .or_else(|| {
            let a = u["prompt_tokens"].as_u64().or(u["input_tokens"].as_u64())?;
            let b = u["completion_tokens"]
                .as_u64()
                .or(u["output_tokens"].as_u64())?;
            Some(a + b)
        })
        .or_else(|| {
            v["response"]
                .is_object()
                .then(|| usage_tokens(&v["response"]))
                .flatten()
        })
}

/// The usage reported in a server-sent-event stream so far (the last one seen).
fn usage_in_events(text: &str) -> Option<u64> {
    text.lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find_map(|v| usage_tokens(&v))
}

impl Inference {
    /// A proxy with `budget`; `ca_pem` adds trusted roots for upstream TLS.
    pub fn new(
        budget: Arc<Budget>,
        ca_pem: Option<&[u8]>,
        clock: fn() -> i64,
    ) -> Result<Inference, InferenceSetupError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(300))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = ca_pem {
            for c in
                reqwest::Certificate::from_pem_bundle(pem).map_err(InferenceSetupError::CaBundle)?
            {
                b = b.add_root_certificate(c);
            }
        }
        Ok(Inference {
            client: b.build().map_err(InferenceSetupError::Client)?,
            budget,
            clock,
            next_id: AtomicU64::new(0),
            started_ns: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        })
    }

    /// The request's id, or `None` when the given `x-request-id` is not acceptable.
    fn request_id(&self, headers: &HeaderMap) -> Option<String> {
        match headers.get("x-request-id") {
            Some(v) => {
                let s = v.to_str().unwrap_or_default();
                (!s.is_empty() && s.len() <= 128 && s.bytes().all(|c| c.is_ascii_graphic()))
                    .then(|| s.to_string())
            }
            // Process start time (ns) + a counter: unique across restarts, so a new request is
            // never mistaken for one already counted.
            None => Some(format!(
                "kars-{}-{}",
                self.started_ns,
                self.next_id.fetch_add(1, Ordering::Relaxed)
            )),
        }
    }

    /// Handles one request for `api_path` (`chat/completions`, `completions` or `responses`) with the routes
    /// in force.
    pub async fn handle(
        self: Arc<Self>,
        routes: Arc<InferenceRoutes>,
        api_path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Response {
        if body.len() > MAX_BODY {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request",
                format!("the body is over {MAX_BODY} bytes"),
                json!({}),
            );
        }
        let Ok(Value::Object(mut request)) = serde_json::from_slice::<Value>(&body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the body must be a JSON object".into(),
                json!({}),
            );
        };
        let Some(id) = self.request_id(&headers) else {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_id",
                "x-request-id must be 1-128 visible ASCII characters".into(),
                json!({}),
            );
        };
        // Embeddings produce no output tokens: their cap is 0 (the budgets still apply, and the
        // usage the upstream reports is counted).
        let cap = if api_path == "embeddings" {
            Some(0)
        } else {
            ["max_tokens", "max_completion_tokens", "max_output_tokens"]
                .iter()
                .find_map(|k| request.get(*k).and_then(Value::as_u64))
        };
        if let Err(refusal) = self.budget.admit(&routes.limits, cap, (self.clock)()) {
            let message = match &refusal {
                BudgetRefusal::PerRequestCap { requested, cap } => format!(
                    "the request may use up to {} tokens; the cap is {cap} (set max_tokens)",
                    requested.map_or("an unlimited number of".into(), |r| r.to_string())
                ),
                BudgetRefusal::DailyExhausted { used, limit } => format!(
                    "today's token budget cannot cover this request ({used} of {limit} used, UTC day)"
                ),
                BudgetRefusal::MonthlyExhausted { used, limit } => format!(
                    "this month's token budget cannot cover this request ({used} of {limit} used, UTC month)"
                ),
            };
            // Upstream's bodies: type token_budget_exceeded with its code, plus what was counted.
            let code = match refusal {
                BudgetRefusal::PerRequestCap { .. } => "per_request_tokens_exceeded",
                _ => "budget_exceeded",
            };
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "token_budget_exceeded",
                message,
                json!({"code": code, "budget": refusal}),
            );
        }
        let stream = request.get("stream").and_then(Value::as_bool) == Some(true);
        let upstreams = &routes.upstreams;
        if upstreams.is_empty() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no_upstream",
                "no inference upstream is configured".into(),
                json!({}),
            );
        }
        let mut tried = Vec::new();
        let mut missing_keys = 0usize;
        for up in upstreams.iter() {
            let key = match &up.api_key {
                ProviderKey::None => None,
                ProviderKey::Value(k) => Some(k.clone()),
                ProviderKey::File(f) => match tokio::fs::read_to_string(f).await {
                    Ok(k) if !k.trim().is_empty() => Some(k.trim().to_string()),
                    _ => {
                        missing_keys += 1;
                        tried.push(format!(
                            "{} ({}): its API key file {} is missing or empty (create the provider's credentials Secret in this sandbox's namespace)",
                            up.provider,
                            up.deployment,
                            f.display()
                        ));
                        continue;
                    }
                },
            };
            request.insert("model".into(), Value::from(up.deployment.clone()));
            let url = format!("{}/{api_path}", up.base_url.trim_end_matches('/'));
            let mut req = self
                .client
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-request-id", &id)
                .headers(passthrough_headers(&headers))
                .body(serde_json::to_vec(&request).unwrap_or_default());
            if let Some(k) = &key {
                req = req.bearer_auth(k);
            }
            let res = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    tried.push(format!("{} ({}): {e}", up.provider, up.deployment));
                    continue;
                }
            };
            let status = res.status();
            if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                tried.push(format!(
                    "{} ({}): HTTP {status}",
                    up.provider, up.deployment
                ));
                continue;
            }
            return self.relay(res, id, cap, stream).await;
        }
        if missing_keys == upstreams.len() {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "provider_credentials_missing",
                tried.join("; "),
                json!({}),
            );
        }
        error(
            StatusCode::BAD_GATEWAY,
            "upstream_unavailable",
            format!("no upstream answered: {}", tried.join("; ")),
            json!({}),
        )
    }

    async fn relay(
        self: Arc<Self>,
        res: reqwest::Response,
        id: String,
        cap: Option<u64>,
        stream: bool,
    ) -> Response {
        let status = StatusCode::from_u16(res.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let content_type = res
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok())
            .unwrap_or(HeaderValue::from_static("application/json"));
        let success = status.is_success();
        if !stream {
            let bytes = res.bytes().await.unwrap_or_default();
            if success {
                let used = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .and_then(|v| usage_tokens(&v))
                    .or(cap)
                    .unwrap_or(0);
                self.record(&id, used);
            }
            return (status, [(header::CONTENT_TYPE, content_type)], bytes).into_response();
        }
        // Stream through; keep the tail of the text to find the usage event at the end.
        let me = self.clone();
        let mut upstream = res.bytes_stream();
        let body = async_stream(move |tx| async move {
            let mut tail = String::new();
            while let Some(chunk) = upstream.next().await {
                match chunk {
                    Ok(b) => {
                        tail.push_str(&String::from_utf8_lossy(&b));
                        if tail.len() > 64 * 1024 {
                            let cut = tail.len() - 32 * 1024;
                            let cut = (cut..tail.len())
                                .find(|i| tail.is_char_boundary(*i))
                                .unwrap_or(0);
                            tail.drain(..cut);
                        }
                        if tx.send(Ok(b)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                        break;
                    }
                }
            }
            if success {
                me.record(&id, usage_in_events(&tail).or(cap).unwrap_or(0));
            }
        });
        (status, [(header::CONTENT_TYPE, content_type)], body).into_response()
    }

    fn record(&self, id: &str, tokens: u64) {
        if let Err(e) = self.budget.record(id, tokens, (self.clock)()) {
            tracing::error!(error = %e, "token usage not recorded");
        }
    }
}

/// A body fed by a task through a channel (the task runs to the end even if the client goes).
fn async_stream<F, Fut>(f: F) -> Body
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Limits;
    use std::sync::atomic::AtomicUsize;

    const NOON: i64 = 1_795_521_600; // 2026-11-24T12:00:00Z

    fn clock() -> i64 {
        NOON
    }

    /// An upstream answering `status` with `body` (and counting calls; keeps the last request).
    async fn upstream(
        status: u16,
        body: &'static str,
        content_type: &'static str,
    ) -> (String, Arc<AtomicUsize>, Arc<std::sync::Mutex<Value>>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(std::sync::Mutex::new(Value::Null));
        let (c, l) = (calls.clone(), last.clone());
        let app = axum::Router::new().route(
            "/v1/chat/completions",
            axum::routing::post(move |b: Bytes| {
                let (c, l) = (c.clone(), l.clone());
                async move {
                    c.fetch_add(1, Ordering::SeqCst);
                    *l.lock().expect("lock") = serde_json::from_slice(&b).unwrap_or(Value::Null);
                    (
                        StatusCode::from_u16(status).expect("status"),
                        [(header::CONTENT_TYPE, content_type)],
                        body,
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls, last)
    }

    /// The proxy and the routes a policy snapshot would hand it.
    struct TestProxy {
        inference: Arc<Inference>,
        routes: std::sync::Mutex<Arc<InferenceRoutes>>,
    }

    impl std::ops::Deref for TestProxy {
        type Target = Inference;
        fn deref(&self) -> &Inference {
            &self.inference
        }
    }

    fn proxy(upstreams: Vec<(&str, &str)>, limits: Limits, dir: &std::path::Path) -> TestProxy {
        let budget = Arc::new(Budget::open(&dir.join("budget.json")).expect("budget"));
        let upstreams = upstreams
            .into_iter()
            .enumerate()
            .map(|(i, (url, deployment))| Upstream {
                provider: format!("p{i}"),
                deployment: deployment.into(),
                base_url: url.into(),
                api_key: ProviderKey::Value(format!("key-{i}")),
            })
            .collect();
        TestProxy {
            inference: Arc::new(Inference::new(budget, None, clock).expect("client")),
            routes: std::sync::Mutex::new(Arc::new(InferenceRoutes { upstreams, limits })),
        }
    }

    async fn call(p: &TestProxy, body: &str, id: Option<&str>) -> (StatusCode, Value, String) {
        let mut h = HeaderMap::new();
        if let Some(id) = id {
            h.insert("x-request-id", HeaderValue::from_str(id).expect("id"));
        }
        let routes = p.routes.lock().expect("lock").clone();
        let res = p
            .inference
            .clone()
            .handle(routes, "chat/completions", h, Bytes::from(body.to_string()))
            .await;
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        )
    }

    const OK: &str = r#"{"id":"c1","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":30,"completion_tokens":12,"total_tokens":42}}"#;

    #[tokio::test]
    async fn falls_back_in_order_and_counts_usage_once_per_request_id() {
        let dir = tempfile::tempdir().expect("tmp");
        let (down, down_calls, _) = upstream(503, "{}", "application/json").await;
        let (good, good_calls, last) = upstream(200, OK, "application/json").await;
        let p = proxy(
            vec![
                ("http://127.0.0.1:1/v1", "dead"),
                (&down, "primary-dep"),
                (&good, "fallback-dep"),
            ],
            Limits {
                per_request_tokens: Some(100),
                daily_tokens: Some(1_000),
                monthly_tokens: None,
            },
            dir.path(),
        );
        let body =
            r#"{"model":"anything","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
        let (status, v, _) = call(&p, body, Some("r-1")).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["usage"]["total_tokens"], 42);
        assert_eq!(down_calls.load(Ordering::SeqCst), 1);
        assert_eq!(good_calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            last.lock().expect("lock")["model"],
            "fallback-dep",
            "model set to the deployment"
        );
        assert_eq!(p.budget.used(NOON), (42, 42));
        // The client retries with the same id: forwarded, not counted again.
        call(&p, body, Some("r-1")).await;
        assert_eq!(p.budget.used(NOON), (42, 42));
        call(&p, body, Some("r-2")).await;
        assert_eq!(p.budget.used(NOON), (84, 84));
    }

    #[tokio::test]
    async fn requests_without_an_id_are_all_counted_across_restarts() {
        let dir = tempfile::tempdir().expect("tmp");
        let (good, _, _) = upstream(200, OK, "application/json").await;
        for expected in [42, 84] {
            // A new proxy over the same ledger: a restart.
            let p = proxy(vec![(&good, "dep")], Limits::default(), dir.path());
            assert_eq!(
                call(&p, r#"{"max_tokens":50}"#, None).await.0,
                StatusCode::OK
            );
            assert_eq!(
                p.budget.used(NOON).0,
                expected,
                "a new request is never taken for a retry"
            );
        }
    }

    #[tokio::test]
    async fn caps_and_budgets_refuse_before_any_upstream_call() {
        let dir = tempfile::tempdir().expect("tmp");
        let (good, calls, _) = upstream(200, OK, "application/json").await;
        let p = proxy(
            vec![(&good, "dep")],
            Limits {
                per_request_tokens: Some(50),
                daily_tokens: Some(100),
                monthly_tokens: Some(10_000),
            },
            dir.path(),
        );
        for body in [
            r#"{"max_tokens":51,"messages":[]}"#,
            r#"{"messages":[]}"#,
            r#"{"max_completion_tokens":500,"messages":[]}"#,
        ] {
            let (status, v, _) = call(&p, body, None).await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
            assert_eq!(v["error"]["type"], "token_budget_exceeded");
            assert_eq!(v["error"]["code"], "per_request_tokens_exceeded", "{v}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "refused before the upstream"
        );
        // Spend the day: 0+50 and 42+50 fit in 100; 84+50 does not.
        for i in 0..2 {
            assert_eq!(
                call(&p, r#"{"max_tokens":50}"#, Some(&format!("d{i}")))
                    .await
                    .0,
                StatusCode::OK
            );
        }
        let (status, v, _) = call(&p, r#"{"max_tokens":50}"#, Some("d9")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(v["error"]["budget"]["reason"], "dailyExhausted", "{v}");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // Bad requests are refused without a call either.
        for bad in ["not json", "[1]"] {
            assert_eq!(call(&p, bad, None).await.0, StatusCode::BAD_REQUEST);
        }
        assert_eq!(
            call(&p, "{}", Some("bad id with spaces")).await.0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn streams_pass_through_and_their_usage_is_recorded() {
        let dir = tempfile::tempdir().expect("tmp");
        const SSE: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"he\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"llo\"}}]}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\ndata: [DONE]\n\n";
        let (good, _, _) = upstream(200, SSE, "text/event-stream").await;
        let p = proxy(vec![(&good, "dep")], Limits::default(), dir.path());
        let (status, _, text) = call(&p, r#"{"stream":true,"max_tokens":20}"#, Some("s-1")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(text, SSE, "bytes passed through unchanged");
        // The usage is recorded when the stream ends (the relay task finishes right after).
        for _ in 0..50 {
            if p.budget.used(NOON).0 == 7 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.budget.used(NOON), (7, 7));
        // Without a usage event the request's cap is recorded.
        let (plain, _, _) = upstream(
            200,
            "data: {\"x\":1}\n\ndata: [DONE]\n\n",
            "text/event-stream",
        )
        .await;
        *p.routes.lock().expect("lock") = Arc::new(InferenceRoutes {
            upstreams: vec![Upstream {
                provider: "p".into(),
                deployment: "d".into(),
                base_url: plain,
                api_key: ProviderKey::None,
            }],
            limits: Limits::default(),
        });
        call(&p, r#"{"stream":true,"max_tokens":20}"#, Some("s-2")).await;
        for _ in 0..50 {
            if p.budget.used(NOON).0 == 27 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.budget.used(NOON), (27, 27));
    }

    #[test]
    fn policy_upstreams_and_limits() {
        let policy = br#"{"modelPreference":{"primary":{"provider":"a","deployment":"gpt"},"fallback":[{"provider":"b","deployment":"small"}]},"tokenBudget":{"perRequestTokens":10,"dailyTokens":100}}"#;
        let mut providers = Providers::new();
        providers.insert(
            "a".into(),
            ("https://a.example/v1".into(), ProviderKey::None),
        );
        let compile = |p: &Providers| InferenceRoutes::compile("inference-policy.json", policy, p);
        assert!(compile(&providers).is_err(), "provider b has no URL");
        providers.insert(
            "b".into(),
            (
                "https://b.example/v1".into(),
                ProviderKey::Value("k".into()),
            ),
        );
        let routes = compile(&providers).expect("ok");
        assert_eq!(
            routes
                .upstreams
                .iter()
                .map(|u| u.deployment.as_str())
                .collect::<Vec<_>>(),
            ["gpt", "small"]
        );
        let l = routes.limits;
        assert_eq!(
            (l.per_request_tokens, l.daily_tokens, l.monthly_tokens),
            (Some(10), Some(100), None)
        );
        assert!(name_value("a=b").is_ok() && name_value("a").is_err() && name_value("=b").is_err());
    }
}
