//! `kars events [NAME]`: the Kubernetes Events of the PolicyRepos (what the agent and
//! `kars sync` reported: syncs, verification and apply failures), oldest first.

use std::process::ExitCode;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use super::policyrepo::{age, table};
use crate::access;
use crate::failure::Failure;
use crate::ui;

/// Arguments: one PolicyRepo, or every one in the namespace.
pub type Args = super::policyrepo::Which;

/// Runs `kars events`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let at = access::connect(&args.cluster).await?;
        let api: Api<Event> = Api::namespaced(at.client.clone(), &args.cluster.namespace);
        let mut selector = "involvedObject.kind=PolicyRepo".to_string();
        if let Some(n) = &args.name {
            selector.push_str(&format!(",involvedObject.name={n}"));
        }
        let mut events = api
            .list(&ListParams::default().fields(&selector))
            .await
            .map_err(|e| {
                access::explain(
                    &e,
                    &format!("Events in namespace {}", args.cluster.namespace),
                    &at,
                )
            })?
            .items;
        let when = |e: &Event| {
            e.event_time
                .as_ref()
                .map(|t| t.0.to_string())
                .or_else(|| e.last_timestamp.as_ref().map(|t| t.0.to_string()))
                .or_else(|| {
                    e.metadata
                        .creation_timestamp
                        .as_ref()
                        .map(|t| t.0.to_string())
                })
                .unwrap_or_default()
        };
        events.sort_by_key(when);
        if ui::get().machine() {
            ui::emit(&events)?;
            return Ok(ExitCode::SUCCESS);
        }
        if events.is_empty() {
            ui::note(format!(
                "no Events of {} in namespace {} (Events expire after an hour)",
                args.name
                    .as_deref()
                    .map_or("any PolicyRepo".to_string(), |n| format!("PolicyRepo {n}")),
                args.cluster.namespace
            ));
            return Ok(ExitCode::SUCCESS);
        }
        let mut rows = vec![
            ["AGE", "TYPE", "REASON", "OBJECT", "MESSAGE"]
                .map(String::from)
                .to_vec(),
        ];
        for e in &events {
            rows.push(vec![
                age(Some(&when(e))),
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                format!(
                    "policyrepo/{}",
                    e.involved_object.name.clone().unwrap_or_default()
                ),
                e.message.clone().unwrap_or_default().replace('\n', " "),
            ]);
        }
        table(&rows);
        Ok(ExitCode::SUCCESS)
    })
}
