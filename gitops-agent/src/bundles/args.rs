//! Command-line flags for bundle verification and registry access, shared by the agent and the
//! `kars` CLI.

use std::path::{Path, PathBuf};

use super::{BundleVerifier, CertIdentity, RegistryOptions, SignerPolicy, TrustConfigError};

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
    pub fn registry_options(&self) -> Result<RegistryOptions, TrustConfigError> {
        let mut registry = RegistryOptions {
            allow_http_loopback: self.allow_http_loopback_registry,
            ..RegistryOptions::default()
        };
        if let Some(f) = &self.registry_auth_file {
            registry.read_docker_config(f)?;
        }
        if let Some(f) = &self.registry_ca_file {
            let pem = std::fs::read(f).map_err(|e| TrustConfigError::unreadable(f, e))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(TrustConfigError::NotCertificates {
                    name: f.display().to_string(),
                    message: "no PEM certificate in it".to_string(),
                });
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
    pub fn signer_policy(&self) -> Result<SignerPolicy, TrustConfigError> {
        let mut signers = SignerPolicy::from_paths(&self.bundle_keys)?;
        if self.bundle_identities.is_empty() != self.bundle_cert_roots.is_empty() {
            return Err(TrustConfigError::IdentityWithoutRoot);
        }
        for path in &self.bundle_cert_roots {
            let pem = std::fs::read(path).map_err(|e| TrustConfigError::unreadable(path, e))?;
            signers.add_roots_pem(&path.display().to_string(), &pem)?;
        }
        for identity in &self.bundle_identities {
            signers.add_identity(identity.clone());
        }
        Ok(signers)
    }

    /// A verifier with these flags, caching verified bundles under `cache_dir`.
    pub fn verifier(&self, cache_dir: Option<&Path>) -> Result<BundleVerifier, TrustConfigError> {
        let signers = self.signer_policy()?;
        Ok(BundleVerifier::new(
            self.registry.registry_options()?,
            signers,
            cache_dir,
        ))
    }
}
