//! `kars init [PATH]`: write the repository template.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::Failure;

/// Arguments of `kars init`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory to create the repository in (created if missing; must be empty unless --force).
    #[arg(default_value = ".")]
    path: PathBuf,
    /// Write into a non-empty directory (existing files with the same names are kept).
    #[arg(long)]
    force: bool,
}

/// Runs `kars init`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let dir = &args.path;
    if dir.exists() {
        let non_empty = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .any(|e| e.is_ok_and(|e| e.file_name() != ".git"));
        if non_empty && !args.force {
            return Err(Failure::usage(anyhow::anyhow!(
                "{} is not empty; choose an empty directory or pass --force (existing files are kept)",
                dir.display()
            )));
        }
    }
    let mut written = 0;
    for (rel, body) in crate::template::FILES {
        let path = dir.join(rel);
        if path.exists() {
            eprintln!("kept     {}", path.display());
            continue;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("created  {}", path.display());
        written += 1;
    }
    eprintln!(
        "\n{written} file(s) written. Next: edit agents/, then `kars validate {d}` and `kars render {d}`.",
        d = dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
