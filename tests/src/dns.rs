//! A DNS server of the test's own (UDP, A and AAAA from a fixed table, NXDOMAIN otherwise):
//! pods of the local node resolve the test's host names through it, so no test asks a
//! resolver outside the machine. Stops when dropped.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

/// A running DNS server.
pub struct DnsServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    addr: SocketAddr,
}

impl DnsServer {
    /// Serves `records` (name → addresses; names without the trailing dot, any case) on `addr`.
    pub fn start(addr: SocketAddr, records: BTreeMap<String, Vec<IpAddr>>) -> Result<DnsServer> {
        let sock = UdpSocket::bind(addr).with_context(|| format!("binding DNS on {addr}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = sock.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let records: BTreeMap<String, Vec<IpAddr>> = records
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(answer) = respond(&buf[..n], &records) {
                    let _ = sock.send_to(&answer, from);
                }
            }
        });
        Ok(DnsServer {
            stop,
            thread: Some(thread),
            addr,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The answer to one query, or `None` for a packet that is not a single-question query.
fn respond(q: &[u8], records: &BTreeMap<String, Vec<IpAddr>>) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = *q.get(i)? as usize;
        i += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question_end = i + 4;
    let question = q.get(12..question_end)?;
    let name = labels.join(".");
    let known = records.get(&name);
    let answers: Vec<&IpAddr> = known
        .map(|a| {
            a.iter()
                .filter(|ip| match qtype {
                    1 => ip.is_ipv4(),
                    28 => ip.is_ipv6(),
                    _ => false,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(&q[0..2]);
    // QR, opcode 0, AA, RD copied; RA; rcode 0 or 3 (NXDOMAIN).
    out.push(0x84 | (q[2] & 0x01));
    out.push(if known.is_some() { 0x80 } else { 0x83 });
    out.extend_from_slice(&[0, 1]);
    out.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(question);
    for ip in answers {
        out.extend_from_slice(&[0xc0, 0x0c]);
        match ip {
            IpAddr::V4(v4) => {
                out.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
                out.extend_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                out.extend_from_slice(&[0, 28, 0, 1, 0, 0, 0, 5, 0, 16]);
                out.extend_from_slice(&v6.octets());
            }
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_known_names_and_refuses_others() {
        let records = BTreeMap::from([(
            "allowed.kars.test".to_string(),
            vec!["10.250.0.1".parse().expect("ip")],
        )]);
        let server = DnsServer::start("127.0.0.1:0".parse().expect("addr"), records).expect("dns");
        let addrs = |name: &str| {
            let client = UdpSocket::bind("127.0.0.1:0").expect("bind");
            client
                .set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
            for l in name.split('.') {
                q.push(l.len() as u8);
                q.extend_from_slice(l.as_bytes());
            }
            q.extend_from_slice(&[0, 0, 1, 0, 1]);
            client.send_to(&q, server.addr()).expect("send");
            let mut buf = [0u8; 512];
            let (n, _) = client.recv_from(&mut buf).expect("answer");
            (
                buf[3] & 0x0f,
                u16::from_be_bytes([buf[6], buf[7]]),
                buf[n - 4..n].to_vec(),
            )
        };
        let (rcode, count, tail) = addrs("Allowed.Kars.Test");
        assert_eq!((rcode, count), (0, 1));
        assert_eq!(tail, [10, 250, 0, 1]);
        let (rcode, count, _) = addrs("other.kars.test");
        assert_eq!((rcode, count), (3, 0));
    }
}
