//! `kars validate [PATH]`: every problem at once, as `file:line:column: message`.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::Failure;

/// Arguments of `kars validate`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The policy repository (a working directory).
    #[arg(default_value = ".")]
    path: PathBuf,
}

/// Runs `kars validate`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let tree = super::read_tree(&args.path)?;
    let report = kars_renderer::validate_tree(&tree);
    let errors = report.error_count();
    let warnings = report.diagnostics.len() - errors;
    if crate::ui::get().machine() {
        let out = serde_json::json!({
            "valid": errors == 0,
            "errors": errors,
            "warnings": warnings,
            "diagnostics": report.diagnostics,
        });
        crate::ui::emit(&out)?;
    } else {
        for d in &report.diagnostics {
            eprintln!("{d}");
        }
        if errors == 0 {
            eprintln!(
                "{}: valid ({} file(s), {warnings} warning(s))",
                args.path.display(),
                tree.len()
            );
        } else {
            eprintln!(
                "{}: {errors} error(s), {warnings} warning(s)",
                args.path.display()
            );
        }
    }
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
