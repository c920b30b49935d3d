//! `kars status [NAME]`: what is applied, from which commit, signed by whom, and what failed
//! — every condition and failure of each PolicyRepo. (`kars get` is the one-line-per-repo
//! table.) Exit 0 when every PolicyRepo shown is Ready, 1 otherwise.

use std::process::ExitCode;

use super::policyrepo;
use crate::access;
use crate::failure::{CHECK, Failure};
use crate::ui;

/// Arguments: one PolicyRepo, or every one in the namespace.
pub type Args = super::policyrepo::Which;

/// Runs `kars status`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let at = access::connect(&args.cluster).await?;
        let items = policyrepo::list(&at, &args.cluster, args.name.as_deref(), false).await?;
        let all_ready = items.iter().all(policyrepo::is_ready);
        if ui::get().machine() {
            ui::emit(&items)?;
        } else {
            for pr in &items {
                print_one(pr, &args.cluster.namespace);
            }
        }
        if items.is_empty() {
            ui::note(format!(
                "no PolicyRepo in namespace {} (kars sync or the agent creates one)",
                args.cluster.namespace
            ));
        }
        Ok(if all_ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(CHECK)
        })
    })
}

fn print_one(pr: &kars_gitops_agent::status::PolicyRepo, namespace: &str) {
    let name = policyrepo::name_of(pr);
    let st = pr.status.clone().unwrap_or_default();
    crate::outln!(
        "PolicyRepo {namespace}/{name}  source {}{}",
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
    if let Some(n) = st.unenforced_field_count {
        crate::outln!(
            "  not enforced: {n} field(s) accepted but not enforced by this version (kars validate names each; see docs/feature-maturity.md)"
        );
        for u in st.unenforced_fields.iter().take(5) {
            crate::outln!(
                "    {} {} ({}): {}",
                u.source,
                u.field,
                u.support,
                u.message
            );
        }
        if st.unenforced_fields.len() > 5 || n as usize > st.unenforced_fields.len().min(5) {
            crate::outln!(
                "    … kubectl get policyrepo -o jsonpath='{{.status.unenforcedFields}}' lists up to {}",
                kars_gitops_agent::status::UNENFORCED_LISTED
            );
        }
    }
    for c in &st.conditions {
        crate::outln!(
            "  {:<15} {:<7} {:<26} {}",
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
