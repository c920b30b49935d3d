//! Pulling one bundle reference by digest and verifying it completely, in order: manifest
//! digest, artifactType, exactly one content layer, a cosign signature by a trusted signer over
//! a payload naming this digest (before any content is parsed), content digest, canonical form.

use oci_client::{Client, Reference, RegistryOperation};
use serde_json::Value;

use kars_renderer::bundle::{BundleKind, canonicalize};

use super::identity;
use super::registry::{RegistryOptions, error_chain, is_not_found, pull_blob, pull_failure};
use super::{
    BundleFailure, BundleRef, COSIGN_PAYLOAD, COSIGN_SIGNATURE_ANNOTATION, DOCKER_MANIFEST,
    OCI_EMPTY, OCI_MANIFEST, SignerPolicy, sha256_digest,
};
use super::{CERTIFICATE_ANNOTATION, CHAIN_ANNOTATION};

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
