//! Prometheus metrics of the agent (text format on `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label: how a sync ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `success` or a failure reason.
    pub result: String,
}

/// Label: a verification failure reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Stable reason label.
    pub reason: String,
}

/// The agent's metrics.
pub struct Metrics {
    /// The registry they are in.
    pub registry: Registry,
    /// Sync duration, by result.
    pub sync_duration: Family<ResultLabel, Histogram>,
    /// Objects created or changed.
    pub objects_applied: Counter,
    /// Objects deleted by pruning.
    pub objects_pruned: Counter,
    /// Write requests sent to the API server.
    pub write_requests: Counter,
    /// Verification failures, by reason.
    pub verification_failures: Family<ReasonLabel, Counter>,
    /// Unix time of the last successful apply.
    pub last_applied_timestamp: Gauge<f64, AtomicU64>,
    /// Signed-bundle references that did not verify in a sync, by reason.
    pub bundle_failures: Family<ReasonLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kars_gitops");
        let sync_duration = Family::<ResultLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0])
        });
        let objects_applied = Counter::default();
        let objects_pruned = Counter::default();
        let write_requests = Counter::default();
        let verification_failures = Family::<ReasonLabel, Counter>::default();
        let last_applied_timestamp = Gauge::<f64, AtomicU64>::default();
        let bundle_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "bundle_failures",
            "Signed-bundle references that did not verify, per sync",
            bundle_failures.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Duration of a sync (fetch to status)",
            sync_duration.clone(),
        );
        registry.register(
            "objects_applied",
            "Objects created or changed",
            objects_applied.clone(),
        );
        registry.register(
            "objects_pruned",
            "Objects deleted because they left Git",
            objects_pruned.clone(),
        );
        registry.register(
            "write_requests",
            "Write requests sent to the API server",
            write_requests.clone(),
        );
        registry.register(
            "verification_failures",
            "Ranges refused by signature verification",
            verification_failures.clone(),
        );
        registry.register(
            "last_applied_timestamp_seconds",
            "Unix time of the last successful apply",
            last_applied_timestamp.clone(),
        );
        Metrics {
            registry,
            sync_duration,
            objects_applied,
            objects_pruned,
            write_requests,
            verification_failures,
            last_applied_timestamp,
            bundle_failures,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
