//! The normal form of an egress host name, shared by the renderer (which compiles allowlists
//! and approvals) and the router (which compares what an agent asks for with them).
//!
//! Normal form: ASCII lowercase, no trailing dot, internationalised names in punycode
//! (IDNA/UTS 46, strict STD3 rules), so `API.Example.COM.`, `api.example.com` and a Unicode
//! spelling that maps to the same name are one host. Refused before any lookup: IP literals in
//! every spelling `inet_aton` accepts (`127.1`, `0x7f.1`, `2130706433`, `[::1]`), userinfo,
//! ports inside the name, wildcards, and anything that is not a DNS name.

/// Why a string is not an egress host name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// Empty, or longer than a DNS name can be.
    #[error("{0:?}: empty or too long")]
    Length(String),
    /// `user@host`.
    #[error("{0:?}: userinfo is not allowed")]
    Userinfo(String),
    /// `[::1]`, `host:443`.
    #[error("{0:?}: IP literals and ports inside the host are not allowed")]
    PortOrBracket(String),
    /// An IP address in any spelling.
    #[error("{0:?}: IP literals are not allowed; use a host name")]
    IpLiteral(String),
    /// `*.example.com`.
    #[error(
        "{0:?}: wildcards are not allowed; list the host (subdomains of a listed host are allowed)"
    )]
    Wildcard(String),
    /// Characters or labels a DNS name cannot have.
    #[error("{0:?}: not a valid host name")]
    Invalid(String),
}

/// True when `s` parses as an IPv4 address in any form `inet_aton` accepts (dotted with 1–4
/// parts, each decimal, octal `0…` or hex `0x…`), which many resolvers and HTTP clients honour.
pub fn is_inet_aton_literal(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return false;
    }
    parts.iter().all(|p| {
        if p.is_empty() {
            return false;
        }
        if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            h.chars().all(|c| c.is_ascii_hexdigit())
        } else {
            p.chars().all(|c| c.is_ascii_digit())
        }
    })
}

/// True for a DNS label: 1–63 of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The normal form of a host name, or why `raw` is not one.
pub fn normalize_host(raw: &str) -> Result<String, HostError> {
    let owned = || raw.to_string();
    if raw.is_empty() || raw.len() > 253 + 1 {
        return Err(HostError::Length(owned()));
    }
    if raw.contains('@') {
        return Err(HostError::Userinfo(owned()));
    }
    if raw.starts_with('[') || raw.contains(':') {
        return Err(HostError::PortOrBracket(owned()));
    }
    if raw.contains('*') {
        return Err(HostError::Wildcard(owned()));
    }
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.parse::<std::net::IpAddr>().is_ok() || is_inet_aton_literal(trimmed) {
        return Err(HostError::IpLiteral(owned()));
    }
    let ascii = idna::domain_to_ascii_strict(trimmed).map_err(|_| HostError::Invalid(owned()))?;
    let ascii = ascii.to_ascii_lowercase();
    if ascii.is_empty() || ascii.len() > 253 || !ascii.split('.').all(is_dns_label) {
        return Err(HostError::Invalid(owned()));
    }
    if is_inet_aton_literal(&ascii) {
        return Err(HostError::IpLiteral(owned()));
    }
    Ok(ascii)
}

/// `a.b.c`, `b.c`, `c`: the names whose allowlist entries cover `host`.
pub fn suffixes(host: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(host), |h| h.split_once('.').map(|(_, rest)| rest))
}

/// True when `host` is `entry` or a subdomain of it (both in normal form).
pub fn covers(entry: &str, host: &str) -> bool {
    host == entry
        || host
            .strip_suffix(entry)
            .is_some_and(|rest| rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_normal_form() {
        assert_eq!(
            normalize_host("API.Example.COM.").as_deref(),
            Ok("api.example.com")
        );
        assert_eq!(
            normalize_host("bücher.example").as_deref(),
            Ok("xn--bcher-kva.example")
        );
        assert_eq!(
            normalize_host("BÜCHER.example."),
            normalize_host("xn--bcher-kva.example")
        );
    }

    #[test]
    fn each_refusal_has_its_reason() {
        for (h, want) in [
            ("", HostError::Length(String::new())),
            ("a@b.com", HostError::Userinfo("a@b.com".into())),
            ("a.com:443", HostError::PortOrBracket("a.com:443".into())),
            ("[::1]", HostError::PortOrBracket("[::1]".into())),
            ("*.a.com", HostError::Wildcard("*.a.com".into())),
            ("127.1", HostError::IpLiteral("127.1".into())),
            ("0x7f.1", HostError::IpLiteral("0x7f.1".into())),
            ("2130706433", HostError::IpLiteral("2130706433".into())),
            ("10.0.0.1.", HostError::IpLiteral("10.0.0.1.".into())),
            ("a b.com", HostError::Invalid("a b.com".into())),
            ("-a.com", HostError::Invalid("-a.com".into())),
            ("a..com", HostError::Invalid("a..com".into())),
            (".", HostError::Invalid(".".into())),
        ] {
            assert_eq!(normalize_host(h), Err(want), "{h:?}");
        }
    }

    #[test]
    fn subdomains_are_covered_look_alikes_are_not() {
        assert!(covers("example.com", "api.example.com"));
        assert!(covers("example.com", "example.com"));
        assert!(!covers("example.com", "badexample.com"));
        assert!(!covers("example.com", "example.com.evil.org"));
        assert_eq!(
            suffixes("a.b.c").collect::<Vec<_>>(),
            vec!["a.b.c", "b.c", "c"]
        );
    }

    proptest! {
        #[test]
        fn normal_form_is_a_fixed_point(s in "[A-Za-z0-9.\\-ü*:@\\[\\] ]{0,40}") {
            if let Ok(n) = normalize_host(&s) {
                prop_assert_eq!(normalize_host(&n), Ok(n.clone()));
                prop_assert!(n.is_ascii());
                prop_assert!(!is_inet_aton_literal(&n));
            }
        }
    }
}
