//! Router configuration, read from the environment the renderer sets on the container.

/// Environment variable names, all in one place.
pub mod env {
    /// Port of the main HTTP listener.
    pub const ROUTER_PORT: &str = "ROUTER_PORT";
    /// File holding the admin bearer token.
    pub const ADMIN_TOKEN_FILE: &str = "ADMIN_TOKEN_FILE";
    /// Sandbox name (for logs and status).
    pub const SANDBOX_NAME: &str = "SANDBOX_NAME";
    /// Egress allowlist mount.
    pub const EGRESS_ALLOWLIST_DIR: &str = "EGRESS_ALLOWLIST_DIR";
    /// Egress approvals mount.
    pub const EGRESS_APPROVAL_DIR: &str = "EGRESS_APPROVAL_DIR";
    /// AGT profile mount.
    pub const AGT_POLICY_DIR: &str = "AGT_POLICY_DIR";
    /// Inference policy mount.
    pub const INFERENCE_POLICY_DIR: &str = "INFERENCE_POLICY_DIR";
    /// Memory binding mount.
    pub const MEMORY_BINDING_DIR: &str = "MEMORY_BINDING_DIR";
}
