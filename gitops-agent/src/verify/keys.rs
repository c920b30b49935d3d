//! Signer keys and where they come from: git's `allowed_signers` file, an armored OpenPGP
//! keyring, the trust-policy file, and the repository's own signer list.

use std::fmt;

use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;

/// The key of a signer.
#[derive(Clone)]
pub enum KeyMaterial {
    /// An SSH public key (SSHSIG signatures, `gpg.format=ssh`).
    Ssh(Box<ssh_key::PublicKey>),
    /// An OpenPGP certificate (primary key with user ids and subkeys).
    OpenPgp(Box<SignedPublicKey>),
}

impl fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint())
    }
}

impl KeyMaterial {
    /// A printable fingerprint: `SHA256:…` for SSH, the hex primary fingerprint for OpenPGP.
    pub fn fingerprint(&self) -> String {
        match self {
            KeyMaterial::Ssh(k) => k.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
            KeyMaterial::OpenPgp(k) => {
                format!("{:X}", k.primary_key.fingerprint()).replace(' ', "")
            }
        }
    }

    /// The e-mail addresses in an OpenPGP certificate's user ids (lowercased).
    pub fn openpgp_emails(&self) -> Vec<String> {
        match self {
            KeyMaterial::OpenPgp(k) => k
                .details
                .users
                .iter()
                .filter_map(|u| std::str::from_utf8(u.id.id()).ok())
                .filter_map(email_of_user_id)
                .collect(),
            KeyMaterial::Ssh(_) => Vec::new(),
        }
    }
}

/// `Name (comment) <mail@example.com>` → `mail@example.com` (lowercased).
pub fn email_of_user_id(uid: &str) -> Option<String> {
    let start = uid.rfind('<')?;
    let end = uid[start..].find('>')? + start;
    let email = uid[start + 1..end].trim().to_ascii_lowercase();
    (!email.is_empty()).then_some(email)
}

/// Who a key belongs to and what it may sign.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignerClass {
    /// A person (or bot) whose signature counts toward rules.
    Person,
    /// A forge's web-flow key (e.g. GitHub's merge key): only vouches for merges whose merged
    /// commits verify on their own.
    Forge,
}

/// One trusted key of one signer.
#[derive(Clone, Debug)]
pub struct SignerKey {
    /// The signer's name (distinct names count separately for k-of-n rules).
    pub signer: String,
    /// Identities the key may sign for: e-mail patterns (`*` and `?` wildcards allowed, as in
    /// `allowed_signers`). For OpenPGP keys without explicit principals, the user-id e-mails.
    pub principals: Vec<String>,
    /// The key.
    pub key: KeyMaterial,
    /// `allowed_signers` `namespaces=`: when set, must include `git`.
    pub namespaces: Option<Vec<String>>,
    /// `valid-after` (Unix seconds), checked against the commit's committer date.
    pub valid_after: Option<i64>,
    /// `valid-before` (Unix seconds), checked against the commit's committer date.
    pub valid_before: Option<i64>,
    /// Person or forge.
    pub class: SignerClass,
    /// Where the key was configured, for messages (`allowed_signers:3`, `trust policy`, …).
    pub origin: String,
}

impl SignerKey {
    /// True when `email` is one of the identities this key may sign for.
    pub fn matches_identity(&self, email: &str) -> bool {
        let email = email.to_ascii_lowercase();
        let mut principals = self.principals.clone();
        if principals.is_empty() {
            principals = self.key.openpgp_emails();
        }
        let mut allowed = false;
        for p in &principals {
            let (negated, pat) = match p.strip_prefix('!') {
                Some(rest) => (true, rest),
                None => (false, p.as_str()),
            };
            if wildcard_match(&pat.to_ascii_lowercase(), &email) {
                if negated {
                    return false;
                }
                allowed = true;
            }
        }
        allowed
    }
}

/// Shell-style match with `*` (any run) and `?` (one character), as OpenSSH's `match_pattern`.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// A problem in a key source, with the line it is on.
#[derive(Debug, thiserror::Error)]
#[error("{source_name}:{line}: {message}")]
pub struct KeySourceError {
    /// File (or source) name.
    pub source_name: String,
    /// 1-based line, 0 when not applicable.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

/// Parses git's `allowed_signers` format (see `ssh-keygen(1)`, ALLOWED SIGNERS):
/// `principals [options] keytype base64-key [comment]`, options `namespaces="…"`,
/// `valid-after="…"`, `valid-before="…"`, `cert-authority`.
/// Each line becomes a [`SignerKey`] named after its first principal.
pub fn parse_allowed_signers(
    source_name: &str,
    text: &str,
) -> Result<Vec<SignerKey>, KeySourceError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let err = |message: String| KeySourceError {
            source_name: source_name.to_string(),
            line: line_no,
            message,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let tokens = split_respecting_quotes(line);
        if let Some(what) = not_an_allowed_signers_line(line, &tokens) {
            return Err(err(format!(
                "{what}; an allowed_signers line is `principal namespaces=\"git\" key-type base64-key`, e.g. `ops@example.com namespaces=\"git\" ssh-ed25519 AAAAC3…`"
            )));
        }
        let mut it = tokens.iter().peekable();
        let principals_tok = it.next().ok_or_else(|| err("missing principals".into()))?;
        let principals: Vec<String> = unquote(principals_tok)
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        if principals.is_empty() {
            return Err(err("empty principals".into()));
        }
        let mut namespaces = None;
        let mut valid_after = None;
        let mut valid_before = None;
        // Options come before the key type; a key type looks like `ssh-…`, `ecdsa-…` or `sk-…`.
        while let Some(tok) = it.peek() {
            if is_key_type(tok) {
                break;
            }
            let tok = it.next().map(String::as_str).unwrap_or_default();
            for opt in split_options(tok) {
                let (name, value) = match opt.split_once('=') {
                    Some((n, v)) => (n.to_ascii_lowercase(), Some(unquote(v))),
                    None => (opt.to_ascii_lowercase(), None),
                };
                match (name.as_str(), value) {
                    ("cert-authority", None) => {
                        return Err(err(
                            "cert-authority keys (SSH certificates) are not supported; list the signers' own keys".into(),
                        ));
                    }
                    ("namespaces", Some(v)) => {
                        namespaces = Some(v.split(',').map(|s| s.trim().to_string()).collect())
                    }
                    ("valid-after", Some(v)) => {
                        valid_after = Some(parse_ssh_time(&v).ok_or_else(|| {
                            err(format!("valid-after {v:?}: expected YYYYMMDD[HHMM[SS]][Z]"))
                        })?)
                    }
                    ("valid-before", Some(v)) => {
                        valid_before = Some(parse_ssh_time(&v).ok_or_else(|| {
                            err(format!(
                                "valid-before {v:?}: expected YYYYMMDD[HHMM[SS]][Z]"
                            ))
                        })?)
                    }
                    (other, _) => {
                        return Err(err(format!(
                            "unknown option {other:?} (options are namespaces=\"git\", valid-after=\"…\", valid-before=\"…\"; the key type, e.g. ssh-ed25519, comes after them)"
                        )));
                    }
                }
            }
        }
        let key_type = it.next().ok_or_else(|| err("missing key type".into()))?;
        let key_b64 = it.next().ok_or_else(|| err("missing base64 key".into()))?;
        let key = ssh_key::PublicKey::from_openssh(&format!("{key_type} {key_b64}"))
            .map_err(|e| err(format!("cannot parse the {key_type} key: {e}")))?;
        out.push(SignerKey {
            signer: principals[0].clone(),
            principals,
            key: KeyMaterial::Ssh(Box::new(key)),
            namespaces,
            valid_after,
            valid_before,
            class: SignerClass::Person,
            origin: format!("{source_name}:{line_no}"),
        });
    }
    Ok(out)
}

/// What a line is when it is a familiar mistake instead of an allowed_signers line: a bare
/// public key (a `.pub` file), a private key, an OpenPGP key, an `authorized_keys` line.
fn not_an_allowed_signers_line(line: &str, tokens: &[String]) -> Option<&'static str> {
    const LOGIN_OPTIONS: [&str; 10] = [
        "command=",
        "from=",
        "environment=",
        "permitopen=",
        "restrict",
        "no-pty",
        "no-port-forwarding",
        "no-agent-forwarding",
        "no-x11-forwarding",
        "expiry-time=",
    ];
    if line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY") {
        return Some(
            "this is a private key: never hand out a private key; give the signers' public keys",
        );
    }
    if line.starts_with("-----BEGIN PGP") {
        return Some("this is an OpenPGP key: pass it with --openpgp-keyring");
    }
    let first = tokens.first().map(String::as_str).unwrap_or_default();
    if is_key_type(first) {
        return Some(
            "this is a bare public key (the content of a .pub file), without the signer's principal in front",
        );
    }
    let lower = first.to_ascii_lowercase();
    if LOGIN_OPTIONS.iter().any(|o| lower.starts_with(o)) {
        return Some(
            "this is an authorized_keys line (SSH login options), not an allowed_signers line",
        );
    }
    None
}

fn is_key_type(tok: &str) -> bool {
    tok.starts_with("ssh-")
        || tok.starts_with("ecdsa-")
        || tok.starts_with("sk-")
        || tok.starts_with("rsa-sha2-")
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches('"').to_string()
}

/// Splits on whitespace outside double quotes.
fn split_respecting_quotes(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits `a,b="x,y",c` on commas outside quotes.
fn split_options(tok: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in tok.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// `YYYYMMDD[HHMM[SS]][Z]` → Unix seconds (local time is taken as UTC here; use `Z`).
pub fn parse_ssh_time(s: &str) -> Option<i64> {
    let s = s
        .strip_suffix('Z')
        .or_else(|| s.strip_suffix('z'))
        .unwrap_or(s);
    if !s.bytes().all(|c| c.is_ascii_digit()) || !matches!(s.len(), 8 | 12 | 14) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, m, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (hh, mm) = if s.len() >= 12 {
        (n(8..10)?, n(10..12)?)
    } else {
        (0, 0)
    };
    let ss = if s.len() == 14 { n(12..14)? } else { 0 };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    Some(kars_contract::time::days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// Reads every certificate of an armored OpenPGP keyring (`gpg --export --armor`), one signer
/// per certificate, named after its first user id's e-mail.
pub fn parse_openpgp_keyring(
    source_name: &str,
    text: &str,
) -> Result<Vec<SignerKey>, KeySourceError> {
    let err = |message: String| KeySourceError {
        source_name: source_name.to_string(),
        line: 0,
        message,
    };
    const BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";
    // A keyring file may hold several armored blocks one after another (`cat a.asc b.asc`);
    // each block may hold several certificates (`gpg --export --armor a b`).
    let blocks: Vec<&str> = text
        .match_indices(BEGIN)
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect::<Vec<_>>()
        .windows(2)
        .map(|w| &text[w[0]..w[1]])
        .collect();
    let mut certs = Vec::new();
    for block in blocks {
        let (keys, _) = SignedPublicKey::from_armor_many(block.as_bytes())
            .map_err(|e| err(format!("not an armored OpenPGP keyring: {e}")))?;
        for key in keys {
            certs.push(key.map_err(|e| err(format!("cannot parse a certificate: {e}")))?);
        }
    }
    let mut out = Vec::new();
    for key in certs {
        let material = KeyMaterial::OpenPgp(Box::new(key));
        let emails = material.openpgp_emails();
        let signer = emails
            .first()
            .cloned()
            .unwrap_or_else(|| material.fingerprint());
        out.push(SignerKey {
            signer,
            principals: emails,
            origin: format!("{source_name} ({})", material.fingerprint()),
            key: material,
            namespaces: None,
            valid_after: None,
            valid_before: None,
            class: SignerClass::Person,
        });
    }
    if out.is_empty() {
        return Err(err("no OpenPGP certificate found".into()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm0bUb5tR3bEKB1v2Q5tYbF1W2T0jnq1m7m0rQy6p7e";

    #[test]
    fn allowed_signers_lines() {
        let text = format!(
            "# comment\n\nalice@example.com,*@ops.example.com namespaces=\"git,file\",valid-after=\"20260101\" {KEY} laptop\nbob@example.com {KEY}\n"
        );
        let keys = parse_allowed_signers("allowed", &text).expect("parse");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].signer, "alice@example.com");
        assert_eq!(
            keys[0].namespaces.as_deref(),
            Some(&["git".to_string(), "file".to_string()][..])
        );
        assert_eq!(
            keys[0].valid_after,
            Some(kars_contract::time::days_from_civil(2026, 1, 1) * 86_400)
        );
        assert!(keys[0].matches_identity("eve@ops.example.com"));
        assert!(!keys[0].matches_identity("eve@example.com"));
        assert_eq!(keys[1].origin, "allowed:4");
    }

    #[test]
    fn allowed_signers_errors_name_the_line() {
        let e = parse_allowed_signers("f", &format!("a@b cert-authority {KEY}\n")).expect_err("ca");
        assert!(e.to_string().starts_with("f:1: cert-authority"), "{e}");
        let e = parse_allowed_signers("f", "a@b ssh-ed25519 !!!\n").expect_err("bad key");
        assert!(e.to_string().starts_with("f:1:"), "{e}");
        let e = parse_allowed_signers("f", &format!("a@b frobnicate {KEY}\n")).expect_err("option");
        assert!(e.to_string().contains("unknown option"), "{e}");
    }

    #[test]
    fn familiar_mistakes_are_named_with_the_expected_form() {
        let cases = [
            (format!("{KEY}\n"), "bare public key"),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk=\n".to_string(),
                "private key",
            ),
            (format!("no-pty,command=\"x\" {KEY}\n"), "authorized_keys"),
            (
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\n".to_string(),
                "--openpgp-keyring",
            ),
        ];
        for (text, named) in cases {
            let e = parse_allowed_signers("f", &text).expect_err(named);
            let m = e.to_string();
            assert!(m.starts_with("f:1: "), "{m}");
            assert!(m.contains(named), "{m}");
            assert!(m.contains("namespaces=\"git\""), "{m}");
        }
    }

    #[test]
    fn negated_principals_win() {
        let keys =
            parse_allowed_signers("f", &format!("*@example.com,!mallory@example.com {KEY}\n"))
                .expect("parse");
        assert!(keys[0].matches_identity("alice@example.com"));
        assert!(!keys[0].matches_identity("mallory@example.com"));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", "x"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(wildcard_match("*@x.org", "me@x.org"));
        assert!(!wildcard_match("*@x.org", "me@x.org.evil"));
    }

    #[test]
    fn user_id_emails() {
        assert_eq!(
            email_of_user_id("Alice (work) <Alice@Example.com>").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(email_of_user_id("no email"), None);
    }
}
