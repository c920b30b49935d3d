//! Reading what a signature covers from Git objects.
//!
//! Commits: gix extracts the `gpgsig` header (`gpgsig-sha256` in SHA-256 repositories) and the
//! signed data (the commit without that header). Tags: the signature is the trailing armored
//! block of the message; the signed data is everything before it (as git does).

use gix::bstr::ByteSlice;

/// A commit's signature-relevant facts.
#[derive(Clone, Debug)]
pub struct CommitFacts {
    /// Commit id.
    pub id: gix::ObjectId,
    /// Tree id.
    pub tree: gix::ObjectId,
    /// Parent ids (first parent first).
    pub parents: Vec<gix::ObjectId>,
    /// Committer e-mail (lowercased).
    pub committer_email: String,
    /// Committer time, Unix seconds.
    pub committer_time: i64,
    /// First line of the message.
    pub summary: String,
    /// The full message.
    pub message: String,
    /// The signature block, if signed.
    pub signature: Option<String>,
    /// The exact signed bytes.
    pub payload: Vec<u8>,
}

/// Why an object could not be read as a commit or tag.
#[derive(Debug, thiserror::Error)]
#[error("object {id}: {message}")]
pub struct ObjectError {
    /// Object id.
    pub id: String,
    /// What went wrong.
    pub message: String,
}

fn object_error(id: impl std::fmt::Display, e: impl std::fmt::Display) -> ObjectError {
    ObjectError {
        id: id.to_string(),
        message: e.to_string(),
    }
}

/// `Name <email> 1700000000 +0000` → (email lowercased, seconds).
pub fn parse_actor(raw: &[u8]) -> Option<(String, i64)> {
    let s = raw.to_str().ok()?;
    let lt = s.rfind('<')?;
    let gt = s[lt..].find('>')? + lt;
    let email = s[lt + 1..gt].trim().to_ascii_lowercase();
    let mut rest = s[gt + 1..].split_whitespace();
    let secs: i64 = rest.next()?.parse().ok()?;
    Some((email, secs))
}

/// Reads a commit's facts.
pub fn commit_facts(repo: &gix::Repository, id: gix::ObjectId) -> Result<CommitFacts, ObjectError> {
    let commit = repo.find_commit(id).map_err(|e| object_error(id, e))?;
    let data = commit.data.clone();
    let parsed =
        gix::objs::CommitRef::from_bytes(&data, id.kind()).map_err(|e| object_error(id, e))?;
    let tree = gix::ObjectId::from_hex(parsed.tree).map_err(|e| object_error(id, e))?;
    let parents = parsed
        .parents
        .iter()
        .map(|p| gix::ObjectId::from_hex(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| object_error(id, e))?;
    let (committer_email, committer_time) = parse_actor(parsed.committer)
        .ok_or_else(|| object_error(id, "cannot parse the committer line"))?;
    let message = parsed.message.to_str_lossy().into_owned();
    let summary = message.lines().next().unwrap_or_default().to_string();
    let (signature, payload) = match commit.signature().map_err(|e| object_error(id, e))? {
        Some((sig, signed)) => (
            Some(sig.to_str_lossy().into_owned()),
            signed.to_bstring().to_vec(),
        ),
        None => (None, data.to_vec()),
    };
    Ok(CommitFacts {
        id,
        tree,
        parents,
        committer_email,
        committer_time,
        summary,
        message,
        signature,
        payload,
    })
}

/// An annotated tag's signature-relevant facts.
#[derive(Clone, Debug)]
pub struct TagFacts {
    /// Tag object id.
    pub id: gix::ObjectId,
    /// Tag name.
    pub name: String,
    /// The object it points to.
    pub target: gix::ObjectId,
    /// Tagger e-mail (lowercased).
    pub tagger_email: String,
    /// Tagger time.
    pub tagger_time: i64,
    /// The signature block, if signed.
    pub signature: Option<String>,
    /// The exact signed bytes.
    pub payload: Vec<u8>,
}

const SIGNATURE_MARKERS: [&[u8]; 3] = [
    b"-----BEGIN PGP SIGNATURE-----",
    b"-----BEGIN SSH SIGNATURE-----",
    b"-----BEGIN SIGNED MESSAGE-----",
];

/// Splits raw tag bytes into (signed payload, signature) the way git does: the signature starts
/// at the first line that begins with a known signature marker.
pub fn split_tag_signature(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    let mut offset = 0;
    for line in data.split_inclusive(|b| *b == b'\n') {
        if SIGNATURE_MARKERS.iter().any(|m| line.starts_with(m)) {
            return (&data[..offset], Some(&data[offset..]));
        }
        offset += line.len();
    }
    (data, None)
}

/// Reads an annotated tag's facts.
pub fn tag_facts(repo: &gix::Repository, id: gix::ObjectId) -> Result<TagFacts, ObjectError> {
    let obj = repo.find_object(id).map_err(|e| object_error(id, e))?;
    if obj.kind != gix::object::Kind::Tag {
        return Err(object_error(id, "not an annotated tag"));
    }
    let data = obj.data.clone();
    let parsed =
        gix::objs::TagRef::from_bytes(&data, id.kind()).map_err(|e| object_error(id, e))?;
    let target = gix::ObjectId::from_hex(parsed.target).map_err(|e| object_error(id, e))?;
    let (tagger_email, tagger_time) = parsed
        .tagger
        .and_then(|t| parse_actor(t))
        .ok_or_else(|| object_error(id, "tag has no parsable tagger"))?;
    let (payload, signature) = split_tag_signature(&data);
    Ok(TagFacts {
        id,
        name: parsed.name.to_str_lossy().into_owned(),
        target,
        tagger_email,
        tagger_time,
        signature: signature.map(|s| s.to_str_lossy().into_owned()),
        payload: payload.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_lines() {
        assert_eq!(
            parse_actor(b"A U Thor <A@Example.com> 1700000000 +0100"),
            Some(("a@example.com".into(), 1_700_000_000))
        );
        assert_eq!(parse_actor(b"no email 1 +0000"), None);
        assert_eq!(parse_actor(b"x <a@b> notanumber +0000"), None);
    }

    #[test]
    fn tag_signature_split() {
        let data = b"object abc\ntype commit\ntag v1\ntagger x <x@y> 1 +0000\n\nmessage\n-----BEGIN SSH SIGNATURE-----\nAAA\n-----END SSH SIGNATURE-----\n";
        let (payload, sig) = split_tag_signature(data);
        assert!(payload.ends_with(b"message\n"));
        assert!(sig.is_some_and(|s| s.starts_with(b"-----BEGIN SSH")));
        let (payload, sig) = split_tag_signature(b"object a\n\nno sig\n");
        assert_eq!(payload, b"object a\n\nno sig\n");
        assert!(sig.is_none());
    }
}
