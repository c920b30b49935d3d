//! Labels and annotations on what kars GitOps applies.

/// Label marking every object kars GitOps applies.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "kars-gitops";
/// Label naming the repository (`kars.yaml` `metadata.name`).
pub const REPOSITORY_LABEL: &str = "gitops.kars.io/repository";
/// Label naming the cluster.
pub const CLUSTER_LABEL: &str = "gitops.kars.io/cluster";
/// Prefix of our own labels and annotations.
pub const OUR_PREFIX: &str = "gitops.kars.io/";
/// Annotation naming the repository file an object comes from.
pub const SOURCE_ANNOTATION: &str = "gitops.kars.io/source";
/// Annotation with the SHA-256 of the object's own canonical JSON (computed without this
/// annotation). The applier compares it with the live object's to skip unchanged objects.
pub const OBJECT_DIGEST_ANNOTATION: &str = "gitops.kars.io/object-digest";
/// Annotation with the policy digest of a compiled ConfigMap's content (the framing of
/// [`crate::policy::digest_files`]): what the router must report for the kind it holds.
pub const CONTENT_DIGEST_ANNOTATION: &str = "gitops.kars.io/content-digest";
/// Annotation on a projected ConfigMap naming the manifest digest of the signed bundle its
/// content comes from.
pub const BUNDLE_DIGEST_ANNOTATION: &str = "gitops.kars.io/bundle-digest";
/// Annotation that keeps an object from ever being pruned (value `disabled`).
pub const PRUNE_ANNOTATION: &str = "gitops.kars.io/prune";
/// Annotation on an EgressApproval: when the grant starts (RFC 3339); expiry = this + ttl.
pub const APPROVED_AT_ANNOTATION: &str = "gitops.kars.io/approved-at";
/// Annotation on Secrets the agent generates in the cluster (value `true`).
pub const GENERATED_ANNOTATION: &str = "gitops.kars.io/generated";

/// Label naming the sandbox on everything rendered for it (and on its pods).
pub const SANDBOX_LABEL: &str = "kars.azure.com/sandbox";
/// Label naming the component of a sandbox's objects (`sandbox` on its pods).
pub const COMPONENT_LABEL: &str = "kars.azure.com/component";
/// Label naming what a compiled ConfigMap holds.
pub const ARTIFACT_LABEL: &str = "kars.azure.com/artifact";

/// Annotation the agent adds when it applies an object: the PolicyRepo that owns it
/// (`<namespace>/<name>`). An object owned by another PolicyRepo is never applied over or
/// pruned (a conflict is reported instead).
pub const OWNER_ANNOTATION: &str = "gitops.kars.io/policy-repo";
/// Annotation on a PolicyRepo asking the agent to sync now (any new value; `kars reconcile`
/// writes the time). The agent records the value it handled in
/// `status.lastHandledReconcileAt`.
pub const RECONCILE_ANNOTATION: &str = "gitops.kars.io/reconcile-requested-at";
