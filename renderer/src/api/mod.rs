//! Typed kars API (`kars.azure.com/v1alpha1`): every kind of the upstream CRDs, with the
//! upstream field names. Unknown fields are refused (`deny_unknown_fields`).
//!
//! Objects are deserialised *after* [`crate::schema`] has validated them and applied the CRD
//! defaults, so a `Option` here means "optional in the CRD without a default"; fields with a
//! CRD default are plain values. Free-form fields (`x-kubernetes-preserve-unknown-fields`) are
//! `serde_json::Value`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Free-form JSON kept as written.
pub type FreeForm = serde_json::Value;

/// The metadata a policy repository may set on an object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectMeta {
    /// Object name.
    pub name: String,
    /// Namespace (namespaced kinds; the repository default applies when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// A reference to a signed OCI artifact (`bundleRef`, `allowlistRef`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OciArtifactRef {
    /// Registry host, e.g. `registry.example.com:5000`.
    pub registry: String,
    /// Repository path inside the registry.
    pub repository: String,
    /// Manifest digest, `sha256:<64 hex>`.
    pub digest: String,
    /// The artifact's media type; must match the referencing kind.
    pub artifact_type: String,
}

/// A same-namespace reference by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameRef {
    /// The referenced object's name.
    pub name: String,
}

/// A same-namespace reference whose name may be omitted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionalNameRef {
    /// The referenced object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

macro_rules! kars_object {
    ($(#[$doc:meta])* $name:ident, $spec:ty) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            /// Always `kars.azure.com/v1alpha1`.
            pub api_version: String,
            /// The kind name.
            pub kind: String,
            /// Name, namespace, labels, annotations.
            pub metadata: ObjectMeta,
            /// The desired state.
            pub spec: $spec,
        }
    };
}

// The kinds, by group (the macro above must be defined before them).
mod platform;
mod policies;
mod sandbox;

pub use platform::*;
pub use policies::*;
pub use sandbox::*;

// ---- One typed value per kars object -------------------------------------------------------

macro_rules! kars_objects {
    ($($kind:ident => $accessor:ident),+ $(,)?) => {
        /// A kars object in its typed form, deserialised once when the repository is loaded
        /// (after schema validation and defaulting) and kept: validation and rendering read
        /// this value, never the YAML again.
        #[derive(Clone, Debug, PartialEq)]
        pub enum KarsObject {
            $(
                #[doc = concat!("A `", stringify!($kind), "`.")]
                $kind(Box<$kind>),
            )+
        }

        impl KarsObject {
            /// Deserialises the defaulted document of a `kind` object; `None` for a kind that is
            /// not a kars kind.
            pub fn parse(kind: &str, defaulted: &serde_json::Value) -> Option<Result<KarsObject, String>> {
                match kind {
                    $(stringify!($kind) => Some(
                        $kind::deserialize(defaulted)
                            .map(|o| KarsObject::$kind(Box::new(o)))
                            .map_err(|e| e.to_string()),
                    ),)+
                    _ => None,
                }
            }

            $(
                #[doc = concat!("The `", stringify!($kind), "`, if this is one.")]
                pub fn $accessor(&self) -> Option<&$kind> {
                    match self {
                        KarsObject::$kind(o) => Some(o),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    }
                }
            )+
        }
    };
}

kars_objects! {
    KarsSandbox => sandbox,
    KarsPairing => pairing,
    InferencePolicy => inference_policy,
    ToolPolicy => tool_policy,
    EgressApproval => egress_approval,
    McpServer => mcp_server,
    KarsMemory => memory,
    KarsEval => eval,
    TrustGraph => trust_graph,
    A2AAgent => a2a_agent,
    KarsAuthConfig => auth_config,
    KarsSREAction => sre_action,
}
