//! Signed OCI policy bundles with real components: the CNCF distribution registry on
//! loopback, the real `cosign` and `oras` CLIs, the `kars` binary and the agent's sync on the
//! real control plane.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kars_e2e::fixture::{PolicyRepoFixture, agent_files};
use kars_e2e::oci::{
    COSIGN_PASSWORD, Registry, cosign_key_pair, cosign_sign, cosign_verify, oras_copy, oras_push,
};
use kars_e2e::pki::{SERVER_127, leaf, root_ca};
use kars_e2e::{Cluster, Out, block_on, install_kars_crds, kars_command, run_to_end, unique_name};
use kars_gitops_agent::bundles::{BundleVerifier, RegistryOptions, SignerPolicy, signature_tag};
use kars_gitops_agent::status::PolicyRepo;
use kars_gitops_agent::sync::sync_once;
use kars_renderer::bundle::{BundleKind, canonicalize};
use kube::api::Api;
use libtest_mimic::Trial;
use serde_json::Value;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "bundles::oras_pushed_cosign_signed_bundle_verifies_in_kars",
            oras_and_cosign_verify_in_kars,
        ),
        trial(
            "bundles::kars_signed_bundle_verifies_with_cosign",
            kars_sign_verifies_with_cosign,
        ),
        trial(
            "bundles::each_bad_bundle_is_refused_with_its_reason",
            bad_bundles_are_refused,
        ),
        trial(
            "bundles::signed_allowlist_is_projected_and_last_good_kept",
            signed_allowlist_on_the_control_plane,
        ),
        trial(
            "bundles::certificate_identity_signers",
            certificate_identity_signers,
        ),
        trial(
            "bundles::registry_with_tls_private_ca_and_basic_auth",
            registry_with_tls_and_auth,
        ),
    ]
}

const EGRESS: BundleKind = BundleKind::EgressAllowlist;

/// Runs the `kars` binary with the test cosign password.
fn kars(args: &[&str]) -> Result<Out> {
    run_to_end(
        kars_command()?
            .args(args)
            .env("COSIGN_PASSWORD", COSIGN_PASSWORD)
            .env_remove("KARS_BUNDLE_KEYS"),
    )
}

/// An allowlist bundle document for `hosts` (not canonical: mixed case, trailing dots,
/// default ports left out, unsorted).
fn allowlist_doc(generation: u32, hosts: &[&str]) -> String {
    let endpoints: String = hosts
        .iter()
        .map(|h| format!("  - {{host: {h}.}}\n"))
        .collect();
    format!(
        "kind: EgressAllowlist\napiVersion: kars.dev/v1alpha1\nmetadata: {{generation: {generation}}}\nspec:\n  endpoints:\n{endpoints}"
    )
}

/// Writes an allowlist bundle file; `canonical` chooses canonical or messy bytes.
fn allowlist_file(dir: &Path, name: &str, hosts: &[&str], canonical: bool) -> Result<PathBuf> {
    let doc = allowlist_doc(1, hosts);
    let bytes = if canonical {
        canonicalize(EGRESS, doc.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?
    } else {
        doc.into_bytes()
    };
    let path = dir.join(name);
    std::fs::write(&path, bytes)?;
    Ok(path)
}

/// `kars policy <verb> --kind <kind> <args…> --allow-http-loopback-registry`.
fn kars_policy(verb: &str, kind: &str, args: &[&str]) -> Result<Out> {
    let mut all = vec!["policy", verb, "--kind", kind];
    all.extend_from_slice(args);
    all.push("--allow-http-loopback-registry");
    kars(&all)
}

/// `kars policy sign` of an allowlist; returns `registry/repository@digest`.
fn kars_sign(reg: &Registry, repository: &str, file: &Path, key: &Path) -> Result<String> {
    let out = kars_policy(
        "sign",
        "egress-allowlist",
        &[
            "--file",
            &file.to_string_lossy(),
            "--registry",
            &reg.host,
            "--repository",
            repository,
            "--key",
            &key.to_string_lossy(),
        ],
    )?;
    ensure!(
        out.code == 0,
        "kars policy sign failed ({}): {}",
        out.code,
        out.stderr
    );
    Ok(out.stdout.trim().to_string())
}

/// `kars policy verify --json`: (exit code, parsed result).
fn kars_verify(kind: &str, reference: &str, keys: &Path) -> Result<(i32, Value)> {
    let out = kars_policy(
        "verify",
        kind,
        &[
            reference,
            "--bundle-keys",
            &keys.to_string_lossy(),
            "--json",
        ],
    )?;
    let v: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("kars policy verify output: {}{}", out.stdout, out.stderr))?;
    Ok((out.code, v))
}

/// A registry, a trusted key pair and another one.
struct Setup {
    dir: tempfile::TempDir,
    reg: Registry,
    key: PathBuf,
    public: PathBuf,
    other_key: PathBuf,
    other_public: PathBuf,
}

fn setup() -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let reg = Registry::start(&dir.path().join("registry"))?;
    let (key, public) = cosign_key_pair(&dir.path().join("keys"), "trusted")?;
    let (other_key, other_public) = cosign_key_pair(&dir.path().join("keys"), "other")?;
    Ok(Setup {
        dir,
        reg,
        key,
        public,
        other_key,
        other_public,
    })
}

fn oras_and_cosign_verify_in_kars() -> Result<()> {
    let s = setup()?;
    let file = allowlist_file(s.dir.path(), "allow.yaml", &["api.openai.com"], true)?;
    let repo_ref = format!("{}/policies/egress", s.reg.host);
    let digest = oras_push(&format!("{repo_ref}:v1"), &file, EGRESS.media_type())?;
    let reference = format!("{repo_ref}@{digest}");
    cosign_sign(&s.key, &reference)?;
    let (code, v) = kars_verify("egress-allowlist", &reference, &s.public)?;
    ensure!(
        code == 0 && v["verified"] == true,
        "an oras-pushed, cosign-signed bundle did not verify in kars: {v}"
    );
    ensure!(
        v["signer"]
            .as_str()
            .is_some_and(|n| n.ends_with("trusted.pub"))
    );
    // The content kars hands out is exactly what was pushed.
    let out_file = s.dir.path().join("pulled.yaml");
    let out = kars_policy(
        "verify",
        "egress-allowlist",
        &[
            &reference,
            "--bundle-keys",
            &s.public.to_string_lossy(),
            "--out",
            &out_file.to_string_lossy(),
        ],
    )?;
    ensure!(out.code == 0, "kars policy verify --out: {}", out.stderr);
    ensure!(
        out.stdout.contains("signed by"),
        "verify names the signer: {}",
        out.stdout
    );
    ensure!(std::fs::read(&out_file)? == std::fs::read(&file)?);
    // The agent's library path (cache, signer policy from files) agrees.
    let verifier = BundleVerifier::new(
        RegistryOptions {
            allow_http_loopback: true,
            ..RegistryOptions::default()
        },
        SignerPolicy::from_paths(std::slice::from_ref(&s.public)).map_err(anyhow::Error::msg)?,
        Some(&s.dir.path().join("cache")),
    );
    let r = kars_gitops_agent::bundles::BundleRef::parse(&reference).context("parse")?;
    let bytes = kars_e2e::block_on_value(verifier.verify(EGRESS, &r))?
        .map_err(|e| anyhow::anyhow!("agent verifier: {}: {e}", e.reason()))?;
    ensure!(bytes == std::fs::read(&file)?);
    Ok(())
}

fn kars_sign_verifies_with_cosign() -> Result<()> {
    let s = setup()?;
    // Messy input: kars canonicalises before pushing.
    let file = allowlist_file(
        s.dir.path(),
        "messy.yaml",
        &["PyPI.org", "api.openai.com"],
        false,
    )?;
    let patch = s.dir.path().join("patch.yaml");
    let sign = |emit: &Path| {
        kars_policy(
            "sign",
            "egress-allowlist",
            &[
                "--file",
                &file.to_string_lossy(),
                "--registry",
                &s.reg.host,
                "--repository",
                "policies/egress",
                "--key",
                &s.key.to_string_lossy(),
                "--emit-manifest",
                &emit.to_string_lossy(),
                "--name",
                "agent-a",
                "--namespace",
                "team-a",
                "--json",
            ],
        )
    };
    let first = sign(&patch)?;
    ensure!(
        first.code == 0,
        "kars policy sign failed: {}{}",
        first.stdout,
        first.stderr
    );
    let v: Value = serde_json::from_str(&first.stdout)?;
    let reference = v["reference"].as_str().context("reference")?.to_string();
    ensure!(v["artifactType"] == EGRESS.media_type());
    let (ok, output) = cosign_verify(&s.public, &reference)?;
    ensure!(
        ok,
        "cosign verify --key refused a kars-signed bundle: {output}"
    );
    let (ok, _) = cosign_verify(&s.other_public, &reference)?;
    ensure!(!ok, "cosign verify accepted the wrong key");
    // Same input → same digest, same patch bytes, and no duplicate signature.
    let patch2 = s.dir.path().join("patch2.yaml");
    let second = sign(&patch2)?;
    ensure!(second.code == 0, "second sign: {}", second.stderr);
    let v2: Value = serde_json::from_str(&second.stdout)?;
    ensure!(
        v2["digest"] == v["digest"],
        "re-signing the same content changed the digest"
    );
    ensure!(std::fs::read(&patch)? == std::fs::read(&patch2)?);
    ensure!(
        second.stderr.contains("already signed"),
        "{}",
        second.stderr
    );
    let patch_text = std::fs::read_to_string(&patch)?;
    ensure!(
        patch_text.contains("kind: KarsSandbox")
            && patch_text.contains("allowlistRef:")
            && patch_text.contains(v["digest"].as_str().unwrap_or("-")),
        "patch: {patch_text}"
    );
    // What is published is the canonical form.
    let (code, verified) = kars_verify("egress-allowlist", &reference, &s.public)?;
    ensure!(code == 0, "{verified}");
    let canonical = canonicalize(EGRESS, &std::fs::read(&file)?).map_err(anyhow::Error::msg)?;
    ensure!(verified["contentDigest"] == kars_gitops_agent::bundles::sha256_digest(&canonical));
    // Invalid content is refused before anything is pushed.
    let bad = s.dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: kars.dev/v1alpha1\nkind: EgressAllowlist\nmetadata: {generation: 1}\nspec: {endpoints: [{host: 10.0.0.1}]}\n",
    )?;
    let out = kars_policy(
        "sign",
        "egress-allowlist",
        &[
            "--file",
            &bad.to_string_lossy(),
            "--registry",
            &s.reg.host,
            "--repository",
            "policies/bad",
            "--key",
            &s.key.to_string_lossy(),
        ],
    )?;
    ensure!(
        out.code == 1 && out.stderr.contains("bad.yaml"),
        "invalid content: exit {} {}",
        out.code,
        out.stderr
    );
    Ok(())
}

/// Publishes each bad variant; returns (case, reference, expected reason).
fn bad_variants(s: &Setup) -> Result<Vec<(&'static str, String, &'static str)>> {
    let d = s.dir.path();
    let repo = format!("{}/policies/bad", s.reg.host);
    let mut cases = Vec::new();
    // Unsigned.
    let f = allowlist_file(d, "unsigned.yaml", &["unsigned.example"], true)?;
    let dg = oras_push(&format!("{repo}:unsigned"), &f, EGRESS.media_type())?;
    cases.push(("unsigned", format!("{repo}@{dg}"), "Unsigned"));
    // Signed by another key.
    let f = allowlist_file(d, "other.yaml", &["other.example"], true)?;
    let r = kars_sign(&s.reg, "policies/bad", &f, &s.other_key)?;
    cases.push(("signed by another key", r, "SignerPolicyMismatch"));
    // Wrong artifactType (signed by the trusted key).
    let f = allowlist_file(d, "wrongtype.yaml", &["wrongtype.example"], true)?;
    let dg = oras_push(
        &format!("{repo}:wrongtype"),
        &f,
        BundleKind::AgtProfile.media_type(),
    )?;
    cosign_sign(&s.key, &format!("{repo}@{dg}"))?;
    cases.push((
        "wrong artifactType",
        format!("{repo}@{dg}"),
        "ArtifactTypeMismatch",
    ));
    // Valid content, signed, but not canonical bytes.
    let f = allowlist_file(d, "messy.yaml", &["Messy.example"], false)?;
    let dg = oras_push(&format!("{repo}:messy"), &f, EGRESS.media_type())?;
    cosign_sign(&s.key, &format!("{repo}@{dg}"))?;
    cases.push((
        "non-canonical bytes",
        format!("{repo}@{dg}"),
        "CanonicalFormatViolation",
    ));
    // A trusted signature of other bytes replayed onto this digest.
    let good = allowlist_file(d, "good.yaml", &["good.example"], true)?;
    let good_ref = kars_sign(&s.reg, "policies/bad", &good, &s.key)?;
    let good_digest = good_ref.rsplit_once('@').map(|x| x.1).unwrap_or_default();
    let f = allowlist_file(d, "replayed.yaml", &["replayed.example"], true)?;
    let dg = oras_push(&format!("{repo}:replayed"), &f, EGRESS.media_type())?;
    oras_copy(
        &format!("{repo}:{}", signature_tag(good_digest)),
        &format!("{repo}:{}", signature_tag(&dg)),
    )?;
    cases.push((
        "signature of different bytes",
        format!("{repo}@{dg}"),
        "SignatureDigestMismatch",
    ));
    // Storage tampered with behind the registry's back: the served bytes no longer hash to
    // their digest.
    let tampered = allowlist_file(d, "tampered.yaml", &["tampered.example"], true)?;
    let tampered_ref = kars_sign(&s.reg, "policies/tampered", &tampered, &s.key)?;
    let content_hex = kars_gitops_agent::bundles::sha256_digest(&std::fs::read(&tampered)?)
        ["sha256:".len()..]
        .to_string();
    let blob = d
        .join("registry/data/docker/registry/v2/blobs/sha256")
        .join(&content_hex[..2])
        .join(&content_hex)
        .join("data");
    let mut bytes = std::fs::read(&blob).with_context(|| format!("{}", blob.display()))?;
    let at = bytes.len() - 3;
    bytes[at] = b'x';
    std::fs::write(&blob, bytes)?;
    cases.push(("tampered registry storage", tampered_ref, "DigestMismatch"));
    // A digest the registry does not have.
    cases.push((
        "digest of bytes never pushed",
        format!("{repo}@sha256:{}", "0".repeat(64)),
        "OciPullError",
    ));
    Ok(cases)
}

fn bad_bundles_are_refused() -> Result<()> {
    let mut s = setup()?;
    for (case, reference, reason) in bad_variants(&s)? {
        let (code, v) = kars_verify("egress-allowlist", &reference, &s.public)?;
        ensure!(
            code == 1 && v["verified"] == false && v["reason"] == reason,
            "{case}: expected {reason}, got exit {code}: {v}"
        );
    }
    // The right bytes verified as the wrong kind.
    let good = allowlist_file(s.dir.path(), "good2.yaml", &["good.example"], true)?;
    let r = kars_sign(&s.reg, "policies/good", &good, &s.key)?;
    let (code, v) = kars_verify("agt-profile", &r, &s.public)?;
    ensure!(
        code == 1 && v["reason"] == "ArtifactTypeMismatch",
        "kind mismatch: {v}"
    );
    // A tag is never accepted.
    let out = kars_policy(
        "verify",
        "egress-allowlist",
        &[
            &format!("{}/policies/good:egress-allowlist", s.reg.host),
            "--bundle-keys",
            &s.public.to_string_lossy(),
        ],
    )?;
    ensure!(
        out.code == 2 && out.stderr.contains("never by tag"),
        "tag: exit {} {}",
        out.code,
        out.stderr
    );
    // Registry down.
    s.reg.stop();
    let (code, v) = kars_verify("egress-allowlist", &r, &s.public)?;
    ensure!(
        code == 1 && v["reason"] == "OciPullError",
        "registry down: {v}"
    );
    Ok(())
}

/// The sandbox of agent `short` with its egress from `reference` instead of inline hosts.
fn sandbox_with_allowlist_ref(f: &PolicyRepoFixture, short: &str, reference: &str) -> Result<()> {
    let (registry, rest) = reference.split_once('/').context("registry")?;
    let (repository, digest) = rest.split_once('@').unwrap_or((rest, ""));
    let (path, body) = agent_files(&f.agent(short), &f.namespace(), &["inline.example"])
        .into_iter()
        .next()
        .context("sandbox file")?;
    let inline = "    allowedEndpoints:\n      - {host: inline.example, port: 443}\n";
    ensure!(body.contains(inline), "fixture changed: {body}");
    let body = body.replace(
        inline,
        &format!(
            "    allowlistRef:\n      registry: \"{registry}\"\n      repository: {repository}\n      digest: \"{digest}\"\n      artifactType: {}\n",
            EGRESS.media_type()
        ),
    );
    f.work.write(&path, &body)
}

async fn allowlist_configmap(
    client: &kube::Client,
    f: &PolicyRepoFixture,
    short: &str,
) -> Result<(String, String)> {
    let agent = f.agent(short);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &format!("kars-{agent}"));
    let cm = cms
        .get(&format!("karssandbox-{agent}-egress-allowlist"))
        .await
        .with_context(|| format!("allowlist ConfigMap of {agent}"))?;
    let data = cm
        .data
        .unwrap_or_default()
        .get("allowlist.json")
        .cloned()
        .unwrap_or_default();
    let digest = cm
        .metadata
        .annotations
        .unwrap_or_default()
        .get(kars_contract::labels::BUNDLE_DIGEST_ANNOTATION)
        .cloned()
        .unwrap_or_default();
    Ok((data, digest))
}

fn signed_allowlist_on_the_control_plane() -> Result<()> {
    let cluster = Cluster::shared()?;
    install_kars_crds(cluster)?;
    let mut s = setup()?;
    let good = allowlist_file(
        s.dir.path(),
        "good.yaml",
        &["api.openai.com", "pypi.org"],
        true,
    )?;
    let good_ref = kars_sign(&s.reg, "policies/egress", &good, &s.key)?;
    let good_digest = good_ref
        .rsplit_once('@')
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    let next = allowlist_file(s.dir.path(), "next.yaml", &["files.pythonhosted.org"], true)?;
    let next_ref = kars_sign(&s.reg, "policies/egress", &next, &s.key)?;
    let bad = bad_variants(&s)?;

    let f = PolicyRepoFixture::new(&unique_name("bundle"), &["a"])?;
    sandbox_with_allowlist_ref(&f, "a", &good_ref)?;
    f.commit_and_push("egress of a from a signed bundle")?;
    let mut cfg = f.config(&f.file_url())?;
    cfg.bundles = BundleVerifier::new(
        RegistryOptions {
            allow_http_loopback: true,
            ..RegistryOptions::default()
        },
        SignerPolicy::from_paths(std::slice::from_ref(&s.public)).map_err(anyhow::Error::msg)?,
        Some(&f.path().join("bundle-cache")),
    );
    let sandbox_a = format!("KarsSandbox/{}/{}", f.namespace(), f.agent("a"));
    // `kars render` verifies like the agent with --bundle-keys, and says what it holds back
    // without them.
    let work = f.work.path.to_string_lossy().to_string();
    let with_keys = kars(&[
        "render",
        &work,
        "--bundle-keys",
        &s.public.to_string_lossy(),
        "--allow-http-loopback-registry",
    ])?;
    ensure!(
        with_keys.code == 0 && with_keys.stdout.contains("pypi.org"),
        "kars render --bundle-keys: exit {} {}",
        with_keys.code,
        with_keys.stderr
    );
    let without = kars(&["render", &work])?;
    ensure!(
        without.code == 1
            && without.stderr.contains(&format!("held back: {sandbox_a}"))
            && !without.stdout.contains("pypi.org"),
        "kars render without keys: exit {} {}",
        without.code,
        without.stderr
    );
    block_on(async {
        let client = cluster.client().await?;
        let o = sync_once(client.clone(), &cfg, None, &|| false)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            o.converged(),
            "signed bundle sync did not converge: {:?} {:?}",
            o.bundle_failures,
            o.apply.failures().collect::<Vec<_>>()
        );
        let (data, digest) = allowlist_configmap(&client, &f, "a").await?;
        ensure!(
            data.contains("api.openai.com") && data.contains("pypi.org"),
            "bundle hosts not projected: {data}"
        );
        ensure!(digest == good_digest, "bundle digest annotation {digest:?}");
        let good_data = data;
        let sandboxes = f.sandboxes(&client);

        // Each bad bundle: named reason, the good one stays projected, agent b still syncs.
        for (i, (case, reference, reason)) in bad.iter().enumerate() {
            sandbox_with_allowlist_ref(&f, "a", reference)?;
            let marker = format!("b{i}.example");
            f.add_agent("b", &[&marker])?;
            f.commit_and_push(&format!("try {case}"))?;
            let o = sync_once(client.clone(), &cfg, None, &|| false)
                .await
                .map_err(|e| anyhow::anyhow!("{case}: {e}"))?;
            ensure!(
                o.bundle_failures == vec![(sandbox_a.clone(), reason.to_string())],
                "{case}: bundle failures {:?}",
                o.bundle_failures
            );
            // Only the sandbox CR itself waits (its live version keeps the good reference);
            // what it implies is rendered from the good bundle.
            ensure!(
                o.held_back == vec![sandbox_a.clone()],
                "{case}: held back {:?}",
                o.held_back
            );
            let (data, digest) = allowlist_configmap(&client, &f, "a").await?;
            ensure!(
                data == good_data && digest == good_digest,
                "{case}: the last good allowlist was replaced: {data} {digest}"
            );
            let live = sandboxes.get(&f.agent("a")).await?;
            ensure!(
                live.data["spec"]["networkPolicy"]["allowlistRef"]["digest"]
                    == good_digest.as_str(),
                "{case}: the live KarsSandbox was changed to the unverified reference: {}",
                live.data["spec"]["networkPolicy"]
            );
            let (b_data, _) = allowlist_configmap(&client, &f, "b").await?;
            ensure!(
                b_data.contains(&marker),
                "{case}: agent b was blocked: {b_data}"
            );
            let api: Api<PolicyRepo> =
                Api::namespaced(client.clone(), &format!("{}-status", f.prefix));
            let st = api.get(&f.prefix).await?.status.unwrap_or_default();
            let b = st
                .bundles
                .iter()
                .find(|b| b.object == sandbox_a)
                .context("status.bundles")?;
            ensure!(
                b.reason.as_deref() == Some(*reason)
                    && b.verified.as_deref() == Some(good_ref.as_str()),
                "{case}: status {b:?}"
            );
            ensure!(
                st.conditions
                    .iter()
                    .any(|c| c.type_ == "BundlesVerified" && c.reason == *reason),
                "{case}: BundlesVerified condition"
            );
        }

        // A tag instead of a digest: the commit is invalid and refused as a whole.
        sandbox_with_allowlist_ref(&f, "a", &format!("{}/policies/egress@latest", s.reg.host))?;
        f.commit_and_push("egress by tag")?;
        let err = sync_once(client.clone(), &cfg, None, &|| false)
            .await
            .err()
            .context("a tag reference was accepted")?;
        let msg = format!("{err:#}");
        ensure!(
            msg.contains("InvalidRef") && msg.contains("sandbox.yaml:"),
            "tag: {msg}"
        );
        ensure!(allowlist_configmap(&client, &f, "a").await?.1 == good_digest);

        // Registry down: the new bundle cannot be pulled; the good one (cached) stays.
        sandbox_with_allowlist_ref(&f, "a", &next_ref)?;
        f.commit_and_push("next allowlist")?;
        s.reg.stop();
        let o = sync_once(client.clone(), &cfg, None, &|| false)
            .await
            .map_err(|e| anyhow::anyhow!("registry down: {e}"))?;
        ensure!(
            o.bundle_failures == vec![(sandbox_a.clone(), "OciPullError".to_string())],
            "registry down: {:?}",
            o.bundle_failures
        );
        // The good bundle was re-verified from the digest cache (no registry needed): the
        // status says it is the one in use, and the sandbox's objects are rendered from it.
        let api: Api<PolicyRepo> = Api::namespaced(client.clone(), &format!("{}-status", f.prefix));
        let st = api.get(&f.prefix).await?.status.unwrap_or_default();
        ensure!(
            st.bundles
                .iter()
                .any(|b| b.object == sandbox_a && b.verified.as_deref() == Some(good_ref.as_str())),
            "registry down: status {:?}",
            st.bundles
        );
        ensure!(allowlist_configmap(&client, &f, "a").await?.0 == good_data);
        // Registry back: the new bundle is applied.
        s.reg.resume()?;
        let o = sync_once(client.clone(), &cfg, None, &|| false)
            .await
            .map_err(|e| anyhow::anyhow!("registry back: {e}"))?;
        ensure!(o.converged(), "registry back: {:?}", o.bundle_failures);
        let (data, _) = allowlist_configmap(&client, &f, "a").await?;
        ensure!(
            data.contains("files.pythonhosted.org") && !data.contains("pypi.org"),
            "next bundle: {data}"
        );
        Ok(())
    })
}

fn certificate_identity_signers() -> Result<()> {
    let s = setup()?;
    let d = s.dir.path().join("pki");
    std::fs::create_dir_all(&d)?;
    let root = root_ca(&d, "root")?;
    let other_root = root_ca(&d, "other-root")?;
    // A Fulcio-like leaf: code signing, SAN e-mail, OIDC issuer extension (v1 form, which
    // cosign reads too).
    let issuer = "https://issuer.kars.test";
    let issuer_hex: String = issuer.bytes().map(|b| format!("{b:02x}")).collect();
    leaf(
        &d,
        "root",
        "leaf",
        "/O=kars",
        &format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\nsubjectAltName=email:ci@kars.test\n1.3.6.1.4.1.57264.1.1=DER:{issuer_hex}\n"
        ),
    )?;
    let out = kars_e2e::oci::cosign()?
        .current_dir(&d)
        .args([
            "import-key-pair",
            "--key",
            "leaf.key",
            "--output-key-prefix",
            "leafcosign",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "cosign import-key-pair: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = allowlist_file(s.dir.path(), "allow.yaml", &["api.openai.com"], true)?;
    let repo_ref = format!("{}/policies/keyless", s.reg.host);
    let digest = oras_push(&format!("{repo_ref}:v1"), &file, EGRESS.media_type())?;
    let reference = format!("{repo_ref}@{digest}");
    let out = kars_e2e::oci::cosign()?
        .current_dir(&d)
        .args([
            "sign",
            "--key",
            "leafcosign.key",
            "--certificate",
            "leaf.pem",
            "--certificate-chain",
            "root.pem",
            "--tlog-upload=false",
            "--allow-insecure-registry",
            "--allow-http-registry",
            "-y",
            &reference,
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "cosign sign --certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verify = |identity: &str, roots: &Path| -> Result<(i32, Value)> {
        let out = kars_policy(
            "verify",
            "egress-allowlist",
            &[
                &reference,
                "--bundle-identity",
                identity,
                "--bundle-cert-roots",
                &roots.to_string_lossy(),
                "--json",
            ],
        )?;
        let v: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("{}{}", out.stdout, out.stderr))?;
        Ok((out.code, v))
    };
    let good = format!("ci@kars.test,{issuer}");
    let (code, v) = verify(&good, &root)?;
    ensure!(
        code == 0 && v["verified"] == true,
        "allowed identity refused: {v}"
    );
    ensure!(
        v["signer"]
            .as_str()
            .is_some_and(|x| x.starts_with("ci@kars.test")),
        "{v}"
    );
    // cosign agrees on the same identity.
    let out = kars_e2e::oci::cosign()?
        .arg("verify")
        .args([
            "--certificate-identity",
            "ci@kars.test",
            "--certificate-oidc-issuer",
            issuer,
            "--certificate-chain",
            &root.to_string_lossy(),
            "--insecure-ignore-tlog",
            "--insecure-ignore-sct",
            "--allow-insecure-registry",
            "--allow-http-registry",
            &reference,
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "cosign verify --certificate-identity: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each way it could be bypassed.
    for (case, identity, roots) in [
        (
            "another subject",
            format!("other@kars.test,{issuer}"),
            &root,
        ),
        (
            "another issuer",
            "ci@kars.test,https://evil.example".to_string(),
            &root,
        ),
        (
            "a root that did not issue it (same name)",
            good.clone(),
            &other_root,
        ),
    ] {
        let (code, v) = verify(&identity, roots)?;
        ensure!(
            code == 1 && v["reason"] == "SignerPolicyMismatch",
            "{case}: {v}"
        );
    }
    // A key-only policy does not trust the certificate's key by itself.
    let (code, v) = kars_verify("egress-allowlist", &reference, &s.public)?;
    ensure!(
        code == 1 && v["reason"] == "SignerPolicyMismatch",
        "key policy: {v}"
    );
    // An identity without a root is a usage error, not "trust everything".
    let out = kars_policy(
        "verify",
        "egress-allowlist",
        &[&reference, "--bundle-identity", &good],
    )?;
    ensure!(
        out.code == 2 && out.stderr.contains("go together"),
        "identity without roots: {} {}",
        out.code,
        out.stderr
    );
    Ok(())
}

fn registry_with_tls_and_auth() -> Result<()> {
    use base64::Engine;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // A private CA and a serving certificate for 127.0.0.1.
    let ca = root_ca(d, "ca")?;
    let (server_pem, server_key) = leaf(d, "ca", "server", "/CN=registry", SERVER_127)?;
    let hash = bcrypt::hash("s3cret", 4).map_err(|e| anyhow::anyhow!("bcrypt: {e}"))?;
    std::fs::write(d.join("htpasswd"), format!("kars:{hash}\n"))?;
    let reg = Registry::start_with(
        &d.join("registry"),
        &kars_e2e::oci::RegistrySecurity {
            tls: Some((server_pem, server_key)),
            htpasswd: Some(d.join("htpasswd")),
        },
    )?;
    let auth_file = |name: &str, user_pass: &str| -> Result<PathBuf> {
        let path = d.join(name);
        let auth = base64::engine::general_purpose::STANDARD.encode(user_pass);
        std::fs::write(
            &path,
            format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, reg.host),
        )?;
        Ok(path)
    };
    let good_auth = auth_file("config.json", "kars:s3cret")?;
    let bad_auth = auth_file("bad.json", "kars:wrong")?;
    let (key, public) = cosign_key_pair(&d.join("keys"), "trusted")?;
    let file = allowlist_file(d, "allow.yaml", &["api.openai.com"], true)?;
    let ca_s = ca.to_string_lossy().to_string();
    let good_s = good_auth.to_string_lossy().to_string();
    let sign = kars(&[
        "policy",
        "sign",
        "--kind",
        "egress-allowlist",
        "--file",
        &file.to_string_lossy(),
        "--registry",
        &reg.host,
        "--repository",
        "policies/private",
        "--key",
        &key.to_string_lossy(),
        "--registry-ca-file",
        &ca_s,
        "--registry-auth-file",
        &good_s,
    ])?;
    ensure!(
        sign.code == 0,
        "sign over TLS with basic auth: {}",
        sign.stderr
    );
    let reference = sign.stdout.trim().to_string();
    let verify = |extra: &[&str]| -> Result<(i32, Value)> {
        let mut args = vec![
            "policy",
            "verify",
            "--kind",
            "egress-allowlist",
            &reference,
            "--json",
        ];
        let keys = public.to_string_lossy().to_string();
        args.extend_from_slice(&["--bundle-keys", &keys]);
        args.extend_from_slice(extra);
        let out = kars(&args)?;
        let v: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("{}{}", out.stdout, out.stderr))?;
        Ok((out.code, v))
    };
    let (code, v) = verify(&["--registry-ca-file", &ca_s, "--registry-auth-file", &good_s])?;
    ensure!(code == 0 && v["verified"] == true, "TLS + auth: {v}");
    let bad_s = bad_auth.to_string_lossy().to_string();
    for (case, extra, says) in [
        (
            "no CA (the private CA is not trusted by default)",
            vec!["--registry-auth-file", good_s.as_str()],
            "certificate",
        ),
        (
            "no credentials",
            vec!["--registry-ca-file", ca_s.as_str()],
            "Not authorized",
        ),
        (
            "wrong password",
            vec![
                "--registry-ca-file",
                ca_s.as_str(),
                "--registry-auth-file",
                bad_s.as_str(),
            ],
            "Not authorized",
        ),
        // Plain HTTP to a TLS registry fails; nothing falls back or downgrades silently.
        (
            "plain HTTP asked, TLS served",
            vec![
                "--allow-http-loopback-registry",
                "--registry-auth-file",
                good_s.as_str(),
            ],
            "HTTPS server",
        ),
    ] {
        let (code, v) = verify(&extra)?;
        ensure!(
            code == 1
                && v["reason"] == "OciPullError"
                && v["message"].as_str().is_some_and(|m| m.contains(says)),
            "{case}: {v}"
        );
    }
    Ok(())
}
