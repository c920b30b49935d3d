//! `kars egress allow-extra`, `approvals` and `revoke`: time-boxed grants (EgressApprovals) as
//! files of the repository, added and removed by pull requests.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use kars_contract::labels::APPROVED_AT_ANNOTATION;
use kars_contract::time::{format_rfc3339, parse_iso8601_duration, parse_rfc3339, unix_now};
use kars_renderer::validate::MAX_APPROVAL_TTL_SECS;
use serde_json::json;

use super::{BRANCH_PREFIX, Repo, parse_endpoint, report_proposed, slug};
use crate::failure::{CHECK, Failure};
use crate::proposal::{Change, ForgeArgs, suffix};
use crate::{outln, ui};

/// The folder grants go to when the clusters receiving the sandbox receive it.
const EGRESS_DIR: &str = "egress";

/// Arguments of `kars egress allow-extra`.
#[derive(clap::Args, Debug)]
pub struct AllowExtraArgs {
    /// The KarsSandbox (metadata.name).
    sandbox: String,
    /// A host to grant, `HOST` or `HOST:PORT` (default :443); repeat for up to 16.
    #[arg(long = "host", value_name = "HOST[:PORT]", required = true)]
    hosts: Vec<String>,
    /// How long, as an ISO 8601 duration (`PT4H`, `P1D`; at most P7D). The grant starts now.
    #[arg(long)]
    ttl: String,
    /// Why (audited; 1..=512 characters).
    #[arg(long)]
    reason: String,
    /// A ticket reference (1..=128 characters).
    #[arg(long)]
    ticket: Option<String>,
    /// The EgressApproval's name (default: derived from the sandbox and the first host).
    #[arg(long)]
    name: Option<String>,
    /// The sandbox's namespace, when the name is used in several.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    #[command(flatten)]
    forge: ForgeArgs,
}

/// Arguments of `kars egress approvals`.
#[derive(clap::Args, Debug)]
pub struct ApprovalsArgs {
    /// The KarsSandbox (metadata.name).
    sandbox: String,
    /// The policy repository (a working directory).
    #[arg(long, value_name = "DIR", default_value = ".")]
    repo: std::path::PathBuf,
}

/// Arguments of `kars egress revoke`.
#[derive(clap::Args, Debug)]
pub struct RevokeArgs {
    /// The EgressApproval (metadata.name).
    name: String,
    /// Its namespace, when the name is used in several.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Why (goes into the commit and the pull request).
    #[arg(long)]
    reason: Option<String>,
    #[command(flatten)]
    forge: ForgeArgs,
}

/// A YAML double-quoted scalar (JSON string syntax is valid YAML).
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn check_text(field: &str, s: &str, max: usize) -> Result<(), Failure> {
    let n = s.chars().count();
    if n == 0 || n > max {
        return Err(Failure::msg(
            CHECK,
            format!("--{field}: {n} characters; 1..={max} are allowed"),
        ));
    }
    if s.chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(Failure::msg(
            CHECK,
            format!("--{field}: control characters are not allowed"),
        ));
    }
    Ok(())
}

/// A validated grant, ready to be written.
struct Grant {
    sandbox: String,
    name: String,
    hosts: Vec<(String, u16)>,
    ttl: String,
    ttl_secs: u64,
    reason: String,
    ticket: Option<String>,
    approved_at: i64,
}

impl Grant {
    fn from_args(a: &AllowExtraArgs) -> Result<Grant, Failure> {
        if a.hosts.len() > 16 {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "{} hosts: one EgressApproval grants at most 16",
                    a.hosts.len()
                ),
            ));
        }
        let mut hosts = Vec::new();
        for h in &a.hosts {
            let e = parse_endpoint(h)?;
            if !hosts.contains(&e) {
                hosts.push(e);
            }
        }
        let ttl_secs = parse_iso8601_duration(&a.ttl)
            .map_err(|e| Failure::msg(CHECK, format!("--ttl: {e}")))?;
        if ttl_secs > MAX_APPROVAL_TTL_SECS {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "--ttl {}: {ttl_secs} s is over the 7-day cap (P7D) the renderer enforces",
                    a.ttl
                ),
            )
            .hint("ask for a shorter grant, or propose the host for the allowlist: kars egress approve"));
        }
        check_text("reason", &a.reason, 512)?;
        if let Some(t) = &a.ticket {
            check_text("ticket", t, 128)?;
        }
        let name = match &a.name {
            Some(n) => n.clone(),
            None => {
                let mut stem = format!("{}-{}", a.sandbox, slug(&hosts[0].0));
                stem.truncate(63 - 7);
                format!("{}-{}", stem.trim_end_matches(['-', '.']), suffix())
            }
        };
        if !kars_renderer::repo::is_dns_subdomain(&name) || name.len() > 63 {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "--name {name:?}: must be a DNS label-like name (lowercase letters, digits, '-', '.'; at most 63)"
                ),
            ));
        }
        Ok(Grant {
            sandbox: a.sandbox.clone(),
            name,
            hosts,
            ttl: a.ttl.clone(),
            ttl_secs,
            reason: a.reason.clone(),
            ticket: a.ticket.clone(),
            approved_at: unix_now(),
        })
    }

    fn expires_at(&self) -> i64 {
        self.approved_at
            .saturating_add(i64::try_from(self.ttl_secs).unwrap_or(i64::MAX))
    }

    fn file_text(&self, namespace: Option<&str>) -> String {
        let mut s = format!(
            "# Time-boxed egress for {}, proposed with kars egress allow-extra.\n# Active from {} until {}; remove it with kars egress revoke {}.\napiVersion: kars.azure.com/v1alpha1\nkind: EgressApproval\nmetadata:\n  name: {}\n",
            self.sandbox,
            format_rfc3339(self.approved_at),
            format_rfc3339(self.expires_at()),
            self.name,
            self.name,
        );
        if let Some(ns) = namespace {
            s.push_str(&format!("  namespace: {ns}\n"));
        }
        s.push_str(&format!(
            "  annotations:\n    {APPROVED_AT_ANNOTATION}: \"{}\"\nspec:\n  sandbox: {}\n  hosts:\n",
            format_rfc3339(self.approved_at),
            self.sandbox
        ));
        for (h, p) in &self.hosts {
            s.push_str(&format!("    - host: {h}\n      port: {p}\n"));
        }
        s.push_str(&format!("  reason: {}\n", quoted(&self.reason)));
        if let Some(t) = &self.ticket {
            s.push_str(&format!("  ticket: {}\n", quoted(t)));
        }
        s.push_str(&format!("  ttl: {}\n", self.ttl));
        s
    }
}

fn plan_grant(
    dir: &Path,
    g: &Grant,
    namespace: Option<&str>,
    branch: &str,
) -> Result<Change, Failure> {
    let repo = Repo::read(dir)?;
    let found = repo.find("KarsSandbox", &g.sandbox, namespace)?;
    let sb = found.object;
    repo.check_valid(sb)?;
    if let Ok(existing) = repo.find("EgressApproval", &g.name, found.namespace.as_deref()) {
        return Err(Failure::msg(
            CHECK,
            format!(
                "EgressApproval {} exists already ({}:{})",
                g.name, existing.object.file, existing.object.pos.line
            ),
        )
        .hint("pass another --name"));
    }
    let in_egress = format!("{EGRESS_DIR}/{}.yaml", g.name);
    let file = if repo.received_together(&sb.file, &in_egress) {
        in_egress
    } else {
        // Next to the sandbox: received by the same clusters.
        let folder = sb.file.rsplit_once('/').map_or("", |(d, _)| d);
        format!("{folder}/egress-{}.yaml", g.name)
            .trim_start_matches('/')
            .to_string()
    };
    if dir.join(&file).exists() {
        return Err(
            Failure::msg(CHECK, format!("{file} exists already")).hint("pass another --name")
        );
    }
    // The sandbox's namespace is written only when the sandbox writes one.
    let text = g.file_text(sb.namespace.as_deref());
    let hosts = g
        .hosts
        .iter()
        .map(|(h, p)| format!("`{h}:{p}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let what = format!(
        "grant {hosts} to {} for {} (EgressApproval {})",
        g.sandbox, g.ttl, g.name
    );
    let body = format!(
        "**kars egress allow-extra**: {what}.\n\n- Reason: {}\n{}- Active from **{}** until **{}** (the router refuses the hosts again after that, with its own clock). Merging later shortens the grant; it never extends it.\n- File: `{file}`\n\n```yaml\n{text}```\n\nNothing changes in the cluster until this is merged and the agent has verified the merge. Once expired, the agent proposes removing the file.\n",
        g.reason,
        g.ticket
            .as_ref()
            .map(|t| format!("- Ticket: {t}\n"))
            .unwrap_or_default(),
        format_rfc3339(g.approved_at),
        format_rfc3339(g.expires_at()),
    );
    Ok(Change {
        files: BTreeMap::from([(file, Some(text))]),
        branch: branch.to_string(),
        message: format!("egress: {}\n\n{}", what.replace('`', ""), g.reason),
        title: format!("Egress: {}", what.replace('`', "")),
        body,
    })
}

/// Runs `kars egress allow-extra`.
pub fn allow_extra(a: AllowExtraArgs) -> Result<ExitCode, Failure> {
    let grant = Grant::from_args(&a)?;
    let branch = format!("{BRANCH_PREFIX}grant-{}", grant.name);
    a.forge.check_repo()?;
    let ns = a.namespace.clone();
    plan_grant(&a.forge.repo, &grant, ns.as_deref(), &branch)?;
    super::super::block_on(async move {
        let conn = a.forge.connect().await?;
        let proposed =
            crate::proposal::propose(&conn, |dir| plan_grant(dir, &grant, ns.as_deref(), &branch))
                .await?;
        report_proposed(proposed, &branch, &format!("EgressApproval {}", grant.name))
    })
}

fn plan_revoke(
    dir: &Path,
    name: &str,
    namespace: Option<&str>,
    branch: &str,
    reason: Option<&str>,
) -> Result<Change, Failure> {
    let repo = Repo::read(dir)?;
    let found = repo.find("EgressApproval", name, namespace)?;
    let o = found.object;
    let text = repo.text(&o.file)?;
    let edited = kars_renderer::edit::remove_document(&text, o.pos.line);
    // What is left must be exactly the other documents.
    if let Some(left) = &edited {
        let docs = |t: &str| {
            kars_renderer::yaml::parse_documents(t, kars_renderer::yaml::YamlLimits::default())
                .map(|d| d.iter().map(|n| n.to_json()).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let mut want = docs(&text);
        let gone = o.node.to_json();
        want.retain(|d| *d != gone);
        if docs(left) != want {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "{}: removing the document at line {} went wrong; nothing was proposed: edit the file by hand",
                    o.file, o.pos.line
                ),
            ));
        }
    }
    let what = format!("revoke EgressApproval {name} ({})", o.file);
    Ok(Change {
        files: BTreeMap::from([(o.file.clone(), edited)]),
        branch: branch.to_string(),
        message: format!(
            "egress: {what}{}",
            reason.map(|r| format!("\n\n{r}")).unwrap_or_default()
        ),
        title: format!("Egress: {what}"),
        body: format!(
            "**kars egress revoke**: removes EgressApproval `{name}` from `{}`.{}\n\nThe router stops allowing its hosts once this is merged, verified and applied (or at its expiry, whichever comes first).\n",
            o.file,
            reason
                .map(|r| format!("\n\nReason: {r}"))
                .unwrap_or_default()
        ),
    })
}

/// Runs `kars egress revoke`.
pub fn revoke(a: RevokeArgs) -> Result<ExitCode, Failure> {
    let branch = format!("{BRANCH_PREFIX}revoke-{}-{}", a.name, suffix());
    a.forge.check_repo()?;
    let (name, ns, reason) = (a.name.clone(), a.namespace.clone(), a.reason.clone());
    plan_revoke(
        &a.forge.repo,
        &name,
        ns.as_deref(),
        &branch,
        reason.as_deref(),
    )?;
    super::super::block_on(async move {
        let conn = a.forge.connect().await?;
        let proposed = crate::proposal::propose(&conn, |dir| {
            plan_revoke(dir, &name, ns.as_deref(), &branch, reason.as_deref())
        })
        .await?;
        report_proposed(proposed, &branch, &format!("revoke EgressApproval {name}"))
    })
}

/// Runs `kars egress approvals`.
pub fn approvals(a: ApprovalsArgs) -> Result<ExitCode, Failure> {
    let repo = Repo::read(&a.repo)?;
    if !repo
        .loaded
        .objects
        .iter()
        .any(|o| o.kind == "KarsSandbox" && o.name == a.sandbox)
    {
        return Err(Failure::msg(
            CHECK,
            format!("no KarsSandbox {:?} in {}", a.sandbox, a.repo.display()),
        ));
    }
    let now = unix_now();
    let mut rows = Vec::new();
    for o in repo
        .loaded
        .objects
        .iter()
        .filter(|o| o.kind == "EgressApproval")
    {
        let Some(ea) = o.kars().and_then(|k| k.egress_approval()) else {
            continue;
        };
        if ea.spec.sandbox != a.sandbox {
            continue;
        }
        let start = o.annotation(APPROVED_AT_ANNOTATION).and_then(parse_rfc3339);
        let ttl = parse_iso8601_duration(&ea.spec.ttl).ok();
        let end = start
            .zip(ttl)
            .map(|(s, t)| s.saturating_add(i64::try_from(t).unwrap_or(i64::MAX)));
        let state = match (start, end) {
            (Some(s), _) if now < s => "Scheduled",
            (Some(_), Some(e)) if now < e => "Active",
            (Some(_), Some(_)) => "Expired",
            _ => "Invalid",
        };
        rows.push(json!({
            "name": o.name,
            "namespace": repo.effective_namespace(o),
            "file": format!("{}:{}", o.file, o.pos.line),
            "hosts": ea.spec.hosts.iter().map(|h| format!("{}:{}", h.host, h.port.unwrap_or(443))).collect::<Vec<_>>(),
            "state": state,
            "effectiveAt": start.map(format_rfc3339),
            "expiresAt": end.map(format_rfc3339),
            "reason": ea.spec.reason,
            "ticket": ea.spec.ticket,
        }));
    }
    if ui::get().machine() {
        ui::emit(&json!({"sandbox": a.sandbox, "approvals": rows}))?;
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        outln!(
            "no EgressApprovals for {} in {}",
            a.sandbox,
            a.repo.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let widths = [
        rows.iter()
            .map(|r| r["name"].as_str().unwrap_or_default().len())
            .max()
            .unwrap_or(4)
            .max(4),
        9,
        20,
    ];
    outln!(
        "{:<w0$}  {:<w1$}  {:<w2$}  HOSTS",
        "NAME",
        "STATE",
        "EXPIRES",
        w0 = widths[0],
        w1 = widths[1],
        w2 = widths[2]
    );
    for r in &rows {
        let hosts: Vec<&str> = r["hosts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|h| h.as_str())
            .collect();
        outln!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {}",
            r["name"].as_str().unwrap_or_default(),
            r["state"].as_str().unwrap_or_default(),
            r["expiresAt"].as_str().unwrap_or("-"),
            hosts.join(","),
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
    }
    if rows.iter().any(|r| r["state"] == "Expired") {
        ui::note(
            "expired grants no longer allow anything; the agent proposes removing their files (or: kars egress revoke NAME)",
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(hosts: &[&str], ttl: &str) -> AllowExtraArgs {
        AllowExtraArgs {
            sandbox: "hello-agent".into(),
            hosts: hosts.iter().map(ToString::to_string).collect(),
            ttl: ttl.into(),
            reason: "install a dependency".into(),
            ticket: Some("OPS-1".into()),
            name: Some("hello-pypi".into()),
            namespace: None,
            forge: ForgeArgs {
                repo: ".".into(),
                remote: "origin".into(),
                base: "main".into(),
                forge_url: None,
                forge_repo: None,
                forge_token_file: None,
            },
        }
    }

    #[test]
    fn grants_are_checked_before_anything_else() {
        for (hosts, ttl, want) in [
            (vec!["*.pypi.org"], "PT1H", "wildcard"),
            (vec!["pypi.org"], "P8D", "7-day cap"),
            (vec!["pypi.org"], "P1W", "weeks"),
            (vec!["pypi.org"], "PT0S", "zero"),
            (vec!["pypi.org"], "4h", "ISO 8601"),
        ] {
            let e = Grant::from_args(&args(&hosts, ttl)).err().expect("refused");
            assert!(
                e.message().contains(want),
                "{hosts:?} {ttl}: {}",
                e.message()
            );
        }
        let many: Vec<String> = (0..17).map(|i| format!("h{i}.example.com")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(Grant::from_args(&args(&many, "PT1H")).is_err());
        let mut bad = args(&["pypi.org"], "PT1H");
        bad.reason = "line\u{7}bell".into();
        assert!(Grant::from_args(&bad).is_err());
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).expect("ok");
        for e in std::fs::read_dir(from).expect("ok") {
            let e = e.expect("ok");
            if e.file_type().expect("ok").is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).expect("ok");
            }
        }
    }

    #[test]
    fn a_grant_file_validates_and_says_when_it_ends() {
        let d = tempfile::tempdir().expect("ok");
        let template = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../repo-template");
        copy_dir(&template, d.path());
        let mut g = Grant::from_args(&args(&["PyPI.org", "files.pythonhosted.org:8443"], "PT4H"))
            .expect("ok");
        g.approved_at = 1_767_225_600; // 2026-01-01T00:00:00Z
        g.reason = "say \"why\": it's #1".into();
        let c = plan_grant(d.path(), &g, None, "b").expect("ok");
        let (file, text) = c.files.iter().next().expect("ok");
        assert_eq!(file, "egress/hello-pypi.yaml");
        let text = text.clone().expect("ok");
        assert!(text.contains("until 2026-01-01T04:00:00Z"), "{text}");
        assert!(text.contains("- host: pypi.org\n      port: 443\n    - host: files.pythonhosted.org\n      port: 8443\n"), "{text}");
        std::fs::create_dir_all(d.path().join("egress")).expect("ok");
        std::fs::write(d.path().join(file), &text).expect("ok");
        crate::proposal::validate_dir(d.path(), "the repository").expect("ok");
        // The reason survives YAML quoting.
        let repo = Repo::read(d.path()).expect("ok");
        let ea = repo.find("EgressApproval", "hello-pypi", None).expect("ok");
        assert_eq!(
            ea.object
                .kars()
                .expect("ok")
                .egress_approval()
                .expect("ok")
                .spec
                .reason,
            "say \"why\": it's #1"
        );
        // The same name again is refused; revoke removes the file.
        assert!(
            plan_grant(d.path(), &g, None, "b")
                .expect_err("refused")
                .message()
                .contains("exists already")
        );
        let r = plan_revoke(d.path(), "hello-pypi", None, "b", None).expect("ok");
        assert_eq!(r.files.get("egress/hello-pypi.yaml"), Some(&None));
    }
}
