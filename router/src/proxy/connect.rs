//! From a destination to a connected upstream, in two steps with the audit record between
//! them: [`plan`] decides, resolves once and keeps only the addresses the policy accepts;
//! [`connect`] connects to one of exactly those (no second lookup, so no DNS rebinding between
//! check and connect). Nothing reaches the destination before the decision is recorded.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::ProxyState;
use super::respond::Cause;
use crate::egress::{Allowed, Refusal};

/// An allowed destination and the checked addresses it may be reached at.
pub struct Planned {
    /// The host in normal form.
    pub host: String,
    /// The port.
    pub port: u16,
    /// The checked addresses, in resolver order.
    pub addresses: Vec<SocketAddr>,
    /// What allowed it.
    pub allowed: Allowed,
}

/// An upstream connection.
pub struct Connected {
    /// The connection.
    pub upstream: TcpStream,
    /// The checked address connected to.
    pub address: SocketAddr,
}

/// Decides `host:port` with the egress policy in force, resolves it once and keeps the
/// addresses the policy accepts.
pub async fn plan(state: &ProxyState, host: &str, port: u16) -> Result<Planned, Cause> {
    let policy = state.policies.snapshot().egress.clone();
    let (name, allowed) = policy
        .decide(host, port, (state.clock)())
        .map_err(Cause::Refused)?;
    let addrs = state
        .resolver
        .resolve(&name, port)
        .await
        .map_err(|e| Cause::Refused(Refusal::ResolveFailed(format!("{name}: {e}"))))?;
    let mut refused = Vec::new();
    let addresses: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| match policy.check_address(a.ip()) {
            Ok(()) => true,
            Err(r) => {
                refused.push(r.detail().to_string());
                false
            }
        })
        .collect();
    if addresses.is_empty() {
        return Err(Cause::Refused(Refusal::ForbiddenAddress(format!(
            "{name} resolves only to refused addresses ({})",
            refused.join("; ")
        ))));
    }
    Ok(Planned {
        host: name,
        port,
        addresses,
        allowed,
    })
}

/// Connects to the first of the planned addresses that answers.
pub async fn connect(state: &ProxyState, p: &Planned) -> Result<Connected, Cause> {
    let mut errors = Vec::new();
    for address in &p.addresses {
        match tokio::time::timeout(state.limits.connect_timeout, TcpStream::connect(address)).await
        {
            Ok(Ok(upstream)) => {
                let _ = upstream.set_nodelay(true);
                return Ok(Connected {
                    upstream,
                    address: *address,
                });
            }
            Ok(Err(e)) => errors.push(format!("{address}: {e}")),
            Err(_) => errors.push(format!("{address}: timed out")),
        }
    }
    Err(Cause::ConnectFailed(format!(
        "could not connect to {}:{} ({})",
        p.host,
        p.port,
        errors.join("; ")
    )))
}
