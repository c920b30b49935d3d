//! Errors of configuring bundle trust and registry access (bad flags or files: the user's to
//! fix before anything runs) and of publishing a bundle. Verification failures of a reference
//! are [`super::BundleFailure`], with their reason words.

/// The trust or registry configuration cannot be used; the message names the file or flag.
#[derive(Debug, thiserror::Error)]
pub enum TrustConfigError {
    /// A file or directory named by a flag cannot be read.
    #[error("{path}: {source}")]
    Unreadable {
        /// The file or directory.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A key file is not a cosign public key.
    #[error("{name}: not a cosign public key: {message}")]
    NotAPublicKey {
        /// The file.
        name: String,
        /// The parser's message.
        message: String,
    },
    /// A certificate file is not PEM certificates, or has none.
    #[error("{name}: {message}")]
    NotCertificates {
        /// The file.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A Docker `config.json` that cannot be used.
    #[error("{path}: {message}")]
    DockerConfig {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A `--bundle-identity` that is not `SUBJECT,ISSUER`.
    #[error("{value:?}: {message}")]
    Identity {
        /// The value given.
        value: String,
        /// What is wrong.
        message: &'static str,
    },
    /// `--bundle-identity` without `--bundle-cert-roots`, or the reverse.
    #[error(
        "--bundle-identity and --bundle-cert-roots go together: an identity is trusted only through a root"
    )]
    IdentityWithoutRoot,
}

impl TrustConfigError {
    /// An unreadable `path`.
    pub fn unreadable(path: &std::path::Path, source: std::io::Error) -> TrustConfigError {
        TrustConfigError::Unreadable {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Publishing or signing a bundle failed; nothing is half-published that a verifier would
/// accept (the signature is pushed last).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The registry refused authentication.
    #[error("{registry}: {message}")]
    Auth {
        /// The registry host.
        registry: String,
        /// The client's message.
        message: String,
    },
    /// Pushing a blob or manifest failed.
    #[error("pushing the {what}: {message}")]
    Push {
        /// Which part (manifest, content, signature payload, …).
        what: &'static str,
        /// The client's message.
        message: String,
    },
    /// The private key cannot be read or used.
    #[error("{0}")]
    Key(String),
    /// Signing failed.
    #[error("signing: {0}")]
    Sign(String),
}
