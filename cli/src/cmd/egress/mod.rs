//! `kars egress`: a sandbox's egress changed through pull requests (upstream's day-2 egress
//! flow, seed PR #480, in PR form). `approve` / `deny` edit the sandbox's inline
//! `spec.networkPolicy.allowedEndpoints`; `allow-extra` adds a time-boxed EgressApproval and
//! `revoke` removes one; `approvals` lists them and `learned` shows what the sandbox's router
//! saw. Nothing changes in the cluster until the pull request is merged and the agent has
//! verified the merge.
//!
//! Every command that proposes a change validates it first, offline, against the local clone
//! (`--repo`): the sandbox exists, hosts are names without wildcards, the TTL is within the
//! cap the renderer enforces. It exits 1 naming the problem before any forge setting is read.

mod baseline;
mod grants;
mod learned;

use std::path::Path;
use std::process::ExitCode;

use kars_renderer::repo::{LoadedRepo, SourceObject};

use crate::failure::{CHECK, Failure, USAGE};

/// Arguments of `kars egress`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// What the sandbox's router recorded in Learn mode, and the hosts it refused.
    Learned(learned::Args),
    /// Propose adding HOST[:PORT] (default :443) to the sandbox's allowlist (a pull request).
    Approve(baseline::EndpointArgs),
    /// Propose removing HOST (every port) or HOST:PORT from the sandbox's allowlist.
    Deny(baseline::EndpointArgs),
    /// Propose a time-boxed grant (an EgressApproval) on top of the allowlist.
    AllowExtra(grants::AllowExtraArgs),
    /// List the sandbox's EgressApprovals in the repository, active or expired.
    Approvals(grants::ApprovalsArgs),
    /// Propose removing an EgressApproval.
    Revoke(grants::RevokeArgs),
}

/// Runs `kars egress`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    match args.command {
        Command::Learned(a) => learned::run(a),
        Command::Approve(a) => baseline::approve(a),
        Command::Deny(a) => baseline::deny(a),
        Command::AllowExtra(a) => grants::allow_extra(a),
        Command::Approvals(a) => grants::approvals(a),
        Command::Revoke(a) => grants::revoke(a),
    }
}

/// The branch prefix of every egress pull request.
pub const BRANCH_PREFIX: &str = "kars-egress/";

/// A repository read from a directory, loaded (per-object checks done).
pub struct Repo {
    /// The loaded objects and config.
    pub loaded: LoadedRepo,
    /// The directory.
    pub dir: std::path::PathBuf,
    /// What loading found.
    pub report: kars_renderer::diagnostics::Report,
}

impl Repo {
    /// Reads and loads the repository at `dir`; refuses one whose kars.yaml is unusable.
    pub fn read(dir: &Path) -> Result<Repo, Failure> {
        let tree = super::read_tree(dir)?;
        let (loaded, report) = kars_renderer::repo::load(&tree);
        let Some(loaded) = loaded else {
            let first = report
                .diagnostics
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            return Err(Failure::msg(
                CHECK,
                format!(
                    "{} is not a usable policy repository: {first}",
                    dir.display()
                ),
            ));
        };
        Ok(Repo {
            loaded,
            dir: dir.to_path_buf(),
            report,
        })
    }

    /// Refuses an object whose own checks failed, with the first error in its file.
    pub fn check_valid(&self, o: &SourceObject) -> Result<(), Failure> {
        if o.typed.is_some() {
            return Ok(());
        }
        let first = self
            .report
            .diagnostics
            .iter()
            .find(|d| d.file == o.file && d.severity == kars_renderer::diagnostics::Severity::Error)
            .map(|d| format!(": {d}"))
            .unwrap_or_default();
        Err(Failure::msg(
            CHECK,
            format!(
                "{} {} ({}:{}) does not validate{first}",
                o.kind, o.name, o.file, o.pos.line
            ),
        )
        .hint("kars validate shows every problem"))
    }

    /// The text of a repository file.
    pub fn text(&self, file: &str) -> Result<String, Failure> {
        std::fs::read_to_string(self.dir.join(file))
            .map_err(|e| Failure::msg(CHECK, format!("{file}: {e}")))
    }

    /// Every object of `kind` named `name` (in `namespace` when given), with the namespace it
    /// gets in the clusters that receive it.
    pub fn find(
        &self,
        kind: &str,
        name: &str,
        namespace: Option<&str>,
    ) -> Result<Found<'_>, Failure> {
        let mut found: Vec<Found<'_>> = Vec::new();
        for o in self
            .loaded
            .objects
            .iter()
            .filter(|o| o.kind == kind && o.name == name)
        {
            let ns = self.effective_namespace(o);
            if namespace.is_some_and(|want| Some(want) != ns.as_deref()) {
                continue;
            }
            if !found
                .iter()
                .any(|f| f.object.file == o.file && f.object.pos == o.pos)
            {
                found.push(Found {
                    object: o,
                    namespace: ns,
                });
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(Failure::msg(
                CHECK,
                format!(
                    "no {kind} {name:?}{} in {}",
                    namespace.map(|n| format!(" in namespace {n}")).unwrap_or_default(),
                    self.dir.display()
                ),
            )
            .hint(format!(
                "the name is metadata.name of the {kind}; kars get {} lists what the repository declares",
                kind.to_lowercase()
            ))),
            _ => Err(Failure::msg(
                USAGE,
                format!(
                    "{kind} {name:?} is declared in several namespaces ({}): pass --namespace",
                    found
                        .iter()
                        .map(|f| format!(
                            "{} in {}",
                            f.namespace.as_deref().unwrap_or("?"),
                            f.object.file
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// The namespace `o` gets: as written, else the default of the first cluster receiving it.
    pub fn effective_namespace(&self, o: &SourceObject) -> Option<String> {
        if let Some(ns) = &o.namespace {
            return Some(ns.clone());
        }
        let cfg = &self.loaded.config;
        let cluster = cfg.spec.clusters.iter().find(|c| c.includes(&o.file));
        Some(
            cluster
                .and_then(|c| c.default_namespace.clone())
                .unwrap_or_else(|| cfg.spec.default_namespace.clone()),
        )
    }

    /// True when some cluster that receives `file` also receives `other`.
    pub fn received_together(&self, file: &str, other: &str) -> bool {
        self.loaded
            .config
            .spec
            .clusters
            .iter()
            .any(|c| c.includes(file) && c.includes(other))
    }
}

/// One object found in the repository.
pub struct Found<'r> {
    /// The object.
    pub object: &'r SourceObject,
    /// Its effective namespace.
    pub namespace: Option<String>,
}

/// Parses `host[:port]` the way the allowlist stores it: the host normalised (lowercase,
/// punycode, no trailing dot), no wildcard, no IP literal, no URL; port 1..=65535, default 443.
pub fn parse_endpoint(raw: &str) -> Result<(String, u16), Failure> {
    let bad = |why: String| {
        Failure::msg(CHECK, format!("{raw:?}: {why}")).hint(
            "give a host name, optionally with a port: api.example.com or api.example.com:8443",
        )
    };
    let t = raw.trim();
    if t.contains("://") || t.contains('/') {
        return Err(bad("a bare host[:port] is expected, not a URL".into()));
    }
    let (host, port) = match t.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
            let port: u16 = p
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| bad(format!("port {p} is not in 1..=65535")))?;
            (h, port)
        }
        _ => (t, 443),
    };
    let host = kars_renderer::egress::egress_host(host).map_err(bad)?;
    Ok((host, port))
}

/// The egress file's name part for `host` (letters, digits, '-').
pub fn slug(host: &str) -> String {
    let s: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    s.trim_matches('-').chars().take(30).collect::<String>()
}

/// Prints what a proposal did (or that there was nothing to do) and returns success.
pub fn report_proposed(
    proposed: Option<crate::proposal::Proposed>,
    branch: &str,
    what: &str,
) -> Result<ExitCode, Failure> {
    use crate::{outln, ui};
    let Some(p) = proposed else {
        if ui::get().machine() {
            ui::emit(&serde_json::json!({"changed": false, "change": what}))?;
        } else {
            outln!("nothing to propose: {what} is already so on the base branch");
        }
        return Ok(ExitCode::SUCCESS);
    };
    if ui::get().machine() {
        ui::emit(&serde_json::json!({
            "changed": true, "change": what, "branch": branch, "commit": p.commit,
            "pullRequest": {"number": p.pull.number, "url": p.pull.url},
        }))?;
    } else {
        outln!("proposed: {what}");
        outln!("  pull request #{}: {}", p.pull.number, p.pull.url);
        outln!("  commit {} on {branch}", p.commit);
        ui::note(
            "the agent comments on the pull request with what merging it will change; nothing is applied before it is merged",
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalised_and_refused_like_the_allowlist() {
        assert_eq!(
            parse_endpoint("PyPI.org").expect("ok"),
            ("pypi.org".into(), 443)
        );
        assert_eq!(
            parse_endpoint("api.example.com:8443").expect("ok"),
            ("api.example.com".into(), 8443)
        );
        for bad in [
            "*.example.com",
            "https://example.com",
            "example.com/x",
            "10.0.0.1",
            "example.com:0",
            "example.com:70000",
            "",
            "user@example.com",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
