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
