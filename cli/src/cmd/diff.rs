//! `kars diff [SOURCE]`: what a sync would change, as a unified diff per object. Exit codes
//! follow `kubectl diff`: 0 no differences, 1 differences, 2 the diff could not be made (the
//! head does not verify or render, bad flags), 3 the cluster or the remote cannot be reached.

use std::process::ExitCode;

use kars_gitops_agent::inspect::unified_diff;

use super::source::SourceArgs;
use crate::failure::{CHECK, Failure, USAGE};
use crate::ui;

/// Arguments of `kars diff`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
}

/// Runs `kars diff`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        // "Could not diff" is never exit 1, which means "differences".
        let as_error = |f: Failure| {
            if f.code == CHECK {
                f.with_code(USAGE)
            } else {
                f
            }
        };
        let (view, cfg) = args.source.inspect().await.map_err(as_error)?;
        args.source.note_worktree(&cfg);
        if let Err(why) = &view.verification {
            return Err(Failure::msg(
                USAGE,
                format!(
                    "head {} does not verify, so a sync would apply nothing: {why}",
                    view.head
                ),
            )
            .reason("VerificationFailed"));
        }
        let rendered = view
            .rendered
            .as_ref()
            .map_err(|e| Failure::msg(USAGE, e).reason("ValidationFailed"))?;
        let ui = ui::get();
        let mut changes = Vec::new();
        for o in view.objects.iter().filter(|o| !o.in_sync) {
            let title = match (&o.live, &o.foreign) {
                (_, Some(owner)) => format!("(owned by {owner}: a sync refuses it)"),
                (None, _) => "(new)".to_string(),
                (Some(_), None) => "(changed)".to_string(),
            };
            let diff = unified_diff(o, "git");
            changes.push(serde_json::json!({
                "object": o.rendered.key(),
                "source": o.rendered.source,
                "change": if o.foreign.is_some() { "conflict" } else if o.live.is_none() { "create" } else { "configure" },
                "owner": o.foreign,
                "diff": diff,
            }));
            if ui.machine() {
                continue;
            }
            crate::outln!(
                "{}",
                ui.paint_out(
                    "36",
                    &format!("@@ {} {title} from {}", o.rendered.key(), o.rendered.source)
                )
            );
            for line in diff.lines() {
                let code = match line.as_bytes().first() {
                    Some(b'+') => "32",
                    Some(b'-') => "31",
                    Some(b'@') => "36",
                    _ => "0",
                };
                crate::outln!("{}", ui.paint_out(code, line));
            }
        }
        for e in &view.to_prune {
            changes.push(serde_json::json!({"object": e.key(), "change": "prune"}));
            if !ui.machine() {
                crate::outln!(
                    "{}",
                    ui.paint_out("31", &format!("- {} (left Git: would be pruned)", e.key()))
                );
            }
        }
        let in_sync = view.objects.iter().filter(|o| o.in_sync).count();
        if ui.machine() {
            ui::emit(&serde_json::json!({
                "head": view.head,
                "digest": rendered.digest,
                "inSync": in_sync,
                "changes": changes,
            }))?;
        }
        ui::note(format!(
            "{} object(s) would change; {in_sync} in sync (head {}, digest {})",
            changes.len(),
            view.head,
            rendered.digest
        ));
        Ok(if changes.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}
