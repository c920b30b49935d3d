//! Prune: delete what left Git — only objects from the inventory of the last sync, only when
//! they still carry our ownership labels, never those annotated `gitops.kars.io/prune: disabled`,
//! namespaces last and only when nothing foreign lives in them. An object leaves the inventory
//! only once its deletion is confirmed (a refused or pending delete keeps it there). A sync that
//! would delete an unusual share of the inventory stops and reports instead, and a render that
//! comes out empty never deletes everything unless the repository opts in (signed, in kars.yaml).

use std::collections::{BTreeMap, BTreeSet};

use kars_contract::Reason;
use kars_contract::labels::{
    MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION, PRUNE_ANNOTATION, REPOSITORY_LABEL,
};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use kube::discovery::{Discovery, Scope};

use crate::cluster::{Cluster, gvk, is_not_found};
use crate::progress::{Event, Progress};
use crate::status::{InventoryEntry, PruneSpec};

/// Pruning settings for one sync.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// Prune at all.
    pub enabled: bool,
    /// Refuse when deleting more than this share (percent) of the inventory …
    pub max_delete_percent: u32,
    /// … and more than this many objects (small inventories are not held back).
    pub min_objects_for_threshold: usize,
    /// The threshold is waived for this sync.
    pub allow_mass_prune: bool,
    /// The repository opted in (signed) to an empty render deleting everything.
    pub allow_empty: bool,
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            enabled: true,
            max_delete_percent: 30,
            min_objects_for_threshold: 5,
            allow_mass_prune: false,
            allow_empty: false,
        }
    }
}

impl PruneOptions {
    /// These options with the PolicyRepo's `spec.prune` applied: it can only make pruning more
    /// careful (switch it off, lower the threshold), never loosen what the agent was started
    /// with.
    pub fn tightened_by(&self, spec: Option<&PruneSpec>) -> PruneOptions {
        let mut opts = self.clone();
        if let Some(p) = spec {
            if let Some(enabled) = p.enabled {
                opts.enabled = opts.enabled && enabled;
            }
            if let Some(max) = p.max_delete_percent {
                opts.max_delete_percent = opts.max_delete_percent.min(max);
            }
        }
        opts
    }
}

/// Why pruning was held back (nothing is deleted; the sync reports it).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PruneRefusal {
    /// Too large a share of the inventory would be deleted.
    #[error(
        "this sync would delete {deleting} of {inventory} objects ({percent}%), over the {max}% threshold; nothing was deleted. If intended, approve it once: kars sync --allow-mass-prune, or set spec.allowMassPruneFor: <commit> on the PolicyRepo"
    )]
    Threshold {
        /// Objects to delete.
        deleting: usize,
        /// Inventory size.
        inventory: usize,
        /// Share.
        percent: usize,
        /// Threshold.
        max: u32,
    },
    /// The render is empty while objects are applied.
    #[error(
        "the rendered set is empty but {inventory} objects are applied; refusing to delete everything. To really remove all, set spec.prune.allowEmpty: true in kars.yaml in a signed commit"
    )]
    EmptyRender {
        /// Inventory size.
        inventory: usize,
    },
}

impl PruneRefusal {
    /// The reason word.
    pub fn reason(&self) -> Reason {
        match self {
            PruneRefusal::Threshold { .. } => Reason::PruneThresholdExceeded,
            PruneRefusal::EmptyRender { .. } => Reason::EmptyRenderRefused,
        }
    }
}

/// Decides what to delete: inventory entries no longer rendered. Pure.
pub fn plan(
    inventory: &[InventoryEntry],
    rendered: &[InventoryEntry],
    opts: &PruneOptions,
) -> Result<Vec<InventoryEntry>, PruneRefusal> {
    if !opts.enabled {
        return Ok(Vec::new());
    }
    let keep: BTreeSet<&InventoryEntry> = rendered.iter().collect();
    // Same object under another apiVersion (e.g. v1beta1 → v1) is not deleted.
    let keep_keys: BTreeSet<String> = rendered.iter().map(InventoryEntry::key).collect();
    let mut delete: Vec<InventoryEntry> = inventory
        .iter()
        .filter(|e| !keep.contains(e) && !keep_keys.contains(&e.key()))
        .cloned()
        .collect();
    delete.sort();
    delete.dedup();
    if delete.is_empty() {
        return Ok(delete);
    }
    if rendered.is_empty() && !opts.allow_empty {
        return Err(PruneRefusal::EmptyRender {
            inventory: inventory.len(),
        });
    }
    let percent = delete.len() * 100 / inventory.len().max(1);
    if !opts.allow_mass_prune
        && delete.len() > opts.min_objects_for_threshold
        && percent > opts.max_delete_percent as usize
    {
        return Err(PruneRefusal::Threshold {
            deleting: delete.len(),
            inventory: inventory.len(),
            percent,
            max: opts.max_delete_percent,
        });
    }
    // Deletion order: workloads before what they use, namespaces last.
    delete.sort_by_key(|e| (deletion_rank(&e.kind), e.clone()));
    Ok(delete)
}

fn deletion_rank(kind: &str) -> u8 {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" => 0,
        "Service" => 1,
        "ConfigMap" | "Secret" | "NetworkPolicy" => 3,
        "ServiceAccount" | "Role" | "RoleBinding" | "ClusterRole" | "ClusterRoleBinding" => 4,
        "CustomResourceDefinition" => 6,
        "Namespace" => 7,
        _ => 2,
    }
}

/// What happened to one entry.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "result", content = "message", rename_all = "camelCase")]
pub enum PruneResult {
    /// Deleted and confirmed gone.
    Deleted,
    /// Already gone.
    Gone,
    /// Delete accepted, still terminating (finalizers): stays in the inventory.
    Terminating,
    /// Would be deleted (dry run).
    WouldDelete,
    /// Left alone and dropped from the inventory: not ours, or prune disabled.
    Orphaned(String),
    /// Not deleted, stays in the inventory and is retried (e.g. a namespace with foreign objects).
    Kept(String),
    /// The API server refused; stays in the inventory.
    Failed(String),
}

impl PruneResult {
    /// The reason word when the entry could not be deleted (and stays in the inventory).
    pub fn failure_reason(&self) -> Option<Reason> {
        matches!(self, PruneResult::Failed(_) | PruneResult::Kept(_)).then_some(Reason::PruneFailed)
    }

    /// True when the entry leaves the inventory.
    pub fn leaves_inventory(&self) -> bool {
        matches!(
            self,
            PruneResult::Deleted | PruneResult::Gone | PruneResult::Orphaned(_)
        )
    }
}

/// Deletes the planned entries. `stop` is checked between objects (graceful shutdown never
/// leaves a half-deleted object; the rest stays in the inventory for the next sync).
#[allow(clippy::too_many_arguments)]
pub async fn execute(
    cluster: &Cluster,
    repository: &str,
    owner: &str,
    planned: &[InventoryEntry],
    dry_run: bool,
    progress: &Progress,
    stop: &(dyn Fn() -> bool + Sync),
) -> Result<Vec<(InventoryEntry, PruneResult)>, kube::Error> {
    let mut out = Vec::new();
    let mut discovery: Option<Discovery> = None;
    let total = planned.len();
    for (done, e) in planned.iter().enumerate() {
        if stop() {
            break;
        }
        progress.emit(Event::Pruned { done, total });
        let result = prune_one(cluster, repository, owner, e, dry_run, &mut discovery).await?;
        tracing::info!(object = %e.key(), ?result, "prune");
        out.push((e.clone(), result));
    }
    progress.emit(Event::Pruned {
        done: out.len(),
        total,
    });
    Ok(out)
}

fn owned_by(obj: &DynamicObject, repository: &str) -> bool {
    let labels = obj.metadata.labels.clone().unwrap_or_default();
    labels.get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
        && labels.get(REPOSITORY_LABEL).map(String::as_str) == Some(repository)
}

async fn prune_one(
    cluster: &Cluster,
    repository: &str,
    owner: &str,
    e: &InventoryEntry,
    dry_run: bool,
    discovery: &mut Option<Discovery>,
) -> Result<PruneResult, kube::Error> {
    let (ar, namespaced) = match cluster.resource(&gvk(&e.api_version, &e.kind)).await {
        Ok(r) => r,
        Err(err) if is_not_found(&err) => return Ok(PruneResult::Gone),
        Err(err) => return Err(err),
    };
    let api: Api<DynamicObject> = match (&e.namespace, namespaced) {
        (Some(ns), true) => Api::namespaced_with(cluster.client().clone(), ns, &ar),
        _ => Api::all_with(cluster.client().clone(), &ar),
    };
    let Some(live) = api.get_opt(&e.name).await? else {
        return Ok(PruneResult::Gone);
    };
    if !owned_by(&live, repository) {
        return Ok(PruneResult::Orphaned(format!(
            "not deleted: it no longer carries the labels {MANAGED_BY_LABEL}={MANAGED_BY}, {REPOSITORY_LABEL}={repository}"
        )));
    }
    let annotations = live.metadata.annotations.clone().unwrap_or_default();
    if let Some(theirs) = annotations.get(OWNER_ANNOTATION)
        && theirs != owner
    {
        return Ok(PruneResult::Orphaned(format!(
            "not deleted: it belongs to PolicyRepo {theirs} now"
        )));
    }
    if annotations.get(PRUNE_ANNOTATION).map(String::as_str) == Some("disabled") {
        return Ok(PruneResult::Orphaned(format!(
            "not deleted: annotated {PRUNE_ANNOTATION}: disabled"
        )));
    }
    if live.metadata.deletion_timestamp.is_some() {
        return Ok(PruneResult::Terminating);
    }
    if e.kind == "Namespace" && e.api_version == "v1" {
        let foreign = foreign_objects(cluster.client(), repository, &e.name, discovery).await?;
        if !foreign.is_empty() {
            return Ok(PruneResult::Kept(format!(
                "namespace still holds objects kars GitOps does not own: {}; delete or move them, then the next sync deletes the namespace",
                foreign
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    }
    if dry_run {
        return Ok(PruneResult::WouldDelete);
    }
    match api.delete(&e.name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(PruneResult::Gone),
        Err(kube::Error::Api(s)) => {
            return Ok(PruneResult::Failed(format!("{} ({})", s.message, s.reason)));
        }
        Err(err) => return Err(err),
    }
    // Confirm: gone now, or still terminating (stays in the inventory until it is gone).
    for _ in 0..10 {
        match api.get_opt(&e.name).await? {
            None => return Ok(PruneResult::Deleted),
            Some(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    Ok(PruneResult::Terminating)
}

/// Objects in `namespace` that are neither ours, nor owned by another object (ReplicaSets,
/// Pods, EndpointSlices …), nor created by Kubernetes itself.
async fn foreign_objects(
    client: &kube::Client,
    repository: &str,
    namespace: &str,
    discovery: &mut Option<Discovery>,
) -> Result<Vec<String>, kube::Error> {
    if discovery.is_none() {
        *discovery = Some(Discovery::new(client.clone()).run().await?);
    }
    let Some(d) = discovery.as_ref() else {
        return Ok(Vec::new());
    };
    let mut seen_kinds: BTreeMap<String, ()> = BTreeMap::new();
    let mut foreign = Vec::new();
    for group in d.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(kube::discovery::verbs::LIST)
            {
                continue;
            }
            if matches!(
                ar.kind.as_str(),
                "Event" | "Endpoints" | "EndpointSlice" | "Lease" | "PodMetrics"
            ) || ar.group == "events.k8s.io"
            {
                continue;
            }
            if seen_kinds
                .insert(format!("{}/{}", ar.group, ar.kind), ())
                .is_some()
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ar);
            let list = match api.list(&ListParams::default().limit(200)).await {
                Ok(l) => l,
                Err(kube::Error::Api(s)) if matches!(s.code, 403..=405) => continue,
                Err(e) => return Err(e),
            };
            for item in list.items {
                let name = item.metadata.name.clone().unwrap_or_default();
                let auto = matches!(
                    (ar.kind.as_str(), name.as_str()),
                    ("ServiceAccount", "default") | ("ConfigMap", "kube-root-ca.crt")
                );
                let derived = item
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| !o.is_empty());
                if !auto && !derived && !owned_by(&item, repository) {
                    foreign.push(format!("{}/{name}", ar.kind));
                }
            }
        }
    }
    Ok(foreign)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(kind: &str, ns: Option<&str>, name: &str) -> InventoryEntry {
        InventoryEntry {
            api_version: if kind == "Deployment" {
                "apps/v1".into()
            } else {
                "v1".into()
            },
            kind: kind.into(),
            namespace: ns.map(str::to_string),
            name: name.into(),
        }
    }

    #[test]
    fn only_inventory_objects_that_left_git_are_planned_namespaces_last() {
        let inv = vec![
            e("Namespace", None, "kars-a"),
            e("ConfigMap", Some("kars-a"), "c"),
            e("Deployment", Some("kars-a"), "a"),
            e("ConfigMap", Some("x"), "keep"),
        ];
        let rendered = vec![
            e("ConfigMap", Some("x"), "keep"),
            e("ConfigMap", Some("y"), "new"),
        ];
        let opts = PruneOptions {
            allow_mass_prune: true,
            ..PruneOptions::default()
        };
        let p = plan(&inv, &rendered, &opts).expect("plan");
        let kinds: Vec<&str> = p.iter().map(|x| x.kind.as_str()).collect();
        assert_eq!(kinds, vec!["Deployment", "ConfigMap", "Namespace"]);
    }

    #[test]
    fn threshold_and_empty_render_hold_back() {
        let inv: Vec<InventoryEntry> = (0..20)
            .map(|i| e("ConfigMap", Some("n"), &format!("c{i}")))
            .collect();
        let rendered: Vec<InventoryEntry> = inv[..10].to_vec();
        let r = plan(&inv, &rendered, &PruneOptions::default());
        assert!(
            matches!(
                r,
                Err(PruneRefusal::Threshold {
                    deleting: 10,
                    inventory: 20,
                    percent: 50,
                    max: 30
                })
            ),
            "{r:?}"
        );
        assert_eq!(
            plan(
                &inv,
                &rendered,
                &PruneOptions {
                    allow_mass_prune: true,
                    ..PruneOptions::default()
                }
            )
            .map(|p| p.len()),
            Ok(10)
        );
        // Small deletions pass even when they are a large share.
        let small: Vec<InventoryEntry> = inv[..4].to_vec();
        assert_eq!(
            plan(&small, &small[..1], &PruneOptions::default()).map(|p| p.len()),
            Ok(3)
        );
        // An empty render never deletes everything, even with the mass-prune override.
        let r = plan(
            &inv,
            &[],
            &PruneOptions {
                allow_mass_prune: true,
                ..PruneOptions::default()
            },
        );
        assert!(
            matches!(r, Err(PruneRefusal::EmptyRender { inventory: 20 })),
            "{r:?}"
        );
        assert_eq!(
            plan(
                &inv,
                &[],
                &PruneOptions {
                    allow_mass_prune: true,
                    allow_empty: true,
                    ..PruneOptions::default()
                }
            )
            .map(|p| p.len()),
            Ok(20)
        );
        assert_eq!(
            plan(
                &inv,
                &[],
                &PruneOptions {
                    enabled: false,
                    ..PruneOptions::default()
                }
            )
            .map(|p| p.len()),
            Ok(0)
        );
    }

    /// Regression: `spec.prune.maxDeletePercent` replaced the agent's threshold, so a
    /// PolicyRepo could loosen it although its documentation says it can only tighten it.
    #[test]
    fn the_policy_repo_spec_only_tightens_pruning() {
        let agent = PruneOptions {
            max_delete_percent: 30,
            ..PruneOptions::default()
        };
        let looser = PruneSpec {
            enabled: Some(true),
            max_delete_percent: Some(90),
        };
        assert_eq!(agent.tightened_by(Some(&looser)).max_delete_percent, 30);
        let tighter = PruneSpec {
            enabled: None,
            max_delete_percent: Some(10),
        };
        assert_eq!(agent.tightened_by(Some(&tighter)).max_delete_percent, 10);
        let off = PruneSpec {
            enabled: Some(false),
            max_delete_percent: None,
        };
        assert!(!agent.tightened_by(Some(&off)).enabled);
        let agent_off = PruneOptions {
            enabled: false,
            ..PruneOptions::default()
        };
        assert!(
            !agent_off.tightened_by(Some(&looser)).enabled,
            "the spec cannot switch on what the agent switched off"
        );
        assert_eq!(agent.tightened_by(None).max_delete_percent, 30);
    }

    #[test]
    fn api_version_change_is_not_a_deletion() {
        let mut old = e("Thing", Some("n"), "t");
        old.api_version = "example.com/v1beta1".into();
        let mut new = old.clone();
        new.api_version = "example.com/v1".into();
        assert_eq!(plan(&[old], &[new], &PruneOptions::default()), Ok(vec![]));
    }
}
