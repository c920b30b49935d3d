//! The server name of a TLS ClientHello (a transparently redirected TLS connection is decided
//! by it). Pure: bytes in, a name or a refusal out.

/// Why no server name can be taken from the bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SniError {
    /// The first bytes are not a TLS handshake record.
    #[error("not a TLS handshake")]
    NotTls,
    /// The record is not a ClientHello, or is cut short inside.
    #[error("{0}")]
    Malformed(&'static str),
    /// The record is larger than the limit.
    #[error("the ClientHello record is {0} bytes, over the limit")]
    TooLarge(usize),
    /// A ClientHello without a host name.
    #[error("the ClientHello has no server name (SNI)")]
    NoServerName,
    /// The host name is not text.
    #[error("the server name is not text")]
    NotText,
}

struct Reader<'a>(&'a [u8], usize);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], SniError> {
        let s = self
            .0
            .get(self.1..self.1 + n)
            .ok_or(SniError::Malformed("truncated ClientHello"))?;
        self.1 += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<usize, SniError> {
        Ok(usize::from(self.take(1)?[0]))
    }
    fn u16(&mut self) -> Result<usize, SniError> {
        let b = self.take(2)?;
        Ok(usize::from(b[0]) << 8 | usize::from(b[1]))
    }
}

/// The server name of the ClientHello in `buf`: `Ok(None)` when more bytes are needed, an
/// error when it is not a ClientHello, has no server name, or its record (5-byte header
/// included) is over `max` bytes — decided from the header alone, before the rest is read.
pub fn client_hello_sni(buf: &[u8], max: usize) -> Result<Option<String>, SniError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != 0x16 {
        return Err(SniError::NotTls);
    }
    if buf.len() < 5 {
        return Ok(None);
    }
    let record_len = usize::from(buf[3]) << 8 | usize::from(buf[4]);
    if 5 + record_len > max {
        return Err(SniError::TooLarge(5 + record_len));
    }
    if buf.len() < 5 + record_len {
        return Ok(None);
    }
    let mut r = Reader(&buf[5..5 + record_len], 0);
    if r.u8()? != 1 {
        return Err(SniError::Malformed(
            "the first handshake message is not a ClientHello",
        ));
    }
    r.take(3)?; // handshake length
    r.take(2 + 32)?; // version, random
    let n = r.u8()?;
    r.take(n)?; // session id
    let n = r.u16()?;
    r.take(n)?; // cipher suites
    let n = r.u8()?;
    r.take(n)?; // compression methods
    let ext_len = r.u16()?;
    let end = r.1 + ext_len;
    while r.1 + 4 <= end {
        let ty = r.u16()?;
        let len = r.u16()?;
        let data = r.take(len)?;
        if ty == 0 {
            let mut e = Reader(data, 0);
            let list = e.u16()?;
            let list_end = e.1 + list;
            while e.1 + 3 <= list_end {
                let name_type = e.u8()?;
                let n = e.u16()?;
                let name = e.take(n)?;
                if name_type == 0 {
                    return String::from_utf8(name.to_vec())
                        .map(Some)
                        .map_err(|_| SniError::NotText);
                }
            }
        }
    }
    Err(SniError::NoServerName)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Arc;

    /// A real ClientHello for `name`, as rustls writes it.
    pub(crate) fn client_hello(name: &str) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_string()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).expect("conn");
        let mut out = Vec::new();
        conn.write_tls(&mut out).expect("hello");
        out
    }

    #[test]
    fn sni_is_read_from_a_real_client_hello() {
        let hello = client_hello("api.example.com");
        let max = 16 * 1024;
        assert_eq!(
            client_hello_sni(&hello, max),
            Ok(Some("api.example.com".into()))
        );
        assert_eq!(
            client_hello_sni(&hello[..hello.len() - 1], max),
            Ok(None),
            "needs more bytes"
        );
        assert!(client_hello_sni(b"GET / HTTP/1.1\r\n", max).is_err());
        let mut broken = hello.clone();
        broken[5] = 2; // not a ClientHello
        assert!(client_hello_sni(&broken, max).is_err());
    }

    /// Regression: a 17 KB ClientHello passed the 16 KiB limit, which was checked only after
    /// a 4 KiB read.
    #[test]
    fn the_size_limit_is_decided_from_the_record_header() {
        let max = 16 * 1024;
        let header = |len: usize| vec![0x16, 3, 1, (len >> 8) as u8, (len & 0xff) as u8];
        assert_eq!(
            client_hello_sni(&header(17_000), max),
            Err(SniError::TooLarge(17_005))
        );
        assert_eq!(client_hello_sni(&header(max - 5), max), Ok(None));
        assert_eq!(
            client_hello_sni(&header(max - 4), max),
            Err(SniError::TooLarge(max + 1))
        );
    }
}
