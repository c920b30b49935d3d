//! The render memo: a running agent's last render, reused while everything it was made from is
//! the same — the head commit's tree, the cluster, the PolicyRepo stamped on it and the bundle
//! each reference resolved to. Rendering is a pure function of those (no clock, no cluster
//! reads), so a sync whose head tree did not change skips reading the tree, validating and
//! rendering; the commits are still verified and the bundles still resolved each sync.

use std::sync::{Arc, Mutex};

use kars_renderer::Rendered;
use kars_renderer::bundle::BundleUse;
use kars_renderer::maturity::Unenforced;

use crate::status::BundleStatus;

/// One remembered render.
#[derive(Debug)]
pub struct Remembered {
    /// The tree of the rendered commit.
    pub tree: gix::ObjectId,
    /// The cluster asked for (`SyncConfig::cluster`).
    pub cluster: Option<String>,
    /// The PolicyRepo stamped on every object (`SyncConfig::owner`).
    pub owner: String,
    /// The bundle references of that tree.
    pub uses: Vec<BundleUse>,
    /// What it sets that this version does not enforce.
    pub unenforced: Vec<Unenforced>,
    /// What each reference resolved to (see [`bundles_fingerprint`]).
    pub bundles: Vec<(String, String, Option<String>)>,
    /// The render, owner stamped.
    pub rendered: Arc<Rendered>,
}

/// The last render of one agent (see the module documentation).
#[derive(Debug, Default)]
pub struct RenderMemo {
    last: Mutex<Option<Arc<Remembered>>>,
}

impl RenderMemo {
    /// An empty memo.
    pub fn new() -> Self {
        RenderMemo::default()
    }

    /// The remembered render for this cluster and owner, if any.
    pub fn get(&self, cluster: Option<&str>, owner: &str) -> Option<Arc<Remembered>> {
        self.last
            .lock()
            .ok()?
            .clone()
            .filter(|m| m.cluster.as_deref() == cluster && m.owner == owner)
    }

    /// Remembers `render` (replacing the one before).
    pub fn remember(&self, render: Remembered) {
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Arc::new(render));
        }
    }

    /// Forgets what was remembered.
    pub fn clear(&self) {
        if let Ok(mut last) = self.last.lock() {
            *last = None;
        }
    }
}

/// What the render took from the bundle resolution: per reference, the bundle in use (its
/// digest names its bytes).
pub fn bundles_fingerprint(statuses: &[BundleStatus]) -> Vec<(String, String, Option<String>)> {
    statuses
        .iter()
        .map(|s| (s.object.clone(), s.field.clone(), s.verified.clone()))
        .collect()
}
