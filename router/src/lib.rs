//! kars-router: the sidecar beside every agent container.
//!
//! What exists today: loading the policy files the renderer mounts (egress allowlist, egress
//! approvals, AGT profile, inference policy, memory binding), reloading them when they change
//! (a bad file keeps the last good copy and is reported), and `GET /internal/policy-status`,
//! which echoes each loaded policy's digest so the agent can tell when a policy is enforced.
//! Enforcement (egress proxy, inference proxy, tool decisions, audit chain) is issue 7.

pub mod auth;
pub mod config;
pub mod policy;
pub mod server;
