//! The router's own settings, read from its environment (the names the renderer writes are
//! the contract's, [`kars_contract::router::env`]; these are the router's alone).

pub use kars_contract::router::env as contract;

/// Environment variable names only the router reads.
pub mod env {
    /// The audit log file (overrides the directory).
    pub const AUDIT_LOG: &str = "KARS_AUDIT_LOG";
    /// When the audit log is synced to disk.
    pub const AUDIT_FSYNC: &str = "KARS_AUDIT_FSYNC";
    /// File of blocklisted host names.
    pub const EGRESS_BLOCKLIST_FILE: &str = "KARS_EGRESS_BLOCKLIST_FILE";
    /// Internal CIDRs the proxy may connect to.
    pub const EGRESS_ALLOW_CIDRS: &str = "KARS_EGRESS_ALLOW_CIDRS";
    /// Inference providers, `NAME=URL,…`.
    pub const INFERENCE_PROVIDERS: &str = "KARS_INFERENCE_PROVIDERS";
    /// Extra CA certificates for inference upstreams.
    pub const INFERENCE_CA_FILE: &str = "KARS_INFERENCE_CA_FILE";
}

/// Reads a blocklist file: one host per line, `#` starts a comment; every host must be a valid
/// name (it is kept in normal form).
pub fn parse_blocklist(text: &str) -> Result<Vec<String>, String> {
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.split('#').next().unwrap_or("").trim()))
        .filter(|(_, l)| !l.is_empty())
        .map(|(n, l)| kars_contract::host::normalize_host(l).map_err(|e| format!("line {n}: {e}")))
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
            super::parse_blocklist("ok.test\n10.0.0.1\n").is_err_and(|e| e.starts_with("line 2:"))
        );
    }
}
