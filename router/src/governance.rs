//! Tool and action governance: AGT profiles (upstream's agentmesh PolicyEngine format) decide
//! whether an action string (`tool:<name>:<arg>`, `inference:<api>:<model>`, `spawn:*`,
//! `mesh:*`, …) may run.
//!
//! Rules, per profile:
//! - `capability` rules (`allowed_actions`, `denied_actions`) and `approval` rules (`actions`)
//!   are taken by priority, highest first; the first priority level with a matching rule
//!   decides. Within a level a deny beats an approval, which beats an allow — so the decision
//!   never depends on the order of rules or files.
//! - `rate_limit` rules (`actions`, `max_calls` per `window`) apply to every action the
//!   profile would allow, whatever their priority: a token bucket per profile and rule.
//! - No matching rule: deny (fail closed).
//!
//! With several profiles loaded (one per ToolPolicy), an action must be allowed by each. With
//! none loaded, everything is denied. Patterns are globs where `*` matches any run of
//! characters (including `:` and nothing), matched case-sensitively against the whole action.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::policy_file::PolicyFileError;

/// One rule as written in a profile.
#[derive(Clone, Debug, Deserialize)]
struct RawPolicy {
    name: String,
    #[serde(rename = "type", default = "capability")]
    kind: String,
    #[serde(default)]
    allowed_actions: Vec<String>,
    #[serde(default)]
    denied_actions: Vec<String>,
    #[serde(default)]
    actions: Vec<String>,
    #[serde(default)]
    priority: i64,
    #[serde(default)]
    max_calls: Option<u64>,
    #[serde(default)]
    window: Option<String>,
}

fn capability() -> String {
    "capability".into()
}

#[derive(Clone, Debug, Deserialize)]
struct RawProfile {
    #[serde(default)]
    agent: String,
    /// `policies:` with nothing under it is an empty list.
    #[serde(default)]
    policies: Option<Vec<RawPolicy>>,
}

/// The outcome for one action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The action may run.
    Allow,
    /// A rule denies it, or no rule allows it.
    Deny,
    /// An approval rule matches: it needs a human approval first.
    ApprovalRequired,
    /// Allowed, but over a rate limit.
    RateLimited,
}

/// A decision with the rule that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The action asked about.
    pub action: String,
    /// The outcome.
    pub verdict: Verdict,
    /// The deciding rule (`profile/rule`), or `None` when no rule matched (default deny).
    pub rule: Option<String>,
}

impl Decision {
    /// True when the action may run.
    pub fn allowed(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}

/// Matches `text` against a glob where `*` matches any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[derive(Clone, Debug)]
enum RuleKind {
    Capability {
        allowed: Vec<String>,
        denied: Vec<String>,
    },
    Approval {
        actions: Vec<String>,
    },
}

#[derive(Clone, Debug)]
struct Rule {
    name: String,
    kind: RuleKind,
}

#[derive(Clone, Debug)]
struct RateRule {
    name: String,
    actions: Vec<String>,
    max_calls: u64,
    window: Duration,
}

/// A compiled profile.
#[derive(Clone, Debug)]
pub struct Profile {
    /// File name (the key of its rate limiters).
    pub name: String,
    /// `agent` field.
    pub agent: String,
    /// Capability and approval rules, grouped by priority, highest first.
    levels: Vec<Vec<Rule>>,
    rate_rules: Vec<RateRule>,
}

/// Parses a rate-limit window (`60s`, `5m`, `1h`, `500ms`); it must be positive.
pub fn parse_window(s: &str) -> Result<Duration, crate::config::SettingError> {
    crate::config::positive_duration("window", s)
}

impl Profile {
    /// Compiles the profile in `text` (YAML) named `name`. Unknown rule types are errors
    /// (a rule the router does not understand must not be silently skipped).
    pub fn parse(name: &str, text: &str) -> Result<Profile, PolicyFileError> {
        let bad = |m: String| PolicyFileError::content(name, m);
        let raw: RawProfile =
            serde_saphyr::from_str(text).map_err(|e| bad(format!("not an AGT profile: {e}")))?;
        let mut by_priority: BTreeMap<std::cmp::Reverse<i64>, Vec<Rule>> = BTreeMap::new();
        let mut rate_rules = Vec::new();
        for p in raw.policies.unwrap_or_default() {
            let rule = match p.kind.as_str() {
                "capability" => RuleKind::Capability {
                    allowed: p.allowed_actions,
                    denied: p.denied_actions,
                },
                "approval" => RuleKind::Approval { actions: p.actions },
                "rate_limit" => {
                    let max_calls = p
                        .max_calls
                        .ok_or_else(|| bad(format!("rate_limit {:?} needs max_calls", p.name)))?;
                    let window = parse_window(p.window.as_deref().unwrap_or(""))
                        .map_err(|e| bad(format!("rate_limit {:?}: {e}", p.name)))?;
                    rate_rules.push(RateRule {
                        name: p.name,
                        actions: p.actions,
                        max_calls,
                        window,
                    });
                    continue;
                }
                other => {
                    return Err(bad(format!(
                        "policy {:?} has unknown type {other:?} (capability, approval, rate_limit)",
                        p.name
                    )));
                }
            };
            by_priority
                .entry(std::cmp::Reverse(p.priority))
                .or_default()
                .push(Rule {
                    name: p.name,
                    kind: rule,
                });
        }
        let mut levels: Vec<Vec<Rule>> = by_priority.into_values().collect();
        for level in &mut levels {
            level.sort_by(|a, b| a.name.cmp(&b.name));
        }
        rate_rules.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Profile {
            name: name.to_string(),
            agent: raw.agent,
            levels,
            rate_rules,
        })
    }

    /// The verdict of the capability and approval rules (no rate limits), with the rule.
    pub fn evaluate(&self, action: &str) -> (Verdict, Option<String>) {
        let any = |patterns: &[String]| patterns.iter().any(|p| glob_match(p, action));
        for level in &self.levels {
            let mut best: Option<(Verdict, &str)> = None;
            for rule in level {
                let verdict = match &rule.kind {
                    RuleKind::Capability { allowed, denied } => {
                        if any(denied) {
                            Some(Verdict::Deny)
                        } else if any(allowed) {
                            Some(Verdict::Allow)
                        } else {
                            None
                        }
                    }
                    RuleKind::Approval { actions } => {
                        any(actions).then_some(Verdict::ApprovalRequired)
                    }
                };
                // Deny > ApprovalRequired > Allow; ties keep the first name (sorted).
                let rank = |v: Verdict| match v {
                    Verdict::Deny => 3,
                    Verdict::ApprovalRequired => 2,
                    Verdict::RateLimited => 1,
                    Verdict::Allow => 0,
                };
                if let Some(v) = verdict
                    && best.is_none_or(|(b, _)| rank(v) > rank(b))
                {
                    best = Some((v, rule.name.as_str()));
                }
            }
            if let Some((v, name)) = best {
                return (v, Some(format!("{}/{name}", self.name)));
            }
        }
        (Verdict::Deny, None)
    }
}

/// A token bucket: `capacity` tokens, refilled continuously at `capacity` per `window`.
#[derive(Clone, Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The loaded profiles and their rate-limit state.
#[derive(Debug, Default)]
pub struct Engine {
    profiles: Vec<Profile>,
    /// Shared with the engine's successors after a reload: limits survive reloads.
    buckets: Arc<Mutex<BTreeMap<(String, String), Bucket>>>,
}

impl Engine {
    /// An engine for `profiles` (sorted by name: file order never matters).
    pub fn new(mut profiles: Vec<Profile>) -> Engine {
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        Engine {
            profiles,
            buckets: Arc::default(),
        }
    }

    /// An engine for new `profiles` sharing this one's rate-limit state (buckets of rules that
    /// no longer exist are dropped).
    pub fn successor(&self, mut profiles: Vec<Profile>) -> Engine {
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(p, r), _| {
                profiles
                    .iter()
                    .any(|x| x.name == *p && x.rate_rules.iter().any(|rr| rr.name == *r))
            });
        Engine {
            profiles,
            buckets: self.buckets.clone(),
        }
    }

    /// Number of loaded profiles.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// True when no profile is loaded.
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// Decides `action` at time `now` (rate limits consume a token only when every profile
    /// allows the action).
    pub fn decide(&self, action: &str, now: Instant) -> Decision {
        if self.profiles.is_empty() {
            return Decision {
                action: action.to_string(),
                verdict: Verdict::Deny,
                rule: Some("no AGT profile is loaded".into()),
            };
        }
        let mut allow_rule = None;
        for p in &self.profiles {
            let (verdict, rule) = p.evaluate(action);
            if verdict != Verdict::Allow {
                return Decision {
                    action: action.to_string(),
                    verdict,
                    rule,
                };
            }
            allow_rule = allow_rule.or(rule);
        }
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Check every matching limit first, then take the tokens: a refused call consumes none.
        let mut matching = Vec::new();
        for p in &self.profiles {
            for r in p
                .rate_rules
                .iter()
                .filter(|r| r.actions.iter().any(|a| glob_match(a, action)))
            {
                let key = (p.name.clone(), r.name.clone());
                let capacity = r.max_calls as f64;
                let b = buckets.entry(key.clone()).or_insert(Bucket {
                    tokens: capacity,
                    last: now,
                });
                let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
                b.tokens = (b.tokens + elapsed * capacity / r.window.as_secs_f64()).min(capacity);
                b.last = now;
                if b.tokens < 1.0 {
                    return Decision {
                        action: action.to_string(),
                        verdict: Verdict::RateLimited,
                        rule: Some(format!("{}/{}", p.name, r.name)),
                    };
                }
                matching.push(key);
            }
        }
        for key in matching {
            if let Some(b) = buckets.get_mut(&key) {
                b.tokens -= 1.0;
            }
        }
        Decision {
            action: action.to_string(),
            verdict: Verdict::Allow,
            rule: allow_rule,
        }
    }
}

/// Upstream's per-tool sliding window on `tool:` actions (`TOOL_RATE_LIMIT_MAX` calls per
/// `TOOL_RATE_LIMIT_WINDOW_SECS`, default 100 per 60 s), checked before the profiles: a runtime
/// looping on one tool is refused with the seconds until its oldest call leaves the window.
/// At most [`MAX_TRACKED_TOOLS`] tools get their own window; further names share one, so an
/// agent inventing tool names cannot grow the router's memory.
#[derive(Debug)]
pub struct ToolWindow {
    max: usize,
    window: Duration,
    calls: Mutex<std::collections::HashMap<String, std::collections::VecDeque<Instant>>>,
}

/// Tools with a window of their own.
pub const MAX_TRACKED_TOOLS: usize = 1024;
/// The shared window of tools past [`MAX_TRACKED_TOOLS`].
const OVERFLOW_TOOL: &str = "\0overflow";

impl Default for ToolWindow {
    fn default() -> Self {
        ToolWindow::new(100, Duration::from_secs(60))
    }
}

impl ToolWindow {
    /// `max` calls per `window` per tool (`max` 0: no limit).
    pub fn new(max: usize, window: Duration) -> ToolWindow {
        ToolWindow {
            max,
            window,
            calls: Mutex::default(),
        }
    }

    /// `max calls per window`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} calls per {} s per tool",
            self.max,
            self.window.as_secs()
        )
    }

    /// Admits one call of `tool` at `now`, or says how long until it would be admitted.
    pub fn admit(&self, tool: &str, now: Instant) -> Result<(), Duration> {
        if self.max == 0 {
            return Ok(());
        }
        let mut calls = self
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = if calls.contains_key(tool) || calls.len() < MAX_TRACKED_TOOLS {
            tool
        } else {
            OVERFLOW_TOOL
        };
        let q = calls.entry(key.to_string()).or_default();
        while q
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= self.max {
            let oldest = q.front().copied().unwrap_or(now);
            return Err(self
                .window
                .saturating_sub(now.saturating_duration_since(oldest)));
        }
        q.push_back(now);
        Ok(())
    }
}

/// The tool of a `tool:<name>[:<arg>]` action.
pub fn tool_of(action: &str) -> Option<&str> {
    let rest = action.strip_prefix("tool:")?;
    Some(rest.split(':').next().unwrap_or(rest)).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DEFAULT: &str = include_str!("../testdata/kars-default-agt-profile.yaml");

    fn engine(files: &[(&str, &str)]) -> Engine {
        Engine::new(
            files
                .iter()
                .map(|(n, t)| Profile::parse(n, t).expect("valid profile"))
                .collect(),
        )
    }

    #[test]
    fn globs() {
        for (p, t) in [
            ("tool:*", "tool:x:"),
            ("tool:*", "tool:"),
            ("*", ""),
            ("a*b*c", "aXbYc"),
            ("shell:rm", "shell:rm"),
            ("tool:sre_*", "tool:sre_logs:pod-1"),
        ] {
            assert!(glob_match(p, t), "{p} {t}");
        }
        for (p, t) in [
            ("tool:sre_describe_state", "tool:sre_describe_state:"),
            ("shell:rm", "shell:rm -rf /"),
            ("shell:rm", "Shell:rm"),
            ("a*b", "aXc"),
            ("tool:*", "tools:x"),
        ] {
            assert!(!glob_match(p, t), "{p} {t}");
        }
    }

    #[test]
    fn the_upstream_default_profile_decides_as_documented() {
        let e = engine(&[("default.yaml", DEFAULT)]);
        let now = Instant::now();
        let d = e.decide("shell:rm", now);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(
            d.rule.as_deref(),
            Some("default.yaml/shell-destructive-deny")
        );
        assert!(e.decide("shell:ls", now).allowed());
        assert!(e.decide("tool:web_fetch:https://x", now).allowed());
        assert!(
            e.decide("inference:chat_completions:gpt-4.1", now)
                .allowed()
        );
        assert_eq!(
            e.decide("admin:bulk_delete", now).verdict,
            Verdict::ApprovalRequired
        );
        assert!(e.decide("admin:status", now).allowed());
        let d = e.decide("unknown:thing", now);
        assert_eq!((d.verdict, d.rule), (Verdict::Deny, None), "default deny");
        // Bypass ideas: case, prefix tricks, trailing text on an exact rule.
        assert!(!e.decide("SHELL:ls", now).allowed());
        assert!(!e.decide("shell:ls;rm", now).allowed(), "exact rule");
        assert!(!e.decide("shell:rm", now).allowed());
    }

    #[test]
    fn within_a_priority_deny_beats_allow_whatever_the_order() {
        let a = "version: '1'\nagent: a\npolicies:\n- {name: z-allow, type: capability, allowed_actions: ['tool:*'], priority: 10}\n- {name: a-deny, type: capability, denied_actions: ['tool:danger:*'], priority: 10}\n";
        let e = engine(&[("p.yaml", a)]);
        let d = e.decide("tool:danger:x", Instant::now());
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.rule.as_deref(), Some("p.yaml/a-deny"));
        assert!(e.decide("tool:safe:x", Instant::now()).allowed());
    }

    #[test]
    fn every_profile_must_allow_and_none_loaded_denies() {
        let tools = "policies:\n- {name: t, allowed_actions: ['tool:*'], priority: 1}\n";
        let no_shell = "policies:\n- {name: s, denied_actions: ['tool:shell:*'], priority: 1}\n- {name: rest, allowed_actions: ['*'], priority: 0}\n";
        let e = engine(&[("a.yaml", tools), ("b.yaml", no_shell)]);
        assert!(e.decide("tool:x:", Instant::now()).allowed());
        assert!(!e.decide("tool:shell:ls", Instant::now()).allowed());
        assert!(
            !Engine::default()
                .decide("tool:x:", Instant::now())
                .allowed()
        );
    }

    #[test]
    fn rate_limits_refill_and_refusals_cost_nothing() {
        let p = "policies:\n- {name: all, allowed_actions: ['inference:*'], priority: 9}\n- {name: rl, type: rate_limit, actions: ['inference:*'], max_calls: 3, window: 60s, priority: 1}\n";
        let e = engine(&[("p.yaml", p)]);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(e.decide("inference:chat_completions:m", t0).allowed());
        }
        let d = e.decide("inference:chat_completions:m", t0);
        assert_eq!(d.verdict, Verdict::RateLimited);
        assert_eq!(d.rule.as_deref(), Some("p.yaml/rl"));
        // Refused calls did not consume: after 20 s exactly one token is back.
        let t1 = t0 + Duration::from_secs(20);
        assert!(e.decide("inference:chat_completions:m", t1).allowed());
        assert_eq!(
            e.decide("inference:chat_completions:m", t1).verdict,
            Verdict::RateLimited
        );
        // Other actions are not limited.
        assert!(!e.decide("tool:x", t1).allowed(), "not allowed at all");
    }

    #[test]
    fn bad_profiles_are_refused() {
        for bad in [
            "policies:\n- {name: x, type: magic, actions: ['*']}\n",
            "policies:\n- {name: x, type: rate_limit, actions: ['*'], window: 60s}\n",
            "policies:\n- {name: x, type: rate_limit, actions: ['*'], max_calls: 1, window: forever}\n",
            "policies: [1, 2]\n",
        ] {
            assert!(Profile::parse("bad.yaml", bad).is_err(), "{bad}");
        }
    }

    fn arb_rule() -> impl Strategy<Value = String> {
        let pattern = prop::sample::select(vec![
            "tool:*",
            "tool:a:*",
            "tool:a:",
            "shell:rm",
            "shell:*",
            "*",
            "inference:*",
            "mesh:*",
        ]);
        (
            "[a-e]",
            0i64..4,
            prop::bool::ANY,
            prop::collection::vec(pattern, 1..3),
            0u8..3,
        )
            .prop_map(|(name, priority, deny, patterns, kind)| {
                let list = format!(
                    "[{}]",
                    patterns
                        .iter()
                        .map(|p| format!("'{p}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                match kind {
                    0 if deny => format!("- {{name: {name}, type: capability, denied_actions: {list}, priority: {priority}}}\n"),
                    0 | 1 => format!("- {{name: {name}, type: capability, allowed_actions: {list}, priority: {priority}}}\n"),
                    _ => format!("- {{name: {name}, type: approval, actions: {list}, priority: {priority}}}\n"),
                }
            })
    }

    proptest! {
        #[test]
        fn decisions_never_depend_on_rule_or_file_order(
            rules in prop::collection::vec(arb_rule(), 1..8),
            split in 0usize..8,
            seed in any::<u64>(),
        ) {
            let split = split.min(rules.len());
            let file = |rs: &[String]| format!("policies:\n{}", rs.concat());
            let a = file(&rules[..split]);
            let b = file(&rules[split..]);
            let mut shuffled = rules.clone();
            // A deterministic shuffle from the seed.
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            let one = engine(&[("one.yaml", &file(&rules))]);
            let one_shuffled = engine(&[("one.yaml", &file(&shuffled))]);
            let two = engine(&[("x.yaml", &a), ("y.yaml", &b)]);
            let two_swapped = engine(&[("y.yaml", &b), ("x.yaml", &a)]);
            let now = Instant::now();
            for action in ["tool:a:", "tool:a:b", "shell:rm", "shell:ls", "inference:c:m", "mesh:send:p", "other"] {
                prop_assert_eq!(one.decide(action, now), one_shuffled.decide(action, now));
                prop_assert_eq!(two.decide(action, now), two_swapped.decide(action, now));
            }
        }
    }

    #[test]
    fn the_per_tool_window_refuses_with_the_wait_and_is_bounded() {
        let w = ToolWindow::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(w.admit("web_fetch", t0).is_ok());
        assert!(w.admit("web_fetch", t0 + Duration::from_secs(10)).is_ok());
        let wait = w
            .admit("web_fetch", t0 + Duration::from_secs(20))
            .expect_err("third call in the window");
        assert_eq!(wait, Duration::from_secs(40));
        assert!(
            w.admit("read_file", t0 + Duration::from_secs(20)).is_ok(),
            "per tool"
        );
        assert!(
            w.admit("web_fetch", t0 + Duration::from_secs(60)).is_ok(),
            "the oldest left"
        );
        // Invented names share one window past the cap.
        let many = ToolWindow::new(1, Duration::from_secs(60));
        for i in 0..MAX_TRACKED_TOOLS {
            assert!(many.admit(&format!("t{i}"), t0).is_ok());
        }
        assert!(many.admit("new-1", t0).is_ok());
        assert!(
            many.admit("new-2", t0).is_err(),
            "overflow tools share a window"
        );
        assert_eq!(tool_of("tool:web_fetch:https://x"), Some("web_fetch"));
        assert_eq!(tool_of("tool:ls"), Some("ls"));
        assert_eq!(tool_of("tool::x"), None);
        assert_eq!(tool_of("shell:ls"), None);
    }
}
