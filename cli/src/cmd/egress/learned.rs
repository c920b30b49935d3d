//! `kars egress learned <sandbox>`: what the sandbox's router allowed in Learn mode and what
//! it refused, read from the router's admin API (`GET /egress/learned`) with the sandbox's
//! admin token. The router is reached through a port-forward of its pod (the Kubernetes API
//! and the kubelet carry it; the caller needs `pods/portforward` and `get` on the
//! `router-admin-token` Secret in the sandbox's namespace), or at `--router URL`.

use std::process::ExitCode;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kars_contract::labels::SANDBOX_LABEL;
use kars_contract::router::{ADMIN_TOKEN_SECRET, PORT, TOKEN_KEY};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::access::{ClusterArgs, connect};
use crate::failure::{CHECK, Failure, UNREACHABLE, USAGE};
use crate::{outln, ui};

/// Arguments of `kars egress learned`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The KarsSandbox (metadata.name); its pods run in namespace `kars-<name>`.
    sandbox: String,
    /// The router's base URL instead of a port-forward (e.g. after `kubectl port-forward`).
    #[arg(long, value_name = "URL")]
    router: Option<String>,
    /// File holding the router's admin token (default: the sandbox's `router-admin-token`
    /// Secret). Never printed.
    #[arg(long, value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
}

const PATH: &str = "/egress/learned";

/// A response: status and body.
struct Answer {
    status: u16,
    body: String,
}

/// GET `PATH` over an established byte stream (a port-forward), HTTP/1.1, one request.
async fn get_over<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    token: &str,
) -> Result<Answer, String> {
    let request = format!(
        "GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream
        .take(8 << 20)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    parse_response(&raw)
}

/// Parses an HTTP/1.1 response (content-length, chunked, or to the end).
fn parse_response(raw: &[u8]) -> Result<Answer, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP response head")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("no HTTP status line")?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = &raw[split + 4..];
    let mut out = Vec::new();
    if chunked {
        while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&body[..end])
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim(),
                16,
            )
            .map_err(|_| "bad chunk size")?;
            if size == 0 || body.len() < end + 2 + size {
                break;
            }
            out.extend_from_slice(&body[end + 2..end + 2 + size]);
            body = &body[(end + 4 + size).min(body.len())..];
        }
    } else {
        out.extend_from_slice(body);
    }
    Ok(Answer {
        status,
        body: String::from_utf8_lossy(&out).into_owned(),
    })
}

async fn from_cluster(args: &Args) -> Result<(Answer, String), Failure> {
    let at = connect(&args.cluster).await?;
    let ns = format!("kars-{}", args.sandbox);
    let pods: Api<Pod> = Api::namespaced(at.client.clone(), &ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("{SANDBOX_LABEL}={}", args.sandbox)))
        .await
        .map_err(|e| crate::access::explain(&e, &format!("pods in {ns}"), &at))?;
    let pod = list
        .items
        .iter()
        .find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .and_then(|p| p.metadata.name.clone())
        .ok_or_else(|| {
            Failure::msg(
                CHECK,
                format!(
                    "no running pod of sandbox {} in namespace {ns}: its router is not running, so there is nothing it learned",
                    args.sandbox
                ),
            )
            .hint(format!("kubectl -n {ns} get pods -l {SANDBOX_LABEL}={}", args.sandbox))
        })?;
    let token = match &args.token_file {
        Some(f) => read_token(f)?,
        None => {
            let secrets: Api<Secret> = Api::namespaced(at.client.clone(), &ns);
            let s = secrets.get(ADMIN_TOKEN_SECRET).await.map_err(|e| {
                crate::access::explain(&e, &format!("Secret {ns}/{ADMIN_TOKEN_SECRET}"), &at)
            })?;
            let bytes = s
                .data
                .and_then(|d| d.get(TOKEN_KEY).cloned())
                .ok_or_else(|| {
                    Failure::msg(
                        CHECK,
                        format!("Secret {ns}/{ADMIN_TOKEN_SECRET} has no {TOKEN_KEY:?} key"),
                    )
                })?;
            String::from_utf8_lossy(&bytes.0).trim().to_string()
        }
    };
    let mut pf = pods.portforward(&pod, &[PORT]).await.map_err(|e| {
        Failure::unreachable(anyhow::anyhow!(
            "port-forward to {ns}/{pod}:{PORT}: {}",
            crate::access::root_cause(&e)
        ))
        .hint("the node's kubelet must allow port-forwarding; or forward yourself and pass --router http://127.0.0.1:PORT")
    })?;
    let stream = pf.take_stream(PORT).ok_or_else(|| {
        Failure::msg(
            UNREACHABLE,
            format!("port-forward to {ns}/{pod}:{PORT}: no stream"),
        )
    })?;
    let answer = get_over(stream, &token)
        .await
        .map_err(|e| Failure::msg(UNREACHABLE, format!("{ns}/{pod}:{PORT}{PATH}: {e}")))?;
    drop(pf);
    Ok((answer, format!("{ns}/{pod}")))
}

fn read_token(f: &std::path::Path) -> Result<String, Failure> {
    std::fs::read_to_string(f)
        .map(|t| t.trim().to_string())
        .map_err(|e| Failure::msg(USAGE, format!("--token-file {}: {e}", f.display())))
}

async fn from_url(url: &str, args: &Args) -> Result<(Answer, String), Failure> {
    let token = match &args.token_file {
        Some(f) => read_token(f)?,
        None => std::env::var("KARS_ROUTER_TOKEN").map_err(|_| {
            Failure::msg(
                USAGE,
                "--router needs the router's admin token: --token-file FILE or $KARS_ROUTER_TOKEN",
            )
        })?,
    };
    let client = kars_gitops_agent::reqwest_client().map_err(|e| Failure::msg(USAGE, e))?;
    let base = url.trim_end_matches('/');
    let r = client
        .get(format!("{base}{PATH}"))
        .bearer_auth(token.trim())
        .send()
        .await
        .map_err(|e| {
            Failure::unreachable(anyhow::anyhow!(
                "{base}{PATH}: {}",
                crate::access::root_cause(&e)
            ))
        })?;
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    Ok((Answer { status, body }, base.to_string()))
}

/// Runs `kars egress learned`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    super::super::block_on(async move {
        let (answer, from) = match &args.router {
            Some(url) => from_url(url, &args).await?,
            None => from_cluster(&args).await?,
        };
        match answer.status {
            200 => {}
            401 => {
                return Err(Failure::msg(
                    CHECK,
                    format!("{from}: the router refused the admin token (401)"),
                ));
            }
            404 => {
                return Err(Failure::msg(
                    CHECK,
                    format!("{from}: the router runs no egress proxy (404), so it learns nothing"),
                ));
            }
            s => {
                return Err(Failure::msg(
                    CHECK,
                    format!("{from}{PATH}: HTTP {s}: {}", answer.body.trim()),
                ));
            }
        }
        let v: Value = serde_json::from_str(&answer.body)
            .map_err(|e| Failure::msg(CHECK, format!("{from}{PATH}: not JSON: {e}")))?;
        if ui::get().machine() {
            ui::emit(
                &json!({"sandbox": args.sandbox, "router": from, "mode": v["mode"], "learned": v["learned"], "blocked": v["blocked"], "blockedDropped": v["blockedDropped"]}),
            )?;
            return Ok(ExitCode::SUCCESS);
        }
        let pairs = |key: &str| -> Vec<String> {
            v[key]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    let base = format!("{}:{}", e["host"].as_str().unwrap_or("?"), e["port"]);
                    match e["count"].as_u64() {
                        Some(n) => format!("{base} ({n}×)"),
                        None => base,
                    }
                })
                .collect()
        };
        outln!("router {from}: mode {}", v["mode"].as_str().unwrap_or("?"));
        let learned = pairs("learned");
        outln!("learned ({}):", learned.len());
        for l in &learned {
            outln!("  {l}");
        }
        let blocked = pairs("blocked");
        outln!("blocked ({}):", blocked.len());
        for b in &blocked {
            outln!("  {b}");
        }
        if let Some(first) = v["learned"].as_array().and_then(|a| a.first()) {
            ui::note(format!(
                "to keep one, propose it for the allowlist: kars egress approve {} {}:{}",
                args.sandbox,
                first["host"].as_str().unwrap_or("HOST"),
                first["port"]
            ));
        }
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_with_length_or_chunks() {
        let a = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").expect("ok");
        assert_eq!((a.status, a.body.as_str()), (200, "{}"));
        let a = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n3\r\n\":1\r\n1\r\n}\r\n0\r\n\r\n",
        )
        .expect("ok");
        assert_eq!(a.body, "{\"a\":1}");
        assert!(parse_response(b"garbage").is_err());
    }
}
