//! Resolving every signed-bundle reference of a sync: the verified bundle, or after a failure
//! the one verified for the same object and field before, or nothing (the renderer then holds
//! the object back).

use std::collections::BTreeMap;
use std::path::Path;

use kars_renderer::Bundles;
use kars_renderer::bundle::{BundleKind, BundleUse};

use super::{BundleCache, BundleFailure, BundleRef, RegistryOptions, SignerPolicy, fetch_verified};
use crate::status::BundleStatus;

/// Verifies bundle references against a signer policy, with a cache of verified bundles.
/// The default trusts no key (every reference fails with `SignerPolicyMismatch`).
#[derive(Clone, Debug, Default)]
pub struct BundleVerifier {
    /// How to reach registries.
    pub registry: RegistryOptions,
    /// Trusted signers.
    pub signers: SignerPolicy,
    cache: Option<BundleCache>,
}

impl BundleVerifier {
    /// A verifier caching verified bundles under `cache_dir` (none: no cache).
    pub fn new(
        registry: RegistryOptions,
        signers: SignerPolicy,
        cache_dir: Option<&Path>,
    ) -> BundleVerifier {
        let cache = cache_dir.map(|d| BundleCache::new(d, &signers));
        BundleVerifier {
            registry,
            signers,
            cache,
        }
    }

    /// Verified content of `r` as a bundle of `kind`: from the cache when this digest was
    /// verified before under the same signer policy, else pulled and verified.
    pub async fn verify(&self, kind: BundleKind, r: &BundleRef) -> Result<Vec<u8>, BundleFailure> {
        r.reference()?;
        if self.signers.is_empty() {
            return Err(BundleFailure::SignerPolicyMismatch(
                "no signers are configured (agent flags --bundle-keys, or --bundle-identity with --bundle-cert-roots); no bundle can verify"
                    .into(),
            ));
        }
        let cache_key = format!("{}-{}", kind.name(), r.digest);
        if let Some(bytes) = self.cache.as_ref().and_then(|c| c.get(&cache_key)) {
            return Ok(bytes);
        }
        let bytes = fetch_verified(&self.registry, &self.signers, kind, r)
            .await?
            .content;
        if let Some(c) = &self.cache {
            c.put(&cache_key, &bytes);
        }
        Ok(bytes)
    }

    /// Resolves every reference: the verified bundle, or after a failure the bundle verified
    /// for the same object and field before (`previous`, the last status), or nothing (the
    /// renderer then holds the object back). Returns what to render with and the new status.
    pub async fn resolve(
        &self,
        uses: &[BundleUse],
        previous: &[BundleStatus],
    ) -> (Bundles, Vec<BundleStatus>) {
        let mut bundles = Bundles::none();
        let mut statuses = Vec::with_capacity(uses.len());
        let mut seen: BTreeMap<(BundleKind, BundleRef), Result<Vec<u8>, BundleFailure>> =
            BTreeMap::new();
        for u in uses {
            let r = BundleRef::from_api(&u.reference);
            let result = match seen.get(&(u.kind, r.clone())) {
                Some(done) => done.clone(),
                None => {
                    let done = self.verify(u.kind, &r).await;
                    seen.insert((u.kind, r.clone()), done.clone());
                    done
                }
            };
            let mut st = BundleStatus {
                object: u.object.clone(),
                field: u.field.to_string(),
                reference: r.to_string(),
                ..BundleStatus::default()
            };
            match result {
                Ok(bytes) => {
                    bundles.insert(&u.object, u.field, r.digest.clone(), bytes);
                    st.verified = Some(r.to_string());
                }
                Err(failure) => {
                    tracing::warn!(object = %u.object, field = u.field, reference = %r, reason = %failure.reason(), "bundle did not verify: {failure}");
                    st.reason = Some(failure.reason().as_str().to_string());
                    st.message = Some(failure.to_string());
                    let earlier = previous
                        .iter()
                        .find(|p| p.object == u.object && p.field == u.field)
                        .and_then(|p| p.verified.as_deref())
                        .and_then(BundleRef::parse)
                        .filter(|e| *e != r);
                    if let Some(e) = earlier {
                        match self.verify(u.kind, &e).await {
                            Ok(bytes) => {
                                bundles.insert(&u.object, u.field, e.digest.clone(), bytes);
                                st.verified = Some(e.to_string());
                            }
                            Err(again) => {
                                tracing::warn!(object = %u.object, reference = %e, "the last verified bundle no longer verifies either: {again}");
                            }
                        }
                    }
                }
            }
            statuses.push(st);
        }
        (bundles, statuses)
    }
}
