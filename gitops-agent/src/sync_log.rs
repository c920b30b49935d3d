//! The agent's own audit chain: one record per sync that changed something — the commit
//! applied, who signed it, the rendered set's digest, the objects written and pruned — so
//! "what was applied, when, from which commit" can be proven after the fact.
//!
//! Records use the router's audit format ([`kars_contract::chain`]: `seq`, `prev`, `hash`), and
//! after every record the agent signs the chain's head with its Ed25519 key (the chart
//! generates the seed; `--sync-log-key`). They are kept in ConfigMaps in the PolicyRepo's
//! namespace, so they survive restarts and rescheduling: `<policyrepo>-sync-log-<NNNN>`
//! (labelled `gitops.kars.io/sync-log=<policyrepo>`), each holding up to
//! [`RECORDS_PER_SEGMENT`] records (`records`, JSON lines), their signed heads (`heads`) and the
//! public key (`publicKey`). A record and its signed head are written in one update, guarded by
//! the ConfigMap's resourceVersion.
//!
//! `kars audit syncs [--key PUB]` reads the segments back and checks the chain and every
//! signed head. A chain that no longer verifies when the agent starts, or that another key
//! signed, is never appended to (that would bury the break, or leave heads no one key
//! verifies): the agent logs why on every sync until an operator restores the key or moves the
//! segments aside.

use std::collections::BTreeMap;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use k8s_openapi::api::core::v1::ConfigMap;
use kars_contract::chain::{self, SignedHead};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use crate::prune::PruneResult;
use crate::sync::SyncOutcome;

/// Records per ConfigMap segment (about 1 KiB each: far below the 1 MiB object limit).
pub const RECORDS_PER_SEGMENT: usize = 128;
/// Objects named per list in a record (all of them are in its digest).
pub const OBJECTS_NAMED: usize = 50;
/// The label naming the PolicyRepo a segment belongs to.
pub const SEGMENT_LABEL: &str = "gitops.kars.io/sync-log";
/// Data keys of a segment.
pub const RECORDS_KEY: &str = "records";
/// Data key of the signed heads.
pub const HEADS_KEY: &str = "heads";
/// Data key of the signing key's public half (PEM).
pub const PUBLIC_KEY_KEY: &str = "publicKey";

/// The name of segment `index` of PolicyRepo `name`'s log.
pub fn segment_name(name: &str, index: usize) -> String {
    format!("{name}-sync-log-{index:04}")
}

/// Why the sync log cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SyncLogError {
    /// The key file could not be read or is not a key.
    #[error("sync log key {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The API server refused a read or write.
    #[error("sync log ConfigMap {name}: {source}")]
    Api {
        /// The ConfigMap.
        name: String,
        /// The error.
        #[source]
        source: kube::Error,
    },
    /// The log was signed with another key than this agent's: appending would leave heads
    /// no single key verifies.
    #[error(
        "the sync log in ConfigMaps {name}-sync-log-* is signed by key {stored}, but this agent's key is {ours}: restore the key Secret (the chart keeps it across uninstalls), or move the segments aside to start a new log"
    )]
    KeyChanged {
        /// The PolicyRepo.
        name: String,
        /// The key id of the stored public key.
        stored: String,
        /// This agent's key id.
        ours: String,
    },
    /// The stored chain does not verify: nothing is appended after a break.
    #[error(
        "the sync log in ConfigMaps {name}-sync-log-* does not verify ({reason}); nothing is appended after a break: run `kars audit syncs` to see it, and move the segments aside to start a new log"
    )]
    Broken {
        /// The PolicyRepo.
        name: String,
        /// The first problem.
        reason: String,
    },
}

/// One segment read from the cluster.
#[derive(Clone, Debug, Default)]
pub struct Segment {
    /// Its index.
    pub index: usize,
    /// The ConfigMap's resourceVersion.
    pub resource_version: Option<String>,
    /// The records (JSON lines).
    pub records: String,
    /// The signed heads (JSON lines).
    pub heads: String,
    /// The public key PEM stored beside them.
    pub public_key: String,
}

impl Segment {
    fn record_count(&self) -> usize {
        self.records.lines().count()
    }
}

/// Every segment of PolicyRepo `name`'s log in `namespace`, in order.
pub async fn read_segments(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Vec<Segment>, SyncLogError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list(&ListParams::default().labels(&format!("{SEGMENT_LABEL}={name}")))
        .await
        .map_err(|source| SyncLogError::Api {
            name: format!("{namespace}/{name}-sync-log-*"),
            source,
        })?;
    let prefix = format!("{name}-sync-log-");
    let mut segments: Vec<Segment> = list
        .items
        .into_iter()
        .filter_map(|cm| {
            let index = cm
                .metadata
                .name
                .as_deref()?
                .strip_prefix(&prefix)?
                .parse::<usize>()
                .ok()?;
            let data = cm.data.unwrap_or_default();
            Some(Segment {
                index,
                resource_version: cm.metadata.resource_version,
                records: data.get(RECORDS_KEY).cloned().unwrap_or_default(),
                heads: data.get(HEADS_KEY).cloned().unwrap_or_default(),
                public_key: data.get(PUBLIC_KEY_KEY).cloned().unwrap_or_default(),
            })
        })
        .collect();
    segments.sort_by_key(|s| s.index);
    Ok(segments)
}

/// The records and heads of all segments joined, naming a missing segment index.
pub fn joined(segments: &[Segment]) -> Result<(String, String), String> {
    let mut records = String::new();
    let mut heads = String::new();
    for (want, s) in segments.iter().enumerate() {
        if s.index != want {
            return Err(format!(
                "segment {want:04} is missing (the next one is {:04}): records were deleted",
                s.index
            ));
        }
        records.push_str(&s.records);
        heads.push_str(&s.heads);
    }
    Ok((records, heads))
}

/// Reads the 32-byte Ed25519 seed (64 hex digits) at `path`.
pub fn read_key(path: &std::path::Path) -> Result<SigningKey, SyncLogError> {
    let err = |message: String| SyncLogError::Key {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed)
        .map_err(|_| err("not a 32-byte Ed25519 seed in hex (64 hex digits)".into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// The public key's PEM text.
pub fn public_key_pem(key: &SigningKey) -> String {
    use ed25519_dalek::pkcs8::EncodePublicKey;
    key.verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap_or_default()
}

struct Loaded {
    next_seq: u64,
    head: String,
    last: Segment,
}

/// Appends sync records for one PolicyRepo.
pub struct SyncLog {
    client: kube::Client,
    namespace: String,
    name: String,
    key: SigningKey,
    key_id: String,
    public_key: String,
    /// `None` until the stored chain was read and verified (and again after a failed write).
    state: Mutex<Option<Loaded>>,
}

impl std::fmt::Debug for SyncLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncLog")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .field("key", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SyncLog {
    /// A log of PolicyRepo `namespace/name`, signed with `key`.
    pub fn new(client: kube::Client, namespace: &str, name: &str, key: SigningKey) -> SyncLog {
        let key_id = chain::key_id(key.verifying_key().as_bytes());
        let public_key = public_key_pem(&key);
        SyncLog {
            client,
            namespace: namespace.to_string(),
            name: name.to_string(),
            key,
            key_id,
            public_key,
            state: Mutex::new(None),
        }
    }

    /// The signing key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    async fn load(&self) -> Result<Loaded, SyncLogError> {
        let segments = read_segments(&self.client, &self.namespace, &self.name).await?;
        let broken = |reason: String| SyncLogError::Broken {
            name: format!("{}/{}", self.namespace, self.name),
            reason,
        };
        let (records, _) = joined(&segments).map_err(broken)?;
        let summary =
            chain::verify_reader(records.as_bytes()).map_err(|e| broken(format!("records {e}")))?;
        let last = segments.last().cloned().unwrap_or_default();
        if !last.public_key.is_empty() && last.public_key != self.public_key {
            use ed25519_dalek::pkcs8::DecodePublicKey;
            let stored = ed25519_dalek::VerifyingKey::from_public_key_pem(&last.public_key)
                .map(|k| chain::key_id(k.as_bytes()))
                .unwrap_or_else(|_| "(unreadable)".into());
            return Err(SyncLogError::KeyChanged {
                name: format!("{}/{}", self.namespace, self.name),
                stored,
                ours: self.key_id.clone(),
            });
        }
        Ok(Loaded {
            next_seq: summary.records,
            head: summary.head,
            last,
        })
    }

    /// Appends the record of `outcome` (when it applied a new commit, wrote or pruned
    /// something) with its signed head. Returns the record's seq, or `None` when there was
    /// nothing to record.
    pub async fn record(
        &self,
        outcome: &SyncOutcome,
        previous_commit: Option<&str>,
    ) -> Result<Option<u64>, SyncLogError> {
        let Some(fields) = record_fields(outcome, previous_commit) else {
            return Ok(None);
        };
        let mut state = self.state.lock().await;
        let mut loaded = match state.take() {
            Some(l) => l,
            None => self.load().await?,
        };
        let appended = match self.append(&mut loaded, &fields).await {
            // Someone else wrote (another agent replica before a lease handover): read the
            // chain again and append after what is there, once.
            Err(SyncLogError::Api {
                source: kube::Error::Api(e),
                ..
            }) if e.code == 409 => {
                loaded = self.load().await?;
                self.append(&mut loaded, &fields).await
            }
            other => other,
        };
        // After a failure the chain is read again before the next record.
        if appended.is_ok() {
            *state = Some(loaded);
        }
        appended.map(Some)
    }

    /// Writes the next record after `loaded` with its signed head; returns its seq.
    async fn append(
        &self,
        loaded: &mut Loaded,
        fields: &Map<String, Value>,
    ) -> Result<u64, SyncLogError> {
        let ts = kars_contract::time::now_rfc3339();
        let (line, hash) = chain::seal(loaded.next_seq, &ts, fields.clone(), &loaded.head);
        let records = loaded.next_seq + 1;
        let sig = self.key.sign(&chain::head_message(records, &hash, &ts));
        let head = SignedHead {
            records,
            head: hash.clone(),
            at: ts,
            key: self.key_id.clone(),
            sig: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        };
        let mut head_line = serde_json::to_string(&head).unwrap_or_default();
        head_line.push('\n');
        let mut segment = if loaded.next_seq == 0 {
            Segment::default()
        } else if loaded.last.record_count() >= RECORDS_PER_SEGMENT {
            Segment {
                index: loaded.last.index + 1,
                ..Segment::default()
            }
        } else {
            loaded.last.clone()
        };
        segment.records.push_str(&line);
        segment.heads.push_str(&head_line);
        segment.public_key = self.public_key.clone();
        segment.resource_version = self.write(&segment).await?;
        let seq = loaded.next_seq;
        loaded.next_seq += 1;
        loaded.head = hash;
        loaded.last = segment;
        Ok(seq)
    }

    async fn write(&self, segment: &Segment) -> Result<Option<String>, SyncLogError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = segment_name(&self.name, segment.index);
        let data = BTreeMap::from([
            (RECORDS_KEY.to_string(), segment.records.clone()),
            (HEADS_KEY.to_string(), segment.heads.clone()),
            (PUBLIC_KEY_KEY.to_string(), segment.public_key.clone()),
        ]);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    SEGMENT_LABEL.to_string(),
                    self.name.clone(),
                )])),
                resource_version: segment.resource_version.clone(),
                ..ObjectMeta::default()
            },
            data: Some(data),
            ..ConfigMap::default()
        };
        let api_err = |source| SyncLogError::Api {
            name: format!("{}/{name}", self.namespace),
            source,
        };
        let written = if segment.resource_version.is_some() {
            api.replace(&name, &PostParams::default(), &cm).await
        } else {
            api.create(&PostParams::default(), &cm).await
        }
        .map_err(api_err)?;
        Ok(written.metadata.resource_version)
    }
}

fn digest_of(items: &[String]) -> String {
    let mut h = Sha256::new();
    for i in items {
        h.update(i.as_bytes());
        h.update(b"\n");
    }
    format!("sha256:{}", hex::encode(h.finalize()))
}

fn object_list(mut items: Vec<String>) -> Value {
    items.sort();
    let digest = digest_of(&items);
    let count = items.len();
    items.truncate(OBJECTS_NAMED);
    json!({"count": count, "digest": digest, "objects": items})
}

/// The fields of the record of `outcome`, or `None` when it changed nothing (the same commit
/// as before, nothing written, nothing pruned).
pub fn record_fields(
    outcome: &SyncOutcome,
    previous_commit: Option<&str>,
) -> Option<Map<String, Value>> {
    use crate::apply::Action;
    let written: Vec<String> = outcome
        .apply
        .objects
        .iter()
        .filter_map(|o| match o.action {
            Action::Created => Some(format!("created {}", o.object)),
            Action::Configured => Some(format!("configured {}", o.object)),
            _ => None,
        })
        .collect();
    let pruned: Vec<String> = outcome
        .prune
        .iter()
        .filter(|(_, r)| *r == PruneResult::Deleted)
        .map(|(o, _)| o.clone())
        .collect();
    if previous_commit == Some(outcome.commit.as_str()) && written.is_empty() && pruned.is_empty() {
        return None;
    }
    let signers: Vec<Value> = outcome
        .verification
        .commits
        .iter()
        .flat_map(|c| {
            c.signers.iter().map(move |s| {
                json!({"commit": c.id, "signer": s.signer, "fingerprint": s.fingerprint, "format": s.format})
            })
        })
        .take(OBJECTS_NAMED)
        .collect();
    let mut m = Map::new();
    m.insert("repository".into(), json!(outcome.repository));
    m.insert("cluster".into(), json!(outcome.cluster));
    m.insert("commit".into(), json!(outcome.commit));
    m.insert("previousCommit".into(), json!(previous_commit));
    m.insert(
        "newCommits".into(),
        json!(outcome.verification.commits.len()),
    );
    m.insert("signers".into(), Value::Array(signers));
    m.insert("rendered".into(), json!(outcome.digest));
    m.insert("written".into(), object_list(written));
    m.insert("pruned".into(), object_list(pruned));
    m.insert("ready".into(), json!(outcome.ready.as_str()));
    Some(m)
}
