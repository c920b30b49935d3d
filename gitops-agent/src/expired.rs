//! Expired EgressApprovals leave Git by pull request: once a grant's `approved-at + ttl` has
//! passed (the router already refuses its hosts, with its own clock), the agent proposes
//! removing its document — one pull request per set of expired grants, signed with the agent's
//! proposer key, opened **once**: the branch is named after the set, and a pull request for it
//! in any state (open, merged, or closed by someone who wants to keep the files) is not opened
//! again.

use std::collections::BTreeMap;

use kars_contract::labels::APPROVED_AT_ANNOTATION;
use kars_contract::time::{format_rfc3339, parse_iso8601_duration, parse_rfc3339};
use kars_renderer::repo::SourceObject;
use kars_renderer::source::SourceLimits;
use sha2::Digest;

use crate::forge::{Forge, Gitea};
use crate::sre::forward::{AgentPull, Edit, Proposer, open_signed_pull};

/// The branch prefix of these pull requests (the same as `kars egress`'s).
pub const BRANCH_PREFIX: &str = "kars-egress/expired-";

/// An expired grant in the repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpiredGrant {
    /// `metadata.name`.
    pub name: String,
    /// The sandbox it was for.
    pub sandbox: String,
    /// Its file and the line its document starts on.
    pub file: String,
    /// The line.
    pub line: u32,
    /// When it expired (Unix seconds).
    pub expired_at: i64,
}

/// The EgressApprovals among `objects` that expired before `now` (pure).
pub fn expired(objects: &[SourceObject], now: i64) -> Vec<ExpiredGrant> {
    let mut out: Vec<ExpiredGrant> = objects
        .iter()
        .filter(|o| o.kind == "EgressApproval")
        .filter_map(|o| {
            let ea = o.kars()?.egress_approval()?;
            let start = o
                .annotation(APPROVED_AT_ANNOTATION)
                .and_then(parse_rfc3339)?;
            let ttl = i64::try_from(parse_iso8601_duration(&ea.spec.ttl).ok()?).ok()?;
            let end = start.saturating_add(ttl);
            (end <= now).then(|| ExpiredGrant {
                name: o.name.clone(),
                sandbox: ea.spec.sandbox.clone(),
                file: o.file.clone(),
                line: o.pos.line,
                expired_at: end,
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    out
}

/// The branch for a set of expired grants (the same set always gets the same name).
pub fn branch_for(grants: &[ExpiredGrant]) -> String {
    let mut h = sha2::Sha256::new();
    for g in grants {
        h.update(format!("{}\0{}\0{}\n", g.file, g.name, g.expired_at).as_bytes());
    }
    format!("{BRANCH_PREFIX}{}", &hex::encode(h.finalize())[..12])
}

/// The file edits removing `grants` from the files at `tree` (documents removed bottom-up, a
/// file left with nothing is removed).
pub fn edits(tree: &kars_renderer::RepoTree, grants: &[ExpiredGrant]) -> Result<Vec<Edit>, String> {
    let mut by_file: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for g in grants {
        by_file.entry(&g.file).or_default().push(g.line);
    }
    let mut out = Vec::new();
    for (file, mut lines) in by_file {
        let bytes = tree
            .get(file)
            .ok_or_else(|| format!("{file} is not in the tree"))?;
        let mut text =
            String::from_utf8(bytes.to_vec()).map_err(|_| format!("{file}: not UTF-8"))?;
        lines.sort_unstable_by(|a, b| b.cmp(a));
        let mut gone = false;
        for line in lines {
            match kars_renderer::edit::remove_document(&text, line) {
                Some(t) => text = t,
                None => {
                    gone = true;
                    break;
                }
            }
        }
        out.push(if gone {
            Edit::Remove(file.to_string())
        } else {
            Edit::Write(file.to_string(), text)
        });
    }
    Ok(out)
}

/// Proposes removing the expired grants at `head`, unless a pull request for exactly that set
/// exists (in any state). Returns the pull request's URL when one was opened.
pub async fn propose_removal(
    forge: &Gitea,
    proposer: &Proposer,
    repo: &gix::ThreadSafeRepository,
    head: gix::ObjectId,
    base: &str,
    now: i64,
) -> Result<Option<String>, String> {
    let tree = crate::source::read_tree(&repo.to_thread_local(), head, SourceLimits::default())
        .map_err(|e| e.to_string())?;
    let (loaded, _) = kars_renderer::repo::load(&tree);
    let Some(loaded) = loaded else {
        return Ok(None);
    };
    let grants = expired(&loaded.objects, now);
    if grants.is_empty() {
        return Ok(None);
    }
    let branch = branch_for(&grants);
    let pulls = forge.pulls().await.map_err(|e| e.to_string())?;
    if pulls.iter().any(|p| p.head_ref == branch) {
        return Ok(None);
    }
    let lines: Vec<String> = grants
        .iter()
        .map(|g| {
            format!(
                "- `{}` for `{}` ({}:{}), expired {}",
                g.name,
                g.sandbox,
                g.file,
                g.line,
                format_rfc3339(g.expired_at)
            )
        })
        .collect();
    let edits = edits(&tree, &grants)?;
    let message = format!(
        "egress: remove {} expired EgressApproval(s)\n\n{}",
        grants.len(),
        lines.join("\n")
    );
    let body = format!(
        "## Expired egress grants\n\nThese EgressApprovals have expired; the routers refuse their hosts already. Merging removes their files (the agent then prunes their CRs and ConfigMap entries). Closing this keeps them: it is not proposed again.\n\n{}\n",
        lines.join("\n")
    );
    let title = format!("Egress: remove {} expired grant(s)", grants.len());
    let url = open_signed_pull(
        forge,
        proposer,
        repo,
        head,
        &AgentPull {
            branch: &branch,
            base,
            edits: &edits,
            message: &message,
            title: &title,
            body: &body,
        },
    )
    .await?;
    Ok(Some(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: t}\nspec:\n  defaultNamespace: team\n  clusters: [{name: c, paths: [egress]}]\n";

    fn grant(name: &str, at: &str, ttl: &str) -> String {
        format!(
            "apiVersion: kars.azure.com/v1alpha1\nkind: EgressApproval\nmetadata:\n  name: {name}\n  annotations:\n    gitops.kars.io/approved-at: \"{at}\"\nspec:\n  sandbox: a\n  hosts:\n    - host: pypi.org\n  reason: r\n  ttl: {ttl}\n"
        )
    }

    #[test]
    fn only_expired_grants_are_removed_and_the_branch_names_the_set() {
        let multi = format!(
            "{}---\n{}",
            grant("old", "2026-01-01T00:00:00Z", "PT1H"),
            grant("live", "2026-01-01T00:00:00Z", "P7D")
        );
        let tree = kars_renderer::RepoTree::from_files([
            ("kars.yaml", CONFIG.to_string()),
            ("egress/both.yaml", multi),
            (
                "egress/gone.yaml",
                grant("gone", "2026-01-01T00:00:00Z", "PT2H"),
            ),
        ]);
        let (loaded, _) = kars_renderer::repo::load(&tree);
        let objects = loaded.map(|l| l.objects).unwrap_or_default();
        let now = parse_rfc3339("2026-01-02T00:00:00Z").unwrap_or_default();
        let due = expired(&objects, now);
        assert_eq!(
            due.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(),
            ["old", "gone"]
        );
        assert!(
            expired(&objects, now - 86_400).is_empty(),
            "nothing expired yet"
        );
        let edits = edits(&tree, &due).expect("edits");
        assert_eq!(edits.len(), 2);
        assert!(
            matches!(&edits[0], Edit::Write(f, t) if f == "egress/both.yaml" && t.contains("name: live") && !t.contains("name: old")),
            "{:?}",
            edits[0]
        );
        assert!(matches!(&edits[1], Edit::Remove(f) if f == "egress/gone.yaml"));
        assert_eq!(branch_for(&due), branch_for(&due.clone()));
        assert_ne!(branch_for(&due), branch_for(&due[..1]));
        assert!(branch_for(&due).starts_with(BRANCH_PREFIX));
    }
}
