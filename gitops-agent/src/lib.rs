//! kars-gitops-agent library: the pipeline the agent and the `kars` CLI share.
//!
//! Modules follow the data flow: [`source`] (Git history with gix) → verify (signatures,
//! trust policy) → render (the `kars-renderer` crate) → [`apply`] (server-side apply, prune,
//! health) → status. [`sync`] strings one pass together.

pub mod apply;
pub mod source;
pub mod sync;
pub mod verify;
