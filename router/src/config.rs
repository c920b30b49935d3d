//! The router's settings: the environment names (all in the contract,
//! [`kars_contract::router::env`]), the parsing of the values and files they name, and the
//! typed error for a setting that cannot be used ([`SettingError`]).

/// Every environment variable name the router reads (the contract's module: the names the
/// renderer writes and the router's own).
pub use kars_contract::router::env;

/// A command-line or environment setting the router cannot use (the message names the value
/// and what is expected).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// `--egress-mode` is neither `strict` nor `learn`.
    #[error("egress mode {0:?}: expected strict or learn")]
    EgressMode(String),
    /// `--audit-fsync` is not `always`, `never` or an interval.
    #[error("{0:?}: expected always, never, or an interval like 100ms")]
    Fsync(String),
    /// A duration or window that must be positive is zero.
    #[error("{what} {value:?} must be positive")]
    NotPositive {
        /// Which setting.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// A duration that does not parse.
    #[error("{what} {message}")]
    Duration {
        /// Which setting.
        what: &'static str,
        /// The parser's message.
        message: String,
    },
    /// Not of the form `NAME=VALUE`.
    #[error("{0:?}: expected NAME=VALUE")]
    NameValue(String),
    /// A blocklist line that is not a host name.
    #[error("line {line}: {error}")]
    BlocklistHost {
        /// 1-based line number.
        line: usize,
        /// Why the host is refused.
        error: kars_contract::host::HostError,
    },
}

/// Parses a positive duration (`10s`, `5m`, `500ms`) for the setting `what`.
pub fn positive_duration(what: &'static str, s: &str) -> Result<std::time::Duration, SettingError> {
    match kars_contract::time::parse_duration(s) {
        Ok(d) if d.is_zero() => Err(SettingError::NotPositive {
            what,
            value: s.to_string(),
        }),
        Ok(d) => Ok(d),
        Err(e) => Err(SettingError::Duration {
            what,
            message: e.to_string(),
        }),
    }
}

/// Reads a blocklist file: one host per line, `#` starts a comment; every host must be a valid
/// name (it is kept in normal form).
pub fn parse_blocklist(text: &str) -> Result<Vec<String>, SettingError> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(line, l)| {
            kars_contract::host::normalize_host(l)
                .map_err(|error| SettingError::BlocklistHost { line, error })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn blocklists_are_normalised_and_checked() {
        assert_eq!(
            super::parse_blocklist("# c\nEvil.Example.\n\n  other.test # x\n"),
            Ok(vec!["evil.example".to_string(), "other.test".to_string()])
        );
        assert!(
            super::parse_blocklist("ok.test\n10.0.0.1\n")
                .is_err_and(|e| e.to_string().starts_with("line 2:"))
        );
    }
}
