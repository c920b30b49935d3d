//! Verify: only what trusted people signed is applied.
//!
//! - [`keys`]: signer keys from `allowed_signers`, OpenPGP keyrings and trust files;
//! - [`signature`]: one signature over one payload (SSHSIG, OpenPGP) with a named reason for
//!   every refusal;
//! - [`objects`]: what a commit or tag signature covers;
//! - [`trust`]: the trust policy (roots from outside the repository, path rules, k-of-n, the
//!   repository's own signer list, forge keys);
//! - [`range`]: every commit of `since..head`, and the no-rollback rule (also when the last
//!   applied commit vanished);
//! - [`verdict`]: what it concludes, with a reason word per refusal.

pub mod keys;
pub mod objects;
pub mod range;
pub mod signature;
pub mod trust;
pub mod verdict;

#[cfg(test)]
mod fuzz;

pub use range::{CommitVerdict, RangeVerdict, Since, Verifier, resolve_since};
pub use trust::TrustPolicy;

use std::path::Path;

/// Loads a trust policy from the CLI/agent inputs: a TrustPolicy file, and/or plain key
/// sources (`allowed_signers`, armored OpenPGP keyring) whose keys are added as root signers.
pub fn load_policy(
    trust: Option<&Path>,
    allowed_signers: Option<&Path>,
    keyring: Option<&Path>,
) -> Result<TrustPolicy, keys::KeySourceError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|e| keys::KeySourceError {
            source_name: p.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        })
    };
    let mut policy = match trust {
        Some(p) => TrustPolicy::parse(&p.display().to_string(), &read(p)?)?,
        None => TrustPolicy::from_keys(Vec::new()),
    };
    // Name the flag in the message: the file is the user's, the flag says what it should be.
    let flag = |flag: &'static str| {
        move |mut e: keys::KeySourceError| {
            e.message = format!("{} (the {flag} file)", e.message);
            e
        }
    };
    if let Some(p) = allowed_signers {
        policy.roots.extend(
            keys::parse_allowed_signers(&p.display().to_string(), &read(p)?)
                .map_err(flag("--allowed-signers"))?,
        );
    }
    if let Some(p) = keyring {
        policy.roots.extend(
            keys::parse_openpgp_keyring(&p.display().to_string(), &read(p)?)
                .map_err(flag("--openpgp-keyring"))?,
        );
    }
    if policy.roots.is_empty() {
        return Err(keys::KeySourceError {
            source_name: "trust".into(),
            line: 0,
            message: "no trusted signers: give --trust, --allowed-signers or --openpgp-keyring"
                .into(),
        });
    }
    Ok(policy)
}

/// Seconds since the Unix epoch (the clock for key expiry).
pub use kars_contract::time::unix_now;
