//! `kars version`: the release, the commit it was built from, and the APIs it speaks.

use std::process::ExitCode;

use crate::failure::Failure;
use crate::ui;

/// `kars --version`.
pub const SHORT: &str = env!("CARGO_PKG_VERSION");

/// The commit the binary was built from ("unknown" outside a checkout).
pub const COMMIT: &str = env!("KARS_GIT_COMMIT");

/// Runs `kars version`.
pub fn run() -> Result<ExitCode, Failure> {
    let doc = serde_json::json!({
        "version": SHORT,
        "commit": COMMIT,
        "karsApi": kars_contract::KARS_API_VERSION,
        "gitopsApi": kars_contract::GITOPS_API_VERSION,
    });
    if ui::get().machine() {
        ui::emit(&doc)?;
    } else {
        crate::outln!("kars {SHORT} (commit {COMMIT})");
        crate::outln!(
            "kars API: {} (the CRDs of upstream kars)",
            kars_contract::KARS_API_VERSION
        );
        crate::outln!(
            "GitOps API: {} (PolicyRepo)",
            kars_contract::GITOPS_API_VERSION
        );
    }
    Ok(ExitCode::SUCCESS)
}
