//! The CEL rules of the KarsSandbox and KarsPairing CRDs.

use super::*;

/// The CEL rules of the KarsSandbox and KarsPairing CRDs.
pub const RULES: &[Rule] = &[
    // KarsSandbox
    Rule {
        kind: "KarsSandbox",
        path: &["spec"],
        cel: "self.runtime.kind != 'BYO' || !has(self.agent)",
        check: |s| {
            ok_if(
                field(s, "runtime").is_none_or(|r| str_of(r, "kind") != "BYO") || !has(s, "agent"),
                pos_of(s, "agent"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec"],
        cel: "!has(self.governance) || !has(self.governance.toolPolicyRef) || !has(self.governance.toolPolicyRef.name) || (!self.governance.toolPolicyRef.name.contains('/') && !self.governance.toolPolicyRef.name.contains(':'))",
        check: |s| match field(s, "governance").and_then(|g| field(g, "toolPolicyRef")) {
            Some(r) => {
                let name = str_of(r, "name");
                ok_if(
                    !name.contains('/') && !name.contains(':'),
                    pos_of(r, "name"),
                )
            }
            None => Ok(()),
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'OpenClaw') == has(self.openclaw)",
        check: |r| runtime_block(r, "OpenClaw", "openclaw"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'OpenAIAgents') == has(self.openaiAgents)",
        check: |r| runtime_block(r, "OpenAIAgents", "openaiAgents"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'MicrosoftAgentFramework') == has(self.microsoftAgentFramework)",
        check: |r| runtime_block(r, "MicrosoftAgentFramework", "microsoftAgentFramework"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'SemanticKernel') == has(self.semanticKernel)",
        check: |r| runtime_block(r, "SemanticKernel", "semanticKernel"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'LangGraph') == has(self.langGraph)",
        check: |r| runtime_block(r, "LangGraph", "langGraph"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'Anthropic') == has(self.anthropic)",
        check: |r| runtime_block(r, "Anthropic", "anthropic"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'PydanticAi') == has(self.pydanticAi)",
        check: |r| runtime_block(r, "PydanticAi", "pydanticAi"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'Hermes') == has(self.hermes)",
        check: |r| runtime_block(r, "Hermes", "hermes"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime"],
        cel: "(self.kind == 'BYO') == has(self.byo)",
        check: |r| runtime_block(r, "BYO", "byo"),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "openaiAgents", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "microsoftAgentFramework", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "semanticKernel", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "langGraph", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "anthropic", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "pydanticAi", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "runtime", "hermes", "agentCode"],
        cel: "has(self.oci) != has(self.git)",
        check: agent_code,
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "inferenceRef"],
        cel: "self.name.size() > 0",
        check: |r| ok_if(size(field(r, "name")) > 0, pos_of(r, "name")),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "memoryRef"],
        cel: "self.name.size() > 0",
        check: |r| ok_if(size(field(r, "name")) > 0, pos_of(r, "name")),
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!has(self.enabled) || !self.enabled || (has(self.toolPolicyRef) && self.toolPolicyRef.name.size() > 0)",
        check: |g| {
            ok_if(
                bool_of(g, "enabled") != Some(true)
                    || field(g, "toolPolicyRef").is_some_and(|r| size(field(r, "name")) > 0),
                pos_of(g, "enabled"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!has(self.trustThreshold) || (self.trustThreshold >= 0 && self.trustThreshold <= 1000)",
        check: |g| {
            ok_if(
                !has(g, "trustThreshold")
                    || int_of(g, "trustThreshold").is_some_and(|t| (0..=1000).contains(&t)),
                pos_of(g, "trustThreshold"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!(has(self.mcpServerRef) && has(self.mcpServerRefs) && self.mcpServerRefs.size() > 0)",
        check: |g| {
            ok_if(
                !(has(g, "mcpServerRef") && size(field(g, "mcpServerRefs")) > 0),
                pos_of(g, "mcpServerRefs"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!has(self.mcpServerRefs) || self.mcpServerRefs.size() <= 8",
        check: |g| {
            ok_if(
                size(field(g, "mcpServerRefs")) <= 8,
                pos_of(g, "mcpServerRefs"),
            )
        },
    },
    Rule {
        kind: "KarsSandbox",
        path: &["spec", "governance"],
        cel: "!has(self.mcpServerRefs) || self.mcpServerRefs.all(r, self.mcpServerRefs.exists_one(s, s.name == r.name))",
        check: |g| {
            let refs = items(g, "mcpServerRefs");
            all(refs, |r| {
                refs.iter()
                    .filter(|s| str_of(s, "name") == str_of(r, "name"))
                    .count()
                    == 1
            })
        },
    },
    // KarsPairing (rules on the root)
    Rule {
        kind: "KarsPairing",
        path: &[],
        cel: "!has(self.spec.slotsMax) || self.spec.slotsMax >= 1",
        check: |root| match field(root, "spec") {
            Some(s) => ok_if(
                !has(s, "slotsMax") || int_of(s, "slotsMax").is_some_and(|v| v >= 1),
                pos_of(s, "slotsMax"),
            ),
            None => Ok(()),
        },
    },
    Rule {
        kind: "KarsPairing",
        path: &[],
        cel: "!has(self.spec.tokenBudget) || self.spec.tokenBudget >= 0",
        check: |root| match field(root, "spec") {
            Some(s) => ok_if(
                !has(s, "tokenBudget") || int_of(s, "tokenBudget").is_some_and(|v| v >= 0),
                pos_of(s, "tokenBudget"),
            ),
            None => Ok(()),
        },
    },
];
