//! The egress forward proxy: `CONNECT host:port` tunnels, absolute-form plain-HTTP requests
//! (`GET http://host/path`) and transparently redirected connections (TLS by its ClientHello's
//! server name, origin-form HTTP by its `Host`), one destination per connection.
//!
//! The stages, one module each: [`head`] and [`sni`] parse what the client sent (pure),
//! [`connect`] decides, resolves once and connects to a checked address, [`respond`] turns
//! every refusal into its status, reason word, audit record and metric. Every allowed
//! decision is recorded in the audit log before any byte goes upstream; when it cannot be
//! recorded the connection is refused (egress fails closed).
//!
//! Limits ([`ProxyLimits`]): the request head (or ClientHello) must arrive within
//! `head_timeout` of the connection being accepted and within `max_head` bytes; an
//! established tunnel that carries no byte either way for `idle_timeout` is closed.

pub mod connect;
pub mod head;
pub mod respond;
pub mod sni;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::audit::{AuditLog, Throttle};
use crate::listeners::{Accept, Listeners, accept_forever};
use crate::reload::Policies;
use connect::{Planned, connect, plan};
use head::{HeadError, destination, forwarded_head, parse_head};
use respond::{Cause, refuse};

/// How names are resolved.
#[derive(Clone, Debug)]
pub enum Resolver {
    /// The system resolver (getaddrinfo), once per connection.
    System,
    /// Fixed answers (tests and benchmarks): name → addresses; other names do not resolve.
    Static(HashMap<String, Vec<IpAddr>>),
}

impl Resolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Resolver::System => tokio::net::lookup_host((host, port))
                .await
                .map(|it| it.collect()),
            Resolver::Static(map) => map
                .get(host)
                .map(|ips| ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{host} has no address"),
                    )
                }),
        }
    }
}

/// Limits of the proxy.
#[derive(Clone, Debug)]
pub struct ProxyLimits {
    /// Largest request head (or TLS ClientHello record) accepted, in bytes.
    pub max_head: usize,
    /// Time from accepting a connection until its request head (or ClientHello) is complete.
    pub head_timeout: Duration,
    /// Time allowed to connect upstream.
    pub connect_timeout: Duration,
    /// An established connection with no byte in either direction for this long is closed.
    pub idle_timeout: Duration,
    /// Port of a transparently redirected TLS connection whose original destination is unknown.
    pub default_tls_port: u16,
    /// Port of a transparently redirected HTTP request without a port in its Host header and
    /// without a known original destination.
    pub default_http_port: u16,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits {
            max_head: 16 * 1024,
            head_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            default_tls_port: 443,
            default_http_port: 80,
        }
    }
}

/// What the proxy needs: the policies in force, a resolver, the audit log.
pub struct ProxyState {
    /// The policies (the egress policy of the snapshot in force decides).
    pub policies: Arc<Policies>,
    /// Name resolution.
    pub resolver: Resolver,
    /// Where decisions are recorded.
    pub audit: Option<Arc<AuditLog>>,
    /// Limits.
    pub limits: ProxyLimits,
    /// The router's clock, Unix seconds (tests replace it).
    pub clock: fn() -> i64,
    /// Decision counters.
    pub metrics: Arc<crate::metrics::RouterMetrics>,
    /// Rate limit of refusal records.
    pub throttle: Throttle,
}

impl ProxyState {
    /// A proxy over `policies` with the system clock and the default refusal throttle.
    pub fn new(
        policies: Arc<Policies>,
        resolver: Resolver,
        audit: Option<Arc<AuditLog>>,
        limits: ProxyLimits,
        metrics: Arc<crate::metrics::RouterMetrics>,
    ) -> ProxyState {
        ProxyState {
            policies,
            resolver,
            audit,
            limits,
            clock: system_clock,
            metrics,
            throttle: Throttle::default(),
        }
    }
}

/// Unix seconds now.
pub fn system_clock() -> i64 {
    kars_contract::time::unix_now()
}

/// Accepts connections forever (accept errors back off; see [`crate::listeners`]).
pub async fn serve(listener: impl Accept, state: Arc<ProxyState>) {
    serve_with_health(listener, state, Arc::default()).await
}

/// [`serve`], reporting the listener's health in `health`.
pub async fn serve_with_health(
    listener: impl Accept,
    state: Arc<ProxyState>,
    health: Arc<Listeners>,
) {
    accept_forever("egress-proxy", listener, health, move |stream, peer| {
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, &state).await {
                tracing::debug!(%peer, error = %e, "proxy connection ended");
            }
        });
    })
    .await
}

/// Reads until `parse` completes, fails, or `deadline` passes; at most `max + 1` bytes.
async fn read_until<T, E>(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
    parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> Result<Option<T>, Result<E, ()>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(done) = parse(buf).map_err(Ok)? {
            return Ok(Some(done));
        }
        let room = (max + 1).saturating_sub(buf.len()).clamp(1, chunk.len());
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk[..room])).await {
            Err(_) => return Err(Err(())),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(None),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// The port the client originally connected to, when its connection was redirected here
/// (iptables REDIRECT keeps it as `SO_ORIGINAL_DST`); `None` for direct connections.
fn original_port(stream: &TcpStream) -> Option<u16> {
    let sock = socket2::SockRef::from(stream);
    let dst = sock
        .original_dst_v4()
        .or_else(|_| sock.original_dst_v6())
        .ok()?
        .as_socket()?;
    let local = stream.local_addr().ok()?;
    // Without a redirect the kernel has no original destination (or reports our own address).
    (dst != local).then_some(dst.port())
}

/// Records an allowed decision; the connection may proceed only when that worked.
fn record_allowed(state: &ProxyState, p: &Planned, tunnel: bool) -> Result<(), Cause> {
    state.metrics.egress("allowed", p.allowed.reason());
    let Some(log) = &state.audit else {
        return Ok(());
    };
    let addresses: Vec<String> = p.addresses.iter().map(ToString::to_string).collect();
    let fields = json!({
        "event": "egress.decision", "allowed": true, "host": p.host, "port": p.port,
        "addresses": addresses, "via": p.allowed.to_string(), "tunnel": tunnel,
    });
    let serde_json::Value::Object(map) = fields else {
        return Ok(());
    };
    log.append(&kars_contract::time::now_rfc3339(), map)
        .map(drop)
        .map_err(|e| {
            state.metrics.audit_write_failures.inc();
            tracing::error!(error = %e, host = %p.host, "audit write failed; refusing the connection");
            Cause::AuditUnavailable(e.to_string())
        })
}

/// Decides, records and connects; on any refusal answers (`http`) or closes, and returns
/// `None`.
async fn admit(
    stream: &mut TcpStream,
    state: &ProxyState,
    host: &str,
    port: u16,
    tunnel: bool,
    context: serde_json::Value,
    http: bool,
) -> Option<TcpStream> {
    let result = match plan(state, host, port).await {
        Ok(p) => match record_allowed(state, &p, tunnel) {
            Ok(()) => connect(state, &p).await,
            Err(cause) => Err(cause),
        },
        Err(cause) => Err(cause),
    };
    match result {
        Ok(c) => Some(c.upstream),
        Err(cause) => {
            refuse(stream, state, cause, context, http).await;
            None
        }
    }
}

/// Copies bytes both ways until both sides are done, or until nothing moved for `idle`.
async fn relay(client: TcpStream, upstream: TcpStream, idle: Duration) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let (mut cbuf, mut ubuf) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut from_client, mut from_upstream) = (true, true);
    while from_client || from_upstream {
        tokio::select! {
            r = cr.read(&mut cbuf), if from_client => match r? {
                0 => {
                    from_client = false;
                    let _ = uw.shutdown().await;
                }
                n => uw.write_all(&cbuf[..n]).await?,
            },
            r = ur.read(&mut ubuf), if from_upstream => match r? {
                0 => {
                    from_upstream = false;
                    let _ = cw.shutdown().await;
                }
                n => cw.write_all(&ubuf[..n]).await?,
            },
            _ = tokio::time::sleep(idle) => {
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"));
            }
        }
    }
    Ok(())
}

/// A TLS connection redirected here: the destination is the ClientHello's server name, on the
/// original destination port (443 when there is none). The ClientHello is forwarded unchanged.
async fn transparent_tls(
    mut stream: TcpStream,
    state: &ProxyState,
    deadline: Instant,
) -> std::io::Result<()> {
    let port = original_port(&stream).unwrap_or(state.limits.default_tls_port);
    let context = json!({"transparent": "tls", "port": port});
    let mut hello = Vec::with_capacity(2048);
    let max = state.limits.max_head;
    let name = match read_until(&mut stream, &mut hello, max, deadline, |b| {
        sni::client_hello_sni(b, max)
    })
    .await
    {
        Ok(Some(name)) => name,
        Ok(None) => return Ok(()),
        Err(Ok(e)) => {
            refuse(&mut stream, state, Cause::BadClientHello(e), context, false).await;
            return Ok(());
        }
        Err(Err(())) => {
            refuse(&mut stream, state, Cause::HeadTimeout, context, false).await;
            return Ok(());
        }
    };
    let context = json!({"transparent": "tls", "host": name, "port": port});
    let Some(mut upstream) = admit(&mut stream, state, &name, port, true, context, false).await
    else {
        return Ok(());
    };
    upstream.write_all(&hello).await?;
    relay(stream, upstream, state.limits.idle_timeout).await
}

/// Handles one client connection.
pub async fn handle(mut stream: TcpStream, state: &ProxyState) -> std::io::Result<()> {
    let deadline = Instant::now() + state.limits.head_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => return transparent_tls(stream, state, deadline).await,
        Ok(Ok(1)) => {}
        Ok(_) => return Ok(()),
        Err(_) => {
            refuse(&mut stream, state, Cause::HeadTimeout, json!({}), true).await;
            return Ok(());
        }
    }
    let transparent_port = original_port(&stream).unwrap_or(state.limits.default_http_port);
    let mut buf = Vec::with_capacity(1024);
    let max = state.limits.max_head;
    let head = match read_until(&mut stream, &mut buf, max, deadline, |b| parse_head(b, max)).await
    {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(()),
        Err(Ok(HeadError::TooLarge)) => {
            refuse(&mut stream, state, Cause::HeadTooLarge, json!({}), true).await;
            return Ok(());
        }
        Err(Ok(HeadError::Malformed(why))) => {
            refuse(
                &mut stream,
                state,
                Cause::MalformedRequest(why),
                json!({}),
                true,
            )
            .await;
            return Ok(());
        }
        Err(Err(())) => {
            refuse(&mut stream, state, Cause::HeadTimeout, json!({}), true).await;
            return Ok(());
        }
    };
    let rest = buf[head.len..].to_vec();
    let dest = match destination(&head, transparent_port) {
        Ok(d) => d,
        Err(refusal) => {
            let context = json!({"target": head.target});
            refuse(&mut stream, state, Cause::Refused(refusal), context, true).await;
            return Ok(());
        }
    };
    let context = json!({"host": dest.host, "port": dest.port});
    let Some(mut upstream) = admit(
        &mut stream,
        state,
        &dest.host,
        dest.port,
        dest.tunnel,
        context,
        true,
    )
    .await
    else {
        return Ok(());
    };
    if dest.tunnel {
        stream
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await?;
    } else {
        upstream.write_all(&forwarded_head(&head)).await?;
    }
    if !rest.is_empty() {
        upstream.write_all(&rest).await?;
    }
    relay(stream, upstream, state.limits.idle_timeout).await
}
#[cfg(test)]
mod tests;
