//! `kars status`: what is applied, from which commit, signed by whom, and what failed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kars_gitops_agent::status::{DEFAULT_NAMESPACE, PolicyRepo};
use kube::api::{Api, ListParams};

use crate::Failure;

/// Arguments of `kars status`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// PolicyRepo name (default: every PolicyRepo in the namespace).
    name: Option<String>,
    /// Namespace of the PolicyRepo objects.
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    namespace: String,
    /// Kubeconfig (default: $KUBECONFIG, ~/.kube/config or in-cluster).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `kars status`. Exit 0 when every PolicyRepo is Ready, 1 otherwise.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let client = super::connect(args.kubeconfig.as_deref()).await?;
        let api: Api<PolicyRepo> = Api::namespaced(client, &args.namespace);
        let items: Vec<PolicyRepo> = match &args.name {
            Some(n) => vec![
                api.get(n)
                    .await
                    .with_context(|| format!("PolicyRepo {}/{n}", args.namespace))
                    .map_err(Failure::usage)?,
            ],
            None => {
                api.list(&ListParams::default())
                    .await
                    .context("listing PolicyRepos (is the PolicyRepo CRD installed?)")
                    .map_err(Failure::usage)?
                    .items
            }
        };
        if args.json {
            crate::outln!("{}", serde_json::to_string_pretty(&items)?);
        }
        let mut all_ready = !items.is_empty();
        for pr in &items {
            let name = pr.metadata.name.clone().unwrap_or_default();
            let st = pr.status.clone().unwrap_or_default();
            let ready = st.conditions.iter().find(|c| c.type_ == "Ready");
            all_ready &= ready.is_some_and(|c| c.status == "True");
            if args.json {
                continue;
            }
            crate::outln!(
                "PolicyRepo {}/{name}  source {}{}",
                args.namespace,
                pr.spec.url,
                if pr.spec.suspend { "  (SUSPENDED)" } else { "" }
            );
            crate::outln!(
                "  applied:  {} at {} signed by {}",
                st.last_applied_revision
                    .as_deref()
                    .unwrap_or("(nothing yet)"),
                st.last_applied_at.as_deref().unwrap_or("-"),
                if st.last_applied_signers.is_empty() {
                    "-".to_string()
                } else {
                    st.last_applied_signers.join(", ")
                }
            );
            if st.last_fetched_revision != st.last_applied_revision {
                crate::outln!(
                    "  fetched:  {} (not applied yet)",
                    st.last_fetched_revision.as_deref().unwrap_or("-")
                );
            }
            if let Some(c) = &st.counts {
                crate::outln!(
                    "  objects:  {} rendered, {} in inventory; last sync {} applied, {} unchanged, {} pruned, {} failed, {} writes",
                    c.rendered,
                    st.inventory.len(),
                    c.applied,
                    c.unchanged,
                    c.pruned,
                    c.failed,
                    c.writes
                );
            }
            for c in &st.conditions {
                crate::outln!(
                    "  {:<12} {:<7} {:<26} {}",
                    c.type_,
                    c.status,
                    c.reason,
                    c.message
                );
            }
            for f in &st.failures {
                crate::outln!(
                    "  FAILED {} [{}] {}{}",
                    f.object,
                    f.reason,
                    f.message,
                    if f.source.is_empty() {
                        String::new()
                    } else {
                        format!(" (from {})", f.source)
                    }
                );
            }
        }
        if items.is_empty() {
            eprintln!(
                "no PolicyRepo in namespace {} (kars sync or the agent creates one)",
                args.namespace
            );
        }
        Ok(if all_ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}
