//! Certificate-identity signers: a cosign signature made with a certificate (the
//! `dev.sigstore.cosign/certificate` and `…/chain` annotations) is trusted when the certificate
//! chains to a configured root, is valid now, allows code signing, and names an allowed
//! subject (SAN e-mail or URI) and OIDC issuer (Fulcio's extension `1.3.6.1.4.1.57264.1.8`, or
//! the older `…1.1`). The roots are the trust root; nothing here reaches a network.

use std::time::{SystemTime, UNIX_EPOCH};

use sigstore::crypto::{CosignVerificationKey, Signature};
use x509_cert::Certificate;
use x509_cert::der::asn1::{ObjectIdentifier, Utf8StringRef};
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::{ExtendedKeyUsage, SubjectAltName};

use super::TrustConfigError;

/// The annotation holding the signing certificate (PEM).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// The annotation holding the certificate chain (PEM, leaf's issuer first).
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";

const OIDC_ISSUER_V2: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.8");
const OIDC_ISSUER_V1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.57264.1.1");
const CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");

/// One allowed keyless identity: exact subject and exact issuer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CertIdentity {
    /// The certificate's SAN: an e-mail address or a URI (e.g. a CI workflow).
    pub subject: String,
    /// The OIDC issuer recorded in the certificate.
    pub issuer: String,
}

impl CertIdentity {
    /// Parses `SUBJECT,ISSUER` (the `--bundle-identity` form).
    pub fn parse(s: &str) -> Result<CertIdentity, TrustConfigError> {
        let bad = |message| TrustConfigError::Identity {
            value: s.to_string(),
            message,
        };
        let (subject, issuer) = s.split_once(',').ok_or_else(|| {
            bad("expected SUBJECT,ISSUER (e.g. ci@example.com,https://accounts.example.com)")
        })?;
        let (subject, issuer) = (subject.trim(), issuer.trim());
        if subject.is_empty() || issuer.is_empty() {
            return Err(bad("subject and issuer must both be given"));
        }
        Ok(CertIdentity {
            subject: subject.to_string(),
            issuer: issuer.to_string(),
        })
    }
}

/// A trusted root certificate.
#[derive(Clone, Debug)]
pub struct TrustRoot {
    /// Where it came from (for messages).
    pub name: String,
    cert: Certificate,
}

impl TrustRoot {
    /// Every certificate in `pem` as a root.
    pub fn from_pem(name: &str, pem: &[u8]) -> Result<Vec<TrustRoot>, TrustConfigError> {
        let bad = |message: String| TrustConfigError::NotCertificates {
            name: name.to_string(),
            message,
        };
        let certs = Certificate::load_pem_chain(pem)
            .map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".to_string()));
        }
        Ok(certs
            .into_iter()
            .map(|cert| TrustRoot {
                name: name.to_string(),
                cert,
            })
            .collect())
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn check_validity(c: &Certificate, now: u64, what: &str) -> Result<(), String> {
    let v = c.tbs_certificate().validity();
    let (from, to) = (
        v.not_before.to_unix_duration().as_secs(),
        v.not_after.to_unix_duration().as_secs(),
    );
    if now < from || now > to {
        return Err(format!(
            "the {what} certificate is not valid now (valid {from}..{to} in Unix seconds)"
        ));
    }
    Ok(())
}

/// True when `issuer_cert`'s key made `cert`'s signature.
fn signed_by(cert: &Certificate, issuer_cert: &Certificate) -> bool {
    if cert.tbs_certificate().issuer() != issuer_cert.tbs_certificate().subject() {
        return false;
    }
    let Ok(key) =
        CosignVerificationKey::try_from(issuer_cert.tbs_certificate().subject_public_key_info())
    else {
        return false;
    };
    let Ok(tbs) = cert.tbs_certificate().to_der() else {
        return false;
    };
    let Some(sig) = cert.signature().as_bytes() else {
        return false;
    };
    key.verify_signature(Signature::Raw(sig), &tbs).is_ok()
}

/// Builds the path leaf → (intermediates from `chain`) → a trusted root; every certificate on
/// it must be valid now. Returns the root's name.
fn chain_to_root<'r>(
    leaf: &Certificate,
    chain: &[Certificate],
    roots: &'r [TrustRoot],
    now: u64,
) -> Result<&'r str, String> {
    let mut current = leaf.clone();
    for _ in 0..5 {
        if let Some(root) = roots.iter().find(|r| signed_by(&current, &r.cert)) {
            check_validity(&root.cert, now, "root")?;
            return Ok(&root.name);
        }
        let Some(next) = chain.iter().find(|c| signed_by(&current, c)) else {
            return Err("the certificate does not chain to a configured root".into());
        };
        if next == &current {
            return Err(
                "the certificate chains to a self-signed root that is not a configured root".into(),
            );
        }
        check_validity(next, now, "intermediate")?;
        current = next.clone();
    }
    Err("the certificate chain is longer than 5".into())
}

fn san_names(leaf: &Certificate) -> Vec<String> {
    let Ok(Some(san)) = leaf
        .tbs_certificate()
        .get_extension::<SubjectAltName>()
        .map(|o| o.map(|(_, s)| s))
    else {
        return Vec::new();
    };
    san.0
        .iter()
        .filter_map(|n| match n {
            GeneralName::Rfc822Name(s) => Some(s.to_string()),
            GeneralName::UniformResourceIdentifier(s) => Some(s.to_string()),
            _ => None,
        })
        .collect()
}

fn oidc_issuer(leaf: &Certificate) -> Option<String> {
    let exts = leaf.tbs_certificate().extensions()?;
    if let Some(e) = exts.iter().find(|e| e.extn_id == OIDC_ISSUER_V2) {
        return Utf8StringRef::from_der(e.extn_value.as_bytes())
            .ok()
            .map(|s| s.as_str().to_string());
    }
    exts.iter()
        .find(|e| e.extn_id == OIDC_ISSUER_V1)
        .and_then(|e| String::from_utf8(e.extn_value.as_bytes().to_vec()).ok())
}

/// Verifies `b64_sig` over `payload` made with the certificate `cert_pem` (and `chain_pem`)
/// against `roots` and `identities`. Returns a description of the signer.
pub fn verify_with_certificate(
    payload: &[u8],
    b64_sig: &str,
    cert_pem: &str,
    chain_pem: Option<&str>,
    roots: &[TrustRoot],
    identities: &[CertIdentity],
) -> Result<String, String> {
    let leaf = Certificate::from_pem(cert_pem.as_bytes())
        .map_err(|e| format!("the signing certificate is not PEM: {e}"))?;
    let chain = chain_pem
        .map(|p| Certificate::load_pem_chain(p.as_bytes()))
        .transpose()
        .map_err(|e| format!("the certificate chain is not PEM: {e}"))?
        .unwrap_or_default();
    let now = now_secs();
    check_validity(&leaf, now, "signing")?;
    let root = chain_to_root(&leaf, &chain, roots, now)?;
    let code_signing = leaf
        .tbs_certificate()
        .get_extension::<ExtendedKeyUsage>()
        .ok()
        .flatten()
        .is_some_and(|(_, eku)| eku.0.contains(&CODE_SIGNING));
    if !code_signing {
        return Err("the certificate does not allow code signing".into());
    }
    let names = san_names(&leaf);
    let issuer = oidc_issuer(&leaf).unwrap_or_default();
    let Some(who) = identities
        .iter()
        .find(|i| i.issuer == issuer && names.contains(&i.subject))
    else {
        return Err(format!(
            "certificate identity {names:?} from issuer {issuer:?} is not an allowed identity"
        ));
    };
    let key = CosignVerificationKey::try_from(leaf.tbs_certificate().subject_public_key_info())
        .map_err(|e| format!("the certificate's key: {e}"))?;
    key.verify_signature(Signature::Base64Encoded(b64_sig.as_bytes()), payload)
        .map_err(|_| "the signature does not verify with the certificate's key".to_string())?;
    Ok(format!("{} ({}, root {root})", who.subject, who.issuer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_flag_form() {
        let i = CertIdentity::parse("ci@example.com, https://issuer.example").expect("valid");
        assert_eq!(i.subject, "ci@example.com");
        assert_eq!(i.issuer, "https://issuer.example");
        for bad in ["ci@example.com", ",https://issuer", "ci@example.com,", ""] {
            assert!(CertIdentity::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn garbage_certificates_are_refused_not_trusted() {
        assert!(TrustRoot::from_pem("x", b"not pem").is_err());
        let err = verify_with_certificate(b"{}", "AAAA", "not a certificate", None, &[], &[])
            .expect_err("garbage");
        assert!(err.contains("not PEM"), "{err}");
    }
}
