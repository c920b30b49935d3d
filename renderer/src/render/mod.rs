//! Rendering: the validated objects of one cluster in, the ordered list of Kubernetes objects
//! the agent applies out.
//!
//! For every KarsSandbox this produces what the upstream kars controller would create (see
//! `docs/architecture.md` and `shared/kars-api.md` §2), one module per concern:
//! [`sandbox`] (namespace `kars-<name>`, ServiceAccount, spawner ClusterRoleBinding, generated
//! tokens, and the order of the rest), [`policies`] (the compiled-policy ConfigMaps, each
//! mounted into the router and annotated with its digest), [`network`] (the NetworkPolicy) and
//! [`deployment`] (egress-guard init container, agent container, router sidecar, Service). The
//! kars CRs themselves are rendered too, as written plus our ownership labels. Every object
//! carries the labels `app.kubernetes.io/managed-by=kars-gitops`, `gitops.kars.io/repository`
//! and `gitops.kars.io/cluster`, and the annotation `gitops.kars.io/source` naming the file it
//! comes from.
//!
//! Nothing here reads a clock, the environment or a random source: the output is a pure function
//! of the tree, the cluster name and the resolved bundles.

mod deployment;
mod network;
mod policies;
mod sandbox;

use std::collections::{BTreeMap, BTreeSet};

use kars_contract::labels::{
    CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL, OBJECT_DIGEST_ANNOTATION, REPOSITORY_LABEL,
    SOURCE_ANNOTATION,
};
use serde_json::{Map, Value, json};

use crate::api::{self, KarsObject};
use crate::canonical;
use crate::rendered::{
    Bundles, GeneratedSecret, RenderProblem, Rendered, RenderedObject, ResolvedBundle,
    RouterExpectation,
};
use crate::repo::{ClusterView, Index, SourceObject};

pub use deployment::runtime_image;

/// The sandbox namespace (`kars-<name>`), independent of the CR's namespace (upstream rule).
pub fn sandbox_namespace(name: &str) -> String {
    format!("kars-{name}")
}

/// The apply wave of a kind (lower first): CRDs, namespaces, identities, bindings, config,
/// kars policies, sandboxes, other kars kinds, services, workloads, the rest.
fn wave(kind: &str, api_version: &str) -> u8 {
    match kind {
        "CustomResourceDefinition" => 0,
        "Namespace" => 1,
        "ServiceAccount" | "ClusterRole" | "Role" => 2,
        "ClusterRoleBinding" | "RoleBinding" => 3,
        "ConfigMap" | "Secret" | "NetworkPolicy" | "ResourceQuota" | "LimitRange"
        | "PriorityClass" => 4,
        _ if api_version == kars_contract::KARS_API_VERSION => match kind {
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

/// The render in progress.
struct Ctx<'a> {
    repository: &'a str,
    cluster: &'a str,
    images: &'a crate::config::Images,
    router: &'a crate::config::RouterConfig,
    /// The cluster's inference providers (kars.yaml).
    providers: BTreeMap<String, crate::config::ProviderConfig>,
    bundles: &'a Bundles,
    objects: Vec<RenderedObject>,
    secrets: Vec<GeneratedSecret>,
    routers: Vec<RouterExpectation>,
    problems: Vec<RenderProblem>,
    held_back: Vec<RenderProblem>,
    /// Set while rendering a sandbox that needs a bundle that is not verified: the sandbox and
    /// everything it implies are then dropped from the output.
    hold: Option<String>,
}

impl Ctx<'_> {
    /// Our ownership labels plus `extra`.
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

    /// Adds an object rendered from `source`.
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

    /// Records that `o` cannot be rendered.
    fn problem(&mut self, o: &SourceObject, reason: String) {
        self.problems.push(RenderProblem {
            file: o.file.clone(),
            object: o.key(),
            reason,
        });
    }

    /// The typed value of `o`, or a problem when it has none (an unvalidated view).
    fn typed<'o, T>(
        &mut self,
        o: &'o SourceObject,
        get: impl Fn(&'o KarsObject) -> Option<&'o T>,
    ) -> Option<&'o T> {
        let found = o.kars().and_then(get);
        if found.is_none() {
            self.problem(
                o,
                format!(
                    "not a valid {} (validation should have caught this)",
                    o.kind
                ),
            );
        }
        found
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
        router: &view.config.spec.router,
        providers: view.config.providers_of(view.cluster),
        bundles,
        objects: Vec::new(),
        secrets: Vec::new(),
        routers: Vec::new(),
        problems: Vec::new(),
        held_back: Vec::new(),
        hold: None,
    };
    let index = Index::new(view.objects.iter());
    let approvals = policies::approvals_by_sandbox(&view.objects);
    repository_namespaces(&mut ctx, view);

    for o in &view.objects {
        let mark = (ctx.objects.len(), ctx.secrets.len(), ctx.routers.len());
        as_written(&mut ctx, o);
        if o.is_kars() && o.kind == "KarsSandbox" {
            let Some(sb) = ctx.typed(o, KarsObject::sandbox) else {
                continue;
            };
            ctx.hold = None;
            sandbox::render(&mut ctx, o, sb, &index, &approvals);
            if let Some(why) = ctx.hold.take() {
                ctx.objects.truncate(mark.0);
                ctx.secrets.truncate(mark.1);
                ctx.routers.truncate(mark.2);
                let reason = format!(
                    "the sandbox and every object it implies (namespace {}) are held back: {why}",
                    sandbox_namespace(&o.name)
                );
                match ctx.held_back.last_mut() {
                    Some(h) if h.object == o.key() => h.reason = format!("{}; {reason}", h.reason),
                    _ => ctx.held_back.push(RenderProblem {
                        file: o.file.clone(),
                        object: o.key(),
                        reason,
                    }),
                }
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
    let mut routers = ctx.routers;
    routers.sort_by(|a, b| a.namespace.cmp(&b.namespace));
    Ok(Rendered {
        repository: view.config.metadata.name.clone(),
        cluster: view.cluster.name.clone(),
        digest: kars_contract::sha256_digest(&set),
        objects,
        generated_secrets: secrets,
        routers,
        allow_empty_prune: view.config.spec.prune.allow_empty,
        held_back: ctx.held_back,
    })
}

/// A Namespace for every namespace the repository's objects live in that the repository does
/// not declare itself (and that `kars.yaml` does not name as external). The SRE namespace
/// (`kars-sre`) is the installation's, never the repository's: the chart creates it with the
/// identity SRE actions run as, and a repository that rendered it would fight the chart over it.
fn repository_namespaces(ctx: &mut Ctx<'_>, view: &ClusterView<'_>) {
    let declared: BTreeSet<&str> = view
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
        if declared.contains(ns)
            || ns == crate::sre::SRE_NAMESPACE
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
}

/// The object as written, plus our labels. An object whose own bundle reference did not verify
/// is held back (its live copy, if any, keeps the reference that did verify); what it projects
/// uses the last verified bundle when there is one.
fn as_written(ctx: &mut Ctx<'_>, o: &SourceObject) {
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
    if unverified.is_empty() {
        ctx.push(manifest, &o.file);
    } else {
        ctx.held_back.push(RenderProblem {
            file: o.file.clone(),
            object: o.key(),
            reason: unverified.join("; "),
        });
    }
}
