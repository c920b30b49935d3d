//! The router container the renderer writes and the router binary reads: ports, environment
//! variable names, secrets and state paths.

/// The router container's name in a sandbox pod.
pub const CONTAINER: &str = "inference-router";
/// The router's main port (inference, governance, policy status).
pub const PORT: u16 = 8443;
/// The egress forward proxy's port (the egress guard redirects the agent's 80/443 here).
pub const FORWARD_PROXY_PORT: u16 = 8444;
/// The port serving `/metrics` and `/healthz` only.
pub const METRICS_PORT: u16 = 9090;
/// The agent container's user id (the egress guard's iptables rules match it).
pub const AGENT_UID: u32 = 1000;
/// The router container's user id.
pub const ROUTER_UID: u32 = 1001;

/// The Secret holding the router's admin bearer token (generated in the cluster).
pub const ADMIN_TOKEN_SECRET: &str = "router-admin-token";
/// The Secret holding the runtime gateway token (generated in the cluster).
pub const GATEWAY_TOKEN_SECRET: &str = "gateway-token";
/// The data key of both generated Secrets.
pub const TOKEN_KEY: &str = "token";
/// The Secret holding the Ed25519 seed the router signs its audit chain's head with
/// (generated in the cluster: 32 random bytes, hex).
pub const AUDIT_KEY_SECRET: &str = "router-audit-key";
/// The data key of [`AUDIT_KEY_SECRET`].
pub const AUDIT_KEY_DATA: &str = "ed25519-seed";
/// Where [`AUDIT_KEY_SECRET`] is mounted in the router container (the agent never sees it).
pub const AUDIT_KEY_DIR: &str = "/etc/kars/audit-key";
/// Where the admin token Secret is mounted in the router container.
pub const ADMIN_TOKEN_DIR: &str = "/etc/kars/secrets";
/// The admin token file inside [`ADMIN_TOKEN_DIR`].
pub const ADMIN_TOKEN_FILE_NAME: &str = "admin-token";
/// The router's state volume (token-budget ledger).
pub const STATE_DIR: &str = "/var/lib/kars";
/// The commerce ledger (what ToolPolicy transfers spent; survives restarts).
pub const COMMERCE_LEDGER_FILE: &str = "/var/lib/kars/commerce-ledger.json";
/// The token-budget ledger.
pub const BUDGET_FILE: &str = "/var/lib/kars/token-budgets.json";
/// The router's log volume.
pub const LOG_DIR: &str = "/var/log/kars";
/// The audit log directory (`audit.jsonl` in it).
pub const AUDIT_DIR: &str = "/var/log/kars/audit";
/// The audit log file name inside the audit directory.
pub const AUDIT_FILE_NAME: &str = "audit.jsonl";

/// Environment variable names of the router container: the ones the renderer sets, then the
/// router's own settings (which the renderer leaves to the operator).
pub mod env {
    /// Port of the main listener.
    pub const ROUTER_PORT: &str = "ROUTER_PORT";
    /// Port of the egress forward proxy.
    pub const FORWARD_PROXY_PORT: &str = "FORWARD_PROXY_PORT";
    /// Port of the metrics listener.
    pub const METRICS_PORT: &str = "METRICS_PORT";
    /// File holding the admin bearer token.
    pub const ADMIN_TOKEN_FILE: &str = "ADMIN_TOKEN_FILE";
    /// Sandbox name (logs and policy status).
    pub const SANDBOX_NAME: &str = "SANDBOX_NAME";
    /// The sandbox's isolation level (informational).
    pub const SANDBOX_ISOLATION: &str = "SANDBOX_ISOLATION";
    /// `strict` or `learn`.
    pub const EGRESS_MODE: &str = "EGRESS_MODE";
    /// The token-budget ledger file.
    pub const TOKEN_BUDGET_PERSIST_PATH: &str = "TOKEN_BUDGET_PERSIST_PATH";
    /// The commerce ledger file.
    pub const COMMERCE_LEDGER: &str = "KARS_COMMERCE_LEDGER";
    /// The audit log directory.
    pub const AUDIT_DIR: &str = "KARS_AUDIT_DIR";
    /// `true` when the sandbox's governance is enabled.
    pub const GOVERNANCE_ENABLED: &str = "GOVERNANCE_ENABLED";
    /// The daily token budget (informational; the inference policy file is authoritative).
    pub const TOKEN_BUDGET_DAILY: &str = "TOKEN_BUDGET_DAILY";
    /// The per-request token cap (informational; the inference policy file is authoritative).
    pub const TOKEN_BUDGET_PER_REQUEST: &str = "TOKEN_BUDGET_PER_REQUEST";
    /// Router only: the audit log file (overrides the directory).
    pub const AUDIT_LOG: &str = "KARS_AUDIT_LOG";
    /// Router only: when the audit log is synced to disk.
    pub const AUDIT_FSYNC: &str = "KARS_AUDIT_FSYNC";
    /// An Ed25519 key the router signs its audit chain's head with (PKCS#8 PEM, or a 32-byte
    /// seed in hex as the generated `router-audit-key` Secret holds).
    pub const AUDIT_SIGNING_KEY_FILE: &str = "KARS_AUDIT_SIGNING_KEY_FILE";
    /// How often the head is signed (it is signed on shutdown too).
    pub const AUDIT_SIGN_INTERVAL: &str = "KARS_AUDIT_SIGN_INTERVAL";
    /// Router only: a file of blocklisted host names.
    pub const EGRESS_BLOCKLIST_FILE: &str = "KARS_EGRESS_BLOCKLIST_FILE";
    /// Router only: internal CIDRs the proxy may connect to.
    pub const EGRESS_ALLOW_CIDRS: &str = "KARS_EGRESS_ALLOW_CIDRS";
    /// Inference providers, `NAME=URL,…` (rendered from kars.yaml `providers`).
    pub const INFERENCE_PROVIDERS: &str = "KARS_INFERENCE_PROVIDERS";
    /// Inference providers' API key files, `NAME=FILE,…` (rendered from kars.yaml credentials).
    pub const INFERENCE_PROVIDER_KEY_FILES: &str = "KARS_INFERENCE_PROVIDER_KEY_FILES";
    /// Router only: extra CA certificates for inference upstreams.
    pub const INFERENCE_CA_FILE: &str = "KARS_INFERENCE_CA_FILE";
}

/// Prefixes of agent environment names a repository may not set (upstream drops them; the
/// renderer drops them too and `kars validate` reports each one).
pub const RESERVED_AGENT_ENV_PREFIXES: [&str; 5] =
    ["AGT_", "FOUNDRY_AGENT_", "AZURE_", "IMDS_", "KARS_"];

/// Agent environment names the renderer sets itself (a repository's value for them is not used).
pub const RENDERED_AGENT_ENV: [&str; 3] = ["SANDBOX_NAME", "OPENAI_BASE_URL", "KARS_MODEL"];

/// True for a POSIX-style environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_env_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

/// Why the agent environment variable `name` from the repository is not used, if it is not.
pub fn dropped_agent_env(name: &str) -> Option<String> {
    if !is_env_name(name) {
        return Some(format!(
            "{name:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*); dropped"
        ));
    }
    if let Some(p) = RESERVED_AGENT_ENV_PREFIXES
        .iter()
        .find(|p| name.starts_with(*p))
    {
        return Some(format!(
            "names starting with {p} are reserved for kars; dropped"
        ));
    }
    if RENDERED_AGENT_ENV.contains(&name) {
        return Some("the renderer sets this variable; the written value is not used".into());
    }
    None
}

/// Where a provider's API key Secret is mounted in the router (`<dir>/<provider>/key`).
pub const PROVIDERS_DIR: &str = "/etc/kars/providers";

/// The router's key file for provider `name`.
pub fn provider_key_file(name: &str) -> String {
    format!("{PROVIDERS_DIR}/{name}/key")
}

/// The router's audit signing key file as the renderer mounts it.
pub fn audit_key_file() -> String {
    format!("{AUDIT_KEY_DIR}/{AUDIT_KEY_DATA}")
}

/// The router's admin token file as the renderer mounts it.
pub fn admin_token_file() -> String {
    format!("{ADMIN_TOKEN_DIR}/{ADMIN_TOKEN_FILE_NAME}")
}
