//! Range verification: every commit from the last applied one (exclusive) to the new head
//! (inclusive), merges and both parents' new history included, checked against the signers
//! trusted at that point in history; the head must descend from the last applied commit.
//! The verdicts it produces are in [`super::verdict`].

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gix::ObjectId;
use gix::bstr::ByteSlice;

use super::keys::{SignerClass, SignerKey};
use super::objects::{CommitFacts, ObjectError, commit_facts, tag_facts};
use super::signature::{Accepted, Refusal, Signed, check};
use super::trust::{TrustPolicy, parse_signer_list};
pub use super::verdict::{CommitRefusal, CommitVerdict, HistoryRefusal, RangeVerdict};

/// The commit-message trailer that authorises a rollback or force-push:
/// `Kars-Allow-Rollback: <full id of the last applied commit being abandoned>`.
pub const ROLLBACK_TRAILER: &str = "Kars-Allow-Rollback";

/// Where a range starts: the last applied commit (as recorded in the cluster, or given with
/// `--since`), found in the repository or gone from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Since {
    /// The commit exists.
    Commit(ObjectId),
    /// A full commit id the repository no longer has: the history it was on was rewritten
    /// (a force-push), which is a rollback.
    Vanished(String),
}

/// Resolves `rev` as the start of a range. A full 40-hex id that is not in the repository is
/// [`Since::Vanished`]; anything else that does not resolve is an error (a typo).
pub fn resolve_since(repo: &gix::Repository, rev: &str) -> Result<Since, VerifyError> {
    let found = repo
        .rev_parse_single(rev)
        .ok()
        .and_then(|id| id.object().ok())
        .and_then(|o| o.peel_to_commit().ok())
        .map(|c| c.id);
    match found {
        Some(id) => Ok(Since::Commit(id)),
        None if rev.len() == 40 && rev.bytes().all(|c| c.is_ascii_hexdigit()) => {
            Ok(Since::Vanished(rev.to_ascii_lowercase()))
        }
        None => Err(VerifyError::UnknownRevision(rev.to_string())),
    }
}

/// Why verification could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// Reading an object failed.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// Walking history failed.
    #[error("walking history: {0}")]
    Walk(String),
    /// The start of the range is not a revision of the repository.
    #[error("revision {0:?} not found (give a commit id, branch or tag)")]
    UnknownRevision(String),
}

/// Verifies history with one trust policy.
pub struct Verifier<'r> {
    repo: &'r gix::Repository,
    policy: &'r TrustPolicy,
    now: i64,
    list_cache: HashMap<ObjectId, Result<Vec<SignerKey>, String>>,
}

impl<'r> Verifier<'r> {
    /// A verifier for `repo`; `now` (Unix seconds) is the clock for OpenPGP key expiry.
    pub fn new(repo: &'r gix::Repository, policy: &'r TrustPolicy, now: i64) -> Self {
        Verifier {
            repo,
            policy,
            now,
            list_cache: HashMap::new(),
        }
    }

    /// Verifies the range from `since` (exclusive; `None`: the whole history of `head`). A
    /// vanished `since` is refused as a rollback: the head cannot be shown to descend from
    /// what was applied. The agent and `kars verify` both decide through here.
    pub fn verify_since(
        &mut self,
        since: Option<&Since>,
        head: ObjectId,
    ) -> Result<RangeVerdict, VerifyError> {
        match since {
            None => self.verify_range(None, head),
            Some(Since::Commit(id)) => self.verify_range(Some(*id), head),
            Some(Since::Vanished(id)) => Ok(RangeVerdict {
                head: head.to_string(),
                since: Some(id.clone()),
                commits: Vec::new(),
                history: Some(HistoryRefusal::Rollback {
                    head: head.to_string(),
                    since: id.clone(),
                    need: self.policy.rollback_min_signers,
                }),
                rollback_override: false,
            }),
        }
    }

    /// Verifies `since..head` (`since` exclusive; `None` = the whole history of `head`).
    pub fn verify_range(
        &mut self,
        since: Option<ObjectId>,
        head: ObjectId,
    ) -> Result<RangeVerdict, VerifyError> {
        let mut verdict = RangeVerdict {
            head: head.to_string(),
            since: since.map(|s| s.to_string()),
            commits: Vec::new(),
            history: None,
            rollback_override: false,
        };
        let mut hidden: Vec<ObjectId> = Vec::new();
        if let Some(since) = since {
            if since == head {
                return Ok(verdict);
            }
            let base = self
                .repo
                .merge_base(since, head)
                .ok()
                .flatten()
                .map(|id| id.detach());
            if base != Some(since) {
                // Not a descendant: rollback or force-push. Only an explicit signed override passes.
                let facts = commit_facts(self.repo, head)?;
                let wanted = since.to_string();
                let has_override = facts.message.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.trim().eq_ignore_ascii_case(ROLLBACK_TRAILER) && v.trim() == wanted
                    })
                });
                if !has_override {
                    verdict.history = Some(HistoryRefusal::Rollback {
                        head: head.to_string(),
                        since: wanted,
                        need: self.policy.rollback_min_signers,
                    });
                    return Ok(verdict);
                }
                verdict.rollback_override = true;
                hidden.extend(base);
            } else {
                hidden.push(since);
            }
        }

        let order = self.topo_range(head, &hidden)?;
        let in_range: BTreeSet<ObjectId> = order.iter().copied().collect();
        let approvals = self.approval_tags(&in_range)?;
        let mut results: BTreeMap<ObjectId, bool> = BTreeMap::new();
        for id in &order {
            let v = self.verify_commit(
                *id,
                &in_range,
                &results,
                approvals.get(id).map_or(&[][..], Vec::as_slice),
            )?;
            results.insert(*id, v.ok());
            verdict.commits.push(v);
        }
        if verdict.rollback_override
            && let Some(head_verdict) = verdict.commits.iter().find(|c| c.id == verdict.head)
        {
            let persons = person_signers(head_verdict);
            if persons.len() < self.policy.rollback_min_signers {
                verdict.history = Some(HistoryRefusal::RollbackOverrideUnderSigned {
                    head: verdict.head.clone(),
                    have: persons.into_iter().collect::<Vec<_>>().join(", "),
                    need: self.policy.rollback_min_signers,
                });
            }
        }
        Ok(verdict)
    }

    /// Commits reachable from `head` but not from `hidden`, parents before children.
    fn topo_range(
        &self,
        head: ObjectId,
        hidden: &[ObjectId],
    ) -> Result<Vec<ObjectId>, VerifyError> {
        let walk = self
            .repo
            .rev_walk([head])
            .with_hidden(hidden.iter().copied())
            .all()
            .map_err(|e| VerifyError::Walk(e.to_string()))?;
        let mut parents: BTreeMap<ObjectId, Vec<ObjectId>> = BTreeMap::new();
        for info in walk {
            let info = info.map_err(|e| VerifyError::Walk(e.to_string()))?;
            parents.insert(info.id, info.parent_ids.iter().copied().collect());
        }
        // Iterative post-order DFS from head: parents first.
        let mut out = Vec::with_capacity(parents.len());
        let mut done: BTreeSet<ObjectId> = BTreeSet::new();
        let mut stack: Vec<(ObjectId, bool)> = vec![(head, false)];
        while let Some((id, expanded)) = stack.pop() {
            if done.contains(&id) || !parents.contains_key(&id) {
                continue;
            }
            if expanded {
                done.insert(id);
                out.push(id);
                continue;
            }
            stack.push((id, true));
            for p in parents[&id].iter().rev() {
                if parents.contains_key(p) && !done.contains(p) {
                    stack.push((*p, false));
                }
            }
        }
        Ok(out)
    }

    /// Signed approval tags (`refs/tags/<prefix>…`) pointing at commits in the range.
    fn approval_tags(
        &self,
        in_range: &BTreeSet<ObjectId>,
    ) -> Result<BTreeMap<ObjectId, Vec<super::objects::TagFacts>>, VerifyError> {
        let mut out: BTreeMap<ObjectId, Vec<_>> = BTreeMap::new();
        let prefix = format!("refs/tags/{}", self.policy.approval_tag_prefix);
        let Ok(refs) = self.repo.references() else {
            return Ok(out);
        };
        let Ok(iter) = refs.prefixed(prefix.as_str()) else {
            return Ok(out);
        };
        for r in iter.flatten() {
            let Some(id) = r.target().try_id().map(ToOwned::to_owned) else {
                continue;
            };
            let Ok(tag) = tag_facts(self.repo, id) else {
                continue;
            };
            if in_range.contains(&tag.target) {
                out.entry(tag.target).or_default().push(tag);
            }
        }
        Ok(out)
    }

    /// Root keys plus the repository list in effect at `parent` (before the commit).
    fn trusted_before(
        &mut self,
        parent: Option<ObjectId>,
    ) -> Result<Vec<SignerKey>, CommitRefusal> {
        let mut keys = self.policy.roots.clone();
        let (Some(cfg), Some(parent)) = (&self.policy.repo_signers, parent) else {
            return Ok(keys);
        };
        let Some(blob) = self.blob_at(parent, &cfg.path) else {
            return Ok(keys);
        };
        let path = cfg.path.clone();
        let roots = self.policy.roots.clone();
        let parsed = self.list_cache.entry(blob).or_insert_with(|| {
            let data = self
                .repo
                .find_object(blob)
                .map(|o| o.detach().data)
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&data).into_owned();
            parse_signer_list(&path, &text, &roots).map_err(|e| e.to_string())
        });
        match parsed {
            Ok(list) => {
                keys.extend(list.iter().cloned());
                Ok(keys)
            }
            // An invalid list was refused when it was introduced; roots still apply.
            Err(_) => Ok(keys),
        }
    }

    fn blob_at(&self, commit: ObjectId, path: &str) -> Option<ObjectId> {
        let tree = self.repo.find_commit(commit).ok()?.tree().ok()?;
        let entry = tree.lookup_entry_by_path(path).ok()??;
        entry.mode().is_blob().then(|| entry.object_id())
    }

    fn verify_commit(
        &mut self,
        id: ObjectId,
        in_range: &BTreeSet<ObjectId>,
        results: &BTreeMap<ObjectId, bool>,
        tags: &[super::objects::TagFacts],
    ) -> Result<CommitVerdict, VerifyError> {
        let facts = commit_facts(self.repo, id)?;
        let mut verdict = CommitVerdict {
            id: id.to_string(),
            summary: facts.summary.clone(),
            committer: facts.committer_email.clone(),
            signers: Vec::new(),
            refusal: None,
        };
        match self.signatures(&facts, tags) {
            Ok(signers) => verdict.signers = signers,
            Err(r) => {
                verdict.refusal = Some(r);
                return Ok(verdict);
            }
        }
        let own = verdict.signers[0].clone();

        let touched = self.touched_paths(&facts).map_err(VerifyError::Walk)?;
        if own.class == SignerClass::Forge && verdict.signers.len() == 1 {
            verdict.refusal = self.check_forge_merge(&facts, &own, in_range, results, &touched)?;
            return Ok(verdict);
        }
        let persons = person_signers(&verdict);

        // The repository signer list: a change needs enough previously trusted signers, and the
        // new list must parse.
        if let Some(cfg) = &self.policy.repo_signers
            && touched.contains(&cfg.path)
        {
            if persons.len() < cfg.min_signers {
                verdict.refusal = Some(CommitRefusal::SignerListChangeUntrusted {
                    path: cfg.path.clone(),
                    have: persons.iter().copied().collect::<Vec<_>>().join(", "),
                    need: cfg.min_signers,
                });
                return Ok(verdict);
            }
            if let Some(blob) = self.blob_at(id, &cfg.path) {
                let data = self
                    .repo
                    .find_object(blob)
                    .map(|o| o.detach().data)
                    .unwrap_or_default();
                if let Err(e) = parse_signer_list(
                    &cfg.path,
                    &String::from_utf8_lossy(&data),
                    &self.policy.roots,
                ) {
                    verdict.refusal = Some(CommitRefusal::InvalidSignerList(e.to_string()));
                    return Ok(verdict);
                }
            }
        }

        for rule in &self.policy.rules {
            let hits: Vec<&String> = touched.iter().filter(|p| rule.matches(p)).collect();
            if hits.is_empty() {
                continue;
            }
            let counted: Vec<&str> = persons.iter().copied().filter(|n| rule.counts(n)).collect();
            if counted.len() < rule.min_signers {
                let mut shown: Vec<String> = hits.iter().take(3).map(|s| s.to_string()).collect();
                if hits.len() > 3 {
                    shown.push(format!("… ({} paths)", hits.len()));
                }
                verdict.refusal = Some(CommitRefusal::NotEnoughSigners {
                    paths: shown.join(", "),
                    need: rule.min_signers,
                    allowed: rule.signers.join(", "),
                    have: persons.iter().copied().collect::<Vec<_>>().join(", "),
                    prefix: self.policy.approval_tag_prefix.clone(),
                });
                return Ok(verdict);
            }
        }
        Ok(verdict)
    }

    /// The commit's own signature and the signed approval tags on it, checked against the
    /// signers trusted before it (the first entry is the commit's own signer).
    fn signatures(
        &mut self,
        facts: &CommitFacts,
        tags: &[super::objects::TagFacts],
    ) -> Result<Vec<Accepted>, CommitRefusal> {
        let trusted = self.trusted_before(facts.parents.first().copied())?;
        let own = match &facts.signature {
            None => Err(Refusal::Unsigned),
            Some(sig) => check(
                &Signed {
                    payload: &facts.payload,
                    signature: sig,
                    email: &facts.committer_email,
                    time: facts.committer_time,
                },
                &trusted,
                self.policy.identity_binding,
                self.now,
            ),
        }
        .map_err(CommitRefusal::Signature)?;
        let mut signers = vec![own];
        for tag in tags {
            let Some(sig) = &tag.signature else { continue };
            if let Ok(a) = check(
                &Signed {
                    payload: &tag.payload,
                    signature: sig,
                    email: &tag.tagger_email,
                    time: tag.tagger_time,
                },
                &trusted,
                self.policy.identity_binding,
                self.now,
            ) && a.class == SignerClass::Person
                && !signers.iter().any(|s: &Accepted| s.signer == a.signer)
            {
                signers.push(a);
            }
        }
        Ok(signers)
    }

    /// Who signed commit `id` (its own signature and the signed approval tags on it), checked
    /// against the signers trusted before it, whatever range it was applied in. The SRE
    /// executor asks this of the commits that proposed and approved an action.
    pub fn signers_of(
        &mut self,
        id: ObjectId,
    ) -> Result<Result<Vec<Accepted>, CommitRefusal>, VerifyError> {
        let facts = commit_facts(self.repo, id)?;
        let single: BTreeSet<ObjectId> = [id].into_iter().collect();
        let tags = self.approval_tags(&single)?;
        Ok(self.signatures(&facts, tags.get(&id).map_or(&[][..], Vec::as_slice)))
    }

    fn check_forge_merge(
        &self,
        facts: &CommitFacts,
        own: &Accepted,
        in_range: &BTreeSet<ObjectId>,
        results: &BTreeMap<ObjectId, bool>,
        touched: &[String],
    ) -> Result<Option<CommitRefusal>, VerifyError> {
        if facts.parents.len() != 2 {
            return Ok(Some(CommitRefusal::ForgeNotMerge(own.signer.clone())));
        }
        // Every commit the merge brings in (reachable from the second parent, new in this
        // range) must have verified on its own.
        let walk = self
            .repo
            .rev_walk([facts.parents[1]])
            .with_hidden([facts.parents[0]])
            .all()
            .map_err(|e| VerifyError::Walk(e.to_string()))?;
        for info in walk {
            let info = info.map_err(|e| VerifyError::Walk(e.to_string()))?;
            if in_range.contains(&info.id) && results.get(&info.id) != Some(&true) {
                return Ok(Some(CommitRefusal::ForgeMergeUnverified(
                    info.id.to_string(),
                )));
            }
        }
        // The merge may not change anything beyond the merged branch's content.
        let merged_tree = self
            .repo
            .find_commit(facts.parents[1])
            .and_then(|c| c.tree_id())
            .map_err(|e| VerifyError::Walk(e.to_string()))?;
        let extra: Vec<&String> = touched
            .iter()
            .filter(|p| self.entry_id(facts.tree, p) != self.entry_id(merged_tree.detach(), p))
            .collect();
        if !extra.is_empty() {
            return Ok(Some(CommitRefusal::ForgeMergeExtraChanges(
                extra
                    .iter()
                    .take(3)
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )));
        }
        Ok(None)
    }

    fn entry_id(&self, tree: ObjectId, path: &str) -> Option<ObjectId> {
        let tree = self.repo.find_tree(tree).ok()?;
        tree.lookup_entry_by_path(path).ok()?.map(|e| e.object_id())
    }

    /// Paths whose content differs from the first parent (every path for a root commit).
    fn touched_paths(&self, facts: &CommitFacts) -> Result<Vec<String>, String> {
        let parent_tree = match facts.parents.first() {
            Some(p) => Some(
                self.repo
                    .find_commit(*p)
                    .and_then(|c| c.tree_id())
                    .map_err(|e| e.to_string())?
                    .detach(),
            ),
            None => None,
        };
        let mut out = Vec::new();
        self.diff_trees(parent_tree, Some(facts.tree), "", &mut out)?;
        Ok(out)
    }

    fn tree_entries(
        &self,
        id: Option<ObjectId>,
    ) -> Result<BTreeMap<String, (ObjectId, bool)>, String> {
        let mut out = BTreeMap::new();
        let Some(id) = id else { return Ok(out) };
        let tree = self.repo.find_tree(id).map_err(|e| e.to_string())?;
        let parsed =
            gix::objs::TreeRef::from_bytes(&tree.data, id.kind()).map_err(|e| e.to_string())?;
        for e in parsed.entries {
            out.insert(
                e.filename.to_str_lossy().into_owned(),
                (e.oid.to_owned(), e.mode.is_tree()),
            );
        }
        Ok(out)
    }

    fn diff_trees(
        &self,
        a: Option<ObjectId>,
        b: Option<ObjectId>,
        prefix: &str,
        out: &mut Vec<String>,
    ) -> Result<(), String> {
        if a == b {
            return Ok(());
        }
        let ea = self.tree_entries(a)?;
        let eb = self.tree_entries(b)?;
        let names: BTreeSet<&String> = ea.keys().chain(eb.keys()).collect();
        for name in names {
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            let (x, y) = (ea.get(name), eb.get(name));
            if x.map(|v| v.0) == y.map(|v| v.0) {
                continue;
            }
            let x_tree = x.filter(|v| v.1).map(|v| v.0);
            let y_tree = y.filter(|v| v.1).map(|v| v.0);
            if x_tree.is_some() || y_tree.is_some() {
                self.diff_trees(x_tree, y_tree, &path, out)?;
            }
            let x_file = x.is_some_and(|v| !v.1);
            let y_file = y.is_some_and(|v| !v.1);
            if x_file || y_file {
                out.push(path);
            }
        }
        Ok(())
    }
}

/// The distinct people (not forge keys) whose signatures a commit carries.
fn person_signers(verdict: &CommitVerdict) -> BTreeSet<&str> {
    verdict
        .signers
        .iter()
        .filter(|s| s.class == SignerClass::Person)
        .map(|s| s.signer.as_str())
        .collect()
}

/// Verifies a signed annotated tag (for pinning to a tag) with the root keys.
pub fn verify_tag(
    repo: &gix::Repository,
    policy: &TrustPolicy,
    tag: ObjectId,
    now: i64,
) -> Result<Result<Accepted, Refusal>, ObjectError> {
    let facts = tag_facts(repo, tag)?;
    Ok(match &facts.signature {
        None => Err(Refusal::Unsigned),
        Some(sig) => check(
            &Signed {
                payload: &facts.payload,
                signature: sig,
                email: &facts.tagger_email,
                time: facts.tagger_time,
            },
            &policy.roots,
            policy.identity_binding,
            now,
        ),
    })
}
