//! Rendering: the validated objects of one cluster in, the ordered list of Kubernetes objects
//! the agent applies out.
//!
//! For every KarsSandbox this produces what the upstream kars controller would create (see
//! `docs/architecture.md` and `shared/kars-api.md` §2): namespace `kars-<name>`, ServiceAccount,
//! spawner ClusterRoleBinding, NetworkPolicy, the compiled-policy ConfigMaps (each annotated with
//! its digest), the Deployment (egress-guard init container, agent container, router sidecar) and
//! the Service. The kars CRs themselves are rendered too, as written plus our ownership labels.
//! Every object carries the labels `app.kubernetes.io/managed-by=kars-gitops`,
//! `gitops.kars.io/repository` and `gitops.kars.io/cluster`, and the annotation
//! `gitops.kars.io/source` naming the file it comes from.
//!
//! Nothing here reads a clock, the environment or a random source: the output is a pure function
//! of the tree, the cluster name and the resolved bundles.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::api::{self, KarsSandbox, RuntimeKind};
use crate::canonical;
use crate::repo::{ClusterView, Index, SourceObject};
use crate::time::{format_rfc3339, parse_iso8601_duration, parse_rfc3339};
use crate::validate::DEFAULT_TOOL_POLICY;

/// Label marking every object kars GitOps applies.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Its value.
pub const MANAGED_BY: &str = "kars-gitops";
/// Label naming the repository (`kars.yaml` `metadata.name`).
pub const REPOSITORY_LABEL: &str = "gitops.kars.io/repository";
/// Label naming the cluster.
pub const CLUSTER_LABEL: &str = "gitops.kars.io/cluster";
/// Annotation naming the repository file an object comes from.
pub const SOURCE_ANNOTATION: &str = "gitops.kars.io/source";
/// Annotation with the SHA-256 of the object's own canonical JSON (computed without this
/// annotation). The applier compares it with the live object's to skip unchanged objects.
pub const OBJECT_DIGEST_ANNOTATION: &str = "gitops.kars.io/object-digest";
/// Annotation with the SHA-256 of a compiled ConfigMap's content.
pub const CONTENT_DIGEST_ANNOTATION: &str = "gitops.kars.io/content-digest";

const SANDBOX_LABEL: &str = "kars.azure.com/sandbox";
const COMPONENT_LABEL: &str = "kars.azure.com/component";
const ARTIFACT_LABEL: &str = "kars.azure.com/artifact";
const ROUTER_PORT: i64 = 8443;
const METRICS_PORT: i64 = 9090;
const FORWARD_PROXY_PORT: i64 = 8444;
const AGENT_UID: i64 = 1000;
const ROUTER_UID: i64 = 1001;

/// Annotation on a projected ConfigMap naming the manifest digest of the signed bundle its
/// content comes from.
pub const BUNDLE_DIGEST_ANNOTATION: &str = "gitops.kars.io/bundle-digest";

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

/// Normalises an egress host the way upstream does (trim, lowercase, no trailing dot) and
/// refuses what the router could never match safely.
pub fn normalize_host(host: &str) -> Result<String, String> {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if h.is_empty() {
        return Err("empty host".into());
    }
    if !h.is_ascii() {
        return Err(format!(
            "{host:?} is not ASCII; write internationalised names in punycode (xn--…)"
        ));
    }
    if h.contains('*') {
        return Err(format!(
            "{host:?}: wildcards are not allowed; list the host (subdomains of a listed host are allowed)"
        ));
    }
    if h.parse::<std::net::IpAddr>().is_ok() || h.starts_with('[') {
        return Err(format!(
            "{host:?} is an IP literal; allowlist host names (the router refuses IP literals)"
        ));
    }
    if h.len() > 253 || !h.split('.').all(crate::cel::is_dns_label) {
        return Err(format!("{host:?} is not a valid host name"));
    }
    Ok(h)
}

fn wave(kind: &str, api_version: &str) -> u8 {
    match kind {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        "ServiceAccount" | "ClusterRole" | "Role" => 2,
        "ClusterRoleBinding" | "RoleBinding" => 3,
        "ConfigMap" | "Secret" | "NetworkPolicy" | "ResourceQuota" | "LimitRange"
        | "PriorityClass" => 4,
        _ if api_version == crate::crds::API_VERSION => match kind {
            "InferencePolicy" | "ToolPolicy" | "McpServer" | "KarsMemory" | "KarsAuthConfig"
            | "TrustGraph" | "A2AAgent" => 5,
            "KarsSandbox" => 6,
            _ => 7,
        },
        "Service" => 8,
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "CronJob" => 9,
        _ => 10,
    }
}

struct Ctx<'a> {
    repository: &'a str,
    cluster: &'a str,
    images: &'a crate::config::Images,
    bundles: &'a Bundles,
    objects: Vec<RenderedObject>,
    secrets: Vec<GeneratedSecret>,
    problems: Vec<RenderProblem>,
    held_back: Vec<RenderProblem>,
    /// Set while rendering a sandbox that needs a bundle that is not verified: the sandbox and
    /// everything it implies are then dropped from the output.
    hold: Option<String>,
}

impl Ctx<'_> {
    fn labels(&self, extra: &[(&str, &str)]) -> Value {
        let mut m = Map::new();
        for (k, v) in extra {
            m.insert((*k).to_string(), json!(v));
        }
        m.insert(MANAGED_BY_LABEL.into(), json!(MANAGED_BY));
        m.insert(REPOSITORY_LABEL.into(), json!(self.repository));
        m.insert(CLUSTER_LABEL.into(), json!(self.cluster));
        Value::Object(m)
    }

    fn push(&mut self, mut manifest: Value, source: &str) {
        let meta = &mut manifest["metadata"];
        if !meta["annotations"].is_object() {
            meta["annotations"] = json!({});
        }
        meta["annotations"][SOURCE_ANNOTATION] = json!(source);
        let w = wave(
            manifest["kind"].as_str().unwrap_or_default(),
            manifest["apiVersion"].as_str().unwrap_or_default(),
        );
        self.objects.push(RenderedObject {
            manifest,
            source: source.to_string(),
            wave: w,
        });
    }

    /// The verified bundle for `field` of `o`, or marks the sandbox being rendered as held back.
    fn bundle_or_hold(
        &mut self,
        o: &SourceObject,
        field: &str,
        r: &api::OciArtifactRef,
    ) -> Option<ResolvedBundle> {
        let found = self.bundles.get(&o.key(), field).cloned();
        if found.is_none() && self.hold.is_none() {
            self.hold = Some(format!(
                "{} {field} {}/{}@{} is not verified and no earlier verified bundle exists",
                o.key(),
                r.registry,
                r.repository,
                r.digest
            ));
        }
        found
    }

    /// The verified JSON bundle for `field` of `o` with its digest; holds the sandbox back when
    /// it is not verified or (`what` names the kind) not JSON.
    fn json_bundle_or_hold(
        &mut self,
        o: &SourceObject,
        field: &str,
        r: &api::OciArtifactRef,
        what: &str,
    ) -> Option<(Value, String)> {
        let b = self.bundle_or_hold(o, field, r)?;
        match serde_json::from_slice::<Value>(&b.bytes) {
            Ok(v) => Some((v, b.digest)),
            Err(e) => {
                self.hold = Some(format!(
                    "the verified {what} bundle {} is not JSON: {e}",
                    b.digest
                ));
                None
            }
        }
    }

    fn problem(&mut self, o: &SourceObject, reason: String) {
        self.problems.push(RenderProblem {
            file: o.file.clone(),
            object: o.key(),
            reason,
        });
    }
}

/// Renders what one cluster receives. The view must have passed validation.
pub fn render_cluster(
    view: &ClusterView<'_>,
    bundles: &Bundles,
) -> Result<Rendered, Vec<RenderProblem>> {
    let mut ctx = Ctx {
        repository: &view.config.metadata.name,
        cluster: &view.cluster.name,
        images: &view.config.spec.images,
        bundles,
        objects: Vec::new(),
        secrets: Vec::new(),
        problems: Vec::new(),
        held_back: Vec::new(),
        hold: None,
    };
    let index = Index::new(view.objects.iter());
    let mut approvals: ApprovalsBySandbox<'_> = BTreeMap::new();
    for a in view
        .objects
        .iter()
        .filter(|a| a.kind == "EgressApproval" && a.is_kars())
    {
        if let Ok(ea) = a.typed::<api::EgressApproval>() {
            approvals
                .entry((
                    a.namespace.clone().unwrap_or_default(),
                    ea.spec.sandbox.clone(),
                ))
                .or_default()
                .push((a, ea));
        }
    }

    // Namespaces the repository's namespaced objects live in.
    let declared_namespaces: BTreeSet<&str> = view
        .objects
        .iter()
        .filter(|o| o.kind == "Namespace" && !o.is_kars())
        .map(|o| o.name.as_str())
        .collect();
    let mut used: BTreeMap<&str, &str> = BTreeMap::new();
    for o in &view.objects {
        if let Some(ns) = o.namespace.as_deref() {
            used.entry(ns).or_insert(&o.file);
        }
    }
    for (ns, first_file) in used {
        if declared_namespaces.contains(ns)
            || view.config.spec.external_namespaces.iter().any(|e| e == ns)
        {
            continue;
        }
        let labels = ctx.labels(&[]);
        ctx.push(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}),
            first_file,
        );
    }

    for o in &view.objects {
        // Every object as written, plus our labels.
        let mut manifest = o.node.to_json();
        if let Some(ns) = &o.namespace {
            manifest["metadata"]["namespace"] = json!(ns);
        }
        let mut labels = manifest["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Value::Object(ours) = ctx.labels(&[]) {
            labels.extend(ours);
        }
        manifest["metadata"]["labels"] = Value::Object(labels);
        // An object whose own bundle reference did not verify is held back (its live copy, if
        // any, keeps the reference that did verify); what it projects uses the last verified
        // bundle when there is one.
        let unverified: Vec<String> = crate::bundle::uses_of(o)
            .iter()
            .filter_map(|u| match ctx.bundles.get(&u.object, u.field) {
                Some(r) if r.digest == u.reference.digest => None,
                Some(r) => Some(format!(
                    "{} {} is not verified; the last verified bundle {} stays in use",
                    u.field,
                    u.location(),
                    r.digest
                )),
                None => Some(format!(
                    "{} {} is not verified and no earlier verified bundle exists",
                    u.field,
                    u.location()
                )),
            })
            .collect();
        let mark = (ctx.objects.len(), ctx.secrets.len());
        if unverified.is_empty() {
            ctx.push(manifest, &o.file);
        } else {
            ctx.held_back.push(RenderProblem {
                file: o.file.clone(),
                object: o.key(),
                reason: unverified.join("; "),
            });
        }

        if o.kind == "KarsSandbox" && o.is_kars() {
            match o.typed::<KarsSandbox>() {
                Ok(sb) => {
                    ctx.hold = None;
                    render_sandbox(&mut ctx, o, &sb, &index, &approvals);
                    if let Some(why) = ctx.hold.take() {
                        ctx.objects.truncate(mark.0);
                        ctx.secrets.truncate(mark.1);
                        let reason = format!(
                            "the sandbox and every object it implies (namespace {}) are held back: {why}",
                            sandbox_namespace(&o.name)
                        );
                        match ctx.held_back.last_mut() {
                            Some(h) if h.object == o.key() => {
                                h.reason = format!("{}; {reason}", h.reason)
                            }
                            _ => ctx.held_back.push(RenderProblem {
                                file: o.file.clone(),
                                object: o.key(),
                                reason,
                            }),
                        }
                    }
                }
                Err(e) => ctx.problem(o, e),
            }
        }
    }

    if !ctx.problems.is_empty() {
        return Err(ctx.problems);
    }
    let mut objects = ctx.objects;
    objects.sort_by_cached_key(|o| {
        (
            o.wave,
            o.kind().to_string(),
            o.namespace().unwrap_or("").to_string(),
            o.name().to_string(),
        )
    });
    // The set digest covers every object's digest in apply order; each object digest covers the
    // object's canonical JSON (without the digest annotation itself).
    let mut set = Vec::with_capacity(objects.len() * 72);
    for o in &mut objects {
        let digest = canonical::json_sha256(&o.manifest);
        set.extend_from_slice(digest.as_bytes());
        set.push(b'\n');
        o.manifest["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION] = json!(digest);
    }
    let mut secrets = ctx.secrets;
    secrets.sort();
    Ok(Rendered {
        repository: view.config.metadata.name.clone(),
        cluster: view.cluster.name.clone(),
        digest: canonical::sha256(&set),
        objects,
        generated_secrets: secrets,
        allow_empty_prune: view.config.spec.prune.allow_empty,
        held_back: ctx.held_back,
    })
}

/// The sandbox namespace (`kars-<name>`), independent of the CR's namespace (upstream rule).
pub fn sandbox_namespace(name: &str) -> String {
    format!("kars-{name}")
}

fn config_map(
    ctx: &Ctx<'_>,
    ns: &str,
    name: &str,
    sandbox: &str,
    artifact: &str,
    data: Value,
    annotations: Value,
) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": ctx.labels(&[(SANDBOX_LABEL, sandbox), (ARTIFACT_LABEL, artifact)]),
            "annotations": annotations,
        },
        "data": data,
    })
}

/// A compiled policy file: its ConfigMap key, bytes, and upstream-style digest.
struct Compiled {
    file: &'static str,
    body: String,
    digest: String,
}

fn compiled(file: &'static str, body: String) -> Compiled {
    let digest = canonical::policy_digest(file, body.as_bytes());
    Compiled { file, body, digest }
}

/// The egress allowlist file: hosts normalised, port default 443, sorted, deduplicated.
pub fn compile_allowlist(endpoints: &[(String, i64)]) -> String {
    let set: BTreeSet<(String, i64)> = endpoints
        .iter()
        .filter_map(|(h, p)| normalize_host(h).ok().map(|h| (h, *p)))
        .collect();
    let eps: Vec<Value> = set
        .into_iter()
        .map(|(host, port)| json!({"host": host, "port": port}))
        .collect();
    canonical::json(&json!({"schemaVersion": 1, "endpoints": eps}))
}

/// EgressApprovals grouped by (namespace, sandbox).
type ApprovalsBySandbox<'a> =
    BTreeMap<(String, String), Vec<(&'a SourceObject, api::EgressApproval)>>;

fn render_sandbox(
    ctx: &mut Ctx<'_>,
    o: &SourceObject,
    sb: &KarsSandbox,
    index: &Index<'_>,
    approvals: &ApprovalsBySandbox<'_>,
) {
    let name = o.name.as_str();
    let cr_ns = o.namespace.as_deref().unwrap_or_default();
    let ns = sandbox_namespace(name);
    let src = o.file.as_str();
    let spec = &sb.spec;
    let sandbox_labels = |ctx: &Ctx<'_>| ctx.labels(&[(SANDBOX_LABEL, name)]);

    // Namespace.
    let ns_labels = ctx.labels(&[
        ("app.kubernetes.io/name", "kars"),
        ("app.kubernetes.io/component", "sandbox"),
        (SANDBOX_LABEL, name),
        ("kars.azure.com/role", "sandbox"),
        ("kars.azure.com/isolated", "strict"),
        ("pod-security.kubernetes.io/enforce", "privileged"),
        ("pod-security.kubernetes.io/audit", "baseline"),
        ("pod-security.kubernetes.io/warn", "baseline"),
    ]);
    ctx.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": ns_labels}}), src);

    // Identity.
    let sa_labels = sandbox_labels(ctx);
    ctx.push(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sandbox", "namespace": ns, "labels": sa_labels}}),
        src,
    );
    if !spec.azure_services.is_empty() {
        let mut ann = Map::new();
        for (i, s) in spec.azure_services.iter().enumerate() {
            ann.insert(format!("kars.azure.com/service-{i}"), json!(s.service));
            if let Some(a) = &s.account {
                ann.insert(format!("kars.azure.com/service-{i}-account"), json!(a));
            }
            if !s.permissions.is_empty() {
                ann.insert(
                    format!("kars.azure.com/service-{i}-permissions"),
                    json!(s.permissions.join(",")),
                );
            }
        }
        let labels = sandbox_labels(ctx);
        ctx.push(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": ann}}),
            src,
        );
    }
    let crb_labels = sandbox_labels(ctx);
    ctx.push(
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("kars-spawner-{name}"), "labels": crb_labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kars-sandbox-spawner"},
            "subjects": [{"kind": "ServiceAccount", "name": "sandbox", "namespace": ns}],
        }),
        src,
    );
    for (secret, bytes) in [("gateway-token", 16), ("router-admin-token", 32)] {
        ctx.secrets.push(GeneratedSecret {
            namespace: ns.clone(),
            name: secret.to_string(),
            key: "token".to_string(),
            random_bytes: bytes,
            source: src.to_string(),
        });
    }

    // Egress allowlist: the verified bundle when referenced, else the inline endpoints.
    let np = spec.network_policy.as_ref();
    let egress_mode = np.map_or("Learn", |n| n.egress_mode.as_str());
    let (endpoints, bundle_digest): (Vec<(String, i64)>, Option<String>) =
        match np.and_then(|n| n.allowlist_ref.as_ref()) {
            None => (
                np.map(|n| {
                    n.allowed_endpoints
                        .iter()
                        .map(|e| (e.host.clone(), e.port))
                        .collect()
                })
                .unwrap_or_default(),
                None,
            ),
            Some(r) => {
                let Some(b) = ctx.bundle_or_hold(o, "spec.networkPolicy.allowlistRef", r) else {
                    return;
                };
                match crate::bundle::allowlist_endpoints(&b.bytes) {
                    Ok(eps) => (eps, Some(b.digest)),
                    Err(e) => {
                        ctx.hold = Some(format!(
                            "the verified allowlist bundle {} does not parse: {e}",
                            b.digest
                        ));
                        return;
                    }
                }
            }
        };
    let allow = compiled("allowlist.json", compile_allowlist(&endpoints));
    let mut allow_annotations = json!({"kars.azure.com/egress-allowlist-digest": allow.digest, CONTENT_DIGEST_ANNOTATION: allow.digest});
    if let Some(d) = &bundle_digest {
        allow_annotations[BUNDLE_DIGEST_ANNOTATION] = json!(d);
    }
    let allow_cm = config_map(
        ctx,
        &ns,
        &format!("karssandbox-{name}-egress-allowlist"),
        name,
        "egress-allowlist",
        json!({allow.file: allow.body}),
        allow_annotations,
    );
    ctx.push(allow_cm, src);

    // Egress approvals for this sandbox (same namespace as the CR).
    let mut extra_ports: BTreeSet<i64> = endpoints
        .iter()
        .map(|(_, p)| *p)
        .filter(|p| *p != 443)
        .collect();
    let no_approvals = Vec::new();
    let mine = approvals
        .get(&(cr_ns.to_string(), name.to_string()))
        .unwrap_or(&no_approvals);
    let mut approval_files = BTreeMap::new();
    for (a, ea) in mine {
        let approved_at = a
            .annotation(crate::repo::APPROVED_AT_ANNOTATION)
            .and_then(parse_rfc3339);
        let ttl = parse_iso8601_duration(&ea.spec.ttl).ok();
        let (Some(start), Some(ttl)) = (approved_at, ttl) else {
            ctx.problem(
                a,
                "approved-at annotation or ttl does not parse (validation should have caught this)"
                    .into(),
            );
            continue;
        };
        let hosts: Vec<(String, i64)> = ea
            .spec
            .hosts
            .iter()
            .map(|h| (h.host.clone(), i64::from(h.port.unwrap_or(443))))
            .collect();
        extra_ports.extend(hosts.iter().map(|(_, p)| *p).filter(|p| *p != 443));
        let hosts_json: Value = serde_json::from_str::<Value>(&compile_allowlist(&hosts))
            .map(|v| v["endpoints"].clone())
            .unwrap_or_default();
        let mut body = json!({
            "schemaVersion": 1,
            "approvalName": a.name,
            "sandbox": name,
            "hosts": hosts_json,
            "reason": ea.spec.reason,
            "effectiveAt": format_rfc3339(start),
            "expiresAt": format_rfc3339(start.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX))),
        });
        if let Some(t) = &ea.spec.ticket {
            body["ticket"] = json!(t);
        }
        approval_files.insert(format!("approval-{}.json", a.name), canonical::json(&body));
    }
    let framed: Vec<(&str, &[u8])> = approval_files
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    let approvals_digest = canonical::policy_digest_files(&framed);
    let approvals_cm = config_map(
        ctx,
        &ns,
        &format!("karssandbox-{name}-egress-approvals"),
        name,
        "egress-approvals",
        Value::Object(
            approval_files
                .into_iter()
                .map(|(k, v)| (k, json!(v)))
                .collect(),
        ),
        json!({CONTENT_DIGEST_ANNOTATION: approvals_digest}),
    );
    ctx.push(approvals_cm, src);

    // Governance.
    let (governance_on, tool_policy) = match &spec.governance {
        None => (true, Some(DEFAULT_TOOL_POLICY.to_string())),
        Some(g) => (
            g.enabled,
            g.tool_policy_ref.as_ref().and_then(|r| r.name.clone()),
        ),
    };
    let mut volumes: Vec<Value> = Vec::new();
    let mut router_mounts: Vec<Value> = Vec::new();
    let mut agent_mounts: Vec<Value> = Vec::new();
    let mut router_env: Vec<(String, String)> = Vec::new();
    let mount_cm =
        |volumes: &mut Vec<Value>, mounts: &mut Vec<Value>, vol: &str, cm: &str, path: &str| {
            volumes.push(json!({"name": vol, "configMap": {"name": cm, "optional": true}}));
            mounts.push(json!({"name": vol, "mountPath": path, "readOnly": true}));
        };
    mount_cm(
        &mut volumes,
        &mut router_mounts,
        "egress-allowlist",
        &format!("karssandbox-{name}-egress-allowlist"),
        "/etc/kars/egress",
    );
    router_env.push(("EGRESS_ALLOWLIST_DIR".into(), "/etc/kars/egress".into()));
    mount_cm(
        &mut volumes,
        &mut router_mounts,
        "egress-approvals",
        &format!("karssandbox-{name}-egress-approvals"),
        "/etc/kars/egress-approvals",
    );
    router_env.push((
        "EGRESS_APPROVAL_DIR".into(),
        "/etc/kars/egress-approvals".into(),
    ));

    if governance_on
        && let Some(tp_name) = &tool_policy
        && let Some(tp_obj) = index.get("ToolPolicy", Some(cr_ns), tp_name)
    {
        {
            match tp_obj.typed::<api::ToolPolicy>() {
                Ok(tp) => {
                    let profile = tp.spec.agt_profile.clone().unwrap_or_default();
                    let (body, bundle_digest) = match (&profile.inline, &profile.bundle_ref) {
                        (_, Some(r)) => {
                            match ctx.bundle_or_hold(tp_obj, "spec.agtProfile.bundleRef", r) {
                                Some(b) => (
                                    Some(String::from_utf8_lossy(&b.bytes).into_owned()),
                                    Some(b.digest),
                                ),
                                None => (None, None),
                            }
                        }
                        (Some(inline), None) => (Some(inline.clone()), None),
                        (None, None) => (None, None),
                    };
                    if let Some(body) = body {
                        let agt = compiled("agt-profile.yaml", body);
                        let summary = json!({
                            "appliesTo": tp.spec.applies_to,
                            "approval": tp.spec.approval,
                            "commerce": tp.spec.commerce,
                            "displayName": tp.spec.display_name,
                            "rateLimit": tp.spec.rate_limit,
                        });
                        let cm_name = format!("toolpolicy-{tp_name}-profile");
                        let mut annotations = json!({"kars.azure.com/agt-profile-digest": agt.digest, CONTENT_DIGEST_ANNOTATION: agt.digest, "kars.azure.com/toolpolicy": tp_name});
                        if let Some(d) = bundle_digest {
                            annotations[BUNDLE_DIGEST_ANNOTATION] = json!(d);
                        }
                        let cm = config_map(
                            ctx,
                            &ns,
                            &cm_name,
                            name,
                            "compiled-profile",
                            json!({"agt-profile.yaml": agt.body, "profile.json": canonical::json(&summary)}),
                            annotations,
                        );
                        ctx.push(cm, src);
                        mount_cm(
                            &mut volumes,
                            &mut router_mounts,
                            "agt-policy",
                            &cm_name,
                            "/etc/agt/policies",
                        );
                        agent_mounts.push(json!({"name": "agt-policy", "mountPath": "/etc/agt/policies", "readOnly": true}));
                        router_env.push(("AGT_POLICY_DIR".into(), "/etc/agt/policies".into()));
                    }
                }
                Err(e) => ctx.problem(tp_obj, e),
            }
        }
    }

    // Inference policy.
    let mut model = String::new();
    let mut daily_budget = String::new();
    let mut per_request = String::new();
    if let Some(ip_obj) = index.get("InferencePolicy", Some(cr_ns), &spec.inference_ref.name) {
        match ip_obj.typed::<api::InferencePolicy>() {
            Ok(ip) => {
                let mut bundle_digest = None;
                let content = match &ip.spec.bundle_ref {
                    Some(r) => ctx
                        .json_bundle_or_hold(ip_obj, "spec.bundleRef", r, "inference-policy")
                        .map(|(v, digest)| {
                            bundle_digest = Some(digest);
                            v
                        }),
                    None => Some(json!({
                        "tokenBudget": ip.spec.token_budget,
                        "contentSafety": ip.spec.content_safety,
                        "modelPreference": ip.spec.model_preference,
                        "displayName": ip.spec.display_name,
                    })),
                };
                if let Some(mut content) = content {
                    content["appliesTo"] = json!(ip.spec.applies_to);
                    model = content["modelPreference"]["primary"]["deployment"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    if let Some(d) = content["tokenBudget"]["dailyTokens"].as_u64() {
                        daily_budget = d.to_string();
                    }
                    if let Some(p) = content["tokenBudget"]["perRequestTokens"].as_u64() {
                        per_request = p.to_string();
                    }
                    let inf = compiled("inference-policy.json", canonical::json(&content));
                    let ip_name = &spec.inference_ref.name;
                    let cm_name = format!("inferencepolicy-{ip_name}-profile");
                    let mut annotations = json!({"kars.azure.com/inference-policy-digest": inf.digest, CONTENT_DIGEST_ANNOTATION: inf.digest, "kars.azure.com/inferencepolicy": ip_name});
                    if let Some(d) = bundle_digest {
                        annotations[BUNDLE_DIGEST_ANNOTATION] = json!(d);
                    }
                    let cm = config_map(
                        ctx,
                        &ns,
                        &cm_name,
                        name,
                        "inference-policy-profile",
                        json!({inf.file: inf.body}),
                        annotations,
                    );
                    ctx.push(cm, src);
                    mount_cm(
                        &mut volumes,
                        &mut router_mounts,
                        "inference-policy",
                        &cm_name,
                        "/etc/kars/inference",
                    );
                    router_env.push(("INFERENCE_POLICY_DIR".into(), "/etc/kars/inference".into()));
                }
            }
            Err(e) => ctx.problem(ip_obj, e),
        }
    }

    // Memory binding.
    if let Some(m) = &spec.memory_ref
        && let Some(mem_obj) = index.get("KarsMemory", Some(cr_ns), &m.name)
    {
        match mem_obj.typed::<api::KarsMemory>() {
            Ok(mem) => {
                let mut bundle_digest = None;
                let content = match &mem.spec.bundle_ref {
                    Some(r) => ctx
                        .json_bundle_or_hold(mem_obj, "spec.bundleRef", r, "memory-binding")
                        .map(|(v, digest)| {
                            bundle_digest = Some(digest);
                            v
                        }),
                    None => Some(json!({
                        "storeName": mem.spec.store_name,
                        "scope": mem.spec.scope,
                        "retentionDays": mem.spec.retention_days,
                        "deleteOnSandboxDelete": mem.spec.delete_on_sandbox_delete,
                        "displayName": mem.spec.display_name,
                    })),
                };
                if let Some(mut content) = content {
                    content["sandboxRef"] = json!({"name": mem.spec.sandbox_ref.name});
                    let b = compiled("binding.json", canonical::json(&content));
                    let cm_name = format!("karsmemory-{}-binding", m.name);
                    let mut annotations = json!({"kars.azure.com/claw-memory-digest": b.digest, CONTENT_DIGEST_ANNOTATION: b.digest, "kars.azure.com/karsmemory": m.name});
                    if let Some(d) = bundle_digest {
                        annotations[BUNDLE_DIGEST_ANNOTATION] = json!(d);
                    }
                    let cm = config_map(
                        ctx,
                        &ns,
                        &cm_name,
                        name,
                        "claw-memory-binding",
                        json!({b.file: b.body}),
                        annotations,
                    );
                    ctx.push(cm, src);
                    mount_cm(
                        &mut volumes,
                        &mut router_mounts,
                        "claw-memory-binding",
                        &cm_name,
                        "/etc/kars/memory",
                    );
                    router_env.push(("MEMORY_BINDING_DIR".into(), "/etc/kars/memory".into()));
                }
            }
            Err(e) => ctx.problem(mem_obj, e),
        }
    }

    // MCP servers the sandbox uses.
    if governance_on && let Some(g) = &spec.governance {
        let names: BTreeSet<String> = g
            .mcp_server_refs
            .iter()
            .chain(g.mcp_server_ref.iter())
            .filter_map(|r| r.name.clone())
            .collect();
        for m in names {
            let Some(mcp_obj) = index.get("McpServer", Some(cr_ns), &m) else {
                continue;
            };
            let Ok(mcp) = mcp_obj.typed::<api::McpServer>() else {
                continue;
            };
            let mut content = json!({
                "name": m,
                "url": mcp.spec.url,
                "oauth": mcp.spec.oauth,
                "productionMode": mcp.spec.production_mode,
                "scopes": mcp.spec.scopes,
                "allowedTools": mcp.spec.allowed_tools,
                "bearerFromEnv": mcp.spec.bearer_from_env,
            });
            let mut bundle_digest = None;
            if let Some(r) = &mcp.spec.bundle_ref {
                // The bundle carries the content fields; name and bearerFromEnv stay the CR's.
                let Some(b) = ctx.bundle_or_hold(mcp_obj, "spec.bundleRef", r) else {
                    continue;
                };
                match serde_json::from_slice::<Value>(&b.bytes) {
                    Ok(Value::Object(fields)) => {
                        for (k, v) in fields {
                            if k != "displayName" {
                                content[k] = v;
                            }
                        }
                        bundle_digest = Some(b.digest);
                    }
                    _ => {
                        ctx.hold = Some(format!(
                            "the verified mcp-server bundle {} is not a JSON object",
                            b.digest
                        ));
                        continue;
                    }
                }
            }
            let c = compiled("server.json", canonical::json(&content));
            let cm_name = format!("mcp-{m}-server");
            let cm = config_map(
                ctx,
                &ns,
                &cm_name,
                name,
                "mcp-server",
                json!({c.file: c.body}),
                {
                    let mut a = json!({CONTENT_DIGEST_ANNOTATION: c.digest, "kars.azure.com/mcp-server": m});
                    if let Some(d) = bundle_digest {
                        a[BUNDLE_DIGEST_ANNOTATION] = json!(d);
                    }
                    a
                },
            );
            ctx.push(cm, src);
            mount_cm(
                &mut volumes,
                &mut router_mounts,
                &format!("mcp-{m}"),
                &cm_name,
                &format!("/etc/kars/mcp/{m}"),
            );
        }
        if !g.mcp_server_refs.is_empty() || g.mcp_server_ref.is_some() {
            router_env.push(("MCP_SERVERS_DIR".into(), "/etc/kars/mcp".into()));
        }
    }

    // NetworkPolicy: default deny with the allowed egress.
    let mut egress = vec![
        json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}, {"ipBlock": {"cidr": "10.0.0.10/32"}}],
               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}),
        json!({"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"protocol": "TCP", "port": 80}]}),
        json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}],
               "ports": [{"protocol": "TCP", "port": 443}]}),
        json!({"to": [{"namespaceSelector": {"matchLabels": {"kars.azure.com/role": "sandbox"}}}], "ports": [{"protocol": "TCP", "port": ROUTER_PORT}]}),
        json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agentmesh"}}}],
               "ports": tcp_ports(&[8765, 8080, 8083, 8082])}),
        json!({"to": [{"namespaceSelector": {"matchLabels": {"app.kubernetes.io/name": "kars", "app.kubernetes.io/component": "system"}}}],
               "ports": [{"protocol": "TCP", "port": 5000}]}),
    ];
    for p in &extra_ports {
        egress.push(json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": p}]}));
    }
    let system_ns = json!({"namespaceSelector": {"matchLabels": {"app.kubernetes.io/name": "kars", "app.kubernetes.io/component": "system"}}});
    let mut ingress =
        vec![json!({"from": [system_ns], "ports": [{"protocol": "TCP", "port": ROUTER_PORT}]})];
    if governance_on {
        ingress.push(json!({"from": [{"namespaceSelector": {"matchLabels": {"kars.azure.com/role": "sandbox"}}}],
            "ports": tcp_ports(&[ROUTER_PORT, 18789, 18791])}));
    }
    let np_labels = sandbox_labels(ctx);
    ctx.push(
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "sandbox-policy", "namespace": ns, "labels": np_labels},
            "spec": {
                "podSelector": {"matchLabels": {COMPONENT_LABEL: "sandbox"}},
                "policyTypes": ["Egress", "Ingress"],
                "egress": egress,
                "ingress": ingress,
            },
        }),
        src,
    );

    // Deployment.
    let deployment = sandbox_deployment(
        ctx,
        o,
        sb,
        &ns,
        cr_ns,
        egress_mode,
        governance_on,
        &model,
        DeploymentMounts {
            volumes,
            router_mounts,
            agent_mounts,
            router_env,
            daily_budget,
            per_request,
        },
    );
    ctx.push(deployment, src);

    if governance_on {
        let mut ports = vec![
            json!({"name": "inference", "port": ROUTER_PORT, "targetPort": ROUTER_PORT, "protocol": "TCP"}),
        ];
        if spec.runtime.kind == RuntimeKind::Hermes {
            ports.push(
                json!({"name": "gateway", "port": 18789, "targetPort": 18789, "protocol": "TCP"}),
            );
            ports.push(
                json!({"name": "dashboard", "port": 9119, "targetPort": 9119, "protocol": "TCP"}),
            );
        }
        let labels = sandbox_labels(ctx);
        ctx.push(
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "spec": {"selector": {SANDBOX_LABEL: name}, "ports": ports},
            }),
            src,
        );
    }
}

fn tcp_ports(ports: &[i64]) -> Vec<Value> {
    ports
        .iter()
        .map(|p| json!({"protocol": "TCP", "port": p}))
        .collect()
}

struct DeploymentMounts {
    volumes: Vec<Value>,
    router_mounts: Vec<Value>,
    agent_mounts: Vec<Value>,
    router_env: Vec<(String, String)>,
    daily_budget: String,
    per_request: String,
}

/// Image of the agent container for a runtime kind.
pub fn runtime_image(images: &crate::config::Images, sb: &KarsSandbox) -> String {
    let rt = &sb.spec.runtime;
    if let Some(img) = rt.byo.as_ref().map(|b| b.image.clone()) {
        return img;
    }
    if let Some(img) = rt.openclaw.as_ref().and_then(|o| o.image.clone()) {
        return img;
    }
    if let Some(img) = images.runtimes.get(rt.kind.as_str()) {
        return img.clone();
    }
    let slug = match rt.kind {
        RuntimeKind::OpenClaw => "openclaw",
        RuntimeKind::OpenAIAgents => "openai-agents",
        RuntimeKind::MicrosoftAgentFramework => "maf",
        RuntimeKind::SemanticKernel => "semantic-kernel",
        RuntimeKind::LangGraph => "langgraph",
        RuntimeKind::Anthropic => "anthropic",
        RuntimeKind::PydanticAi => "pydantic-ai",
        RuntimeKind::Hermes => "hermes",
        RuntimeKind::Byo => "byo",
    };
    format!("karsacr.azurecr.io/kars-runtime-{slug}:latest")
}

const RESERVED_ENV_PREFIXES: [&str; 5] = ["AGT_", "FOUNDRY_AGENT_", "AZURE_", "IMDS_", "KARS_"];

fn is_env_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn user_env(sb: &KarsSandbox) -> Vec<Value> {
    let rt = &sb.spec.runtime;
    let extra = rt
        .openclaw
        .as_ref()
        .and_then(|r| r.extra_env.clone())
        .or_else(|| rt.openai_agents.as_ref().and_then(|r| r.extra_env.clone()))
        .or_else(|| rt.anthropic.as_ref().and_then(|r| r.extra_env.clone()))
        .or_else(|| rt.pydantic_ai.as_ref().and_then(|r| r.extra_env.clone()))
        .or_else(|| rt.hermes.as_ref().and_then(|r| r.extra_env.clone()))
        .or_else(|| {
            rt.microsoft_agent_framework
                .as_ref()
                .and_then(|r| r.extra_env.clone())
        })
        .or_else(|| {
            rt.semantic_kernel
                .as_ref()
                .and_then(|r| r.extra_env.clone())
        })
        .or_else(|| rt.lang_graph.as_ref().and_then(|r| r.extra_env.clone()));
    let mut out = Vec::new();
    if let Some(Value::Object(m)) = extra {
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        for k in keys {
            if !is_env_name(k) || RESERVED_ENV_PREFIXES.iter().any(|p| k.starts_with(p)) {
                continue;
            }
            let v = match &m[k] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push(json!({"name": k, "value": v}));
        }
    }
    if let Some(byo) = &rt.byo {
        for e in &byo.env {
            if let Some(n) = e["name"].as_str()
                && is_env_name(n)
                && !RESERVED_ENV_PREFIXES.iter().any(|p| n.starts_with(p))
            {
                out.push(e.clone());
            }
        }
    }
    out
}

fn env_list(pairs: &[(String, String)]) -> Vec<Value> {
    pairs
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect()
}

/// The egress-guard script: UID 1000 (the agent) may reach only loopback and DNS; its :80/:443
/// is redirected to the router's forward proxy.
fn egress_guard_script() -> String {
    [
        "set -eu",
        "iptables -A OUTPUT -m owner --uid-owner 1000 -o lo -j ACCEPT",
        "iptables -A OUTPUT -m owner --uid-owner 1000 -p udp --dport 53 -j ACCEPT",
        "iptables -A OUTPUT -m owner --uid-owner 1000 -p tcp --dport 53 -j ACCEPT",
        "iptables -A OUTPUT -m owner --uid-owner 1000 -m state --state ESTABLISHED,RELATED -j ACCEPT",
        "iptables -A OUTPUT -m owner --uid-owner 1000 -j DROP",
        "iptables -t nat -A OUTPUT -m owner --uid-owner 1000 ! -o lo -p tcp --dport 80 -j REDIRECT --to-port 8444",
        "iptables -t nat -A OUTPUT -m owner --uid-owner 1000 ! -o lo -p tcp --dport 443 -j REDIRECT --to-port 8444",
    ]
    .join("\n")
}

#[allow(clippy::too_many_arguments)]
fn sandbox_deployment(
    ctx: &Ctx<'_>,
    o: &SourceObject,
    sb: &KarsSandbox,
    ns: &str,
    cr_ns: &str,
    egress_mode: &str,
    governance_on: bool,
    model: &str,
    m: DeploymentMounts,
) -> Value {
    let name = o.name.as_str();
    let spec = &sb.spec;
    let s = &spec.sandbox;
    let confidential = s.isolation == "confidential";
    let seccomp = if s.isolation == "enhanced"
        && !s.seccomp_profile.is_empty()
        && s.seccomp_profile != "RuntimeDefault"
    {
        json!({"type": "Localhost", "localhostProfile": format!("profiles/{}.json", s.seccomp_profile)})
    } else {
        json!({"type": "RuntimeDefault"})
    };
    let mut pod_sc = json!({
        "runAsNonRoot": s.run_as_non_root,
        "runAsUser": AGENT_UID,
        "runAsGroup": AGENT_UID,
        "fsGroup": AGENT_UID,
        "seccompProfile": seccomp,
    });
    let selinux = s.selinux_context.as_str();
    if !selinux.is_empty() && selinux != api::SELINUX_DEFAULT_QUIRK {
        pod_sc["seLinuxOptions"] = json!({"type": selinux});
    }
    let kind = spec.runtime.kind;
    let container_name = if kind == RuntimeKind::OpenClaw {
        "openclaw"
    } else {
        "agent"
    };

    let mut agent_env = vec![
        ("KARS_MODEL".to_string(), model.to_string()),
        ("KARS_RUNTIME_CONTRACT_VERSION".into(), "v1".into()),
        ("KARS_RUNTIME_KIND".into(), kind.as_str().into()),
        ("SANDBOX_NAME".into(), name.into()),
        ("KARS_MESH_PROVIDER".into(), "agt".into()),
        (
            "KARS_INFERENCE_URL".into(),
            format!("http://127.0.0.1:{ROUTER_PORT}/v1"),
        ),
        (
            "OPENAI_BASE_URL".into(),
            format!("http://127.0.0.1:{ROUTER_PORT}/v1"),
        ),
    ];
    if governance_on {
        agent_env.push((
            "KARS_GOVERNANCE_URL".into(),
            format!("http://127.0.0.1:{ROUTER_PORT}/governance/check"),
        ));
    }
    let mut env = env_list(&agent_env);
    let taken: BTreeSet<String> = agent_env.iter().map(|(k, _)| k.clone()).collect();
    env.extend(
        user_env(sb)
            .into_iter()
            .filter(|e| !taken.contains(e["name"].as_str().unwrap_or_default())),
    );

    let mut agent_mounts = vec![
        json!({"name": "sandbox-data", "mountPath": "/sandbox"}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    agent_mounts.extend(m.agent_mounts);
    // Upstream also mounts the router's admin token into OpenClaw/Hermes agent containers; we do
    // not: the agent is untrusted code and the token guards the router's admin endpoints.
    let mut agent_ports = Vec::new();
    if matches!(kind, RuntimeKind::OpenClaw | RuntimeKind::Hermes) {
        agent_ports.push(json!({"name": "gateway", "containerPort": 18789, "protocol": "TCP"}));
    }
    if kind == RuntimeKind::Hermes {
        agent_ports.push(json!({"name": "dashboard", "containerPort": 9119, "protocol": "TCP"}));
    }
    let resources = match &spec.resources {
        Some(r) => {
            json!({"requests": r.requests.clone().unwrap_or(json!({})), "limits": r.limits.clone().unwrap_or(json!({}))})
        }
        None => {
            json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}})
        }
    };
    let mut agent = json!({
        "name": container_name,
        "image": runtime_image(ctx.images, sb),
        "securityContext": {
            "runAsUser": AGENT_UID,
            "allowPrivilegeEscalation": s.allow_privilege_escalation,
            "readOnlyRootFilesystem": s.read_only_root_filesystem,
            "capabilities": {"drop": ["ALL"]},
        },
        "env": env,
        "envFrom": [{"secretRef": {"name": format!("{name}-credentials"), "optional": true}}],
        "volumeMounts": agent_mounts,
        "resources": resources,
        "livenessProbe": {"exec": {"command": ["test", "-f", "/proc/1/status"]}},
        "readinessProbe": {"exec": {"command": ["test", "-f", "/proc/1/status"]}},
    });
    if !agent_ports.is_empty() {
        agent["ports"] = json!(agent_ports);
    }
    if let Some(byo) = &spec.runtime.byo {
        if !byo.command.is_empty() {
            agent["command"] = json!(byo.command);
        }
        if !byo.args.is_empty() {
            agent["args"] = json!(byo.args);
        }
    }

    let mut router_env = vec![
        ("SANDBOX_NAME".to_string(), name.to_string()),
        ("SANDBOX_ISOLATION".into(), s.isolation.clone()),
        ("EGRESS_MODE".into(), egress_mode.to_ascii_lowercase()),
        ("ROUTER_PORT".into(), ROUTER_PORT.to_string()),
        ("FORWARD_PROXY_PORT".into(), FORWARD_PROXY_PORT.to_string()),
        ("METRICS_PORT".into(), METRICS_PORT.to_string()),
        (
            "ADMIN_TOKEN_FILE".into(),
            "/etc/kars/secrets/admin-token".into(),
        ),
        (
            "TOKEN_BUDGET_PERSIST_PATH".into(),
            "/var/lib/kars/token-budgets.json".into(),
        ),
        ("KARS_AUDIT_DIR".into(), "/var/log/kars/audit".into()),
        ("GOVERNANCE_ENABLED".into(), governance_on.to_string()),
    ];
    if !m.daily_budget.is_empty() {
        router_env.push(("TOKEN_BUDGET_DAILY".into(), m.daily_budget.clone()));
    }
    if !m.per_request.is_empty() {
        router_env.push(("TOKEN_BUDGET_PER_REQUEST".into(), m.per_request.clone()));
    }
    router_env.extend(m.router_env);
    let mut router_mounts = vec![
        json!({"name": "admin-token", "mountPath": "/etc/kars/secrets", "readOnly": true}),
        json!({"name": "router-state", "mountPath": "/var/lib/kars"}),
        json!({"name": "router-audit", "mountPath": "/var/log/kars"}),
    ];
    router_mounts.extend(m.router_mounts);
    let router = json!({
        "name": "inference-router",
        "image": ctx.images.router,
        "ports": [
            {"name": "inference", "containerPort": ROUTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "securityContext": {
            "runAsUser": ROUTER_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "env": env_list(&router_env),
        "volumeMounts": router_mounts,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "inference"}},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "inference"}},
    });
    let guard = json!({
        "name": "egress-guard",
        "image": ctx.images.egress_guard,
        "command": ["sh", "-c", egress_guard_script()],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "seccompProfile": {"type": "Unconfined"},
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "256Mi"}},
    });

    let mut volumes = vec![
        json!({"name": "sandbox-data", "emptyDir": {}}),
        json!({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}}),
        json!({"name": "router-state", "emptyDir": {"sizeLimit": "16Mi"}}),
        json!({"name": "router-audit", "emptyDir": {"sizeLimit": "256Mi"}}),
        json!({"name": "admin-token", "secret": {"secretName": "router-admin-token", "optional": true, "items": [{"key": "token", "path": "admin-token"}]}}),
    ];
    volumes.extend(m.volumes);

    let mut pod_spec = json!({
        "serviceAccountName": "sandbox",
        "securityContext": pod_sc,
        "initContainers": [guard],
        "containers": [agent, router],
        "volumes": volumes,
        "tolerations": [{"key": "kars.azure.com/sandbox", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
        "nodeSelector": {"kars.azure.com/pool": if confidential { "sandbox-kata" } else { "sandbox" }},
    });
    if confidential {
        pod_spec["runtimeClassName"] = json!("kata-vm-isolation");
    }
    let replicas = if spec.suspended == Some(true) { 0 } else { 1 };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": ctx.labels(&[(SANDBOX_LABEL, name), (COMPONENT_LABEL, "sandbox"), ("kars.azure.com/parent-namespace", cr_ns)]),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {SANDBOX_LABEL: name}},
            "template": {
                "metadata": {"labels": {SANDBOX_LABEL: name, COMPONENT_LABEL: "sandbox", "azure.workload.identity/use": "true"}},
                "spec": pod_spec,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_normalised_or_refused() {
        assert_eq!(
            normalize_host(" API.Example.com. ").as_deref(),
            Ok("api.example.com")
        );
        for bad in [
            "",
            "*.example.com",
            "10.0.0.1",
            "::1",
            "[::1]",
            "exa mple.com",
            "bücher.de",
            "-a.com",
        ] {
            assert!(normalize_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowlist_is_sorted_deduplicated_canonical() {
        let a = compile_allowlist(&[
            ("b.com".into(), 443),
            ("A.com".into(), 8443),
            ("a.com".into(), 8443),
            ("a.com".into(), 443),
        ]);
        assert_eq!(
            a,
            r#"{"endpoints":[{"host":"a.com","port":443},{"host":"a.com","port":8443},{"host":"b.com","port":443}],"schemaVersion":1}"#
        );
    }
}
