//! Egress decisions: may the agent reach `host:port`, and may the router connect to the
//! address that name resolved to?
//!
//! Names are compared in one normal form: ASCII lowercase, no trailing dot, internationalised
//! names in punycode (IDNA/UTS 46), so `API.Example.COM.`, `api.example.com` and a Unicode
//! spelling that maps to the same name are one host. IP literals (every spelling `inet_aton`
//! accepts: `127.1`, `0x7f.1`, `2130706433`, `[::1]`), userinfo, ports inside the name and
//! anything that is not a DNS name are refused before any lookup. An allowlisted host also
//! allows its subdomains (as the renderer documents); the port must match exactly.
//!
//! Order: the blocklist always wins; then the static allowlist, then unexpired approvals
//! (checked against the router's clock at every decision, so an expiry takes effect without a
//! restart); then the mode: `Strict` denies, `Learn` allows and records the host.
//!
//! Addresses: after the one lookup, loopback, private (RFC 1918, CGNAT, ULA), link-local
//! (including the cloud metadata address 169.254.169.254), unspecified, multicast, broadcast,
//! documentation and IPv4-mapped/-translated forms of those are refused unless a configured
//! CIDR allows them; the proxy then connects to exactly the address it checked.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Strict (deny what is not allowed) or Learn (allow and record).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Deny anything not allowlisted or approved.
    Strict,
    /// Allow anything not blocklisted, and record it.
    Learn,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.to_ascii_lowercase().as_str() {
            "strict" => Ok(Mode::Strict),
            "learn" => Ok(Mode::Learn),
            other => Err(format!("egress mode {other:?}: expected strict or learn")),
        }
    }
}

/// Why a destination is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", content = "detail")]
pub enum Refusal {
    /// Not a DNS host name (IP literal, userinfo, bad characters, …).
    InvalidHost(String),
    /// On the blocklist.
    Blocklisted(String),
    /// Not allowlisted or approved (Strict mode).
    NotAllowed(String),
    /// The name resolved only to addresses the router does not connect to.
    ForbiddenAddress(String),
    /// The name did not resolve.
    ResolveFailed(String),
}

impl Refusal {
    /// Stable label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::InvalidHost(_) => "InvalidHost",
            Refusal::Blocklisted(_) => "Blocklisted",
            Refusal::NotAllowed(_) => "NotAllowed",
            Refusal::ForbiddenAddress(_) => "ForbiddenAddress",
            Refusal::ResolveFailed(_) => "ResolveFailed",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::InvalidHost(d)
            | Refusal::Blocklisted(d)
            | Refusal::NotAllowed(d)
            | Refusal::ForbiddenAddress(d)
            | Refusal::ResolveFailed(d) => write!(f, "{}: {d}", self.label()),
        }
    }
}

/// What allowed a destination.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Allowed {
    /// The static allowlist entry `host:port`.
    Allowlist(String),
    /// An approval, by name.
    Approval(String),
    /// Learn mode.
    Learned,
}

/// True when `s` parses as an IPv4 address in any form `inet_aton` accepts (dotted with 1–4
/// parts, each decimal, octal `0…` or hex `0x…`), which many resolvers and HTTP clients honour.
fn is_inet_aton_literal(s: &str) -> bool {
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

/// The normal form of a host name, or why it is not one.
pub fn normalize_host(raw: &str) -> Result<String, Refusal> {
    let bad = |why: &str| Refusal::InvalidHost(format!("{raw:?}: {why}"));
    if raw.is_empty() || raw.len() > 253 + 1 {
        return Err(bad("empty or too long"));
    }
    if raw.contains('@') {
        return Err(bad("userinfo is not allowed"));
    }
    if raw.starts_with('[') || raw.contains(':') {
        return Err(bad("IP literals and ports inside the host are not allowed"));
    }
    let trimmed = raw.strip_suffix('.').unwrap_or(raw);
    if trimmed.parse::<IpAddr>().is_ok() || is_inet_aton_literal(trimmed) {
        return Err(bad("IP literals are not allowed; use a host name"));
    }
    let ascii = idna::domain_to_ascii_strict(trimmed).map_err(|_| bad("not a valid host name"))?;
    let ascii = ascii.to_ascii_lowercase();
    if ascii.is_empty()
        || ascii.len() > 253
        || !ascii.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
    {
        return Err(bad("not a valid host name"));
    }
    if is_inet_aton_literal(&ascii) {
        return Err(bad("IP literals are not allowed; use a host name"));
    }
    Ok(ascii)
}

/// `a.b.c`, `b.c`, `c`: the names whose entries cover `host`.
fn suffixes(host: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(host), |h| h.split_once('.').map(|(_, rest)| rest))
}

/// True when `host` is `entry` or a subdomain of it (both normalised).
fn covers(entry: &str, host: &str) -> bool {
    host == entry
        || host
            .strip_suffix(entry)
            .is_some_and(|rest| rest.ends_with('.'))
}

/// A time-limited approval overlay (an `approval-*.json` file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// Approval name.
    pub name: String,
    /// Hosts and ports it allows.
    pub hosts: Vec<(String, u16)>,
    /// From (Unix seconds).
    pub effective_at: i64,
    /// Until (Unix seconds, exclusive).
    pub expires_at: i64,
}

#[derive(Deserialize)]
struct EndpointFile {
    host: String,
    port: u16,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AllowlistFile {
    #[serde(default)]
    endpoints: Vec<EndpointFile>,
}

/// Reads JSON as `T`, saying whether the JSON or its shape is wrong.
fn read_json<T: serde::de::DeserializeOwned>(name: &str, body: &[u8]) -> Result<T, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("{name}: invalid JSON: {e}"))?;
    serde_json::from_value(v).map_err(|e| format!("{name}: unexpected content: {e}"))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalFile {
    approval_name: String,
    hosts: Vec<EndpointFile>,
    effective_at: String,
    expires_at: String,
}

/// Checks an `allowlist.json` body as the proxy will read it.
pub fn check_allowlist_file(body: &[u8]) -> Result<(), String> {
    EgressPolicy::from_files(Mode::Strict, Some(body), &[], Vec::new(), Vec::new()).map(drop)
}

/// Checks an `approval-*.json` body as the proxy will read it.
pub fn check_approval_file(name: &str, body: &[u8]) -> Result<(), String> {
    EgressPolicy::from_files(
        Mode::Strict,
        None,
        &[(name.to_string(), body.to_vec())],
        Vec::new(),
        Vec::new(),
    )
    .map(drop)
}

/// Parses `YYYY-MM-DDTHH:MM:SSZ` to Unix seconds.
pub fn parse_rfc3339_utc(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d, hh, mm, ss) = (
        n(0..4)?,
        n(5..7)?,
        n(8..10)?,
        n(11..13)?,
        n(14..16)?,
        n(17..19)?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// The egress policy of one sandbox.
#[derive(Debug)]
pub struct EgressPolicy {
    /// Strict or Learn.
    pub mode: Mode,
    /// Host → allowed ports (a lookup per label suffix of the asked host: O(labels), not
    /// O(entries)).
    allow: HashMap<String, BTreeSet<u16>>,
    approvals: Vec<Approval>,
    blocklist: HashSet<String>,
    private_allowed: Vec<ipnet::IpNet>,
    learned: Mutex<BTreeSet<(String, u16)>>,
}

impl EgressPolicy {
    /// A policy from already-normalised parts.
    pub fn new(
        mode: Mode,
        allow: impl IntoIterator<Item = (String, u16)>,
        approvals: Vec<Approval>,
        blocklist: Vec<String>,
        private_allowed: Vec<ipnet::IpNet>,
    ) -> EgressPolicy {
        EgressPolicy {
            mode,
            allow: allow.into_iter().fold(HashMap::new(), |mut m, (h, p)| {
                m.entry(h).or_insert_with(BTreeSet::new).insert(p);
                m
            }),
            approvals,
            blocklist: blocklist.into_iter().collect(),
            private_allowed,
            learned: Mutex::default(),
        }
    }

    /// Builds the policy from the mounted files: `allowlist.json` and `approval-*.json` bodies.
    /// Entries that are not valid host names are refused (the whole file, with the reason).
    pub fn from_files(
        mode: Mode,
        allowlist: Option<&[u8]>,
        approvals: &[(String, Vec<u8>)],
        blocklist: Vec<String>,
        private_allowed: Vec<ipnet::IpNet>,
    ) -> Result<EgressPolicy, String> {
        let mut allow = Vec::new();
        if let Some(body) = allowlist {
            let f: AllowlistFile = read_json("allowlist.json", body)?;
            for e in f.endpoints {
                let h = normalize_host(&e.host).map_err(|r| format!("allowlist.json: {r}"))?;
                allow.push((h, e.port));
            }
        }
        let mut parsed = Vec::new();
        for (name, body) in approvals {
            let f: ApprovalFile = read_json(name, body)?;
            let mut hosts = Vec::new();
            for e in f.hosts {
                hosts.push((
                    normalize_host(&e.host).map_err(|r| format!("{name}: {r}"))?,
                    e.port,
                ));
            }
            let at = |s: &str| parse_rfc3339_utc(s).ok_or(format!("{name}: time {s:?}"));
            parsed.push(Approval {
                name: f.approval_name,
                hosts,
                effective_at: at(&f.effective_at)?,
                expires_at: at(&f.expires_at)?,
            });
        }
        let blocklist = blocklist
            .iter()
            .map(|h| normalize_host(h).map_err(|r| format!("blocklist: {r}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EgressPolicy::new(
            mode,
            allow,
            parsed,
            blocklist,
            private_allowed,
        ))
    }

    /// Decides a destination at `now` (Unix seconds). `host` is as the client wrote it.
    pub fn decide(&self, host: &str, port: u16, now: i64) -> Result<(String, Allowed), Refusal> {
        let h = normalize_host(host)?;
        if let Some(b) = suffixes(&h).find(|s| self.blocklist.contains(*s)) {
            return Err(Refusal::Blocklisted(format!("{h} (blocklist entry {b})")));
        }
        if let Some(e) =
            suffixes(&h).find(|s| self.allow.get(*s).is_some_and(|ps| ps.contains(&port)))
        {
            return Ok((h.clone(), Allowed::Allowlist(format!("{e}:{port}"))));
        }
        if let Some(a) = self.approvals.iter().find(|a| {
            a.effective_at <= now
                && now < a.expires_at
                && a.hosts.iter().any(|(e, p)| *p == port && covers(e, &h))
        }) {
            return Ok((h, Allowed::Approval(a.name.clone())));
        }
        match self.mode {
            Mode::Strict => Err(Refusal::NotAllowed(format!(
                "{h}:{port} is not in the allowlist or an unexpired approval"
            ))),
            Mode::Learn => {
                self.learned
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert((h.clone(), port));
                Ok((h, Allowed::Learned))
            }
        }
    }

    /// Carries the hosts an earlier policy learned over (after a reload).
    pub fn with_learned(self, learned: Vec<(String, u16)>) -> EgressPolicy {
        self.learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(learned);
        self
    }

    /// The hosts Learn mode allowed so far.
    pub fn learned(&self) -> Vec<(String, u16)> {
        self.learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Checks one resolved address.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.private_allowed.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match forbidden_kind(ip) {
            None => Ok(()),
            Some(kind) => Err(Refusal::ForbiddenAddress(format!("{ip} is {kind}"))),
        }
    }
}

/// What kind of address the router never connects to by default, if `ip` is one.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return forbidden_v4(v4).map(|_| "an IPv4-mapped or -translated internal address");
            }
            let s = v6.segments();
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("a unique local (private) address")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("a documentation address")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("the cloud metadata address")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`)
/// or NAT64 (`64:ff9b::a.b.c.d`) IPv6 address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let tail = Ipv4Addr::new(
        (s[6] >> 8) as u8,
        (s[6] & 0xff) as u8,
        (s[7] >> 8) as u8,
        (s[7] & 0xff) as u8,
    );
    let mapped = s[..5].iter().all(|&x| x == 0) && s[5] == 0xffff;
    let compatible = s[..6].iter().all(|&x| x == 0) && !v6.is_loopback() && !v6.is_unspecified();
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0);
    (mapped || compatible || nat64).then_some(tail)
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("the cloud metadata address")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_private() {
        Some("a private (RFC 1918) address")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("a shared (CGNAT) address")
    } else if o[0] == 0 {
        Some("in 0.0.0.0/8 (this network)")
    } else if ip.is_broadcast() || ip.is_multicast() || o[0] >= 240 {
        Some("broadcast, multicast or reserved")
    } else if ip.is_documentation() || (o[0] == 198 && (o[1] & 0xfe) == 18) {
        Some("a documentation or benchmarking address")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("IETF protocol assignments")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: Mode) -> EgressPolicy {
        EgressPolicy::new(
            mode,
            [
                ("api.example.com".to_string(), 443),
                ("git.example.com".to_string(), 22),
            ],
            vec![Approval {
                name: "temp".into(),
                hosts: vec![("pypi.org".into(), 443)],
                effective_at: 1_000,
                expires_at: 2_000,
            }],
            vec!["evil.example.com".into()],
            Vec::new(),
        )
    }

    #[test]
    fn names_are_compared_in_one_normal_form() {
        let p = policy(Mode::Strict);
        for h in [
            "api.example.com",
            "API.Example.COM",
            "api.example.com.",
            "sub.api.example.com",
        ] {
            assert!(p.decide(h, 443, 0).is_ok(), "{h}");
        }
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
    fn each_bypass_idea_is_refused() {
        let p = policy(Mode::Strict);
        let refused = |h: &str, port: u16| p.decide(h, port, 0).err();
        // IP literals in every spelling.
        for h in [
            "127.0.0.1",
            "127.1",
            "0x7f.1",
            "0x7F000001",
            "2130706433",
            "017700000001",
            "[::1]",
            "::1",
            "169.254.169.254",
            "0251.0376.0251.0376",
        ] {
            assert!(
                matches!(refused(h, 443), Some(Refusal::InvalidHost(_))),
                "{h}: {:?}",
                refused(h, 443)
            );
        }
        // Userinfo, ports in the name, odd characters.
        for h in [
            "api.example.com@evil.com",
            "evil.com@api.example.com",
            "api.example.com:443",
            "api.example.com/x",
            "api.example.com%2eevil.com",
            "api example.com",
            "",
            ".",
            "-a.example.com",
            "api.example.com\0.evil",
        ] {
            assert!(
                matches!(refused(h, 443), Some(Refusal::InvalidHost(_))),
                "{h:?}: {:?}",
                refused(h, 443)
            );
        }
        // Look-alikes and suffix tricks are other hosts.
        for h in [
            "api.example.com.evil.com",
            "apiexample.com",
            "xapi.example.com.evil",
            "example.com",
            "api.examp1e.com",
        ] {
            assert!(
                matches!(refused(h, 443), Some(Refusal::NotAllowed(_))),
                "{h}"
            );
        }
        // Ports must match exactly.
        assert!(matches!(
            refused("api.example.com", 80),
            Some(Refusal::NotAllowed(_))
        ));
        assert!(matches!(
            refused("git.example.com", 443),
            Some(Refusal::NotAllowed(_))
        ));
        assert!(p.decide("git.example.com", 22, 0).is_ok());
    }

    #[test]
    fn approvals_expire_by_the_router_clock_and_the_blocklist_always_wins() {
        let p = policy(Mode::Strict);
        assert!(p.decide("pypi.org", 443, 999).is_err(), "not yet effective");
        assert_eq!(
            p.decide("pypi.org", 443, 1_000).map(|x| x.1),
            Ok(Allowed::Approval("temp".into()))
        );
        assert!(p.decide("pypi.org", 443, 1_999).is_ok());
        assert!(p.decide("pypi.org", 443, 2_000).is_err(), "expired");
        let learn = EgressPolicy::new(
            Mode::Learn,
            [("evil.example.com".to_string(), 443)],
            Vec::new(),
            vec!["evil.example.com".into()],
            Vec::new(),
        );
        assert!(matches!(
            learn.decide("x.evil.example.com", 443, 0),
            Err(Refusal::Blocklisted(_))
        ));
        assert!(
            matches!(
                learn.decide("evil.example.com", 443, 0),
                Err(Refusal::Blocklisted(_))
            ),
            "the blocklist beats the allowlist"
        );
        assert_eq!(
            learn.decide("new.example.org", 8443, 0).map(|x| x.1),
            Ok(Allowed::Learned)
        );
        assert_eq!(learn.learned(), vec![("new.example.org".to_string(), 8443)]);
        assert!(
            learn.decide("10.0.0.1", 443, 0).is_err(),
            "learn mode still refuses literals"
        );
    }

    #[test]
    fn internal_addresses_are_refused_unless_a_cidr_allows_them() {
        let p = policy(Mode::Strict);
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
            "fd00:ec2::254",
            "ff02::1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(p.check_address(ip).is_err(), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "172.32.0.1",
            "100.128.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(p.check_address(ip).is_ok(), "{ip}");
        }
        let lo = EgressPolicy::new(
            Mode::Strict,
            Vec::new(),
            Vec::new(),
            Vec::new(),
            vec!["127.0.0.0/8".parse().expect("cidr")],
        );
        assert!(lo.check_address("127.0.0.1".parse().expect("ip")).is_ok());
        assert!(lo.check_address("10.0.0.1".parse().expect("ip")).is_err());
    }

    #[test]
    fn files_from_the_renderer_load() {
        let allow = br#"{"endpoints":[{"host":"api.example.com","port":443}],"schemaVersion":1}"#;
        let approval = br#"{"approvalName":"a1","effectiveAt":"2026-11-24T00:00:00Z","expiresAt":"2026-11-24T01:00:00Z","hosts":[{"host":"pypi.org","port":443}],"reason":"r","sandbox":"s","schemaVersion":1}"#;
        let p = EgressPolicy::from_files(
            Mode::Strict,
            Some(allow),
            &[("approval-a1.json".into(), approval.to_vec())],
            Vec::new(),
            Vec::new(),
        )
        .expect("loads");
        let t = parse_rfc3339_utc("2026-11-24T00:30:00Z").expect("time");
        assert!(p.decide("pypi.org", 443, t).is_ok());
        assert!(p.decide("pypi.org", 443, t + 3600).is_err());
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_utc("2000-03-01T00:00:00Z"), Some(951_868_800));
        let bad = br#"{"endpoints":[{"host":"10.0.0.1","port":443}]}"#;
        assert!(
            EgressPolicy::from_files(Mode::Strict, Some(bad), &[], Vec::new(), Vec::new()).is_err()
        );
    }
}
