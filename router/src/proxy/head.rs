//! The request head of a proxy connection, and the destination it names. Pure: bytes in,
//! a head or a refusal out.

use kars_contract::host::normalize_host;

use crate::egress::Refusal;

/// A parsed request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The method.
    pub method: String,
    /// The request target as sent.
    pub target: String,
    /// Header names and values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head (what follows is body or tunnelled data).
    pub len: usize,
}

impl Head {
    /// Values of the header `name` (case-insensitive).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }
}

/// Why a head cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeadError {
    /// More than the limit before the head ends.
    TooLarge,
    /// Not an HTTP/1 request head.
    Malformed(String),
}

/// Most header lines a head may have.
pub const MAX_HEADERS: usize = 96;

/// Parses `buf`: `Ok(None)` when the head is not complete yet (and `buf` is within `max`),
/// [`HeadError::TooLarge`] as soon as more than `max` bytes are needed — a complete head
/// longer than `max` included.
pub fn parse_head(buf: &[u8], max: usize) -> Result<Option<Head>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max => Err(HeadError::TooLarge),
        Ok(httparse::Status::Complete(len)) => Ok(Some(Head {
            method: req.method.unwrap_or_default().to_string(),
            target: req.path.unwrap_or_default().to_string(),
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
            len,
        })),
        Ok(httparse::Status::Partial) if buf.len() > max => Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooLarge),
        Err(e) => Err(HeadError::Malformed(e.to_string())),
    }
}

/// Splits `host:port` (the port is required and not 0).
pub fn split_authority(authority: &str) -> Option<(&str, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    Some((host, port))
}

/// Where a request wants to go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The host as written (decided and normalised later).
    pub host: String,
    /// The port.
    pub port: u16,
    /// `CONNECT`: a tunnel.
    pub tunnel: bool,
}

fn invalid(why: String) -> Refusal {
    Refusal::InvalidHost(why)
}

/// The destination of a request head. `transparent_port` is the port of a redirected
/// origin-form request whose `Host` has none (its original destination, else 80).
///
/// - `CONNECT host:port`: the tunnel goes to the target; a `Host` header cannot change that
///   and is not read.
/// - `GET http://host[:port]/…`: the target, with no userinfo; a `Host` header, when present,
///   must name the same destination, and only one may be present.
/// - `GET /…` (origin form, a transparently redirected connection): exactly one `Host`.
pub fn destination(head: &Head, transparent_port: u16) -> Result<Destination, Refusal> {
    if head.target.starts_with('/') {
        let hosts: Vec<&[u8]> = head.header_values("host").collect();
        let [host] = hosts.as_slice() else {
            return Err(invalid(
                "an origin-form request needs exactly one Host header".into(),
            ));
        };
        let host = String::from_utf8_lossy(host).to_string();
        return Ok(match split_authority(&host) {
            Some((h, p)) => Destination {
                host: h.to_string(),
                port: p,
                tunnel: false,
            },
            None => Destination {
                host,
                port: transparent_port,
                tunnel: false,
            },
        });
    }
    if head.method.eq_ignore_ascii_case("CONNECT") {
        let (host, port) = split_authority(&head.target)
            .ok_or_else(|| invalid(format!("CONNECT target {:?} is not host:port", head.target)))?;
        return Ok(Destination {
            host: host.to_string(),
            port,
            tunnel: true,
        });
    }
    let uri: http::Uri = head
        .target
        .parse()
        .map_err(|_| invalid(format!("request target {:?} is not a URI", head.target)))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(invalid(format!(
                "scheme {other}: only http:// is proxied in absolute form; use CONNECT for TLS"
            )));
        }
        None => {
            return Err(invalid(format!(
                "request target {:?}: expected CONNECT host:port, http://host/..., or /path with a Host header",
                head.target
            )));
        }
    }
    let authority = uri
        .authority()
        .ok_or_else(|| invalid("no host in the request target".into()))?;
    if authority.as_str().contains('@') {
        return Err(invalid(
            "userinfo in the request target is not allowed".into(),
        ));
    }
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().to_string();
    let host_headers: Vec<&[u8]> = head.header_values("host").collect();
    if host_headers.len() > 1 {
        return Err(invalid("more than one Host header".into()));
    }
    if let Some(v) = host_headers.first() {
        let v = String::from_utf8_lossy(v);
        let (h, p) = match split_authority(&v) {
            Some((h, p)) => (h.to_string(), p),
            None => (v.to_string(), 80),
        };
        let named = normalize_host(&h).ok();
        let same = p == port && named.is_some() && named == normalize_host(&host).ok();
        if !same {
            return Err(invalid(format!(
                "Host header {v:?} does not name the request target {authority}"
            )));
        }
    }
    Ok(Destination {
        host,
        port,
        tunnel: false,
    })
}

/// The head forwarded upstream for an absolute-form or origin-form request: origin form,
/// without `Proxy-*`, `Connection` and `Keep-Alive`, ending with `Connection: close` (one
/// exchange per connection, so a second request cannot name another host).
pub fn forwarded_head(head: &Head) -> Vec<u8> {
    let path = head
        .target
        .parse::<http::Uri>()
        .ok()
        .and_then(|u| u.path_and_query().map(|p| p.as_str().to_string()))
        .unwrap_or_else(|| "/".into());
    let mut out = format!("{} {path} HTTP/1.1\r\n", head.method).into_bytes();
    for (n, v) in &head.headers {
        let lower = n.to_ascii_lowercase();
        if lower.starts_with("proxy-") || lower == "connection" || lower == "keep-alive" {
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes(), 16 * 1024)
            .expect("valid")
            .expect("complete")
    }

    #[test]
    fn limits_are_exact() {
        let max = 1024;
        let filler = |n: usize| format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(n));
        let fits = filler(max - "GET / HTTP/1.1\r\nX: \r\n\r\n".len());
        assert_eq!(fits.len(), max);
        assert!(matches!(parse_head(fits.as_bytes(), max), Ok(Some(_))));
        let over = filler(max + 1 - "GET / HTTP/1.1\r\nX: \r\n\r\n".len());
        assert_eq!(
            parse_head(over.as_bytes(), max),
            Err(HeadError::TooLarge),
            "a complete head one byte over the limit"
        );
        assert_eq!(
            parse_head(&over.as_bytes()[..max + 1], max),
            Err(HeadError::TooLarge),
            "an incomplete head past the limit"
        );
        assert_eq!(parse_head(&fits.as_bytes()[..10], max), Ok(None));
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("H{i}: v\r\n"))
            .collect();
        assert_eq!(
            parse_head(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes(), max * 16),
            Err(HeadError::TooLarge)
        );
    }

    /// The tunnel follows the CONNECT target: a Host header naming something else changes
    /// nothing (there is no bypass through it, and nothing to refuse).
    #[test]
    fn connect_goes_to_its_target_whatever_the_host_header_says() {
        let d = destination(
            &head("CONNECT a.example:443 HTTP/1.1\r\nHost: b.example:443\r\n\r\n"),
            80,
        )
        .expect("destination");
        assert_eq!(
            d,
            Destination {
                host: "a.example".into(),
                port: 443,
                tunnel: true
            }
        );
    }

    #[test]
    fn absolute_form_host_must_agree_with_the_target() {
        assert!(
            destination(
                &head("GET http://a.example/ HTTP/1.1\r\nHost: A.Example.\r\n\r\n"),
                80
            )
            .is_ok()
        );
        for bad in [
            "GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nHost: a.example:81\r\n\r\n",
            "GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\nHost: a.example\r\n\r\n",
            "GET http://u@a.example/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
        ] {
            assert!(destination(&head(bad), 80).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_forwarded_head_is_origin_form_and_closes() {
        let h = head(
            "GET http://a.example/x?y HTTP/1.1\r\nHost: a.example\r\nProxy-Authorization: x\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\n\r\n",
        );
        assert_eq!(
            String::from_utf8_lossy(&forwarded_head(&h)),
            "GET /x?y HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
        );
    }
}
