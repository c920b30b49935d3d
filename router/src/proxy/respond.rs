//! Every way the proxy refuses a connection, in one table: the status code, the reason word
//! (`X-Kars-Egress-Refusal`, the metrics label, the audit record) and the text. Every refusal
//! is counted and audited (refusal records are throttled per reason so a flood cannot fill the
//! audit volume; what is held back is counted in metrics and reported with the next record).

use std::time::Instant;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::ProxyState;
use super::sni::SniError;
use crate::egress::Refusal;

/// Why a connection is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The egress decision, the address check or the lookup refused the destination.
    Refused(Refusal),
    /// The request head is over the size limit.
    HeadTooLarge,
    /// The bytes are not an HTTP/1 request head.
    MalformedRequest(String),
    /// The request head (or ClientHello) did not arrive within the time allowed.
    HeadTimeout,
    /// A TLS connection without a usable ClientHello.
    BadClientHello(SniError),
    /// None of the checked addresses accepted the connection.
    ConnectFailed(String),
    /// The decision could not be recorded: egress fails closed.
    AuditUnavailable(String),
}

impl Cause {
    /// The stable reason word.
    pub fn reason(&self) -> &'static str {
        match self {
            Cause::Refused(r) => r.reason(),
            Cause::HeadTooLarge => "HeadTooLarge",
            Cause::MalformedRequest(_) => "MalformedRequest",
            Cause::HeadTimeout => "HeadTimeout",
            Cause::BadClientHello(_) => "BadClientHello",
            Cause::ConnectFailed(_) => "ConnectFailed",
            Cause::AuditUnavailable(_) => "AuditUnavailable",
        }
    }

    /// The HTTP status it is answered with (TLS clients just see the connection close).
    pub fn status(&self) -> u16 {
        match self {
            Cause::Refused(Refusal::InvalidHost(_))
            | Cause::MalformedRequest(_)
            | Cause::HeadTimeout
            | Cause::BadClientHello(_) => 400,
            Cause::Refused(Refusal::ResolveFailed(_)) | Cause::ConnectFailed(_) => 502,
            Cause::Refused(_) => 403,
            Cause::HeadTooLarge => 431,
            Cause::AuditUnavailable(_) => 503,
        }
    }

    /// What is wrong, one line.
    pub fn detail(&self) -> String {
        match self {
            Cause::Refused(r) => r.detail().to_string(),
            Cause::HeadTooLarge => "the request head is too large".into(),
            Cause::MalformedRequest(why) => why.clone(),
            Cause::HeadTimeout => "the request head took too long".into(),
            Cause::BadClientHello(e) => e.to_string(),
            Cause::ConnectFailed(why) => why.clone(),
            Cause::AuditUnavailable(why) => {
                format!("the decision could not be recorded in the audit log ({why})")
            }
        }
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Bad Gateway",
    }
}

/// The HTTP response for `cause`.
pub fn response(cause: &Cause) -> String {
    let status = cause.status();
    let body = format!("{}: {}\n", cause.reason(), cause.detail());
    format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain\r\nX-Kars-Egress-Refusal: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        status_text(status),
        cause.reason(),
        body.len()
    )
}

/// Counts and audits a refusal; `context` adds what is known of the request (host, port,
/// target, transparent). Refusal records are throttled per reason.
pub fn record_refusal(state: &ProxyState, cause: &Cause, context: Value) {
    state.metrics.egress("refused", cause.reason());
    let Some(log) = &state.audit else { return };
    let Some(suppressed) = state.throttle.admit(cause.reason(), Instant::now()) else {
        state.metrics.audit_suppressed(cause.reason());
        return;
    };
    let mut fields = json!({
        "event": "egress.decision",
        "allowed": false,
        "refusal": {"reason": cause.reason(), "detail": cause.detail()},
    });
    if let (Value::Object(f), Value::Object(c)) = (&mut fields, context) {
        f.extend(c);
    }
    if suppressed > 0 {
        fields["suppressed_before"] = json!(suppressed);
    }
    if let Value::Object(map) = fields
        && let Err(e) = log.append(&kars_contract::time::now_rfc3339(), map)
    {
        state.metrics.audit_write_failures.inc();
        tracing::error!(error = %e, "audit write failed (the connection was refused anyway)");
    }
}

/// Refuses: counts, audits and (for HTTP clients) answers; TLS clients get the connection
/// closed.
pub async fn refuse(
    stream: &mut TcpStream,
    state: &ProxyState,
    cause: Cause,
    context: Value,
    http: bool,
) {
    record_refusal(state, &cause, context);
    if http {
        let _ = stream.write_all(response(&cause).as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cause_has_its_status_and_word() {
        for (cause, status, word) in [
            (
                Cause::Refused(Refusal::InvalidHost("x".into())),
                400,
                "InvalidHost",
            ),
            (
                Cause::Refused(Refusal::Blocklisted("x".into())),
                403,
                "Blocklisted",
            ),
            (
                Cause::Refused(Refusal::NotAllowed("x".into())),
                403,
                "NotAllowed",
            ),
            (
                Cause::Refused(Refusal::LearnLimitReached("x".into())),
                403,
                "LearnLimitReached",
            ),
            (
                Cause::Refused(Refusal::ForbiddenAddress("x".into())),
                403,
                "ForbiddenAddress",
            ),
            (
                Cause::Refused(Refusal::ResolveFailed("x".into())),
                502,
                "ResolveFailed",
            ),
            (Cause::HeadTooLarge, 431, "HeadTooLarge"),
            (Cause::MalformedRequest("x".into()), 400, "MalformedRequest"),
            (Cause::HeadTimeout, 400, "HeadTimeout"),
            (
                Cause::BadClientHello(SniError::NoServerName),
                400,
                "BadClientHello",
            ),
            (Cause::ConnectFailed("x".into()), 502, "ConnectFailed"),
            (Cause::AuditUnavailable("x".into()), 503, "AuditUnavailable"),
        ] {
            assert_eq!((cause.status(), cause.reason()), (status, word));
            let r = response(&cause);
            assert!(r.starts_with(&format!("HTTP/1.1 {status} ")), "{r}");
            assert!(
                r.contains(&format!("X-Kars-Egress-Refusal: {word}\r\n")),
                "{r}"
            );
        }
    }
}
