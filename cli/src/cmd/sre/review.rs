//! `kars sre approve` and `kars sre reject`.

use std::process::ExitCode;

use kars_gitops_agent::forge::{Forge, MergeStyle, PullRequest, PullState};
use serde_json::{Value, json};

use super::{Connection, ForgeArgs, branch_of, check_id, file_of, forge_failure, git};
use crate::failure::{CHECK, Failure};
use crate::{outln, ui};

/// Arguments of `kars sre approve`.
#[derive(clap::Args, Debug)]
pub struct ApproveArgs {
    /// The action id.
    id: String,
    /// A note recorded with the approval (`spec.approval.note`, at most 512 characters).
    #[arg(long)]
    note: Option<String>,
    /// Push the approval but do not merge.
    #[arg(long)]
    no_merge: bool,
    #[command(flatten)]
    forge: ForgeArgs,
}

/// Arguments of `kars sre reject`.
#[derive(clap::Args, Debug)]
pub struct RejectArgs {
    /// The action id.
    id: String,
    /// Why (posted on the pull request).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    forge: ForgeArgs,
}

async fn open_pull(conn: &Connection, id: &str) -> Result<PullRequest, Failure> {
    let branch = branch_of(id);
    let pr = conn
        .forge
        .pull_for_branch(&branch)
        .await
        .map_err(forge_failure)?
        .ok_or_else(|| {
            Failure::msg(
                CHECK,
                format!("no pull request for action {id} (branch {branch})"),
            )
            .hint("kars sre actions lists the proposals")
        })?;
    match pr.state {
        PullState::Open => Ok(pr),
        PullState::Merged => Err(Failure::msg(
            CHECK,
            format!("pull request #{} of {id} is merged already", pr.number),
        )
        .hint(format!("kars sre show {id}"))),
        PullState::Closed => Err(Failure::msg(
            CHECK,
            format!("pull request #{} of {id} is closed (rejected)", pr.number),
        )),
    }
}

/// Runs `kars sre approve`.
pub fn approve(args: ApproveArgs) -> Result<ExitCode, Failure> {
    check_id(&args.id)?;
    if let Some(n) = &args.note
        && (n.chars().count() > 512 || n.chars().any(|c| c.is_control()))
    {
        return Err(Failure::msg(
            CHECK,
            "--note: at most 512 characters, no control characters",
        ));
    }
    args.forge.check_repo()?;
    super::super::block_on(async move {
        let conn = args.forge.connect().await?;
        let pr = open_pull(&conn, &args.id).await?;
        if pr.author == conn.me {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "you ({}) proposed {}: someone else must approve it",
                    conn.me, args.id
                ),
            )
            .reason(kars_contract::Reason::SelfApproval));
        }
        let file = file_of(&args.id);
        let head = git::fetch(&conn.repo, &conn.remote, &pr.head_ref)?;
        let base = git::fetch(&conn.repo, &conn.remote, &conn.base)?;
        if let (Some(me), Some(proposer)) = (
            git::user_email(&conn.repo),
            git::committer_email(&conn.repo, &head),
        ) && me == proposer
        {
            return Err(Failure::msg(
                CHECK,
                format!("the proposal's head commit is yours ({me}): someone else must approve it"),
            )
            .reason(kars_contract::Reason::SelfApproval));
        }
        let text = git::show_file(&conn.repo, &head, &file).ok_or_else(|| {
            Failure::msg(
                CHECK,
                format!("{file} is not on the proposal's branch {}", pr.head_ref),
            )
        })?;
        let mut manifest: Value = serde_saphyr::from_str(&text)
            .map_err(|e| Failure::msg(CHECK, format!("{file}: {e}")))?;
        let state = manifest["spec"]["approval"]["state"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let wt = git::Worktree::at(&conn.repo, &head)?;
        let approval_commit = if state == "Approved" {
            // k-of-n: an approval exists; add a signed approval tag on it.
            git::fetch_approval_tags(&conn.repo, &conn.remote)?;
            let tag = format!("approvals/sre-{}-{}", args.id, conn.me);
            wt.tag_signed(&tag, &head, &format!("approve SRE action {}", args.id))?;
            wt.push(&conn.remote, &format!("refs/tags/{tag}"))?;
            ui::note(format!(
                "{} was approved already; your signed tag {tag} adds your approval",
                args.id
            ));
            head.clone()
        } else {
            if state != "Pending" {
                return Err(Failure::msg(
                    CHECK,
                    format!("{file}: approval state is {state:?}, not Pending"),
                ));
            }
            if !git::is_ancestor(&conn.repo, &base, &head) {
                // Keep the approval fast-forwardable: the base first, then the proposal.
                let wt_base = git::Worktree::at(&conn.repo, &base)?;
                let merged = wt_base.merge_signed(
                    &head,
                    &format!("Merge the SRE proposal {} onto {}", args.id, conn.base),
                )?;
                wt_base.push(
                    &conn.remote,
                    &format!("{merged}:refs/heads/{}", pr.head_ref),
                )?;
                drop(wt_base);
                return approve_on(&conn, &args, &pr, &file, &merged, &mut manifest).await;
            }
            drop(wt);
            return approve_on(&conn, &args, &pr, &file, &head, &mut manifest).await;
        };
        finish(&conn, &args, &pr, &approval_commit).await
    })
}

/// Makes the approval commit on `at` (the proposal, on top of the base) and merges.
async fn approve_on(
    conn: &Connection,
    args: &ApproveArgs,
    pr: &PullRequest,
    file: &str,
    at: &str,
    manifest: &mut Value,
) -> Result<ExitCode, Failure> {
    let wt = git::Worktree::at(&conn.repo, at)?;
    let mut approval = json!({"state": "Approved"});
    if let Some(n) = args.note.as_deref().filter(|n| !n.is_empty()) {
        approval["note"] = json!(n);
    }
    manifest["spec"]["approval"] = approval;
    let yaml = kars_renderer::output::object_yaml(manifest).map_err(|e| Failure::msg(CHECK, e))?;
    let header = "# Approved with `kars sre approve`; the agent runs it once, after the merge.\n";
    wt.write(file, &format!("{header}{yaml}"))?;
    let commit = wt.commit_signed(
        &[file],
        &format!(
            "sre: approve {}{}\n\nKars-SRE-Action: {}",
            args.id,
            args.note
                .as_deref()
                .map(|n| format!("\n\n{n}"))
                .unwrap_or_default(),
            args.id
        ),
    )?;
    wt.push(
        &conn.remote,
        &format!("{commit}:refs/heads/{}", pr.head_ref),
    )?;
    drop(wt);
    finish(conn, args, pr, &commit).await
}

async fn finish(
    conn: &Connection,
    args: &ApproveArgs,
    pr: &PullRequest,
    commit: &str,
) -> Result<ExitCode, Failure> {
    let review = format!(
        "Approved by {} in signed commit {commit}{}",
        conn.me,
        args.note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default()
    );
    if let Err(e) = conn.forge.approve(pr.number, &review).await {
        ui::warn(format!("the forge did not take the review: {e}"));
    }
    let merged = if args.no_merge {
        false
    } else {
        match conn
            .forge
            .merge(pr.number, MergeStyle::FastForwardOnly)
            .await
        {
            Ok(()) => true,
            Err(e) if e.status().is_some_and(|s| s == 405 || s == 409) => {
                return Err(Failure::msg(CHECK, format!("approved in commit {commit}, but pull request #{} cannot merge yet: {e}", pr.number))
                    .hint("the branch protection may need more approvals (each approver runs kars sre approve), or the base moved (run kars sre approve again)"));
            }
            Err(e) => return Err(forge_failure(e)),
        }
    };
    if ui::get().machine() {
        ui::emit(
            &json!({"id": args.id, "approvalCommit": commit, "pullRequest": {"number": pr.number, "url": pr.url}, "merged": merged}),
        )?;
    } else {
        outln!("approved {} in signed commit {commit}", args.id);
        if merged {
            outln!(
                "  merged pull request #{} (fast-forward: the signed commit is the head of {})",
                pr.number,
                conn.base
            );
            ui::note(format!(
                "the agent verifies the approval and runs the action once on its next sync: kars sre show {}",
                args.id
            ));
        } else {
            outln!("  pull request #{} not merged (--no-merge)", pr.number);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `kars sre reject`.
pub fn reject(args: RejectArgs) -> Result<ExitCode, Failure> {
    check_id(&args.id)?;
    if args.reason.trim().is_empty() {
        return Err(Failure::msg(CHECK, "--reason must say why"));
    }
    args.forge.check_repo()?;
    super::super::block_on(async move {
        let conn = args.forge.connect().await?;
        let pr = open_pull(&conn, &args.id).await?;
        conn.forge
            .comment(
                pr.number,
                &format!("**Rejected** by {}: {}", conn.me, args.reason),
            )
            .await
            .map_err(forge_failure)?;
        conn.forge.close(pr.number).await.map_err(forge_failure)?;
        if ui::get().machine() {
            ui::emit(
                &json!({"id": args.id, "pullRequest": {"number": pr.number, "url": pr.url}, "rejected": true}),
            )?;
        } else {
            outln!(
                "rejected {}: pull request #{} closed ({})",
                args.id,
                pr.number,
                pr.url
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
