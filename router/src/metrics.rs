//! Prometheus metrics of the router (text format on `/metrics`, no token: counts only).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Labels of an egress decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EgressLabels {
    /// `allowed` or `refused`.
    pub outcome: String,
    /// How it was allowed (`allowlist`, `approval`, `learned`) or the refusal reason.
    pub reason: String,
}

/// Label of a governance decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerdictLabel {
    /// `allow`, `deny`, `approval_required`, `rate_limited`.
    pub verdict: String,
}

/// The router's metrics.
pub struct RouterMetrics {
    registry: Registry,
    /// Egress decisions.
    pub egress: Family<EgressLabels, Counter>,
    /// Governance decisions.
    pub governance: Family<VerdictLabel, Counter>,
    /// Audit records that could not be written.
    pub audit_write_failures: Counter,
    /// Refusal records held back by the audit throttle, by reason.
    pub audit_suppressed: Family<ReasonLabel, Counter>,
    /// Policy reload passes (every mount read; a change compiles).
    pub policy_reloads: Counter,
}

/// Label of a counter by reason word.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason word.
    pub reason: String,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kars_router");
        let egress = Family::<EgressLabels, Counter>::default();
        let governance = Family::<VerdictLabel, Counter>::default();
        let audit_write_failures = Counter::default();
        let audit_suppressed = Family::<ReasonLabel, Counter>::default();
        let policy_reloads = Counter::default();
        registry.register(
            "audit_suppressed",
            "Refusal records not written because the audit throttle held them back, by reason",
            audit_suppressed.clone(),
        );
        registry.register(
            "policy_reloads",
            "Policy reload passes (mounts read; changed policies compiled)",
            policy_reloads.clone(),
        );
        registry.register(
            "egress_decisions",
            "Egress proxy decisions, by outcome and reason",
            egress.clone(),
        );
        registry.register(
            "governance_decisions",
            "Governance decisions, by verdict",
            governance.clone(),
        );
        registry.register(
            "audit_write_failures",
            "Audit records that could not be written (the action was refused)",
            audit_write_failures.clone(),
        );
        RouterMetrics {
            registry,
            egress,
            governance,
            audit_write_failures,
            audit_suppressed,
            policy_reloads,
        }
    }
}

impl RouterMetrics {
    /// Counts an egress decision.
    pub fn egress(&self, outcome: &str, reason: &str) {
        self.egress
            .get_or_create(&EgressLabels {
                outcome: outcome.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a refusal record the audit throttle held back.
    pub fn audit_suppressed(&self, reason: &str) {
        self.audit_suppressed
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
