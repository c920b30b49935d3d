//! Checking one signature over one payload against the trusted keys, in process:
//! SSHSIG (namespace `git`) with ssh-key, OpenPGP with rPGP plus our own policy (key
//! expiry and revocation, signing capability, no SHA-1/MD5). No git, gpg or ssh-keygen runs.

use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{Signature, SignatureType};
use pgp::types::KeyDetails;

use super::keys::{KeyMaterial, SignerClass, SignerKey};

/// The SSHSIG namespace git signs commits and tags with.
pub const GIT_NAMESPACE: &str = "git";

/// Why a signature is not accepted. Each has a stable label (see [`Refusal::label`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No signature at all.
    #[error("not signed")]
    Unsigned,
    /// The signature block cannot be parsed (or is in an unsupported format).
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signature's key is not trusted.
    #[error("signed by an unknown key {0}")]
    UnknownSigner(String),
    /// The key is trusted but the signature does not match the signed bytes.
    #[error(
        "bad signature from {signer} ({fingerprint}): the signed data was changed or the signature belongs to other data"
    )]
    BadSignature {
        /// Signer name.
        signer: String,
        /// Key fingerprint.
        fingerprint: String,
    },
    /// An SSH signature made for another purpose (namespace) than `git`.
    #[error("SSH signature namespace is {0:?}, not \"git\" (a signature made for another purpose)")]
    WrongNamespace(String),
    /// The key's `namespaces=` option excludes `git`.
    #[error("key of {0} is not allowed to sign in namespace \"git\" (allowed_signers namespaces=)")]
    NamespaceNotAllowed(String),
    /// Outside the key's `valid-after`/`valid-before` window at the committer date.
    #[error("key of {signer} is not valid at the commit date ({detail})")]
    OutsideValidity {
        /// Signer name.
        signer: String,
        /// Which bound.
        detail: String,
    },
    /// The OpenPGP key (or signing subkey) has expired.
    #[error("OpenPGP key {0} has expired")]
    KeyExpired(String),
    /// The OpenPGP key (or signing subkey) is revoked.
    #[error("OpenPGP key {0} is revoked")]
    KeyRevoked(String),
    /// A weak hash (SHA-1, MD5) or a key not allowed to sign.
    #[error("weak or unusable signature: {0}")]
    Weak(String),
    /// The signer's identity does not match the committer/tagger.
    #[error("signer {signer} may sign as {principals}, but the committer is {committer}")]
    IdentityMismatch {
        /// Signer name.
        signer: String,
        /// Allowed identities.
        principals: String,
        /// The committer (or tagger) e-mail.
        committer: String,
    },
}

impl Refusal {
    /// The reason word (status conditions, metrics, `--json`).
    pub fn reason(&self) -> kars_contract::Reason {
        use kars_contract::Reason;
        match self {
            Refusal::Unsigned => Reason::Unsigned,
            Refusal::Malformed(_) => Reason::MalformedSignature,
            Refusal::UnknownSigner(_) => Reason::UnknownSigner,
            Refusal::BadSignature { .. } => Reason::BadSignature,
            Refusal::WrongNamespace(_) => Reason::WrongNamespace,
            Refusal::NamespaceNotAllowed(_) => Reason::NamespaceNotAllowed,
            Refusal::OutsideValidity { .. } => Reason::OutsideValidity,
            Refusal::KeyExpired(_) => Reason::KeyExpired,
            Refusal::KeyRevoked(_) => Reason::KeyRevoked,
            Refusal::Weak(_) => Reason::WeakSignature,
            Refusal::IdentityMismatch { .. } => Reason::IdentityMismatch,
        }
    }
}

/// A signature that checks out.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Accepted {
    /// Signer name.
    pub signer: String,
    /// Key fingerprint.
    pub fingerprint: String,
    /// Person or forge key.
    pub class: SignerClass,
    /// `ssh` or `openpgp`.
    pub format: &'static str,
}

/// What is being checked: the signed bytes, the signature block, and who committed it when.
pub struct Signed<'a> {
    /// The exact bytes the signature covers.
    pub payload: &'a [u8],
    /// The armored signature block.
    pub signature: &'a str,
    /// Committer (or tagger) e-mail.
    pub email: &'a str,
    /// Committer (or tagger) time, Unix seconds.
    pub time: i64,
}

/// Checks `signed` against `keys`. `identity_binding` requires the key's principals (or
/// OpenPGP user ids) to match the committer e-mail. `now` is the clock for key expiry.
pub fn check(
    signed: &Signed<'_>,
    keys: &[SignerKey],
    identity_binding: bool,
    now: i64,
) -> Result<Accepted, Refusal> {
    let sig = signed.signature.trim_start();
    let (key, format) = if sig.starts_with("-----BEGIN SSH SIGNATURE-----") {
        (check_ssh(signed, keys)?, "ssh")
    } else if sig.starts_with("-----BEGIN PGP SIGNATURE-----") {
        (check_openpgp(signed, keys, now)?, "openpgp")
    } else if sig.is_empty() {
        return Err(Refusal::Unsigned);
    } else {
        let first = sig.lines().next().unwrap_or_default();
        return Err(Refusal::Malformed(format!(
            "unsupported signature format ({first:?}); use SSH or OpenPGP"
        )));
    };
    if let Some(after) = key.valid_after
        && signed.time < after
    {
        return Err(Refusal::OutsideValidity {
            signer: key.signer.clone(),
            detail: format!(
                "committed at {} before valid-after {}",
                fmt_time(signed.time),
                fmt_time(after)
            ),
        });
    }
    if let Some(before) = key.valid_before
        && signed.time >= before
    {
        return Err(Refusal::OutsideValidity {
            signer: key.signer.clone(),
            detail: format!(
                "committed at {} after valid-before {}",
                fmt_time(signed.time),
                fmt_time(before)
            ),
        });
    }
    if identity_binding && key.class == SignerClass::Person && !key.matches_identity(signed.email) {
        let mut principals = key.principals.clone();
        if principals.is_empty() {
            principals = key.key.openpgp_emails();
        }
        return Err(Refusal::IdentityMismatch {
            signer: key.signer.clone(),
            principals: principals.join(","),
            committer: signed.email.to_string(),
        });
    }
    Ok(Accepted {
        signer: key.signer.clone(),
        fingerprint: key.key.fingerprint(),
        class: key.class,
        format,
    })
}

fn fmt_time(t: i64) -> String {
    kars_contract::time::format_rfc3339(t)
}

fn check_ssh<'k>(signed: &Signed<'_>, keys: &'k [SignerKey]) -> Result<&'k SignerKey, Refusal> {
    let sshsig = ssh_key::SshSig::from_pem(signed.signature.trim().as_bytes())
        .map_err(|e| Refusal::Malformed(format!("SSH signature: {e}")))?;
    if sshsig.namespace() != GIT_NAMESPACE {
        return Err(Refusal::WrongNamespace(sshsig.namespace().to_string()));
    }
    let embedded = sshsig.public_key();
    let key = keys
        .iter()
        .find(|k| matches!(&k.key, KeyMaterial::Ssh(pk) if pk.key_data() == embedded))
        .ok_or_else(|| {
            let fp = ssh_key::PublicKey::from(embedded.clone())
                .fingerprint(ssh_key::HashAlg::Sha256)
                .to_string();
            Refusal::UnknownSigner(fp)
        })?;
    if let Some(ns) = &key.namespaces
        && !ns.iter().any(|n| n == GIT_NAMESPACE)
    {
        return Err(Refusal::NamespaceNotAllowed(key.signer.clone()));
    }
    let KeyMaterial::Ssh(pk) = &key.key else {
        return Err(Refusal::UnknownSigner(key.key.fingerprint()));
    };
    pk.verify(GIT_NAMESPACE, signed.payload, &sshsig)
        .map_err(|_| Refusal::BadSignature {
            signer: key.signer.clone(),
            fingerprint: key.key.fingerprint(),
        })?;
    Ok(key)
}

fn issuer_ids(sig: &Signature) -> Vec<String> {
    let mut ids: Vec<String> = sig
        .issuer_fingerprint()
        .iter()
        .map(|f| hex::encode(f.as_bytes()).to_ascii_uppercase())
        .collect();
    ids.extend(
        sig.issuer_key_id()
            .iter()
            .map(|k| hex::encode(k.as_ref()).to_ascii_uppercase()),
    );
    ids
}

fn key_matches_issuer(
    fingerprint: &pgp::types::Fingerprint,
    key_id: &pgp::types::KeyId,
    issuers: &[String],
) -> bool {
    let fp = hex::encode(fingerprint.as_bytes()).to_ascii_uppercase();
    let kid = hex::encode(key_id.as_ref()).to_ascii_uppercase();
    issuers.iter().any(|i| *i == fp || *i == kid)
}

/// Latest self-signature of the primary key (direct-key or user-id binding), for expiry.
fn primary_expiry(key: &SignedPublicKey) -> Option<i64> {
    let created = i64::from(key.primary_key.created_at().as_secs());
    let latest = key
        .details
        .users
        .iter()
        .flat_map(|u| u.signatures.iter())
        .chain(key.details.direct_signatures.iter())
        .filter(|s| s.created().is_some())
        .max_by_key(|s| s.created().map(|t| t.as_secs()))?;
    latest
        .key_expiration_time()
        .map(|d| created + i64::from(d.as_secs()))
}

fn check_openpgp<'k>(
    signed: &Signed<'_>,
    keys: &'k [SignerKey],
    now: i64,
) -> Result<&'k SignerKey, Refusal> {
    let (dsig, _) = DetachedSignature::from_string(signed.signature.trim())
        .map_err(|e| Refusal::Malformed(format!("OpenPGP signature: {e}")))?;
    let sig = &dsig.signature;
    match sig.hash_alg() {
        Some(HashAlgorithm::Sha1) | Some(HashAlgorithm::Md5) | None => {
            return Err(Refusal::Weak(format!(
                "hash algorithm {:?} is not accepted (use SHA-256 or better)",
                sig.hash_alg()
            )));
        }
        _ => {}
    }
    let issuers = issuer_ids(sig);
    if issuers.is_empty() {
        return Err(Refusal::Malformed(
            "OpenPGP signature names no issuer".into(),
        ));
    }
    for signer in keys {
        let KeyMaterial::OpenPgp(cert) = &signer.key else {
            continue;
        };
        let fpr = signer.key.fingerprint();
        // Primary key.
        if key_matches_issuer(
            &cert.primary_key.fingerprint(),
            &cert.primary_key.legacy_key_id(),
            &issuers,
        ) {
            check_cert_state(cert, &fpr, now)?;
            dsig.verify(&cert.primary_key, signed.payload)
                .map_err(|_| Refusal::BadSignature {
                    signer: signer.signer.clone(),
                    fingerprint: fpr.clone(),
                })?;
            return Ok(signer);
        }
        // Subkeys.
        for sub in &cert.public_subkeys {
            if !key_matches_issuer(&sub.key.fingerprint(), &sub.key.legacy_key_id(), &issuers) {
                continue;
            }
            check_cert_state(cert, &fpr, now)?;
            if sub.verify_bindings(&cert.primary_key).is_err() {
                return Err(Refusal::Weak(format!(
                    "subkey of {fpr} has no valid binding signature"
                )));
            }
            if sub
                .signatures
                .iter()
                .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation))
            {
                return Err(Refusal::KeyRevoked(format!("{fpr} (signing subkey)")));
            }
            let binding = sub
                .signatures
                .iter()
                .filter(|s| s.typ() == Some(SignatureType::SubkeyBinding))
                .max_by_key(|s| s.created().map(|t| t.as_secs()));
            if let Some(b) = binding {
                if !b.key_flags().sign() {
                    return Err(Refusal::Weak(format!(
                        "subkey of {fpr} is not a signing key"
                    )));
                }
                if let Some(exp) = b.key_expiration_time() {
                    let created = i64::from(sub.key.created_at().as_secs());
                    if created + i64::from(exp.as_secs()) <= now {
                        return Err(Refusal::KeyExpired(format!("{fpr} (signing subkey)")));
                    }
                }
            }
            dsig.verify(&sub.key, signed.payload)
                .map_err(|_| Refusal::BadSignature {
                    signer: signer.signer.clone(),
                    fingerprint: fpr.clone(),
                })?;
            return Ok(signer);
        }
    }
    Err(Refusal::UnknownSigner(issuers.join("/")))
}

fn check_cert_state(cert: &SignedPublicKey, fpr: &str, now: i64) -> Result<(), Refusal> {
    if cert.verify_bindings().is_err() {
        return Err(Refusal::Weak(format!(
            "certificate {fpr} has invalid self-signatures"
        )));
    }
    if !cert.details.revocation_signatures.is_empty() {
        return Err(Refusal::KeyRevoked(fpr.to_string()));
    }
    if let Some(exp) = primary_expiry(cert)
        && exp <= now
    {
        return Err(Refusal::KeyExpired(fpr.to_string()));
    }
    Ok(())
}

/// Parses an armored OpenPGP certificate (one key).
pub fn parse_openpgp_cert(armored: &str) -> Result<SignedPublicKey, String> {
    SignedPublicKey::from_string(armored)
        .map(|(k, _)| k)
        .map_err(|e| e.to_string())
}
