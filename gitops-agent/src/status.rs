//! Status: our own `PolicyRepo` CRD (`gitops.kars.io/v1alpha1`), one object per policy
//! repository and cluster. The spec holds the few knobs people change at run time (suspend,
//! prune settings, a one-time mass-prune override); the status says what is applied, from which
//! commit, signed by whom, the inventory used for pruning, and every failure with its object and
//! reason. Conditions: SourceReady, Verified, Rendered, Applied, Healthy and a summary Ready.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as K8sCondition, Time};
use kube::CustomResource;
use kube::api::{Api, Patch, PatchParams, PostParams};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition types of a PolicyRepo, in the order a sync sets them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// The branch head could be read.
    SourceReady,
    /// Every new commit verified.
    Verified,
    /// The head rendered.
    Rendered,
    /// Every signed-bundle reference verified.
    BundlesVerified,
    /// Every object applied and pruning done.
    Applied,
    /// The applied objects are ready.
    Healthy,
    /// Every running router reports the rendered policies.
    Enforced,
    /// The summary: the cluster matches the verified head and enforces it.
    Ready,
}

impl Condition {
    /// The condition type as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::SourceReady => "SourceReady",
            Condition::Verified => "Verified",
            Condition::Rendered => "Rendered",
            Condition::BundlesVerified => "BundlesVerified",
            Condition::Applied => "Applied",
            Condition::Healthy => "Healthy",
            Condition::Enforced => "Enforced",
            Condition::Ready => "Ready",
        }
    }
}

/// The namespace the agent and the CLI keep PolicyRepo objects in by default.
pub const DEFAULT_NAMESPACE: &str = "kars-gitops-system";
/// Field manager for status writes.
pub const STATUS_MANAGER: &str = "kars-gitops-status";

/// What to reconcile and how.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "gitops.kars.io",
    version = "v1alpha1",
    kind = "PolicyRepo",
    namespaced,
    status = "PolicyRepoStatus",
    shortname = "prepo",
    printcolumn = r#"{"name":"Applied","type":"string","jsonPath":".status.lastAppliedRevision"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRepoSpec {
    /// The Git URL (`https://`, `ssh://`, `file://`) or local path of the policy repository.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Branch to follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    /// Cluster of `kars.yaml` this agent renders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Stop syncing (the cluster keeps its current state).
    #[serde(default)]
    pub suspend: bool,
    /// Pruning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<PruneSpec>,
    /// One-time override of the prune threshold: the commit id whose mass deletion is approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_mass_prune_for: Option<String>,
}

/// Pruning settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PruneSpec {
    /// Delete objects that left Git (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Stop and report instead of deleting when a sync would delete more than this share of
    /// the inventory (percent, default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delete_percent: Option<u32>,
}

/// One object that could not be applied, pruned or made healthy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectFailure {
    /// `kind/namespace/name`.
    pub object: String,
    /// Repository file it comes from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// Stable reason (`ApplyFailed`, `Conflict`, `PruneFailed`, `Unhealthy`, …).
    pub reason: String,
    /// What happened.
    pub message: String,
}

impl ObjectFailure {
    /// A failure of `object` (from repository file `source`, empty when none) for `reason`.
    pub fn new(
        object: impl Into<String>,
        source: impl Into<String>,
        reason: kars_contract::Reason,
        message: impl Into<String>,
    ) -> Self {
        ObjectFailure {
            object: object.into(),
            source: source.into(),
            reason: reason.as_str().to_string(),
            message: message.into(),
        }
    }
}

/// What is applied and how it went.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRepoStatus {
    /// SourceReady, Verified, Rendered, Applied, Healthy, Ready.
    #[serde(default)]
    pub conditions: Vec<K8sCondition>,
    /// Generation of the spec last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Head commit seen at the last fetch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_fetched_revision: Option<String>,
    /// Last commit whose whole range verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified_revision: Option<String>,
    /// Last commit fully applied (the next sync verifies from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_revision: Option<String>,
    /// Who signed the commits applied last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_applied_signers: Vec<String>,
    /// When the last apply finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_applied_at: Option<String>,
    /// Digest of the rendered set last applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rendered_digest: Option<String>,
    /// Every object applied by the last successful sync, `apiVersion|kind|namespace|name`
    /// (namespace empty for cluster-scoped objects). Pruning deletes only from this list.
    #[serde(default)]
    pub inventory: Vec<String>,
    /// Counts of the last sync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<SyncCounts>,
    /// Failures of the last sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<ObjectFailure>,
    /// Every signed-bundle reference of the rendered commit and the bundle in use for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bundles: Vec<BundleStatus>,
    /// The value of the `gitops.kars.io/reconcile-requested-at` annotation the last sync
    /// handled (`kars reconcile --wait` waits for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// Every SRE action decided on (run, refused, expired, rejected): the ledger that keeps
    /// each one from running twice.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sre_actions: Vec<crate::sre::ledger::SreRecord>,
    /// Fields the applied commit sets that this version accepts and does not enforce (the
    /// first [`UNENFORCED_LISTED`]; `kars validate` lists them all), as `kars validate` warns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unenforced_fields: Vec<UnenforcedField>,
    /// How many such fields there are in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unenforced_field_count: Option<u32>,
}

/// How many unenforced fields the status lists (the count covers all of them).
pub const UNENFORCED_LISTED: usize = 50;

/// One field accepted and not enforced by this version (see docs/feature-maturity.md).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UnenforcedField {
    /// `file:line` in the repository.
    pub source: String,
    /// `kind/namespace/name`.
    pub object: String,
    /// The field, e.g. `spec.rateLimit`.
    pub field: String,
    /// `rendered only` or `not supported`.
    pub support: String,
    /// What happens instead.
    pub message: String,
}

/// One signed-bundle reference and what is projected for it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BundleStatus {
    /// The referencing object, `Kind/namespace/name`.
    pub object: String,
    /// The field, e.g. `spec.networkPolicy.allowlistRef`.
    pub field: String,
    /// The reference as written, `registry/repository@digest`.
    pub reference: String,
    /// The bundle in use, `registry/repository@digest`: the reference itself when it verified,
    /// else the last one that did (absent when none ever did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<String>,
    /// Why the reference did not verify (`SignerPolicyMismatch`, `OciPullError`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Details of the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Counts of one sync.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncCounts {
    /// Objects in the rendered set.
    pub rendered: u32,
    /// Objects created or changed.
    pub applied: u32,
    /// Objects unchanged (no request sent).
    pub unchanged: u32,
    /// Objects deleted by pruning.
    pub pruned: u32,
    /// Objects that failed.
    pub failed: u32,
    /// Write requests sent.
    pub writes: u32,
}

/// One inventory entry.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InventoryEntry {
    /// `apiVersion`.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// Namespace (`None` for cluster-scoped).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl InventoryEntry {
    /// Parses `apiVersion|kind|namespace|name`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('|');
        let (a, k, ns, n) = (it.next()?, it.next()?, it.next()?, it.next()?);
        if it.next().is_some() || a.is_empty() || k.is_empty() || n.is_empty() {
            return None;
        }
        Some(InventoryEntry {
            api_version: a.to_string(),
            kind: k.to_string(),
            namespace: (!ns.is_empty()).then(|| ns.to_string()),
            name: n.to_string(),
        })
    }

    /// `kind/namespace/name` (matches [`kars_renderer::RenderedObject::key`]).
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }
}

impl std::fmt::Display for InventoryEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}|{}|{}|{}",
            self.api_version,
            self.kind,
            self.namespace.as_deref().unwrap_or(""),
            self.name
        )
    }
}

/// The inventory entry of a rendered object.
pub fn entry_of(o: &kars_renderer::RenderedObject) -> InventoryEntry {
    InventoryEntry {
        api_version: o.api_version().to_string(),
        kind: o.kind().to_string(),
        namespace: o.namespace().map(str::to_string),
        name: o.name().to_string(),
    }
}

/// The current time as a Kubernetes `Time`.
pub fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Sets condition `type_` (keeps `lastTransitionTime` when the status does not change).
pub fn set_condition(
    conditions: &mut Vec<K8sCondition>,
    type_: Condition,
    ok: Option<bool>,
    reason: kars_contract::Reason,
    message: &str,
    generation: Option<i64>,
) {
    let (type_, reason) = (type_.as_str(), reason.as_str());
    let status = match ok {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let message: String = message.chars().take(4000).collect();
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status {
            c.last_transition_time = now();
        }
        c.status = status.to_string();
        c.reason = reason.to_string();
        c.message = message;
        c.observed_generation = generation;
    } else {
        conditions.push(K8sCondition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: now(),
        });
    }
}

/// Creates `namespace` when it does not exist.
pub async fn ensure_namespace(client: &kube::Client, namespace: &str) -> Result<(), kube::Error> {
    let ns_api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    if ns_api.get_opt(namespace).await?.is_none() {
        let ns: k8s_openapi::api::core::v1::Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": namespace, "labels": {"app.kubernetes.io/managed-by": "kars-gitops"}}
        }))
        .map_err(kube::Error::SerdeError)?;
        match ns_api.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The PolicyRepo `namespace/name`, `None` when it does not exist.
pub async fn get(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<PolicyRepo>, kube::Error> {
    let api: Api<PolicyRepo> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await
}

/// The PolicyRepo `namespace/name`, created (with its namespace) when missing.
pub async fn get_or_create(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    spec: PolicyRepoSpec,
) -> Result<PolicyRepo, kube::Error> {
    let api: Api<PolicyRepo> = Api::namespaced(client.clone(), namespace);
    if let Some(existing) = api.get_opt(name).await? {
        return Ok(existing);
    }
    ensure_namespace(client, namespace).await?;
    let mut obj = PolicyRepo::new(name, spec);
    obj.metadata.namespace = Some(namespace.to_string());
    match api.create(&PostParams::default(), &obj).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(s)) if s.code == 409 => api.get(name).await,
        Err(e) => Err(e),
    }
}

/// Writes the status: a merge patch of the status subresource (our own field manager) carrying
/// only the top-level fields that differ from `before` (a field gone is set to null), so a sync
/// that changed one object does not send an inventory of thousands again.
pub async fn write_status(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    before: &PolicyRepoStatus,
    after: &PolicyRepoStatus,
) -> Result<(), kube::Error> {
    let api: Api<PolicyRepo> = Api::namespaced(client.clone(), namespace);
    let changed = status_patch(
        &serde_json::to_value(before).map_err(kube::Error::SerdeError)?,
        &serde_json::to_value(after).map_err(kube::Error::SerdeError)?,
    );
    if changed.as_object().is_none_or(|m| m.is_empty()) {
        return Ok(());
    }
    let params = PatchParams {
        field_manager: Some(STATUS_MANAGER.to_string()),
        ..PatchParams::default()
    };
    api.patch_status(
        name,
        &params,
        &Patch::Merge(serde_json::json!({ "status": changed })),
    )
    .await?;
    Ok(())
}

/// The JSON merge patch turning the status `before` into `after`, top-level fields only.
fn status_patch(before: &serde_json::Value, after: &serde_json::Value) -> serde_json::Value {
    let empty = serde_json::Map::new();
    let (b, a) = (
        before.as_object().unwrap_or(&empty),
        after.as_object().unwrap_or(&empty),
    );
    let mut patch = serde_json::Map::new();
    for (k, v) in a {
        if b.get(k) != Some(v) {
            patch.insert(k.clone(), v.clone());
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            patch.insert(k.clone(), serde_json::Value::Null);
        }
    }
    serde_json::Value::Object(patch)
}

/// The CRD manifest of PolicyRepo (what `charts/` installs; a test keeps them equal).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(PolicyRepo::crd()).unwrap_or_default();
    kars_renderer::output::object_yaml(&crd).unwrap_or_default()
}

/// The condition of `type_`, if set.
pub fn condition(conditions: &[K8sCondition], type_: Condition) -> Option<&K8sCondition> {
    conditions.iter().find(|c| c.type_ == type_.as_str())
}

/// Groups failures for messages: reason → count.
pub fn failure_summary(failures: &[ObjectFailure]) -> String {
    let mut by: BTreeMap<&str, usize> = BTreeMap::new();
    for f in failures {
        *by.entry(f.reason.as_str()).or_default() += 1;
    }
    by.iter()
        .map(|(r, n)| format!("{n} {r}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_entries_round_trip() {
        for s in [
            "v1|ConfigMap|ns|a",
            "rbac.authorization.k8s.io/v1|ClusterRoleBinding||x",
        ] {
            let e = InventoryEntry::parse(s).expect("parse");
            assert_eq!(e.to_string(), s);
        }
        assert_eq!(
            InventoryEntry::parse("v1|ConfigMap|ns|a")
                .map(|e| e.key())
                .as_deref(),
            Some("ConfigMap/ns/a")
        );
        for bad in ["", "v1|ConfigMap", "v1|ConfigMap|ns|", "a|b|c|d|e"] {
            assert!(InventoryEntry::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn crd_in_the_chart_matches_the_rust_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../charts/kars-gitops/crds/policyrepos.gitops.kars.io.yaml");
        let generated = crd_yaml();
        if std::env::var_os("KARS_UPDATE_GOLDEN").is_some() {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).expect("mkdir");
            }
            std::fs::write(&path, &generated).expect("write");
        }
        let in_chart = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(
            in_chart, generated,
            "charts/ CRD is stale: cargo run -p kars-gitops-agent --bin kars-crdgen -- --write charts/kars-gitops/crds"
        );
    }

    #[test]
    fn conditions_keep_transition_time_when_unchanged() {
        let mut c = Vec::new();
        use kars_contract::Reason;
        set_condition(
            &mut c,
            Condition::Applied,
            Some(true),
            Reason::Applied,
            "ok",
            Some(1),
        );
        let t = c[0].last_transition_time.clone();
        set_condition(
            &mut c,
            Condition::Applied,
            Some(true),
            Reason::Applied,
            "still ok",
            Some(2),
        );
        assert_eq!(c[0].last_transition_time, t);
        assert_eq!(c[0].message, "still ok");
    }

    #[test]
    fn the_status_patch_carries_only_what_changed_and_clears_what_is_gone() {
        let before = serde_json::json!({"lastAppliedRevision": "a", "inventory": [{"kind": "ConfigMap"}], "failures": [{"object": "x"}]});
        let after =
            serde_json::json!({"lastAppliedRevision": "b", "inventory": [{"kind": "ConfigMap"}]});
        assert_eq!(
            status_patch(&before, &after),
            serde_json::json!({"lastAppliedRevision": "b", "failures": null})
        );
        assert_eq!(status_patch(&after, &after), serde_json::json!({}));
    }
}
