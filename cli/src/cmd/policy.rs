//! `kars policy sign | verify | canonicalize | kinds`: signed OCI policy bundles.
//!
//! `sign` validates and canonicalises a bundle, pushes it as an OCI artifact, signs it in
//! cosign's format and prints the digest to reference; `verify` runs exactly the agent's check.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use kars_gitops_agent::bundles::{
    self, BundleArgs, BundleRef, RegistryArgs, fetch_verified, sha256_digest,
};
use kars_renderer::api::OciArtifactRef;
use kars_renderer::bundle::{
    ALL_KINDS, BundleKind, canonicalize, check_reference, reference_patch,
};

use crate::Failure;

/// Arguments of `kars policy`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: PolicyCommand,
}

#[derive(clap::Subcommand, Debug)]
enum PolicyCommand {
    /// Validate, canonicalise, push as an OCI artifact, sign with a cosign key; print the digest.
    ///
    /// Prints `registry/repository@sha256:…` on stdout (or JSON with --json). Reference that
    /// digest from the policy repository (--emit-manifest writes the patch); the agent pulls by
    /// digest only and verifies the signature against its own keys (--bundle-keys).
    Sign(SignArgs),
    /// Pull a bundle by digest and run the agent's checks: artifactType, cosign signature by a
    /// trusted key, digest, canonical form. Exit 1 with the reason when any fails.
    Verify(VerifyArgs),
    /// Print a bundle file's canonical bytes (what `sign` would publish) and its digest.
    Canonicalize(CanonicalizeArgs),
    /// List the bundle kinds, their media types and the fields that reference them.
    Kinds,
}

/// The `--kind` values.
fn parse_kind(s: &str) -> Result<BundleKind, String> {
    BundleKind::from_name(s).ok_or_else(|| {
        format!(
            "unknown bundle kind {s:?}; one of: {}",
            ALL_KINDS.map(BundleKind::name).join(", ")
        )
    })
}

#[derive(clap::Args, Debug)]
struct SignArgs {
    /// Bundle kind: egress-allowlist, agt-profile, inference-policy, memory-binding,
    /// mcp-server-bundle, eval-corpus (`kars policy kinds` lists them).
    #[arg(long, value_parser = parse_kind)]
    kind: BundleKind,
    /// The bundle content (YAML or JSON), `-` for stdin.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// Registry host and optional port, e.g. `registry.example.com` or `127.0.0.1:5000`.
    #[arg(long)]
    registry: String,
    /// Repository inside the registry, e.g. `policies/egress`.
    #[arg(long)]
    repository: String,
    /// Tag to push the manifest under (for humans; nothing resolves it). Default
    /// `<kind>-<first 12 hex of the content digest>`.
    #[arg(long)]
    tag: Option<String>,
    /// cosign private key (`cosign generate-key-pair`); its password is read from
    /// COSIGN_PASSWORD as cosign does. Keyless signing is not supported.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Write the YAML that points the referencing object's field at the bundle to FILE.
    #[arg(long, value_name = "FILE")]
    emit_manifest: Option<PathBuf>,
    /// metadata.name for --emit-manifest.
    #[arg(long, requires = "emit_manifest")]
    name: Option<String>,
    /// metadata.namespace for --emit-manifest (with --name).
    #[arg(long, requires = "name", default_value = "default")]
    namespace: String,
    #[command(flatten)]
    registry_args: RegistryArgs,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The bundle, `registry/repository@sha256:<64 hex>` (a digest, never a tag).
    reference: String,
    /// The kind the referencing field takes.
    #[arg(long, value_parser = parse_kind)]
    kind: BundleKind,
    /// Write the verified content to FILE (`-`: stdout).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Trusted signers (keys or certificate identities) and registry access, as the agent's.
    #[command(flatten)]
    signers: BundleArgs,
}

#[derive(clap::Args, Debug)]
struct CanonicalizeArgs {
    /// Bundle kind.
    #[arg(long, value_parser = parse_kind)]
    kind: BundleKind,
    /// The bundle content (YAML or JSON), `-` for stdin.
    #[arg(long, value_name = "FILE")]
    file: PathBuf,
    /// Print nothing; exit 1 when the file is not byte-for-byte canonical.
    #[arg(long)]
    check: bool,
}

/// Runs `kars policy`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    match args.command {
        PolicyCommand::Kinds => {
            for k in ALL_KINDS {
                let (object, path) = k.referenced_by();
                crate::outln!(
                    "{:<18} {:<48} {object} {}",
                    k.name(),
                    k.media_type(),
                    path.join(".")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Canonicalize(a) => canonicalize_cmd(a),
        PolicyCommand::Sign(a) => super::block_on(sign_cmd(a)),
        PolicyCommand::Verify(a) => super::block_on(verify_cmd(a)),
    }
}

fn read_input(path: &Path) -> Result<Vec<u8>, Failure> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading stdin")?;
        return Ok(buf);
    }
    std::fs::read(path)
        .with_context(|| format!("reading {}", path.display()))
        .map_err(Failure::usage)
}

/// Reads and canonicalises a bundle file; an invalid file is a check failure naming it.
fn canonical_content(kind: BundleKind, path: &Path) -> Result<(Vec<u8>, Vec<u8>), Failure> {
    let raw = read_input(path)?;
    let canonical =
        canonicalize(kind, &raw).map_err(|e| Failure::check(anyhow!("{}: {e}", path.display())))?;
    Ok((raw, canonical))
}

fn canonicalize_cmd(a: CanonicalizeArgs) -> Result<ExitCode, Failure> {
    let (raw, canonical) = canonical_content(a.kind, &a.file)?;
    if a.check {
        if raw == canonical {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "{}: valid {} content, but not in canonical form (`kars policy canonicalize --kind {} --file {}` prints it)",
            a.file.display(),
            a.kind.name(),
            a.kind.name(),
            a.file.display()
        );
        return Ok(ExitCode::from(1));
    }
    crate::out(&String::from_utf8_lossy(&canonical));
    eprintln!(
        "content digest {} ({} bytes, {})",
        sha256_digest(&canonical),
        canonical.len(),
        a.kind.media_type()
    );
    Ok(ExitCode::SUCCESS)
}

async fn sign_cmd(a: SignArgs) -> Result<ExitCode, Failure> {
    let Some(key_path) = &a.key else {
        return Err(Failure::usage(anyhow!(
            "--key is required: keyless (Fulcio/Rekor) signing is not supported; create a key pair with `cosign generate-key-pair` and pass --key cosign.key"
        )));
    };
    let (_, content) = canonical_content(a.kind, &a.file)?;
    let content_digest = sha256_digest(&content);
    // The reference (with the content digest until the manifest digest is known) must be one
    // the agent will accept; check it before anything is pushed.
    let unsigned_ref = OciArtifactRef {
        registry: a.registry.clone(),
        repository: a.repository.clone(),
        digest: content_digest.clone(),
        artifact_type: a.kind.media_type().to_string(),
    };
    check_reference(a.kind, &unsigned_ref).map_err(|e| Failure::usage(anyhow!("{e}")))?;
    let tag = a.tag.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            a.kind.name(),
            &content_digest["sha256:".len().."sha256:".len() + 12]
        )
    });
    let key_pem = std::fs::read(key_path)
        .with_context(|| format!("reading {}", key_path.display()))
        .map_err(Failure::usage)?;
    let password = std::env::var("COSIGN_PASSWORD").unwrap_or_default();
    let opts = a
        .registry_args
        .registry_options()
        .map_err(|e| Failure::usage(anyhow!("{e}")))?;
    eprintln!(
        "pushing {} bundle ({} bytes, content {content_digest}) to {}/{}:{tag} …",
        a.kind.name(),
        content.len(),
        a.registry,
        a.repository
    );
    let digest = bundles::push(&opts, &a.registry, &a.repository, &tag, a.kind, &content)
        .await
        .map_err(|e| Failure::check(anyhow!("push to {}: {e}", a.registry)))?;
    eprintln!("signing {digest} with {} …", key_path.display());
    let outcome = bundles::sign(
        &opts,
        &a.registry,
        &a.repository,
        &digest,
        &key_pem,
        password.as_bytes(),
    )
    .await
    .map_err(|e| Failure::check(anyhow!("signing {digest}: {e}")))?;
    if outcome == bundles::SignOutcome::AlreadySigned {
        eprintln!("{digest} was already signed by this key; nothing to add");
    }
    let reference = OciArtifactRef {
        digest: digest.clone(),
        ..unsigned_ref
    };
    if let Some(path) = &a.emit_manifest {
        let name = a.name.as_deref().map(|n| (n, a.namespace.as_str()));
        std::fs::write(path, reference_patch(a.kind, &reference, name))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let location = format!("{}/{}@{}", a.registry, a.repository, digest);
    if crate::ui::get().machine() {
        let out = serde_json::json!({
            "reference": location,
            "registry": reference.registry,
            "repository": reference.repository,
            "digest": digest,
            "artifactType": reference.artifact_type,
            "kind": a.kind.name(),
            "tag": tag,
            "contentDigest": content_digest,
            "size": content.len(),
        });
        crate::ui::emit(&out)?;
    } else {
        crate::outln!("{location}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn verify_cmd(a: VerifyArgs) -> Result<ExitCode, Failure> {
    let Some(r) = BundleRef::parse(&a.reference) else {
        return Err(Failure::usage(anyhow!(
            "{:?} is not registry/repository@sha256:<64 hex> (bundles are pinned by digest, never by tag)",
            a.reference
        )));
    };
    let policy = a
        .signers
        .signer_policy()
        .map_err(|e| Failure::usage(anyhow!(e)))?;
    if policy.is_empty() {
        return Err(Failure::usage(anyhow!(
            "no signers: pass --bundle-keys (cosign public keys) or --bundle-identity with --bundle-cert-roots"
        )));
    }
    let opts = a
        .signers
        .registry
        .registry_options()
        .map_err(|e| Failure::usage(anyhow!("{e}")))?;
    match fetch_verified(&opts, &policy, a.kind, &r).await {
        Ok(v) => {
            if let Some(out) = &a.out {
                if out == Path::new("-") {
                    crate::out(&String::from_utf8_lossy(&v.content));
                } else {
                    std::fs::write(out, &v.content)
                        .with_context(|| format!("writing {}", out.display()))?;
                }
            }
            if crate::ui::get().machine() {
                let out = serde_json::json!({
                    "reference": r.to_string(), "kind": a.kind.name(), "verified": true,
                    "signer": v.signer, "contentDigest": sha256_digest(&v.content), "size": v.content.len(),
                });
                crate::ui::emit(&out)?;
            } else {
                let line = format!(
                    "verified {r}: {} bundle, {} bytes, signed by {}",
                    a.kind.name(),
                    v.content.len(),
                    v.signer
                );
                // Keep stdout for the content when it goes there.
                if a.out.as_deref() == Some(Path::new("-")) {
                    eprintln!("{line}");
                } else {
                    crate::outln!("{line}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            if crate::ui::get().machine() {
                let out = serde_json::json!({
                    "reference": r.to_string(), "kind": a.kind.name(), "verified": false,
                    "reason": failure.reason(), "message": failure.to_string(),
                });
                crate::ui::emit(&out)?;
                Ok(ExitCode::from(1))
            } else {
                Err(Failure::check(anyhow!(
                    "{r} did not verify: {}: {failure}",
                    failure.reason()
                )))
            }
        }
    }
}
