//! `kars sre propose`.

use std::collections::BTreeMap;
use std::process::ExitCode;

use kars_gitops_agent::forge::Forge;
use kars_renderer::sre::{DEFAULT_TTL_MINUTES, Proposal, SreOperation, check_proposal_text};
use serde_json::{Value, json};

use super::{ForgeArgs, branch_of, file_of, forge_failure, git};
use crate::failure::{CHECK, Failure};
use crate::{outln, ui};

/// Arguments of `kars sre propose`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The action type: DeleteResourceQuota, PatchDeploymentImage, ScaleDeployment,
    /// RolloutRestart or DeletePod.
    #[arg(long, value_name = "TYPE")]
    action: String,
    /// A parameter, `key=value` (repeat): namespace, name, and per type replicas, container,
    /// image or kind.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    params: Vec<String>,
    /// What is wrong (at most 512 characters).
    #[arg(long)]
    diagnosis: String,
    /// Why this action fixes it (at most 2048 characters).
    #[arg(long)]
    rationale: String,
    /// Minutes the approval has to reach the cluster in (1..=60); later it expires unrun.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_TTL_MINUTES)]
    ttl_minutes: u32,
    /// The action id (default: derived from the type and target, plus a random suffix).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    #[command(flatten)]
    forge: ForgeArgs,
}

fn parse_params(raw: &[String]) -> Result<BTreeMap<String, Value>, Failure> {
    let mut out = BTreeMap::new();
    for p in raw {
        let (k, v) = p.split_once('=').ok_or_else(|| {
            Failure::msg(
                CHECK,
                format!("--param {p:?}: expected KEY=VALUE (e.g. --param namespace=team-a)"),
            )
        })?;
        let value = if k == "replicas" {
            v.parse::<i64>()
                .map(|n| json!(n))
                .unwrap_or_else(|_| json!(v))
        } else {
            json!(v)
        };
        if out.insert(k.to_string(), value).is_some() {
            return Err(Failure::msg(CHECK, format!("--param {k}: given twice")));
        }
    }
    Ok(out)
}

fn default_id(op: &SreOperation) -> String {
    use sha2::Digest;
    let verb = match op {
        SreOperation::DeleteResourceQuota { .. } => "delete-quota",
        SreOperation::PatchDeploymentImage { .. } => "set-image",
        SreOperation::ScaleDeployment { .. } => "scale",
        SreOperation::RolloutRestart { .. } => "restart",
        SreOperation::DeletePod { .. } => "delete-pod",
    };
    let target = op.target();
    let name = target.rsplit('/').next().unwrap_or("target");
    let seed = format!(
        "{target}{:?}{}",
        std::time::SystemTime::now(),
        std::process::id()
    );
    let suffix = hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..3]);
    let mut stem: String = format!("{verb}-{name}")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    stem.truncate(63 - 7);
    format!("{}-{suffix}", stem.trim_end_matches('-'))
}

/// Runs `kars sre propose`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    // Offline first: nothing about the forge is read before the action is known to be valid.
    let params = parse_params(&args.params)?;
    let op = SreOperation::parse(&args.action, &params).map_err(|problems| {
        Failure::msg(
            CHECK,
            format!(
                "the action is not valid: {}",
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )
        .reason(kars_contract::Reason::ActionInvalid)
        .hint("kars sre propose --help lists the types and their parameters")
    })?;
    let proposal = Proposal {
        id: args.id.clone().unwrap_or_else(|| default_id(&op)),
        action: args.action.clone(),
        params,
        diagnosis: args.diagnosis.clone(),
        rationale: args.rationale.clone(),
        ttl_minutes: args.ttl_minutes,
    };
    let text_problems = check_proposal_text(&proposal);
    if !text_problems.is_empty() {
        return Err(Failure::msg(
            CHECK,
            format!("the proposal is not valid: {}", text_problems.join("; ")),
        )
        .reason(kars_contract::Reason::ActionInvalid));
    }
    args.forge.check_repo()?;
    receives_sre(&args.forge.repo)?;
    let file = file_of(&proposal.id);
    let body = proposal.file_text().map_err(|e| Failure::msg(CHECK, e))?;
    super::super::block_on(async move {
        let conn = args.forge.connect().await?;
        let base = git::fetch(&conn.repo, &conn.remote, &conn.base)?;
        if git::show_file(&conn.repo, &base, &file).is_some() {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "{file} already exists on {}: choose another --id",
                    conn.base
                ),
            ));
        }
        let branch = branch_of(&proposal.id);
        if kars_gitops_agent::forge::Forge::pull_for_branch(&conn.forge, &branch)
            .await
            .map_err(forge_failure)?
            .is_some()
        {
            return Err(Failure::msg(
                CHECK,
                format!("a pull request for {branch} exists already: choose another --id"),
            ));
        }
        let wt = git::Worktree::at(&conn.repo, &base)?;
        wt.write(&file, &body)?;
        let message = format!(
            "sre: propose {} {} ({})\n\n{}\n\nKars-SRE-Action: {}",
            op.type_name(),
            op.target(),
            proposal.id,
            proposal.diagnosis,
            proposal.id
        );
        let commit = wt.commit_signed(&[&file], &message)?;
        wt.push(&conn.remote, &format!("{commit}:refs/heads/{branch}"))?;
        let title = format!("SRE: {} ({})", op.change(), proposal.id);
        let pr = conn
            .forge
            .open_pull(
                &branch,
                &conn.base,
                &title,
                &kars_gitops_agent::sre::pull_request_body(&proposal, &op, &file, &body, None),
            )
            .await
            .map_err(forge_failure)?;
        if ui::get().machine() {
            ui::emit(&json!({
                "id": proposal.id, "file": file, "branch": branch, "commit": commit,
                "pullRequest": {"number": pr.number, "url": pr.url},
                "action": {"type": op.type_name(), "target": op.target(), "change": op.change()},
            }))?;
        } else {
            outln!("proposed {}: {}", proposal.id, op.change());
            outln!("  pull request #{}: {}", pr.number, pr.url);
            outln!("  commit {commit} on {branch}");
            ui::note(format!(
                "next: someone other than you approves it (kars sre approve {} --note …) or rejects it (kars sre reject {} --reason …); approval must reach the cluster within {} minutes",
                proposal.id, proposal.id, proposal.ttl_minutes
            ));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// The repository must send `sre/` to some cluster, or the action never reaches one.
fn receives_sre(repo: &std::path::Path) -> Result<(), Failure> {
    let text = std::fs::read_to_string(repo.join("kars.yaml")).unwrap_or_default();
    let docs =
        kars_renderer::yaml::parse_documents(&text, kars_renderer::yaml::YamlLimits::default())
            .map_err(|e| Failure::msg(CHECK, format!("kars.yaml: {e:?}")))?;
    let mut diags = kars_renderer::diagnostics::Diagnostics::new("kars.yaml".to_string());
    let Some(cfg) = docs
        .first()
        .and_then(|d| kars_renderer::config::parse(d, &mut diags))
    else {
        return Err(Failure::msg(
            CHECK,
            "kars.yaml does not validate (run kars validate)",
        ));
    };
    let file = format!("{}/x.yaml", kars_gitops_agent::sre::ACTIONS_DIR);
    let receives = cfg.spec.clusters.iter().any(|c| {
        c.paths.iter().any(|p| {
            let p = p.trim_end_matches('/');
            file.starts_with(&format!("{p}/"))
        })
    });
    if receives {
        Ok(())
    } else {
        Err(Failure::msg(
            CHECK,
            format!(
                "no cluster in kars.yaml receives {}/: the action would never reach a cluster",
                kars_gitops_agent::sre::ACTIONS_DIR
            ),
        )
        .hint("add sre (or sre/actions) to the paths of the cluster the action is for"))
    }
}
