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
    let Pusher {
        client, reference, ..
    } = Pusher::new(opts, registry, repository, tag).await?;
    let layer = json!({
        "mediaType": kind.media_type(),
        "digest": sha256_digest(content),
        "size": content.len(),
    });
    push_image(
        &client,
        &reference,
        "manifest",
        Blob::new("config", OCI_EMPTY, b"{}".to_vec()),
        Blob::new("content", kind.media_type(), content.to_vec()),
        vec![layer],
        Some(kind.media_type()),
    )
    .await
}

/// A registry client authenticated for pushing to `registry/repository:tag`.
struct Pusher {
    client: oci_client::Client,
    auth: oci_client::secrets::RegistryAuth,
    reference: Reference,
}

impl Pusher {
    async fn new(
        opts: &RegistryOptions,
        registry: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Pusher, PublishError> {
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
        Ok(Pusher {
            client,
            auth,
            reference,
        })
    }
}

/// One blob to push: what it is (for messages), its media type and bytes.
struct Blob {
    what: &'static str,
    media_type: &'static str,
    bytes: Vec<u8>,
}

impl Blob {
    fn new(what: &'static str, media_type: &'static str, bytes: Vec<u8>) -> Blob {
        Blob {
            what,
            media_type,
            bytes,
        }
    }
}

/// Pushes the `config` and `new_layer` blobs, then the image manifest (`what`, for messages)
/// over `config` and `layers` (which describe `new_layer` and any layers already in the
/// registry); returns the manifest digest.
async fn push_image(
    client: &oci_client::Client,
    reference: &Reference,
    what: &'static str,
    config: Blob,
    new_layer: Blob,
    layers: Vec<Value>,
    artifact_type: Option<&str>,
) -> Result<String, PublishError> {
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": config.media_type,
            "digest": sha256_digest(&config.bytes),
            "size": config.bytes.len(),
        },
        "layers": layers,
    });
    if let Some(t) = artifact_type {
        manifest["artifactType"] = json!(t);
    }
    for blob in [config, new_layer] {
        let digest = sha256_digest(&blob.bytes);
        client
            .push_blob(reference, blob.bytes, &digest)
            .await
            .map_err(|e| PublishError::Push {
                what: blob.what,
                message: e.to_string(),
            })?;
    }
    push_manifest(client, reference, &manifest, what).await
}

/// The OCI image config media type (cosign's signature images).
const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

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
    let Pusher {
        client,
        auth,
        reference,
    } = Pusher::new(opts, registry, repository, &signature_tag(digest)).await?;
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
    push_image(
        &client,
        &reference,
        "signature manifest",
        Blob::new("signature config", OCI_IMAGE_CONFIG, config),
        Blob::new("signature payload", COSIGN_PAYLOAD, payload),
        layers,
        None,
    )
    .await?;
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
