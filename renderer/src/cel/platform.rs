//! The CEL rules of the platform CRDs: A2AAgent, KarsAuthConfig, KarsEval, KarsSREAction, TrustGraph.

use super::*;

/// The CEL rules of the platform CRDs: A2AAgent, KarsAuthConfig, KarsEval, KarsSREAction, TrustGraph.
pub const RULES: &[Rule] = &[
    // A2AAgent
    Rule {
        kind: "A2AAgent",
        path: &["spec"],
        cel: "size(self.signingKeys) > 0",
        check: |s| ok_if(size(field(s, "signingKeys")) > 0, pos_of(s, "signingKeys")),
    },
    Rule {
        kind: "A2AAgent",
        path: &["spec"],
        cel: "self.signingKeys.all(k, k.alg == 'EdDSA')",
        check: |s| all(items(s, "signingKeys"), |k| str_of(k, "alg") == "EdDSA"),
    },
    Rule {
        kind: "A2AAgent",
        path: &["spec"],
        cel: "self.productionMode == false || self.endpointUrl.startsWith('https://')",
        check: |s| {
            ok_if(
                bool_of(s, "productionMode") != Some(true)
                    || str_of(s, "endpointUrl").starts_with("https://"),
                pos_of(s, "endpointUrl"),
            )
        },
    },
    Rule {
        kind: "A2AAgent",
        path: &["spec"],
        cel: "self.federation.all(p, (p.kind == 'in-cluster' && has(p.agentRef) && !has(p.endpointUrl)) || (p.kind == 'external' && has(p.endpointUrl) && has(p.pinnedKid) && !has(p.agentRef)))",
        check: |s| {
            all(items(s, "federation"), |p| {
                (str_of(p, "kind") == "in-cluster" && has(p, "agentRef") && !has(p, "endpointUrl"))
                    || (str_of(p, "kind") == "external"
                        && has(p, "endpointUrl")
                        && has(p, "pinnedKid")
                        && !has(p, "agentRef"))
            })
        },
    },
    // KarsAuthConfig: a transition rule that always holds.
    Rule {
        kind: "KarsAuthConfig",
        path: &["spec"],
        cel: "self == oldSelf || true",
        check: |_| Ok(()),
    },
    // KarsEval
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "size(self.targetSandboxRef.name) > 0 && size(self.targetSandboxRef.name) <= 253",
        check: |s| match field(s, "targetSandboxRef") {
            Some(t) => len_between(t, "name", 1, 253),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "has(self.corpus.builtin) != has(self.corpus.bundleRef)",
        check: |s| match field(s, "corpus") {
            Some(c) => ok_if(has(c, "builtin") != has(c, "bundleRef"), c.pos),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "!has(self.corpus.builtin) || (size(self.corpus.builtin) > 0 && size(self.corpus.builtin) <= 253)",
        check: |s| match field(s, "corpus") {
            Some(c) => optional_len_between(c, "builtin", 1, 253),
            None => Ok(()),
        },
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "!has(self.schedule) || (size(self.schedule) > 0 && size(self.schedule) <= 256 && (size(self.schedule.split(' ')) == 5 || size(self.schedule.split(' ')) == 6))",
        check: |s| {
            if !has(s, "schedule") {
                return Ok(());
            }
            let sched = str_of(s, "schedule");
            let n = sched.chars().count();
            let fields = sched.split(' ').count();
            ok_if(
                n > 0 && n <= 256 && (fields == 5 || fields == 6),
                pos_of(s, "schedule"),
            )
        },
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "!has(self.displayName) || (size(self.displayName) > 0 && size(self.displayName) <= 256)",
        check: |s| optional_len_between(s, "displayName", 1, 256),
    },
    Rule {
        kind: "KarsEval",
        path: &["spec"],
        cel: "!has(self.runnerImage) || (size(self.runnerImage) > 0 && size(self.runnerImage) <= 512)",
        check: |s| optional_len_between(s, "runnerImage", 1, 512),
    },
    // KarsSREAction
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "self.action.type in ['DeleteResourceQuota', 'PatchDeploymentImage', 'ScaleDeployment', 'RolloutRestart', 'DeletePod']",
        check: |s| match field(s, "action") {
            Some(a) => ok_if(
                SRE_ACTION_TYPES.contains(&str_of(a, "type")),
                pos_of(a, "type"),
            ),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "self.approval.state in ['Pending', 'Approved', 'Rejected']",
        check: |s| match field(s, "approval") {
            Some(a) => ok_if(
                ["Pending", "Approved", "Rejected"].contains(&str_of(a, "state")),
                pos_of(a, "state"),
            ),
            None => Err(s.pos),
        },
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.ttlMinutes) || (self.ttlMinutes >= 1 && self.ttlMinutes <= 60)",
        check: |s| {
            ok_if(
                !has(s, "ttlMinutes")
                    || int_of(s, "ttlMinutes").is_some_and(|m| (1..=60).contains(&m)),
                pos_of(s, "ttlMinutes"),
            )
        },
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.rationale) || size(self.rationale) <= 2048",
        check: |s| ok_if(size(field(s, "rationale")) <= 2048, pos_of(s, "rationale")),
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.diagnosis) || size(self.diagnosis) <= 512",
        check: |s| ok_if(size(field(s, "diagnosis")) <= 512, pos_of(s, "diagnosis")),
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.approval.note) || size(self.approval.note) <= 512",
        check: |s| match field(s, "approval") {
            Some(a) => ok_if(size(field(a, "note")) <= 512, pos_of(a, "note")),
            None => Ok(()),
        },
    },
    Rule {
        kind: "KarsSREAction",
        path: &["spec"],
        cel: "!has(self.rationale) || !self.rationale.matches('[\\x00-\\x08\\x0B\\x0C\\x0E-\\x1F\\x7F]')",
        check: |s| {
            ok_if(
                !has_control_byte(str_of(s, "rationale")),
                pos_of(s, "rationale"),
            )
        },
    },
    // TrustGraph
    Rule {
        kind: "TrustGraph",
        path: &["spec"],
        cel: "size(self.vertices) > 0",
        check: |s| ok_if(size(field(s, "vertices")) > 0, pos_of(s, "vertices")),
    },
    Rule {
        kind: "TrustGraph",
        path: &["spec"],
        cel: "self.vertices.all(v, v.alg == 'EdDSA')",
        check: |s| all(items(s, "vertices"), |v| str_of(v, "alg") == "EdDSA"),
    },
    Rule {
        kind: "TrustGraph",
        path: &["spec"],
        cel: "!has(self.edges) || self.edges.all(e, e.score >= 0 && e.score <= 1000)",
        check: |s| {
            all(items(s, "edges"), |e| {
                int_of(e, "score").is_some_and(|x| (0..=1000).contains(&x))
            })
        },
    },
    Rule {
        kind: "TrustGraph",
        path: &["spec"],
        cel: "!has(self.edges) || self.edges.all(e, !has(e.notAfter) || e.notAfter >= e.issuedAt)",
        check: |s| {
            all(items(s, "edges"), |e| {
                match (int_of(e, "notAfter"), int_of(e, "issuedAt")) {
                    (Some(na), Some(ia)) => na >= ia,
                    (Some(_), None) => false,
                    (None, _) => true,
                }
            })
        },
    },
];
