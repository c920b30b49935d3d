//! kars-gitops-agent library: the pipeline the agent and the `kars` CLI share.
//!
//! Modules follow the data flow: [`source`] (Git history with gix) → verify (signatures,
//! trust policy) → render (the `kars-renderer` crate) → [`apply`] (server-side apply), [`prune`],
//! [`health`] → [`status`] (the PolicyRepo CRD), with [`metrics`] and push [`webhook`]s. [`sync`] strings one pass together.

pub mod agent;
pub mod apply;
pub mod bundles;
pub mod enforcement;
pub mod health;
pub mod inspect;
pub mod lease;
pub mod metrics;
pub mod prune;
pub mod source;
pub mod status;
pub mod sync;
pub mod verify;
pub mod webhook;

/// An HTTP client for talking to routers (rustls, short timeouts).
pub fn reqwest_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}
