//! Read-only views for `kars diff` and `kars why`: the verified, rendered head (through the
//! sync's own pipeline steps, [`crate::sync::pipeline`]) next to what the cluster holds and
//! what the PolicyRepo status says — without writing.

use kars_contract::labels::OBJECT_DIGEST_ANNOTATION;
use kars_renderer::{Rendered, RenderedObject};
use kube::api::Api;
use serde_json::Value;

use crate::cluster::{Cluster, Ownership, is_not_found, ownership};
use crate::compare::{first_difference, is_subset, project};
use crate::status::{InventoryEntry, PolicyRepo};
use crate::sync::pipeline::{Front, bundles_and_render, front_task};
use crate::sync::{SyncConfig, SyncError};
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
    /// Who owns the live object when it is not this PolicyRepo (a sync refuses it).
    pub foreign: Option<String>,
}

/// The whole picture.
pub struct Inspection {
    /// The PolicyRepo, if one exists.
    pub policy_repo: Option<PolicyRepo>,
    /// The head commit of the source.
    pub head: String,
    /// Verification of `last applied..head` (`Err` when it fails).
    pub verification: Result<RangeVerdict, String>,
    /// The verdict on every commit of the range, when verification ran (also when it failed).
    pub verdict: Option<RangeVerdict>,
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
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(SyncError::Status(cfg.owner(), e)),
    };
    let status = policy_repo
        .as_ref()
        .and_then(|p| p.status.clone())
        .unwrap_or_default();
    let since = cfg
        .since_override
        .clone()
        .or_else(|| status.last_applied_revision.clone());
    let Front {
        fetched,
        verification,
        prepared,
        stopped,
        ..
    } = front_task(cfg, since, None).await?;
    let stopped = stopped.map(|s| s.error);
    let Some(fetched) = fetched else {
        return Err(stopped.unwrap_or(SyncError::Crashed {
            step: "source",
            message: "no head and no error".into(),
        }));
    };
    let head = fetched.head.to_string();
    let verdict = verification.clone();
    let verification = match verification {
        Some(v) if v.ok() => Ok(v),
        Some(v) => Err(v.first_problem().unwrap_or_default()),
        None => Err(stopped
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()),
    };
    let rendered = match (prepared, &verification) {
        (Some(p), Ok(_)) => {
            let (_, _, r) = bundles_and_render(p, &head, &cfg.bundles, &status.bundles).await;
            r.map(|mut r| {
                crate::sync::pipeline::stamp_owner(&mut r, &cfg.owner());
                r
            })
            .map_err(|e| e.to_string())
        }
        (None, Ok(_)) => Err(stopped.map(|e| e.to_string()).unwrap_or_default()),
        (_, Err(_)) => Err("not rendered: verification failed".to_string()),
    };
    let mut objects = Vec::new();
    let mut to_prune = Vec::new();
    if let Ok(r) = &rendered {
        let cluster = Cluster::new(client.clone());
        for o in &r.objects {
            let live = cluster
                .get_rendered(o)
                .await
                .map_err(|e| SyncError::Apply(crate::apply::ApplyError::Kube(e)))?;
            let foreign = match live.as_ref().map(|l| ownership(l, r, Some(&cfg.owner()))) {
                Some(Ownership::Foreign(owner)) => Some(owner),
                _ => None,
            };
            let (in_sync, difference) = match &live {
                _ if foreign.is_some() => (false, Some("owned by another PolicyRepo".to_string())),
                None => (false, Some("does not exist".to_string())),
                Some(l) => {
                    let digest_equal = l["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION]
                        == o.manifest["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION];
                    (
                        digest_equal && is_subset(&o.manifest, l),
                        first_difference(&o.manifest, l),
                    )
                }
            };
            objects.push(ObjectView {
                rendered: o.clone(),
                live,
                in_sync,
                difference,
                foreign,
            });
        }
        let rendered_keys: std::collections::BTreeSet<String> =
            r.objects.iter().map(RenderedObject::key).collect();
        // While objects are held back (unverified bundles) a sync prunes nothing.
        if policy_repo.is_some() && r.held_back.is_empty() {
            to_prune = crate::sync::pipeline::old_inventory(&status)
                .into_iter()
                .filter(|e| !rendered_keys.contains(&e.key()))
                .collect();
        }
    }
    Ok(Inspection {
        policy_repo,
        head,
        verification,
        verdict,
        rendered,
        objects,
        to_prune,
    })
}

/// `live` projected onto the fields of `rendered` (for diffs).
pub fn comparable_live(rendered: &Value, live: &Value) -> Value {
    project(rendered, live)
}

/// The unified diff of `o`'s live copy (projected onto the rendered fields; empty when it does
/// not exist) against the rendered object, headed `live/<key>` and `<label>/<key>`.
pub fn unified_diff(o: &ObjectView, label: &str) -> String {
    use kars_renderer::output::object_yaml;
    let new = object_yaml(&o.rendered.manifest).unwrap_or_default();
    let old = o
        .live
        .as_ref()
        .map(|l| object_yaml(&comparable_live(&o.rendered.manifest, l)).unwrap_or_default())
        .unwrap_or_default();
    similar::TextDiff::from_lines(&old, &new)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("live/{}", o.rendered.key()),
            &format!("{label}/{}", o.rendered.key()),
        )
        .to_string()
}
