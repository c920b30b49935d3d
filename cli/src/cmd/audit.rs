//! `kars audit verify FILE [--key PUB]`: checks a router audit log's hash chain, and with the
//! router's public key every signed head in `FILE.heads` (cut or rewritten logs, other keys).
//! `kars audit key SANDBOX`: that public key, from the sandbox's generated Secret.
//! `kars audit syncs NAME [--key PUB]`: the agent's signed sync log, shown and checked.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::anyhow;
use kars_router::audit::{self, AuditError};

use crate::Failure;

/// Arguments of `kars audit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(clap::Subcommand, Debug)]
enum AuditCommand {
    /// Verify the hash chain of a router audit log (JSON lines). Exit 1 naming the first bad
    /// record (line and seq) when a record was edited, deleted, moved or inserted.
    ///
    /// Records cut from the end leave a valid shorter chain: pass the router's public key with
    /// --key to check the heads it signed (`FILE.heads`): a log cut after a signed head, or
    /// rewritten with fresh hashes, is named, and so is a head signed by another key. Or pass a
    /// head hash kept elsewhere with --expect-head.
    Verify(VerifyArgs),
    /// Print the public key (PEM) a sandbox's router signs its audit heads with, for `kars
    /// audit verify --key`. Derived from the generated Secret `router-audit-key` in
    /// `kars-<sandbox>` (the private seed is never printed); keep it outside the cluster.
    Key(KeyArgs),
    /// Show the agent's signed log of what each sync of PolicyRepo NAME applied (commit,
    /// signers, rendered digest, objects written and pruned) and check it: the hash chain
    /// across its ConfigMaps `NAME-sync-log-NNNN`, and every signed head. Exit 1 naming the
    /// first problem (an edited, deleted or reordered record, a missing segment, a head signed
    /// by another key, records no head signed).
    ///
    /// Without --key the public key stored beside the log is used, which proves the log is
    /// intact but not who wrote it: pin the key you saved (`-o json` prints it) with --key.
    Syncs(SyncsArgs),
}

#[derive(clap::Args, Debug)]
struct KeyArgs {
    /// The sandbox (KarsSandbox name; its namespace is kars-<name>).
    sandbox: String,
    #[command(flatten)]
    cluster: crate::access::ClusterArgs,
}

#[derive(clap::Args, Debug)]
struct SyncsArgs {
    /// The PolicyRepo.
    name: String,
    /// The agent's Ed25519 public key (PEM): every signed head must verify with it.
    #[arg(long, value_name = "PUB")]
    key: Option<PathBuf>,
    /// The hash the last record must have (kept from an earlier check: proves no record was
    /// cut from the end).
    #[arg(long, value_name = "HEX")]
    expect_head: Option<String>,
    /// Show only the last N records (all are checked).
    #[arg(long, value_name = "N")]
    last: Option<usize>,
    #[command(flatten)]
    cluster: crate::access::ClusterArgs,
}

#[derive(clap::Args, Debug)]
struct VerifyArgs {
    /// The audit log file.
    file: PathBuf,
    /// The hash the last record must have (from the router, or an earlier verify).
    #[arg(long, value_name = "HEX")]
    expect_head: Option<String>,
    /// The router's Ed25519 public key (PEM, `openssl pkey -in audit.key -pubout`): every
    /// signed head must verify with it and match the chain.
    #[arg(long, value_name = "PUB")]
    key: Option<std::path::PathBuf>,
    /// The signed heads (default: FILE.heads).
    #[arg(long, value_name = "FILE", requires = "key")]
    heads: Option<std::path::PathBuf>,
}

/// Runs `kars audit`.
pub fn run(args: Args) -> Result<ExitCode, Failure> {
    let a = match args.command {
        AuditCommand::Verify(a) => a,
        AuditCommand::Key(k) => return key(k),
        AuditCommand::Syncs(s) => return syncs(s),
    };
    if let Some(key) = &a.key {
        return verify_signed(&a, key);
    }
    let result = audit::verify(&a.file);
    let broken = match &result {
        Ok(summary) => match &a.expect_head {
            Some(want) if *want != summary.head => Some(format!(
                "the chain is intact but ends at {} after {} record(s), not at the expected head {want}: records were cut from the end",
                summary.head, summary.records
            )),
            _ => None,
        },
        Err(AuditError::Broken(e)) => Some(e.to_string()),
        Err(other) => return Err(Failure::usage(anyhow!("{other}"))),
    };
    if crate::ui::get().machine() {
        let out = match (&result, &broken) {
            (Ok(s), None) => serde_json::json!({"ok": true, "records": s.records, "head": s.head}),
            (Err(AuditError::Broken(e)), _) => {
                serde_json::json!({"ok": false, "line": e.line, "seq": e.seq, "reason": e.reason})
            }
            (_, Some(why)) => serde_json::json!({"ok": false, "reason": why}),
            _ => serde_json::json!({"ok": false}),
        };
        crate::ui::emit(&out)?;
        return Ok(if broken.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    match (result, broken) {
        (Ok(s), None) => {
            crate::outln!("ok: {} record(s), chain intact, head {}", s.records, s.head);
            Ok(ExitCode::SUCCESS)
        }
        (_, Some(why)) => Err(Failure::check(anyhow!("{}: {why}", a.file.display()))),
        (Err(e), None) => Err(Failure::usage(anyhow!("{e}"))),
    }
}

/// `kars audit verify FILE --key PUB`.
fn verify_signed(a: &VerifyArgs, key: &std::path::Path) -> Result<ExitCode, Failure> {
    use kars_router::audit_heads::{heads_path, read_verifying_key, verify_heads};
    let vk = read_verifying_key(key).map_err(|e| Failure::usage(anyhow!("--key {e}")))?;
    let heads = a.heads.clone().unwrap_or_else(|| heads_path(&a.file));
    let result = verify_heads(&a.file, &heads, &vk);
    let expect_problem = match (&result, &a.expect_head) {
        (Ok(s), Some(want)) if *want != s.chain.head => Some(format!(
            "the chain ends at {} after {} record(s), not at the expected head {want}",
            s.chain.head, s.chain.records
        )),
        _ => None,
    };
    if crate::ui::get().machine() {
        let out = match (&result, &expect_problem) {
            (Ok(s), None) => serde_json::json!({
                "ok": true, "records": s.chain.records, "head": s.chain.head,
                "signedHeads": s.signed_heads, "lastSigned": s.last, "unsignedTail": s.unsigned_tail,
            }),
            (Err(e), _) => serde_json::json!({"ok": false, "reason": e.to_string()}),
            (_, Some(p)) => serde_json::json!({"ok": false, "reason": p}),
        };
        crate::ui::emit(&out)?;
        return Ok(if result.is_ok() && expect_problem.is_none() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    match (result, expect_problem) {
        (Ok(s), None) => {
            crate::outln!(
                "ok: {} record(s), chain intact, head {}; {} signed head(s) by key {} verify, the last at {} record(s) ({}){}",
                s.chain.records,
                s.chain.head,
                s.signed_heads,
                s.last.key,
                s.last.records,
                s.last.at,
                if s.unsigned_tail > 0 {
                    format!("; {} later record(s) not yet signed", s.unsigned_tail)
                } else {
                    String::new()
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        (Err(kars_router::audit_heads::HeadsFailure::Unreadable(m)), _) => {
            Err(Failure::usage(anyhow!("{m}")))
        }
        (Err(e), _) => Err(Failure::check(anyhow!("{}: {e}", a.file.display()))),
        (Ok(_), Some(p)) => Err(Failure::check(anyhow!("{}: {p}", a.file.display()))),
    }
}

/// `kars audit key SANDBOX`.
fn key(args: KeyArgs) -> Result<ExitCode, Failure> {
    use k8s_openapi::api::core::v1::Secret;
    use kars_contract::router::{AUDIT_KEY_DATA, AUDIT_KEY_SECRET};
    super::block_on(async move {
        let at = crate::access::connect(&args.cluster).await?;
        let ns = format!("kars-{}", args.sandbox);
        let what = format!("Secret {ns}/{AUDIT_KEY_SECRET}");
        let secrets: kube::Api<Secret> = kube::Api::namespaced(at.client.clone(), &ns);
        let secret = secrets
            .get(AUDIT_KEY_SECRET)
            .await
            .map_err(|e| crate::access::explain(&e, &what, &at))?;
        let seed = secret
            .data
            .and_then(|d| d.get(AUDIT_KEY_DATA).cloned())
            .ok_or_else(|| {
                Failure::check(anyhow!("{what} has no {AUDIT_KEY_DATA:?} key"))
                    .hint("the agent generates it with the sandbox; kars status shows whether the last sync applied")
            })?;
        let signing =
            kars_router::audit_heads::signing_key_from_text(&String::from_utf8_lossy(&seed.0))
                .map_err(|e| Failure::check(anyhow!("{what}: {e}")))?;
        let public = signing.verifying_key();
        let pem = kars_router::audit_heads::public_key_pem(&public);
        let id = kars_router::audit_heads::key_id(&public);
        if crate::ui::get().machine() {
            crate::ui::emit(
                &serde_json::json!({"sandbox": args.sandbox, "key": id, "publicKey": pem}),
            )?;
        } else {
            crate::out(&pem);
            crate::ui::note(format!(
                "key {id} of sandbox {}: save it (kars audit key {} > {}.pub) and check a copied log with kars audit verify audit.jsonl --key {}.pub",
                args.sandbox, args.sandbox, args.sandbox, args.sandbox
            ));
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `kars audit syncs NAME`.
fn syncs(args: SyncsArgs) -> Result<ExitCode, Failure> {
    use kars_gitops_agent::sync_log;
    use kars_router::audit_heads::{read_verifying_key, verify_heads_in};
    super::block_on(async move {
        let pinned = match &args.key {
            Some(k) => {
                Some(read_verifying_key(k).map_err(|e| Failure::usage(anyhow!("--key {e}")))?)
            }
            None => None,
        };
        let at = crate::access::connect(&args.cluster).await?;
        let ns = &args.cluster.namespace;
        let where_ = format!("ConfigMaps {ns}/{}-sync-log-*", args.name);
        let segments = sync_log::read_segments(&at.client, ns, &args.name)
            .await
            .map_err(|e| match &e {
                sync_log::SyncLogError::Api { source, .. } => {
                    crate::access::explain(source, &where_, &at)
                }
                _ => Failure::check(anyhow!("{e}")),
            })?;
        if segments.is_empty() {
            return Err(Failure::check(anyhow!(
                "no sync log for PolicyRepo {ns}/{} ({where_} do not exist)",
                args.name
            ))
            .hint("the agent keeps one when started with --sync-log-key (the Helm chart's syncLog.enabled, on by default), from its next sync that changes something"));
        }
        let (records, heads) = sync_log::joined(&segments)
            .map_err(|why| Failure::check(anyhow!("{where_}: {why}")))?;
        let stored_pem = segments
            .last()
            .map(|s| s.public_key.clone())
            .unwrap_or_default();
        let key = match pinned {
            Some(k) => k,
            None => {
                use ed25519_dalek::pkcs8::DecodePublicKey;
                ed25519_dalek::VerifyingKey::from_public_key_pem(&stored_pem).map_err(|e| {
                    Failure::check(anyhow!(
                        "{where_}: the stored publicKey is not a PEM Ed25519 public key ({e}); pass the agent's key with --key"
                    ))
                })?
            }
        };
        let key_id = kars_router::audit_heads::key_id(&key);
        let checked = verify_heads_in(records.as_bytes(), &heads, &where_, &key);
        let problem = match &checked {
            Ok(s) if s.unsigned_tail > 0 => Some(format!(
                "{} record(s) after the last signed head: the agent signs every record it writes, so these were written by something else",
                s.unsigned_tail
            )),
            Ok(s) => match &args.expect_head {
                Some(want) if *want != s.chain.head => Some(format!(
                    "the log ends at {} after {} record(s), not at the expected head {want}: records were cut from the end",
                    s.chain.head, s.chain.records
                )),
                _ => None,
            },
            Err(e) => Some(e.to_string()),
        };
        // (A chain that verified holds only JSON records.)
        let parsed: Vec<serde_json::Value> = records
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let shown: Vec<&serde_json::Value> = match args.last {
            Some(n) => parsed.iter().skip(parsed.len().saturating_sub(n)).collect(),
            None => parsed.iter().collect(),
        };
        if crate::ui::get().machine() {
            let mut out = serde_json::json!({
                "ok": problem.is_none(),
                "policyRepo": format!("{ns}/{}", args.name),
                "key": key_id,
                "keyPinned": args.key.is_some(),
                "publicKey": stored_pem,
                "records": shown,
            });
            match (&checked, &problem) {
                (Ok(s), None) => {
                    out["head"] = serde_json::json!(s.chain.head);
                    out["count"] = serde_json::json!(s.chain.records);
                    out["signedHeads"] = serde_json::json!(s.signed_heads);
                }
                (_, Some(p)) => out["reason"] = serde_json::json!(p),
                _ => {}
            }
            crate::ui::emit(&out)?;
            return Ok(if problem.is_none() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        if let Some(p) = problem {
            return Err(Failure::check(anyhow!("{where_}: {p}")));
        }
        crate::outln!(
            "{:<5} {:<20} {:<12} {:>7} {:>6}  {:<9} SIGNED BY",
            "SEQ",
            "TIME",
            "COMMIT",
            "WRITTEN",
            "PRUNED",
            "READY"
        );
        for r in &shown {
            let signers: Vec<String> = r["signers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s["signer"].as_str().map(str::to_string))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let commit = r["commit"].as_str().unwrap_or("-");
            crate::outln!(
                "{:<5} {:<20} {:<12} {:>7} {:>6}  {:<9} {}",
                r["seq"].as_u64().unwrap_or_default(),
                r["ts"].as_str().unwrap_or("-"),
                &commit[..commit.len().min(12)],
                r["written"]["count"].as_u64().unwrap_or_default(),
                r["pruned"]["count"].as_u64().unwrap_or_default(),
                r["ready"].as_str().unwrap_or("-"),
                if signers.is_empty() {
                    "-".to_string()
                } else {
                    signers.join(", ")
                }
            );
        }
        if let Ok(s) = checked {
            crate::outln!(
                "ok: {} record(s) in {} segment(s), chain intact, head {}; {} signed head(s) by key {key_id} verify{}",
                s.chain.records,
                segments.len(),
                s.chain.head,
                s.signed_heads,
                if args.key.is_some() {
                    ""
                } else {
                    " (the key stored beside the log: pin yours with --key)"
                }
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
