//! The HTTP surface that exists today: health, and the policy-status echo.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;

use crate::auth::bearer_matches;
use crate::policy::PolicyStore;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Loaded policies.
    pub policies: Arc<PolicyStore>,
    /// Admin bearer token (empty = protected endpoints refuse everyone).
    pub admin_token: Arc<String>,
    /// Sandbox name.
    pub sandbox: Arc<String>,
}

/// Builds the router (handlers are testable without sockets).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/internal/policy-status", get(policy_status))
        .with_state(state)
}

async fn readyz(State(s): State<AppState>) -> Response {
    let snapshot = s.policies.snapshot();
    if snapshot.is_empty() || snapshot.iter().any(|e| e.digest.is_some()) {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no policy loaded").into_response()
    }
}

async fn policy_status(State(s): State<AppState>, headers: HeaderMap) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !bearer_matches(auth, &s.admin_token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "bearer token required",
        )
            .into_response();
    }
    let entries: Vec<_> = s.policies.snapshot().iter().map(|e| json!(**e)).collect();
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
    use crate::policy::{Mount, PolicyKind};
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state(dir: &std::path::Path) -> AppState {
        std::fs::write(dir.join("allowlist.json"), "{}").expect("write");
        let store = PolicyStore::new(vec![Mount {
            kind: PolicyKind::EgressAllowlist,
            dir: dir.into(),
        }]);
        store.reload();
        AppState {
            policies: Arc::new(store),
            admin_token: Arc::new("tok".into()),
            sandbox: Arc::new("a".into()),
        }
    }

    #[tokio::test]
    async fn policy_status_needs_the_token_and_echoes_digests() {
        let dir = tempfile::tempdir().expect("tmp");
        let app = app(state(dir.path()));
        let res = app
            .clone()
            .oneshot(
                Request::get("/internal/policy-status")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("res");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = app
            .clone()
            .oneshot(
                Request::get("/internal/policy-status")
                    .header("authorization", "Bearer wrong")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("res");
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
        let res = app
            .oneshot(
                Request::get("/internal/policy-status")
                    .header("authorization", "Bearer tok")
                    .body(Body::empty())
                    .expect("req"),
            )
            .await
            .expect("res");
        assert_eq!(res.status(), StatusCode::OK);
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .expect("body");
        let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["entries"][0]["kind"], "EgressAllowlist");
        assert_eq!(
            v["entries"][0]["digest"],
            crate::policy::digest(&[("allowlist.json".into(), b"{}".to_vec())])
        );
    }
}
