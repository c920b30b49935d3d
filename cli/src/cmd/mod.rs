//! One module per subcommand, plus the flags and helpers several share ([`source`],
//! [`policyrepo`]).
pub mod audit;
pub mod delete;
pub mod diff;
pub mod egress;
pub mod events;
pub mod get;
pub mod init;
pub mod policy;
pub mod policyrepo;
pub mod reconcile;
pub mod render;
pub mod source;
pub mod sre;
pub mod status;
pub mod sync;
pub mod trace;
pub mod validate;
pub mod verify;
pub mod version;
pub mod why;

use std::path::Path;

use anyhow::Context;
use kars_renderer::RepoTree;
use kars_renderer::source::SourceLimits;

/// Runs `f` to completion on a new async runtime (the commands are synchronous at the top).
pub fn block_on<T>(
    f: impl std::future::Future<Output = Result<T, crate::Failure>>,
) -> Result<T, crate::Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

/// Reads a policy repository's working tree, with the renderer's safety checks.
pub fn read_tree(path: &Path) -> Result<RepoTree, crate::Failure> {
    if !path.is_dir() {
        return Err(crate::Failure::msg(
            crate::failure::USAGE,
            format!("{} is not a directory", path.display()),
        ));
    }
    RepoTree::from_dir(path, SourceLimits::default())
        .with_context(|| format!("reading policy repository {}", path.display()))
        .map_err(crate::Failure::check)
}
