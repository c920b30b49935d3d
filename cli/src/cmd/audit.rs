//! `kars audit verify FILE [--key PUB]`: checks a router audit log's hash chain, and with the
//! router's public key every signed head in `FILE.heads` (cut or rewritten logs, other keys).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use kars_router::audit::{self, AuditError};

use crate::Failure;

/// Arguments of `kars audit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(clap::Subcommand, Debug)]
enum AuditCommand {
    /// Verify the hash chain of a router audit log (JSON lines). Exit 1 naming the first bad
    /// record (line and seq) when a record was edited, deleted, moved or inserted.
    ///
    /// Records cut from the end leave a valid shorter chain: pass the router's public key with
    /// --key to check the heads it signed (`FILE.heads`): a log cut after a signed head, or
    /// rewritten with fresh hashes, is named, and so is a head signed by another key. Or pass a
    /// head hash kept elsewhere with --expect-head.
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The audit log file.
    file: PathBuf,
    /// The hash the last record must have (from the router, or an earlier verify).
    #[arg(long, value_name = "HEX")]
    expect_head: Option<String>,
    /// The router's Ed25519 public key (PEM, `openssl pkey -in audit.key -pubout`): every
    /// signed head must verify with it and match the chain.
    #[arg(long, value_name = "PUB")]
    key: Option<std::path::PathBuf>,
    /// The signed heads (default: FILE.heads).
    #[arg(long, value_name = "FILE", requires = "key")]
    heads: Option<std::path::PathBuf>,
}

/// Runs `kars audit`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let AuditCommand::Verify(a) = args.command;
    if let Some(key) = &a.key {
        return verify_signed(&a, key);
    }
    let result = audit::verify(&a.file);
    let broken = match &result {
        Ok(summary) => match &a.expect_head {
            Some(want) if *want != summary.head => Some(format!(
                "the chain is intact but ends at {} after {} record(s), not at the expected head {want}: records were cut from the end",
                summary.head, summary.records
            )),
            _ => None,
        },
        Err(AuditError::Broken(e)) => Some(e.to_string()),
        Err(other) => return Err(Failure::usage(anyhow!("{other}"))),
    };
    if crate::ui::get().machine() {
        let out = match (&result, &broken) {
            (Ok(s), None) => serde_json::json!({"ok": true, "records": s.records, "head": s.head}),
            (Err(AuditError::Broken(e)), _) => {
                serde_json::json!({"ok": false, "line": e.line, "seq": e.seq, "reason": e.reason})
            }
            (_, Some(why)) => serde_json::json!({"ok": false, "reason": why}),
            _ => serde_json::json!({"ok": false}),
        };
        crate::ui::emit(&out)?;
        return Ok(if broken.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    match (result, broken) {
        (Ok(s), None) => {
            crate::outln!("ok: {} record(s), chain intact, head {}", s.records, s.head);
            Ok(ExitCode::SUCCESS)
        }
        (_, Some(why)) => Err(Failure::check(anyhow!("{}: {why}", a.file.display()))),
        (Err(e), None) => Err(Failure::usage(anyhow!("{e}"))),
    }
}

/// `kars audit verify FILE --key PUB`.
fn verify_signed(a: &VerifyArgs, key: &std::path::Path) -> Result<ExitCode, Failure> {
    use kars_router::audit_heads::{heads_path, read_verifying_key, verify_heads};
    let vk = read_verifying_key(key).map_err(|e| Failure::usage(anyhow!("--key {e}")))?;
    let heads = a.heads.clone().unwrap_or_else(|| heads_path(&a.file));
    let result = verify_heads(&a.file, &heads, &vk);
    let expect_problem = match (&result, &a.expect_head) {
        (Ok(s), Some(want)) if *want != s.chain.head => Some(format!(
            "the chain ends at {} after {} record(s), not at the expected head {want}",
            s.chain.head, s.chain.records
        )),
        _ => None,
    };
    if crate::ui::get().machine() {
        let out = match (&result, &expect_problem) {
            (Ok(s), None) => serde_json::json!({
                "ok": true, "records": s.chain.records, "head": s.chain.head,
                "signedHeads": s.signed_heads, "lastSigned": s.last, "unsignedTail": s.unsigned_tail,
            }),
            (Err(e), _) => serde_json::json!({"ok": false, "reason": e.to_string()}),
            (_, Some(p)) => serde_json::json!({"ok": false, "reason": p}),
        };
        crate::ui::emit(&out)?;
        return Ok(if result.is_ok() && expect_problem.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    match (result, expect_problem) {
        (Ok(s), None) => {
            crate::outln!(
                "ok: {} record(s), chain intact, head {}; {} signed head(s) by key {} verify, the last at {} record(s) ({}){}",
                s.chain.records,
                s.chain.head,
                s.signed_heads,
                s.last.key,
                s.last.records,
                s.last.at,
                if s.unsigned_tail > 0 {
                    format!("; {} later record(s) not yet signed", s.unsigned_tail)
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        (Err(kars_router::audit_heads::HeadsFailure::Unreadable(m)), _) => {
            Err(Failure::usage(anyhow!("{m}")))
        }
        (Err(e), _) => Err(Failure::check(anyhow!("{}: {e}", a.file.display()))),
        (Ok(_), Some(p)) => Err(Failure::check(anyhow!("{}: {p}", a.file.display()))),
    }
}
