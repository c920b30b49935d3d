//! Publishing: canonical bytes → one OCI artifact (manifest `artifactType` = the kind's media
//! type, one layer, the empty config) → a cosign signature in cosign's tag-based format.

use base64::Engine;
use kars_renderer::bundle::BundleKind;
use oci_client::{Reference, RegistryOperation};
use serde_json::{Value, json};
use sigstore::crypto::{CosignVerificationKey, Signature, SigningScheme};

use super::PublishError;
use super::registry::RegistryOptions;
use super::{
    COSIGN_PAYLOAD, COSIGN_SIGNATURE_ANNOTATION, OCI_EMPTY, OCI_MANIFEST, sha256_digest,
    signature_tag, simple_signing_payload,
};

/// Publishes canonical `content` of `kind` as an OCI artifact; returns the manifest digest.
pub async fn push(
    opts: &RegistryOptions,
    registry: &str,
    repository: &str,
    tag: &str,
    kind: BundleKind,
    content: &[u8],
) -> Result<String, PublishError> {
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
        .map_err(|e| PublishError::Auth {
            registry: registry.to_string(),
            message: e.to_string(),
        })?;
    let config = b"{}".to_vec();
    let config_digest = sha256_digest(&config);
    let layer_digest = sha256_digest(content);
    push_blobs(
        &client,
        &reference,
        [
            ("config", config.clone(), &config_digest),
            ("content", content.to_vec(), &layer_digest),
        ],
    )
    .await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": kind.media_type(),
        "config": {"mediaType": OCI_EMPTY, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": kind.media_type(), "digest": layer_digest, "size": content.len()}],
    });
    push_manifest(&client, &reference, &manifest, "manifest").await
}

/// Pushes blobs (what, bytes, digest) to the repository of `reference`.
async fn push_blobs<const N: usize>(
    client: &oci_client::Client,
    reference: &Reference,
    blobs: [(&'static str, Vec<u8>, &String); N],
) -> Result<(), PublishError> {
    for (what, bytes, digest) in blobs {
        client
            .push_blob(reference, bytes, digest)
            .await
            .map_err(|e| PublishError::Push {
                what,
                message: e.to_string(),
            })?;
    }
    Ok(())
}

/// Pushes an OCI image manifest; returns its digest.
async fn push_manifest(
    client: &oci_client::Client,
    reference: &Reference,
    manifest: &Value,
    what: &'static str,
) -> Result<String, PublishError> {
    let bytes = manifest.to_string().into_bytes();
    let digest = sha256_digest(&bytes);
    let header = http::HeaderValue::from_static(OCI_MANIFEST);
    client
        .push_manifest_raw(reference, bytes, header)
        .await
        .map_err(|e| PublishError::Push {
            what,
            message: e.to_string(),
        })?;
    Ok(digest)
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
) -> Result<SignOutcome, PublishError> {
    let keys =
        sigstore::crypto::signing_key::SigStoreKeyPair::from_encrypted_pem(key_pem, password)
            .or_else(|_| sigstore::crypto::signing_key::SigStoreKeyPair::from_pem(key_pem))
            .map_err(|e| {
                PublishError::Key(format!(
                    "reading the private key (wrong COSIGN_PASSWORD?): {e}"
                ))
            })?;
    let signer = keys
        .to_sigstore_signer(&SigningScheme::ECDSA_P256_SHA256_ASN1)
        .map_err(|e| PublishError::Key(format!("the key is not an ECDSA P-256 key: {e}")))?;
    let payload = simple_signing_payload(registry, repository, digest);
    let sig = signer
        .sign(&payload)
        .map_err(|e| PublishError::Sign(e.to_string()))?;
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
        .map_err(|e| PublishError::Auth {
            registry: registry.to_string(),
            message: e.to_string(),
        })?;
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
    let config = json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256_digest(&config);
    push_blobs(
        &client,
        &reference,
        [
            ("signature payload", payload.clone(), &payload_digest),
            ("signature config", config.clone(), &config_digest),
        ],
    )
    .await?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    });
    push_manifest(&client, &reference, &manifest, "signature manifest").await?;
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
