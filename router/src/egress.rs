//! Egress decisions: may the agent reach `host:port`, and may the router connect to the
//! address that name resolved to?
//!
//! Names are compared in the contract's one normal form ([`kars_contract::host`], the rules
//! the renderer compiled the allowlist with): ASCII lowercase, no trailing dot, internationalised
//! names in punycode; IP literals in every spelling `inet_aton` accepts, userinfo, ports inside
//! the name and anything that is not a DNS name are refused before any lookup. An allowlisted
//! host also allows its subdomains (as the renderer documents); the port must match exactly.
//!
//! Order: the blocklist always wins; then the static allowlist, then unexpired approvals
//! (checked against the router's clock at every decision, so an expiry takes effect without a
//! restart); then the mode: `Strict` denies, `Learn` allows and records the host (at most
//! [`MAX_LEARNED`] distinct hosts; past that, new hosts are refused).
//!
//! Addresses: after the one lookup, loopback, private (RFC 1918, CGNAT, ULA), link-local
//! (including the cloud metadata address 169.254.169.254), unspecified, multicast, broadcast,
//! documentation and IPv4-mapped/-translated forms of those are refused unless a configured
//! CIDR allows them; the proxy then connects to exactly the address it checked.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use kars_contract::host::{covers, normalize_host, suffixes};
use kars_contract::policy::ALLOWLIST_FILE;
use kars_contract::time::parse_rfc3339;
use serde::{Deserialize, Serialize};

use crate::policy_file::PolicyFileError;

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
    type Err = crate::config::SettingError;
    fn from_str(s: &str) -> Result<Mode, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "strict" => Ok(Mode::Strict),
            "learn" => Ok(Mode::Learn),
            other => Err(crate::config::SettingError::EgressMode(other.to_string())),
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
    /// Learn mode has recorded [`MAX_LEARNED`] hosts; new ones are refused.
    LearnLimitReached(String),
    /// The name resolved only to addresses the router does not connect to.
    ForbiddenAddress(String),
    /// The name did not resolve.
    ResolveFailed(String),
}

impl Refusal {
    /// Stable reason word (metrics label, `X-Kars-Egress-Refusal`, audit records).
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::InvalidHost(_) => "InvalidHost",
            Refusal::Blocklisted(_) => "Blocklisted",
            Refusal::NotAllowed(_) => "NotAllowed",
            Refusal::LearnLimitReached(_) => "LearnLimitReached",
            Refusal::ForbiddenAddress(_) => "ForbiddenAddress",
            Refusal::ResolveFailed(_) => "ResolveFailed",
        }
    }

    /// What is wrong, without the reason word.
    pub fn detail(&self) -> &str {
        match self {
            Refusal::InvalidHost(d)
            | Refusal::Blocklisted(d)
            | Refusal::NotAllowed(d)
            | Refusal::LearnLimitReached(d)
            | Refusal::ForbiddenAddress(d)
            | Refusal::ResolveFailed(d) => d,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason(), self.detail())
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

impl Allowed {
    /// Stable reason word of an allowed decision (metrics label, audit records).
    pub fn reason(&self) -> &'static str {
        match self {
            Allowed::Allowlist(_) => "allowlist",
            Allowed::Approval(_) => "approval",
            Allowed::Learned => "learn",
        }
    }
}

impl std::fmt::Display for Allowed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allowed::Allowlist(e) => write!(f, "allowlist {e}"),
            Allowed::Approval(a) => write!(f, "approval {a}"),
            Allowed::Learned => f.write_str("learn mode"),
        }
    }
}

/// The normal form of a host as an agent asked for it, or the refusal.
pub fn checked_host(raw: &str) -> Result<String, Refusal> {
    normalize_host(raw).map_err(|e| Refusal::InvalidHost(e.to_string()))
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

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApprovalFile {
    approval_name: String,
    hosts: Vec<EndpointFile>,
    effective_at: String,
    expires_at: String,
}

fn endpoints(
    file: &str,
    endpoints: Vec<EndpointFile>,
) -> Result<Vec<(String, u16)>, PolicyFileError> {
    endpoints
        .into_iter()
        .map(|e| {
            normalize_host(&e.host)
                .map(|h| (h, e.port))
                .map_err(|e| PolicyFileError::content(file, e))
        })
        .collect()
}

/// Compiles an `allowlist.json` body: `host:port` entries in normal form. An entry that is
/// not a valid host name refuses the whole file.
pub fn parse_allowlist(body: &[u8]) -> Result<Vec<(String, u16)>, PolicyFileError> {
    let f: AllowlistFile = PolicyFileError::json(ALLOWLIST_FILE, body)?;
    endpoints(ALLOWLIST_FILE, f.endpoints)
}

/// Compiles an `approval-*.json` body named `name`.
pub fn parse_approval(name: &str, body: &[u8]) -> Result<Approval, PolicyFileError> {
    let f: ApprovalFile = PolicyFileError::json(name, body)?;
    let at = |s: &str| {
        parse_rfc3339(s)
            .ok_or_else(|| PolicyFileError::content(name, format!("time {s:?} is not RFC 3339")))
    };
    Ok(Approval {
        name: f.approval_name,
        hosts: endpoints(name, f.hosts)?,
        effective_at: at(&f.effective_at)?,
        expires_at: at(&f.expires_at)?,
    })
}

/// Most distinct `host:port` pairs Learn mode records.
pub const MAX_LEARNED: usize = 4096;

/// The hosts Learn mode allowed, shared by every policy a reload builds (so a reload keeps
/// them) and bounded by a cap.
#[derive(Debug)]
pub struct Learned {
    hosts: Mutex<BTreeSet<(String, u16)>>,
    blocked: Mutex<BlockedSet>,
    cap: usize,
}

/// Refused destinations: `host:port` → how many times, bounded like the learned set.
#[derive(Debug, Default)]
struct BlockedSet {
    counts: std::collections::BTreeMap<(String, u16), u64>,
    /// Refusals of new destinations not kept because the set was full.
    dropped: u64,
}

/// One refused destination and how often it was refused.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BlockedEntry {
    /// The host (normalised).
    pub host: String,
    /// The port.
    pub port: u16,
    /// Refusals since the router started.
    pub count: u64,
}

impl Default for Learned {
    fn default() -> Self {
        Learned::with_cap(MAX_LEARNED)
    }
}

impl Learned {
    /// A set holding at most `cap` hosts.
    pub fn with_cap(cap: usize) -> Self {
        Learned {
            hosts: Mutex::default(),
            blocked: Mutex::default(),
            cap,
        }
    }

    /// Records `host:port`; false when it is new and the set is full.
    pub fn record(&self, host: &str, port: u16) -> bool {
        let mut set = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (host.to_string(), port);
        if set.contains(&key) {
            return true;
        }
        if set.len() >= self.cap {
            return false;
        }
        set.insert(key);
        true
    }

    /// Every recorded host, sorted.
    pub fn list(&self) -> Vec<(String, u16)> {
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Forgets every recorded host; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut set = self
            .hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = set.len();
        set.clear();
        n
    }

    /// Records a refusal of `host:port` (kept in Strict and Learn mode alike).
    pub fn record_blocked(&self, host: &str, port: u16) {
        let mut b = self
            .blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (host.to_string(), port);
        if let Some(n) = b.counts.get_mut(&key) {
            *n = n.saturating_add(1);
        } else if b.counts.len() >= self.cap {
            b.dropped = b.dropped.saturating_add(1);
        } else {
            b.counts.insert(key, 1);
        }
    }

    /// Refused destinations, most refused first (then by name), at most `limit`; and how many
    /// refusals of new destinations were not kept.
    pub fn blocked(&self, limit: usize) -> (Vec<BlockedEntry>, u64) {
        let b = self
            .blocked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<BlockedEntry> = b
            .counts
            .iter()
            .map(|((host, port), count)| BlockedEntry {
                host: host.clone(),
                port: *port,
                count: *count,
            })
            .collect();
        v.sort_by(|x, y| {
            y.count
                .cmp(&x.count)
                .then_with(|| (&x.host, x.port).cmp(&(&y.host, y.port)))
        });
        v.truncate(limit);
        (v, b.dropped)
    }

    /// The cap.
    pub fn cap(&self) -> usize {
        self.cap
    }
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
    learned: Arc<Learned>,
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
            learned: Arc::default(),
        }
    }

    /// Builds the policy from the mounted files: `allowlist.json` and `approval-*.json` bodies.
    pub fn from_files(
        mode: Mode,
        allowlist: Option<&[u8]>,
        approvals: &[(String, Vec<u8>)],
        blocklist: Vec<String>,
        private_allowed: Vec<ipnet::IpNet>,
    ) -> Result<EgressPolicy, PolicyFileError> {
        let allow = allowlist
            .map(parse_allowlist)
            .transpose()?
            .unwrap_or_default();
        let approvals = approvals
            .iter()
            .map(|(name, body)| parse_approval(name, body))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EgressPolicy::new(
            mode,
            allow,
            approvals,
            blocklist,
            private_allowed,
        ))
    }

    /// The same policy recording Learn-mode hosts into `learned` (shared across reloads).
    pub fn with_learned(mut self, learned: Arc<Learned>) -> EgressPolicy {
        self.learned = learned;
        self
    }

    /// Decides a destination at `now` (Unix seconds). `host` is as the client wrote it.
    pub fn decide(&self, host: &str, port: u16, now: i64) -> Result<(String, Allowed), Refusal> {
        let h = checked_host(host)?;
        let refused_host = |r: Refusal, h: &str| {
            self.learned.record_blocked(h, port);
            r
        };
        self.decide_normalised(h, port, now)
            .map_err(|(r, h)| refused_host(r, &h))
    }

    /// The decision for the normalised host `h`; a refusal gives `h` back (to be counted).
    fn decide_normalised(
        &self,
        h: String,
        port: u16,
        now: i64,
    ) -> Result<(String, Allowed), (Refusal, String)> {
        let blocked = suffixes(&h)
            .find(|s| self.blocklist.contains(*s))
            .map(str::to_string);
        if let Some(b) = blocked {
            let r = Refusal::Blocklisted(format!("{h} (blocklist entry {b})"));
            return Err((r, h));
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
            Mode::Strict => {
                let r = Refusal::NotAllowed(format!(
                    "{h}:{port} is not in the allowlist or an unexpired approval"
                ));
                Err((r, h))
            }
            Mode::Learn if self.learned.record(&h, port) => Ok((h, Allowed::Learned)),
            Mode::Learn => {
                let r = Refusal::LearnLimitReached(format!(
                    "{h}:{port}: learn mode has recorded {} hosts, its limit; approve what it learned and switch to strict",
                    self.learned.cap()
                ));
                Err((r, h))
            }
        }
    }

    /// The hosts Learn mode allowed so far.
    pub fn learned(&self) -> Vec<(String, u16)> {
        self.learned.list()
    }

    /// The enforced allowlist at `now`: the baseline entries, then each unexpired approval's
    /// hosts with its name and expiry (sorted).
    pub fn effective(&self, now: i64) -> serde_json::Value {
        let mut baseline: Vec<(String, u16)> = self
            .allow
            .iter()
            .flat_map(|(h, ports)| ports.iter().map(move |p| (h.clone(), *p)))
            .collect();
        baseline.sort();
        let approvals: Vec<serde_json::Value> = self
            .approvals
            .iter()
            .filter(|a| a.effective_at <= now && now < a.expires_at)
            .map(|a| {
                serde_json::json!({
                    "name": a.name,
                    "expiresAt": kars_contract::time::format_rfc3339(a.expires_at),
                    "hosts": a.hosts.iter().map(|(h, p)| serde_json::json!({"host": h, "port": p})).collect::<Vec<_>>(),
                })
            })
            .collect();
        serde_json::json!({
            "mode": self.mode,
            "endpoints": baseline.iter().map(|(h, p)| serde_json::json!({"host": h, "port": p})).collect::<Vec<_>>(),
            "approvals": approvals,
        })
    }

    /// Forgets what Learn mode recorded (the refusal counts stay).
    pub fn clear_learned(&self) -> usize {
        self.learned.clear()
    }

    /// The destinations refused so far (see [`Learned::blocked`]).
    pub fn blocked(&self, limit: usize) -> (Vec<BlockedEntry>, u64) {
        self.learned.blocked(limit)
    }

    /// Checks one resolved address.
    pub fn check_address(&self, ip: IpAddr) -> Result<(), Refusal> {
        // The metadata address hands out the node's cloud credentials: no CIDR opens it.
        if is_metadata(ip) {
            return Err(Refusal::ForbiddenAddress(format!(
                "{ip} is the cloud metadata address (never allowed, whatever CIDRs are)"
            )));
        }
        if self.private_allowed.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        match forbidden_kind(ip) {
            None => Ok(()),
            Some(kind) => Err(Refusal::ForbiddenAddress(format!("{ip} is {kind}"))),
        }
    }
}

/// Whether `ip` is a cloud metadata address (169.254.169.254, AWS's fd00:ec2::254, or either
/// embedded in an IPv6 address).
pub fn is_metadata(ip: IpAddr) -> bool {
    const V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
    match ip {
        IpAddr::V4(v4) => v4 == V4,
        IpAddr::V6(v6) => {
            v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) || embedded_v4(v6) == Some(V4)
        }
    }
}

/// What kind of address the router never connects to by default, if `ip` is one.
pub fn forbidden_kind(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if is_local_use_nat64(v6) {
                return Some("a local-use NAT64 address (64:ff9b:1::/48)");
            }
            if let Some(v4) = embedded_v4(v6) {
                return forbidden_v4(v4)
                    .map(|_| "an IPv4-mapped, -translated or 6to4 form of an internal address");
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

/// The IPv4 address inside an IPv4-mapped (`::ffff:a.b.c.d`), IPv4-translated
/// (`::ffff:0:a.b.c.d`, RFC 6145), IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`),
/// local-use NAT64 with a /96 prefix (`64:ff9b:1::a.b.c.d`, RFC 8215) or 6to4
/// (`2002:aabb:ccdd::`, RFC 3056) IPv6 address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        Ipv4Addr::new(
            (hi >> 8) as u8,
            (hi & 0xff) as u8,
            (lo >> 8) as u8,
            (lo & 0xff) as u8,
        )
    };
    let mapped = s[..5].iter().all(|&x| x == 0) && s[5] == 0xffff;
    let translated = s[..4].iter().all(|&x| x == 0) && s[4] == 0xffff && s[5] == 0;
    let compatible = s[..6].iter().all(|&x| x == 0) && !v6.is_loopback() && !v6.is_unspecified();
    let nat64 = s[0] == 0x64 && s[1] == 0xff9b && s[2..6].iter().all(|&x| x == 0);
    let local_nat64 =
        s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 && s[3..6].iter().all(|&x| x == 0);
    if s[0] == 0x2002 {
        return Some(v4(s[1], s[2]));
    }
    (mapped || translated || compatible || nat64 || local_nat64).then_some(v4(s[6], s[7]))
}

/// True for the local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215): it translates to networks
/// of the operator's choosing, so it is internal whatever IPv4 address it carries.
fn is_local_use_nat64(v6: Ipv6Addr) -> bool {
    let s = v6.segments();
    s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1
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
            checked_host("bücher.example").as_deref(),
            Ok("xn--bcher-kva.example")
        );
        assert_eq!(
            checked_host("BÜCHER.example."),
            checked_host("xn--bcher-kva.example")
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
            // IPv4-translated (RFC 6145), 6to4 of internal addresses, local-use NAT64.
            "::ffff:0:127.0.0.1",
            "::ffff:0:10.0.0.1",
            "::ffff:0:a9fe:a9fe",
            "2002:7f00:1::",
            "2002:a00:1::1",
            "2002:a9fe:a9fe::",
            "64:ff9b:1::8.8.8.8",
            "64:ff9b:1:abcd::1",
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
            // The same families carrying public addresses are not internal.
            "::ffff:0:8.8.8.8",
            "2002:808:808::",
            "64:ff9b::8.8.8.8",
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
    fn no_cidr_opens_the_metadata_address() {
        let wide = EgressPolicy::new(
            Mode::Learn,
            Vec::new(),
            Vec::new(),
            Vec::new(),
            vec![
                "0.0.0.0/0".parse().expect("cidr"),
                "::/0".parse().expect("cidr"),
                "169.254.0.0/16".parse().expect("cidr"),
            ],
        );
        for ip in [
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::169.254.169.254",
            "::ffff:0:169.254.169.254",
            "2002:a9fe:a9fe::1",
            "64:ff9b:1::a9fe:a9fe",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            let err = wide.check_address(ip).expect_err("metadata refused");
            assert!(err.to_string().contains("metadata"), "{ip}: {err}");
        }
        assert!(
            wide.check_address("169.254.1.1".parse().expect("ip"))
                .is_ok()
        );
        assert!(
            wide.check_address("10.250.0.1".parse().expect("ip"))
                .is_ok()
        );
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
        let t = parse_rfc3339("2026-11-24T00:30:00Z").expect("time");
        assert!(p.decide("pypi.org", 443, t).is_ok());
        assert!(p.decide("pypi.org", 443, t + 3600).is_err());
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2000-03-01T00:00:00Z"), Some(951_868_800));
        let bad = br#"{"endpoints":[{"host":"10.0.0.1","port":443}]}"#;
        assert!(
            EgressPolicy::from_files(Mode::Strict, Some(bad), &[], Vec::new(), Vec::new()).is_err()
        );
    }

    #[test]
    fn learn_mode_is_bounded() {
        let learn = EgressPolicy::new(Mode::Learn, Vec::new(), Vec::new(), Vec::new(), Vec::new())
            .with_learned(Arc::new(Learned::with_cap(3)));
        for i in 0..3 {
            assert!(learn.decide(&format!("h{i}.example"), 443, 0).is_ok());
        }
        assert!(
            learn.decide("h0.example", 443, 0).is_ok(),
            "known hosts still pass"
        );
        assert!(matches!(
            learn.decide("h3.example", 443, 0),
            Err(Refusal::LearnLimitReached(_))
        ));
        assert_eq!(learn.learned().len(), 3);
    }

    #[test]
    fn refusals_are_counted_and_bounded() {
        let strict = EgressPolicy::new(
            Mode::Strict,
            vec![("ok.example".to_string(), 443)],
            Vec::new(),
            vec!["bad.example".to_string()],
            Vec::new(),
        )
        .with_learned(Arc::new(Learned::with_cap(2)));
        assert!(strict.decide("ok.example", 443, 0).is_ok());
        for _ in 0..3 {
            assert!(strict.decide("No.Example", 443, 0).is_err());
        }
        assert!(strict.decide("x.bad.example", 80, 0).is_err());
        assert!(strict.decide("third.example", 443, 0).is_err());
        let (blocked, dropped) = strict.blocked(10);
        assert_eq!(
            blocked,
            vec![
                BlockedEntry {
                    host: "no.example".into(),
                    port: 443,
                    count: 3
                },
                BlockedEntry {
                    host: "x.bad.example".into(),
                    port: 80,
                    count: 1
                },
            ]
        );
        assert_eq!(
            dropped, 1,
            "the third distinct refusal is counted, not kept"
        );
        assert_eq!(strict.blocked(1).0.len(), 1);
        assert!(strict.learned().is_empty(), "refusals are not learned");
    }
}
