//! `kars render [PATH] [--cluster NAME] [--out DIR] [--bundle-keys KEYS]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kars_gitops_agent::bundles::BundleArgs;
use kars_gitops_agent::sync::SyncError;
use kars_gitops_agent::sync::pipeline::bundles_and_render;
use kars_renderer::{RenderError, output};

use crate::Failure;

/// Arguments of `kars render`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The policy repository (a working directory).
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Which cluster of kars.yaml to render (needed when it defines several).
    #[arg(long)]
    cluster: Option<String>,
    /// Write one file per object into this (new or empty) directory instead of stdout.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Signed bundles (`allowlistRef`, `bundleRef`) are pulled and verified with these keys,
    /// as the agent does. Without keys, objects that need a bundle are held back: listed on
    /// stderr, left out of the output, and the exit code is 1 (unless --allow-held-back).
    #[command(flatten, next_help_heading = "Signed bundles")]
    bundles: BundleArgs,
    /// Held-back objects (bundles not verified here, e.g. in a policy repository's CI without
    /// registry access or keys) are listed on stderr but do not fail the render (exit 0).
    #[arg(long)]
    allow_held_back: bool,
}

/// Maps a render failure to the exit code: invalid input is 1, a bad `--cluster` is 2.
pub fn render_failure(e: RenderError) -> Failure {
    match e {
        RenderError::Cluster(_) => Failure::usage(anyhow::anyhow!("{e}")),
        other => Failure::check(anyhow::anyhow!("{other}")),
    }
}

/// Runs `kars render`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let tree = super::read_tree(&args.path)?;
    let prepared =
        kars_renderer::prepare(&tree, args.cluster.as_deref()).map_err(render_failure)?;
    // The agent's own bundle and render step: without signers no reference can verify, and
    // the objects needing one are held back.
    let verifier = args
        .bundles
        .verifier(None)
        .map_err(|e| Failure::usage(anyhow::anyhow!(e)))?;
    let with_signers = args.bundles.any_signer();
    let references = prepared.bundle_uses().len();
    if with_signers && references > 0 {
        eprintln!("verifying {references} signed bundle reference(s) …");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (_, statuses, rendered) = runtime.block_on(bundles_and_render(
        prepared,
        "the working tree",
        &verifier,
        &[],
    ));
    if with_signers {
        for st in statuses.iter().filter(|s| s.reason.is_some()) {
            eprintln!(
                "bundle {} of {} ({}): {}",
                st.reference,
                st.object,
                st.field,
                st.message.as_deref().unwrap_or_default()
            );
        }
    }
    let rendered = rendered.map_err(|e| match e {
        SyncError::Render { source, .. } => render_failure(source),
        other => Failure::check(anyhow::anyhow!("{other}")),
    })?;
    match &args.out {
        None => {
            let yaml = output::to_yaml(&rendered).map_err(Failure::check)?;
            crate::out(&yaml);
        }
        Some(dir) => {
            if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
                return Err(Failure::usage(anyhow::anyhow!(
                    "{} is not empty; choose a new or empty directory",
                    dir.display()
                )));
            }
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for (i, o) in rendered.objects.iter().enumerate() {
                let path = dir.join(output::file_name(i, &o.manifest));
                let body = output::object_yaml(&o.manifest)
                    .map_err(|m| Failure::check(anyhow::anyhow!("{}: {m}", o.key())))?;
                std::fs::write(&path, body)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!(
                "wrote {} object(s) for cluster {:?} to {} (digest {})",
                rendered.objects.len(),
                rendered.cluster,
                dir.display(),
                rendered.digest
            );
        }
    }
    if let Some(difference) =
        super::source::worktree_difference(&args.path.display().to_string(), "HEAD")
    {
        crate::ui::warn(format!(
            "{difference}; kars render read the working tree, while kars sync, kars diff and the agent read the commit"
        ));
    }
    if rendered.held_back.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    for p in &rendered.held_back {
        eprintln!("held back: {} ({}): {}", p.object, p.file, p.reason);
    }
    if !args.bundles.any_signer() {
        eprintln!(
            "{} object(s) need signed bundles: pass --bundle-keys (or --bundle-identity), the agent's signers, to verify and render them",
            rendered.held_back.len()
        );
    }
    if args.allow_held_back {
        eprintln!(
            "{} object(s) held back, allowed by --allow-held-back: the agent verifies their bundles before applying them",
            rendered.held_back.len()
        );
        return Ok(ExitCode::SUCCESS);
    }
    Ok(ExitCode::from(1))
}
