//! `kars diff SOURCE`: what a sync would change, as a unified diff per object.

use std::io::IsTerminal;
use std::process::ExitCode;

use kars_gitops_agent::inspect::comparable_live;
use kars_renderer::output::object_yaml;

use super::sync::SourceArgs;
use crate::Failure;

/// Arguments of `kars diff`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    source: SourceArgs,
    /// Colour the diff: auto (when stdout is a terminal), always, never.
    #[arg(long, default_value = "auto", value_parser = ["auto", "always", "never"])]
    color: String,
}

fn paint(line: &str, color: bool) -> String {
    if !color {
        return line.to_string();
    }
    let code = match line.as_bytes().first() {
        Some(b'+') => "32",
        Some(b'-') => "31",
        Some(b'@') => "36",
        _ => return line.to_string(),
    };
    format!("\x1b[{code}m{line}\x1b[0m")
}

/// Runs `kars diff`. Exit 0 when nothing would change, 1 when something would.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let view = args.source.inspect().await?;
        let color = match args.color.as_str() {
            "always" => true,
            "never" => false,
            _ => std::io::stdout().is_terminal(),
        };
        if let Err(why) = &view.verification {
            return Err(Failure::check(anyhow::anyhow!(
                "head {} does not verify, so a sync would apply nothing: {why}",
                view.head
            )));
        }
        let rendered = view
            .rendered
            .as_ref()
            .map_err(|e| Failure::check(anyhow::anyhow!("{e}")))?;
        let mut changes = 0;
        for o in view.objects.iter().filter(|o| !o.in_sync) {
            changes += 1;
            let new = object_yaml(&o.rendered.manifest).unwrap_or_default();
            let old = o
                .live
                .as_ref()
                .map(|l| object_yaml(&comparable_live(&o.rendered.manifest, l)).unwrap_or_default())
                .unwrap_or_default();
            let title = if o.live.is_none() {
                "(new)"
            } else {
                "(changed)"
            };
            crate::outln!(
                "{}",
                paint(
                    &format!("@@ {} {title} from {}", o.rendered.key(), o.rendered.source),
                    color
                )
            );
            let diff = similar::TextDiff::from_lines(&old, &new);
            for line in diff
                .unified_diff()
                .context_radius(3)
                .header(
                    &format!("live/{}", o.rendered.key()),
                    &format!("git/{}", o.rendered.key()),
                )
                .to_string()
                .lines()
            {
                crate::outln!("{}", paint(line, color));
            }
        }
        for e in &view.to_prune {
            changes += 1;
            crate::outln!(
                "{}",
                paint(&format!("- {} (left Git: would be pruned)", e.key()), color)
            );
        }
        eprintln!(
            "{changes} object(s) would change; {} in sync (head {}, digest {})",
            view.objects.len() - view.objects.iter().filter(|o| !o.in_sync).count(),
            view.head,
            rendered.digest
        );
        Ok(if changes == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}
