//! Failures and exit codes: every command ends with one of these codes (the table is in
//! `kars --help` and the README):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (for `diff`: no differences) |
//! | 1 | the repository, a commit or the cluster state failed the check (not Ready counts); for `diff`: differences |
//! | 2 | usage: bad flags, missing files, unknown names; for `diff`: the diff could not be made |
//! | 3 | the cluster or the Git remote cannot be reached |
//!
//! Errors are printed once, each cause once (`error: what: why`), with a hint line when
//! there is something to do.

use std::process::ExitCode;

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: u8,
    /// What went wrong (the chain is printed, each cause once).
    pub error: anyhow::Error,
    /// What to do about it, when known.
    pub hint: Option<String>,
    /// The stable reason word, when there is one (JSON output).
    pub reason: Option<String>,
    /// More of what is known, for the JSON document (e.g. each refused commit).
    pub detail: Option<serde_json::Value>,
}

/// Exit code: the checked thing failed.
pub const CHECK: u8 = 1;
/// Exit code: usage error.
pub const USAGE: u8 = 2;
/// Exit code: the cluster or the remote cannot be reached.
pub const UNREACHABLE: u8 = 3;

impl Failure {
    fn new(code: u8, error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code,
            error: error.into(),
            hint: None,
            reason: None,
            detail: None,
        }
    }

    /// The checked thing failed (exit 1).
    pub fn check(error: impl Into<anyhow::Error>) -> Self {
        Failure::new(CHECK, error)
    }

    /// Usage or environment problem (exit 2).
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure::new(USAGE, error)
    }

    /// The cluster or the remote cannot be reached (exit 3).
    pub fn unreachable(error: impl Into<anyhow::Error>) -> Self {
        Failure::new(UNREACHABLE, error)
    }

    /// A failure with the message `m` (exit `code`).
    pub fn msg(code: u8, m: impl std::fmt::Display) -> Self {
        Failure::new(code, anyhow::anyhow!("{m}"))
    }

    /// Adds what to do.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds the reason word.
    pub fn reason(mut self, reason: impl std::fmt::Display) -> Self {
        self.reason = Some(reason.to_string());
        self
    }

    /// Adds detail for the JSON document.
    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    /// The same failure with another exit code (`diff` maps check failures to 2).
    pub fn with_code(mut self, code: u8) -> Self {
        self.code = code;
        self
    }

    /// The one-line message: the error and its causes, each said once.
    pub fn message(&self) -> String {
        chain_once(&self.error)
    }

    /// Prints the failure (text on stderr; with `-o json|yaml` also a document on stdout) and
    /// returns its exit code.
    pub fn report(self) -> ExitCode {
        let ui = crate::ui::get();
        let message = self.message();
        if ui.machine() {
            let doc = serde_json::json!({
                "ok": false,
                "exitCode": self.code,
                "reason": self.reason,
                "error": message,
                "hint": self.hint,
                "detail": self.detail,
            });
            let _ = crate::ui::emit(&doc);
        }
        eprintln!("{} {message}", ui.paint_err("31", "error:"));
        if let Some(h) = &self.hint {
            eprintln!("{} {h}", ui.paint_err("33", "hint:"));
        }
        ExitCode::from(self.code)
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::usage(e)
    }
}

/// `error: cause: cause`, leaving out a cause whose text the message already contains (typed
/// errors often print their source in their own message too).
pub fn chain_once(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        let text = text.trim();
        if text.is_empty() || out.contains(text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading x: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Outer(io)).context("loading the trust policy");
        assert_eq!(
            chain_once(&e),
            "loading the trust policy: reading x: no such file"
        );
    }
}
