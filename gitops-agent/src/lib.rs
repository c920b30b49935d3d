//! kars-gitops-agent library: the pipeline the agent and the `kars` CLI share.
//!
//! Modules follow the data flow: [`source`] (Git history with gix) → [`verify`] (signatures,
//! trust policy) → [`bundles`] (signed OCI bundles) → render (the `kars-renderer` crate) →
//! [`apply`] (server-side apply), [`prune`], [`health`], [`enforcement`] — all through
//! [`cluster`] (the kube client, discovery, live objects; [`compare`] is the pure live-vs-
//! rendered comparison) → [`status`] (the PolicyRepo CRD). [`sync`] strings one pass together
//! as a pipeline of typed step outcomes and a pure status report; [`inspect`] runs the same
//! steps read-only. Around it: the long-running [`agent`] with push [`webhook`]s, [`lease`]
//! election and [`metrics`]. [`sre`] runs the SRE actions approved through Git after the apply
//! step; [`forge`] talks to the pull requests they come through; [`sync_log`] keeps a signed
//! hash chain of what each sync applied.

pub mod agent;
pub mod apply;
pub mod bundles;
pub mod cluster;
pub mod compare;
pub mod enforcement;
pub mod expired;
pub mod forge;
pub mod health;
pub mod inspect;
pub mod kars_status;
pub mod lease;
pub mod live;
pub mod metrics;
pub mod preview;
pub mod progress;
pub mod prune;
pub mod source;
pub mod sre;
pub mod status;
pub mod sync;
pub mod sync_log;
pub mod verify;
pub mod webhook;

/// An HTTP client for talking to routers (plain HTTP inside the pod network, short timeouts).
/// It trusts no certificate roots at all: it never needs them, and building it must not
/// depend on the system's CA bundle (a minimal image has none).
pub fn reqwest_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .tls_certs_only(Vec::new())
        .build()
}
