//! The router's settings: the environment names (all in the contract,
//! [`kars_contract::router::env`]) and the parsing of the files they name.

/// Every environment variable name the router reads (the contract's module: the names the
/// renderer writes and the router's own).
pub use kars_contract::router::env;

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
