//! The CEL rules of the policy CRDs: EgressApproval, InferencePolicy, McpServer, KarsMemory, ToolPolicy.

use super::*;

/// The CEL rules of the policy CRDs: EgressApproval, InferencePolicy, McpServer, KarsMemory, ToolPolicy.
pub const RULES: &[Rule] = &[
    // EgressApproval
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "size(self.sandbox) > 0 && size(self.sandbox) <= 253",
        check: |s| len_between(s, "sandbox", 1, 253),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "size(self.hosts) >= 1 && size(self.hosts) <= 16",
        check: |s| len_between(s, "hosts", 1, 16),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "self.hosts.all(h, size(h.host) > 0 && size(h.host) <= 253)",
        check: |s| {
            all(items(s, "hosts"), |h| {
                (1..=253).contains(&size(field(h, "host")))
            })
        },
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "self.hosts.all(h, !has(h.port) || (h.port >= 1 && h.port <= 65535))",
        check: |s| {
            all(items(s, "hosts"), |h| {
                !has(h, "port") || int_of(h, "port").is_some_and(|p| (1..=65535).contains(&p))
            })
        },
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "size(self.reason) >= 1 && size(self.reason) <= 512",
        check: |s| len_between(s, "reason", 1, 512),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "!self.reason.matches('[\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F]')",
        check: |s| ok_if(!has_control_byte(str_of(s, "reason")), pos_of(s, "reason")),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "!has(self.ticket) || (size(self.ticket) >= 1 && size(self.ticket) <= 128)",
        check: |s| optional_len_between(s, "ticket", 1, 128),
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "self.ttl.matches('^P(\\\\d+Y)?(\\\\d+M)?(\\\\d+W)?(\\\\d+D)?(T(\\\\d+H)?(\\\\d+M)?(\\\\d+S)?)?$')",
        check: |s| {
            ok_if(
                matches(
                    str_of(s, "ttl"),
                    r"^P(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(\d+H)?(\d+M)?(\d+S)?)?$",
                ),
                pos_of(s, "ttl"),
            )
        },
    },
    Rule {
        kind: "EgressApproval",
        path: &["spec"],
        cel: "self.ttl.matches('[1-9]')",
        check: |s| {
            ok_if(
                str_of(s, "ttl").chars().any(|c| ('1'..='9').contains(&c)),
                pos_of(s, "ttl"),
            )
        },
    },
    // InferencePolicy
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.bundleRef) || (!has(self.tokenBudget) && !has(self.contentSafety) && !has(self.modelPreference) && !has(self.displayName))",
        check: |s| {
            ok_if(
                !has(s, "bundleRef")
                    || ![
                        "tokenBudget",
                        "contentSafety",
                        "modelPreference",
                        "displayName",
                    ]
                    .iter()
                    .any(|k| has(s, k)),
                pos_of(s, "bundleRef"),
            )
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.tokenBudget) || !has(self.tokenBudget.monthlyTokens) || !has(self.tokenBudget.dailyTokens) || self.tokenBudget.monthlyTokens >= self.tokenBudget.dailyTokens",
        check: |s| match field(s, "tokenBudget") {
            Some(tb) => match (int_of(tb, "monthlyTokens"), int_of(tb, "dailyTokens")) {
                (Some(m), Some(d)) => ok_if(m >= d, pos_of(tb, "monthlyTokens")),
                _ => Ok(()),
            },
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.tokenBudget) || !has(self.tokenBudget.monthlyTokens) || !has(self.tokenBudget.perRequestTokens) || self.tokenBudget.monthlyTokens >= self.tokenBudget.perRequestTokens",
        check: |s| match field(s, "tokenBudget") {
            Some(tb) => match (int_of(tb, "monthlyTokens"), int_of(tb, "perRequestTokens")) {
                (Some(m), Some(p)) => ok_if(m >= p, pos_of(tb, "monthlyTokens")),
                _ => Ok(()),
            },
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.contentSafety) || ((!has(self.contentSafety.hate)      || self.contentSafety.hate      in ['Safe','Low','Medium','High']) && (!has(self.contentSafety.selfHarm)  || self.contentSafety.selfHarm  in ['Safe','Low','Medium','High']) && (!has(self.contentSafety.sexual)    || self.contentSafety.sexual    in ['Safe','Low','Medium','High']) && (!has(self.contentSafety.violence)  || self.contentSafety.violence  in ['Safe','Low','Medium','High']))",
        check: |s| match field(s, "contentSafety") {
            Some(cs) => {
                for k in ["hate", "selfHarm", "sexual", "violence"] {
                    if has(cs, k) && !SEVERITIES.contains(&str_of(cs, k)) {
                        return Err(pos_of(cs, k));
                    }
                }
                Ok(())
            }
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.modelPreference) || (size(self.modelPreference.primary.provider) > 0 && size(self.modelPreference.primary.deployment) > 0)",
        check: |s| match field(s, "modelPreference") {
            Some(mp) => {
                let primary = field(mp, "primary");
                let ok = primary.is_some_and(|p| {
                    size(field(p, "provider")) > 0 && size(field(p, "deployment")) > 0
                });
                ok_if(ok, primary.map_or(mp.pos, |p| p.pos))
            }
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.modelPreference) || self.modelPreference.fallback.all(f, size(f.provider) > 0 && size(f.deployment) > 0)",
        check: |s| match field(s, "modelPreference") {
            Some(mp) => all(items(mp, "fallback"), |f| {
                size(field(f, "provider")) > 0 && size(field(f, "deployment")) > 0
            }),
            None => Ok(()),
        },
    },
    Rule {
        kind: "InferencePolicy",
        path: &["spec"],
        cel: "!has(self.appliesTo.action) || self.appliesTo.action in ['chat','responses','image','embeddings','*']",
        check: |s| match field(s, "appliesTo") {
            Some(a) if has(a, "action") => ok_if(
                ["chat", "responses", "image", "embeddings", "*"].contains(&str_of(a, "action")),
                pos_of(a, "action"),
            ),
            _ => Ok(()),
        },
    },
    // McpServer
    Rule {
        kind: "McpServer",
        path: &["spec"],
        cel: "has(self.bundleRef) || !has(self.productionMode) || self.productionMode == false || (has(self.oauth) && size(self.oauth.issuer) > 0)",
        check: |s| {
            ok_if(
                has(s, "bundleRef")
                    || bool_of(s, "productionMode") != Some(true)
                    || field(s, "oauth").is_some_and(|o| size(field(o, "issuer")) > 0),
                pos_of(s, "productionMode"),
            )
        },
    },
    Rule {
        kind: "McpServer",
        path: &["spec"],
        cel: "has(self.bundleRef) || !has(self.productionMode) || self.productionMode == false || (has(self.url) && self.url.startsWith('https://'))",
        check: |s| {
            ok_if(
                has(s, "bundleRef")
                    || bool_of(s, "productionMode") != Some(true)
                    || str_of(s, "url").starts_with("https://"),
                pos_of(s, "url"),
            )
        },
    },
    Rule {
        kind: "McpServer",
        path: &["spec"],
        cel: "!has(self.oauth) || !has(self.oauth.pkce) || self.oauth.pkce == 'S256'",
        check: |s| match field(s, "oauth") {
            Some(o) if has(o, "pkce") => ok_if(str_of(o, "pkce") == "S256", pos_of(o, "pkce")),
            _ => Ok(()),
        },
    },
    Rule {
        kind: "McpServer",
        path: &["spec"],
        cel: "!has(self.bundleRef) || (!has(self.url) && !has(self.oauth) && !has(self.productionMode) && !has(self.scopes) && !has(self.allowedTools) && !has(self.displayName))",
        check: |s| {
            ok_if(
                !has(s, "bundleRef")
                    || !crate::api::MCP_SERVER_BUNDLE_FIELDS
                        .iter()
                        .any(|k| has(s, k)),
                pos_of(s, "bundleRef"),
            )
        },
    },
    // KarsMemory
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "has(self.bundleRef) || (has(self.storeName) && size(self.storeName) > 0 && size(self.storeName) <= 63 && self.storeName.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))",
        check: |s| {
            ok_if(
                has(s, "bundleRef")
                    || (has(s, "storeName") && is_dns_label(str_of(s, "storeName"))),
                pos_of(s, "storeName"),
            )
        },
    },
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "size(self.sandboxRef.name) > 0 && size(self.sandboxRef.name) <= 253",
        check: |s| match field(s, "sandboxRef") {
            Some(r) => len_between(r, "name", 1, 253),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "has(self.bundleRef) || (has(self.scope) && size(self.scope) > 0 && size(self.scope) <= 256 && self.scope.matches('^[A-Za-z0-9_./%+@-]+$'))",
        check: |s| {
            ok_if(
                has(s, "bundleRef")
                    || (has(s, "scope")
                        && size(field(s, "scope")) <= 256
                        && matches(str_of(s, "scope"), "^[A-Za-z0-9_./%+@-]+$")),
                pos_of(s, "scope"),
            )
        },
    },
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "!has(self.retentionDays) || self.retentionDays > 0",
        check: |s| {
            ok_if(
                !has(s, "retentionDays") || int_of(s, "retentionDays").is_some_and(|d| d > 0),
                pos_of(s, "retentionDays"),
            )
        },
    },
    Rule {
        kind: "KarsMemory",
        path: &["spec"],
        cel: "!has(self.bundleRef) || (!has(self.storeName) && !has(self.scope) && !has(self.retentionDays) && !has(self.deleteOnSandboxDelete) && !has(self.displayName))",
        check: |s| {
            ok_if(
                !has(s, "bundleRef")
                    || ![
                        "storeName",
                        "scope",
                        "retentionDays",
                        "deleteOnSandboxDelete",
                        "displayName",
                    ]
                    .iter()
                    .any(|k| has(s, k)),
                pos_of(s, "bundleRef"),
            )
        },
    },
    // ToolPolicy
    Rule {
        kind: "ToolPolicy",
        path: &["spec"],
        cel: "has(self.appliesTo.sandboxMatchLabels) && size(self.appliesTo.sandboxMatchLabels) > 0",
        check: |s| match field(s, "appliesTo") {
            Some(a) => ok_if(
                size(field(a, "sandboxMatchLabels")) > 0,
                pos_of(a, "sandboxMatchLabels"),
            ),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "ToolPolicy",
        path: &["spec"],
        cel: "!has(self.agtProfile) || !(has(self.agtProfile.inline) && has(self.agtProfile.bundleRef))",
        check: |s| match field(s, "agtProfile") {
            Some(p) => ok_if(!(has(p, "inline") && has(p, "bundleRef")), p.pos),
            None => Ok(()),
        },
    },
];
