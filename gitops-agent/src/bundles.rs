//! Signed OCI policy bundles: publishing (`kars policy sign`) and verifying (the agent and
//! `kars policy verify`).
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

mod identity;

pub use identity::{CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION, CertIdentity, TrustRoot};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use kars_renderer::Bundles;
use kars_renderer::api::OciArtifactRef;
use kars_renderer::bundle::{BundleKind, BundleUse, canonicalize, is_sha256_digest};

use crate::status::BundleStatus;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};

/// The OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// The empty config of OCI artifacts.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// cosign's simple-signing payload media type.
pub const COSIGN_PAYLOAD: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a cosign signature.
pub const COSIGN_SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

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
    /// Stable reason label (status, metrics).
    pub fn label(&self) -> &'static str {
        match self {
            BundleFailure::InvalidRef(_) => "InvalidRef",
            BundleFailure::ArtifactTypeMismatch { .. } => "ArtifactTypeMismatch",
            BundleFailure::OciPullError(_) => "OciPullError",
            BundleFailure::DigestMismatch(_) => "DigestMismatch",
            BundleFailure::Unsigned(_) => "Unsigned",
            BundleFailure::SignerPolicyMismatch(_) => "SignerPolicyMismatch",
            BundleFailure::SignatureDigestMismatch(_) => "SignatureDigestMismatch",
            BundleFailure::CanonicalFormatViolation(_) => "CanonicalFormatViolation",
        }
    }
}

/// How to reach registries.
#[derive(Clone, Default)]
pub struct RegistryOptions {
    /// Credentials per registry host (`host[:port]`).
    pub auth: BTreeMap<String, RegistryAuth>,
    /// Extra CA certificates (PEM) trusted for registries.
    pub ca_pem: Option<Vec<u8>>,
    /// Allow plain HTTP to loopback registries (127.0.0.0/8, ::1, localhost) — tests only.
    pub allow_http_loopback: bool,
}

impl std::fmt::Debug for RegistryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials are never printed.
        f.debug_struct("RegistryOptions")
            .field("auth_for", &self.auth.keys().collect::<Vec<_>>())
            .field("ca_pem", &self.ca_pem.is_some())
            .field("allow_http_loopback", &self.allow_http_loopback)
            .finish()
    }
}

/// True for `localhost`, `127.x.y.z` and `[::1]` registries (with any port).
pub fn is_loopback_registry(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        registry.rsplit_once(':').map_or(registry, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl RegistryOptions {
    /// Reads a Docker `config.json` (`{"auths": {"host": {"auth": base64(user:pass)} | {"username", "password"} | {"registrytoken"}}}`),
    /// the format of `kubernetes.io/dockerconfigjson` Secrets.
    pub fn read_docker_config(&mut self, path: &Path) -> Result<(), String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not JSON: {e}", path.display()))?;
        let auths = v["auths"]
            .as_object()
            .ok_or_else(|| format!("{}: no \"auths\" object", path.display()))?;
        for (host, entry) in auths {
            let auth = if let Some(t) = entry["registrytoken"]
                .as_str()
                .or(entry["identitytoken"].as_str())
            {
                RegistryAuth::Bearer(t.to_string())
            } else if let (Some(u), Some(p)) =
                (entry["username"].as_str(), entry["password"].as_str())
            {
                RegistryAuth::Basic(u.to_string(), p.to_string())
            } else if let Some(a) = entry["auth"].as_str() {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(a)
                    .map_err(|_| format!("{}: auth of {host} is not base64", path.display()))?;
                let s = String::from_utf8_lossy(&decoded);
                let (u, p) = s.split_once(':').ok_or_else(|| {
                    format!("{}: auth of {host} is not user:password", path.display())
                })?;
                RegistryAuth::Basic(u.to_string(), p.to_string())
            } else {
                continue;
            };
            self.auth.insert(
                host.trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .to_string(),
                auth,
            );
        }
        Ok(())
    }

    fn auth_for(&self, registry: &str) -> RegistryAuth {
        self.auth
            .get(registry)
            .cloned()
            .unwrap_or(RegistryAuth::Anonymous)
    }

    /// True when `registry` is reached over plain HTTP: only when allowed and the registry is
    /// on loopback.
    pub fn uses_plain_http(&self, registry: &str) -> bool {
        self.allow_http_loopback && is_loopback_registry(registry)
    }

    /// A client for `registry` (HTTPS unless [`RegistryOptions::uses_plain_http`]).
    pub fn client(&self, registry: &str) -> Client {
        let protocol = if self.uses_plain_http(registry) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let extra_root_certificates = self
            .ca_pem
            .iter()
            .map(|pem| Certificate {
                encoding: CertificateEncoding::Pem,
                data: pem.clone(),
            })
            .collect();
        Client::new(ClientConfig {
            protocol,
            extra_root_certificates,
            ..ClientConfig::default()
        })
    }
}

/// The digest of bytes, `sha256:<hex>`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
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

    fn reference(&self) -> Result<Reference, BundleFailure> {
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

/// Trusted signers, from outside the repository: cosign public keys (PEM), and/or certificate
/// identities (subject + OIDC issuer) whose certificates chain to configured roots.
#[derive(Clone, Default)]
pub struct SignerPolicy {
    keys: Vec<(String, CosignVerificationKey)>,
    key_hashes: Vec<String>,
    roots: Vec<TrustRoot>,
    identities: Vec<CertIdentity>,
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
    pub fn add_pem(&mut self, name: &str, pem: &[u8]) -> Result<(), String> {
        let key = CosignVerificationKey::try_from_pem(pem)
            .map_err(|e| format!("{name}: not a cosign public key: {e}"))?;
        self.keys.push((name.to_string(), key));
        self.key_hashes.push(sha256_digest(pem));
        Ok(())
    }

    /// Reads every `*.pub`/`*.pem` key file given (files or directories).
    pub fn from_paths(paths: &[PathBuf]) -> Result<SignerPolicy, String> {
        let mut p = SignerPolicy::default();
        for path in paths {
            let files: Vec<PathBuf> = if path.is_dir() {
                let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|f| f.extension().is_some_and(|x| x == "pub" || x == "pem"))
                    .collect();
                v.sort();
                v
            } else {
                vec![path.clone()]
            };
            for f in files {
                let pem = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
                p.add_pem(&f.display().to_string(), &pem)?;
            }
        }
        Ok(p)
    }

    /// Adds every certificate of the PEM file `name` as a root for certificate identities.
    pub fn add_roots_pem(&mut self, name: &str, pem: &[u8]) -> Result<(), String> {
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

    fn verify(&self, payload: &[u8], b64_sig: &str) -> Option<&str> {
        self.keys
            .iter()
            .find(|(_, k)| {
                k.verify_signature(Signature::Base64Encoded(b64_sig.as_bytes()), payload)
                    .is_ok()
            })
            .map(|(n, _)| n.as_str())
    }
}

/// The cosign "simple signing" payload for a manifest digest.
pub fn simple_signing_payload(registry: &str, repository: &str, digest: &str) -> Vec<u8> {
    // Key order as cosign writes it; cosign verifies the bytes as stored, not a re-encoding.
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{registry}/{repository}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":null}}"#
    )
    .into_bytes()
}

/// The tag cosign stores the signature of `digest` under.
pub fn signature_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1) + ".sig"
}

async fn pull_blob(
    client: &Client,
    reference: &Reference,
    digest: &str,
) -> Result<Vec<u8>, BundleFailure> {
    let mut out = Vec::new();
    client
        .pull_blob(reference, digest, &mut out)
        .await
        .map_err(|e| pull_failure(&format!("blob {digest}"), e))?;
    if sha256_digest(&out) != digest {
        return Err(BundleFailure::DigestMismatch(format!(
            "blob {digest} hashes to {}",
            sha256_digest(&out)
        )));
    }
    Ok(out)
}

/// A bundle that passed every check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedBundle {
    /// The canonical content bytes.
    pub content: Vec<u8>,
    /// The trusted key whose signature verified (its file name).
    pub signer: String,
}

/// Pulls `r` by digest and verifies it completely: manifest digest, artifactType, exactly one
/// content layer, a cosign signature by a trusted key naming this digest, content digest and
/// canonical form of the kind.
pub async fn fetch_verified(
    opts: &RegistryOptions,
    policy: &SignerPolicy,
    kind: BundleKind,
    r: &BundleRef,
) -> Result<VerifiedBundle, BundleFailure> {
    let reference = r.reference()?;
    let client = opts.client(&r.registry);
    let auth = opts.auth_for(&r.registry);
    client
        .auth(&reference, &auth, RegistryOperation::Pull)
        .await
        .map_err(|e| BundleFailure::OciPullError(format!("{}: {}", r.registry, error_chain(&e))))?;
    let (manifest_bytes, _) = client
        .pull_manifest_raw(&reference, &auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
        .await
        .map_err(|e| pull_failure(&format!("manifest {r}"), e))?;
    if sha256_digest(&manifest_bytes) != r.digest {
        return Err(BundleFailure::DigestMismatch(format!(
            "the registry returned a manifest hashing to {}",
            sha256_digest(&manifest_bytes)
        )));
    }
    let manifest: Value = serde_json::from_slice(&manifest_bytes)
        .map_err(|e| BundleFailure::OciPullError(format!("manifest is not JSON: {e}")))?;
    let expected = kind.media_type();
    let found = manifest["artifactType"]
        .as_str()
        .or(manifest["config"]["mediaType"]
            .as_str()
            .filter(|m| *m != OCI_EMPTY))
        .unwrap_or("")
        .to_string();
    if found != expected {
        return Err(BundleFailure::ArtifactTypeMismatch {
            found,
            expected: expected.to_string(),
        });
    }
    let layers: Vec<&Value> = manifest["layers"]
        .as_array()
        .map(|l| l.iter().filter(|x| x["mediaType"] == expected).collect())
        .unwrap_or_default();
    if layers.len() != 1 {
        return Err(BundleFailure::ArtifactTypeMismatch {
            found: format!("{} layers of type {expected}", layers.len()),
            expected: format!("exactly one layer of type {expected}"),
        });
    }
    // The signature first: nothing from an unsigned artifact is parsed.
    let signer = verify_signature(&client, opts, policy, r).await?;
    let layer_digest = layers[0]["digest"].as_str().unwrap_or_default().to_string();
    let content = pull_blob(&client, &reference, &layer_digest).await?;
    let canonical = canonicalize(kind, &content)
        .map_err(|e| BundleFailure::CanonicalFormatViolation(e.to_string()))?;
    if canonical != content {
        return Err(BundleFailure::CanonicalFormatViolation(format!(
            "the bytes are valid {} content but not in canonical form (re-publish with kars policy sign)",
            kind.name()
        )));
    }
    Ok(VerifiedBundle { content, signer })
}

async fn verify_signature(
    client: &Client,
    opts: &RegistryOptions,
    policy: &SignerPolicy,
    r: &BundleRef,
) -> Result<String, BundleFailure> {
    let sig_ref = Reference::with_tag(
        r.registry.clone(),
        r.repository.clone(),
        signature_tag(&r.digest),
    );
    let auth = opts.auth_for(&r.registry);
    let (bytes, _) = match client
        .pull_manifest_raw(&sig_ref, &auth, &[OCI_MANIFEST, DOCKER_MANIFEST])
        .await
    {
        Ok(x) => x,
        Err(e) => {
            return Err(if is_not_found(&e) {
                BundleFailure::Unsigned(format!("no {} tag", signature_tag(&r.digest)))
            } else {
                BundleFailure::OciPullError(format!("signature manifest: {}", error_chain(&e)))
            });
        }
    };
    let manifest: Value = serde_json::from_slice(&bytes)
        .map_err(|e| BundleFailure::OciPullError(format!("signature manifest is not JSON: {e}")))?;
    let layers = manifest["layers"].as_array().cloned().unwrap_or_default();
    if layers.is_empty() {
        return Err(BundleFailure::Unsigned(
            "the signature manifest has no layers".into(),
        ));
    }
    let mut wrong_digest = None;
    let mut tried = 0;
    let mut certificate_problems = Vec::new();
    for layer in layers.iter().filter(|l| l["mediaType"] == COSIGN_PAYLOAD) {
        let annotations = &layer["annotations"];
        let Some(sig) = annotations[COSIGN_SIGNATURE_ANNOTATION].as_str() else {
            continue;
        };
        tried += 1;
        let payload = pull_blob(
            client,
            &sig_ref,
            layer["digest"].as_str().unwrap_or_default(),
        )
        .await?;
        let signer = match policy.verify(&payload, sig) {
            Some(name) => name.to_string(),
            None => match annotations[CERTIFICATE_ANNOTATION].as_str() {
                Some(cert) if !policy.identities.is_empty() => {
                    match identity::verify_with_certificate(
                        &payload,
                        sig,
                        cert,
                        annotations[CHAIN_ANNOTATION].as_str(),
                        &policy.roots,
                        &policy.identities,
                    ) {
                        Ok(who) => who,
                        Err(why) => {
                            certificate_problems.push(why);
                            continue;
                        }
                    }
                }
                _ => continue,
            },
        };
        let p: Value = serde_json::from_slice(&payload).map_err(|e| {
            BundleFailure::SignatureDigestMismatch(format!("payload is not JSON: {e}"))
        })?;
        let named = p["critical"]["image"]["docker-manifest-digest"]
            .as_str()
            .unwrap_or_default();
        if named == r.digest && p["critical"]["type"] == "cosign container image signature" {
            return Ok(signer);
        }
        wrong_digest = Some(named.to_string());
    }
    match (wrong_digest, tried) {
        (Some(d), _) => Err(BundleFailure::SignatureDigestMismatch(format!(
            "a trusted signature names {d}, not {}",
            r.digest
        ))),
        (None, 0) => Err(BundleFailure::Unsigned("no cosign signature layer".into())),
        (None, n) => Err(BundleFailure::SignerPolicyMismatch(format!(
            "{n} signature(s), none by the {} trusted signer(s){}",
            policy.len(),
            if certificate_problems.is_empty() {
                String::new()
            } else {
                format!(": {}", certificate_problems.join("; "))
            }
        ))),
    }
}

/// An error with its causes (`a: b: c`), so "error sending request" says why (TLS, refused, …).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A pull error as a failure: content that does not match its digest is `DigestMismatch`
/// (tampered storage or a lying registry), everything else `OciPullError`.
fn pull_failure(what: &str, e: OciDistributionError) -> BundleFailure {
    match e {
        OciDistributionError::DigestError(d) => {
            BundleFailure::DigestMismatch(format!("{what}: {d}"))
        }
        other => BundleFailure::OciPullError(format!("{what}: {}", error_chain(&other))),
    }
}

/// True when the registry answered that the manifest does not exist (as opposed to being
/// unreachable or refusing access: those are pull errors, not a missing signature).
fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown
            )
        }),
        OciDistributionError::ServerError { code, .. } => *code == 404,
        _ => false,
    }
}

/// Publishes canonical `content` of `kind` as an OCI artifact; returns the manifest digest.
pub async fn push(
    opts: &RegistryOptions,
    registry: &str,
    repository: &str,
    tag: &str,
    kind: BundleKind,
    content: &[u8],
) -> Result<String, String> {
    let client = opts.client(registry);
    let auth = opts.auth_for(registry);
    let reference = Reference::with_tag(
        registry.to_string(),
        repository.to_string(),
        tag.to_string(),
    );
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| format!("{registry}: {e}"))?;
    let config = b"{}".to_vec();
    let config_digest = sha256_digest(&config);
    let layer_digest = sha256_digest(content);
    client
        .push_blob(&reference, config.clone(), &config_digest)
        .await
        .map_err(|e| format!("pushing the config: {e}"))?;
    client
        .push_blob(&reference, content.to_vec(), &layer_digest)
        .await
        .map_err(|e| format!("pushing the content: {e}"))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": kind.media_type(),
        "config": {"mediaType": OCI_EMPTY, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": kind.media_type(), "digest": layer_digest, "size": content.len()}],
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let digest = sha256_digest(&bytes);
    let header = reqwest_header(OCI_MANIFEST)?;
    client
        .push_manifest_raw(&reference, bytes, header)
        .await
        .map_err(|e| format!("pushing the manifest: {e}"))?;
    Ok(digest)
}

fn reqwest_header(v: &str) -> Result<http::HeaderValue, String> {
    http::HeaderValue::from_str(v).map_err(|e| e.to_string())
}

/// Reads a cosign private key (`ENCRYPTED SIGSTORE/COSIGN PRIVATE KEY`, password as cosign takes
/// it from `COSIGN_PASSWORD`) and signs `digest` in cosign's tag-based format.
pub async fn sign(
    opts: &RegistryOptions,
    registry: &str,
    repository: &str,
    digest: &str,
    key_pem: &[u8],
    password: &[u8],
) -> Result<SignOutcome, String> {
    let keys =
        sigstore::crypto::signing_key::SigStoreKeyPair::from_encrypted_pem(key_pem, password)
            .or_else(|_| sigstore::crypto::signing_key::SigStoreKeyPair::from_pem(key_pem))
            .map_err(|e| format!("reading the private key (wrong COSIGN_PASSWORD?): {e}"))?;
    let signer = keys
        .to_sigstore_signer(&SigningScheme::ECDSA_P256_SHA256_ASN1)
        .map_err(|e| format!("the key is not an ECDSA P-256 key: {e}"))?;
    let payload = simple_signing_payload(registry, repository, digest);
    let sig = signer.sign(&payload).map_err(|e| format!("signing: {e}"))?;
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(sig);
    let client = opts.client(registry);
    let auth = opts.auth_for(registry);
    let reference = Reference::with_tag(
        registry.to_string(),
        repository.to_string(),
        signature_tag(digest),
    );
    client
        .auth(&reference, &auth, RegistryOperation::Push)
        .await
        .map_err(|e| format!("{registry}: {e}"))?;
    let payload_digest = sha256_digest(&payload);
    // Signatures already there (other signers) are kept: cosign appends layers the same way.
    let mut layers: Vec<Value> = match client
        .pull_manifest_raw(&reference, &auth, &[OCI_MANIFEST])
        .await
    {
        Ok((bytes, _)) => serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|m| m["layers"].as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter(|l| l["mediaType"] == COSIGN_PAYLOAD && l["digest"].is_string())
            .collect(),
        Err(_) => Vec::new(),
    };
    // Signing again with the same key is a no-op (ECDSA signatures differ every time, so
    // compare by verifying, not by bytes).
    let ours = keys
        .public_key_to_pem()
        .ok()
        .and_then(|pem| CosignVerificationKey::try_from_pem(pem.as_bytes()).ok());
    let already = layers.iter().any(|l| {
        l["digest"] == payload_digest.as_str()
            && l["annotations"][COSIGN_SIGNATURE_ANNOTATION]
                .as_str()
                .zip(ours.as_ref())
                .is_some_and(|(sig, key)| {
                    key.verify_signature(Signature::Base64Encoded(sig.as_bytes()), &payload)
                        .is_ok()
                })
    });
    if already {
        return Ok(SignOutcome::AlreadySigned);
    }
    layers.push(json!({
        "mediaType": COSIGN_PAYLOAD,
        "digest": payload_digest,
        "size": payload.len(),
        "annotations": {COSIGN_SIGNATURE_ANNOTATION: sig_b64},
    }));
    let diff_ids: Vec<&Value> = layers.iter().map(|l| &l["digest"]).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .map_err(|e| e.to_string())?;
    let config_digest = sha256_digest(&config);
    client
        .push_blob(&reference, payload.clone(), &payload_digest)
        .await
        .map_err(|e| format!("pushing the signature payload: {e}"))?;
    client
        .push_blob(&reference, config.clone(), &config_digest)
        .await
        .map_err(|e| format!("pushing the signature config: {e}"))?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    });
    let bytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    client
        .push_manifest_raw(&reference, bytes, reqwest_header(OCI_MANIFEST)?)
        .await
        .map_err(|e| format!("pushing the signature manifest: {e}"))?;
    Ok(SignOutcome::Signed)
}

/// What [`sign`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignOutcome {
    /// A signature was added.
    Signed,
    /// The key had already signed this digest; nothing was pushed.
    AlreadySigned,
}

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

    fn path(&self, digest: &str) -> PathBuf {
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

/// Command-line flags for reaching registries, shared by the agent and the `kars` CLI.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct RegistryArgs {
    /// Registry credentials: a Docker config.json (the `.dockerconfigjson` key of a
    /// `kubernetes.io/dockerconfigjson` Secret) with basic auth or a bearer token per registry.
    #[arg(long, env = "KARS_REGISTRY_AUTH_FILE", value_name = "FILE")]
    pub registry_auth_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for registries.
    #[arg(long, env = "KARS_REGISTRY_CA_FILE", value_name = "FILE")]
    pub registry_ca_file: Option<PathBuf>,
    /// Use plain HTTP for registries on loopback addresses (127.0.0.0/8, ::1, localhost).
    /// Never applies to any other registry.
    #[arg(long, env = "KARS_ALLOW_HTTP_LOOPBACK_REGISTRY")]
    pub allow_http_loopback_registry: bool,
}

impl RegistryArgs {
    /// The registry options these flags describe.
    pub fn registry_options(&self) -> Result<RegistryOptions, String> {
        let mut registry = RegistryOptions {
            allow_http_loopback: self.allow_http_loopback_registry,
            ..RegistryOptions::default()
        };
        if let Some(f) = &self.registry_auth_file {
            registry.read_docker_config(f)?;
        }
        if let Some(f) = &self.registry_ca_file {
            let pem = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(format!("{}: no PEM certificate in it", f.display()));
            }
            registry.ca_pem = Some(pem);
        }
        Ok(registry)
    }
}

/// Command-line flags for bundle verification (trusted keys and registry access), shared by
/// the agent and the `kars` CLI.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct BundleArgs {
    /// Trusted cosign public keys (PEM) for signed policy bundles: files, or directories of
    /// `*.pub`/`*.pem` (repeatable, or comma-separated). Kept outside the policy repository.
    #[arg(
        long = "bundle-keys",
        env = "KARS_BUNDLE_KEYS",
        value_delimiter = ',',
        value_name = "PATH"
    )]
    pub bundle_keys: Vec<PathBuf>,
    /// Keyless signers: `SUBJECT,ISSUER` of signing certificates to trust (SAN e-mail or URI,
    /// and the OIDC issuer Fulcio records), repeatable; needs --bundle-cert-roots.
    #[arg(long = "bundle-identity", env = "KARS_BUNDLE_IDENTITY", value_name = "SUBJECT,ISSUER", value_parser = CertIdentity::parse)]
    pub bundle_identities: Vec<CertIdentity>,
    /// Root certificates (PEM) that signing certificates of --bundle-identity must chain to
    /// (e.g. a Fulcio root), repeatable.
    #[arg(
        long = "bundle-cert-roots",
        env = "KARS_BUNDLE_CERT_ROOTS",
        value_delimiter = ',',
        value_name = "FILE"
    )]
    pub bundle_cert_roots: Vec<PathBuf>,
    /// How to reach registries.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl BundleArgs {
    /// True when any signer flag is given.
    pub fn any_signer(&self) -> bool {
        !self.bundle_keys.is_empty() || !self.bundle_identities.is_empty()
    }

    /// The signer policy these flags describe.
    pub fn signer_policy(&self) -> Result<SignerPolicy, String> {
        let mut signers = SignerPolicy::from_paths(&self.bundle_keys)?;
        if self.bundle_identities.is_empty() != self.bundle_cert_roots.is_empty() {
            return Err(
                "--bundle-identity and --bundle-cert-roots go together: an identity is trusted only through a root"
                    .into(),
            );
        }
        for path in &self.bundle_cert_roots {
            let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            signers.add_roots_pem(&path.display().to_string(), &pem)?;
        }
        for identity in &self.bundle_identities {
            signers.add_identity(identity.clone());
        }
        Ok(signers)
    }

    /// A verifier with these flags, caching verified bundles under `cache_dir`.
    pub fn verifier(&self, cache_dir: Option<&Path>) -> Result<BundleVerifier, String> {
        let signers = self.signer_policy()?;
        Ok(BundleVerifier::new(
            self.registry.registry_options()?,
            signers,
            cache_dir,
        ))
    }
}

/// Verifies bundle references against a signer policy, with a cache of verified bundles.
/// The default trusts no key (every reference fails with `SignerPolicyMismatch`).
#[derive(Clone, Debug, Default)]
pub struct BundleVerifier {
    /// How to reach registries.
    pub registry: RegistryOptions,
    /// Trusted signers.
    pub signers: SignerPolicy,
    cache: Option<BundleCache>,
}

impl BundleVerifier {
    /// A verifier caching verified bundles under `cache_dir` (none: no cache).
    pub fn new(
        registry: RegistryOptions,
        signers: SignerPolicy,
        cache_dir: Option<&Path>,
    ) -> BundleVerifier {
        let cache = cache_dir.map(|d| BundleCache::new(d, &signers));
        BundleVerifier {
            registry,
            signers,
            cache,
        }
    }

    /// Verified content of `r` as a bundle of `kind`: from the cache when this digest was
    /// verified before under the same signer policy, else pulled and verified.
    pub async fn verify(&self, kind: BundleKind, r: &BundleRef) -> Result<Vec<u8>, BundleFailure> {
        r.reference()?;
        if self.signers.is_empty() {
            return Err(BundleFailure::SignerPolicyMismatch(
                "no signers are configured (agent flags --bundle-keys, or --bundle-identity with --bundle-cert-roots); no bundle can verify"
                    .into(),
            ));
        }
        let cache_key = format!("{}-{}", kind.name(), r.digest);
        if let Some(bytes) = self.cache.as_ref().and_then(|c| c.get(&cache_key)) {
            return Ok(bytes);
        }
        let bytes = fetch_verified(&self.registry, &self.signers, kind, r)
            .await?
            .content;
        if let Some(c) = &self.cache {
            c.put(&cache_key, &bytes);
        }
        Ok(bytes)
    }

    /// Resolves every reference: the verified bundle, or after a failure the bundle verified
    /// for the same object and field before (`previous`, the last status), or nothing (the
    /// renderer then holds the object back). Returns what to render with and the new status.
    pub async fn resolve(
        &self,
        uses: &[BundleUse],
        previous: &[BundleStatus],
    ) -> (Bundles, Vec<BundleStatus>) {
        let mut bundles = Bundles::none();
        let mut statuses = Vec::with_capacity(uses.len());
        let mut seen: BTreeMap<(BundleKind, BundleRef), Result<Vec<u8>, BundleFailure>> =
            BTreeMap::new();
        for u in uses {
            let r = BundleRef::from_api(&u.reference);
            let result = match seen.get(&(u.kind, r.clone())) {
                Some(done) => done.clone(),
                None => {
                    let done = self.verify(u.kind, &r).await;
                    seen.insert((u.kind, r.clone()), done.clone());
                    done
                }
            };
            let mut st = BundleStatus {
                object: u.object.clone(),
                field: u.field.to_string(),
                reference: r.to_string(),
                ..BundleStatus::default()
            };
            match result {
                Ok(bytes) => {
                    bundles.insert(&u.object, u.field, r.digest.clone(), bytes);
                    st.verified = Some(r.to_string());
                }
                Err(failure) => {
                    tracing::warn!(object = %u.object, field = u.field, reference = %r, reason = failure.label(), "bundle did not verify: {failure}");
                    st.reason = Some(failure.label().to_string());
                    st.message = Some(failure.to_string());
                    let earlier = previous
                        .iter()
                        .find(|p| p.object == u.object && p.field == u.field)
                        .and_then(|p| p.verified.as_deref())
                        .and_then(BundleRef::parse)
                        .filter(|e| *e != r);
                    if let Some(e) = earlier {
                        match self.verify(u.kind, &e).await {
                            Ok(bytes) => {
                                bundles.insert(&u.object, u.field, e.digest.clone(), bytes);
                                st.verified = Some(e.to_string());
                            }
                            Err(again) => {
                                tracing::warn!(object = %u.object, reference = %e, "the last verified bundle no longer verifies either: {again}");
                            }
                        }
                    }
                }
            }
            statuses.push(st);
        }
        (bundles, statuses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
