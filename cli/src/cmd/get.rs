//! `kars get [NAME]`: the PolicyRepos as a table, one line each (like `flux get`);
//! `-o wide` adds the source, branch and counts, `-o json|yaml` prints the objects.
//! Exit 0 when every PolicyRepo listed is Ready, 1 otherwise.

use std::process::ExitCode;

use super::policyrepo::{self, age, condition, table};
use crate::access::{self, ClusterArgs};
use crate::failure::{CHECK, Failure};
use crate::ui::{self, Format};

/// Arguments of `kars get`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// One PolicyRepo (default: all in the namespace).
    name: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `kars get`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let at = access::connect(&args.cluster).await?;
        let items = policyrepo::list(
            &at,
            &args.cluster,
            args.name.as_deref(),
            args.all_namespaces,
        )
        .await?;
        let all_ready = items.iter().all(policyrepo::is_ready);
        let ui = ui::get();
        if ui.machine() {
            ui::emit(&items)?;
        } else if items.is_empty() {
            ui::note(format!(
                "no PolicyRepo in {} (kars sync or the agent creates one)",
                if args.all_namespaces {
                    "any namespace".to_string()
                } else {
                    format!("namespace {}", args.cluster.namespace)
                }
            ));
        } else {
            let wide = ui.format == Format::Wide;
            let mut header: Vec<String> = Vec::new();
            if args.all_namespaces {
                header.push("NAMESPACE".into());
            }
            header.extend(
                ["NAME", "APPLIED", "SUSPENDED", "READY", "REASON", "AGE"].map(String::from),
            );
            if wide {
                header.extend(["SOURCE", "BRANCH", "OBJECTS", "FAILED"].map(String::from));
            }
            header.push("MESSAGE".into());
            let mut rows = vec![header];
            for pr in &items {
                let st = pr.status.clone().unwrap_or_default();
                let ready = condition(pr, "Ready");
                let mut row = Vec::new();
                if args.all_namespaces {
                    row.push(pr.metadata.namespace.clone().unwrap_or_default());
                }
                row.push(policyrepo::name_of(pr));
                row.push(
                    st.last_applied_revision
                        .as_deref()
                        .map(|c| c.chars().take(12).collect())
                        .unwrap_or_else(|| "-".into()),
                );
                row.push(if pr.spec.suspend { "True" } else { "False" }.into());
                row.push(
                    ready
                        .map(|c| c.status.clone())
                        .unwrap_or_else(|| "Unknown".into()),
                );
                row.push(
                    ready
                        .map(|c| c.reason.clone())
                        .unwrap_or_else(|| "-".into()),
                );
                let created = pr
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.to_string());
                row.push(age(created.as_deref()));
                if wide {
                    row.push(pr.spec.url.clone());
                    row.push(pr.spec.branch.clone().unwrap_or_else(|| "-".into()));
                    row.push(st.inventory.len().to_string());
                    row.push(st.failures.len().to_string());
                }
                let message = ready.map(|c| c.message.clone()).unwrap_or_default();
                row.push(if wide {
                    message
                } else {
                    message.chars().take(80).collect()
                });
                rows.push(row);
            }
            table(&rows);
        }
        Ok(if all_ready {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(CHECK)
        })
    })
}
