//! The files of a policy repository, read safely from a directory or from a Git tree.
//!
//! Both sources go through the same checks: no path component `..` or absolute path, symlinks
//! only to files inside the repository (resolved, never followed outside), a size limit per
//! file and for the whole tree. The result is an in-memory map `path → bytes`, so rendering
//! never touches the filesystem again and is a pure function of the tree.

use std::collections::BTreeMap;
use std::path::{Component, Path};

/// Limits on what a repository may contain.
#[derive(Clone, Copy, Debug)]
pub struct SourceLimits {
    /// Largest file read, in bytes.
    pub max_file_bytes: u64,
    /// Largest total of all files read, in bytes.
    pub max_total_bytes: u64,
    /// Most files read.
    pub max_files: usize,
}

impl Default for SourceLimits {
    fn default() -> Self {
        SourceLimits {
            max_file_bytes: 1024 * 1024,
            max_total_bytes: 256 * 1024 * 1024,
            max_files: 50_000,
        }
    }
}

/// Why a repository tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// A file or directory could not be read.
    #[error("{path}: cannot read: {source}")]
    Io {
        /// The path (repository-relative where possible).
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A path is absolute or contains `..`.
    #[error("{path}: path escapes the repository (absolute or contains \"..\"); rename it")]
    UnsafePath {
        /// The offending path.
        path: String,
    },
    /// A symlink points outside the repository (or nowhere).
    #[error(
        "{path}: symlink to {target:?} leaves the repository or does not resolve; replace it with a regular file"
    )]
    SymlinkEscapes {
        /// The link.
        path: String,
        /// Its target as written.
        target: String,
    },
    /// A file is larger than the limit.
    #[error(
        "{path}: {size} bytes is over the {limit}-byte limit per file; split it or raise the limit"
    )]
    FileTooLarge {
        /// The file.
        path: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The tree is larger than the limit.
    #[error(
        "the repository holds more than {limit} bytes of policy files; raise the limit or split the repository"
    )]
    TreeTooLarge {
        /// The limit.
        limit: u64,
    },
    /// Too many files.
    #[error("the repository holds more than {limit} policy files")]
    TooManyFiles {
        /// The limit.
        limit: usize,
    },
    /// A file is not UTF-8.
    #[error("{path}: not valid UTF-8 text")]
    NotUtf8 {
        /// The file.
        path: String,
    },
}

/// One entry of a tree before symlinks are resolved.
#[derive(Clone, Debug)]
pub enum TreeEntry {
    /// A regular file and its bytes.
    File(Vec<u8>),
    /// A symbolic link and its target as stored.
    Symlink(String),
}

/// A repository tree: `/`-separated relative path → file bytes, symlinks resolved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RepoTree {
    files: BTreeMap<String, Vec<u8>>,
}

/// True for the files the renderer reads: YAML anywhere except hidden directories.
pub fn is_policy_file(path: &str) -> bool {
    let hidden = path.split('/').any(|c| c.starts_with('.'));
    !hidden && (path.ends_with(".yaml") || path.ends_with(".yml"))
}

/// True for files read by the verifier (`.kars/…`), which lives outside the rendered tree.
pub fn is_trust_file(path: &str) -> bool {
    path.starts_with(".kars/") && (path.ends_with(".yaml") || path.ends_with(".yml"))
}

fn check_relative(path: &str) -> Result<(), SourceError> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && !path.contains('\\')
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(SourceError::UnsafePath {
            path: path.to_string(),
        })
    }
}

/// Resolves a symlink target relative to the link's directory, lexically, refusing to leave the
/// repository root.
fn resolve_link(link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = link.split('/').collect();
    parts.pop();
    for comp in target.split('/') {
        match comp {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join("/"))
    }
}

impl RepoTree {
    /// Builds a tree from entries (paths `/`-separated, relative). Only entries for which
    /// `keep(path)` is true are kept; symlinks are resolved (to at most 8 levels) to files of
    /// the same tree.
    pub fn from_entries(
        entries: BTreeMap<String, TreeEntry>,
        keep: impl Fn(&str) -> bool,
        limits: SourceLimits,
    ) -> Result<RepoTree, SourceError> {
        let mut files = BTreeMap::new();
        let mut total: u64 = 0;
        for (path, entry) in &entries {
            if !keep(path) {
                continue;
            }
            check_relative(path)?;
            let mut current = path.clone();
            let mut e = entry;
            let mut hops = 0;
            let bytes = loop {
                match e {
                    TreeEntry::File(b) => break b,
                    TreeEntry::Symlink(target) => {
                        hops += 1;
                        let escape = || SourceError::SymlinkEscapes {
                            path: path.clone(),
                            target: target.clone(),
                        };
                        if hops > 8 {
                            return Err(escape());
                        }
                        current = resolve_link(&current, target).ok_or_else(escape)?;
                        e = entries.get(&current).ok_or_else(escape)?;
                    }
                }
            };
            let size = bytes.len() as u64;
            if size > limits.max_file_bytes {
                return Err(SourceError::FileTooLarge {
                    path: path.clone(),
                    size,
                    limit: limits.max_file_bytes,
                });
            }
            total += size;
            if total > limits.max_total_bytes {
                return Err(SourceError::TreeTooLarge {
                    limit: limits.max_total_bytes,
                });
            }
            if files.len() >= limits.max_files {
                return Err(SourceError::TooManyFiles {
                    limit: limits.max_files,
                });
            }
            files.insert(path.clone(), bytes.clone());
        }
        Ok(RepoTree { files })
    }

    /// Reads the policy files (and `.kars/` trust files) of a working directory. Symlinks are
    /// read as links (never followed by the OS) and resolved inside the tree; `.git` is skipped.
    pub fn from_dir(root: &Path, limits: SourceLimits) -> Result<RepoTree, SourceError> {
        let mut entries = BTreeMap::new();
        walk(root, root, &mut entries, limits)?;
        RepoTree::from_entries(entries, |p| is_policy_file(p) || is_trust_file(p), limits)
    }

    /// Builds a tree from in-memory files (tests, generated repositories).
    pub fn from_files<I, P, B>(files: I) -> RepoTree
    where
        I: IntoIterator<Item = (P, B)>,
        P: Into<String>,
        B: Into<Vec<u8>>,
    {
        RepoTree {
            files: files
                .into_iter()
                .map(|(p, b)| (p.into(), b.into()))
                .collect(),
        }
    }

    /// The files, sorted by path.
    pub fn files(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.files.iter().map(|(p, b)| (p.as_str(), b.as_slice()))
    }

    /// One file's bytes.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// True when there are no files.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

fn walk(
    root: &Path,
    dir: &Path,
    out: &mut BTreeMap<String, TreeEntry>,
    limits: SourceLimits,
) -> Result<(), SourceError> {
    let rel = |p: &Path| -> String {
        p.strip_prefix(root)
            .unwrap_or(p)
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    };
    let io = |p: &Path, source| SourceError::Io {
        path: rel(p),
        source,
    };
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io(dir, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| io(dir, e))?;
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let path = child.path();
        let name = child.file_name().to_string_lossy().into_owned();
        if name == ".git" {
            continue;
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| io(&path, e))?;
        let relative = rel(&path);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path).map_err(|e| io(&path, e))?;
            out.insert(
                relative,
                TreeEntry::Symlink(target.to_string_lossy().into_owned()),
            );
        } else if meta.is_dir() {
            walk(root, &path, out, limits)?;
        } else if meta.is_file() {
            let wanted = is_policy_file(&relative) || is_trust_file(&relative);
            if !wanted {
                // Still record a placeholder so symlinks to it resolve to a clear error.
                continue;
            }
            if meta.len() > limits.max_file_bytes {
                return Err(SourceError::FileTooLarge {
                    path: relative,
                    size: meta.len(),
                    limit: limits.max_file_bytes,
                });
            }
            let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
            out.insert(relative, TreeEntry::File(bytes));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, body: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, body).expect("write");
    }

    #[test]
    fn reads_yaml_and_skips_hidden_and_other_files() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "kars.yaml", "a: 1\n");
        write(dir.path(), "agents/a/sandbox.yml", "b: 2\n");
        write(dir.path(), "README.md", "hi\n");
        write(dir.path(), ".github/workflows/ci.yaml", "x: 1\n");
        write(dir.path(), ".kars/signers.yaml", "s: 1\n");
        let tree = RepoTree::from_dir(dir.path(), SourceLimits::default()).expect("tree");
        let paths: Vec<&str> = tree.files().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            vec![".kars/signers.yaml", "agents/a/sandbox.yml", "kars.yaml"]
        );
    }

    #[test]
    fn symlink_inside_is_resolved_outside_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("tmp");
        write(dir.path(), "agents/a/sandbox.yaml", "a: 1\n");
        write(outside.path(), "secret.yaml", "stolen: true\n");
        std::os::unix::fs::symlink(
            "../agents/a/sandbox.yaml",
            dir.path().join("agents/link.yaml"),
        )
        .expect("link");
        let tree = RepoTree::from_dir(dir.path(), SourceLimits::default()).expect("tree");
        assert_eq!(tree.get("agents/link.yaml"), Some(&b"a: 1\n"[..]));

        std::os::unix::fs::symlink(
            outside.path().join("secret.yaml"),
            dir.path().join("agents/abs.yaml"),
        )
        .expect("link");
        let err = RepoTree::from_dir(dir.path(), SourceLimits::default()).expect_err("escape");
        assert!(
            matches!(err, SourceError::SymlinkEscapes { ref path, .. } if path == "agents/abs.yaml"),
            "{err}"
        );
    }

    #[test]
    fn relative_symlink_climbing_out_is_refused() {
        let mut entries = BTreeMap::new();
        entries.insert(
            "a/x.yaml".to_string(),
            TreeEntry::Symlink("../../etc/passwd.yaml".to_string()),
        );
        let err =
            RepoTree::from_entries(entries, |_| true, SourceLimits::default()).expect_err("escape");
        assert!(matches!(err, SourceError::SymlinkEscapes { .. }), "{err}");
    }

    #[test]
    fn symlink_loop_is_refused() {
        let mut entries = BTreeMap::new();
        entries.insert(
            "a.yaml".to_string(),
            TreeEntry::Symlink("b.yaml".to_string()),
        );
        entries.insert(
            "b.yaml".to_string(),
            TreeEntry::Symlink("a.yaml".to_string()),
        );
        let err =
            RepoTree::from_entries(entries, |_| true, SourceLimits::default()).expect_err("loop");
        assert!(matches!(err, SourceError::SymlinkEscapes { .. }), "{err}");
    }

    #[test]
    fn dot_dot_and_absolute_paths_are_refused() {
        for bad in [
            "../x.yaml",
            "a/../../x.yaml",
            "/etc/x.yaml",
            "a\\..\\x.yaml",
        ] {
            let mut entries = BTreeMap::new();
            entries.insert(bad.to_string(), TreeEntry::File(b"a: 1".to_vec()));
            let err =
                RepoTree::from_entries(entries, |_| true, SourceLimits::default()).expect_err(bad);
            assert!(
                matches!(err, SourceError::UnsafePath { .. }),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn size_limits() {
        let dir = tempfile::tempdir().expect("tmp");
        write(dir.path(), "big.yaml", &"a: 1\n".repeat(100));
        let limits = SourceLimits {
            max_file_bytes: 100,
            ..SourceLimits::default()
        };
        let err = RepoTree::from_dir(dir.path(), limits).expect_err("too big");
        assert!(
            matches!(err, SourceError::FileTooLarge { size: 500, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("big.yaml"));
    }
}
