//! `kars sre`: SRE remediations as pull requests. `propose` writes one typed action to
//! `sre/actions/<id>.yaml` on a branch with a signed commit and opens a pull request;
//! `approve` is another person's signed commit that sets `spec.approval.state: Approved`, then
//! the merge; `reject` closes the pull request with the reason; `actions` and `show` list and
//! explain proposals and what the agent did with them (from the forge and the cluster).
//!
//! Every command validates what it can offline first (the action's type, parameters,
//! denylisted namespaces, bounds, the repository layout) and exits 1 naming the problem before
//! any forge setting is read or anything is pushed. Git work happens in a temporary worktree
//! of the repository (`--repo`), so the checkout is never touched; commits are signed with the
//! user's own Git signing settings (`user.signingkey`, `gpg.format`).

mod list;
mod propose;
mod review;

use std::process::ExitCode;

use crate::access::ClusterArgs;
use crate::failure::{CHECK, Failure};
pub use crate::proposal::{Connection, ForgeArgs, forge_failure, git};

/// Arguments of `kars sre`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Propose one typed action as a pull request (validated offline first).
    Propose(propose::Args),
    /// List proposals (open pull requests) and what the agent did with merged ones.
    Actions(list::ActionsArgs),
    /// Show one action: the proposal, its reviews, the agent's record and the CR's status.
    Show(list::ShowArgs),
    /// Approve an action: your signed commit sets Approved, then the pull request merges.
    Approve(review::ApproveArgs),
    /// Reject an action: the pull request is closed with the reason.
    Reject(review::RejectArgs),
}

/// Runs `kars sre`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    match args.command {
        Command::Propose(a) => propose::run(a),
        Command::Actions(a) => list::actions(a),
        Command::Show(a) => list::show(a),
        Command::Approve(a) => review::approve(a),
        Command::Reject(a) => review::reject(a),
    }
}

/// Cluster flags for reading what the agent did (optional: without a reachable cluster only
/// the forge is shown).
#[derive(clap::Args, Debug, Clone)]
pub struct LedgerArgs {
    /// The PolicyRepo whose record to read (default: kars.yaml metadata.name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Do not read the cluster (forge only).
    #[arg(long)]
    no_cluster: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// The branch of action `id`.
pub fn branch_of(id: &str) -> String {
    format!("{}{id}", kars_gitops_agent::sre::BRANCH_PREFIX)
}

pub use kars_gitops_agent::sre::file_of;

/// Checks an action id (a DNS label, it names the CR).
pub fn check_id(id: &str) -> Result<(), Failure> {
    if kars_contract::host::is_dns_label(id) {
        Ok(())
    } else {
        Err(Failure::msg(
            CHECK,
            format!(
                "action id {id:?}: must be a DNS-1123 label (lowercase letters, digits and '-', at most 63)"
            ),
        ))
    }
}
