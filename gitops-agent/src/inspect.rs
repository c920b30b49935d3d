//! Read-only views for `kars diff`, `kars status` and `kars why`: the verified, rendered head
//! next to what the cluster holds and what the PolicyRepo status says — without writing.

use kars_renderer::{Rendered, RenderedObject};
use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::Value;

use crate::apply::{first_difference, is_subset, project};
use crate::status::{InventoryEntry, PolicyRepo};
use crate::sync::{SyncConfig, SyncError, prepare, render, resolve_source, verify};
use crate::verify::RangeVerdict;

/// One rendered object next to its live copy.
#[derive(Clone, Debug)]
pub struct ObjectView {
    /// The rendered object.
    pub rendered: RenderedObject,
    /// The live object, if it exists.
    pub live: Option<Value>,
    /// True when a sync would send nothing for it.
    pub in_sync: bool,
    /// The first field that differs.
    pub difference: Option<String>,
}

/// The whole picture.
pub struct Inspection {
    /// The PolicyRepo, if one exists.
    pub policy_repo: Option<PolicyRepo>,
    /// The head commit of the source.
    pub head: String,
    /// Verification of `last applied..head` (`Err` when it fails).
    pub verification: Result<RangeVerdict, String>,
    /// The render of the head (`Err` when it cannot be rendered or did not verify).
    pub rendered: Result<Rendered, String>,
    /// Rendered objects and their live copies.
    pub objects: Vec<ObjectView>,
    /// Inventory entries a sync would delete (no longer rendered).
    pub to_prune: Vec<InventoryEntry>,
}

/// Builds the picture. Verification failures and render errors are part of the result, not
/// errors: they are what `kars why` explains.
pub async fn inspect(client: &kube::Client, cfg: &SyncConfig) -> Result<Inspection, SyncError> {
    let prs: Api<PolicyRepo> = Api::namespaced(client.clone(), &cfg.status_namespace);
    let policy_repo = match prs.get_opt(&cfg.name).await {
        Ok(p) => p,
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => return Err(SyncError::Status(cfg.name.clone(), e)),
    };
    let since = cfg.since_override.clone().or_else(|| {
        policy_repo
            .as_ref()
            .and_then(|p| p.status.as_ref())
            .and_then(|s| s.last_applied_revision.clone())
    });
    let owned = cfg.clone();
    let prefix = cfg.trust.approval_tag_prefix.clone();
    let (path, head, _) = tokio::task::spawn_blocking(move || resolve_source(&owned, &prefix))
        .await
        .map_err(|e| {
            SyncError::Source(crate::source::GitSourceError::Object {
                id: cfg.source.clone(),
                message: e.to_string(),
            })
        })??;
    let trust = cfg.trust.clone();
    let cluster = cfg.cluster.clone();
    let (verification, prepared) = tokio::task::spawn_blocking(move || {
        let verification = match verify(&path, head, since.as_deref(), &trust) {
            Ok(v) if v.ok() => Ok(v),
            Ok(v) => Err(v.first_problem().unwrap_or_default()),
            Err(e) => Err(e.to_string()),
        };
        let prepared = match &verification {
            Ok(_) => prepare(&path, head, cluster.as_deref()).map_err(|e| e.to_string()),
            Err(_) => Err("not rendered: verification failed".to_string()),
        };
        (verification, prepared)
    })
    .await
    .map_err(|e| {
        SyncError::Source(crate::source::GitSourceError::Object {
            id: head.to_string(),
            message: e.to_string(),
        })
    })?;
    let rendered = match prepared {
        Ok(p) => {
            let previous = policy_repo
                .as_ref()
                .and_then(|p| p.status.as_ref())
                .map(|s| s.bundles.clone())
                .unwrap_or_default();
            let (bundles, _) = cfg.bundles.resolve(&p.bundle_uses(), &previous).await;
            render(&p, head, &bundles).map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    let mut objects = Vec::new();
    let mut to_prune = Vec::new();
    if let Ok(r) = &rendered {
        let applier = crate::apply::Applier::new(client.clone(), cfg.apply.clone());
        for o in &r.objects {
            let live = live_object(&applier, o).await?;
            let (in_sync, difference) = match &live {
                None => (false, Some("does not exist".to_string())),
                Some(l) => {
                    let digest_equal = l["metadata"]["annotations"]
                        [kars_renderer::render::OBJECT_DIGEST_ANNOTATION]
                        == o.manifest["metadata"]["annotations"]
                            [kars_renderer::render::OBJECT_DIGEST_ANNOTATION];
                    let subset = is_subset(&o.manifest, l);
                    (digest_equal && subset, first_difference(&o.manifest, l))
                }
            };
            objects.push(ObjectView {
                rendered: o.clone(),
                live,
                in_sync,
                difference,
            });
        }
        let rendered_keys: std::collections::BTreeSet<String> =
            r.objects.iter().map(RenderedObject::key).collect();
        // While objects are held back (unverified bundles) a sync prunes nothing.
        if let Some(st) = policy_repo.as_ref().and_then(|p| p.status.as_ref())
            && r.held_back.is_empty()
        {
            to_prune = st
                .inventory
                .iter()
                .filter_map(|s| InventoryEntry::parse(s))
                .filter(|e| !rendered_keys.contains(&e.key()))
                .collect();
        }
    }
    Ok(Inspection {
        policy_repo,
        head: head.to_string(),
        verification,
        rendered,
        objects,
        to_prune,
    })
}

async fn live_object(
    applier: &crate::apply::Applier,
    o: &RenderedObject,
) -> Result<Option<Value>, SyncError> {
    let (group, version) = match o.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", o.api_version()),
    };
    let (ar, namespaced) = match applier
        .resource(&GroupVersionKind::gvk(group, version, o.kind()))
        .await
    {
        Ok(r) => r,
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
        Err(e) => return Err(SyncError::Apply(crate::apply::ApplyError::Kube(e))),
    };
    let api: Api<DynamicObject> = match (o.namespace(), namespaced) {
        (Some(ns), true) => Api::namespaced_with(applier.client().clone(), ns, &ar),
        _ => Api::all_with(applier.client().clone(), &ar),
    };
    match api.get_opt(o.name()).await {
        Ok(Some(live)) => {
            let mut v = serde_json::to_value(&live).unwrap_or(Value::Null);
            v["apiVersion"] = serde_json::json!(ar.api_version);
            v["kind"] = serde_json::json!(ar.kind);
            Ok(Some(v))
        }
        Ok(None) => Ok(None),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(SyncError::Apply(crate::apply::ApplyError::Kube(e))),
    }
}

/// `live` projected onto the fields of `rendered` (for diffs).
pub fn comparable_live(rendered: &Value, live: &Value) -> Value {
    project(rendered, live)
}
