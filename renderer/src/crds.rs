//! The upstream kars CRDs (group `kars.azure.com`, version `v1alpha1`), embedded unchanged.
//!
//! They are the single source of the API's schemas, defaults and enums: validation reads them,
//! tests install them in a real API server, and [`crate::cel`] re-expresses their CEL rules.
//! Source: github.com/Azure/kars `deploy/helm/kars/templates/crd*.yaml` (MIT), the copy in
//! `renderer/upstream/crds/`.

use std::sync::OnceLock;

use crate::schema::Schema;
use crate::yaml::{YamlLimits, parse_documents};

pub use kars_contract::{KARS_API_VERSION as API_VERSION, KARS_GROUP as GROUP};

/// The kars API version.
pub const VERSION: &str = "v1alpha1";

/// The raw CRD files, in a fixed order.
pub const CRD_FILES: &[(&str, &str)] = &[
    ("crd.yaml", include_str!("../upstream/crds/crd.yaml")),
    (
        "crd-a2aagent.yaml",
        include_str!("../upstream/crds/crd-a2aagent.yaml"),
    ),
    (
        "crd-egressapproval.yaml",
        include_str!("../upstream/crds/crd-egressapproval.yaml"),
    ),
    (
        "crd-inferencepolicy.yaml",
        include_str!("../upstream/crds/crd-inferencepolicy.yaml"),
    ),
    (
        "crd-karsauthconfig.yaml",
        include_str!("../upstream/crds/crd-karsauthconfig.yaml"),
    ),
    (
        "crd-karseval.yaml",
        include_str!("../upstream/crds/crd-karseval.yaml"),
    ),
    (
        "crd-karsmemory.yaml",
        include_str!("../upstream/crds/crd-karsmemory.yaml"),
    ),
    (
        "crd-karssreaction.yaml",
        include_str!("../upstream/crds/crd-karssreaction.yaml"),
    ),
    (
        "crd-mcpserver.yaml",
        include_str!("../upstream/crds/crd-mcpserver.yaml"),
    ),
    (
        "crd-toolpolicy.yaml",
        include_str!("../upstream/crds/crd-toolpolicy.yaml"),
    ),
    (
        "crd-trustgraph.yaml",
        include_str!("../upstream/crds/crd-trustgraph.yaml"),
    ),
];

/// The default AGT profile the upstream chart ships for ToolPolicy `kars-default`.
pub const DEFAULT_AGT_PROFILE: &str = include_str!("../upstream/kars-default-agt-profile.yaml");

/// What validation needs to know about one kind.
#[derive(Debug)]
pub struct Crd {
    /// Kind, e.g. `KarsSandbox`.
    pub kind: String,
    /// Plural resource name, e.g. `karssandboxes`.
    pub plural: String,
    /// True for namespaced kinds.
    pub namespaced: bool,
    /// The `openAPIV3Schema` of version v1alpha1.
    pub schema: Schema,
    /// The full CRD manifest as JSON (for installing it).
    pub manifest: serde_json::Value,
}

/// Every kars CRD, parsed once.
pub fn all() -> &'static [Crd] {
    static CRDS: OnceLock<Vec<Crd>> = OnceLock::new();
    CRDS.get_or_init(|| {
        let mut out = Vec::new();
        for (name, text) in CRD_FILES {
            // The files are compiled in and covered by tests; a parse failure is a build defect.
            let docs = parse_documents(text, YamlLimits::default())
                .unwrap_or_else(|e| panic!("embedded {name} does not parse: {e:?}"));
            for doc in docs {
                let manifest = doc.to_json();
                let spec = &manifest["spec"];
                let version = spec["versions"]
                    .as_array()
                    .and_then(|vs| vs.iter().find(|v| v["name"] == VERSION))
                    .unwrap_or_else(|| panic!("embedded {name} has no {VERSION}"));
                let schema: Schema =
                    serde_json::from_value(version["schema"]["openAPIV3Schema"].clone())
                        .unwrap_or_else(|e| panic!("embedded {name} schema: {e}"));
                out.push(Crd {
                    kind: spec["names"]["kind"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    plural: spec["names"]["plural"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    namespaced: spec["scope"] == "Namespaced",
                    schema,
                    manifest,
                });
            }
        }
        out
    })
}

/// The CRD of `kind`, if it is a kars kind.
pub fn find(kind: &str) -> Option<&'static Crd> {
    all().iter().find(|c| c.kind == kind)
}

/// Every kars kind name.
pub fn kinds() -> impl Iterator<Item = &'static str> {
    all().iter().map(|c| c.kind.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twelve_kinds_with_schemas() {
        let kinds: Vec<&str> = kinds().collect();
        assert_eq!(kinds.len(), 12, "{kinds:?}");
        for k in [
            "KarsSandbox",
            "KarsPairing",
            "InferencePolicy",
            "ToolPolicy",
            "EgressApproval",
            "McpServer",
            "KarsMemory",
            "KarsEval",
            "TrustGraph",
            "A2AAgent",
            "KarsAuthConfig",
            "KarsSREAction",
        ] {
            let crd = find(k).unwrap_or_else(|| panic!("{k} missing"));
            assert!(crd.schema.properties.contains_key("spec"), "{k}");
        }
        assert!(!find("TrustGraph").is_some_and(|c| c.namespaced));
        assert!(!find("KarsAuthConfig").is_some_and(|c| c.namespaced));
        assert!(find("KarsSandbox").is_some_and(|c| c.namespaced));
    }
}
