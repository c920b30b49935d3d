//! Reading and changing PolicyRepo objects for the commands that work on them (`status`,
//! `get`, `events`, `reconcile`, `suspend`, `resume`, `delete`, `trace`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kars_gitops_agent::status::PolicyRepo;
use kube::api::{Api, ListParams, Patch, PatchParams};

use crate::access::{self, ClusterArgs, Connected};
use crate::failure::Failure;

/// The arguments of the commands that show one PolicyRepo or all of a namespace (`status`,
/// `events`).
#[derive(clap::Args, Debug)]
pub struct Which {
    /// The PolicyRepo (default: every PolicyRepo in the namespace).
    pub name: Option<String>,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// The PolicyRepo API of `namespace` (every namespace with `None`).
pub fn api(at: &Connected, namespace: Option<&str>) -> Api<PolicyRepo> {
    match namespace {
        Some(ns) => Api::namespaced(at.client.clone(), ns),
        None => Api::all(at.client.clone()),
    }
}

/// The PolicyRepo `name` in `args.namespace`.
pub async fn get(at: &Connected, args: &ClusterArgs, name: &str) -> Result<PolicyRepo, Failure> {
    api(at, Some(&args.namespace)).get(name).await.map_err(|e| {
        let f = access::explain(&e, &format!("PolicyRepo {}/{name}", args.namespace), at);
        if f.reason.as_deref() == Some("NotFound") {
            f.hint(format!(
                "kars get -n {} lists the PolicyRepos; kars sync creates one",
                args.namespace
            ))
        } else {
            f
        }
    })
}

/// The PolicyRepos `name` names, or all of them in the namespace (every namespace with
/// `all_namespaces`).
pub async fn list(
    at: &Connected,
    args: &ClusterArgs,
    name: Option<&str>,
    all_namespaces: bool,
) -> Result<Vec<PolicyRepo>, Failure> {
    if let Some(n) = name {
        return Ok(vec![get(at, args, n).await?]);
    }
    let ns = (!all_namespaces).then_some(args.namespace.as_str());
    let what = match ns {
        Some(ns) => format!("PolicyRepos in namespace {ns}"),
        None => "PolicyRepos".to_string(),
    };
    Ok(api(at, ns)
        .list(&ListParams::default())
        .await
        .map_err(|e| access::explain(&e, &what, at))?
        .items)
}

/// A JSON merge patch of `name`'s metadata or spec.
pub async fn patch(
    at: &Connected,
    args: &ClusterArgs,
    name: &str,
    patch: serde_json::Value,
) -> Result<PolicyRepo, Failure> {
    api(at, Some(&args.namespace))
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| access::explain(&e, &format!("PolicyRepo {}/{name}", args.namespace), at))
}

/// The condition `type_` of a PolicyRepo.
pub fn condition<'a>(pr: &'a PolicyRepo, type_: &str) -> Option<&'a Condition> {
    pr.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// True when the PolicyRepo's Ready condition is True.
pub fn is_ready(pr: &PolicyRepo) -> bool {
    condition(pr, "Ready").is_some_and(|c| c.status == "True")
}

/// `name` of an object.
pub fn name_of(pr: &PolicyRepo) -> String {
    pr.metadata.name.clone().unwrap_or_default()
}

/// How long ago an RFC 3339 instant was, like kubectl's AGE column (`5m`, `3h`, `2d`).
pub fn age(rfc3339: Option<&str>) -> String {
    let Some(t) = rfc3339.and_then(kars_contract::time::parse_rfc3339) else {
        return "-".into();
    };
    let secs = (kars_contract::time::unix_now() - t).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Prints rows as aligned columns (the first row is the header).
pub fn table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        crate::outln!("{}", line.trim_end());
    }
}
