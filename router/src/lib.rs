//! kars-router: the sidecar beside every agent container.
//!
//! What exists today: loading the policy files the renderer mounts (egress allowlist, egress
//! approvals, AGT profile, inference policy, memory binding), reloading them when they change
//! (a bad file keeps the last good copy and is reported), and `GET /internal/policy-status`,
//! which echoes each loaded policy's digest so the agent can tell when a policy is enforced.
//! The audit log with its hash chain (`audit`) is in place; enforcement (egress proxy,
//! inference proxy, tool decisions) is issue 7.

pub mod audit;
pub mod auth;
pub mod budget;
pub mod config;
pub mod egress;
pub mod governance;
pub mod inference;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod server;
