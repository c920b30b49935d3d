//! Loading a policy repository: root config, every YAML document of every policy file, each
//! checked on its own (YAML syntax, object shape, metadata, the kind's CRD schema and CEL
//! rules). Cross-object rules are in [`crate::validate`].

use std::collections::BTreeMap;

use crate::api;
use crate::cel;
use crate::config::{self, RepositoryConfig};
use crate::crds;
use crate::diagnostics::{Diagnostics, Report};
use crate::schema::{self, FieldPath};
use crate::source::{RepoTree, is_policy_file};
use crate::yaml::{Node, Pos, YamlLimits, parse_documents};

use kars_contract::labels::{APPROVED_AT_ANNOTATION, OUR_PREFIX, PRUNE_ANNOTATION};

/// Annotations under our prefix a repository may set.
pub const USER_ANNOTATIONS: [&str; 2] = [PRUNE_ANNOTATION, APPROVED_AT_ANNOTATION];

/// Kinds that are cluster-scoped among the built-in Kubernetes kinds a repository may carry.
const CLUSTER_SCOPED_BUILTINS: [&str; 12] = [
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "StorageClass",
    "PersistentVolume",
    "IngressClass",
    "RuntimeClass",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "MutatingWebhookConfiguration",
];

/// One object read from the repository.
#[derive(Clone, Debug)]
pub struct SourceObject {
    /// Repository-relative file.
    pub file: String,
    /// Where the document starts.
    pub pos: Pos,
    /// `apiVersion` as written.
    pub api_version: String,
    /// `kind`.
    pub kind: String,
    /// `metadata.name`.
    pub name: String,
    /// True for namespaced kinds.
    pub namespaced: bool,
    /// The namespace: as written after loading; the effective one (written, or the cluster's
    /// default) once selected for a cluster with [`LoadedRepo::for_cluster`]. Always `None`
    /// for cluster-scoped kinds.
    pub namespace: Option<String>,
    /// The document as written (shared: selecting a cluster copies objects cheaply).
    pub node: std::sync::Arc<Node>,
    /// The document with CRD defaults applied (kars kinds; otherwise equal to `node`).
    pub defaulted: std::sync::Arc<Node>,
    /// The typed kars object, deserialised once from `defaulted` (`None` for other objects and
    /// for kars objects whose schema checks failed).
    pub typed: Option<std::sync::Arc<api::KarsObject>>,
}

impl SourceObject {
    /// True for a `kars.azure.com` object.
    pub fn is_kars(&self) -> bool {
        self.api_version == crds::API_VERSION
    }

    /// `kind/namespace/name` (or `kind/name`), for messages.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{}/{ns}/{}", self.kind, self.name),
            None => format!("{}/{}", self.kind, self.name),
        }
    }

    /// The position of a field path in this document (or the document start).
    pub fn pos_of(&self, path: &[&str]) -> Pos {
        (1..=path.len())
            .rev()
            .find_map(|n| {
                self.node
                    .get_path(&path[..n])
                    .map(|v| v.pos)
                    .filter(|p| p.line > 0)
            })
            .unwrap_or(self.pos)
    }

    /// The typed kars object (see [`SourceObject::typed`]).
    pub fn kars(&self) -> Option<&api::KarsObject> {
        self.typed.as_deref()
    }

    /// The KarsSandbox, if this is one (and it passed its checks).
    pub fn sandbox(&self) -> Option<&api::KarsSandbox> {
        self.kars().and_then(api::KarsObject::sandbox)
    }

    /// `metadata.annotations[key]`.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.node
            .get_path(&["metadata", "annotations", key])
            .and_then(Node::as_str)
    }
}

/// A loaded repository: its config and every object that passed per-object checks.
#[derive(Clone, Debug)]
pub struct LoadedRepo {
    /// The root config.
    pub config: RepositoryConfig,
    /// Objects, in file order.
    pub objects: Vec<SourceObject>,
}

/// Reads and checks every file. Returns the repository and the report; the repository is
/// `None` when the root config itself is unusable.
pub fn load(tree: &RepoTree) -> (Option<LoadedRepo>, Report) {
    let mut report = Report::default();
    let limits = YamlLimits::default();

    let mut cfg_diags = Diagnostics::new(config::FILE);
    let config = match tree.get(config::FILE) {
        None => {
            cfg_diags.error(
                Pos::default(),
                "missing: every policy repository has a kars.yaml at its root (run `kars init` to create one)",
            );
            None
        }
        Some(bytes) => match std::str::from_utf8(bytes) {
            Err(_) => {
                cfg_diags.error(Pos::default(), "not valid UTF-8 text");
                None
            }
            Ok(text) => match parse_documents(text, limits) {
                Err(e) => {
                    cfg_diags.error(e.pos, format!("YAML syntax: {}", e.message));
                    None
                }
                Ok(docs) if docs.len() != 1 => {
                    cfg_diags.error(
                        Pos::default(),
                        format!("must hold exactly one document, found {}", docs.len()),
                    );
                    None
                }
                Ok(docs) => config::parse(&docs[0], &mut cfg_diags),
            },
        },
    };
    report.add(cfg_diags);
    let Some(config) = config else {
        report.finish();
        return (None, report);
    };

    let files: Vec<(&str, &[u8])> = tree
        .files()
        .filter(|(path, _)| *path != config::FILE && is_policy_file(path))
        .collect();
    let per_file = files.iter().map(|(path, bytes)| {
        let mut diags = Diagnostics::new(*path);
        let mut objects = Vec::new();
        match std::str::from_utf8(bytes) {
            Err(_) => diags.error(Pos::default(), "not valid UTF-8 text"),
            Ok(text) => match parse_documents(text, limits) {
                Err(e) => diags.error(e.pos, format!("YAML syntax: {}", e.message)),
                Ok(docs) => {
                    for doc in docs {
                        if let Some(obj) = check_document(path, doc, &mut diags) {
                            objects.push(obj);
                        }
                    }
                }
            },
        }
        (objects, diags)
    });
    let mut objects = Vec::new();
    for (objs, diags) in per_file {
        objects.extend(objs);
        report.add(diags);
    }
    report.finish();
    (Some(LoadedRepo { config, objects }), report)
}

impl LoadedRepo {
    /// The objects cluster `name` receives (the only cluster when `None`), with effective
    /// namespaces filled in.
    pub fn for_cluster(&self, name: Option<&str>) -> Result<ClusterView<'_>, String> {
        let cluster = self.config.cluster(name)?;
        let default_ns = cluster
            .default_namespace
            .as_deref()
            .unwrap_or(&self.config.spec.default_namespace);
        let objects = self
            .objects
            .iter()
            .filter(|o| cluster.includes(&o.file))
            .map(|o| {
                let mut o = o.clone();
                if o.namespaced && o.namespace.is_none() {
                    o.namespace = Some(default_ns.to_string());
                }
                o
            })
            .collect();
        Ok(ClusterView {
            config: &self.config,
            cluster,
            objects,
        })
    }
}

/// What one cluster receives from the repository.
#[derive(Clone, Debug)]
pub struct ClusterView<'r> {
    /// The root config.
    pub config: &'r RepositoryConfig,
    /// The cluster.
    pub cluster: &'r config::ClusterConfig,
    /// Its objects, namespaces filled in, in file order.
    pub objects: Vec<SourceObject>,
}

fn check_document(file: &str, doc: Node, diags: &mut Diagnostics) -> Option<SourceObject> {
    if doc.as_map().is_none() {
        diags.error(
            doc.pos,
            format!(
                "a document must be a Kubernetes object (a mapping), got {}",
                doc.type_name()
            ),
        );
        return None;
    }
    let api_version = doc.get("apiVersion").and_then(Node::as_str);
    let kind = doc.get("kind").and_then(Node::as_str);
    let (Some(api_version), Some(kind)) = (api_version, kind) else {
        diags.error(doc.pos, "apiVersion and kind are required (e.g. apiVersion: kars.azure.com/v1alpha1, kind: KarsSandbox)");
        return None;
    };
    let (api_version, kind) = (api_version.to_string(), kind.to_string());
    if api_version.starts_with(config::GROUP) {
        diags.error(
            doc.pos,
            format!(
                "{kind}: {} objects belong only in kars.yaml at the repository root",
                config::GROUP
            ),
        );
        return None;
    }
    if doc.get("status").is_some() {
        let pos = doc.get_entry("status").map_or(doc.pos, |(k, _)| k.pos);
        diags.error(
            pos,
            "status: is written by the cluster; remove it from the repository",
        );
    }

    let is_kars = api_version.starts_with(&format!("{}/", crds::GROUP));
    let crd = if is_kars {
        if api_version != crds::API_VERSION {
            diags.error(
                doc.get("apiVersion").map_or(doc.pos, |n| n.pos),
                format!(
                    "unsupported apiVersion {api_version:?}; kars kinds are served as {}",
                    crds::API_VERSION
                ),
            );
            return None;
        }
        match crds::find(&kind) {
            Some(c) => Some(c),
            None => {
                let known: Vec<&str> = crds::kinds().collect();
                let hint = schema::closest(&kind, known.iter().copied())
                    .map(|k| format!(" Did you mean {k:?}?"))
                    .unwrap_or_default();
                diags.error(
                    doc.get("kind").map_or(doc.pos, |n| n.pos),
                    format!(
                        "unknown kars kind {kind:?}.{hint} Known kinds: {}",
                        known.join(", ")
                    ),
                );
                return None;
            }
        }
    } else {
        None
    };

    let namespaced = match crd {
        Some(c) => c.namespaced,
        None => !CLUSTER_SCOPED_BUILTINS.contains(&kind.as_str()),
    };
    let (name, written_ns) = check_metadata(&doc, &kind, is_kars, namespaced, diags)?;
    let namespace = if namespaced { written_ns } else { None };

    let defaulted = match crd {
        Some(crd) => {
            let defaulted = schema::apply_defaults(&crd.schema, &doc);
            // metadata is validated above; validate everything else against the schema.
            let mut without_meta = defaulted.clone();
            if let crate::yaml::Value::Map(entries) = &mut without_meta.value {
                entries.retain(|(k, _)| {
                    !matches!(
                        k.name.as_str(),
                        "apiVersion" | "kind" | "metadata" | "status"
                    )
                });
            }
            let mut meta_free_schema = crd.schema.clone();
            for f in ["apiVersion", "kind", "metadata", "status"] {
                meta_free_schema.properties.remove(f);
            }
            schema::validate(
                &meta_free_schema,
                &without_meta,
                &FieldPath::root(),
                doc.pos,
                diags,
            );
            cel::check_object(&kind, &crd.schema, &defaulted, diags);
            defaulted
        }
        None => doc.clone(),
    };

    let mut obj = SourceObject {
        file: file.to_string(),
        pos: doc.pos,
        api_version,
        kind,
        name,
        namespaced,
        namespace,
        // As written, less the nulls the API server would prune (see `schema::prune_nulls`).
        node: std::sync::Arc::new(match crd {
            Some(crd) => schema::prune_nulls(&crd.schema, &doc),
            None => doc,
        }),
        defaulted: std::sync::Arc::new(defaulted),
        typed: None,
    };
    if obj.is_kars() {
        obj.typed = parse_typed(&obj, diags).map(std::sync::Arc::new);
    }
    Some(obj)
}

/// Deserialises a kars object into its typed form, once ("parse, then trust"). An object with
/// schema errors may still deserialise (cross-object rules then see it too); when it does not,
/// that is reported only if nothing else was: a failure on a clean object means the schema and
/// the Rust types disagree, which tests guard against, but it is reported, never a panic.
fn parse_typed(obj: &SourceObject, diags: &mut Diagnostics) -> Option<api::KarsObject> {
    match api::KarsObject::parse(&obj.kind, &obj.defaulted.to_json())? {
        Ok(typed) => Some(typed),
        Err(e) => {
            if !diags.has_errors() {
                diags.error(obj.pos, format!("{}: {e}", obj.key()));
            }
            None
        }
    }
}

const SERVER_FIELDS: [&str; 8] = [
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "selfLink",
];

fn check_metadata(
    doc: &Node,
    kind: &str,
    is_kars: bool,
    namespaced: bool,
    diags: &mut Diagnostics,
) -> Option<(String, Option<String>)> {
    let Some(meta) = doc.get("metadata") else {
        diags.error(doc.pos, format!("{kind}: metadata.name is required"));
        return None;
    };
    let Some(entries) = meta.as_map() else {
        diags.error(meta.pos, "metadata: must be a mapping");
        return None;
    };
    for (key, value) in entries {
        match key.name.as_str() {
            "name" | "namespace" => {}
            "labels" | "annotations" => check_string_map(&key.name, value, diags),
            "generateName" => diags.error(key.pos, "metadata.generateName: GitOps needs a fixed metadata.name"),
            f if SERVER_FIELDS.contains(&f) => {
                diags.error(key.pos, format!("metadata.{f}: is set by the API server; remove it from the repository"))
            }
            "finalizers" | "ownerReferences" if !is_kars => {}
            other => diags.error(
                key.pos,
                format!("metadata.{other}: unknown or unsupported field (allowed: name, namespace, labels, annotations)"),
            ),
        }
    }
    let name_node = meta.get("name");
    let Some(name) = name_node.and_then(Node::as_str) else {
        diags.error(
            meta.pos,
            format!("{kind}: metadata.name is required and must be a string"),
        );
        return None;
    };
    let name_pos = name_node.map_or(meta.pos, |n| n.pos);
    if is_kars {
        let max = if kind == "KarsSandbox" { 58 } else { 63 };
        if !cel::is_dns_label(name) || name.len() > max {
            let why = if kind == "KarsSandbox" {
                " (at most 58 characters, because the sandbox runs in namespace kars-<name>)"
            } else {
                ""
            };
            diags.error(
                name_pos,
                format!("metadata.name {name:?}: must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit{why}"),
            );
        }
    } else if !is_dns_subdomain(name) {
        diags.error(name_pos, format!("metadata.name {name:?}: must be a DNS subdomain (lowercase, digits, '-', '.'; at most 253)"));
    }
    let ns_node = meta.get("namespace");
    let namespace = match ns_node {
        None => None,
        Some(n) => {
            match n.as_str() {
                Some(ns) if !namespaced => {
                    diags.error(n.pos, format!("metadata.namespace: {kind} is cluster-scoped; remove the namespace {ns:?}"));
                    None
                }
                Some(ns) if !cel::is_dns_label(ns) => {
                    diags.error(
                        n.pos,
                        format!("metadata.namespace {ns:?}: must be a DNS label"),
                    );
                    None
                }
                Some(ns) => Some(ns.to_string()),
                None => {
                    diags.error(n.pos, "metadata.namespace: must be a string");
                    None
                }
            }
        }
    };
    Some((name.to_string(), namespace))
}

fn check_string_map(field: &str, value: &Node, diags: &mut Diagnostics) {
    let Some(entries) = value.as_map() else {
        if !value.is_null() {
            diags.error(
                value.pos,
                format!("metadata.{field}: must be a mapping of strings"),
            );
        }
        return;
    };
    for (k, v) in entries {
        if !is_qualified_key(&k.name) {
            diags.error(
                k.pos,
                format!("metadata.{field}[{:?}]: invalid key; use [prefix/]name with a DNS-subdomain prefix and a name of at most 63 characters", k.name),
            );
        }
        if k.name.starts_with(OUR_PREFIX)
            && !(field == "annotations" && USER_ANNOTATIONS.contains(&k.name.as_str()))
        {
            diags.error(
                k.pos,
                format!("metadata.{field}[{:?}]: the {OUR_PREFIX} prefix is reserved for kars GitOps (allowed annotations: {})", k.name, USER_ANNOTATIONS.join(", ")),
            );
        }
        match v.as_str() {
            None => diags.error(
                v.pos,
                format!("metadata.{field}[{:?}]: must be a string, got {} (quote it)", k.name, v.type_name()),
            ),
            Some(s) if field == "labels" && !is_label_value(s) => diags.error(
                v.pos,
                format!("metadata.labels[{:?}]: {s:?} is not a valid label value (at most 63 of [A-Za-z0-9_.-], alphanumeric at both ends)", k.name),
            ),
            Some(_) => {}
        }
    }
}

/// True for a DNS-1123 subdomain.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(cel::is_dns_label)
}

/// True for a Kubernetes qualified name (`[prefix/]name`), as used for label/annotation keys.
pub fn is_qualified_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns_subdomain)
        && !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric()
}

/// True for a valid label value (may be empty).
pub fn is_label_value(v: &str) -> bool {
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
            && v.as_bytes()[0].is_ascii_alphanumeric()
            && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric())
}

/// Objects grouped by `(kind, namespace)` → name, for reference lookups.
#[derive(Debug, Default)]
pub struct Index<'a> {
    by_key: BTreeMap<(&'a str, Option<&'a str>, &'a str), &'a SourceObject>,
}

impl<'a> Index<'a> {
    /// Indexes `objects` (the first object wins for duplicate keys).
    pub fn new(objects: impl IntoIterator<Item = &'a SourceObject>) -> Self {
        let mut by_key = BTreeMap::new();
        for o in objects {
            by_key
                .entry((o.kind.as_str(), o.namespace.as_deref(), o.name.as_str()))
                .or_insert(o);
        }
        Index { by_key }
    }

    /// The object of `kind` named `name` in `namespace`.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<&'a SourceObject> {
        self.by_key.get(&(kind, namespace, name)).copied()
    }
}
