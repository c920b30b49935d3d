//! Verified bundle bytes on disk, partitioned by signer-policy fingerprint.

use std::path::{Path, PathBuf};

use super::{SignerPolicy, sha256_digest};

/// Verified bundles on disk, by signer-policy fingerprint and digest (no re-pull of a digest
/// already verified under the same policy; survives restarts when the directory does).
#[derive(Clone, Debug)]
pub struct BundleCache {
    dir: PathBuf,
}

impl BundleCache {
    /// A cache under `dir/bundles/<policy fingerprint>/`.
    pub fn new(dir: &Path, policy: &SignerPolicy) -> BundleCache {
        BundleCache {
            dir: dir.join("bundles").join(policy.fingerprint()),
        }
    }

    pub(crate) fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(digest.replace(':', "-"))
    }

    /// Verified bytes of `digest`, if cached (checked against the digest of the content layer
    /// they were stored under: a corrupted file is ignored).
    pub fn get(&self, digest: &str) -> Option<Vec<u8>> {
        let path = self.path(digest);
        let bytes = std::fs::read(&path).ok()?;
        let (stored_hash, content) = bytes.split_at_checked(71)?;
        (stored_hash.get(..71)? == sha256_digest(content).as_bytes()).then(|| content.to_vec())
    }

    /// Stores verified bytes of `digest`.
    pub fn put(&self, digest: &str, content: &[u8]) {
        if std::fs::create_dir_all(&self.dir).is_err() {
            return;
        }
        let mut data = sha256_digest(content).into_bytes();
        data.extend_from_slice(content);
        let tmp = self.path(&format!("{digest}.tmp"));
        if std::fs::write(&tmp, &data).is_ok() {
            let _ = std::fs::rename(&tmp, self.path(digest));
        }
    }
}
