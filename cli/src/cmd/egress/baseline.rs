//! `kars egress approve` and `kars egress deny`: a pull request that edits the sandbox's
//! inline allowlist (`spec.networkPolicy.allowedEndpoints`), keeping every other line of the
//! file.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use kars_renderer::yaml::{Node, YamlLimits, parse_documents};
use serde_json::{Value, json};

use super::{BRANCH_PREFIX, Repo, parse_endpoint, report_proposed, slug};
use crate::failure::{CHECK, Failure, USAGE as USAGE_CODE};
use crate::proposal::{Change, ForgeArgs, suffix};

const PATH: [&str; 3] = ["spec", "networkPolicy", "allowedEndpoints"];

/// Arguments of `kars egress approve` and `kars egress deny`.
#[derive(clap::Args, Debug)]
pub struct EndpointArgs {
    /// The KarsSandbox (metadata.name).
    sandbox: String,
    /// `HOST` or `HOST:PORT`. approve: a host without a port means :443; deny: every port of
    /// the host.
    endpoint: String,
    /// The sandbox's namespace, when the name is used in several.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Why (goes into the commit and the pull request).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    resign: ResignArgs,
    #[command(flatten)]
    forge: ForgeArgs,
}

/// How a sandbox whose allowlist is a signed bundle (`allowlistRef`) is re-signed: the current
/// bundle is pulled and verified with the agent's signers, the changed allowlist is pushed as a
/// new bundle and signed with your cosign key, and the pull request re-pins the digest.
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Signed allowlist bundles (sandboxes with allowlistRef)")]
pub struct ResignArgs {
    /// Your cosign private key (its password from COSIGN_PASSWORD); the agent's --bundle-keys
    /// must hold its public key.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<std::path::PathBuf>,
    /// The signers the current bundle must verify against (the agent's), and registry access.
    #[command(flatten)]
    signers: kars_gitops_agent::bundles::BundleArgs,
}

/// What to do to the allowlist.
#[derive(Clone, Debug)]
enum Op {
    Add(String, u16),
    Remove(String, Option<u16>),
}

impl Op {
    fn describe(&self, sandbox: &str) -> String {
        match self {
            Op::Add(h, p) => format!("allow {h}:{p} for {sandbox}"),
            Op::Remove(h, None) => format!("deny {h} (every port) for {sandbox}"),
            Op::Remove(h, Some(p)) => format!("deny {h}:{p} for {sandbox}"),
        }
    }
}

/// The endpoints as they are written, normalised (port default 443).
fn endpoints_of(doc: &Node) -> Vec<(String, u16)> {
    doc.get_path(&PATH)
        .and_then(Node::as_seq)
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let host = e.get("host")?.as_str()?;
            let port = e
                .get("port")
                .and_then(Node::as_i64)
                .and_then(|p| u16::try_from(p).ok())
                .unwrap_or(443);
            let host = kars_renderer::egress::egress_host(host).unwrap_or_else(|_| host.into());
            Some((host, port))
        })
        .collect()
}

fn as_lines(endpoints: &[(String, u16)]) -> Vec<String> {
    if endpoints.is_empty() {
        return vec!["[]".to_string()];
    }
    endpoints
        .iter()
        .flat_map(|(h, p)| [format!("- host: {h}"), format!("  port: {p}")])
        .collect()
}

fn as_json(endpoints: &[(String, u16)]) -> Value {
    Value::Array(
        endpoints
            .iter()
            .map(|(h, p)| json!({"host": h, "port": p}))
            .collect(),
    )
}

/// Where a sandbox's baseline allowlist lives.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Baseline {
    /// `spec.networkPolicy.allowedEndpoints`.
    Inline,
    /// A signed bundle (`spec.networkPolicy.allowlistRef`).
    Bundle(kars_renderer::api::OciArtifactRef),
}

/// The sandbox, its file position and where its allowlist lives (offline).
fn locate(
    dir: &Path,
    sandbox: &str,
    namespace: Option<&str>,
) -> Result<(Repo, usize, Baseline), Failure> {
    let repo = Repo::read(dir)?;
    let found = repo.find("KarsSandbox", sandbox, namespace)?;
    let o = found.object;
    repo.check_valid(o)?;
    let sb = o.sandbox().ok_or_else(|| {
        Failure::msg(
            CHECK,
            format!("{}:{} is not a KarsSandbox", o.file, o.pos.line),
        )
    })?;
    let np = sb.spec.network_policy.as_ref();
    if np.is_some_and(|n| n.egress_mode == "Learn") {
        crate::ui::warn(format!(
            "KarsSandbox {sandbox} is in Learn mode: its router allows every host (and records them) until egressMode is Strict"
        ));
    }
    let baseline = match np.and_then(|n| n.allowlist_ref.clone()) {
        Some(r) => Baseline::Bundle(r),
        None => Baseline::Inline,
    };
    let index = repo
        .loaded
        .objects
        .iter()
        .position(|x| x.file == o.file && x.pos == o.pos)
        .unwrap_or_default();
    Ok((repo, index, baseline))
}

/// `op` applied to `current`; `None` when it changes nothing (an approve of what is there).
fn apply_op(
    repo: &Repo,
    sandbox: &str,
    where_: &str,
    current: &[(String, u16)],
    op: &Op,
) -> Result<Option<Vec<(String, u16)>>, Failure> {
    match op {
        Op::Add(h, p) => {
            if current.iter().any(|(ch, cp)| ch == h && cp == p) {
                return Ok(None);
            }
            let mut next = current.to_vec();
            next.push((h.clone(), *p));
            Ok(Some(next))
        }
        Op::Remove(h, port) => {
            let next: Vec<_> = current
                .iter()
                .filter(|(ch, cp)| !(ch == h && port.is_none_or(|p| p == *cp)))
                .cloned()
                .collect();
            if next.len() < current.len() {
                return Ok(Some(next));
            }
            let granted = repo
                .loaded
                .objects
                .iter()
                .filter(|a| a.kind == "EgressApproval")
                .filter_map(|a| Some((a, a.kars()?.egress_approval()?)))
                .find(|(_, ea)| {
                    ea.spec.sandbox == sandbox
                        && ea.spec.hosts.iter().any(|x| x.host.eq_ignore_ascii_case(h))
                });
            let mut f = Failure::msg(
                CHECK,
                format!(
                    "{h}{} is not in the allowlist of KarsSandbox {sandbox} ({where_})",
                    port.map(|p| format!(":{p}")).unwrap_or_default()
                ),
            );
            if let Some((a, _)) = granted {
                f = f.hint(format!(
                    "EgressApproval {} ({}) grants it: kars egress revoke {}",
                    a.name, a.file, a.name
                ));
            }
            Err(f)
        }
    }
}

/// The change `op` makes to the inline allowlist of the repository at `dir` (no files when it
/// is already so).
fn plan(
    dir: &Path,
    sandbox: &str,
    namespace: Option<&str>,
    op: &Op,
    branch: &str,
    reason: Option<&str>,
) -> Result<Change, Failure> {
    let (repo, index, baseline) = locate(dir, sandbox, namespace)?;
    let o = &repo.loaded.objects[index];
    let where_ = format!("{}:{}", o.file, o.pos.line);
    if let Baseline::Bundle(r) = &baseline {
        return Err(Failure::msg(
            CHECK,
            format!(
                "KarsSandbox {sandbox} ({where_}) takes its allowlist from a signed bundle ({}/{}@{})",
                r.registry, r.repository, r.digest
            ),
        )
        .hint("pass --sign-key (your cosign key) and --bundle-keys (the agent's signers) to re-sign it"));
    }
    let current = endpoints_of(&o.node);
    let Some(next) = apply_op(&repo, sandbox, &where_, &current, op)? else {
        return Ok(Change::default());
    };
    let text = repo.text(&o.file)?;
    let edited = kars_renderer::edit::set_block(&text, &o.node, &PATH, &as_lines(&next))
        .map_err(|e| Failure::msg(CHECK, format!("{where_}: {e}")))?;
    check_edit(&text, &edited, o.pos.line, &PATH, &as_json(&next)).map_err(|why| {
        Failure::msg(
            CHECK,
            format!(
                "{where_}: the edit went wrong ({why}); nothing was proposed: edit the file by hand"
            ),
        )
    })?;
    let what = op.describe(sandbox);
    let body = pr_body(
        &what,
        &format!("`{}` — `spec.networkPolicy.allowedEndpoints`", o.file),
        &current,
        &next,
        reason,
    );
    Ok(Change {
        files: BTreeMap::from([(o.file.clone(), Some(edited))]),
        branch: branch.to_string(),
        message: commit_message(&what, reason),
        title: format!("Egress: {what}"),
        body,
    })
}

/// The change re-pinning `allowlistRef` from `old` to the new digest (no files when the base
/// already pins it); refuses a base whose reference is not `old`.
/// A bundle re-pin: the old reference, the new digest, and what changed.
struct Repin<'a> {
    old: &'a kars_renderer::api::OciArtifactRef,
    new_digest: &'a str,
    what: &'a str,
    current: &'a [(String, u16)],
    next: &'a [(String, u16)],
}

fn plan_repin(
    dir: &Path,
    sandbox: &str,
    namespace: Option<&str>,
    repin: &Repin<'_>,
    branch: &str,
    reason: Option<&str>,
) -> Result<Change, Failure> {
    let Repin {
        old,
        new_digest,
        what,
        current,
        next,
    } = *repin;
    let (repo, index, baseline) = locate(dir, sandbox, namespace)?;
    let o = &repo.loaded.objects[index];
    let where_ = format!("{}:{}", o.file, o.pos.line);
    match &baseline {
        Baseline::Bundle(r) if r.digest == new_digest => return Ok(Change::default()),
        Baseline::Bundle(r) if r == old => {}
        other => {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "KarsSandbox {sandbox} ({where_}) no longer pins {}: {other:?}; pull and run the command again",
                    old.digest
                ),
            ));
        }
    }
    let path = ["spec", "networkPolicy", "allowlistRef", "digest"];
    let text = repo.text(&o.file)?;
    let edited = kars_renderer::edit::set_block(&text, &o.node, &path, &[new_digest.to_string()])
        .map_err(|e| Failure::msg(CHECK, format!("{where_}: {e}")))?;
    check_edit(
        &text,
        &edited,
        o.pos.line,
        &path,
        &serde_json::json!(new_digest),
    )
    .map_err(|why| {
        Failure::msg(
            CHECK,
            format!(
                "{where_}: the edit went wrong ({why}); nothing was proposed: edit the file by hand"
            ),
        )
    })?;
    let mut body = pr_body(
        what,
        &format!(
            "the signed allowlist bundle of `{}` (`spec.networkPolicy.allowlistRef`), re-signed and re-pinned",
            o.file
        ),
        current,
        next,
        reason,
    );
    body.push_str(&format!(
        "
Bundle `{}/{}`: `{}` → `{new_digest}`. The agent verifies the new bundle's signature with its own keys before it renders anything from it.\n",
        old.registry, old.repository, old.digest
    ));
    Ok(Change {
        files: BTreeMap::from([(o.file.clone(), Some(edited))]),
        branch: branch.to_string(),
        message: commit_message(what, reason),
        title: format!("Egress: {what}"),
        body,
    })
}

fn commit_message(what: &str, reason: Option<&str>) -> String {
    format!(
        "egress: {what}{}",
        reason.map(|r| format!("\n\n{r}")).unwrap_or_default()
    )
}

fn pr_body(
    what: &str,
    where_: &str,
    current: &[(String, u16)],
    next: &[(String, u16)],
    reason: Option<&str>,
) -> String {
    let mut body = format!(
        "**kars egress**: {what}.\n\n{where_}:\n\n| before | after |\n|---|---|\n| {} | {} |\n",
        list(current),
        list(next)
    );
    if let Some(r) = reason {
        body.push_str(&format!("\nReason: {r}\n"));
    }
    body.push_str("\nNothing changes in the cluster until this is merged: the agent verifies the merge commit's signature, renders, applies, and the sandbox's router loads the new allowlist (the PolicyRepo's Enforced condition says when). The agent's preview comment below shows the exact change to the cluster.\n");
    body
}

fn list(endpoints: &[(String, u16)]) -> String {
    if endpoints.is_empty() {
        return "(none)".into();
    }
    endpoints
        .iter()
        .map(|(h, p)| format!("`{h}:{p}`"))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// The edited file parses, its document at `line` has exactly `want` at the path, and every
/// other document (and every other field of this one) is unchanged.
fn check_edit(
    before: &str,
    after: &str,
    line: u32,
    path: &[&str],
    want: &Value,
) -> Result<(), String> {
    let parse = |t: &str| {
        parse_documents(t, YamlLimits::default()).map_err(|e| format!("YAML: {}", e.message))
    };
    let (old, new) = (parse(before)?, parse(after)?);
    if old.len() != new.len() {
        return Err(format!("{} documents became {}", old.len(), new.len()));
    }
    for (o, n) in old.iter().zip(&new) {
        let (mut oj, mut nj) = (o.to_json(), n.to_json());
        if o.pos.line == line {
            let (parent, last) = path.split_at(path.len() - 1);
            let at =
                |j: &Value| parent.iter().fold(j.clone(), |v, k| v[*k].clone())[last[0]].clone();
            let got = at(&nj);
            if got != *want {
                return Err(format!("{} reads {got}, not {want}", path.join(".")));
            }
            for j in [&mut oj, &mut nj] {
                let mut v: &mut Value = j;
                for k in parent {
                    v = &mut v[*k];
                }
                if let Some(m) = v.as_object_mut() {
                    m.remove(last[0]);
                }
            }
            // An added networkPolicy mapping counts as the change.
            if oj["spec"]["networkPolicy"].is_null() {
                if let Some(s) = nj["spec"].as_object_mut()
                    && s.get("networkPolicy")
                        .is_some_and(|v| v.as_object().is_some_and(serde_json::Map::is_empty))
                {
                    s.remove("networkPolicy");
                }
                if let Some(s) = oj["spec"].as_object_mut() {
                    s.remove("networkPolicy");
                }
            }
        }
        if oj != nj {
            return Err(format!(
                "another field changed in the document at line {}",
                o.pos.line
            ));
        }
    }
    Ok(())
}

fn run(
    forge: ForgeArgs,
    resign: ResignArgs,
    sandbox: String,
    namespace: Option<String>,
    op: Op,
    reason: Option<String>,
) -> Result<ExitCode, Failure> {
    let (host, verb) = match &op {
        Op::Add(h, _) => (h.clone(), "approve"),
        Op::Remove(h, _) => (h.clone(), "deny"),
    };
    let branch = format!(
        "{BRANCH_PREFIX}{verb}-{}-{}-{}",
        slug(&sandbox),
        slug(&host),
        suffix()
    );
    // Offline first, against the local clone.
    forge.check_repo()?;
    let what = op.describe(&sandbox);
    let (_, _, baseline) = locate(&forge.repo, &sandbox, namespace.as_deref())?;
    if let Baseline::Bundle(old) = baseline {
        return run_resign(forge, resign, sandbox, namespace, op, reason, branch, old);
    }
    let local = plan(
        &forge.repo,
        &sandbox,
        namespace.as_deref(),
        &op,
        &branch,
        reason.as_deref(),
    )?;
    if local.files.is_empty() {
        crate::ui::note(format!(
            "the local clone already has it; checking the base branch {}",
            forge.base
        ));
    }
    super::super::block_on(async move {
        let conn = forge.connect().await?;
        let proposed = crate::proposal::propose(&conn, |dir| {
            plan(
                dir,
                &sandbox,
                namespace.as_deref(),
                &op,
                &branch,
                reason.as_deref(),
            )
        })
        .await?;
        report_proposed(proposed, &branch, &what)
    })
}

/// The endpoints of an allowlist bundle's content, and the content as JSON.
fn bundle_endpoints(content: &[u8]) -> Result<(Vec<(String, u16)>, Value), Failure> {
    let eps = kars_renderer::bundle::allowlist_endpoints(content)
        .map_err(|e| Failure::msg(CHECK, format!("the current bundle: {e}")))?;
    let doc: Value = serde_saphyr::from_slice(content)
        .map_err(|e| Failure::msg(CHECK, format!("the current bundle: {e}")))?;
    Ok((
        eps.into_iter()
            .filter_map(|(h, p)| Some((h, u16::try_from(p).ok()?)))
            .collect(),
        doc,
    ))
}

/// Re-signs a bundle allowlist: verify the current bundle, change it, push and sign the new
/// one, and propose the new digest.
#[allow(clippy::too_many_arguments)]
fn run_resign(
    forge: ForgeArgs,
    resign: ResignArgs,
    sandbox: String,
    namespace: Option<String>,
    op: Op,
    reason: Option<String>,
    branch: String,
    old: kars_renderer::api::OciArtifactRef,
) -> Result<ExitCode, Failure> {
    use kars_gitops_agent::bundles::{self, BundleRef};
    use kars_renderer::bundle::{BundleKind, canonicalize};
    let kind = BundleKind::EgressAllowlist;
    let where_ = format!("KarsSandbox {sandbox}");
    // Offline checks of the flags this needs.
    let key_path = resign.sign_key.clone().ok_or_else(|| {
        Failure::msg(
            CHECK,
            format!(
                "{where_} takes its allowlist from a signed bundle ({}/{}@{}): re-signing it needs --sign-key (your cosign key)",
                old.registry, old.repository, old.digest
            ),
        )
        .hint("pass --sign-key cosign.key and --bundle-keys with the agent's public keys")
    })?;
    let policy = resign
        .signers
        .signer_policy()
        .map_err(|e| Failure::msg(USAGE_CODE, e))?;
    if policy.is_empty() {
        return Err(Failure::msg(
            CHECK,
            format!(
                "{where_}: the current bundle must verify before it is changed: pass --bundle-keys (the agent's signers)"
            ),
        ));
    }
    let key_pem = std::fs::read(&key_path).map_err(|e| {
        Failure::msg(
            USAGE_CODE,
            format!("--sign-key {}: {e}", key_path.display()),
        )
    })?;
    let opts = resign
        .signers
        .registry
        .registry_options()
        .map_err(|e| Failure::msg(USAGE_CODE, e))?;
    let what = op.describe(&sandbox);
    super::super::block_on(async move {
        let current = bundles::fetch_verified(&opts, &policy, kind, &BundleRef::from_api(&old))
            .await
            .map_err(|e| {
                Failure::msg(
                    CHECK,
                    format!(
                        "the current allowlist bundle {}/{}@{} did not verify ({}): {e}; nothing was changed",
                        old.registry,
                        old.repository,
                        old.digest,
                        e.reason()
                    ),
                )
            })?;
        let (endpoints, mut doc) = bundle_endpoints(&current.content)?;
        let repo = Repo::read(&forge.repo)?;
        let Some(next) = apply_op(&repo, &sandbox, &where_, &endpoints, &op)? else {
            return report_proposed(None, &branch, &what);
        };
        let generation = doc["metadata"]["generation"].as_u64().unwrap_or(0) + 1;
        doc["metadata"]["generation"] = serde_json::json!(generation);
        doc["spec"]["endpoints"] = as_json(&next);
        let raw = serde_json::to_vec(&doc).map_err(|e| Failure::msg(CHECK, e))?;
        let content = canonicalize(kind, &raw)
            .map_err(|e| Failure::msg(CHECK, format!("the new allowlist: {e}")))?;
        // The forge must be usable before anything is published.
        let conn = forge.connect().await?;
        let tag = format!(
            "{}-{}",
            kind.name(),
            &kars_contract::sha256_digest(&content)["sha256:".len().."sha256:".len() + 12]
        );
        let password = std::env::var("COSIGN_PASSWORD").unwrap_or_default();
        let digest = bundles::push(&opts, &old.registry, &old.repository, &tag, kind, &content)
            .await
            .map_err(|e| {
                Failure::msg(
                    CHECK,
                    format!("pushing the new allowlist to {}: {e}", old.registry),
                )
            })?;
        bundles::sign(
            &opts,
            &old.registry,
            &old.repository,
            &digest,
            &key_pem,
            password.as_bytes(),
        )
        .await
        .map_err(|e| Failure::msg(CHECK, format!("signing {digest}: {e}")))?;
        crate::ui::note(format!(
            "published and signed {}/{}@{digest} (generation {generation})",
            old.registry, old.repository
        ));
        let proposed = crate::proposal::propose(&conn, |dir| {
            let repin = Repin {
                old: &old,
                new_digest: &digest,
                what: &what,
                current: &endpoints,
                next: &next,
            };
            plan_repin(
                dir,
                &sandbox,
                namespace.as_deref(),
                &repin,
                &branch,
                reason.as_deref(),
            )
        })
        .await?;
        report_proposed(proposed, &branch, &what)
    })
}

/// Runs `kars egress approve`.
pub fn approve(a: EndpointArgs) -> Result<ExitCode, Failure> {
    let (host, port) = parse_endpoint(&a.endpoint)?;
    run(
        a.forge,
        a.resign,
        a.sandbox,
        a.namespace,
        Op::Add(host, port),
        a.reason,
    )
}

/// Runs `kars egress deny`.
pub fn deny(a: EndpointArgs) -> Result<ExitCode, Failure> {
    let (host, port) = parse_endpoint(&a.endpoint)?;
    let explicit_port = a.endpoint.trim().rsplit_once(':').is_some();
    let op = Op::Remove(host, explicit_port.then_some(port));
    run(a.forge, a.resign, a.sandbox, a.namespace, op, a.reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(sandbox: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("ok");
        std::fs::write(
            d.path().join("kars.yaml"),
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: t}\nspec:\n  defaultNamespace: team\n  clusters: [{name: c, paths: [agents]}]\n",
        )
        .expect("ok");
        std::fs::create_dir_all(d.path().join("agents/a")).expect("ok");
        std::fs::write(d.path().join("agents/a/sandbox.yaml"), sandbox).expect("ok");
        d
    }

    const SB: &str = "# agent a\napiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata:\n  name: a\nspec:\n  runtime:\n    kind: OpenClaw\n    openclaw: {}\n  inferenceRef: {name: i}\n  sandbox: {isolation: enhanced}\n  networkPolicy:\n    egressMode: Strict\n    allowedEndpoints:\n      # the API\n      - host: api.github.com\n        port: 443\n";

    #[test]
    fn approve_appends_and_keeps_the_rest_of_the_file() {
        let d = repo(SB);
        let c = plan(
            d.path(),
            "a",
            None,
            &Op::Add("pypi.org".into(), 443),
            "b",
            None,
        )
        .expect("ok");
        let text = c.files["agents/a/sandbox.yaml"].clone().expect("ok");
        assert!(text.starts_with("# agent a\n"), "{text}");
        assert!(
            text.ends_with("    allowedEndpoints:\n      - host: api.github.com\n        port: 443\n      - host: pypi.org\n        port: 443\n"),
            "{text}"
        );
        // Already there: nothing to propose.
        let c = plan(
            d.path(),
            "a",
            None,
            &Op::Add("api.github.com".into(), 443),
            "b",
            None,
        )
        .expect("ok");
        assert!(c.files.is_empty());
    }

    #[test]
    fn deny_removes_every_port_or_one_and_refuses_what_is_not_there() {
        let d = repo(&SB.replace(
            "        port: 443\n",
            "        port: 443\n      - host: api.github.com\n        port: 8443\n",
        ));
        let one = plan(
            d.path(),
            "a",
            None,
            &Op::Remove("api.github.com".into(), Some(8443)),
            "b",
            None,
        )
        .expect("ok");
        let text = one.files["agents/a/sandbox.yaml"].clone().expect("ok");
        assert!(
            text.contains("port: 443") && !text.contains("8443"),
            "{text}"
        );
        let all = plan(
            d.path(),
            "a",
            None,
            &Op::Remove("api.github.com".into(), None),
            "b",
            None,
        )
        .expect("ok");
        let text = all.files["agents/a/sandbox.yaml"].clone().expect("ok");
        assert!(text.ends_with("    allowedEndpoints: []\n"), "{text}");
        let e = plan(
            d.path(),
            "a",
            None,
            &Op::Remove("pypi.org".into(), None),
            "b",
            None,
        )
        .expect_err("refused");
        assert!(
            e.message().contains("is not in the allowlist"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn unknown_sandboxes_and_bundle_allowlists_are_refused_offline() {
        let d = repo(SB);
        let e = plan(
            d.path(),
            "b",
            None,
            &Op::Add("pypi.org".into(), 443),
            "b",
            None,
        )
        .expect_err("refused");
        assert!(
            e.message().contains("no KarsSandbox \"b\""),
            "{}",
            e.message()
        );
        let e = plan(
            d.path(),
            "a",
            Some("other"),
            &Op::Add("pypi.org".into(), 443),
            "b",
            None,
        )
        .expect_err("refused");
        assert!(
            e.message().contains("in namespace other"),
            "{}",
            e.message()
        );
        let bundle = SB.replace(
            "    allowedEndpoints:\n      # the API\n      - host: api.github.com\n        port: 443\n",
            "    allowlistRef:\n      registry: r.example\n      repository: x\n      digest: sha256:0000000000000000000000000000000000000000000000000000000000000000\n      artifactType: application/vnd.kars.egress-allowlist.v1+yaml\n",
        );
        let d = repo(&bundle);
        let e = plan(
            d.path(),
            "a",
            None,
            &Op::Add("pypi.org".into(), 443),
            "b",
            None,
        )
        .expect_err("refused");
        assert!(e.message().contains("signed bundle"), "{}", e.message());
    }
}
