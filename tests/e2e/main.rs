//! The end-to-end suite: one test binary, modules inside, one control plane per run.
//!
//! `cargo test -p kars-e2e --test e2e -- FILTER` runs a subset; the control plane starts only
//! if a selected test needs it and is stopped when the run ends, pass or fail.

use libtest_mimic::{Arguments, Trial};

mod agent;
mod bundles;
mod chart;
mod cli;
mod egress;
mod harness;
mod node;
mod render;
mod router;
mod sre;
mod sync;
mod verify;

fn main() -> std::process::ExitCode {
    kars_e2e::init_crypto();
    let args = Arguments::from_args();
    let mut trials: Vec<Trial> = Vec::new();
    trials.extend(harness::tests());
    trials.extend(node::tests());
    trials.extend(agent::tests());
    trials.extend(bundles::tests());
    trials.extend(chart::tests());
    trials.extend(cli::tests());
    trials.extend(egress::tests());
    trials.extend(render::tests());
    trials.extend(router::tests());
    trials.extend(sre::tests());
    trials.extend(sync::tests());
    trials.extend(verify::tests());
    let conclusion = libtest_mimic::run(&args, trials);
    kars_e2e::Cluster::shutdown_shared(conclusion.has_failed());
    kars_e2e::forge::Forge::shutdown_shared(conclusion.has_failed());
    conclusion.exit_code()
}

/// Wraps a test body returning `anyhow::Result` as a libtest-mimic trial.
pub fn trial(name: &'static str, body: fn() -> anyhow::Result<()>) -> Trial {
    Trial::test(name, move || body().map_err(|e| format!("{e:#}").into()))
}
