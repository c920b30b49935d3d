//! What rendering produces: the ordered objects the agent applies, the Secrets it generates in
//! the cluster, what each sandbox's router must report once it runs, and what was held back.
//! Also the input the render takes besides the tree: the signed bundles the agent verified.

use std::collections::BTreeMap;

use kars_contract::PolicyKind;
use serde_json::Value;

/// A verified bundle, as resolved for one reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedBundle {
    /// The manifest digest the bytes were verified under. Differs from the reference's digest
    /// when the reference did not verify and the last verified bundle is kept instead.
    pub digest: String,
    /// The canonical content bytes.
    pub bytes: Vec<u8>,
}

/// Signed-bundle contents the agent has verified, per reference (object key and field, see
/// [`crate::bundle::BundleUse`]).
#[derive(Clone, Debug, Default)]
pub struct Bundles {
    resolved: BTreeMap<(String, String), ResolvedBundle>,
}

impl Bundles {
    /// No bundles: every object taking a bundle is held back (see [`Rendered::held_back`]).
    pub fn none() -> Self {
        Bundles::default()
    }

    /// Records verified bytes for the reference at `field` of `object` (`Kind/namespace/name`).
    pub fn insert(&mut self, object: &str, field: &str, digest: impl Into<String>, bytes: Vec<u8>) {
        self.resolved.insert(
            (object.to_string(), field.to_string()),
            ResolvedBundle {
                digest: digest.into(),
                bytes,
            },
        );
    }

    /// The verified bundle for the reference at `field` of `object`.
    pub fn get(&self, object: &str, field: &str) -> Option<&ResolvedBundle> {
        self.resolved.get(&(object.to_string(), field.to_string()))
    }

    /// How many references are resolved.
    pub fn len(&self) -> usize {
        self.resolved.len()
    }

    /// True when nothing is resolved.
    pub fn is_empty(&self) -> bool {
        self.resolved.is_empty()
    }
}

/// A Secret the agent creates in the cluster (random bytes, never in Git, never overwritten).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct GeneratedSecret {
    /// Namespace.
    pub namespace: String,
    /// Secret name.
    pub name: String,
    /// Data key.
    pub key: String,
    /// Number of random bytes (stored hex-encoded).
    pub random_bytes: usize,
    /// Repository file that causes it.
    pub source: String,
}

/// One rendered object.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderedObject {
    /// The manifest.
    pub manifest: Value,
    /// Repository file it comes from.
    pub source: String,
    /// Apply wave (lower first).
    pub wave: u8,
}

impl RenderedObject {
    /// `apiVersion`.
    pub fn api_version(&self) -> &str {
        self.manifest["apiVersion"].as_str().unwrap_or_default()
    }
    /// `kind`.
    pub fn kind(&self) -> &str {
        self.manifest["kind"].as_str().unwrap_or_default()
    }
    /// `metadata.name`.
    pub fn name(&self) -> &str {
        self.manifest["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
    }
    /// `metadata.namespace`, if namespaced.
    pub fn namespace(&self) -> Option<&str> {
        self.manifest["metadata"]["namespace"].as_str()
    }
    /// `kind/namespace/name` or `kind/name`.
    pub fn key(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{}/{ns}/{}", self.kind(), self.name()),
            None => format!("{}/{}", self.kind(), self.name()),
        }
    }
}

/// One policy a router must enforce: the ConfigMap mounted for its kind and its digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountedPolicy {
    /// The ConfigMap (in the sandbox namespace).
    pub configmap: String,
    /// The policy digest of its files ([`kars_contract::policy::digest_files`]).
    pub digest: String,
    /// The CR it is compiled from, in the sandbox CR's namespace (the ToolPolicy of an AGT
    /// profile, the InferencePolicy, the KarsMemory); `None` for the sandbox's own allowlist.
    pub owner: Option<String>,
    /// The signed bundle the content comes from.
    pub bundle_digest: Option<String>,
}

/// What a sandbox's router must report at `/internal/policy-status` once its pod runs
/// ("Ready means enforced").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterExpectation {
    /// The sandbox namespace.
    pub namespace: String,
    /// The sandbox Deployment.
    pub deployment: String,
    /// The labels that select the Deployment's pods.
    pub pod_selector: BTreeMap<String, String>,
    /// Per policy kind mounted into the router.
    pub policies: BTreeMap<PolicyKind, MountedPolicy>,
    /// False for a suspended sandbox (0 replicas): no router is expected to run.
    pub should_run: bool,
}

/// The result of rendering one cluster.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// Repository name.
    pub repository: String,
    /// Cluster name.
    pub cluster: String,
    /// Objects in apply order.
    pub objects: Vec<RenderedObject>,
    /// Secrets the agent must create in-cluster.
    pub generated_secrets: Vec<GeneratedSecret>,
    /// What every rendered sandbox's router must report, by sandbox namespace.
    pub routers: Vec<RouterExpectation>,
    /// `kars.yaml` `spec.prune.allowEmpty`: an empty render may delete everything.
    pub allow_empty_prune: bool,
    /// `sha256:` over the object digests (`gitops.kars.io/object-digest`), in apply order,
    /// one per line.
    pub digest: String,
    /// Objects not rendered because a signed bundle they need is not verified (the live
    /// objects, if any, must be left as they are: no prune while this is non-empty).
    pub held_back: Vec<RenderProblem>,
}

/// Why an object could not be rendered (after validation passed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {object}: {reason}")]
pub struct RenderProblem {
    /// Repository file.
    pub file: String,
    /// Object key.
    pub object: String,
    /// What is missing.
    pub reason: String,
}
