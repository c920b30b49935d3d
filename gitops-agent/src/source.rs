//! Source: the policy repository's Git history, read with gix.
//!
//! The tree of a commit is read straight from the object database (never from a working
//! directory), so what is rendered is exactly what was signed. Symlinks in the tree are
//! resolved inside the tree by the renderer's [`RepoTree::from_entries`]; blobs over the size
//! limit are refused before they are loaded.

use std::collections::BTreeMap;
use std::path::Path;

use kars_renderer::source::{
    RepoTree, SourceError, SourceLimits, TreeEntry, is_policy_file, is_trust_file,
};

/// Why the repository could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GitSourceError {
    /// The path is not a Git repository.
    #[error("{path} is not a git repository: {message}")]
    NotARepository {
        /// The path.
        path: String,
        /// gix's message.
        message: String,
    },
    /// A revision does not resolve.
    #[error("revision {rev:?} not found: {message}")]
    UnknownRevision {
        /// The revision.
        rev: String,
        /// gix's message.
        message: String,
    },
    /// An object could not be read.
    #[error("reading git object {id}: {message}")]
    Object {
        /// The object id.
        id: String,
        /// gix's message.
        message: String,
    },
    /// Fetching failed (network, authentication, missing branch).
    #[error("fetching {url}: {message}")]
    Fetch {
        /// The URL (credentials removed).
        url: String,
        /// What went wrong.
        message: String,
    },
    /// The tree violates a safety rule (symlink escape, size, path).
    #[error("commit {commit}: {source}")]
    Tree {
        /// The commit.
        commit: String,
        /// The rule broken.
        #[source]
        source: SourceError,
    },
}

impl GitSourceError {
    /// The reason word: an unsafe tree is the commit's problem (`UnsafeTree`), everything
    /// else means the source could not be read (`SourceUnavailable`).
    pub fn reason(&self) -> kars_contract::Reason {
        match self {
            GitSourceError::Tree { .. } => kars_contract::Reason::UnsafeTree,
            _ => kars_contract::Reason::SourceUnavailable,
        }
    }
}

/// Opens a repository (working directory or bare).
pub fn open(path: &Path) -> Result<gix::Repository, GitSourceError> {
    gix::open(path).map_err(|e| GitSourceError::NotARepository {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Resolves a revision (`HEAD`, a branch, a tag, a hex id) to a commit id.
pub fn resolve_commit(repo: &gix::Repository, rev: &str) -> Result<gix::ObjectId, GitSourceError> {
    let unknown = |e: &dyn std::fmt::Display| GitSourceError::UnknownRevision {
        rev: rev.to_string(),
        message: e.to_string(),
    };
    let id = repo.rev_parse_single(rev).map_err(|e| unknown(&e))?;
    let object = id.object().map_err(|e| unknown(&e))?;
    let commit = object.peel_to_commit().map_err(|e| unknown(&e))?;
    Ok(commit.id)
}

/// Reads the policy files (and `.kars/` trust files) of a commit's tree.
pub fn read_tree(
    repo: &gix::Repository,
    commit: gix::ObjectId,
    limits: SourceLimits,
) -> Result<RepoTree, GitSourceError> {
    let obj_err = |id: &dyn std::fmt::Display, e: &dyn std::fmt::Display| GitSourceError::Object {
        id: id.to_string(),
        message: e.to_string(),
    };
    let c = repo.find_commit(commit).map_err(|e| obj_err(&commit, &e))?;
    let tree = c.tree().map_err(|e| obj_err(&commit, &e))?;
    let entries = tree
        .traverse()
        .breadthfirst
        .files()
        .map_err(|e| obj_err(&commit, &e))?;
    let mut files = BTreeMap::new();
    for entry in entries {
        let path = entry.filepath.to_string();
        let wanted = is_policy_file(&path) || is_trust_file(&path);
        if !(entry.mode.is_blob() || entry.mode.is_link()) {
            continue;
        }
        // Symlinks are always loaded (tiny), so a wanted path can point at them.
        if !wanted && !entry.mode.is_link() && !path.ends_with(".yaml") && !path.ends_with(".yml") {
            continue;
        }
        let header = repo
            .find_header(entry.oid)
            .map_err(|e| obj_err(&entry.oid, &e))?;
        if header.size() > limits.max_file_bytes {
            return Err(GitSourceError::Tree {
                commit: commit.to_string(),
                source: SourceError::FileTooLarge {
                    path,
                    size: header.size(),
                    limit: limits.max_file_bytes,
                },
            });
        }
        let data = repo
            .find_object(entry.oid)
            .map_err(|e| obj_err(&entry.oid, &e))?
            .detach()
            .data;
        let e = if entry.mode.is_link() {
            TreeEntry::Symlink(String::from_utf8_lossy(&data).into_owned())
        } else {
            TreeEntry::File(data)
        };
        files.insert(path, e);
    }
    RepoTree::from_entries(files, |p| is_policy_file(p) || is_trust_file(p), limits).map_err(
        |source| GitSourceError::Tree {
            commit: commit.to_string(),
            source,
        },
    )
}

/// The bytes of the file at `path` in `commit`'s tree, `None` when there is none.
pub fn read_file(
    repo: &gix::Repository,
    commit: gix::ObjectId,
    path: &str,
) -> Result<Option<Vec<u8>>, GitSourceError> {
    let obj_err = |e: &dyn std::fmt::Display| GitSourceError::Object {
        id: commit.to_string(),
        message: e.to_string(),
    };
    let c = repo.find_commit(commit).map_err(|e| obj_err(&e))?;
    let tree = c.tree().map_err(|e| obj_err(&e))?;
    let Some(entry) = tree.lookup_entry_by_path(path).map_err(|e| obj_err(&e))? else {
        return Ok(None);
    };
    if !entry.mode().is_blob() {
        return Ok(None);
    }
    let object = entry.object().map_err(|e| obj_err(&e))?;
    Ok(Some(object.detach().data))
}

/// Credentials for fetching.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// HTTPS: a token sent as the password (username `x-access-token` unless given).
    pub token: Option<String>,
    /// HTTPS username for the token.
    pub username: Option<String>,
    /// SSH: private key file.
    pub ssh_key: Option<std::path::PathBuf>,
    /// SSH: known_hosts file; without it host keys are not checked (loopback tests only).
    pub ssh_known_hosts: Option<std::path::PathBuf>,
}

/// What a fetch found (or a local repository opened).
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The repository holding the history (the bare cache for URLs), opened.
    pub repo: gix::Repository,
    /// Where it is.
    pub repo_path: std::path::PathBuf,
    /// The head of the followed branch.
    pub head: gix::ObjectId,
    /// False when the remote head was already present locally and no pack was downloaded.
    pub downloaded: bool,
}

/// Opens the source of a sync once: fetches a URL into the cache under `cache_root`, or opens
/// a local path (refusing a shallow one), and resolves the branch head.
pub fn checkout(
    source: &str,
    branch: &str,
    cache_root: &Path,
    approval_prefix: &str,
    creds: &Credentials,
) -> Result<Fetched, GitSourceError> {
    if is_remote_url(source) {
        return fetch(cache_root, source, branch, approval_prefix, creds);
    }
    let path = std::path::PathBuf::from(source);
    let repo = open(&path)?;
    ensure_not_shallow(&repo, &path)?;
    let head = resolve_commit(&repo, branch)?;
    Ok(Fetched {
        repo,
        repo_path: path,
        head,
        downloaded: false,
    })
}

/// True for URLs gix fetches from (`https://`, `http://`, `ssh://`, `git://`, `file://`, scp-like
/// `user@host:path`); false for plain local paths.
pub fn is_remote_url(source: &str) -> bool {
    source.contains("://")
        || (source.contains('@') && source.contains(':') && !source.starts_with('/'))
}

/// The cache directory for a URL (one bare repository per URL).
pub fn cache_dir_for(cache_root: &Path, url: &str) -> std::path::PathBuf {
    use sha2::{Digest, Sha256};
    let digest = hex::encode(Sha256::digest(url.as_bytes()));
    cache_root.join(&digest[..16])
}

/// Fetches `branch` (and approval tags under `refs/tags/<approval_prefix>`) from `url` into a bare
/// cache repository under `cache_root`. The cache keeps full history (never shallow), so ranges
/// can be verified. When the remote head is already in the cache, no pack is downloaded.
pub fn fetch(
    cache_root: &Path,
    url: &str,
    branch: &str,
    approval_prefix: &str,
    creds: &Credentials,
) -> Result<Fetched, GitSourceError> {
    use std::sync::atomic::AtomicBool;
    let fail = |message: String| GitSourceError::Fetch {
        url: redact(url),
        message,
    };
    let dir = cache_dir_for(cache_root, url);
    let repo = if dir.join("HEAD").exists() {
        gix::open(&dir).map_err(|e| fail(format!("opening the cache {}: {e}", dir.display())))?
    } else {
        std::fs::create_dir_all(&dir)
            .map_err(|e| fail(format!("creating {}: {e}", dir.display())))?;
        gix::init_bare(&dir)
            .map_err(|e| fail(format!("creating the cache {}: {e}", dir.display())))?
    };
    if let Some(key) = &creds.ssh_key {
        write_ssh_command(&dir, key, creds.ssh_known_hosts.as_deref())
            .map_err(|e| fail(format!("configuring ssh: {e}")))?;
    }
    let repo = if creds.ssh_key.is_some() {
        gix::open(&dir).map_err(|e| fail(e.to_string()))?
    } else {
        repo
    };
    // A branch name, or a full ref (`refs/pull/7/head`: a pull request's head, for previews).
    let wanted = if branch.starts_with("refs/") {
        branch.to_string()
    } else {
        format!("refs/heads/{branch}")
    };
    let tracking = format!("refs/remotes/origin/{branch}");
    let specs = [
        format!("+{wanted}:{tracking}"),
        format!("+refs/tags/{approval_prefix}*:refs/tags/{approval_prefix}*"),
    ];
    let remote = repo
        .remote_at(url)
        .map_err(|e| fail(format!("invalid URL: {e}")))?
        .with_refspecs(
            specs.iter().map(String::as_str),
            gix::remote::Direction::Fetch,
        )
        .map_err(|e| fail(format!("refspec: {e}")))?;
    let connection = remote
        .connect(gix::remote::Direction::Fetch)
        .map_err(|e| fail(format!("cannot connect: {e}")))?;
    let token = creds.token.clone();
    let username = creds
        .username
        .clone()
        .unwrap_or_else(|| "x-access-token".to_string());
    let connection = connection.with_credentials(move |action| match action {
        gix::credentials::helper::Action::Get(ctx) => match &token {
            Some(t) => Ok(Some(gix::credentials::protocol::Outcome {
                identity: gix::sec::identity::Account {
                    username: username.clone(),
                    password: t.clone(),
                    oauth_refresh_token: None,
                },
                next: ctx.into(),
            })),
            None => Ok(None),
        },
        _ => Ok(None),
    });
    let prepare = connection
        .prepare_fetch(gix::progress::Discard, Default::default())
        .map_err(|e| fail(format!("listing remote refs: {e}")))?;
    let remote_head = prepare
        .ref_map()
        .remote_refs
        .iter()
        .find_map(|r| {
            let (name, target, peeled) = r.unpack();
            (name == wanted.as_bytes())
                .then(|| peeled.or(target).map(ToOwned::to_owned))
                .flatten()
        })
        .ok_or_else(|| fail(format!("the remote has no branch {branch:?}")))?;
    let have_it = repo.find_commit(remote_head).is_ok();
    let local_ref_current = repo
        .find_reference(tracking.as_str())
        .ok()
        .and_then(|r| r.target().try_id().map(ToOwned::to_owned))
        == Some(remote_head);
    // A new or moved approval tag (a k-of-n co-signature added after its commit was fetched)
    // is new too, even when the branch did not move.
    let tag_prefix = format!("refs/tags/{approval_prefix}");
    let tags_current = prepare.ref_map().remote_refs.iter().all(|r| {
        let (name, target, _) = r.unpack();
        if !name.starts_with(tag_prefix.as_bytes()) {
            return true;
        }
        let Ok(name) = std::str::from_utf8(name) else {
            return true;
        };
        let local = repo
            .find_reference(name)
            .ok()
            .and_then(|r| r.target().try_id().map(ToOwned::to_owned));
        local.is_some() && local.as_deref() == target
    });
    if have_it && local_ref_current && tags_current {
        // Nothing new: the connection is dropped without downloading a pack.
        drop(prepare);
        return Ok(Fetched {
            repo,
            repo_path: dir,
            head: remote_head,
            downloaded: false,
        });
    }
    prepare
        .receive(gix::progress::Discard, &AtomicBool::new(false))
        .map_err(|e| fail(format!("fetching: {e}")))?;
    let repo = gix::open(&dir).map_err(|e| fail(e.to_string()))?;
    let head = repo
        .find_reference(tracking.as_str())
        .ok()
        .and_then(|r| r.target().try_id().map(ToOwned::to_owned))
        .ok_or_else(|| fail(format!("{tracking} missing after the fetch")))?;
    Ok(Fetched {
        repo,
        repo_path: dir,
        head,
        downloaded: true,
    })
}

/// Removes credentials from a URL for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn write_ssh_command(dir: &Path, key: &Path, known_hosts: Option<&Path>) -> std::io::Result<()> {
    let checking = match known_hosts {
        Some(f) => format!(
            "-o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
            f.display()
        ),
        None => "-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no".to_string(),
    };
    let cmd = format!(
        "ssh -i {} -o IdentitiesOnly=yes -o BatchMode=yes {checking}",
        key.display()
    );
    let config = dir.join("config");
    let existing = std::fs::read_to_string(&config).unwrap_or_default();
    if existing.contains(&cmd) {
        return Ok(());
    }
    let kept: String = existing
        .lines()
        .filter(|l| !l.trim_start().starts_with("sshCommand"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&config, format!("{kept}[core]\n\tsshCommand = {cmd}\n"))
}

/// Refuses shallow repositories: their history cannot be verified.
pub fn ensure_not_shallow(repo: &gix::Repository, path: &Path) -> Result<(), GitSourceError> {
    if repo.is_shallow().unwrap_or(false) {
        return Err(GitSourceError::Fetch {
            url: path.display().to_string(),
            message: "the repository is shallow, so its history cannot be verified; run `git fetch --unshallow`".into(),
        });
    }
    Ok(())
}
