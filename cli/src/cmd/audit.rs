//! `kars audit verify FILE`: checks a router audit log's hash chain.

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
    /// Records cut from the end leave a valid shorter chain: pass the head hash kept elsewhere
    /// (the router reports it) with --expect-head to catch that too.
    Verify(VerifyArgs),
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The audit log file.
    file: PathBuf,
    /// The hash the last record must have (from the router, or an earlier verify).
    #[arg(long, value_name = "HEX")]
    expect_head: Option<String>,
}

/// Runs `kars audit`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let AuditCommand::Verify(a) = args.command;
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
