//! The router's listeners (the API port, the egress proxy, the metrics port): accept loops
//! that survive accept errors, and their health.
//!
//! An `accept()` error (EMFILE when file descriptors run out, ENOBUFS, …) never ends a loop:
//! the listener is marked failing, the loop backs off (5 ms doubling to 1 s) and tries again,
//! and is marked serving as soon as a connection is accepted. `/healthz` answers 503 while any
//! listener is failing, so the kubelet's liveness probe sees it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// The state of one listener.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ListenerState {
    /// Accepting connections.
    Serving,
    /// `accept()` has been failing since `for_ms` milliseconds.
    Failing {
        /// The last error.
        error: String,
        /// How long it has been failing.
        for_ms: u64,
    },
}

/// Since when, and with what error, a listener's accepts fail.
type Failing = Option<(String, Instant)>;

/// The health of every listener, by name.
#[derive(Debug, Default)]
pub struct Listeners {
    states: Mutex<BTreeMap<&'static str, Failing>>,
}

impl Listeners {
    fn set(&self, name: &'static str, failing: Option<String>) {
        let mut states = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let entry = states.entry(name).or_insert(None);
        *entry = match (failing, entry.take()) {
            (None, _) => None,
            (Some(e), Some((_, since))) => Some((e, since)),
            (Some(e), None) => Some((e, Instant::now())),
        };
    }

    /// Each listener's state.
    pub fn states(&self) -> BTreeMap<String, ListenerState> {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(name, failing)| {
                let state = match failing {
                    None => ListenerState::Serving,
                    Some((error, since)) => ListenerState::Failing {
                        error: error.clone(),
                        for_ms: u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                    },
                };
                (name.to_string(), state)
            })
            .collect()
    }

    /// True when every listener is serving.
    pub fn all_serving(&self) -> bool {
        self.states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .all(Option::is_none)
    }
}

/// Where connections come from (a TCP listener; tests inject failures).
pub trait Accept: Send + 'static {
    /// The next connection.
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send;
    /// The listening address.
    fn local_addr(&self) -> std::io::Result<SocketAddr>;
}

impl Accept for TcpListener {
    async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        TcpListener::accept(self).await
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// Accepts connections forever, handing each to `on_connection`; accept errors back off and
/// are reported in `health` under `name`.
pub async fn accept_forever<A: Accept>(
    name: &'static str,
    listener: A,
    health: std::sync::Arc<Listeners>,
    mut on_connection: impl FnMut(TcpStream, SocketAddr) + Send,
) {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    health.set(name, None);
    let mut backoff = Duration::from_millis(5);
    let mut failing = false;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if failing {
                    tracing::info!(listener = name, %addr, "accepting connections again");
                    health.set(name, None);
                    failing = false;
                }
                backoff = Duration::from_millis(5);
                on_connection(stream, peer);
            }
            Err(e) => {
                if !failing {
                    tracing::error!(listener = name, %addr, error = %e, "accept failed; retrying with backoff");
                }
                failing = true;
                health.set(name, Some(e.to_string()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// The address a request's connection came from (every request served by [`serve_http`]
/// carries it as an extension).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer(pub SocketAddr);

impl Peer {
    /// True when the connection came from this host's loopback (in a pod: the pod itself).
    pub fn is_loopback(&self) -> bool {
        self.0.ip().to_canonical().is_loopback()
    }
}

/// Serves an axum app on `listener` with HTTP/1: a request head must arrive within
/// `header_timeout` (slow clients are cut off), connections are accepted by
/// [`accept_forever`].
pub async fn serve_http<A: Accept>(
    name: &'static str,
    listener: A,
    app: axum::Router,
    header_timeout: Duration,
    health: std::sync::Arc<Listeners>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    accept_forever(name, listener, health, move |stream, peer| {
        let service = TowerToHyperService::new(app.clone().layer(axum::Extension(Peer(peer))));
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await
            {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended");
            }
        });
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener whose first `failures` accepts fail like EMFILE.
    struct Flaky {
        inner: TcpListener,
        failures: AtomicUsize,
    }

    impl Accept for Flaky {
        async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
            if self
                .failures
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                tokio::time::sleep(Duration::from_millis(2)).await;
                return Err(std::io::Error::from_raw_os_error(24)); // EMFILE
            }
            self.inner.accept().await
        }
        fn local_addr(&self) -> std::io::Result<SocketAddr> {
            self.inner.local_addr()
        }
    }

    /// Regression: the proxy's accept loop ended for good on the first accept() error
    /// (EMFILE), silently, while /healthz kept answering 200.
    #[tokio::test]
    async fn accept_errors_back_off_show_in_health_and_recover() {
        let inner = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = inner.local_addr().expect("addr");
        let health = Arc::new(Listeners::default());
        let accepted = Arc::new(AtomicUsize::new(0));
        let flaky = Flaky {
            inner,
            failures: AtomicUsize::new(6),
        };
        let a = accepted.clone();
        tokio::spawn(accept_forever(
            "proxy",
            flaky,
            health.clone(),
            move |_, _| {
                a.fetch_add(1, Ordering::SeqCst);
            },
        ));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !health.all_serving(),
            "failing accepts show: {:?}",
            health.states()
        );
        assert!(matches!(
            health.states().get("proxy"),
            Some(ListenerState::Failing { .. })
        ));
        let _c = TcpStream::connect(addr).await.expect("connect");
        for _ in 0..200 {
            if accepted.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "the loop recovered");
        assert!(health.all_serving(), "{:?}", health.states());
    }

    /// Regression: the API port had no header timeout (a 1 byte/s client held a connection
    /// for a minute).
    #[tokio::test]
    async fn a_slow_request_head_is_cut_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let health = Arc::new(Listeners::default());
        tokio::spawn(serve_http(
            "api",
            l,
            app,
            Duration::from_millis(500),
            health,
        ));
        let (mut r, mut w) = TcpStream::connect(addr)
            .await
            .expect("connect")
            .into_split();
        let writer = tokio::spawn(async move {
            for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\n" {
                if w.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let started = Instant::now();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut out)).await;
        let held = started.elapsed();
        writer.abort();
        assert!(
            held < Duration::from_millis(1_500),
            "a slow client held the connection for {held:?}"
        );
        assert!(
            !out.starts_with(b"HTTP/1.1 200"),
            "the slow head was served"
        );
        // A normal request is served.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        assert!(
            out.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
}
