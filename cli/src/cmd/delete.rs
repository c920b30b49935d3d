//! `kars delete NAME [--prune]`: deletes a PolicyRepo. Without `--prune` the objects it applied
//! stay and are released (their owner annotation is removed, so another PolicyRepo may adopt
//! them); with `--prune` they are deleted first, with the sync's own safety rules (only objects
//! that still carry our labels and this owner, never those annotated
//! `gitops.kars.io/prune: disabled`, namespaces last and only when empty of foreign objects).

use std::process::ExitCode;

use kars_contract::labels::OWNER_ANNOTATION;
use kars_gitops_agent::cluster::{Cluster, gvk};
use kars_gitops_agent::prune::{self, PruneOptions, PruneResult};
use kars_gitops_agent::status::InventoryEntry;
use kube::api::{DeleteParams, Patch, PatchParams};

use super::policyrepo;
use crate::access::{self, ClusterArgs};
use crate::failure::{CHECK, Failure};
use crate::ui::{self, ProgressView};

/// Arguments of `kars delete`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The PolicyRepo.
    name: String,
    /// Also delete the objects it applied (default: keep and release them).
    #[arg(long)]
    prune: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `kars delete`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let at = access::connect(&args.cluster).await?;
        let pr = policyrepo::get(&at, &args.cluster, &args.name).await?;
        let owner = format!("{}/{}", args.cluster.namespace, args.name);
        let status = pr.status.clone().unwrap_or_default();
        let inventory: Vec<InventoryEntry> = status
            .inventory
            .iter()
            .filter_map(|s| InventoryEntry::parse(s))
            .collect();
        let repository = inventory_repository(&at, &inventory).await;
        let cluster = Cluster::new(at.client.clone());
        let mut kept = Vec::new();
        if args.prune {
            let opts = PruneOptions {
                allow_mass_prune: true,
                allow_empty: true,
                ..PruneOptions::default()
            };
            let planned =
                prune::plan(&inventory, &[], &opts).map_err(|e| Failure::msg(CHECK, e))?;
            let view = ProgressView::new();
            let results = prune::execute(
                &cluster,
                repository.as_deref().unwrap_or_default(),
                &owner,
                &planned,
                false,
                &view.sink(),
                &|| false,
            )
            .await
            .map_err(|e| access::explain(&e, "pruning", &at))?;
            view.finish();
            for (e, r) in &results {
                if !ui::get().machine() {
                    crate::outln!("{} {}", e.key(), describe(r));
                }
                // Terminating is on its way out; only what was refused or kept holds the
                // PolicyRepo (its inventory is the record of what is left).
                if matches!(r, PruneResult::Kept(_) | PruneResult::Failed(_)) {
                    kept.push(e.key());
                }
            }
        } else {
            for e in &inventory {
                release(&cluster, e, &owner)
                    .await
                    .map_err(|err| access::explain(&err, &format!("releasing {}", e.key()), &at))?;
            }
        }
        if !kept.is_empty() {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "{} object(s) could not be deleted, so PolicyRepo {owner} is kept (its inventory still lists them): {}",
                    kept.len(),
                    kept.join(", ")
                ),
            )
            .hint("see the lines above; run kars delete --prune again once they are gone"));
        }
        policyrepo::api(&at, Some(&args.cluster.namespace))
            .delete(&args.name, &DeleteParams::default())
            .await
            .map_err(|e| access::explain(&e, &format!("PolicyRepo {owner}"), &at))?;
        let what = if args.prune {
            "its objects were pruned".to_string()
        } else {
            format!(
                "its {} object(s) stay in the cluster, released (kars delete --prune deletes them)",
                inventory.len()
            )
        };
        if ui::get().machine() {
            ui::emit(
                &serde_json::json!({"deleted": owner, "pruned": args.prune, "objects": inventory.len()}),
            )?;
        } else {
            crate::outln!("PolicyRepo {owner} deleted; {what}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn describe(r: &PruneResult) -> String {
    match r {
        PruneResult::Deleted => "deleted".into(),
        PruneResult::Gone => "was already gone".into(),
        PruneResult::Terminating => "terminating".into(),
        PruneResult::WouldDelete => "would be deleted".into(),
        PruneResult::Orphaned(m) => format!("left in place: {m}"),
        PruneResult::Kept(m) | PruneResult::Failed(m) => format!("NOT deleted: {m}"),
    }
}

/// The repository label of the inventory's objects (pruning checks it on each).
async fn inventory_repository(
    at: &access::Connected,
    inventory: &[InventoryEntry],
) -> Option<String> {
    let cluster = Cluster::new(at.client.clone());
    for e in inventory.iter().filter(|e| e.kind != "Namespace") {
        if let Ok(Some(live)) = cluster
            .get(&e.api_version, &e.kind, e.namespace.as_deref(), &e.name)
            .await
            && let Some(r) =
                live["metadata"]["labels"][kars_contract::labels::REPOSITORY_LABEL].as_str()
        {
            return Some(r.to_string());
        }
    }
    None
}

/// Removes our owner annotation from one live object (when it is ours).
async fn release(cluster: &Cluster, e: &InventoryEntry, owner: &str) -> Result<(), kube::Error> {
    let Some(live) = cluster
        .get(&e.api_version, &e.kind, e.namespace.as_deref(), &e.name)
        .await?
    else {
        return Ok(());
    };
    if live["metadata"]["annotations"][OWNER_ANNOTATION].as_str() != Some(owner) {
        return Ok(());
    }
    let (ar, namespaced) = cluster.resource(&gvk(&e.api_version, &e.kind)).await?;
    let patch = serde_json::json!({"metadata": {"annotations": {OWNER_ANNOTATION: null}}});
    cluster
        .api(&ar, namespaced, e.namespace.as_deref())
        .patch(&e.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}
