//! kars-router: the sidecar beside every agent container, the only way out of the pod.
//!
//! The data flow, one module each: [`reload`] reads the policy mounts the renderer configured
//! (the names come from `kars-contract`), compiles each kind once and swaps in a snapshot;
//! [`proxy`] is the egress forward proxy (listener → request head / ClientHello → decision by
//! [`egress`] → checked connect → relay); [`server`] serves governance decisions ([`governance`]),
//! the inference proxy ([`inference`], [`budget`]), `/internal/policy-status` and health;
//! [`audit`] is the hash-chained log every decision goes to first; [`listeners`] keeps every
//! port accepting (and `/healthz` honest) through accept errors.
//!
//! `main.rs` only reads the settings ([`config`]) and wires these together.

pub mod audit;
pub mod audit_heads;
pub mod auth;
pub mod budget;
pub mod config;
pub mod egress;
pub mod governance;
pub mod inference;
pub mod listeners;
pub mod metrics;
pub mod policy_file;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod state_file;
pub mod tool_policy;
