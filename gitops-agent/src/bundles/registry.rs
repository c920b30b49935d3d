//! Reaching registries: TLS roots, credentials from a Docker config, plain HTTP only for
//! loopback registries and only when allowed; pull errors with their causes.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde_json::Value;

use super::{BundleFailure, TrustConfigError, sha256_digest};

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
    pub fn read_docker_config(&mut self, path: &Path) -> Result<(), TrustConfigError> {
        let bad = |message: String| TrustConfigError::DockerConfig {
            path: path.display().to_string(),
            message,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| TrustConfigError::unreadable(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let auths = v["auths"]
            .as_object()
            .ok_or_else(|| bad("no \"auths\" object".to_string()))?;
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
                    .map_err(|_| bad(format!("auth of {host} is not base64")))?;
                let s = String::from_utf8_lossy(&decoded);
                let (u, p) = s
                    .split_once(':')
                    .ok_or_else(|| bad(format!("auth of {host} is not user:password")))?;
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

    pub(crate) fn auth_for(&self, registry: &str) -> RegistryAuth {
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

/// An error with its causes (`a: b: c`), so "error sending request" says why (TLS, refused, …).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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
pub(crate) fn pull_failure(what: &str, e: OciDistributionError) -> BundleFailure {
    match e {
        OciDistributionError::DigestError(d) => {
            BundleFailure::DigestMismatch(format!("{what}: {d}"))
        }
        other => BundleFailure::OciPullError(format!("{what}: {}", error_chain(&other))),
    }
}

/// True when the registry answered that the manifest does not exist (as opposed to being
/// unreachable or refusing access: those are pull errors, not a missing signature).
pub(crate) fn is_not_found(e: &OciDistributionError) -> bool {
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

/// Pulls the blob `digest` and checks that its bytes hash to it.
pub(crate) async fn pull_blob(
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
