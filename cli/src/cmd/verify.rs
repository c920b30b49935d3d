//! `kars verify`: check the signature of every commit in a range against a trust policy.

use std::path::PathBuf;
use std::process::ExitCode;

use kars_gitops_agent::source;
use kars_gitops_agent::verify::{self, Verifier};

use crate::Failure;

/// Arguments of `kars verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The policy repository (a local Git repository).
    #[arg(default_value = ".")]
    path: PathBuf,
    /// The new head to verify (branch, tag or commit). A signed annotated tag is verified too.
    #[arg(long, default_value = "HEAD")]
    rev: String,
    /// The last applied commit (exclusive). Without it the whole history of --rev is verified.
    #[arg(long)]
    since: Option<String>,
    /// git's allowed_signers file (principals, namespaces=, valid-after/valid-before).
    #[arg(long, value_name = "FILE", env = "KARS_ALLOWED_SIGNERS")]
    allowed_signers: Option<PathBuf>,
    /// Armored OpenPGP keyring (gpg --export --armor).
    #[arg(long, value_name = "FILE", env = "KARS_OPENPGP_KEYRING")]
    openpgp_keyring: Option<PathBuf>,
    /// TrustPolicy file: signers, path rules (k-of-n), repository signer list, forge keys.
    #[arg(long, value_name = "FILE", env = "KARS_TRUST")]
    trust: Option<PathBuf>,
}

/// Runs `kars verify`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let policy = verify::load_policy(
        args.trust.as_deref(),
        args.allowed_signers.as_deref(),
        args.openpgp_keyring.as_deref(),
    )
    .map_err(|e| Failure::usage(anyhow::anyhow!("{e}")))?;
    let repo = source::open(&args.path).map_err(Failure::usage)?;
    let head = source::resolve_commit(&repo, &args.rev).map_err(Failure::usage)?;
    // The same rule as the agent's: an id the repository no longer has is a rollback.
    let since = match &args.since {
        Some(s) => Some(verify::resolve_since(&repo, s).map_err(Failure::usage)?),
        None => None,
    };
    let now = verify::unix_now();
    // Pinning to a signed annotated tag: the tag's own signature must verify too.
    let tag_check = match repo.rev_parse_single(args.rev.as_str()) {
        Ok(id) if id.object().is_ok_and(|o| o.kind == gix::object::Kind::Tag) => Some(
            verify::range::verify_tag(&repo, &policy, id.detach(), now).map_err(Failure::check)?,
        ),
        _ => None,
    };
    let mut verifier = Verifier::new(&repo, &policy, now);
    let verdict = verifier
        .verify_since(since.as_ref(), head)
        .map_err(Failure::check)?;
    let tag_ok = tag_check.as_ref().is_none_or(Result::is_ok);
    let ok = verdict.ok() && tag_ok;
    if crate::ui::get().machine() {
        let tag = tag_check.as_ref().map(|t| match t {
            Ok(a) => serde_json::json!({"rev": args.rev, "ok": true, "signer": a}),
            Err(r) => serde_json::json!({"rev": args.rev, "ok": false, "reason": r.reason(), "message": r.to_string()}),
        });
        let out = serde_json::json!({"ok": ok, "tag": tag, "range": verdict});
        crate::ui::emit(&out)?;
    } else {
        if let Some(t) = &tag_check {
            match t {
                Ok(a) => crate::outln!(
                    "tag {} ok {} ({}, {})",
                    args.rev,
                    a.signer,
                    a.format,
                    a.fingerprint
                ),
                Err(r) => crate::outln!("tag {} FAIL {}: {r}", args.rev, r.reason()),
            }
        }
        for c in &verdict.commits {
            let short = &c.id[..12.min(c.id.len())];
            match &c.refusal {
                None => {
                    let who: Vec<String> = c
                        .signers
                        .iter()
                        .map(|s| format!("{} ({})", s.signer, s.format))
                        .collect();
                    crate::outln!("{short} ok   {}  {}", who.join(" + "), c.summary);
                }
                Some(r) => crate::outln!("{short} FAIL {}: {r}  [{}]", r.reason(), c.summary),
            }
        }
        if let Some(h) = &verdict.history {
            crate::outln!("history FAIL {}: {h}", h.reason());
        }
        let bad = verdict.commits.iter().filter(|c| !c.ok()).count();
        eprintln!(
            "{} commit(s) verified, {bad} refused{}",
            verdict.commits.len(),
            if ok {
                ""
            } else {
                " — nothing from this range may be applied"
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
