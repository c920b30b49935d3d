//! `kars-test-agent`: the agent the end-to-end tests run in a sandbox pod (the BYO runtime's
//! image, built by `ci/images.sh`). It tries connections the way untrusted agent code would and
//! prints what happened as one JSON line; the tests run it with `kubectl exec`.
//!
//! ```text
//! kars-test-agent serve                                  wait for SIGTERM (the container's main process)
//! kars-test-agent tcp HOST:PORT [--send TEXT]            a direct TCP connection
//! kars-test-agent http URL [--proxy HOST:PORT] [--bearer TOKEN]
//!                                                        an HTTP GET, direct or through a forward proxy
//! kars-test-agent connect PROXY HOST:PORT [--send TEXT]  an HTTP CONNECT tunnel through PROXY
//! kars-test-agent dns NAME SERVER                        a DNS A query sent to SERVER:53 over UDP
//! ```
//! Each command exits 0 and reports `"ok": false` with the error when the connection failed;
//! 2 means the command line was wrong.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::Duration;

use serde_json::{Value, json};

const TIMEOUT: Duration = Duration::from_secs(3);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let report = match args.first().map(String::as_str) {
        Some("serve") => serve(),
        Some("tcp") if args.len() >= 2 => tcp(&args[1], flag(&args, "--send")),
        Some("http") if args.len() >= 2 => http(
            &args[1],
            flag(&args, "--proxy").as_deref(),
            flag(&args, "--bearer"),
        ),
        Some("connect") if args.len() >= 3 => connect(&args[1], &args[2], flag(&args, "--send")),
        Some("dns") if args.len() >= 3 => dns(&args[1], &args[2]),
        _ => {
            eprintln!(
                "usage: kars-test-agent serve | tcp HOST:PORT [--send T] | http URL [--proxy HOST:PORT] [--bearer T] | connect PROXY HOST:PORT [--send T] | dns NAME SERVER"
            );
            std::process::exit(2);
        }
    };
    println!("{report}");
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn serve() -> Value {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return json!({"ok": false, "error": e.to_string()}),
    };
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return json!({"ok": false, "error": "cannot install signal handlers"});
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        json!({"ok": true, "stopped": "signal"})
    })
}

fn open(target: &str) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = target
        .to_socket_addrs()
        .map_err(|e| format!("resolving {target}: {e}"))?
        .collect();
    let mut last = format!("{target}: no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, TIMEOUT) {
            Ok(s) => {
                s.set_read_timeout(Some(TIMEOUT)).ok();
                s.set_write_timeout(Some(TIMEOUT)).ok();
                return Ok(s);
            }
            Err(e) => last = format!("connecting to {a}: {e}"),
        }
    }
    Err(last)
}

/// Reads until EOF, the timeout or 64 KiB.
fn read_some(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 65536 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn failed(command: &str, target: &str, error: String) -> Value {
    json!({"command": command, "target": target, "ok": false, "error": error})
}

fn tcp(target: &str, send: Option<String>) -> Value {
    let mut s = match open(target) {
        Ok(s) => s,
        Err(e) => return failed("tcp", target, e),
    };
    if let Some(text) = send
        && let Err(e) = s.write_all(text.replace("\\r\\n", "\r\n").as_bytes())
    {
        return failed("tcp", target, format!("sending: {e}"));
    }
    let reply = read_some(&mut s);
    json!({"command": "tcp", "target": target, "ok": true, "reply": reply})
}

/// `(status, body)` of an HTTP/1.1 response text.
fn parse_response(text: &str) -> (Option<u16>, String) {
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok());
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn http(url: &str, proxy: Option<&str>, bearer: Option<String>) -> Value {
    let Some(rest) = url.strip_prefix("http://") else {
        return failed("http", url, "only http:// URLs".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let target = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let (connect_to, request_target) = match proxy {
        Some(p) => (p.to_string(), url.to_string()),
        None => (target.clone(), path.to_string()),
    };
    let mut s = match open(&connect_to) {
        Ok(s) => s,
        Err(e) => return failed("http", url, e),
    };
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {request_target} HTTP/1.1\r\nHost: {authority}\r\n{auth}Connection: close\r\n\r\n"
    );
    if let Err(e) = s.write_all(req.as_bytes()) {
        return failed("http", url, format!("sending: {e}"));
    }
    let text = read_some(&mut s);
    if text.is_empty() {
        return failed(
            "http",
            url,
            "the connection closed without an answer".into(),
        );
    }
    let (status, body) = parse_response(&text);
    json!({"command": "http", "target": url, "via": proxy, "ok": true, "status": status, "body": body})
}

fn connect(proxy: &str, target: &str, send: Option<String>) -> Value {
    let mut s = match open(proxy) {
        Ok(s) => s,
        Err(e) => return failed("connect", target, e),
    };
    let req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    if let Err(e) = s.write_all(req.as_bytes()) {
        return failed("connect", target, format!("sending: {e}"));
    }
    // The proxy's answer head, byte by byte up to its blank line.
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16384 {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let (status, _) = parse_response(&head);
    if status != Some(200) {
        let rest = read_some(&mut s);
        return json!({"command": "connect", "target": target, "via": proxy, "ok": false,
            "status": status, "error": format!("{}{}", head.trim_end(), rest)});
    }
    let mut reply = String::new();
    if let Some(text) = send {
        if let Err(e) = s.write_all(text.replace("\\r\\n", "\r\n").as_bytes()) {
            return failed(
                "connect",
                target,
                format!("sending through the tunnel: {e}"),
            );
        }
        reply = read_some(&mut s);
    }
    json!({"command": "connect", "target": target, "via": proxy, "ok": true, "status": status, "reply": reply})
}

fn dns(name: &str, server: &str) -> Value {
    let server =
        if server.contains(':') && !server.starts_with('[') && server.matches(':').count() > 1 {
            format!("[{server}]:53")
        } else if server.contains(':') {
            server.to_string()
        } else {
            format!("{server}:53")
        };
    let Ok(addr) = server.parse::<SocketAddr>() else {
        return failed("dns", name, format!("{server} is not an address"));
    };
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => return failed("dns", name, e.to_string()),
    };
    sock.set_read_timeout(Some(TIMEOUT)).ok();
    let mut q = vec![0x4b, 0x41, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if let Err(e) = sock.send_to(&q, addr) {
        return failed("dns", name, format!("sending to {addr}: {e}"));
    }
    let mut buf = [0u8; 512];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => {
            let rcode = buf.get(3).map(|b| b & 0x0f);
            let answers = buf.get(6..8).map(|a| u16::from_be_bytes([a[0], a[1]]));
            json!({"command": "dns", "target": name, "server": addr.to_string(), "ok": true,
                "from": from.to_string(), "bytes": n, "rcode": rcode, "answers": answers})
        }
        Err(e) => failed("dns", name, format!("no answer from {addr}: {e}")),
    }
}
