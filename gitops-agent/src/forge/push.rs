//! Pushing one new branch over Git's smart HTTP protocol (receive-pack), for the commits the
//! agent itself makes (in-cluster SRE proposals): the agent image carries no `git`, and gix
//! does not push. Only what that needs: create a branch that does not exist yet, with a pack of
//! whole (undeltified) objects, and read `report-status`.

use std::io::Write;

use sha1::{Digest, Sha1};

use super::{ForgeError, Token};

/// One object to send: its kind and its raw (uncompressed, headerless) bytes.
pub struct PackObject {
    /// Commit, tree or blob.
    pub kind: gix::object::Kind,
    /// The object's content.
    pub data: Vec<u8>,
}

fn pkt_line(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(format!("{:04x}", payload.len() + 4).as_bytes());
    out.extend_from_slice(payload);
}

/// A version 2 pack of whole objects (no deltas).
pub fn pack(objects: &[PackObject]) -> Result<Vec<u8>, std::io::Error> {
    let mut out = Vec::new();
    out.extend_from_slice(b"PACK");
    out.extend_from_slice(&2u32.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(objects.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    for o in objects {
        let kind: u8 = match o.kind {
            gix::object::Kind::Commit => 1,
            gix::object::Kind::Tree => 2,
            gix::object::Kind::Blob => 3,
            gix::object::Kind::Tag => 4,
        };
        let mut size = o.data.len();
        let mut first = (kind << 4) | (size & 0x0f) as u8;
        size >>= 4;
        if size > 0 {
            first |= 0x80;
        }
        out.push(first);
        while size > 0 {
            let mut b = (size & 0x7f) as u8;
            size >>= 7;
            if size > 0 {
                b |= 0x80;
            }
            out.push(b);
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&o.data)?;
        out.extend_from_slice(&z.finish()?);
    }
    let digest = Sha1::digest(&out);
    out.extend_from_slice(&digest);
    Ok(out)
}

/// The refs a receive-pack advertisement lists (`name → id`).
fn advertised_refs(body: &[u8]) -> Vec<(String, String)> {
    let mut refs = Vec::new();
    let mut rest = body;
    while rest.len() >= 4 {
        let Some(len) = std::str::from_utf8(&rest[..4])
            .ok()
            .and_then(|h| usize::from_str_radix(h, 16).ok())
        else {
            break;
        };
        if len == 0 {
            rest = &rest[4..];
            continue;
        }
        if len < 4 || len > rest.len() {
            break;
        }
        let line = &rest[4..len];
        rest = &rest[len..];
        let line = line.split(|b| *b == 0).next().unwrap_or_default();
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        if text.starts_with('#') {
            continue;
        }
        if let Some((id, name)) = text.split_once(' ') {
            refs.push((name.to_string(), id.to_string()));
        }
    }
    refs
}

/// Creates `refs/heads/<branch>` at `new` in the repository at `git_url`
/// (`https://host/owner/name.git`), sending `objects` (everything the remote lacks).
/// Refuses when the branch exists already.
pub async fn create_branch(
    http: &reqwest::Client,
    git_url: &str,
    user: &str,
    token: &Token,
    branch: &str,
    new: &str,
    objects: &[PackObject],
) -> Result<(), ForgeError> {
    let refname = format!("refs/heads/{branch}");
    let transport = |e: reqwest::Error| ForgeError::Transport {
        url: git_url.to_string(),
        error: e.without_url().to_string(),
    };
    let refused = |status: u16, message: String| ForgeError::Refused {
        what: format!("push {refname}"),
        status,
        message,
    };
    let adv = http
        .get(format!("{git_url}/info/refs?service=git-receive-pack"))
        .basic_auth(user, Some(token.expose()))
        .send()
        .await
        .map_err(transport)?;
    let status = adv.status();
    let body = adv.bytes().await.map_err(transport)?;
    if !status.is_success() {
        return Err(refused(
            status.as_u16(),
            String::from_utf8_lossy(&body).chars().take(200).collect(),
        ));
    }
    if advertised_refs(&body)
        .iter()
        .any(|(name, _)| *name == refname)
    {
        return Err(refused(409, format!("{refname} exists already")));
    }
    let mut req = Vec::new();
    let zero = "0".repeat(40);
    pkt_line(
        &mut req,
        format!("{zero} {new} {refname}\0report-status agent=kars-gitops\n").as_bytes(),
    );
    req.extend_from_slice(b"0000");
    req.extend_from_slice(
        &pack(objects).map_err(|e| ForgeError::Config(format!("building the pack: {e}")))?,
    );
    let resp = http
        .post(format!("{git_url}/git-receive-pack"))
        .basic_auth(user, Some(token.expose()))
        .header("Content-Type", "application/x-git-receive-pack-request")
        .header("Accept", "application/x-git-receive-pack-result")
        .body(req)
        .send()
        .await
        .map_err(transport)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(transport)?;
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(refused(status.as_u16(), text.chars().take(200).collect()));
    }
    if !text.contains("unpack ok") || !text.contains(&format!("ok {refname}")) {
        let why: String = text
            .lines()
            .find(|l| l.contains("ng ") || l.contains("unpack "))
            .unwrap_or(&text)
            .chars()
            .take(200)
            .collect();
        return Err(refused(status.as_u16(), why));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_have_git_headers_sizes_and_a_trailer() {
        let big = PackObject {
            kind: gix::object::Kind::Blob,
            data: vec![b'a'; 300],
        };
        let small = PackObject {
            kind: gix::object::Kind::Commit,
            data: b"x".to_vec(),
        };
        let p = pack(&[big, small]).unwrap_or_default();
        assert_eq!(&p[..4], b"PACK");
        assert_eq!(&p[4..12], &[0, 0, 0, 2, 0, 0, 0, 2]);
        // blob (3), size 300 = 0b1_0010_1100: low nibble 0xc with continuation, then 300 >> 4 = 18.
        assert_eq!(p[12], 0x80 | (3 << 4) | 0x0c);
        assert_eq!(p[13], 18);
        let body = &p[..p.len() - 20];
        assert_eq!(&p[p.len() - 20..], Sha1::digest(body).as_slice());
    }

    #[test]
    fn advertisements_list_refs_without_capabilities() {
        let mut adv = Vec::new();
        pkt_line(&mut adv, b"# service=git-receive-pack\n");
        adv.extend_from_slice(b"0000");
        pkt_line(
            &mut adv,
            format!(
                "{} refs/heads/main\0report-status delete-refs\n",
                "a".repeat(40)
            )
            .as_bytes(),
        );
        pkt_line(
            &mut adv,
            format!("{} refs/heads/x\n", "b".repeat(40)).as_bytes(),
        );
        adv.extend_from_slice(b"0000");
        let refs = advertised_refs(&adv);
        assert_eq!(
            refs,
            vec![
                ("refs/heads/main".into(), "a".repeat(40)),
                ("refs/heads/x".into(), "b".repeat(40))
            ]
        );
    }
}
