//! The repository's root config, `kars.yaml` (`gitops.kars.io/v1alpha1`, kind
//! `RepositoryConfig`): which clusters exist, which directories each one gets, the default
//! namespace, and the images rendered workloads use.
//!
//! It is validated with the same structural-schema machinery as the kars CRDs (schema below),
//! so its errors read the same way: `kars.yaml:12:5: spec.clusters[0].paths: …`.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::diagnostics::Diagnostics;
use crate::schema::{self, FieldPath, Schema};
use crate::yaml::Node;

/// `apiVersion` of the root config.
pub use kars_contract::GITOPS_API_VERSION as API_VERSION;
/// Our own API group (never `kars.azure.com`).
pub use kars_contract::GITOPS_GROUP as GROUP;
/// Kind of the root config.
pub const KIND: &str = "RepositoryConfig";
/// File name of the root config at the repository root.
pub const FILE: &str = "kars.yaml";

/// The root config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepositoryConfig {
    /// `gitops.kars.io/v1alpha1`.
    pub api_version: String,
    /// `RepositoryConfig`.
    pub kind: String,
    /// Name of the repository (used in ownership labels).
    pub metadata: ConfigMeta,
    /// The settings.
    pub spec: ConfigSpec,
}

/// `metadata` of the root config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigMeta {
    /// Repository name (DNS label); objects are labelled `gitops.kars.io/repository=<name>`.
    pub name: String,
}

/// `spec` of the root config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigSpec {
    /// Namespace of namespaced objects that do not name one.
    pub default_namespace: String,
    /// The clusters this repository describes.
    pub clusters: Vec<ClusterConfig>,
    /// Images used by rendered workloads.
    pub images: Images,
    /// Namespaces the repository uses but does not create (they exist already).
    #[serde(default)]
    pub external_namespaces: Vec<String>,
    /// Pruning opt-ins that must be signed like everything else.
    #[serde(default)]
    pub prune: PruneConfig,
    /// Settings of every rendered router sidecar.
    #[serde(default)]
    pub router: RouterConfig,
    /// Inference providers every cluster gets, by the name InferencePolicies use
    /// (`modelPreference.primary.provider`); a cluster's own `providers` entry replaces one.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// Where the repository's pull requests live (`kars sre` reads it; the agent takes its own
    /// `--forge-*` flags). Nothing is rendered from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forge: Option<ForgeConfig>,
}

/// `spec.forge`: the forge hosting this repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForgeConfig {
    /// Forge type (only `gitea` today).
    #[serde(default = "gitea", rename = "type")]
    pub type_: String,
    /// Base URL, `http(s)://host[:port]`.
    pub url: String,
    /// `OWNER/NAME` on the forge.
    pub repository: String,
}

fn gitea() -> String {
    "gitea".into()
}

/// `spec.router`: what every sandbox's router is configured with.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouterConfig {
    /// Internal networks (CIDRs) the router may connect to for an allowed host. Loopback,
    /// private, link-local and similar addresses are refused otherwise; the cloud metadata
    /// address is refused whatever this says. Rendered as `KARS_EGRESS_ALLOW_CIDRS`.
    #[serde(default)]
    pub allow_private_cidrs: Vec<String>,
}

/// Checks one `allowPrivateCidrs` entry: `address/prefix`, the address being the network's
/// first one, prefix at least 8 (IPv4) or 16 (IPv6) so one line cannot open everything.
pub fn check_private_cidr(cidr: &str) -> Result<(), String> {
    let example = "e.g. 10.20.0.0/16 or fd00:1234::/48";
    let (addr, prefix) = cidr
        .split_once('/')
        .ok_or_else(|| format!("{cidr:?} is not a CIDR ({example})"))?;
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| format!("{cidr:?}: {addr:?} is not an IP address ({example})"))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| format!("{cidr:?}: the prefix length must be a number ({example})"))?;
    let (bits, min) = if ip.is_ipv4() { (32, 8) } else { (128, 16) };
    if prefix > bits {
        return Err(format!("{cidr:?}: the prefix length is at most {bits}"));
    }
    if prefix < min {
        return Err(format!(
            "{cidr:?} would open /{prefix} of internal addresses; list the networks the agents need (prefix {min} or longer)"
        ));
    }
    let host_bits = u32::from(bits - prefix);
    let host_part = match ip {
        std::net::IpAddr::V4(v4) => u128::from(u32::from(v4)) & ((1u128 << host_bits) - 1),
        std::net::IpAddr::V6(v6) => {
            let n = u128::from(v6);
            if host_bits == 128 {
                n
            } else {
                n & ((1u128 << host_bits) - 1)
            }
        }
    };
    if host_part != 0 {
        return Err(format!(
            "{cidr:?} has host bits set; write the network address ({example})"
        ));
    }
    Ok(())
}

/// `spec.prune`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PruneConfig {
    /// Allow a render that comes out empty to delete everything applied before.
    #[serde(default)]
    pub allow_empty: bool,
}

/// One cluster and the directories it receives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterConfig {
    /// Cluster name (`kars render --cluster NAME`).
    pub name: String,
    /// Repository directories (or single files) rendered for this cluster.
    pub paths: Vec<String>,
    /// Overrides `spec.defaultNamespace` for this cluster.
    #[serde(default)]
    pub default_namespace: Option<String>,
    /// Inference providers of this cluster, by name; an entry replaces the `spec.providers`
    /// entry of the same name.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
}

/// One inference provider: where the deployments an InferencePolicy names are served, and the
/// Secret holding its key (never the key itself: a repository holds no credentials).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    /// OpenAI-compatible base URL the API path is appended to, e.g.
    /// `https://example.openai.azure.com/openai/v1`.
    pub endpoint: String,
    /// The Secret (in each sandbox's namespace `kars-<name>`) holding the provider's API key,
    /// mounted into the router only and sent upstream as a bearer token.
    #[serde(default)]
    pub credentials: Option<SecretKeyRef>,
}

/// A key of a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub secret_name: String,
    /// The key in its data.
    pub key: String,
}

/// Images of rendered workloads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Images {
    /// The router sidecar (`kars-router`).
    pub router: String,
    /// The image running the `egress-guard` init container (needs `iptables` and `sh`).
    pub egress_guard: String,
    /// Runtime image per runtime kind; a kind not listed uses
    /// `karsacr.azurecr.io/kars-runtime-<kind>:latest` like upstream.
    #[serde(default)]
    pub runtimes: BTreeMap<String, String>,
}

const SCHEMA: &str = r#"
type: object
required: [apiVersion, kind, metadata, spec]
properties:
  apiVersion: {type: string, enum: ["gitops.kars.io/v1alpha1"]}
  kind: {type: string, enum: ["RepositoryConfig"]}
  metadata:
    type: object
    required: [name]
    properties:
      name: {type: string, maxLength: 63, pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
  spec:
    type: object
    required: [clusters]
    properties:
      defaultNamespace: {type: string, default: kars-agents, maxLength: 63, pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
      prune:
        type: object
        properties:
          allowEmpty: {type: boolean}
      externalNamespaces:
        type: array
        items: {type: string, maxLength: 63, pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
      clusters:
        type: array
        minItems: 1
        items:
          type: object
          required: [name, paths]
          properties:
            name: {type: string, maxLength: 63, pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
            paths:
              type: array
              minItems: 1
              items: {type: string, minLength: 1}
            defaultNamespace: {type: string, maxLength: 63, pattern: "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}
            providers: &providers
              type: object
              additionalProperties:
                type: object
                required: [endpoint]
                properties:
                  endpoint: {type: string, pattern: "^https?://[^/?#@,]+(/[^?#,]*)?$"}
                  credentials:
                    type: object
                    required: [secretName, key]
                    properties:
                      secretName: {type: string, maxLength: 253, pattern: "^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"}
                      key: {type: string, maxLength: 253, pattern: "^[-._a-zA-Z0-9]+$"}
      providers: *providers
      images:
        type: object
        default: {}
        properties:
          router: {type: string, minLength: 1, default: "ghcr.io/kars-gitops/kars-router:0.1.0"}
          egressGuard: {type: string, minLength: 1, default: "ghcr.io/kars-gitops/kars-egress-guard:0.1.0"}
          runtimes:
            type: object
            additionalProperties: {type: string, minLength: 1}
      router:
        type: object
        properties:
          allowPrivateCidrs:
            type: array
            maxItems: 64
            items: {type: string, minLength: 1}
      forge:
        type: object
        required: [url, repository]
        properties:
          type: {type: string, enum: [gitea], default: gitea}
          url: {type: string, pattern: "^https?://[^/?#]+$"}
          repository: {type: string, pattern: "^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"}
"#;

fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let docs = crate::yaml::parse_documents(SCHEMA, crate::yaml::YamlLimits::default())
            .unwrap_or_else(|e| panic!("built-in RepositoryConfig schema: {e:?}"));
        serde_json::from_value(docs[0].to_json())
            .unwrap_or_else(|e| panic!("built-in RepositoryConfig schema: {e}"))
    })
}

/// Validates and reads the root config document; problems go to `diags`.
pub fn parse(doc: &Node, diags: &mut Diagnostics) -> Option<RepositoryConfig> {
    let defaulted = schema::apply_defaults(schema(), doc);
    let before = diags.has_errors();
    schema::validate(schema(), &defaulted, &FieldPath::root(), doc.pos, diags);
    if let Some(clusters) = defaulted
        .get_path(&["spec", "clusters"])
        .and_then(Node::as_seq)
    {
        let mut seen = BTreeMap::new();
        for c in clusters {
            for p in c.get("paths").and_then(Node::as_seq).unwrap_or(&[]) {
                if let Some(s) = p.as_str()
                    && !is_clean_repo_path(s)
                {
                    diags.error(p.pos, format!("cluster path {s:?} must be a relative path inside the repository without \"..\" (e.g. agents/payments)"));
                }
            }
            if let Some(name) = c.get("name").and_then(Node::as_str)
                && let Some(first) = seen.insert(name.to_string(), c.pos)
            {
                diags.error(
                    c.pos,
                    format!(
                        "cluster {name:?} is defined twice (first at line {})",
                        first.line
                    ),
                );
            }
        }
    }
    for c in defaulted
        .get_path(&["spec", "router", "allowPrivateCidrs"])
        .and_then(Node::as_seq)
        .unwrap_or(&[])
    {
        if let Some(text) = c.as_str()
            && let Err(e) = check_private_cidr(text)
        {
            diags.error(c.pos, format!("spec.router.allowPrivateCidrs: {e}"));
        }
    }
    check_providers(
        defaulted.get_path(&["spec", "providers"]),
        "spec.providers",
        diags,
    );
    for c in defaulted
        .get_path(&["spec", "clusters"])
        .and_then(Node::as_seq)
        .unwrap_or(&[])
    {
        let name = c.get("name").and_then(Node::as_str).unwrap_or("?");
        check_providers(
            c.get("providers"),
            &format!("cluster {name:?} providers"),
            diags,
        );
    }
    if diags.has_errors() && !before {
        return None;
    }
    match serde_json::from_value::<RepositoryConfig>(defaulted.to_json()) {
        Ok(cfg) => Some(cfg),
        Err(e) => {
            diags.error(doc.pos, format!("RepositoryConfig: {e}"));
            None
        }
    }
}

/// Longest provider name (it names the router's Secret volume `provider-<name>`).
pub const MAX_PROVIDER_NAME: usize = 54;

/// Provider names are DNS labels (they name volumes); an `http://` endpoint with credentials
/// would send the key unencrypted.
fn check_providers(providers: Option<&Node>, what: &str, diags: &mut Diagnostics) {
    let Some(entries) = providers.and_then(Node::as_map) else {
        return;
    };
    for (k, v) in entries {
        if !kars_contract::host::is_dns_label(&k.name) || k.name.len() > MAX_PROVIDER_NAME {
            diags.error(
                k.pos,
                format!(
                    "{what}: {:?} is not a provider name (lower-case letters, digits and '-', at most {MAX_PROVIDER_NAME} characters, like azure-openai)",
                    k.name
                ),
            );
        }
        if v.get("credentials").is_some()
            && v.get("endpoint")
                .and_then(Node::as_str)
                .is_some_and(|e| e.starts_with("http://"))
        {
            diags.warning(
                v.pos,
                format!(
                    "{what}: {:?} sends its API key over plain http://; use https:// unless the endpoint is inside the node",
                    k.name
                ),
            );
        }
    }
}

/// `metadata.name` of a `kars.yaml` (the repository's name, which the PolicyRepo is named
/// after), when it is a valid DNS label; `None` for anything else.
pub fn repository_name(kars_yaml: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(kars_yaml).ok()?;
    let docs = crate::yaml::parse_documents(text, crate::yaml::YamlLimits::default()).ok()?;
    let name = docs.first()?.get_path(&["metadata", "name"])?.as_str()?;
    kars_contract::host::is_dns_label(name).then(|| name.to_string())
}

/// A repository-relative path: no leading `/`, no `..`, no empty components.
pub fn is_clean_repo_path(p: &str) -> bool {
    let p = p.trim_end_matches('/');
    !p.is_empty()
        && !p.starts_with('/')
        && p.split('/').all(|c| !c.is_empty() && c != ".." && c != ".")
}

impl RepositoryConfig {
    /// The inference providers `cluster` gets: `spec.providers`, each replaced by the cluster's
    /// own entry of the same name.
    pub fn providers_of(&self, cluster: &ClusterConfig) -> BTreeMap<String, ProviderConfig> {
        let mut all = self.spec.providers.clone();
        all.extend(cluster.providers.clone());
        all
    }

    /// The cluster called `name`, or the only cluster when `name` is `None`.
    pub fn cluster(&self, name: Option<&str>) -> Result<&ClusterConfig, String> {
        match name {
            Some(n) => self
                .spec
                .clusters
                .iter()
                .find(|c| c.name == n)
                .ok_or_else(|| {
                    let names: Vec<&str> =
                        self.spec.clusters.iter().map(|c| c.name.as_str()).collect();
                    format!(
                        "{FILE} defines no cluster {n:?}; clusters: {}",
                        names.join(", ")
                    )
                }),
            None if self.spec.clusters.len() == 1 => Ok(&self.spec.clusters[0]),
            None => {
                let names: Vec<&str> = self.spec.clusters.iter().map(|c| c.name.as_str()).collect();
                Err(format!(
                    "{FILE} defines several clusters ({}); choose one with --cluster",
                    names.join(", ")
                ))
            }
        }
    }
}

impl ClusterConfig {
    /// True when repository file `path` belongs to this cluster.
    pub fn includes(&self, path: &str) -> bool {
        self.paths.iter().any(|p| {
            let p = p.trim_end_matches('/');
            path == p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{YamlLimits, parse_documents};

    fn load(text: &str) -> (Option<RepositoryConfig>, Vec<String>) {
        let doc = parse_documents(text, YamlLimits::default())
            .expect("yaml")
            .remove(0);
        let mut d = Diagnostics::new(FILE);
        let cfg = parse(&doc, &mut d);
        (cfg, d.into_vec().iter().map(ToString::to_string).collect())
    }

    #[test]
    fn provider_names_endpoints_and_plain_http_keys_are_checked() {
        let (cfg, errors) = load(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: demo}\nspec:\n  clusters:\n  - name: local\n    paths: [agents]\n    providers:\n      Bad_Name: {endpoint: \"https://x.example/v1\"}\n  providers:\n    ok: {endpoint: \"https://x.example/v1\"}\n    nourl: {endpoint: \"ftp://x\"}\n    commas: {endpoint: \"https://x.example/a,b\"}\n    nokey: {endpoint: \"https://x.example\", credentials: {secretName: s}}\n",
        );
        assert!(cfg.is_none());
        let all = errors.join("\n");
        assert!(all.contains("\"Bad_Name\" is not a provider name"), "{all}");
        assert!(all.contains("providers[\"nourl\"].endpoint"), "{all}");
        assert!(all.contains("providers[\"commas\"].endpoint"), "{all}");
        assert!(
            all.contains("providers[\"nokey\"].credentials.key: required field is missing"),
            "{all}"
        );
        assert!(!all.contains("providers[\"ok\"]"), "{all}");
        let mut d = Diagnostics::new("kars.yaml");
        let docs = crate::yaml::parse_documents(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: demo}\nspec:\n  clusters: [{name: a, paths: [x]}]\n  providers:\n    p: {endpoint: \"http://p.example/v1\", credentials: {secretName: s, key: k}}\n",
            crate::yaml::YamlLimits::default(),
        )
        .expect("yaml");
        assert!(parse(&docs[0], &mut d).is_some());
        let warnings: Vec<String> = d.into_vec().into_iter().map(|x| x.to_string()).collect();
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("kars.yaml:7:") && w.contains("plain http://")),
            "{warnings:?}"
        );
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let (cfg, errs) = load(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: demo}\nspec:\n  clusters:\n  - name: local\n    paths: [agents]\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let cfg = cfg.expect("cfg");
        assert_eq!(cfg.spec.default_namespace, "kars-agents");
        assert!(cfg.spec.images.router.contains("kars-router"));
        let c = cfg.cluster(None).expect("one cluster");
        assert!(c.includes("agents/a/sandbox.yaml"));
        assert!(!c.includes("agentsx/a.yaml"));
        assert!(!c.includes("egress/a.yaml"));
    }

    #[test]
    fn router_private_cidrs_are_checked_with_their_line() {
        let (cfg, errs) = load(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: demo}\nspec:\n  clusters:\n  - name: a\n    paths: [x]\n  router:\n    allowPrivateCidrs: [10.250.0.0/16, \"fd6b:6172::/32\"]\n",
        );
        assert!(errs.is_empty(), "{errs:?}");
        let cfg = cfg.expect("cfg");
        assert_eq!(
            cfg.spec.router.allow_private_cidrs,
            ["10.250.0.0/16", "fd6b:6172::/32"]
        );
        for (bad, says) in [
            ("0.0.0.0/0", "would open /0"),
            ("10.0.0.0/7", "would open /7"),
            ("::/8", "would open /8"),
            ("10.250.0.1/16", "host bits set"),
            ("10.250.0.0", "is not a CIDR"),
            ("10.250.0.0/33", "at most 32"),
            ("example.com/24", "not an IP address"),
            ("10.0.0.0/x", "must be a number"),
        ] {
            let (cfg, errs) = load(&format!(
                "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {{name: demo}}\nspec:\n  clusters:\n  - name: a\n    paths: [x]\n  router:\n    allowPrivateCidrs: [\"{bad}\"]\n"
            ));
            assert!(cfg.is_none(), "{bad} accepted");
            let all = errs.join("\n");
            assert!(
                all.contains("kars.yaml:9:") && all.contains(says),
                "{bad}: {all}"
            );
        }
        assert!(check_private_cidr("10.250.0.0/30").is_ok());
        assert!(check_private_cidr("fd6b:6172:0:2::/64").is_ok());
        assert!(check_private_cidr("10.250.0.2/32").is_ok());
    }

    #[test]
    fn bad_paths_and_duplicates_are_reported_with_lines() {
        let (cfg, errs) = load(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: demo}\nspec:\n  clusters:\n  - name: a\n    paths: [../etc]\n  - name: a\n    paths: [x]\n",
        );
        assert!(cfg.is_none());
        let all = errs.join("\n");
        assert!(
            all.contains("kars.yaml:7:13: cluster path \"../etc\""),
            "{all}"
        );
        assert!(
            all.contains("kars.yaml:8:5: cluster \"a\" is defined twice"),
            "{all}"
        );
    }
}
