//! `kars render [PATH] [--cluster NAME] [--out DIR]`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use kars_renderer::{Bundles, RenderError, output};

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
    let rendered = kars_renderer::render_tree(&tree, args.cluster.as_deref(), &Bundles::none())
        .map_err(render_failure)?;
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
    Ok(ExitCode::SUCCESS)
}
