//! Progress of a long sync, for people watching it (`kars sync` prints it on stderr): which
//! step runs, how many objects are applied or pruned so far, how long health is still waited
//! for. The agent passes no sink and pays nothing.

use std::sync::Arc;
use std::time::Duration;

/// One thing that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A step started (`fetch`, `verify`, `bundles`, `render`, `apply`, `prune`, `health`,
    /// `enforce`).
    Step(&'static str),
    /// Objects applied (or checked, in a dry run) so far of those that change.
    Applied {
        /// Done.
        done: usize,
        /// To do.
        total: usize,
    },
    /// Objects pruned so far.
    Pruned {
        /// Done.
        done: usize,
        /// To do.
        total: usize,
    },
    /// Waiting for objects to become healthy.
    Waiting {
        /// Objects not healthy yet.
        pending: usize,
        /// Time left before giving up.
        left: Duration,
    },
}

/// Where progress goes (nowhere by default).
#[derive(Clone, Default)]
pub struct Progress(Option<Arc<dyn Fn(Event) + Send + Sync>>);

impl Progress {
    /// Progress delivered to `sink`.
    pub fn to(sink: impl Fn(Event) + Send + Sync + 'static) -> Self {
        Progress(Some(Arc::new(sink)))
    }

    /// Reports `event`.
    pub fn emit(&self, event: Event) {
        if let Some(sink) = &self.0 {
            sink(event);
        }
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(sink)"
        } else {
            "Progress(none)"
        })
    }
}
