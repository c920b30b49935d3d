//! Test certificates made with the real `openssl` CLI: a root CA and leaves it signs (P-256).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Extensions of a TLS server certificate for 127.0.0.1.
pub const SERVER_127: &str = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1\n";

/// Runs `openssl ARGS` in `dir`, failing with its stderr.
pub fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl")?;
    ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A new P-256 private key (SEC1 PEM) at `dir/file`.
fn p256_key(dir: &Path, file: &str) -> Result<()> {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            file,
        ],
    )
}

/// A root CA `<name>.pem` with its key `<name>.key` in `dir`; returns the certificate path.
pub fn root_ca(dir: &Path, name: &str) -> Result<PathBuf> {
    let key = format!("{name}.key");
    let pem = format!("{name}.pem");
    p256_key(dir, &key)?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-sha256",
            "-days",
            "30",
            "-subj",
            "/CN=kars test root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
            "-out",
            &pem,
        ],
    )?;
    Ok(dir.join(pem))
}

/// A leaf `<name>.pem` with its PKCS#8 key `<name>.key`, signed by the CA `<ca>` (made by
/// [`root_ca`] in the same `dir`), with `extensions` (openssl config lines); returns
/// (certificate, key).
pub fn leaf(
    dir: &Path,
    ca: &str,
    name: &str,
    subject: &str,
    extensions: &str,
) -> Result<(PathBuf, PathBuf)> {
    let (cnf, ec, key, csr, pem) = (
        format!("{name}.cnf"),
        format!("{name}.ec"),
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    std::fs::write(dir.join(&cnf), format!("[ext]\n{extensions}"))?;
    p256_key(dir, &ec)?;
    openssl(
        dir,
        &["pkcs8", "-topk8", "-nocrypt", "-in", &ec, "-out", &key],
    )?;
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-days",
            "7",
            "-sha256",
            "-extfile",
            &cnf,
            "-extensions",
            "ext",
            "-out",
            &pem,
        ],
    )?;
    Ok((dir.join(pem), dir.join(key)))
}
