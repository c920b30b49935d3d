//! `kars`: the command line of kars GitOps.
//!
//! Every subcommand runs the same library code the agent runs (renderer, verifier, applier),
//! so what `kars render` prints is what the agent applies. Exit codes are one table for every
//! command ([`failure`], and `kars --help`).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod access;
mod cmd;
mod failure;
mod proposal;
mod template;
mod ui;

pub use failure::Failure;

/// The exit-code table, shown by `kars --help` (the README carries the same text).
const EXIT_CODES: &str = "\
Exit codes (every command):
  0  success; for diff: no differences
  1  the repository, a commit or the cluster state failed the check (not Ready counts);
     for diff: there are differences
  2  usage: bad flags, missing files, unknown names; for diff: the diff could not be made
  3  the cluster or the Git remote cannot be reached

Environment: KUBECONFIG (a list, as kubectl reads it), KARS_NAMESPACE, KARS_ALLOWED_SIGNERS,
KARS_OPENPGP_KEYRING, KARS_TRUST, KARS_BUNDLE_KEYS, NO_COLOR.";

/// kars GitOps: Git is the only source of truth for a kars cluster.
#[derive(Parser, Debug)]
#[command(
    name = "kars",
    version = cmd::version::SHORT,
    propagate_version = true,
    after_help = EXIT_CODES
)]
struct Cli {
    #[command(flatten)]
    global: ui::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a new policy repository from the template (kars.yaml, agents/, policies/, …).
    Init(cmd::init::Args),
    /// Check a policy repository: YAML, schemas, CEL rules, references. Exit 1 on errors.
    Validate(cmd::validate::Args),
    /// Print (or write) exactly the objects the agent would apply for one cluster.
    Render(cmd::render::Args),
    /// Check the signature of every commit in a range against a trust policy. Exit 1 on failure.
    Verify(cmd::verify::Args),
    /// Verify, render and apply a policy repository to a cluster, once (the agent's sync).
    Sync(Box<cmd::sync::Args>),
    /// Show what a sync would change, as a unified diff per object (exit 1 when something would).
    Diff(Box<cmd::diff::Args>),
    /// List the PolicyRepos as a table: applied commit, Ready, reason.
    Get(cmd::get::Args),
    /// Show what is applied, from which commit, signed by whom, and what failed.
    Status(cmd::status::Args),
    /// Show the Events of the PolicyRepos (syncs, refusals, failures).
    Events(cmd::events::Args),
    /// Explain why a file's (or an object's) objects are not applied yet.
    Why(Box<cmd::why::Args>),
    /// Show where a live object comes from: PolicyRepo, commit, signer, file and line.
    Trace(cmd::trace::Args),
    /// Ask the agent to sync a PolicyRepo now (--wait for the result).
    Reconcile(cmd::reconcile::Args),
    /// Stop syncing a PolicyRepo (what is applied stays).
    Suspend(cmd::reconcile::SuspendArgs),
    /// Start syncing a suspended PolicyRepo again, and sync now.
    Resume(cmd::reconcile::Args),
    /// Delete a PolicyRepo; its objects stay unless --prune.
    Delete(cmd::delete::Args),
    /// Signed OCI policy bundles: sign and push, verify, canonicalise, list kinds.
    Policy(cmd::policy::Args),
    /// Audit chains: verify a router's log and its signed heads, print a router's public key,
    /// show and verify the agent's signed log of what each sync applied.
    Audit(cmd::audit::Args),
    /// SRE remediations as pull requests: propose, approve (a signed commit), reject, list.
    Sre(cmd::sre::Args),
    /// Egress as pull requests: approve/deny hosts, time-boxed grants, what the router learned.
    Egress(cmd::egress::Args),
    /// Print the version, the commit it was built from and the kars API it supports.
    Version,
    /// Print a shell completion script: bash, zsh or fish.
    Completion(CompletionArgs),
}

/// Arguments of `kars completion`.
#[derive(clap::Args, Debug)]
struct CompletionArgs {
    /// The shell.
    shell: clap_complete::Shell,
}

/// Writes to stdout; a closed pipe (`kars render | head`) ends output quietly instead of failing.
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// Like `println!`, through [`out`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::out(&format!("{}\n", format_args!($($arg)*))) };
}

fn main() -> ExitCode {
    // A bug must not greet a user with a Rust backtrace: say what happened and how to report it.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "kars: internal error: {info}\nThis is a bug in kars; please report it with the command you ran."
        );
    }));
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { failure::USAGE } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    ui::init(&cli.global);
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(a),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Render(a) => cmd::render::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Sync(a) => cmd::sync::run(*a),
        Command::Diff(a) => cmd::diff::run(*a),
        Command::Get(a) => cmd::get::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Events(a) => cmd::events::run(a),
        Command::Why(a) => cmd::why::run(*a),
        Command::Trace(a) => cmd::trace::run(a),
        Command::Reconcile(a) => cmd::reconcile::reconcile(a),
        Command::Suspend(a) => cmd::reconcile::suspend(a),
        Command::Resume(a) => cmd::reconcile::resume(a),
        Command::Delete(a) => cmd::delete::run(a),
        Command::Policy(a) => cmd::policy::run(a),
        Command::Audit(a) => cmd::audit::run(a),
        Command::Sre(a) => cmd::sre::run(a),
        Command::Egress(a) => cmd::egress::run(a),
        Command::Version => cmd::version::run(),
        Command::Completion(a) => {
            clap_complete::generate(a.shell, &mut Cli::command(), "kars", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(f) => f.report(),
    }
}
