//! Signed OCI policy bundles: publishing (`kars policy sign`) and verifying (the agent and
//! `kars policy verify`), one module per concern: [`registry`] (reaching registries: TLS, auth,
//! plain HTTP for loopback only), [`signers`] (the trusted keys and certificate identities),
//! [`fetch`] (pulling one reference by digest and verifying it), [`cache`] (verified bytes on
//! disk), [`resolve`] (every reference of a sync, with the last verified bundle as fallback),
//! [`publish`] (pushing and cosign-signing), [`args`] (the shared command-line flags).
//!
//! Publishing: canonical bytes → one OCI artifact (manifest `artifactType` = the kind's media
//! type, one layer of that media type, the empty config) → a cosign signature in cosign's
//! tag-based format: an image manifest tagged `sha256-<hex>.sig` whose layer is the "simple
//! signing" payload naming the manifest digest, annotated `dev.cosignproject.cosign/signature`
//! with the base64 ECDSA-P256/SHA-256 signature. `cosign verify --key` accepts it, and we accept
//! what `cosign sign --key` writes.
//!
//! Verifying a reference, in order, each failure with its own reason: the reference is a digest
//! (`InvalidRef`); the manifest pulled by digest hashes to that digest (`DigestMismatch`); its
//! `artifactType` is the kind's (`ArtifactTypeMismatch`); a signature exists (`Unsigned`) by a
//! key of the signer policy (`SignerPolicyMismatch`) over a payload that names this digest
//! (`SignatureDigestMismatch`); the layer's bytes are canonical (`CanonicalFormatViolation`);
//! registry and network errors are `OciPullError`. Verified bytes are cached by digest.

pub mod args;
pub mod cache;
mod errors;
pub mod fetch;
mod identity;
pub mod publish;
pub mod registry;
pub mod resolve;
pub mod signers;

pub use args::{BundleArgs, RegistryArgs};
pub use cache::BundleCache;
pub use errors::{PublishError, TrustConfigError};
pub use fetch::{VerifiedBundle, fetch_verified, signature_tag, simple_signing_payload};
pub use identity::{CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION, CertIdentity, TrustRoot};
pub use publish::{SignOutcome, push, sign};
pub use registry::{RegistryOptions, is_loopback_registry};
pub use resolve::BundleVerifier;
pub use signers::SignerPolicy;

use kars_contract::Reason;
use kars_renderer::api::OciArtifactRef;
use kars_renderer::bundle::is_sha256_digest;
use oci_client::Reference;

/// The digest of bytes, `sha256:<hex>`.
pub use kars_contract::sha256_digest;

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The empty config of OCI artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// cosign's simple-signing payload media type.
pub const COSIGN_PAYLOAD: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a cosign signature.
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The Docker image manifest media type (accepted when pulling).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Why a bundle reference was not accepted. Each has a stable reason label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BundleFailure {
    /// The reference is not `registry/repository@sha256:<64 hex>`.
    #[error("invalid reference: {0}")]
    InvalidRef(String),
    /// The artifact's type is not the kind's media type.
    #[error("artifactType is {found:?}, expected {expected:?}")]
    ArtifactTypeMismatch {
        /// Found.
        found: String,
        /// Expected.
        expected: String,
    },
    /// The registry could not be reached, refused, or does not have it.
    #[error("pulling from the registry: {0}")]
    OciPullError(String),
    /// Bytes do not hash to the digest asked for.
    #[error("content does not match its digest: {0}")]
    DigestMismatch(String),
    /// No cosign signature exists for the digest.
    #[error("no signature found ({0})")]
    Unsigned(String),
    /// Signatures exist, but none by a key of the signer policy.
    #[error("signed, but not by a key of the signer policy ({0})")]
    SignerPolicyMismatch(String),
    /// A valid signature names another image digest.
    #[error("the signature is for another digest: {0}")]
    SignatureDigestMismatch(String),
    /// The content is not in its kind's canonical form (or not valid for the kind).
    #[error("content is not canonical: {0}")]
    CanonicalFormatViolation(String),
}

impl BundleFailure {
    /// The reason word (status, metrics).
    pub fn reason(&self) -> Reason {
        match self {
            BundleFailure::InvalidRef(_) => Reason::InvalidRef,
            BundleFailure::ArtifactTypeMismatch { .. } => Reason::ArtifactTypeMismatch,
            BundleFailure::OciPullError(_) => Reason::OciPullError,
            BundleFailure::DigestMismatch(_) => Reason::DigestMismatch,
            BundleFailure::Unsigned(_) => Reason::Unsigned,
            BundleFailure::SignerPolicyMismatch(_) => Reason::SignerPolicyMismatch,
            BundleFailure::SignatureDigestMismatch(_) => Reason::SignatureDigestMismatch,
            BundleFailure::CanonicalFormatViolation(_) => Reason::CanonicalFormatViolation,
        }
    }
}

/// A bundle reference as the CRs carry it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BundleRef {
    /// Registry host.
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Manifest digest.
    pub digest: String,
}

impl BundleRef {
    /// The reference a CR carries.
    pub fn from_api(r: &OciArtifactRef) -> BundleRef {
        BundleRef {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            digest: r.digest.clone(),
        }
    }

    /// Parses `registry/repository@digest`.
    pub fn parse(s: &str) -> Option<BundleRef> {
        let (path, digest) = s.rsplit_once('@')?;
        let (registry, repository) = path.split_once('/')?;
        Some(BundleRef {
            registry: registry.to_string(),
            repository: repository.to_string(),
            digest: digest.to_string(),
        })
    }

    pub(crate) fn reference(&self) -> Result<Reference, BundleFailure> {
        if !is_sha256_digest(&self.digest) {
            return Err(BundleFailure::InvalidRef(format!(
                "{:?} is not a sha256 digest (sha256:<64 hex>); tags are not accepted",
                self.digest
            )));
        }
        if self.registry.is_empty()
            || self.registry.contains('/')
            || self.registry.contains(' ')
            || self.repository.is_empty()
        {
            return Err(BundleFailure::InvalidRef(format!(
                "{}/{}: registry must be a host[:port], repository non-empty",
                self.registry, self.repository
            )));
        }
        Ok(Reference::with_digest(
            self.registry.clone(),
            self.repository.clone(),
            self.digest.clone(),
        ))
    }
}

impl std::fmt::Display for BundleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.registry, self.repository, self.digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use oci_client::secrets::RegistryAuth;
    use serde_json::Value;

    #[test]
    fn loopback_registries() {
        for r in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "127.8.9.1",
        ] {
            assert!(is_loopback_registry(r), "{r}");
        }
        for r in [
            "registry.example.com",
            "10.0.0.1:5000",
            "localhost.evil.com:5000",
            "128.0.0.1",
        ] {
            assert!(!is_loopback_registry(r), "{r}");
        }
    }

    #[test]
    fn plain_http_only_when_allowed_and_loopback() {
        let allowed = RegistryOptions {
            allow_http_loopback: true,
            ..RegistryOptions::default()
        };
        assert!(allowed.uses_plain_http("127.0.0.1:5000"));
        assert!(allowed.uses_plain_http("localhost:5000"));
        for r in [
            "registry.example.com",
            "10.0.0.1:5000",
            "localhost.evil.com",
            "127.0.0.1.nip.io:5000",
            "[::ffff:7f00:1]:5000",
        ] {
            assert!(!allowed.uses_plain_http(r), "{r}");
        }
        assert!(!RegistryOptions::default().uses_plain_http("127.0.0.1:5000"));
    }

    #[test]
    fn refs_must_be_digests() {
        let mk = |d: &str| BundleRef {
            registry: "r.example".into(),
            repository: "p".into(),
            digest: d.into(),
        };
        assert!(matches!(
            mk("latest").reference(),
            Err(BundleFailure::InvalidRef(_))
        ));
        assert!(matches!(
            mk("sha256:abc").reference(),
            Err(BundleFailure::InvalidRef(_))
        ));
        assert!(matches!(
            mk(&format!("sha256:{}", "A".repeat(64))).reference(),
            Err(BundleFailure::InvalidRef(_))
        ));
        assert!(
            mk(&format!("sha256:{}", "a".repeat(64)))
                .reference()
                .is_ok()
        );
        let bad_registry = BundleRef {
            registry: "r.example/evil".into(),
            ..mk(&format!("sha256:{}", "a".repeat(64)))
        };
        assert!(matches!(
            bad_registry.reference(),
            Err(BundleFailure::InvalidRef(_))
        ));
    }

    #[test]
    fn payload_and_tag() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(signature_tag(&d), format!("sha256-{}.sig", "a".repeat(64)));
        let p: Value =
            serde_json::from_slice(&simple_signing_payload("r:5000", "p/q", &d)).expect("json");
        assert_eq!(p["critical"]["image"]["docker-manifest-digest"], d.as_str());
        assert_eq!(p["critical"]["identity"]["docker-reference"], "r:5000/p/q");
    }

    #[test]
    fn docker_config_auth() {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("config.json");
        let auth = base64::engine::general_purpose::STANDARD.encode("u:p");
        std::fs::write(&f, format!(r#"{{"auths":{{"https://r1.example":{{"auth":"{auth}"}},"r2.example":{{"registrytoken":"tok"}},"r3":{{"username":"a","password":"b"}}}}}}"#)).expect("write");
        let mut o = RegistryOptions::default();
        o.read_docker_config(&f).expect("read");
        assert!(
            matches!(o.auth_for("r1.example"), RegistryAuth::Basic(u, p) if u == "u" && p == "p")
        );
        assert!(matches!(o.auth_for("r2.example"), RegistryAuth::Bearer(t) if t == "tok"));
        assert!(matches!(o.auth_for("r3"), RegistryAuth::Basic(..)));
        assert!(matches!(o.auth_for("other"), RegistryAuth::Anonymous));
    }

    #[test]
    fn cache_detects_corruption() {
        let dir = tempfile::tempdir().expect("tmp");
        let c = BundleCache::new(dir.path(), &SignerPolicy::default());
        let d = format!("sha256:{}", "b".repeat(64));
        c.put(&d, b"hello");
        assert_eq!(c.get(&d).as_deref(), Some(&b"hello"[..]));
        let path = c.path(&d);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(c.get(&d), None);
    }
}
