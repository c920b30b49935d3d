//! `kars trace KIND/NAME` (or `KIND/NAMESPACE/NAME`): where a live object comes from, like
//! flux's `trace` — the PolicyRepo that applied it, the commit and who signed it, and the
//! repository file and line it was rendered from.

use std::process::ExitCode;

use kars_contract::labels::{
    CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL, OBJECT_DIGEST_ANNOTATION, OWNER_ANNOTATION,
    REPOSITORY_LABEL, SOURCE_ANNOTATION,
};
use kars_gitops_agent::source;
use kube::api::{Api, DynamicObject};
use kube::discovery::{Discovery, Scope};
use serde_json::{Value, json};

use super::policyrepo;
use super::why::kind_matches;
use crate::access::{self, ClusterArgs};
use crate::failure::{CHECK, Failure, USAGE};
use crate::ui;

/// Arguments of `kars trace`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The object: Kind/name or Kind/namespace/name (the kind in any case, singular or plural).
    object: String,
    /// Where fetched repositories are cached (to find the line in a remote repository).
    #[arg(long, value_name = "DIR")]
    cache_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `kars trace`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let parts: Vec<&str> = args.object.split('/').collect();
        let (kind, namespace, name) = match parts.as_slice() {
            [k, n] => (*k, None, *n),
            [k, ns, n] => (*k, Some(*ns), *n),
            _ => {
                return Err(Failure::msg(
                    USAGE,
                    format!(
                        "{:?}: name an object as Kind/name or Kind/namespace/name",
                        args.object
                    ),
                ));
            }
        };
        let at = access::connect(&args.cluster).await?;
        let discovery = Discovery::new(at.client.clone())
            .run()
            .await
            .map_err(|e| access::explain(&e, "discovering the cluster's kinds", &at))?;
        let found = discovery
            .groups()
            .flat_map(|g| g.recommended_resources())
            .find(|(ar, _)| kind_matches(kind, &ar.kind) || ar.plural.eq_ignore_ascii_case(kind));
        let Some((ar, caps)) = found else {
            return Err(Failure::msg(
                USAGE,
                format!("the cluster at {} serves no kind {kind:?}", at.server),
            ));
        };
        let api: Api<DynamicObject> = match (&caps.scope, namespace) {
            (Scope::Namespaced, Some(ns)) => Api::namespaced_with(at.client.clone(), ns, &ar),
            (Scope::Namespaced, None) => Api::default_namespaced_with(at.client.clone(), &ar),
            (Scope::Cluster, _) => Api::all_with(at.client.clone(), &ar),
        };
        let key = match namespace {
            Some(ns) if caps.scope == Scope::Namespaced => format!("{}/{ns}/{name}", ar.kind),
            _ => format!("{}/{name}", ar.kind),
        };
        let live = api
            .get(name)
            .await
            .map_err(|e| access::explain(&e, &key, &at))?;
        let labels = live.metadata.labels.clone().unwrap_or_default();
        let annotations = live.metadata.annotations.clone().unwrap_or_default();
        if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "{key} is not managed by kars GitOps (no {MANAGED_BY_LABEL}={MANAGED_BY} label)"
                ),
            )
            .reason("NotManaged"));
        }
        let owner = annotations.get(OWNER_ANNOTATION).cloned();
        let file = annotations
            .get(SOURCE_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        let (pr_ns, pr_name) = match owner.as_deref().and_then(|o| o.split_once('/')) {
            Some((ns, n)) => (ns.to_string(), n.to_string()),
            None => (args.cluster.namespace.clone(), String::new()),
        };
        let policy_repo = if pr_name.is_empty() {
            None
        } else {
            let ca = ClusterArgs {
                namespace: pr_ns.clone(),
                ..args.cluster.clone()
            };
            policyrepo::get(&at, &ca, &pr_name).await.ok()
        };
        let status = policy_repo
            .as_ref()
            .and_then(|p| p.status.clone())
            .unwrap_or_default();
        let commit = status.last_applied_revision.clone();
        let url = policy_repo
            .as_ref()
            .map(|p| p.spec.url.clone())
            .unwrap_or_default();
        let line = commit
            .as_deref()
            .and_then(|c| locate(&url, c, &file, &ar.kind, name, args.cache_dir.as_deref()));
        let ready = policy_repo
            .as_ref()
            .and_then(|p| policyrepo::condition(p, "Ready"));
        let doc = json!({
            "object": key,
            "policyRepo": owner,
            "repository": labels.get(REPOSITORY_LABEL),
            "cluster": labels.get(CLUSTER_LABEL),
            "source": url,
            "branch": policy_repo.as_ref().and_then(|p| p.spec.branch.clone()),
            "commit": commit,
            "appliedAt": status.last_applied_at,
            "signedBy": status.last_applied_signers,
            "file": file,
            "line": line.as_ref().map(|(l, _)| *l),
            "renderedFrom": line.as_ref().map(|(_, from)| from.clone()),
            "objectDigest": annotations.get(OBJECT_DIGEST_ANNOTATION),
            "ready": ready.map(|c| json!({"status": c.status, "reason": c.reason, "message": c.message})),
        });
        if ui::get().machine() {
            ui::emit(&doc)?;
            return Ok(ExitCode::SUCCESS);
        }
        let s = |v: &Value| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".into(),
            Value::Array(a) if a.is_empty() => "-".into(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", "),
            other => other.to_string(),
        };
        let rows = [
            ("Object", s(&doc["object"])),
            ("PolicyRepo", s(&doc["policyRepo"])),
            (
                "Repository",
                format!("{} (cluster {})", s(&doc["repository"]), s(&doc["cluster"])),
            ),
            (
                "Source",
                match &doc["branch"] {
                    Value::String(b) => format!("{} (branch {b})", s(&doc["source"])),
                    _ => s(&doc["source"]),
                },
            ),
            (
                "Commit",
                format!("{} (applied {})", s(&doc["commit"]), s(&doc["appliedAt"])),
            ),
            ("Signed by", s(&doc["signedBy"])),
            (
                "File",
                match &line {
                    Some((l, from)) => format!("{file}:{l} ({from})"),
                    None => file.clone(),
                },
            ),
            ("Digest", s(&doc["objectDigest"])),
            (
                "Ready",
                ready
                    .map(|c| format!("{} {} {}", c.status, c.reason, c.message))
                    .unwrap_or_else(|| "-".into()),
            ),
        ];
        for (k, v) in rows {
            crate::outln!("{:<11} {v}", format!("{k}:"));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The line of the document in `file` at `commit` that `kind/name` was rendered from (the
/// object itself, else the file's first kars object, from which it is derived), and that
/// document's `Kind/name`.
fn locate(
    url: &str,
    commit: &str,
    file: &str,
    kind: &str,
    name: &str,
    cache_dir: Option<&std::path::Path>,
) -> Option<(u32, String)> {
    let repo_path = if source::is_remote_url(url) {
        let root = cache_dir
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| {
                std::env::var_os("HOME")
                    .map(std::path::PathBuf::from)
                    .unwrap_or_else(std::env::temp_dir)
                    .join(".cache/kars/repos")
            });
        source::cache_dir_for(&root, url)
    } else {
        std::path::PathBuf::from(url)
    };
    let repo = source::open(&repo_path).ok()?;
    let id = gix::ObjectId::from_hex(commit.as_bytes()).ok()?;
    let bytes = source::read_file(&repo, id, file).ok()??;
    let text = String::from_utf8(bytes).ok()?;
    let docs =
        kars_renderer::yaml::parse_documents(&text, kars_renderer::yaml::YamlLimits::default())
            .ok()?;
    let describe = |d: &kars_renderer::yaml::Node| {
        format!(
            "{}/{}",
            d.get("kind").and_then(|k| k.as_str()).unwrap_or("?"),
            d.get_path(&["metadata", "name"])
                .and_then(|n| n.as_str())
                .unwrap_or("?")
        )
    };
    let itself = docs.iter().find(|d| {
        d.get("kind").and_then(|k| k.as_str()) == Some(kind)
            && d.get_path(&["metadata", "name"]).and_then(|n| n.as_str()) == Some(name)
    });
    let parent = docs.iter().find(|d| {
        d.get("apiVersion")
            .and_then(|a| a.as_str())
            .is_some_and(|a| a.starts_with(kars_contract::KARS_GROUP))
    });
    itself
        .or(parent)
        .or(docs.first())
        .map(|d| (d.pos.line, describe(d)))
}
