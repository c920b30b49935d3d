//! Egress hosts as a repository writes them, and the compiled allowlist file.
//!
//! The normal form and what is refused are the contract's ([`kars_contract::host`]), the same
//! rules the router applies. A repository must also spell hosts in ASCII (punycode for
//! internationalised names), so the compiled file and the Git text say the same thing.

use std::collections::BTreeSet;

use serde_json::json;

use crate::canonical;

/// The normal form of a host written in the repository (surrounding spaces are ignored), or
/// why it cannot be used.
pub fn egress_host(host: &str) -> Result<String, String> {
    let h = host.trim();
    if !h.is_ascii() {
        return Err(format!(
            "{host:?} is not ASCII; write internationalised names in punycode (xn--…)"
        ));
    }
    kars_contract::host::normalize_host(h).map_err(|e| e.to_string())
}

/// The egress allowlist file: hosts normalised, port default 443, sorted, deduplicated.
/// Hosts that do not normalise are left out (validation has already refused them).
pub fn compile_allowlist(endpoints: &[(String, i64)]) -> String {
    canonical::json(&json!({"schemaVersion": 1, "endpoints": allowlist_endpoints(endpoints)}))
}

/// The endpoints of a compiled allowlist, as JSON values (also an approval's `hosts`).
pub fn allowlist_endpoints(endpoints: &[(String, i64)]) -> Vec<serde_json::Value> {
    let set: BTreeSet<(String, i64)> = endpoints
        .iter()
        .filter_map(|(h, p)| egress_host(h).ok().map(|h| (h, *p)))
        .collect();
    set.into_iter()
        .map(|(host, port)| json!({"host": host, "port": port}))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised_or_refused() {
        assert_eq!(
            egress_host(" API.Example.com. ").as_deref(),
            Ok("api.example.com")
        );
        for bad in [
            "",
            "*.example.com",
            "10.0.0.1",
            "::1",
            "[::1]",
            "exa mple.com",
            "bücher.de",
            "-a.com",
        ] {
            assert!(egress_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowlist_is_sorted_deduplicated_canonical() {
        let a = compile_allowlist(&[
            ("b.com".into(), 443),
            ("A.com".into(), 8443),
            ("a.com".into(), 8443),
            ("a.com".into(), 443),
        ]);
        assert_eq!(
            a,
            r#"{"endpoints":[{"host":"a.com","port":443},{"host":"a.com","port":8443},{"host":"b.com","port":443}],"schemaVersion":1}"#
        );
    }
}
