//! kars-contract: what the renderer writes, the agent checks and the router reads, declared
//! once.
//!
//! The renderer puts policies into ConfigMaps, mounts them into the router container at fixed
//! paths and tells the router where through environment variables; the router loads them and
//! echoes a digest per policy kind; the agent compares that digest with the renderer's. Those
//! names, paths, ports, labels and the digest framing are this crate ([`policy`], [`router`],
//! [`labels`]), together with the rules all three must apply the same way: the normal form of an
//! egress host ([`host`]), RFC 3339 instants and durations ([`time`]), and the stable reason
//! words the agent writes into status, Events, metrics and CLI output ([`reason`]), and the
//! hash-chained record format of the router's audit log and the agent's sync log ([`chain`]).
//!
//! No I/O (beyond reading a chain from a reader), no clock reads except [`time::unix_now`], no heavy dependencies.

pub mod chain;
pub mod host;
pub mod labels;
pub mod money;
pub mod policy;
pub mod reason;
pub mod router;
pub mod time;

pub use policy::PolicyKind;
pub use reason::Reason;

/// The API group of the kars CRDs.
pub const KARS_GROUP: &str = "kars.azure.com";
/// The apiVersion of every kars CR.
pub const KARS_API_VERSION: &str = "kars.azure.com/v1alpha1";
/// Our own API group (PolicyRepo, RepositoryConfig, TrustPolicy, SignerList).
pub const GITOPS_GROUP: &str = "gitops.kars.io";
/// The apiVersion of our own kinds.
pub const GITOPS_API_VERSION: &str = "gitops.kars.io/v1alpha1";

/// `text` as a DNS label: ASCII letters and digits lowercased, every other character `-`,
/// no `-` at either end, at most `max` characters (empty when nothing is left).
pub fn dns_label_of(text: &str, max: usize) -> String {
    let mapped: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    mapped
        .trim_matches('-')
        .chars()
        .take(max)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
