//! `kars why OBJECT|PATH`: why the objects of a file (or one object) are not applied yet —
//! verification, validation, an apply error, health — naming the commit and the file. Objects
//! are named like kubectl names them: `Kind/name` or `Kind/namespace/name`, the kind in any
//! case, singular or plural (`deployment/x`, `Deployments/ns/x`).

use std::process::ExitCode;

use super::source::SourceArgs;
use crate::Failure;

/// Arguments of `kars why`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A repository file (e.g. agents/a/sandbox.yaml) or an object (Kind/name or
    /// Kind/namespace/name; the kind in any case).
    target: String,
    #[command(flatten)]
    source: SourceArgs,
}

/// Runs `kars why`. Exit 0 when everything asked about is applied and in sync, 1 otherwise.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let (view, cfg) = args.source.inspect().await?;
        args.source.note_worktree(&cfg);
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
                    names_object(
                        &target,
                        o.rendered.kind(),
                        o.rendered.namespace(),
                        o.rendered.name(),
                    )
                }
            })
            .collect();
        if matching.is_empty() {
            let pruned = view
                .to_prune
                .iter()
                .find(|e| names_object(&target, &e.kind, e.namespace.as_deref(), &e.name));
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

/// True when `target` (`Kind/name` or `Kind/namespace/name`, kind in any case, singular or
/// plural) names the object.
pub fn names_object(target: &str, kind: &str, namespace: Option<&str>, name: &str) -> bool {
    let parts: Vec<&str> = target.split('/').collect();
    let (want_kind, want_ns, want_name) = match parts.as_slice() {
        [k, n] => (*k, None, *n),
        [k, ns, n] => (*k, Some(*ns), *n),
        _ => return false,
    };
    kind_matches(want_kind, kind)
        && want_name == name
        && want_ns.is_none_or(|ns| Some(ns) == namespace)
}

/// `deployment`, `Deployment`, `deployments` all name `Deployment`.
pub fn kind_matches(given: &str, kind: &str) -> bool {
    let g = given.to_ascii_lowercase();
    let k = kind.to_ascii_lowercase();
    g == k
        || g == format!("{k}s")
        || g == format!("{k}es")
        || (k.ends_with('y') && g == format!("{}ies", &k[..k.len() - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_named_like_kubectl_names_them() {
        for t in [
            "Deployment/a",
            "deployment/a",
            "deployments/a",
            "DEPLOYMENT/ns/a",
        ] {
            assert!(names_object(t, "Deployment", Some("ns"), "a"), "{t}");
        }
        assert!(names_object(
            "networkpolicies/ns/x",
            "NetworkPolicy",
            Some("ns"),
            "x"
        ));
        assert!(!names_object(
            "Deployment/other/a",
            "Deployment",
            Some("ns"),
            "a"
        ));
        assert!(!names_object("Service/a", "Deployment", Some("ns"), "a"));
        assert!(!names_object("Deployment/A", "Deployment", Some("ns"), "a"));
    }
}
