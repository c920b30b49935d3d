//! In-cluster proposals become pull requests. Upstream's SRE agent proposes by creating a
//! `KarsSREAction` in `kars-sre` (it holds `kars-sre-action-author`). Such a CR is never run as
//! it is: the agent validates it, commits it as `sre/actions/<name>.yaml` (approval Pending) on
//! branch `kars-sre/<name>` with a commit signed by its own proposer key, pushes, opens a pull
//! request, and records the pull request on the CR (annotation and status). From there it is
//! an ordinary proposal: someone approves it with a signed commit and merges; when the merged
//! copy reaches the cluster, it supersedes the in-cluster CR (which is deleted just before the
//! apply) and runs once, like any other. A `kubectl patch` of the in-cluster CR to Approved is
//! reported with a warning Event and nothing else.

use std::sync::Arc;

use gix::ObjectId;
use kars_contract::Reason;
use kars_contract::labels::REPOSITORY_LABEL;
use kars_renderer::sre::{
    DEFAULT_TTL_MINUTES, Proposal, SRE_NAMESPACE, SreOperation, check_proposal_text,
};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions,
};
use kube::core::GroupVersionKind;
use kube::runtime::events::{EventType, Recorder};
use serde_json::json;

use super::ledger::{SrePhase, SreRecord};
use super::{ActionInGit, BRANCH_PREFIX, file_of};
use crate::forge::push::PackObject;
use crate::forge::{Forge, Gitea};

/// Annotation on an in-cluster proposal: the pull request it became.
pub const PULL_REQUEST_ANNOTATION: &str = "gitops.kars.io/pull-request";
/// Annotation on an in-cluster proposal that was not forwarded: why.
pub const REFUSED_ANNOTATION: &str = "gitops.kars.io/proposal-refused";
/// Annotation: the generation of the in-cluster CR whose Approved state was last reported as
/// ignored (one warning per change).
pub const IGNORED_APPROVAL_ANNOTATION: &str = "gitops.kars.io/approval-ignored-generation";

/// Who the agent commits in-cluster proposals as: an SSH key the trust policy lists as a
/// signer (allowed on `sre/actions/`, not an approver), and its identity.
#[derive(Clone)]
pub struct Proposer {
    key: Arc<ssh_key::PrivateKey>,
    /// Committer name.
    pub name: String,
    /// Committer e-mail (identity binding: the trust policy's e-mail for the key).
    pub email: String,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer")
            .field("email", &self.email)
            .field("key", &"***")
            .finish()
    }
}

impl Proposer {
    /// Reads an unencrypted OpenSSH private key.
    pub fn from_file(path: &std::path::Path, name: &str, email: &str) -> Result<Proposer, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let key = ssh_key::PrivateKey::from_openssh(text.trim())
            .map_err(|e| format!("{}: not an OpenSSH private key: {e}", path.display()))?;
        if key.is_encrypted() {
            return Err(format!(
                "{}: the key is encrypted; the agent needs an unencrypted key (kept in a Secret)",
                path.display()
            ));
        }
        if !email.contains('@') {
            return Err(format!(
                "proposer e-mail {email:?} is not an e-mail address"
            ));
        }
        Ok(Proposer {
            key: Arc::new(key),
            name: name.to_string(),
            email: email.to_string(),
        })
    }
}

fn sre_api(client: &kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        kars_contract::KARS_GROUP,
        "v1alpha1",
        "KarsSREAction",
    ));
    Api::namespaced_with(client.clone(), SRE_NAMESPACE, &ar)
}

fn annotation<'a>(o: &'a DynamicObject, key: &str) -> Option<&'a str> {
    o.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn from_git(o: &DynamicObject) -> bool {
    o.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(REPOSITORY_LABEL))
}

/// Before the apply: an in-cluster proposal whose pull request merged is superseded by its
/// Git copy (same name); the in-cluster CR is deleted so the Git copy can be applied.
pub async fn supersede(client: &kube::Client, actions: &[ActionInGit]) {
    let api = sre_api(client);
    for a in actions {
        let Ok(Some(live)) = api.get_opt(&a.name).await else {
            continue;
        };
        if from_git(&live) || annotation(&live, PULL_REQUEST_ANNOTATION).is_none() {
            continue;
        }
        let params = DeleteParams {
            preconditions: live.metadata.uid.clone().map(|u| Preconditions {
                uid: Some(u),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&a.name, &params).await {
            Ok(_) => {
                tracing::info!(action = %a.name, "the in-cluster proposal is superseded by its merged copy from Git")
            }
            Err(e) => {
                tracing::warn!(action = %a.name, error = %e, "could not remove the superseded in-cluster proposal")
            }
        }
    }
}

/// The proposal an in-cluster CR makes.
fn proposal_of(o: &DynamicObject) -> Proposal {
    let spec = &o.data["spec"];
    let text = |k: &str| {
        spec[k]
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or("(none given)")
            .to_string()
    };
    Proposal {
        id: o.metadata.name.clone().unwrap_or_default(),
        action: spec["action"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        params: serde_json::from_value(spec["action"]["params"].clone()).unwrap_or_default(),
        diagnosis: text("diagnosis"),
        rationale: text("rationale"),
        ttl_minutes: spec["ttlMinutes"]
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .unwrap_or(DEFAULT_TTL_MINUTES),
    }
}

/// One change of a commit the agent makes.
#[derive(Clone, Debug)]
pub enum Edit {
    /// Write `path` with this text.
    Write(String, String),
    /// Remove `path`.
    Remove(String),
}

/// A pull request the agent opens with its own signed commit.
pub struct AgentPull<'a> {
    /// The new branch.
    pub branch: &'a str,
    /// The branch it targets.
    pub base: &'a str,
    /// The file edits.
    pub edits: &'a [Edit],
    /// The commit message.
    pub message: &'a str,
    /// The pull request's title.
    pub title: &'a str,
    /// Its body (Markdown).
    pub body: &'a str,
}

/// Commits `pull.edits` on `head` signed with the proposer key, pushes the branch and opens
/// the pull request; returns its URL.
pub async fn open_signed_pull(
    forge: &Gitea,
    proposer: &Proposer,
    repo: &gix::ThreadSafeRepository,
    head: ObjectId,
    pull: &AgentPull<'_>,
) -> Result<String, String> {
    let (commit, objects) = {
        let local = repo.to_thread_local();
        signed_commit(
            &local,
            head,
            pull.edits,
            pull.message,
            proposer,
            kars_contract::time::unix_now(),
        )?
    };
    forge
        .push_new_branch(pull.branch, &commit.to_string(), &objects)
        .await
        .map_err(|e| e.to_string())?;
    let pr = forge
        .open_pull(pull.branch, pull.base, pull.title, pull.body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(pr.url)
}

/// The signed proposal commit on `head`: writes the blob, the changed trees and the commit into
/// `repo` and returns the commit and the objects a push must carry (blocking).
pub fn proposal_commit(
    repo: &gix::Repository,
    head: ObjectId,
    file: &str,
    text: &str,
    message: &str,
    proposer: &Proposer,
    now: i64,
) -> Result<(ObjectId, Vec<PackObject>), String> {
    signed_commit(
        repo,
        head,
        &[Edit::Write(file.to_string(), text.to_string())],
        message,
        proposer,
        now,
    )
}

/// A commit on `head` with `edits`, signed with the proposer key: writes the blobs, the
/// changed trees and the commit into `repo` and returns the commit and the objects a push must
/// carry (blocking).
pub fn signed_commit(
    repo: &gix::Repository,
    head: ObjectId,
    edits: &[Edit],
    message: &str,
    proposer: &Proposer,
    now: i64,
) -> Result<(ObjectId, Vec<PackObject>), String> {
    fn e(what: &'static str) -> impl Fn(gix::Error) -> String {
        move |err| format!("{what}: {err}")
    }
    let base_tree = repo
        .find_commit(head)
        .map_err(|err| format!("reading {head}: {err}"))?
        .tree_id()
        .map_err(|err| format!("reading the tree of {head}: {err}"))?
        .detach();
    let raw = |id: ObjectId| -> Result<PackObject, String> {
        let o = repo
            .find_object(id)
            .map_err(|err| format!("reading {id}: {err}"))?;
        Ok(PackObject {
            kind: o.kind,
            data: o.data.clone(),
        })
    };
    let mut objects = Vec::new();
    let mut editor = repo.edit_tree(base_tree).map_err(e("editing the tree"))?;
    for edit in edits {
        match edit {
            Edit::Write(path, text) => {
                let blob = repo
                    .write_blob(text.as_bytes())
                    .map_err(e("writing a blob"))?
                    .detach();
                objects.push(raw(blob)?);
                editor
                    .upsert(path.as_str(), gix::object::tree::EntryKind::Blob, blob)
                    .map_err(e("adding a file"))?;
            }
            Edit::Remove(path) => {
                editor.remove(path.as_str()).map_err(e("removing a file"))?;
            }
        }
    }
    let tree = editor.write().map_err(e("writing the trees"))?.detach();
    objects.push(raw(tree)?);
    let root = repo
        .find_tree(tree)
        .map_err(|err| format!("reading {tree}: {err}"))?;
    // Every directory an edit touched that still exists (a directory left empty is gone).
    let mut dirs: Vec<String> = Vec::new();
    for edit in edits {
        let (Edit::Write(path, _) | Edit::Remove(path)) = edit;
        let parts: Vec<&str> = path.split('/').collect();
        for depth in 1..parts.len() {
            let dir = parts[..depth].join("/");
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    for dir in dirs {
        if let Some(entry) = root
            .lookup_entry_by_path(&dir)
            .map_err(|err| format!("reading {dir}: {err}"))?
        {
            objects.push(raw(entry.object_id())?);
        }
    }
    let who = gix::actor::Signature {
        name: proposer.name.as_str().into(),
        email: proposer.email.as_str().into(),
        time: gix::date::Time {
            seconds: now,
            offset: 0,
        },
    };
    let mut commit = gix::objs::Commit {
        tree,
        parents: [head].into_iter().collect(),
        author: who.clone(),
        committer: who,
        encoding: None,
        message: message.into(),
        extra_headers: Vec::new(),
    };
    let mut payload = Vec::new();
    gix::objs::WriteTo::write_to(&commit, &mut payload)
        .map_err(|err| format!("encoding the commit: {err}"))?;
    let sig = proposer
        .key
        .sign("git", ssh_key::HashAlg::Sha512, &payload)
        .map_err(|err| format!("signing the commit: {err}"))?;
    let pem = sig
        .to_pem(ssh_key::LineEnding::LF)
        .map_err(|err| format!("encoding the signature: {err}"))?;
    commit
        .extra_headers
        .push(("gpgsig".into(), pem.trim_end().into()));
    let id = repo
        .write_object(&commit)
        .map_err(e("writing the commit"))?
        .detach();
    objects.push(raw(id)?);
    Ok((id, objects))
}

async fn annotate(api: &Api<DynamicObject>, name: &str, key: &str, value: &str) {
    let patch = json!({"metadata": {"annotations": {key: value}}});
    if let Err(e) = api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        tracing::warn!(action = name, error = %e, "could not annotate the in-cluster proposal");
    }
}

/// Turns each new in-cluster proposal into a pull request (once), reports refusals, and warns
/// about in-cluster approvals. `repo`/`head`: the applied commit, which the proposal branch
/// starts from; `base`: the branch the pull request targets.
#[allow(clippy::too_many_arguments)]
pub async fn forward(
    client: &kube::Client,
    recorder: &Recorder,
    forge: &Gitea,
    proposer: &Proposer,
    repo: &gix::ThreadSafeRepository,
    head: ObjectId,
    base: &str,
    in_git: &[ActionInGit],
    reap_after: i64,
) {
    let api = sre_api(client);
    let now = kars_contract::time::unix_now();
    let list = match api.list(&ListParams::default()).await {
        Ok(l) => l.items,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the in-cluster SRE proposals");
            return;
        }
    };
    for o in list
        .iter()
        .filter(|o| !from_git(o) && o.metadata.deletion_timestamp.is_none())
    {
        let name = o.metadata.name.clone().unwrap_or_default();
        let age = o
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| now - t.0.as_second());
        if let Some(url) = annotation(o, PULL_REQUEST_ANNOTATION) {
            let approved = o.data["spec"]["approval"]["state"] == "Approved";
            let generation = o.metadata.generation.unwrap_or(0).to_string();
            if approved && annotation(o, IGNORED_APPROVAL_ANNOTATION) != Some(generation.as_str()) {
                super::publish(
                    recorder,
                    &name,
                    EventType::Warning,
                    Reason::ApprovalNotFromGit,
                    format!("{name} was set to Approved in the cluster: nothing runs; approve it with a signed commit in its pull request {url}"),
                )
                .await;
                annotate(&api, &name, IGNORED_APPROVAL_ANNOTATION, &generation).await;
            }
            let closed = match forge
                .pull_for_branch(&format!("{BRANCH_PREFIX}{name}"))
                .await
            {
                Ok(Some(pr)) => pr.state == crate::forge::PullState::Closed,
                Ok(None) => false,
                Err(e) => {
                    tracing::warn!(action = %name, error = %e, "could not read the proposal's pull request");
                    false
                }
            };
            let rejected = o.data["status"]["phase"] == "Rejected";
            match super::reap::in_cluster_fate(closed, false, rejected, age, reap_after) {
                super::reap::InClusterFate::Keep => {}
                super::reap::InClusterFate::Delete => super::reap::delete_in_cluster(&api, o).await,
                super::reap::InClusterFate::Rejected => {
                    let rec = record(
                        &name,
                        SrePhase::Rejected,
                        Reason::Rejected,
                        format!("its pull request {url} was closed without a merge"),
                    );
                    super::write_cr_status(client, &rec).await;
                    super::publish(
                        recorder,
                        &name,
                        EventType::Normal,
                        Reason::Rejected,
                        rec.message,
                    )
                    .await;
                }
            }
            continue;
        }
        if annotation(o, REFUSED_ANNOTATION).is_some() {
            if super::reap::in_cluster_fate(false, true, false, age, reap_after)
                == super::reap::InClusterFate::Delete
            {
                super::reap::delete_in_cluster(&api, o).await;
            }
            continue;
        }
        if in_git.iter().any(|a| a.name == name) {
            continue;
        }
        let proposal = proposal_of(o);
        let op = SreOperation::parse(&proposal.action, &proposal.params);
        let mut problems: Vec<String> = match &op {
            Ok(_) => Vec::new(),
            Err(p) => p.iter().map(ToString::to_string).collect(),
        };
        problems.extend(check_proposal_text(&proposal));
        let file = file_of(&proposal.id);
        let exists = {
            let local = repo.to_thread_local();
            crate::source::read_file(&local, head, &file)
                .ok()
                .flatten()
                .is_some()
        };
        if problems.is_empty() && exists {
            problems.push(format!(
                "{file} exists in Git already: the proposal needs another name"
            ));
        }
        let (Ok(op), true) = (op, problems.is_empty()) else {
            let why = problems.join("; ");
            annotate(&api, &name, REFUSED_ANNOTATION, &why).await;
            let rec = record(
                &name,
                SrePhase::Refused,
                Reason::ActionInvalid,
                format!("not turned into a pull request: {why}"),
            );
            super::write_cr_status(client, &rec).await;
            super::publish(
                recorder,
                &name,
                EventType::Warning,
                Reason::ActionInvalid,
                rec.message.clone(),
            )
            .await;
            continue;
        };
        match forward_one(forge, proposer, repo, head, base, &proposal, &op, o).await {
            Ok(url) => {
                annotate(&api, &name, PULL_REQUEST_ANNOTATION, &url).await;
                let rec = record(
                    &name,
                    SrePhase::Proposed,
                    Reason::Proposed,
                    format!(
                        "proposed as pull request {url}; approve it there with a signed commit"
                    ),
                );
                super::write_cr_status(client, &rec).await;
                super::publish(
                    recorder,
                    &name,
                    EventType::Normal,
                    Reason::Proposed,
                    rec.message,
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(action = %name, error = %e, "could not turn the in-cluster proposal into a pull request (retried next sync)")
            }
        }
    }
}

fn record(name: &str, phase: SrePhase, reason: Reason, message: String) -> SreRecord {
    SreRecord::new(name, phase, reason, message)
}

#[allow(clippy::too_many_arguments)]
async fn forward_one(
    forge: &Gitea,
    proposer: &Proposer,
    repo: &gix::ThreadSafeRepository,
    head: ObjectId,
    base: &str,
    proposal: &Proposal,
    op: &SreOperation,
    o: &DynamicObject,
) -> Result<String, String> {
    let branch = format!("{BRANCH_PREFIX}{}", proposal.id);
    // Idempotent: a pull request made before a crash is found and recorded.
    if let Some(pr) = forge
        .pull_for_branch(&branch)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(pr.url);
    }
    let file = file_of(&proposal.id);
    let text = proposal.file_text()?;
    let author = o
        .metadata
        .managed_fields
        .as_ref()
        .and_then(|m| m.first())
        .and_then(|m| m.manager.clone())
        .unwrap_or_else(|| "unknown".into());
    let message = format!(
        "sre: propose {} {} ({})\n\n{}\n\nProposed in the cluster as {SRE_NAMESPACE}/{} (by {author}).\nKars-SRE-Action: {}",
        op.type_name(),
        op.target(),
        proposal.id,
        proposal.diagnosis,
        proposal.id,
        proposal.id
    );
    let (commit, objects) = {
        let local = repo.to_thread_local();
        proposal_commit(
            &local,
            head,
            &file,
            &text,
            &message,
            proposer,
            kars_contract::time::unix_now(),
        )?
    };
    forge
        .push_new_branch(&branch, &commit.to_string(), &objects)
        .await
        .map_err(|e| e.to_string())?;
    let origin = format!(
        "Proposed in the cluster as `{SRE_NAMESPACE}/{}` by `{author}`; committed by kars GitOps.",
        proposal.id
    );
    let pr = forge
        .open_pull(
            &branch,
            base,
            &format!("SRE: {} ({})", op.change(), proposal.id),
            &super::pull_request_body(proposal, op, &file, &text, Some(&origin)),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(pr.url)
}
