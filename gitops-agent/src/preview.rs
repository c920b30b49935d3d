//! Pull-request previews: for every open pull request to the followed branch, what merging it
//! would do to the cluster — the PR head's signatures verified from the last applied commit,
//! its render, a server-side dry run of every changed object against the live cluster, the
//! objects that would be pruned, mass-prune and held-back warnings — posted as one comment
//! kept up to date and a commit status (`kars-gitops/preview`). Nothing from a pull request
//! branch is ever applied: the read-only inspection ([`crate::inspect`]) and dry-run applies
//! only.

use std::collections::HashMap;

use crate::apply::{Action, Applier, ApplyOptions};
use crate::cluster::Cluster;
use crate::forge::{CommitState, Forge, ForgeError, PullRequest, PullState};
use crate::inspect::{Inspection, inspect};
use crate::prune;
use crate::status::{InventoryEntry, entry_of};
use crate::sync::SyncConfig;
use crate::sync::pipeline::old_inventory;

/// The commit status context of previews.
pub const CONTEXT: &str = "kars-gitops/preview";
/// The first line of the preview comment (how the agent finds its own comment again).
pub const MARKER: &str = "<!-- kars-gitops-preview -->";
/// Diff lines shown per object (the rest is cut, with a note).
const MAX_DIFF_LINES: usize = 120;
/// Objects listed with a diff (the rest are listed without one).
const MAX_DIFFS: usize = 30;

/// What a preview found, for one pull request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preview {
    /// The pull request.
    pub number: u64,
    /// Its head commit.
    pub head: String,
    /// The commit status posted.
    pub state: CommitState,
    /// The status's one-line description.
    pub summary: String,
    /// The comment posted (Markdown).
    pub comment: String,
}

/// Which pull request heads were previewed, against which applied commit (so an unchanged
/// pull request is not previewed again on every sync).
#[derive(Debug, Default)]
pub struct Previewed {
    seen: HashMap<u64, String>,
}

/// Why previews could not run.
#[derive(Debug, thiserror::Error)]
pub enum PreviewError {
    /// The forge refused or could not be reached.
    #[error("forge: {0}")]
    Forge(#[from] ForgeError),
}

/// Previews every open pull request to the followed branch whose head (or the applied commit)
/// changed since its last preview. One pull request's failure is its own comment, not an
/// error; forge errors stop the round.
pub async fn preview_open_pulls<F: Forge>(
    client: &kube::Client,
    cfg: &SyncConfig,
    forge: &F,
    previewed: &mut Previewed,
    applied: Option<&str>,
) -> Result<Vec<Preview>, PreviewError> {
    let branch = cfg.effective_branch();
    let pulls: Vec<PullRequest> = forge
        .pulls()
        .await?
        .into_iter()
        .filter(|p| p.state == PullState::Open && p.base_ref == branch)
        .collect();
    previewed
        .seen
        .retain(|n, _| pulls.iter().any(|p| p.number == *n));
    let mut out = Vec::new();
    for pr in pulls {
        let key = format!("{} {}", pr.head_sha, applied.unwrap_or("-"));
        if previewed.seen.get(&pr.number) == Some(&key) {
            continue;
        }
        let preview = preview_one(client, cfg, &pr).await;
        forge
            .upsert_comment(pr.number, MARKER, &preview.comment)
            .await?;
        forge
            .set_status(&pr.head_sha, preview.state, CONTEXT, &preview.summary)
            .await?;
        tracing::info!(pull = pr.number, head = %pr.head_sha, summary = %preview.summary, "previewed pull request");
        previewed.seen.insert(pr.number, key);
        out.push(preview);
    }
    Ok(out)
}

/// Inspects one pull request's head (read-only) and dry-runs its changes.
async fn preview_one(client: &kube::Client, cfg: &SyncConfig, pr: &PullRequest) -> Preview {
    let mut pcfg = cfg.clone();
    pcfg.branch = Some(format!("refs/pull/{}/head", pr.number));
    pcfg.progress = crate::progress::Progress::default();
    pcfg.apply.dry_run = true;
    let short = &pr.head_sha[..pr.head_sha.len().min(12)];
    let inspection = match inspect(client, &pcfg).await {
        Ok(i) => i,
        Err(e) => {
            return Preview {
                number: pr.number,
                head: pr.head_sha.clone(),
                state: CommitState::Error,
                summary: "the preview could not run".into(),
                comment: format!(
                    "{MARKER}\n### kars GitOps preview of `{short}`\n\nThe preview could not run: {e}\n\nNothing from this branch is applied before it is merged.\n"
                ),
            };
        }
    };
    // The API server's own verdict on every change (admission, schemas, conflicts), without
    // writing: a dry-run apply of the rendered head.
    let dry_run = match &inspection.rendered {
        Ok(r) => {
            let cluster = Cluster::new(client.clone());
            let opts = ApplyOptions {
                dry_run: true,
                owner: Some(cfg.owner()),
                progress: crate::progress::Progress::default(),
                ..cfg.apply.clone()
            };
            Some(
                Applier::new(&cluster, opts)
                    .apply(r)
                    .await
                    .map_err(|e| e.to_string()),
            )
        }
        Err(_) => None,
    };
    let refused: Vec<(String, String)> = match &dry_run {
        Some(Ok(report)) => report
            .objects
            .iter()
            .filter_map(|o| match &o.action {
                Action::Failed(r) => {
                    Some((o.object.clone(), format!("{}: {}", r.reason, r.message)))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let mass_prune = mass_prune_warning(cfg, &inspection);
    let (state, summary) = verdict_line(&inspection, &refused, &dry_run);
    let comment = comment(
        pr,
        cfg,
        &inspection,
        &refused,
        &dry_run,
        mass_prune.as_deref(),
        &summary,
    );
    Preview {
        number: pr.number,
        head: pr.head_sha.clone(),
        state,
        summary,
        comment,
    }
}

/// The prune threshold's verdict on the head's render, as a sync would reach it.
fn mass_prune_warning(cfg: &SyncConfig, i: &Inspection) -> Option<String> {
    let (Ok(r), Some(pr)) = (&i.rendered, &i.policy_repo) else {
        return None;
    };
    let status = pr.status.clone().unwrap_or_default();
    let mut opts = cfg.prune.tightened_by(pr.spec.prune.as_ref());
    opts.allow_mass_prune = pr.spec.allow_mass_prune_for.as_deref() == Some(i.head.as_str());
    opts.allow_empty = opts.allow_empty || r.allow_empty_prune;
    let now: Vec<InventoryEntry> = r.objects.iter().map(entry_of).collect();
    prune::plan(&old_inventory(&status), &now, &opts)
        .err()
        .map(|refusal| refusal.to_string())
}

fn verdict_line(
    i: &Inspection,
    refused: &[(String, String)],
    dry_run: &Option<Result<crate::apply::ApplyReport, String>>,
) -> (CommitState, String) {
    if let Err(why) = &i.verification {
        return (
            CommitState::Failure,
            trim(&format!("does not verify: {why}")),
        );
    }
    let rendered = match &i.rendered {
        Ok(r) => r,
        Err(why) => {
            return (
                CommitState::Failure,
                trim(&format!("does not render: {why}")),
            );
        }
    };
    if let Some(Err(e)) = dry_run {
        return (CommitState::Error, trim(&format!("dry run failed: {e}")));
    }
    if !refused.is_empty() {
        return (
            CommitState::Failure,
            format!("{} object(s) refused by the API server", refused.len()),
        );
    }
    let changes = i.objects.iter().filter(|o| !o.in_sync).count();
    let mut s = format!(
        "verifies; {changes} object(s) would change, {} pruned",
        i.to_prune.len()
    );
    if !rendered.held_back.is_empty() {
        s.push_str(&format!(", {} held back", rendered.held_back.len()));
    }
    (CommitState::Success, s)
}

/// A status description fits the forge's limit.
fn trim(s: &str) -> String {
    let one_line = s.lines().next().unwrap_or_default();
    one_line.chars().take(200).collect()
}

fn comment(
    pr: &PullRequest,
    cfg: &SyncConfig,
    i: &Inspection,
    refused: &[(String, String)],
    dry_run: &Option<Result<crate::apply::ApplyReport, String>>,
    mass_prune: Option<&str>,
    summary: &str,
) -> String {
    let short = |c: &str| c[..c.len().min(12)].to_string();
    let branch = cfg.effective_branch();
    let mut s = format!(
        "{MARKER}\n### kars GitOps preview of `{}`\n\nWhat merging #{} into `{branch}` would do to the cluster (PolicyRepo `{}`), as of this head: **{summary}**.\n\n",
        short(&pr.head_sha),
        pr.number,
        cfg.owner()
    );
    // Signatures.
    s.push_str("#### Signatures\n\n");
    match &i.verdict {
        Some(v) => {
            let since = v
                .since
                .as_deref()
                .map_or("the start of history".to_string(), |c| {
                    format!("`{}` (applied)", short(c))
                });
            s.push_str(&format!(
                "{} commit(s) since {since}:\n\n| commit | summary | verdict |\n|---|---|---|\n",
                v.commits.len()
            ));
            for c in v.commits.iter().take(50) {
                let verdict = match &c.refusal {
                    None => format!(
                        "✅ signed by {}",
                        c.signers
                            .iter()
                            .map(|a| a.signer.clone())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    Some(r) => format!("❌ {}: {r}", r.reason()),
                };
                s.push_str(&format!(
                    "| `{}` | {} | {} |\n",
                    short(&c.id),
                    table_cell(&c.summary),
                    table_cell(&verdict)
                ));
            }
            if v.commits.len() > 50 {
                s.push_str(&format!("| … | {} more | |\n", v.commits.len() - 50));
            }
            if let Some(h) = &v.history {
                s.push_str(&format!("\n❌ history: {h}\n"));
            }
            s.push('\n');
        }
        None => {
            if let Err(why) = &i.verification {
                s.push_str(&format!("❌ {why}\n\n"));
            }
        }
    }
    if i.verification.is_err() {
        s.push_str("Merging this would apply **nothing**: the agent stops at the first commit that does not verify.\n");
        return footer(s, &branch);
    }
    let rendered = match &i.rendered {
        Ok(r) => r,
        Err(why) => {
            s.push_str(&format!(
                "#### Render\n\n❌ {why}\n\nMerging this would apply **nothing** (the cluster keeps the last applied commit).\n"
            ));
            return footer(s, &branch);
        }
    };
    s.push_str(&format!(
        "#### Changes\n\nCluster `{}`, {} object(s) rendered, digest `{}`.\n\n",
        rendered.cluster,
        rendered.objects.len(),
        rendered.digest
    ));
    if let Some(Err(e)) = dry_run {
        s.push_str(&format!(
            "⚠️ the server-side dry run could not run: {e}\n\n"
        ));
    }
    for (object, why) in refused {
        s.push_str(&format!(
            "❌ `{object}` would be refused by the API server: {}\n",
            table_cell(why)
        ));
    }
    if !refused.is_empty() {
        s.push_str("\nA sync applies nothing while an object is refused.\n\n");
    }
    let changed: Vec<_> = i.objects.iter().filter(|o| !o.in_sync).collect();
    if changed.is_empty() && i.to_prune.is_empty() {
        s.push_str("No object would change.\n\n");
    } else {
        s.push_str("| change | object | from |\n|---|---|---|\n");
        for o in &changed {
            let change = match (&o.live, &o.foreign) {
                (_, Some(owner)) => format!("conflict (owned by {owner})"),
                (None, _) => "create".into(),
                (Some(_), None) => "configure".into(),
            };
            s.push_str(&format!(
                "| {change} | `{}` | `{}` |\n",
                o.rendered.key(),
                o.rendered.source
            ));
        }
        for e in &i.to_prune {
            s.push_str(&format!("| **prune** | `{}` | (left Git) |\n", e.key()));
        }
        s.push('\n');
        for o in changed.iter().filter(|o| o.live.is_some()).take(MAX_DIFFS) {
            let diff = crate::inspect::unified_diff(o, "pr");
            let lines: Vec<&str> = diff.lines().collect();
            let mut shown = lines
                .iter()
                .take(MAX_DIFF_LINES)
                .copied()
                .collect::<Vec<_>>()
                .join("\n");
            if lines.len() > MAX_DIFF_LINES {
                shown.push_str(&format!(
                    "\n… {} more line(s): kars diff shows all",
                    lines.len() - MAX_DIFF_LINES
                ));
            }
            s.push_str(&format!(
                "<details><summary>diff of <code>{}</code></summary>\n\n```diff\n{}\n```\n</details>\n\n",
                o.rendered.key(),
                shown.replace("```", "ʼʼʼ")
            ));
        }
    }
    if let Some(w) = mass_prune {
        s.push_str(&format!("⚠️ **mass prune**: {w}\n\n"));
    }
    for h in &rendered.held_back {
        s.push_str(&format!(
            "⚠️ held back: `{}` ({}): {} — a sync leaves it as it is and prunes nothing\n",
            h.object,
            h.file,
            table_cell(&h.reason)
        ));
    }
    footer(s, &branch)
}

fn footer(mut s: String, branch: &str) -> String {
    s.push_str(&format!(
        "\n---\nNothing from this branch is applied before it is merged into `{branch}`; the agent then verifies the merge itself. Updated on every push.\n"
    ));
    s
}

/// Text safe inside a Markdown table cell.
fn table_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_and_statuses_stay_on_one_line() {
        assert_eq!(table_cell("a|b\nc"), "a\\|b c");
        assert_eq!(trim(&"x".repeat(500)).len(), 200);
        assert_eq!(trim("first\nsecond"), "first");
    }
}
