//! Serialising rendered objects: multi-document YAML (keys sorted, strings quoted wherever a
//! YAML 1.1 reader could take them for something else) and canonical JSON.

use crate::canonical::Sorted;
use crate::rendered::Rendered;

/// Why output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("serialising {object} to YAML: {message}")]
pub struct OutputError {
    /// Object key.
    pub object: String,
    /// The serializer's message.
    pub message: String,
}

/// One object as a YAML document (no `---` line).
pub fn object_yaml(manifest: &serde_json::Value) -> Result<String, String> {
    serde_saphyr::to_string(&Sorted(manifest)).map_err(|e| e.to_string())
}

/// The whole rendered set as multi-document YAML, preceded by a comment header with the
/// repository, cluster, digest and the secrets the agent generates in-cluster.
pub fn to_yaml(r: &Rendered) -> Result<String, OutputError> {
    let mut out = String::new();
    out.push_str(&format!(
        "# kars render: repository {:?}, cluster {:?}\n",
        r.repository, r.cluster
    ));
    out.push_str(&format!(
        "# objects: {}\n# digest: {}\n",
        r.objects.len(),
        r.digest
    ));
    for s in &r.generated_secrets {
        out.push_str(&format!(
            "# generated in the cluster, never stored in Git: Secret {}/{} key {:?} ({} random bytes)\n",
            s.namespace, s.name, s.key, s.random_bytes
        ));
    }
    for o in &r.objects {
        let doc = object_yaml(&o.manifest).map_err(|message| OutputError {
            object: o.key(),
            message,
        })?;
        out.push_str("---\n");
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// File name for one object when writing a directory (`--out DIR`): `NNN-kind-namespace-name.yaml`.
pub fn file_name(index: usize, manifest: &serde_json::Value) -> String {
    let kind = manifest["kind"]
        .as_str()
        .unwrap_or("object")
        .to_ascii_lowercase();
    let name = manifest["metadata"]["name"].as_str().unwrap_or("unnamed");
    match manifest["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{index:04}-{kind}-{ns}-{name}.yaml"),
        None => format!("{index:04}-{kind}-{name}.yaml"),
    }
}
