//! kars-renderer: a policy repository tree in, an ordered list of Kubernetes objects out.
//!
//! The data flow inside the crate mirrors the pipeline:
//! [`source`] (read the tree safely) → [`repo`] (parse YAML, check each object against its
//! CRD schema and CEL rules, deserialise it once into its typed form) → [`validate`]
//! (cross-object rules per cluster) → [`render`] (workloads, compiled policies, digests) →
//! [`rendered`] (what comes out) → [`output`] (YAML / canonical JSON). Names, paths, digests and
//! host rules shared with the agent and the router are in the `kars-contract` crate.
//!
//! Entry points: [`validate_tree`] for `kars validate`, [`prepare`] then [`Prepared::render`]
//! for the agent's pipeline and `kars render`, [`render_tree`] for both at once. All are pure
//! functions of their inputs.

pub mod api;
pub mod bundle;
pub mod canonical;
pub mod cel;
pub mod config;
pub mod crds;
pub mod diagnostics;
pub mod edit;
pub mod egress;
pub mod maturity;
pub mod output;
pub mod render;
pub mod rendered;
pub mod repo;
pub mod schema;
pub mod source;
pub mod sre;
pub mod validate;
pub mod yaml;

use diagnostics::{Diagnostics, Report};
use kars_contract::Reason;
pub use rendered::{Bundles, Rendered, RenderedObject, ResolvedBundle, RouterExpectation};
pub use source::RepoTree;

/// Why a repository could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Validation found errors (all of them are in the report).
    #[error("the repository has {} error(s):\n{report}", report.error_count())]
    Invalid {
        /// Every diagnostic.
        report: Report,
    },
    /// The requested cluster does not exist (or none was named and there are several).
    #[error("{0}")]
    Cluster(String),
    /// Objects that could not be rendered (e.g. a signed bundle that is not verified).
    #[error("{} object(s) could not be rendered:\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Problems(Vec<rendered::RenderProblem>),
}

impl RenderError {
    /// The stable reason word (status, metrics, CLI).
    pub fn reason(&self) -> Reason {
        match self {
            RenderError::Invalid { .. } => Reason::ValidationFailed,
            RenderError::Cluster(_) => Reason::UnknownCluster,
            RenderError::Problems(_) => Reason::ObjectNotRenderable,
        }
    }
}

/// Validates the whole repository: every file, and the cross-object rules for every cluster.
/// Files that no cluster includes get a warning.
pub fn validate_tree(tree: &RepoTree) -> Report {
    let (repo, mut report) = repo::load(tree);
    let Some(repo) = repo else { return report };
    for cluster in &repo.config.spec.clusters {
        if let Ok(view) = repo.for_cluster(Some(&cluster.name)) {
            validate::validate_cluster(&view, &mut report);
        }
    }
    let mut orphan_files: Vec<&str> = repo
        .objects
        .iter()
        .map(|o| o.file.as_str())
        .filter(|f| !repo.config.spec.clusters.iter().any(|c| c.includes(f)))
        .collect();
    orphan_files.dedup();
    for f in orphan_files {
        let mut d = Diagnostics::new(f);
        d.warning(
            yaml::Pos::default(),
            "no cluster in kars.yaml includes this file, so nothing renders it; add its folder to a cluster's paths",
        );
        report.add(d);
    }
    report.finish();
    report
}

/// A repository loaded and validated for one cluster: list its signed-bundle references, have
/// them verified, then render with the result.
pub struct Prepared {
    repo: repo::LoadedRepo,
    cluster: String,
    /// Warnings found while validating (errors make [`prepare`] fail).
    pub report: Report,
    /// The fields set in what this cluster receives that this version does not enforce (also
    /// among the warnings).
    pub unenforced: Vec<maturity::Unenforced>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// Loads and validates what `cluster` receives (the only cluster when `None`).
pub fn prepare(tree: &RepoTree, cluster: Option<&str>) -> Result<Prepared, RenderError> {
    let (repo, mut report) = repo::load(tree);
    let Some(repo) = repo else {
        return Err(RenderError::Invalid { report });
    };
    let view = repo.for_cluster(cluster).map_err(RenderError::Cluster)?;
    validate::validate_cluster(&view, &mut report);
    report.finish();
    // Only errors in the files this cluster renders (and kars.yaml) block it.
    let files: std::collections::BTreeSet<&str> =
        view.objects.iter().map(|o| o.file.as_str()).collect();
    report
        .diagnostics
        .retain(|d| d.file == config::FILE || files.contains(d.file.as_str()));
    if report.has_errors() {
        return Err(RenderError::Invalid { report });
    }
    let cluster = view.cluster.name.clone();
    let unenforced = view.objects.iter().flat_map(maturity::unenforced).collect();
    drop(view);
    Ok(Prepared {
        repo,
        cluster,
        report,
        unenforced,
    })
}

impl Prepared {
    /// The cluster being rendered.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Every signed-bundle reference of the objects this cluster receives, in file order.
    pub fn bundle_uses(&self) -> Vec<bundle::BundleUse> {
        match self.repo.for_cluster(Some(&self.cluster)) {
            Ok(view) => view.objects.iter().flat_map(bundle::uses_of).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Renders with the bundles verified so far (objects needing others are held back).
    pub fn render(&self, bundles: &Bundles) -> Result<Rendered, RenderError> {
        let view = self
            .repo
            .for_cluster(Some(&self.cluster))
            .map_err(RenderError::Cluster)?;
        render::render_cluster(&view, bundles).map_err(RenderError::Problems)
    }
}

/// Validates and renders what `cluster` receives (the only cluster when `None`).
pub fn render_tree(
    tree: &RepoTree,
    cluster: Option<&str>,
    bundles: &Bundles,
) -> Result<Rendered, RenderError> {
    prepare(tree, cluster)?.render(bundles)
}

#[cfg(test)]
mod tests;
