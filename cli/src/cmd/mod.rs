//! One module per subcommand.
pub mod audit;
pub mod diff;
pub mod init;
pub mod policy;
pub mod render;
pub mod status;
pub mod sync;
pub mod validate;
pub mod verify;
pub mod why;

use std::path::Path;

use anyhow::Context;
use kars_renderer::RepoTree;
use kars_renderer::source::SourceLimits;

/// Reads a policy repository's working tree, with the renderer's safety checks.
pub fn read_tree(path: &Path) -> Result<RepoTree, crate::Failure> {
    if !path.is_dir() {
        return Err(crate::Failure::usage(anyhow::anyhow!(
            "{} is not a directory",
            path.display()
        )));
    }
    RepoTree::from_dir(path, SourceLimits::default())
        .with_context(|| format!("reading policy repository {}", path.display()))
        .map_err(crate::Failure::check)
}
