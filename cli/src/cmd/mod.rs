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

/// A client for the cluster `kubeconfig` names (or the environment's); failing is a usage
/// error (exit 2) that says which file it tried.
pub async fn connect(kubeconfig: Option<&Path>) -> Result<kube::Client, crate::Failure> {
    kars_gitops_agent::cluster::kube_client(kubeconfig)
        .await
        .with_context(|| match kubeconfig {
            Some(p) => format!("connecting to the cluster of {}", p.display()),
            None => "connecting to the cluster (check --kubeconfig)".to_string(),
        })
        .map_err(crate::Failure::usage)
}

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
