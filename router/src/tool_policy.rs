//! The ToolPolicy's own fields, enforced on the tool calls it applies to (`profile.json` beside
//! the AGT profile): `rateLimit`, `commerce` caps and `approval`. Upstream's router ignores this
//! file; here each field has its effect, after the AGT profile has allowed the action:
//!
//! 1. `appliesTo.tool`: the policy governs `tool:<name>:…` actions of that tool (`*` or unset:
//!    every tool). Other actions pass untouched.
//! 2. `rateLimit`: a token bucket per ToolPolicy holding `burst` calls (default `rps`), refilled
//!    with `rps` calls per second; with `window`, also at most `rps × window` calls in any
//!    sliding window of that length (counted per second, window at most 24 h). Over either:
//!    rate limited, with the seconds until the next call may go.
//! 3. `commerce`: every governed call is a transfer. Its amount is `context.amount` or the first
//!    `CCC 123.45` in the action; its counterparty `context.counterparty` or a word of the
//!    action that the allowlist lists. Denied without an amount, to a counterparty not listed
//!    (an empty list denies all), over `perTransferCap`, or when the UTC day's or month's
//!    allowed transfers plus this one would pass `dailyCap`/`monthlyCap`; a cap in another
//!    currency than the amount denies (amounts are never converted).
//! 4. `approval`: `always`, or `aboveThreshold` (the default when commerce is set) with an amount
//!    over `threshold` (in another currency, or without a threshold: every amount), answers
//!    requires_approval; `never` (the default otherwise) does nothing.
//!
//! Allowed transfers are added to a ledger kept in a file (replaced atomically), so the caps
//! hold across restarts; a damaged ledger stops the router instead of resetting the spend.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::governance::Verdict;
use crate::policy_file::PolicyFileError;
pub use kars_contract::money::Money;

/// The first `CCC 123.45` in `text`.
fn amount_in(text: &str) -> Option<Money> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == ':' || c == ',')
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .find_map(|w| Money::parse(&format!("{} {}", w[0], w[1])).ok())
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSummary {
    #[serde(default)]
    applies_to: Option<RawAppliesTo>,
    #[serde(default)]
    approval: Option<RawApproval>,
    #[serde(default)]
    commerce: Option<RawCommerce>,
    #[serde(default)]
    rate_limit: Option<RawRateLimit>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAppliesTo {
    #[serde(default)]
    tool: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawApproval {
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    threshold: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCommerce {
    #[serde(default)]
    counterparty_allowlist: Vec<String>,
    #[serde(default)]
    daily_cap: Option<String>,
    #[serde(default)]
    monthly_cap: Option<String>,
    #[serde(default)]
    per_transfer_cap: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRateLimit {
    #[serde(default)]
    rps: Option<u32>,
    #[serde(default)]
    burst: Option<u32>,
    #[serde(default)]
    window: Option<String>,
}

/// When a governed call needs a human approval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ApprovalMode {
    Never,
    Always,
    AboveThreshold(Option<Money>),
}

/// A bucket's size and refill, and the sliding window.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Rate {
    capacity: f64,
    /// Calls added per second.
    per_second: f64,
    /// Window length in seconds and the calls it may hold.
    window: Option<(u64, u64)>,
}

/// Longest rate-limit window (the per-second counts it keeps are bounded by it).
pub const MAX_WINDOW_SECS: u64 = 24 * 3600;

/// One policy's limiter: the bucket, and the calls of the window per second.
#[derive(Debug)]
struct Limiter {
    tokens: f64,
    at: Instant,
    seconds: std::collections::VecDeque<(u64, u64)>,
    in_window: u64,
}

/// Commerce caps.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Caps {
    counterparties: Vec<String>,
    per_transfer: Option<Money>,
    daily: Option<Money>,
    monthly: Option<Money>,
}

/// One ToolPolicy's compiled `profile.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolRules {
    /// The ToolPolicy (the mount's file; keys its bucket).
    pub name: String,
    tool: Option<String>,
    rate: Option<Rate>,
    caps: Option<Caps>,
    approval: ApprovalMode,
}

impl ToolRules {
    /// Compiles a `profile.json` of ToolPolicy `name`. Anything it cannot enforce exactly (a
    /// malformed amount, an unknown approval mode, a zero rate) is an error: the last good
    /// policy stays in force and the status says why.
    pub fn parse(name: &str, body: &[u8]) -> Result<ToolRules, PolicyFileError> {
        let bad = |m: String| PolicyFileError::content(name, m);
        let raw: RawSummary = serde_json::from_slice(body)
            .map_err(|e| bad(format!("not a ToolPolicy summary: {e}")))?;
        let money = |field: &str, v: &Option<String>| -> Result<Option<Money>, PolicyFileError> {
            v.as_deref()
                .map(|s| Money::parse(s).map_err(|e| bad(format!("{field}: {e}"))))
                .transpose()
        };
        let caps = match &raw.commerce {
            None => None,
            Some(c) => Some(Caps {
                counterparties: c.counterparty_allowlist.clone(),
                per_transfer: money("commerce.perTransferCap", &c.per_transfer_cap)?,
                daily: money("commerce.dailyCap", &c.daily_cap)?,
                monthly: money("commerce.monthlyCap", &c.monthly_cap)?,
            }),
        };
        let approval = raw.approval.clone().unwrap_or_default();
        let threshold = money("approval.threshold", &approval.threshold)?;
        let approval = match approval.mode.as_deref() {
            // "auto" and "human" are the spellings of upstream's full-stack example.
            Some("never" | "auto") => ApprovalMode::Never,
            Some("always" | "human") => ApprovalMode::Always,
            Some("aboveThreshold") => ApprovalMode::AboveThreshold(threshold),
            None if caps.is_some() => ApprovalMode::AboveThreshold(threshold),
            None => ApprovalMode::Never,
            Some(other) => {
                return Err(bad(format!(
                    "approval.mode {other:?} is not never, always or aboveThreshold (or auto/human)"
                )));
            }
        };
        let rate = match &raw.rate_limit {
            None => None,
            Some(r) => {
                let rps = r
                    .rps
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad("rateLimit.rps must be a positive number".into()))?;
                let window = match r.window.as_deref() {
                    None => None,
                    Some(w) => {
                        let d = crate::governance::parse_window(w)
                            .map_err(|e| bad(format!("rateLimit.window: {e}")))?;
                        let secs = d.as_secs().max(1);
                        if secs > MAX_WINDOW_SECS {
                            return Err(bad(format!("rateLimit.window {w:?} is longer than 24h")));
                        }
                        Some((secs, secs.saturating_mul(u64::from(rps))))
                    }
                };
                Some(Rate {
                    capacity: f64::from(r.burst.filter(|b| *b > 0).unwrap_or(rps)),
                    per_second: f64::from(rps),
                    window,
                })
            }
        };
        let tool = raw
            .applies_to
            .and_then(|a| a.tool)
            .filter(|t| !t.is_empty() && t != "*");
        Ok(ToolRules {
            name: name.to_string(),
            tool,
            rate,
            caps,
            approval,
        })
    }

    /// True when these rules govern `action`.
    fn governs(&self, action: &str) -> bool {
        match crate::governance::tool_of(action) {
            None => false,
            Some(t) => self.tool.as_deref().is_none_or(|want| want == t),
        }
    }
}

/// What the ToolPolicy rules decided for one call that the AGT profile allowed.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolVerdict {
    /// Rate limited, denied, approval required, or allowed.
    pub verdict: Verdict,
    /// The rule, for the answer and the audit record (`ToolPolicy <name> …`).
    pub rule: String,
    /// For a rate-limited call: when the next one may go.
    pub retry_after: Option<Duration>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Ledger {
    /// `YYYY-MM-DD` of `day`.
    day: String,
    /// `YYYY-MM` of `month`.
    month: String,
    /// Policy → currency → minor units allowed today.
    day_spent: BTreeMap<String, BTreeMap<String, u64>>,
    /// Policy → currency → minor units allowed this month.
    month_spent: BTreeMap<String, BTreeMap<String, u64>>,
}

/// Why the commerce ledger could not be used.
#[derive(Debug, thiserror::Error)]
#[error("commerce ledger {path}: {message}")]
pub struct LedgerError {
    path: String,
    message: String,
}

/// The rate buckets (which survive policy reloads) and the commerce ledger (which survives
/// restarts) of the ToolPolicy rules.
#[derive(Debug)]
pub struct ToolState {
    buckets: Mutex<BTreeMap<String, Limiter>>,
    ledger: Mutex<Ledger>,
    path: Option<PathBuf>,
    /// The instant window seconds are counted from.
    epoch: Instant,
}

impl Default for ToolState {
    fn default() -> Self {
        ToolState {
            buckets: Mutex::default(),
            ledger: Mutex::default(),
            path: None,
            epoch: Instant::now(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ToolState {
    /// State whose ledger is kept in `path` (read now when it exists; a damaged one is an
    /// error, never a reset).
    pub fn open(path: &Path) -> Result<ToolState, LedgerError> {
        let err = |m: String| LedgerError {
            path: path.display().to_string(),
            message: m,
        };
        let ledger = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| err(format!("damaged ({e}); move it aside to reset the spend")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ledger::default(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(ToolState {
            buckets: Mutex::default(),
            ledger: Mutex::new(ledger),
            path: Some(path.to_path_buf()),
            epoch: Instant::now(),
        })
    }

    /// What `policy` allowed in `currency` today and this month (UTC, at unix time `now`).
    pub fn spent(&self, policy: &str, currency: &str, now: i64) -> (u64, u64) {
        let mut l = lock(&self.ledger);
        roll(&mut l, now);
        let get = |m: &BTreeMap<String, BTreeMap<String, u64>>| {
            m.get(policy)
                .and_then(|c| c.get(currency))
                .copied()
                .unwrap_or(0)
        };
        (get(&l.day_spent), get(&l.month_spent))
    }

    /// Forgets the buckets of policies no longer loaded.
    pub fn retain(&self, rules: &[ToolRules]) {
        lock(&self.buckets).retain(|name, _| rules.iter().any(|r| r.name == *name));
    }
}

/// Takes one call from `name`'s limiter, or says how long until one may go.
fn take(
    buckets: &Mutex<BTreeMap<String, Limiter>>,
    name: &str,
    rate: Rate,
    now: Instant,
    epoch: Instant,
) -> Option<Duration> {
    let mut buckets = lock(buckets);
    let l = buckets.entry(name.to_string()).or_insert(Limiter {
        tokens: rate.capacity,
        at: now,
        seconds: std::collections::VecDeque::new(),
        in_window: 0,
    });
    let elapsed = now.saturating_duration_since(l.at).as_secs_f64();
    l.tokens = (l.tokens + elapsed * rate.per_second).min(rate.capacity);
    l.at = now;
    if l.tokens < 1.0 {
        return Some(Duration::from_secs_f64((1.0 - l.tokens) / rate.per_second));
    }
    if let Some((secs, max)) = rate.window {
        let second = now.saturating_duration_since(epoch).as_secs();
        while let Some(&(s, n)) = l.seconds.front() {
            if s + secs > second {
                break;
            }
            l.in_window -= n;
            l.seconds.pop_front();
        }
        if l.in_window >= max {
            let oldest = l.seconds.front().map_or(second, |(s, _)| *s);
            let until = epoch + Duration::from_secs(oldest + secs);
            return Some(
                until
                    .saturating_duration_since(now)
                    .max(Duration::from_millis(1)),
            );
        }
        match l.seconds.back_mut() {
            Some((s, n)) if *s == second => *n += 1,
            _ => l.seconds.push_back((second, 1)),
        }
        l.in_window += 1;
    }
    l.tokens -= 1.0;
    None
}

fn roll(l: &mut Ledger, now: i64) {
    let today = kars_contract::time::format_rfc3339(now);
    let (day, month) = (today[..10].to_string(), today[..7].to_string());
    if l.day != day {
        l.day = day;
        l.day_spent.clear();
    }
    if l.month != month {
        l.month = month;
        l.month_spent.clear();
    }
}

fn persist(path: &Path, l: &Ledger) -> std::io::Result<()> {
    crate::state_file::replace(path, &serde_json::to_vec(l).map_err(std::io::Error::other)?)
}

/// Decides a call the AGT profile allowed: `None` when no ToolPolicy rule governs it (it stays
/// allowed), otherwise the verdict of the first rule set that refuses it or, when all allow it,
/// an allow naming them. An allowed transfer is added to the ledger before the answer (a ledger
/// that cannot be written refuses the transfer).
pub fn decide(
    rules: &[ToolRules],
    state: &ToolState,
    action: &str,
    context: &Value,
    now: Instant,
    unix_now: i64,
) -> Option<ToolVerdict> {
    let governing: Vec<&ToolRules> = rules.iter().filter(|r| r.governs(action)).collect();
    if governing.is_empty() {
        return None;
    }
    let deny = |rule: String| ToolVerdict {
        verdict: Verdict::Deny,
        rule,
        retry_after: None,
    };
    let mut transfers: Vec<(&ToolRules, Money)> = Vec::new();
    let mut approval: Option<String> = None;
    for r in &governing {
        let who = format!("ToolPolicy {}", r.name);
        if let Some(rate) = r.rate
            && let Some(wait) = take(&state.buckets, &r.name, rate, now, state.epoch)
        {
            return Some(ToolVerdict {
                verdict: Verdict::RateLimited,
                rule: format!("{who} rateLimit"),
                retry_after: Some(wait),
            });
        }
        let amount = context["amount"]
            .as_str()
            .map(|s| Money::parse(s).ok())
            .unwrap_or_else(|| amount_in(action));
        if let Some(caps) = &r.caps {
            let Some(amount) = amount else {
                return Some(deny(format!(
                    "{who} commerce: a transfer needs an amount (context.amount or \"USD 10.00\" in the action)"
                )));
            };
            let counterparty = context["counterparty"]
                .as_str()
                .map(str::to_string)
                .or_else(|| {
                    action
                        .split(|c: char| c.is_whitespace() || c == ',')
                        .flat_map(|w| w.rsplit(':').next())
                        .find(|w| caps.counterparties.iter().any(|c| c == w))
                        .map(str::to_string)
                });
            match counterparty {
                Some(c) if caps.counterparties.contains(&c) => {}
                Some(c) => {
                    return Some(deny(format!(
                        "{who} commerce: counterparty {c:?} is not in counterpartyAllowlist"
                    )));
                }
                None => {
                    return Some(deny(format!(
                        "{who} commerce: no counterparty of counterpartyAllowlist ({}) in the call",
                        if caps.counterparties.is_empty() {
                            "empty: every transfer is refused".to_string()
                        } else {
                            caps.counterparties.join(", ")
                        }
                    )));
                }
            }
            let (day, month) = state.spent(&r.name, amount.code(), unix_now);
            for (cap, used, what) in [
                (caps.per_transfer, 0, "perTransferCap"),
                (caps.daily, day, "dailyCap"),
                (caps.monthly, month, "monthlyCap"),
            ] {
                let Some(cap) = cap else { continue };
                if cap.currency != amount.currency {
                    return Some(deny(format!(
                        "{who} commerce: {amount} is not in the currency of {what} {cap} (amounts are not converted)"
                    )));
                }
                if used.saturating_add(amount.minor) > cap.minor {
                    let spent = Money {
                        currency: cap.currency,
                        minor: used,
                    };
                    return Some(deny(if used == 0 {
                        format!("{who} commerce: {amount} is over {what} {cap}")
                    } else {
                        format!(
                            "{who} commerce: {amount} on top of {spent} would pass {what} {cap}"
                        )
                    }));
                }
            }
            transfers.push((r, amount));
        }
        let needs = match r.approval {
            ApprovalMode::Never => None,
            ApprovalMode::Always => Some(format!("{who} approval: always")),
            ApprovalMode::AboveThreshold(t) => match (amount, t) {
                (Some(a), Some(t)) if a.currency == t.currency && a.minor <= t.minor => None,
                (Some(a), Some(t)) => {
                    Some(format!("{who} approval: {a} is above the threshold {t}"))
                }
                (Some(a), None) => {
                    Some(format!("{who} approval: {a} (no threshold: every amount)"))
                }
                (None, _) => Some(format!(
                    "{who} approval: aboveThreshold and no amount in the call"
                )),
            },
        };
        if approval.is_none() {
            approval = needs;
        }
    }
    if let Some(rule) = approval {
        return Some(ToolVerdict {
            verdict: Verdict::ApprovalRequired,
            rule,
            retry_after: None,
        });
    }
    if !transfers.is_empty() {
        let mut guard = lock(&state.ledger);
        let l = &mut *guard;
        roll(l, unix_now);
        let before = l.clone();
        for (r, amount) in &transfers {
            for m in [&mut l.day_spent, &mut l.month_spent] {
                let v = m
                    .entry(r.name.clone())
                    .or_default()
                    .entry(amount.code().to_string())
                    .or_insert(0);
                *v = v.saturating_add(amount.minor);
            }
        }
        if let Some(path) = &state.path
            && let Err(e) = persist(path, l)
        {
            *l = before;
            return Some(deny(format!(
                "commerce ledger {} cannot be written ({e}); the transfer is refused",
                path.display()
            )));
        }
    }
    Some(ToolVerdict {
        verdict: Verdict::Allow,
        rule: governing
            .iter()
            .map(|r| format!("ToolPolicy {}", r.name))
            .collect::<Vec<_>>()
            .join(", "),
        retry_after: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOON: i64 = 1_796_299_200; // 2026-12-03T12:00:00Z
    const DAY: i64 = 86_400;

    fn rules(summary: Value) -> Vec<ToolRules> {
        vec![ToolRules::parse("pay", summary.to_string().as_bytes()).expect("compiles")]
    }

    fn verdict(
        r: &[ToolRules],
        s: &ToolState,
        action: &str,
        ctx: Value,
        t: Instant,
        now: i64,
    ) -> (Verdict, String) {
        decide(r, s, action, &ctx, t, now)
            .map(|v| (v.verdict, v.rule))
            .unwrap_or((Verdict::Allow, "ungoverned".into()))
    }

    #[test]
    fn an_amount_is_found_in_the_action() {
        assert_eq!(
            amount_in("tool:pay:EUR 12.50 to acme.example").map(|m| m.to_string()),
            Some("EUR 12.50".into())
        );
    }

    #[test]
    fn burst_then_rate_limited_with_a_retry_time() {
        let r =
            rules(json!({"appliesTo": {"tool": "search"}, "rateLimit": {"rps": 2, "burst": 3}}));
        let s = ToolState::default();
        let t0 = s.epoch;
        for _ in 0..3 {
            assert_eq!(
                verdict(&r, &s, "tool:search:x", json!({}), t0, NOON).0,
                Verdict::Allow
            );
        }
        let v = decide(&r, &s, "tool:search:x", &json!({}), t0, NOON).expect("governed");
        assert_eq!(v.verdict, Verdict::RateLimited);
        // Two calls a second: the next one in half a second.
        assert_eq!(v.retry_after.map(|d| d.as_millis()), Some(500));
        let later = t0 + Duration::from_millis(501);
        assert_eq!(
            verdict(&r, &s, "tool:search:x", json!({}), later, NOON).0,
            Verdict::Allow
        );
        // Other tools and other actions are not this policy's.
        assert_eq!(
            verdict(&r, &s, "tool:other:x", json!({}), t0, NOON).1,
            "ungoverned"
        );
        assert_eq!(
            verdict(&r, &s, "shell:ls", json!({}), t0, NOON).1,
            "ungoverned"
        );
    }

    #[test]
    fn a_window_caps_the_calls_of_any_window_even_with_a_large_burst() {
        // Upstream's example: 1 per second, bursts of 60, at most 60 in any minute.
        let r = rules(json!({"rateLimit": {"rps": 1, "burst": 60, "window": "1m"}}));
        let s = ToolState::default();
        let t0 = s.epoch;
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        for _ in 0..60 {
            assert_eq!(
                verdict(&r, &s, "tool:a:b", json!({}), at(0), NOON).0,
                Verdict::Allow
            );
        }
        let v = decide(&r, &s, "tool:a:b", &json!({}), at(0), NOON).expect("governed");
        assert_eq!(v.verdict, Verdict::RateLimited);
        // 30 s later the bucket holds 30 calls again, but the minute is full until second 60.
        let v = decide(&r, &s, "tool:a:b", &json!({}), at(30), NOON).expect("governed");
        assert_eq!(
            (v.verdict, v.retry_after.map(|d| d.as_secs())),
            (Verdict::RateLimited, Some(30))
        );
        assert_eq!(
            verdict(&r, &s, "tool:a:b", json!({}), at(60), NOON).0,
            Verdict::Allow
        );
        assert!(ToolRules::parse("p", br#"{"rateLimit": {"rps": 1, "window": "25h"}}"#).is_err());
    }

    fn commerce() -> Value {
        json!({"appliesTo": {"tool": "*"}, "commerce": {"counterpartyAllowlist": ["acme.example"], "perTransferCap": "USD 100.00", "dailyCap": "USD 150.00", "monthlyCap": "USD 200.00"}, "approval": {"mode": "aboveThreshold", "threshold": "USD 50.00"}})
    }

    #[test]
    fn transfers_are_capped_listed_and_approved_above_the_threshold() {
        let r = rules(commerce());
        let s = ToolState::default();
        let t = Instant::now();
        let ok = |a: &str| verdict(&r, &s, a, json!({}), t, NOON);
        assert_eq!(ok("tool:pay:USD 40.00 acme.example").0, Verdict::Allow);
        let (v, why) = ok("tool:pay:USD 60.00 acme.example");
        assert_eq!(v, Verdict::ApprovalRequired, "{why}");
        assert!(why.contains("above the threshold USD 50.00"), "{why}");
        let (v, why) = ok("tool:pay:USD 120.00 acme.example");
        assert!(
            v == Verdict::Deny && why.contains("over perTransferCap USD 100.00"),
            "{why}"
        );
        let (v, why) = ok("tool:pay:USD 10.00 evil.example");
        assert!(
            v == Verdict::Deny && why.contains("no counterparty"),
            "{why}"
        );
        let (v, why) = verdict(
            &r,
            &s,
            "tool:pay:x",
            json!({"amount": "USD 10.00", "counterparty": "evil.example"}),
            t,
            NOON,
        );
        assert!(
            v == Verdict::Deny && why.contains("\"evil.example\" is not in counterpartyAllowlist"),
            "{why}"
        );
        let (v, why) = ok("tool:pay:EUR 10.00 acme.example");
        assert!(v == Verdict::Deny && why.contains("not converted"), "{why}");
        let (v, why) = ok("tool:pay:acme.example");
        assert!(
            v == Verdict::Deny && why.contains("needs an amount"),
            "{why}"
        );
        // 40 + 45 + 45 = 130 allowed today; 30 more would pass 150.
        assert_eq!(ok("tool:pay:USD 45.00 acme.example").0, Verdict::Allow);
        assert_eq!(ok("tool:pay:USD 45.00 acme.example").0, Verdict::Allow);
        let (v, why) = ok("tool:pay:USD 30.00 acme.example");
        assert!(
            v == Verdict::Deny
                && why.contains("on top of USD 130.00 would pass dailyCap USD 150.00"),
            "{why}"
        );
        // The next UTC day: the daily cap starts again, the month (200) does not.
        let (v, why) = verdict(
            &r,
            &s,
            "tool:pay:USD 50.00 acme.example",
            json!({}),
            t,
            NOON + DAY,
        );
        assert_eq!(v, Verdict::Allow, "{why}");
        let (v, why) = verdict(
            &r,
            &s,
            "tool:pay:USD 30.00 acme.example",
            json!({}),
            t,
            NOON + DAY,
        );
        assert!(v == Verdict::Deny && why.contains("monthlyCap"), "{why}");
        // Requiring approval or being refused spends nothing.
        assert_eq!(s.spent("pay", "USD", NOON + DAY), (5_000, 18_000));
    }

    #[test]
    fn an_empty_allowlist_refuses_every_transfer_and_always_asks() {
        let r = rules(json!({"commerce": {}}));
        let s = ToolState::default();
        let (v, why) = verdict(
            &r,
            &s,
            "tool:pay:USD 1.00 acme.example",
            json!({}),
            Instant::now(),
            NOON,
        );
        assert!(
            v == Verdict::Deny && why.contains("every transfer is refused"),
            "{why}"
        );
        let r = rules(json!({"approval": {"mode": "always"}}));
        assert_eq!(
            verdict(&r, &s, "tool:x:y", json!({}), Instant::now(), NOON).0,
            Verdict::ApprovalRequired
        );
        let r = rules(json!({"approval": {"mode": "never"}, "rateLimit": null}));
        assert_eq!(
            verdict(&r, &s, "tool:x:y", json!({}), Instant::now(), NOON).0,
            Verdict::Allow
        );
    }

    #[test]
    fn what_cannot_be_enforced_exactly_does_not_compile() {
        for bad in [
            json!({"commerce": {"dailyCap": "100 USD"}}),
            json!({"approval": {"mode": "sometimes"}}),
            json!({"approval": {"threshold": "USD 5"}}),
            json!({"rateLimit": {"rps": 0}}),
            json!({"rateLimit": {"burst": 3}}),
            json!({"rateLimit": {"rps": 1, "window": "forever"}}),
        ] {
            assert!(
                ToolRules::parse("p", bad.to_string().as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_spend_survives_a_restart_and_a_damaged_ledger_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("commerce.json");
        let r = rules(commerce());
        {
            let s = ToolState::open(&path).expect("open");
            assert_eq!(
                verdict(
                    &r,
                    &s,
                    "tool:pay:USD 45.00 acme.example",
                    json!({}),
                    Instant::now(),
                    NOON
                )
                .0,
                Verdict::Allow
            );
        }
        let s = ToolState::open(&path).expect("reopen");
        assert_eq!(s.spent("pay", "USD", NOON), (4_500, 4_500));
        std::fs::write(&path, b"{not json").expect("damage");
        let e = ToolState::open(&path).expect_err("damaged");
        assert!(e.to_string().contains("damaged"), "{e}");
    }
}
