//! Push webhooks (GitHub and Gitea): a hook only wakes the agent up to fetch; its payload is
//! never trusted for content. Every request must carry a valid HMAC-SHA256 signature of its body
//! made with the shared secret; a delivery id seen before is a replay and is refused; requests
//! are rate-limited; bursts of hooks coalesce into one fetch (the trigger channel holds one
//! pending wake-up).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which forge sent the hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    /// `X-Hub-Signature-256: sha256=<hex>`, `X-GitHub-Delivery`, `X-GitHub-Event`.
    GitHub,
    /// `X-Gitea-Signature: <hex>`, `X-Gitea-Delivery`, `X-Gitea-Event`.
    Gitea,
}

/// Why a hook was refused (each maps to one HTTP status).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookRefusal {
    /// No or malformed signature header.
    #[error("missing or malformed signature header")]
    MissingSignature,
    /// The signature does not match the body.
    #[error("signature does not match the body")]
    BadSignature,
    /// No delivery id (needed for replay protection).
    #[error("missing delivery id header")]
    MissingDelivery,
    /// This delivery id was seen before.
    #[error("delivery already received (replay)")]
    Replay,
    /// Too many hooks.
    #[error("rate limited")]
    RateLimited,
}

impl HookRefusal {
    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            HookRefusal::MissingSignature | HookRefusal::BadSignature => StatusCode::UNAUTHORIZED,
            HookRefusal::MissingDelivery => StatusCode::BAD_REQUEST,
            HookRefusal::Replay => StatusCode::CONFLICT,
            HookRefusal::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Checks a hook's signature for `forge`.
pub fn check_signature(
    forge: Forge,
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
) -> Result<(), HookRefusal> {
    let (name, prefix) = match forge {
        Forge::GitHub => ("x-hub-signature-256", "sha256="),
        Forge::Gitea => ("x-gitea-signature", ""),
    };
    let value = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or(HookRefusal::MissingSignature)?;
    let hex_sig = value
        .trim()
        .strip_prefix(prefix)
        .ok_or(HookRefusal::MissingSignature)?;
    let given = hex::decode(hex_sig).map_err(|_| HookRefusal::MissingSignature)?;
    if secret.is_empty() {
        return Err(HookRefusal::BadSignature);
    }
    let expected = hmac_sha256(secret, body);
    if constant_time_eq(&given, &expected) {
        Ok(())
    } else {
        Err(HookRefusal::BadSignature)
    }
}

/// Remembers recent delivery ids (bounded) to refuse replays.
#[derive(Debug)]
pub struct ReplayGuard {
    seen: VecDeque<String>,
    capacity: usize,
}

impl ReplayGuard {
    /// Remembers up to `capacity` ids.
    pub fn new(capacity: usize) -> Self {
        ReplayGuard {
            seen: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Records `id`; false when it was seen before.
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.seen.iter().any(|s| s == id) {
            return false;
        }
        if self.seen.len() == self.capacity {
            self.seen.pop_front();
        }
        self.seen.push_back(id.to_string());
        true
    }
}

/// A token bucket: `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
pub struct TokenBucket {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(burst: u32, per_second: f64) -> Self {
        TokenBucket {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second,
            last: Instant::now(),
        }
    }

    /// Takes a token at time `now`; false when empty.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Shared webhook state.
#[derive(Clone)]
pub struct HookState {
    /// HMAC secret.
    pub secret: Arc<Vec<u8>>,
    /// Replay guard.
    pub replay: Arc<Mutex<ReplayGuard>>,
    /// Rate limiter.
    pub limiter: Arc<Mutex<TokenBucket>>,
    /// Wakes the sync loop (coalescing: many notifications before a wake-up count once).
    pub trigger: Arc<Notify>,
    /// Hooks accepted so far (a follower replica relays new ones to the leader).
    pub accepted: Arc<std::sync::atomic::AtomicU64>,
}

impl HookState {
    /// Checks a request; on success the sync loop is woken.
    pub fn accept(
        &self,
        forge: Forge,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), HookRefusal> {
        if !self
            .limiter
            .lock()
            .map(|mut l| l.take(Instant::now()))
            .unwrap_or(false)
        {
            return Err(HookRefusal::RateLimited);
        }
        check_signature(forge, headers, body, &self.secret)?;
        let delivery_header = match forge {
            Forge::GitHub => "x-github-delivery",
            Forge::Gitea => "x-gitea-delivery",
        };
        let id = headers
            .get(delivery_header)
            .and_then(|v| v.to_str().ok())
            .filter(|s| !s.is_empty())
            .ok_or(HookRefusal::MissingDelivery)?;
        if !self
            .replay
            .lock()
            .map(|mut r| r.first_time(id))
            .unwrap_or(false)
        {
            return Err(HookRefusal::Replay);
        }
        self.accepted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.trigger.notify_one();
        Ok(())
    }
}

async fn handle(state: HookState, forge: Forge, headers: HeaderMap, body: Bytes) -> Response {
    match state.accept(forge, &headers, &body) {
        Ok(()) => {
            tracing::info!(?forge, "push hook accepted; fetching");
            (StatusCode::ACCEPTED, "fetch scheduled").into_response()
        }
        Err(r) => {
            tracing::warn!(?forge, reason = %r, "push hook refused");
            (r.status(), r.to_string()).into_response()
        }
    }
}

/// `POST /hooks/github`.
pub async fn github(State(state): State<HookState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Forge::GitHub, headers, body).await
}

/// `POST /hooks/gitea`.
pub async fn gitea(State(state): State<HookState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, Forge::Gitea, headers, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hmac_with_a_long_key_matches_rfc_4231_test_case_6() {
        let key = [0xaau8; 131];
        let mac = hmac_sha256(
            &key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    fn state() -> HookState {
        HookState {
            secret: Arc::new(b"s3cret".to_vec()),
            replay: Arc::new(Mutex::new(ReplayGuard::new(16))),
            limiter: Arc::new(Mutex::new(TokenBucket::new(100, 10.0))),
            trigger: Arc::new(Notify::new()),
            accepted: Default::default(),
        }
    }

    fn github_headers(body: &[u8], secret: &[u8], delivery: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let sig = format!("sha256={}", hex::encode(hmac_sha256(secret, body)));
        h.insert("x-hub-signature-256", sig.parse().expect("header"));
        h.insert("x-github-delivery", delivery.parse().expect("header"));
        h
    }

    #[test]
    fn valid_hook_is_accepted_once() {
        let s = state();
        let body = br#"{"ref":"refs/heads/main"}"#;
        assert_eq!(
            s.accept(Forge::GitHub, &github_headers(body, b"s3cret", "d1"), body),
            Ok(())
        );
        assert_eq!(
            s.accept(Forge::GitHub, &github_headers(body, b"s3cret", "d1"), body),
            Err(HookRefusal::Replay)
        );
    }

    #[test]
    fn forged_and_tampered_hooks_are_refused() {
        let s = state();
        let body = br#"{"ref":"refs/heads/main"}"#;
        assert_eq!(
            s.accept(Forge::GitHub, &github_headers(body, b"wrong", "d2"), body),
            Err(HookRefusal::BadSignature)
        );
        let other = br#"{"ref":"refs/heads/evil"}"#;
        assert_eq!(
            s.accept(Forge::GitHub, &github_headers(body, b"s3cret", "d3"), other),
            Err(HookRefusal::BadSignature)
        );
        let mut h = github_headers(body, b"s3cret", "d4");
        h.remove("x-hub-signature-256");
        assert_eq!(
            s.accept(Forge::GitHub, &h, body),
            Err(HookRefusal::MissingSignature)
        );
        let mut h = github_headers(body, b"s3cret", "d5");
        h.insert("x-hub-signature-256", "sha1=abcd".parse().expect("header"));
        assert_eq!(
            s.accept(Forge::GitHub, &h, body),
            Err(HookRefusal::MissingSignature)
        );
        let mut h = github_headers(body, b"s3cret", "d6");
        h.remove("x-github-delivery");
        assert_eq!(
            s.accept(Forge::GitHub, &h, body),
            Err(HookRefusal::MissingDelivery)
        );
        // A GitHub-style header is not a Gitea signature.
        assert_eq!(
            s.accept(Forge::Gitea, &github_headers(body, b"s3cret", "d7"), body),
            Err(HookRefusal::MissingSignature)
        );
    }

    #[test]
    fn gitea_signature() {
        let s = state();
        let body = b"{}";
        let mut h = HeaderMap::new();
        h.insert(
            "x-gitea-signature",
            hex::encode(hmac_sha256(b"s3cret", body))
                .parse()
                .expect("header"),
        );
        h.insert("x-gitea-delivery", "g1".parse().expect("header"));
        assert_eq!(s.accept(Forge::Gitea, &h, body), Ok(()));
    }

    #[test]
    fn empty_secret_never_matches() {
        let s = HookState {
            secret: Arc::new(Vec::new()),
            ..state()
        };
        let body = b"{}";
        assert_eq!(
            s.accept(Forge::GitHub, &github_headers(body, b"", "e1"), body),
            Err(HookRefusal::BadSignature)
        );
    }

    #[test]
    fn rate_limit() {
        let mut b = TokenBucket::new(2, 1.0);
        let t = Instant::now();
        assert!(b.take(t) && b.take(t) && !b.take(t));
        assert!(b.take(t + std::time::Duration::from_millis(1100)));
    }
}
