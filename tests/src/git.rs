//! Real git repositories signed with real keys (`ssh-keygen`, `gpg`), for tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs a command, failing with its stderr when it exits non-zero; returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A directory of signing keys: SSH keys, a GnuPG home, and the trust files built from them.
pub struct Keys {
    dir: PathBuf,
}

impl Keys {
    /// A new, empty key directory under `dir`.
    pub fn new(dir: &Path) -> Result<Keys> {
        let dir = dir.join("keys");
        std::fs::create_dir_all(dir.join("gnupg"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("gnupg"), std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Keys { dir })
    }

    /// The GnuPG home.
    pub fn gnupg_home(&self) -> PathBuf {
        self.dir.join("gnupg")
    }

    /// Creates an SSH key `name` of type `ed25519`, `ecdsa` or `rsa`; returns the private key path.
    pub fn ssh(&self, name: &str, key_type: &str, email: &str) -> Result<PathBuf> {
        let path = self.dir.join(name);
        if !path.exists() {
            let mut c = Command::new("ssh-keygen");
            c.args(["-q", "-t", key_type, "-N", "", "-C", email, "-f"])
                .arg(&path);
            if key_type == "ecdsa" {
                c.args(["-b", "256"]);
            }
            if key_type == "rsa" {
                c.args(["-b", "3072"]);
            }
            run(&mut c)?;
        }
        Ok(path)
    }

    /// The public key line of an SSH key.
    pub fn ssh_public(&self, private: &Path) -> Result<String> {
        Ok(std::fs::read_to_string(private.with_extension("pub"))?
            .trim()
            .to_string())
    }

    /// Writes an `allowed_signers` file from `(principals, private key path, options)` entries.
    pub fn allowed_signers(&self, file: &str, entries: &[(&str, &Path, &str)]) -> Result<PathBuf> {
        let mut text = String::new();
        for (principals, key, options) in entries {
            let pubkey = self.ssh_public(key)?;
            let opts = if options.is_empty() {
                String::new()
            } else {
                format!("{options} ")
            };
            text.push_str(&format!("{principals} {opts}{pubkey}\n"));
        }
        let path = self.dir.join(file);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.gnupg_home()).args([
            "--batch",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        c
    }

    /// Creates a GnuPG key for `uid` (`Name <email>`) with `algo` (`ed25519`, `rsa3072`) and
    /// expiry (`0` = never, or e.g. `1d`); `faked_time` (`20200101T000000`) backdates it.
    pub fn gpg_key(
        &self,
        uid: &str,
        algo: &str,
        expire: &str,
        faked_time: Option<&str>,
    ) -> Result<String> {
        let mut c = self.gpg();
        if let Some(t) = faked_time {
            c.args(["--faked-system-time", t]);
        }
        run(c.args(["--quick-gen-key", uid, algo, "sign", expire]))?;
        let out = run(self.gpg().args(["--with-colons", "--list-keys", uid]))?;
        let fpr = out
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .map(str::to_string)
            .context("no fingerprint in gpg output")?;
        Ok(fpr)
    }

    /// Revokes a GnuPG key with the revocation certificate gpg stored when creating it.
    pub fn gpg_revoke(&self, fingerprint: &str) -> Result<()> {
        let rev = self
            .gnupg_home()
            .join("openpgp-revocs.d")
            .join(format!("{fingerprint}.rev"));
        let text = std::fs::read_to_string(&rev)?;
        // gpg stores it with a ':' guard before the armor header.
        let fixed = text.replace(
            ":-----BEGIN PGP PUBLIC KEY BLOCK-----",
            "-----BEGIN PGP PUBLIC KEY BLOCK-----",
        );
        let tmp = self.dir.join(format!("{fingerprint}.rev.asc"));
        std::fs::write(&tmp, fixed)?;
        run(self.gpg().arg("--import").arg(&tmp))?;
        Ok(())
    }

    /// Deletes a key (secret and public) from the GnuPG home.
    pub fn gpg_delete(&self, fingerprint: &str) -> Result<()> {
        run(self
            .gpg()
            .args(["--yes", "--delete-secret-and-public-key", fingerprint]))?;
        Ok(())
    }

    /// Exports the given keys as one armored keyring file.
    pub fn gpg_keyring(&self, file: &str, fingerprints: &[&str]) -> Result<PathBuf> {
        let out = run(self.gpg().arg("--armor").arg("--export").args(fingerprints))?;
        let path = self.dir.join(file);
        std::fs::write(&path, out)?;
        Ok(path)
    }

    /// A `gpg` wrapper script that fakes the system time (to sign with an already expired key).
    pub fn gpg_program_with_time(&self, faked_time: &str) -> Result<PathBuf> {
        let path = self.dir.join(format!("gpg-at-{faked_time}.sh"));
        std::fs::write(
            &path,
            format!("#!/bin/sh\nexec gpg --faked-system-time {faked_time} \"$@\"\n"),
        )?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
        }
        Ok(path)
    }
}

/// How a commit is signed.
#[derive(Clone, Debug)]
pub enum Signing {
    /// Not signed.
    None,
    /// SSH key (private key path).
    Ssh(PathBuf),
    /// OpenPGP key (fingerprint), optionally through a custom gpg program.
    Gpg(String, Option<PathBuf>),
}

/// A git repository driven by the real `git`.
pub struct Repo {
    /// Working directory.
    pub path: PathBuf,
    gnupg_home: PathBuf,
}

impl Repo {
    /// `git init -b main` at `path`.
    pub fn init(path: &Path, keys: &Keys) -> Result<Repo> {
        std::fs::create_dir_all(path)?;
        let r = Repo {
            path: path.to_path_buf(),
            gnupg_home: keys.gnupg_home(),
        };
        r.git(&["init", "-q", "-b", "main"])?;
        r.git(&["config", "commit.gpgsign", "false"])?;
        r.git(&["config", "tag.gpgsign", "false"])?;
        Ok(r)
    }

    /// Runs git in the repository.
    pub fn git(&self, args: &[&str]) -> Result<String> {
        run(Command::new("git")
            .current_dir(&self.path)
            .env("GNUPGHOME", &self.gnupg_home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(args))
    }

    /// Runs git and reports only whether it succeeded.
    pub fn git_ok(&self, args: &[&str]) -> bool {
        Command::new("git")
            .current_dir(&self.path)
            .env("GNUPGHOME", &self.gnupg_home)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Writes a file (creating directories).
    pub fn write(&self, rel: &str, body: &str) -> Result<()> {
        let p = self.path.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        std::fs::write(p, body)?;
        Ok(())
    }

    /// Removes a file or directory.
    pub fn remove(&self, rel: &str) -> Result<()> {
        let p = self.path.join(rel);
        if p.is_dir() {
            std::fs::remove_dir_all(p)?
        } else {
            std::fs::remove_file(p)?
        }
        Ok(())
    }

    fn signing_args(signing: &Signing) -> Vec<String> {
        match signing {
            Signing::None => Vec::new(),
            Signing::Ssh(key) => vec![
                "-c".into(),
                "gpg.format=ssh".into(),
                "-c".into(),
                format!("user.signingkey={}", key.display()),
            ],
            Signing::Gpg(fpr, program) => {
                let mut v = vec![
                    "-c".into(),
                    "gpg.format=openpgp".into(),
                    "-c".into(),
                    format!("user.signingkey={fpr}"),
                ];
                if let Some(p) = program {
                    v.push("-c".into());
                    v.push(format!("gpg.program={}", p.display()));
                }
                v
            }
        }
    }

    /// Stages everything and commits as `email`, signed as given; returns the commit id.
    pub fn commit(&self, message: &str, email: &str, signing: &Signing) -> Result<String> {
        self.git(&["add", "-A"])?;
        let mut args: Vec<String> = Self::signing_args(signing);
        let identity = [
            "-c".to_string(),
            format!("user.email={email}"),
            "-c".to_string(),
            "user.name=Test User".to_string(),
        ];
        let mut full: Vec<String> = identity.to_vec();
        full.append(&mut args);
        full.extend([
            "commit".into(),
            "-q".into(),
            "--allow-empty".into(),
            "-m".into(),
            message.into(),
        ]);
        full.push(if matches!(signing, Signing::None) {
            "--no-gpg-sign".into()
        } else {
            "-S".into()
        });
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.git(&refs)?;
        Ok(self.git(&["rev-parse", "HEAD"])?.trim().to_string())
    }

    /// Creates an annotated tag `name` on `target`, signed as given.
    pub fn tag(&self, name: &str, target: &str, email: &str, signing: &Signing) -> Result<()> {
        let mut full: Vec<String> = vec![
            "-c".into(),
            format!("user.email={email}"),
            "-c".into(),
            "user.name=Test User".into(),
        ];
        full.extend(
            Self::signing_args(signing)
                .into_iter()
                .filter(|a| a != "--no-gpg-sign"),
        );
        full.extend([
            "tag".into(),
            "-m".into(),
            format!("approve {target}"),
            name.into(),
            target.into(),
        ]);
        if !matches!(signing, Signing::None) {
            full.push("-s".into());
        } else {
            full.push("-a".into());
        }
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        self.git(&refs)?;
        Ok(())
    }

    /// The raw bytes of a commit object.
    pub fn cat_commit(&self, id: &str) -> Result<String> {
        self.git(&["cat-file", "commit", id])
    }

    /// Writes a raw commit object and returns its id (for tampering tests).
    pub fn write_commit(&self, raw: &str) -> Result<String> {
        let tmp = self.path.join(".git").join("raw-commit");
        std::fs::write(&tmp, raw)?;
        let id = self.git(&[
            "hash-object",
            "-t",
            "commit",
            "-w",
            &tmp.to_string_lossy(),
            "--literally",
        ])?;
        Ok(id.trim().to_string())
    }
}
