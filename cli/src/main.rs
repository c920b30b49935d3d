//! `kars`: the command line of kars GitOps.
//!
//! Every subcommand runs the same library code the agent runs (renderer, verifier, applier),
//! so what `kars render` prints is what the agent applies. Exit codes: 0 success, 1 the
//! checked thing failed (invalid repository, failed verification, failed apply), 2 usage
//! errors (bad flags, missing files).

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod template;

/// kars GitOps: Git is the only source of truth for a kars cluster.
#[derive(Parser, Debug)]
#[command(name = "kars", version, propagate_version = true)]
struct Cli {
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
    /// Show what a sync would change, as a unified diff per object. Exit 1 when something would.
    Diff(Box<cmd::diff::Args>),
    /// Show what is applied, from which commit, signed by whom, and what failed.
    Status(cmd::status::Args),
    /// Explain why a file's (or an object's) objects are not applied yet.
    Why(Box<cmd::why::Args>),
    /// Signed OCI policy bundles: sign and push, verify, canonicalise, list kinds.
    Policy(cmd::policy::Args),
    /// Router audit logs: verify the hash chain.
    Audit(cmd::audit::Args),
}

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    /// The checked thing failed (exit 1).
    pub fn check(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
    /// Usage or environment problem (exit 2).
    pub fn usage(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::usage(e)
    }
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
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Init(a) => cmd::init::run(a),
        Command::Validate(a) => cmd::validate::run(a),
        Command::Render(a) => cmd::render::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Sync(a) => cmd::sync::run(*a),
        Command::Diff(a) => cmd::diff::run(*a),
        Command::Status(a) => cmd::status::run(a),
        Command::Why(a) => cmd::why::run(*a),
        Command::Policy(a) => cmd::policy::run(a),
        Command::Audit(a) => cmd::audit::run(a),
    };
    match result {
        Ok(code) => code,
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}
