//! `kars sre actions` and `kars sre show`: proposals from the forge, what the agent decided and
//! did from the PolicyRepo's ledger (`status.sreActions`), the CR's status.

use std::collections::BTreeMap;
use std::process::ExitCode;

use kars_gitops_agent::forge::{Forge, PullRequest, PullState};
use kars_gitops_agent::sre::BRANCH_PREFIX;
use kars_gitops_agent::sre::ledger::SreRecord;
use serde_json::{Value, json};

use super::{Connection, ForgeArgs, LedgerArgs, branch_of, check_id, file_of, forge_failure, git};
use crate::failure::{CHECK, Failure};
use crate::{access, outln, ui};

/// Arguments of `kars sre actions`.
#[derive(clap::Args, Debug)]
pub struct ActionsArgs {
    #[command(flatten)]
    forge: ForgeArgs,
    #[command(flatten)]
    ledger: LedgerArgs,
}

/// Arguments of `kars sre show`.
#[derive(clap::Args, Debug)]
pub struct ShowArgs {
    /// The action id.
    id: String,
    #[command(flatten)]
    forge: ForgeArgs,
    #[command(flatten)]
    ledger: LedgerArgs,
}

/// The ledger of the PolicyRepo, or `None` (with a warning) when the cluster cannot be read.
async fn ledger(args: &LedgerArgs, repo: &std::path::Path) -> Option<Vec<SreRecord>> {
    if args.no_cluster {
        return None;
    }
    let name = args.name.clone().or_else(|| {
        std::fs::read(repo.join("kars.yaml"))
            .ok()
            .and_then(|b| kars_renderer::config::repository_name(&b))
    })?;
    let at = match access::connect(&args.cluster).await {
        Ok(a) => a,
        Err(f) => {
            ui::warn(format!(
                "not reading the cluster: {} (pass --no-cluster to skip it)",
                f.message()
            ));
            return None;
        }
    };
    match kars_gitops_agent::status::get(&at.client, &args.cluster.namespace, &name).await {
        Ok(Some(pr)) => Some(pr.status.unwrap_or_default().sre_actions),
        Ok(None) => {
            ui::warn(format!(
                "PolicyRepo {}/{name} not found in the cluster: showing the forge only",
                args.cluster.namespace
            ));
            None
        }
        Err(e) => {
            ui::warn(format!(
                "not reading PolicyRepo {}/{name}: {e}",
                args.cluster.namespace
            ));
            None
        }
    }
}

fn id_of(pr: &PullRequest) -> Option<&str> {
    pr.head_ref
        .strip_prefix(BRANCH_PREFIX)
        .filter(|id| kars_contract::host::is_dns_label(id))
}

/// One row of `kars sre actions`.
fn row(id: &str, pr: Option<&PullRequest>, rec: Option<&SreRecord>) -> Value {
    let phase = match (rec, pr.map(|p| p.state)) {
        (Some(r), _) => r.phase.as_str().to_string(),
        (None, Some(PullState::Open)) => "Proposed".into(),
        (None, Some(PullState::Closed)) => "Closed".into(),
        (None, Some(PullState::Merged)) => "Merged".into(),
        (None, None) => "-".into(),
    };
    json!({
        "id": id,
        "phase": phase,
        "reason": rec.map(|r| r.reason.clone()),
        "action": rec.map(|r| r.operation.clone()).or_else(|| pr.map(|p| p.title.trim_start_matches("SRE: ").to_string())),
        "pullRequest": pr.map(|p| json!({"number": p.number, "state": p.state, "url": p.url, "author": p.author})),
        "record": rec,
    })
}

async fn pulls(conn: &Connection) -> Result<Vec<PullRequest>, Failure> {
    Ok(conn
        .forge
        .pulls()
        .await
        .map_err(forge_failure)?
        .into_iter()
        .filter(|p| id_of(p).is_some())
        .collect())
}

/// Runs `kars sre actions`.
pub fn actions(args: ActionsArgs) -> Result<ExitCode, Failure> {
    args.forge.check_repo()?;
    super::super::block_on(async move {
        let conn = args.forge.connect().await?;
        let pulls = pulls(&conn).await?;
        let records = ledger(&args.ledger, &conn.repo).await;
        let mut rows: BTreeMap<String, Value> = BTreeMap::new();
        for p in &pulls {
            let Some(id) = id_of(p) else { continue };
            if rows.contains_key(id) {
                continue; // the newest pull request of an id wins
            }
            let rec = records
                .as_deref()
                .and_then(|r| kars_gitops_agent::sre::ledger::find(r, id));
            rows.insert(id.to_string(), row(id, Some(p), rec));
        }
        for r in records.as_deref().unwrap_or_default() {
            rows.entry(r.name.clone())
                .or_insert_with(|| row(&r.name, None, Some(r)));
        }
        if ui::get().machine() {
            ui::emit(
                &json!({"actions": rows.values().collect::<Vec<_>>(), "clusterRead": records.is_some()}),
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        if rows.is_empty() {
            ui::note("no SRE actions (propose one with kars sre propose)");
            return Ok(ExitCode::SUCCESS);
        }
        let table: Vec<[String; 5]> = rows
            .values()
            .map(|r| {
                let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
                [
                    s(&r["id"]),
                    s(&r["phase"]),
                    s(&r["reason"]),
                    r["pullRequest"]["number"]
                        .as_u64()
                        .map_or("-".into(), |n| format!("#{n}")),
                    s(&r["action"]),
                ]
            })
            .collect();
        let header = ["ID", "PHASE", "REASON", "PR", "ACTION"];
        let width = |i: usize| {
            table
                .iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        };
        let w: Vec<usize> = (0..4).map(width).collect();
        outln!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            header[0],
            header[1],
            header[2],
            header[3],
            header[4],
            w0 = w[0],
            w1 = w[1],
            w2 = w[2],
            w3 = w[3]
        );
        for r in &table {
            outln!(
                "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                w0 = w[0],
                w1 = w[1],
                w2 = w[2],
                w3 = w[3]
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Runs `kars sre show`.
pub fn show(args: ShowArgs) -> Result<ExitCode, Failure> {
    check_id(&args.id)?;
    args.forge.check_repo()?;
    super::super::block_on(async move {
        let conn = args.forge.connect().await?;
        let pr = conn
            .forge
            .pull_for_branch(&branch_of(&args.id))
            .await
            .map_err(forge_failure)?;
        let records = ledger(&args.ledger, &conn.repo).await;
        let rec = records
            .as_deref()
            .and_then(|r| kars_gitops_agent::sre::ledger::find(r, &args.id))
            .cloned();
        if pr.is_none() && rec.is_none() {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "no SRE action {} (no pull request for {} and no record in the cluster)",
                    args.id,
                    branch_of(&args.id)
                ),
            ));
        }
        let reviews = match &pr {
            Some(p) => conn.forge.reviews(p.number).await.map_err(forge_failure)?,
            None => Vec::new(),
        };
        let file = file_of(&args.id);
        let content = match &pr {
            Some(p) => git::fetch(&conn.repo, &conn.remote, &p.head_ref)
                .ok()
                .and_then(|h| git::show_file(&conn.repo, &h, &file)),
            None => None,
        };
        if ui::get().machine() {
            ui::emit(&json!({
                "id": args.id, "file": file,
                "pullRequest": pr, "reviews": reviews, "record": rec,
                "content": content, "clusterRead": records.is_some(),
            }))?;
            return Ok(ExitCode::SUCCESS);
        }
        outln!("SRE action {}", args.id);
        if let Some(p) = &pr {
            outln!(
                "  pull request  #{} ({:?}) by {}: {}",
                p.number,
                p.state,
                p.author,
                p.url
            );
            outln!("  title         {}", p.title);
        }
        for r in &reviews {
            outln!(
                "  review        {} {:?} on {}{}",
                r.user,
                r.state,
                &r.commit[..r.commit.len().min(12)],
                if r.stale { " (stale)" } else { "" }
            );
        }
        match &rec {
            Some(r) => {
                outln!("  phase         {} ({})", r.phase.as_str(), r.reason);
                outln!("  action        {}", r.operation);
                outln!("  message       {}", r.message);
                if let Some(c) = &r.approval_commit {
                    outln!("  approved in   {c} by {}", r.approvers.join(", "));
                }
                if !r.proposers.is_empty() {
                    outln!("  proposed by   {}", r.proposers.join(", "));
                }
                outln!("  decided at    {}", r.decided_at);
                if let Some(a) = &r.applied_at {
                    outln!("  ran at        {a}");
                }
                if let Some(f) = &r.finished_at {
                    outln!("  finished at   {f}");
                }
            }
            None if records.is_some() => outln!(
                "  phase         not decided by the agent yet (Proposed until approved and merged)"
            ),
            None => {}
        }
        if let Some(c) = content {
            outln!(
                "\n{file} on {}:\n{c}",
                pr.as_ref().map(|p| p.head_ref.as_str()).unwrap_or("-")
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
