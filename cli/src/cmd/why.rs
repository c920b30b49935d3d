//! `kars why OBJECT|PATH`: why the objects of a file (or one object) are not applied yet —
//! verification, validation, an apply error, health — naming the commit and the file.

use std::process::ExitCode;

use super::sync::SourceArgs;
use crate::Failure;

/// Arguments of `kars why`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A repository file (e.g. agents/a/sandbox.yaml) or an object (Kind/namespace/name or Kind/name).
    target: String,
    #[command(flatten)]
    source: SourceArgs,
}

/// Runs `kars why`. Exit 0 when everything asked about is applied and in sync, 1 otherwise.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let view = args.source.inspect().await?;
        let st = view
            .policy_repo
            .as_ref()
            .and_then(|p| p.status.clone())
            .unwrap_or_default();
        let applied = st
            .last_applied_revision
            .clone()
            .unwrap_or_else(|| "(nothing)".into());
        let is_path = !args.target.contains('/')
            || args.target.ends_with(".yaml")
            || args.target.ends_with(".yml");
        let target = args.target.trim_start_matches("./").to_string();
        let say = |m: String| crate::outln!("{m}");
        if let Err(why) = &view.verification {
            say(format!(
                "{target}: not applied — head {} does not verify: {why}",
                view.head
            ));
            say(format!(
                "  the cluster stays at commit {applied}; fix the signature (or the trust policy) and push again"
            ));
            return Ok(ExitCode::from(1));
        }
        let rendered = match &view.rendered {
            Ok(r) => r,
            Err(e) => {
                let lines: Vec<&str> = e
                    .lines()
                    .filter(|l| !is_path || l.contains(&target))
                    .collect();
                say(format!(
                    "{target}: not applied — head {} does not render:",
                    view.head
                ));
                for l in if lines.is_empty() {
                    e.lines().collect()
                } else {
                    lines
                } {
                    say(format!("  {l}"));
                }
                return Ok(ExitCode::from(1));
            }
        };
        let matching: Vec<_> = view
            .objects
            .iter()
            .filter(|o| {
                if is_path {
                    o.rendered.source == target
                } else {
                    o.rendered.key() == target || o.rendered.key().ends_with(&format!("/{target}"))
                }
            })
            .collect();
        if matching.is_empty() {
            let pruned = view.to_prune.iter().find(|e| e.key() == target);
            match pruned {
                Some(_) => say(format!(
                    "{target}: left Git at {}; the next sync prunes it (unless held back by the prune threshold)",
                    view.head
                )),
                None => say(format!(
                    "{target}: head {} renders no object from it for cluster {:?} (is the file under one of the cluster's paths in kars.yaml?)",
                    view.head, rendered.cluster
                )),
            }
            return Ok(ExitCode::from(1));
        }
        let mut all_ok = true;
        for o in matching {
            let key = o.rendered.key();
            if let Some(f) = st.failures.iter().find(|f| f.object == key) {
                all_ok = false;
                say(format!(
                    "{key} (from {}): {} at the last sync (commit {applied}): {}",
                    o.rendered.source, f.reason, f.message
                ));
            } else if o.in_sync {
                say(format!(
                    "{key} (from {}): applied and in sync with commit {}",
                    o.rendered.source, view.head
                ));
            } else if o.live.is_none() {
                all_ok = false;
                say(format!(
                    "{key} (from {}): not in the cluster yet — head {} is verified and renders it, but the last applied commit is {applied}; the next sync applies it",
                    o.rendered.source, view.head
                ));
            } else if applied != view.head {
                all_ok = false;
                say(format!(
                    "{key} (from {}): changed in Git — head {} is verified but not applied yet (applied: {applied}); the next sync applies it ({})",
                    o.rendered.source,
                    view.head,
                    o.difference.as_deref().unwrap_or("changed")
                ));
            } else {
                all_ok = false;
                say(format!(
                    "{key} (from {}): changed in the cluster (drift) at {}; the next sync restores it unless self-heal is off",
                    o.rendered.source,
                    o.difference.as_deref().unwrap_or("a field")
                ));
            }
        }
        Ok(if all_ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        })
    })
}
