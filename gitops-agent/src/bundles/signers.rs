//! The signers a bundle must be signed by: cosign public keys and certificate identities
//! chained to configured roots, all from outside the policy repository.

use std::path::PathBuf;

use sha2::{Digest, Sha256};
use sigstore::crypto::{CosignVerificationKey, Signature};

use super::identity::{CertIdentity, TrustRoot};
use super::{TrustConfigError, sha256_digest};

/// Trusted signers, from outside the repository: cosign public keys (PEM), and/or certificate
/// identities (subject + OIDC issuer) whose certificates chain to configured roots.
#[derive(Clone, Default)]
pub struct SignerPolicy {
    keys: Vec<(String, CosignVerificationKey)>,
    key_hashes: Vec<String>,
    pub(crate) roots: Vec<TrustRoot>,
    pub(crate) identities: Vec<CertIdentity>,
}

impl std::fmt::Debug for SignerPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerPolicy")
            .field(
                "keys",
                &self.keys.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("identities", &self.identities)
            .field(
                "roots",
                &self.roots.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl SignerPolicy {
    /// Adds the public key in `pem` under `name`.
    pub fn add_pem(&mut self, name: &str, pem: &[u8]) -> Result<(), TrustConfigError> {
        let key = CosignVerificationKey::try_from_pem(pem).map_err(|e| {
            TrustConfigError::NotAPublicKey {
                name: name.to_string(),
                message: e.to_string(),
            }
        })?;
        self.keys.push((name.to_string(), key));
        self.key_hashes.push(sha256_digest(pem));
        Ok(())
    }

    /// Reads every `*.pub`/`*.pem` key file given (files or directories).
    pub fn from_paths(paths: &[PathBuf]) -> Result<SignerPolicy, TrustConfigError> {
        let mut p = SignerPolicy::default();
        for path in paths {
            let files: Vec<PathBuf> = if path.is_dir() {
                let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| TrustConfigError::unreadable(path, e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "pub" || x == "pem"))
                    .collect();
                v.sort();
                v
            } else {
                vec![path.clone()]
            };
            for f in files {
                let pem = std::fs::read(&f).map_err(|e| TrustConfigError::unreadable(&f, e))?;
                p.add_pem(&f.display().to_string(), &pem)?;
            }
        }
        Ok(p)
    }

    /// Adds every certificate of the PEM file `name` as a root for certificate identities.
    pub fn add_roots_pem(&mut self, name: &str, pem: &[u8]) -> Result<(), TrustConfigError> {
        self.roots.extend(TrustRoot::from_pem(name, pem)?);
        self.key_hashes.push(format!("root:{}", sha256_digest(pem)));
        Ok(())
    }

    /// Allows signatures by certificates naming `identity` (needs roots).
    pub fn add_identity(&mut self, identity: CertIdentity) {
        self.key_hashes.push(format!(
            "identity:{}\n{}",
            identity.subject, identity.issuer
        ));
        self.identities.push(identity);
    }

    /// True when nothing can verify: no key, and no identity with a root.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && (self.identities.is_empty() || self.roots.is_empty())
    }

    /// How many signers are trusted (keys + identities), for messages.
    pub fn len(&self) -> usize {
        self.keys.len() + self.identities.len()
    }

    /// A fingerprint of the configured keys (cache partition: a policy change invalidates).
    pub fn fingerprint(&self) -> String {
        let mut hashes: Vec<&str> = self.key_hashes.iter().map(String::as_str).collect();
        hashes.sort_unstable();
        hex::encode(&Sha256::digest(hashes.join("\n").as_bytes())[..8])
    }

    pub(crate) fn verify(&self, payload: &[u8], b64_sig: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(_, k)| {
                k.verify_signature(Signature::Base64Encoded(b64_sig.as_bytes()), payload)
                    .is_ok()
            })
            .map(|(n, _)| n.as_str())
    }
}
