//! Commit and tag signature verification against real `git`, `ssh-keygen` and `gpg`: a corpus
//! of good and bad commits on which our verdict must agree with `git verify-commit`, and the
//! trust-policy behaviours git has no notion of (rotation, rollback, k-of-n, forge keys,
//! identity binding).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use kars_e2e::git::{Keys, Repo, Signing, run};
use kars_gitops_agent::verify::range::verify_tag;
use kars_gitops_agent::verify::{self, RangeVerdict, TrustPolicy, Verifier};
use libtest_mimic::Trial;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "verify::agrees_with_git_verify_commit_on_a_corpus",
            agrees_with_git_on_corpus,
        ),
        trial("verify::signed_tags", signed_tags),
        trial("verify::signer_list_rotation", signer_list_rotation),
        trial(
            "verify::rollback_and_force_push_are_refused_unless_overridden",
            rollback,
        ),
        trial("verify::k_of_n_rules_with_approval_tags", k_of_n),
        trial("verify::forge_key_signs_only_verified_merges", forge_merges),
        trial("verify::identity_binding", identity_binding),
    ]
}

fn oid(hex: &str) -> Result<gix::ObjectId> {
    gix::ObjectId::from_hex(hex.trim().as_bytes()).with_context(|| format!("bad object id {hex}"))
}

/// Our verdict on `since..head`.
fn ours(
    repo: &Path,
    policy: &TrustPolicy,
    since: Option<&str>,
    head: &str,
) -> Result<RangeVerdict> {
    let r = gix::open(repo)?;
    let since = since.map(oid).transpose()?;
    Ok(Verifier::new(&r, policy, verify::unix_now()).verify_range(since, oid(head)?)?)
}

/// The verdict on one commit (its parent as the last applied one): `Ok` or the reason label.
fn one(repo: &Path, policy: &TrustPolicy, commit: &str) -> Result<Result<(), String>> {
    let parent = run(std::process::Command::new("git")
        .current_dir(repo)
        .args(["rev-parse", &format!("{commit}^")]))
    .ok()
    .map(|s| s.trim().to_string());
    let v = ours(repo, policy, parent.as_deref(), commit)?;
    let c = v
        .commits
        .iter()
        .find(|c| c.id == commit)
        .context("commit not in verdict")?;
    Ok(match &c.refusal {
        None => Ok(()),
        Some(r) => Err(r.reason().as_str().to_string()),
    })
}

struct Fixture {
    _dir: tempfile::TempDir,
    keys: Keys,
    repo: Repo,
}

fn fixture() -> Result<Fixture> {
    let dir = tempfile::tempdir()?;
    let keys = Keys::new(dir.path())?;
    let repo = Repo::init(&dir.path().join("repo"), &keys)?;
    Ok(Fixture {
        _dir: dir,
        keys,
        repo,
    })
}

fn trust_policy(dir: &Path, yaml: &str) -> Result<TrustPolicy> {
    let path = dir.join("trust.yaml");
    std::fs::write(&path, yaml)?;
    verify::load_policy(Some(&path), None, None).map_err(|e| anyhow::anyhow!("{e}"))
}

fn signer_yaml(name: &str, email: &str, ssh_pub: &str) -> String {
    format!("    - name: {name}\n      emails: [\"{email}\"]\n      sshKeys: [\"{ssh_pub}\"]\n")
}

fn agrees_with_git_on_corpus() -> Result<()> {
    let f = fixture()?;
    let (keys, repo) = (&f.keys, &f.repo);
    let ed = keys.ssh("ed", "ed25519", "ed@x.org")?;
    let ec = keys.ssh("ec", "ecdsa", "ec@x.org")?;
    let rsa = keys.ssh("rsa", "rsa", "rsa@x.org")?;
    let mallory = keys.ssh("mallory", "ed25519", "mallory@x.org")?;
    let allowed = keys.allowed_signers(
        "allowed_signers",
        &[
            ("ed@x.org", &ed, ""),
            ("ec@x.org", &ec, ""),
            ("rsa@x.org", &rsa, ""),
        ],
    )?;
    let gina = keys.gpg_key("Gina <gina@x.org>", "ed25519", "0", None)?;
    let rita = keys.gpg_key("Rita <rita@x.org>", "rsa3072", "0", None)?;
    let old = keys.gpg_key("Old <old@x.org>", "ed25519", "1d", Some("20200101T000000"))?;
    let revoked = keys.gpg_key("Rev <rev@x.org>", "ed25519", "0", None)?;
    let unknown = keys.gpg_key("Unk <unk@x.org>", "ed25519", "0", None)?;
    let old_gpg = keys.gpg_program_with_time("20200101T120000")?;

    let mut cases: Vec<(String, String, &str)> = Vec::new(); // (label, commit, expected reason or "ok")
    let mut n = 0;
    let mut commit = |email: &str, signing: Signing| -> Result<String> {
        n += 1;
        repo.write(&format!("agents/a/f{n}.yaml"), &format!("n: {n}\n"))?;
        repo.commit(&format!("change {n}"), email, &signing)
    };
    let c1 = commit("ed@x.org", Signing::Ssh(ed.clone()))?;
    cases.push(("ssh ed25519".into(), c1.clone(), "ok"));
    cases.push((
        "ssh ecdsa-p256".into(),
        commit("ec@x.org", Signing::Ssh(ec.clone()))?,
        "ok",
    ));
    cases.push((
        "ssh rsa-3072".into(),
        commit("rsa@x.org", Signing::Ssh(rsa.clone()))?,
        "ok",
    ));
    cases.push((
        "openpgp ed25519".into(),
        commit("gina@x.org", Signing::Gpg(gina.clone(), None))?,
        "ok",
    ));
    cases.push((
        "openpgp rsa3072".into(),
        commit("rita@x.org", Signing::Gpg(rita.clone(), None))?,
        "ok",
    ));
    cases.push((
        "ssh key of another signer".into(),
        commit("mallory@x.org", Signing::Ssh(mallory.clone()))?,
        "UnknownSigner",
    ));
    cases.push((
        "expired openpgp key".into(),
        commit("old@x.org", Signing::Gpg(old.clone(), Some(old_gpg)))?,
        "KeyExpired",
    ));
    cases.push((
        "revoked openpgp key".into(),
        commit("rev@x.org", Signing::Gpg(revoked.clone(), None))?,
        "KeyRevoked",
    ));
    cases.push((
        "unknown openpgp key".into(),
        commit("unk@x.org", Signing::Gpg(unknown.clone(), None))?,
        "UnknownSigner",
    ));
    cases.push((
        "unsigned".into(),
        commit("ed@x.org", Signing::None)?,
        "Unsigned",
    ));
    keys.gpg_revoke(&revoked)?;
    keys.gpg_delete(&unknown)?;
    // Unsigned merge on a signed branch.
    repo.git(&["checkout", "-q", "-b", "side", &c1])?;
    repo.write("agents/side.yaml", "side: 1\n")?;
    let side = repo.commit("side work", "ed@x.org", &Signing::Ssh(ed.clone()))?;
    cases.push(("signed commit on a side branch".into(), side.clone(), "ok"));
    repo.git(&["checkout", "-q", "main"])?;
    repo.git(&[
        "-c",
        "user.email=ed@x.org",
        "-c",
        "user.name=Ed",
        "merge",
        "-q",
        "--no-ff",
        "--no-gpg-sign",
        "-m",
        "merge side",
        "side",
    ])?;
    let merge = repo.git(&["rev-parse", "HEAD"])?.trim().to_string();
    cases.push((
        "unsigned merge of a signed branch".into(),
        merge,
        "Unsigned",
    ));

    // Tampered objects, written next to the real ones.
    let raw1 = repo.cat_commit(&c1)?;
    let raw2 = repo.cat_commit(&cases[1].1)?;
    let tampered_msg =
        repo.write_commit(&raw1.replace("change 1", "change 1 (approved by nobody)"))?;
    cases.push(("tampered message".into(), tampered_msg, "BadSignature"));
    let tree2 = raw2.lines().next().unwrap_or_default().to_string();
    let tree1 = raw1.lines().next().unwrap_or_default().to_string();
    let tampered_tree = repo.write_commit(&raw1.replacen(&tree1, &tree2, 1))?;
    cases.push(("tampered tree".into(), tampered_tree, "BadSignature"));
    let sig1 = gpgsig_block(&raw1)?;
    let moved = repo.write_commit(&replace_gpgsig(&raw2, &sig1)?)?;
    cases.push((
        "signature moved to another commit".into(),
        moved,
        "BadSignature",
    ));
    // An SSH signature made for namespace "file" over the same payload.
    let payload = strip_gpgsig(&raw1)?;
    let payload_file = f._dir.path().join("payload");
    std::fs::write(&payload_file, &payload)?;
    run(std::process::Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", "file", "-f"])
        .arg(&ed)
        .arg(&payload_file))?;
    let file_sig = std::fs::read_to_string(payload_file.with_extension("sig"))?;
    let wrong_ns = repo.write_commit(&replace_gpgsig(&raw1, &file_sig)?)?;
    cases.push((
        "ssh signature with namespace \"file\"".into(),
        wrong_ns,
        "WrongNamespace",
    ));
    let garbage = repo.write_commit(&replace_gpgsig(
        &raw1,
        "-----BEGIN SSH SIGNATURE-----\nAAAA!!!!\n-----END SSH SIGNATURE-----\n",
    )?)?;
    cases.push((
        "malformed ssh signature block".into(),
        garbage,
        "MalformedSignature",
    ));

    let keyring = keys.gpg_keyring("keyring.asc", &[&gina, &rita, &old, &revoked])?;
    let policy = verify::load_policy(None, Some(&allowed), Some(&keyring))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let allowed_cfg = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
    let mut problems = Vec::new();
    for (label, commit, expected) in &cases {
        let verdict = one(&repo.path, &policy, commit)?;
        let git_ok = repo.git_ok(&["-c", &allowed_cfg, "verify-commit", commit]);
        let ours_label = match &verdict {
            Ok(()) => "ok".to_string(),
            Err(l) => l.clone(),
        };
        if ours_label != *expected {
            problems.push(format!(
                "{label}: expected {expected}, we said {ours_label}"
            ));
        }
        if verdict.is_ok() != git_ok {
            problems.push(format!(
                "{label}: we said {ours_label} but git verify-commit says {}",
                if git_ok { "good" } else { "bad" }
            ));
        }
    }
    ensure!(
        problems.is_empty(),
        "{} of {} corpus cases failed:\n{}",
        problems.len(),
        cases.len(),
        problems.join("\n")
    );
    Ok(())
}

fn gpgsig_block(raw: &str) -> Result<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in raw.split_inclusive('\n') {
        if let Some(rest) = line.strip_prefix("gpgsig ") {
            inside = true;
            out.push_str(rest);
        } else if inside && line.starts_with(' ') {
            out.push_str(&line[1..]);
        } else if inside {
            break;
        }
    }
    ensure!(!out.is_empty(), "no gpgsig header");
    Ok(out)
}

fn strip_gpgsig(raw: &str) -> Result<String> {
    let mut out = String::new();
    let mut inside = false;
    for line in raw.split_inclusive('\n') {
        if line.starts_with("gpgsig ") {
            inside = true;
        } else if inside && line.starts_with(' ') {
        } else {
            inside = false;
            out.push_str(line);
        }
    }
    Ok(out)
}

/// Puts `sig` as the gpgsig header of `raw` (replacing any), right after the committer line.
fn replace_gpgsig(raw: &str, sig: &str) -> Result<String> {
    let stripped = strip_gpgsig(raw)?;
    let header: String = sig
        .trim_end_matches('\n')
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 0 {
                format!("gpgsig {l}\n")
            } else {
                format!(" {l}\n")
            }
        })
        .collect();
    let idx = stripped.find("\ncommitter ").context("no committer line")?;
    let end = stripped[idx + 1..]
        .find('\n')
        .map(|e| idx + 1 + e + 1)
        .context("committer line end")?;
    Ok(format!("{}{header}{}", &stripped[..end], &stripped[end..]))
}

fn signed_tags() -> Result<()> {
    let f = fixture()?;
    let ed = f.keys.ssh("ed", "ed25519", "ed@x.org")?;
    let allowed = f
        .keys
        .allowed_signers("allowed", &[("ed@x.org", &ed, "")])?;
    f.repo.write("kars.yaml", "x: 1\n")?;
    let c = f
        .repo
        .commit("one", "ed@x.org", &Signing::Ssh(ed.clone()))?;
    f.repo
        .tag("v1", &c, "ed@x.org", &Signing::Ssh(ed.clone()))?;
    f.repo.tag("v1-unsigned", &c, "ed@x.org", &Signing::None)?;
    let policy =
        verify::load_policy(None, Some(&allowed), None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let r = gix::open(&f.repo.path)?;
    let tag = |name: &str| -> Result<gix::ObjectId> {
        Ok(r.find_reference(&format!("refs/tags/{name}"))?
            .target()
            .id()
            .to_owned())
    };
    let good = verify_tag(&r, &policy, tag("v1")?, verify::unix_now())?;
    ensure!(good.is_ok(), "signed tag refused: {good:?}");
    let cfg = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
    ensure!(
        f.repo.git_ok(&["-c", &cfg, "verify-tag", "v1"]),
        "git verify-tag disagrees on v1"
    );
    let bad = verify_tag(&r, &policy, tag("v1-unsigned")?, verify::unix_now())?;
    ensure!(
        bad.as_ref().err().map(|e| e.reason().as_str()) == Some("Unsigned"),
        "unsigned tag: {bad:?}"
    );
    ensure!(
        !f.repo.git_ok(&["-c", &cfg, "verify-tag", "v1-unsigned"]),
        "git verify-tag accepted an unsigned tag"
    );
    Ok(())
}

fn signer_list_rotation() -> Result<()> {
    let f = fixture()?;
    let (keys, repo) = (&f.keys, &f.repo);
    let root = keys.ssh("root", "ed25519", "root@x.org")?;
    let dave = keys.ssh("dave", "ed25519", "dave@x.org")?;
    let erin = keys.ssh("erin", "ed25519", "erin@x.org")?;
    let policy = trust_policy(
        f._dir.path(),
        &format!(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: TrustPolicy\nspec:\n  signers:\n{}  repositorySigners: {{path: .kars/signers.yaml, minSigners: 1}}\n",
            signer_yaml("root", "root@x.org", &keys.ssh_public(&root)?)
        ),
    )?;
    let list = |entries: &[(&str, &str, &PathBuf)]| -> Result<String> {
        let mut s = "apiVersion: gitops.kars.io/v1alpha1\nkind: SignerList\nsigners:\n".to_string();
        for (name, email, key) in entries {
            s.push_str(&format!(
                "  - name: {name}\n    emails: [\"{email}\"]\n    sshKeys: [\"{}\"]\n",
                keys.ssh_public(key)?
            ));
        }
        Ok(s)
    };
    // The root signer adds dave.
    repo.write(
        ".kars/signers.yaml",
        &list(&[("dave", "dave@x.org", &dave)])?,
    )?;
    let c1 = repo.commit("add dave", "root@x.org", &Signing::Ssh(root.clone()))?;
    ensure!(
        one(&repo.path, &policy, &c1)?.is_ok(),
        "root could not add dave"
    );
    // Dave works from the next commit on.
    repo.write("agents/a.yaml", "a: 1\n")?;
    let c2 = repo.commit("dave's change", "dave@x.org", &Signing::Ssh(dave.clone()))?;
    ensure!(
        one(&repo.path, &policy, &c2)?.is_ok(),
        "dave's key does not work after being added"
    );
    // Erin adds herself: refused, she is not trusted before her own commit.
    repo.write(
        ".kars/signers.yaml",
        &list(&[("dave", "dave@x.org", &dave), ("erin", "erin@x.org", &erin)])?,
    )?;
    let self_added = repo.commit("erin adds erin", "erin@x.org", &Signing::Ssh(erin.clone()))?;
    let v = one(&repo.path, &policy, &self_added)?;
    ensure!(
        v == Err("UnknownSigner".to_string()),
        "a signer-list change signed only by the new key: {v:?}"
    );
    repo.git(&["reset", "-q", "--hard", &c2])?;
    // Dave (trusted) rotates himself out and erin in.
    repo.write(
        ".kars/signers.yaml",
        &list(&[("erin", "erin@x.org", &erin)])?,
    )?;
    let c3 = repo.commit(
        "rotate dave -> erin",
        "dave@x.org",
        &Signing::Ssh(dave.clone()),
    )?;
    ensure!(
        one(&repo.path, &policy, &c3)?.is_ok(),
        "rotation signed by a trusted key refused"
    );
    repo.write("agents/b.yaml", "b: 1\n")?;
    let by_dave = repo.commit(
        "dave after removal",
        "dave@x.org",
        &Signing::Ssh(dave.clone()),
    )?;
    ensure!(
        one(&repo.path, &policy, &by_dave)? == Err("UnknownSigner".into()),
        "removed key still works"
    );
    repo.git(&["reset", "-q", "--hard", &c3])?;
    repo.write("agents/b.yaml", "b: 2\n")?;
    let by_erin = repo.commit(
        "erin after rotation",
        "erin@x.org",
        &Signing::Ssh(erin.clone()),
    )?;
    ensure!(
        one(&repo.path, &policy, &by_erin)?.is_ok(),
        "new key does not work after rotation"
    );
    // The whole history verifies in one range too.
    let v = ours(&repo.path, &policy, None, &by_erin)?;
    ensure!(v.ok(), "full range: {:?}", v.first_problem());
    Ok(())
}

fn rollback() -> Result<()> {
    let f = fixture()?;
    let (keys, repo) = (&f.keys, &f.repo);
    let alice = keys.ssh("alice", "ed25519", "alice@x.org")?;
    let bob = keys.ssh("bob", "ed25519", "bob@x.org")?;
    let policy = trust_policy(
        f._dir.path(),
        &format!(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: TrustPolicy\nspec:\n  signers:\n{}{}  rollback: {{minSigners: 2}}\n",
            signer_yaml("alice", "alice@x.org", &keys.ssh_public(&alice)?),
            signer_yaml("bob", "bob@x.org", &keys.ssh_public(&bob)?)
        ),
    )?;
    repo.write("agents/a.yaml", "v: 1\n")?;
    let c1 = repo.commit("v1", "alice@x.org", &Signing::Ssh(alice.clone()))?;
    repo.write("agents/a.yaml", "v: 2\n")?;
    let c2 = repo.commit("v2", "alice@x.org", &Signing::Ssh(alice.clone()))?;
    // Force-push back to the older signed commit.
    let v = ours(&repo.path, &policy, Some(&c2), &c1)?;
    ensure!(
        v.history.as_ref().map(|h| h.reason().as_str()) == Some("Rollback"),
        "force-push to an older signed commit was not refused: {v:?}"
    );
    ensure!(
        v.first_problem()
            .is_some_and(|p| p.contains("Kars-Allow-Rollback")),
        "the refusal should say how to override"
    );
    // A diverging signed history is a force-push too.
    repo.git(&["checkout", "-q", "-b", "other", &c1])?;
    repo.write("agents/a.yaml", "v: other\n")?;
    let other = repo.commit("other", "alice@x.org", &Signing::Ssh(alice.clone()))?;
    ensure!(
        ours(&repo.path, &policy, Some(&c2), &other)?
            .history
            .is_some(),
        "diverging history accepted"
    );
    // An override signed by one signer is not enough; with a second signer's approval tag it is.
    repo.git(&["checkout", "-q", "-b", "rollback", &c1])?;
    repo.write("agents/a.yaml", "v: 1\n# rolled back\n")?;
    let r = repo.commit(
        &format!("Roll back v2\n\nKars-Allow-Rollback: {c2}"),
        "alice@x.org",
        &Signing::Ssh(alice.clone()),
    )?;
    let v = ours(&repo.path, &policy, Some(&c2), &r)?;
    ensure!(
        v.history.as_ref().map(|h| h.reason().as_str()) == Some("RollbackOverrideUnderSigned"),
        "a rollback override with one signer: {v:?}"
    );
    repo.tag(
        &format!("approvals/{}-bob", &r[..12]),
        &r,
        "bob@x.org",
        &Signing::Ssh(bob.clone()),
    )?;
    let v = ours(&repo.path, &policy, Some(&c2), &r)?;
    ensure!(
        v.ok() && v.rollback_override,
        "override signed by two signers refused: {:?}",
        v.first_problem()
    );
    // An override naming another commit does not count.
    let wrong = repo.commit(
        "Roll back\n\nKars-Allow-Rollback: 0000000000000000000000000000000000000000",
        "alice@x.org",
        &Signing::Ssh(alice.clone()),
    )?;
    ensure!(
        ours(&repo.path, &policy, Some(&c2), &wrong)?
            .history
            .as_ref()
            .map(|h| h.reason().as_str())
            == Some("Rollback"),
        "an override for another commit was honoured"
    );
    // The last applied commit vanished (its history was rewritten and collected): the agent
    // and `kars verify` decide the same way, through the same rule — a rollback.
    let gone = "0123456789abcdef0123456789abcdef01234567";
    let r = gix::open(&repo.path)?;
    let since = verify::resolve_since(&r, gone)?;
    ensure!(
        since == verify::Since::Vanished(gone.to_string()),
        "{since:?}"
    );
    let v = Verifier::new(&r, &policy, verify::unix_now()).verify_since(Some(&since), oid(&c2)?)?;
    ensure!(
        v.history.as_ref().map(|h| h.reason().as_str()) == Some("Rollback"),
        "a vanished last applied commit: {v:?}"
    );
    let kars = |since: &str| -> Result<(i32, String)> {
        let out = kars_e2e::run_to_end(
            kars_e2e::kars_command()?
                .arg("verify")
                .arg(&repo.path)
                .args(["--rev", &c2, "--since", since, "--trust"])
                .arg(f._dir.path().join("trust.yaml")),
        )?;
        Ok((out.code, out.combined()))
    };
    let (code, out) = kars(gone)?;
    ensure!(
        code == 1 && out.contains("history FAIL Rollback"),
        "kars verify --since <vanished>: exit {code}: {out}"
    );
    let (code, out) = kars("no-such-branch")?;
    ensure!(
        code == 2 && out.contains("not found"),
        "a typo in --since is a usage error: exit {code}: {out}"
    );
    Ok(())
}

fn k_of_n() -> Result<()> {
    let f = fixture()?;
    let (keys, repo) = (&f.keys, &f.repo);
    let alice = keys.ssh("alice", "ed25519", "alice@x.org")?;
    let bob = keys.ssh("bob", "ed25519", "bob@x.org")?;
    let carol = keys.ssh("carol", "ed25519", "carol@x.org")?;
    let policy = trust_policy(
        f._dir.path(),
        &format!(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: TrustPolicy\nspec:\n  signers:\n{}{}{}  rules:\n    - paths: [\"policies/**\", \"egress/\"]\n      signers: [alice, bob]\n      minSigners: 2\n",
            signer_yaml("alice", "alice@x.org", &keys.ssh_public(&alice)?),
            signer_yaml("bob", "bob@x.org", &keys.ssh_public(&bob)?),
            signer_yaml("carol", "carol@x.org", &keys.ssh_public(&carol)?)
        ),
    )?;
    repo.write("agents/a.yaml", "a: 1\n")?;
    let c1 = repo.commit("agents only", "carol@x.org", &Signing::Ssh(carol.clone()))?;
    ensure!(
        one(&repo.path, &policy, &c1)?.is_ok(),
        "a commit outside the rule's paths needs one signer"
    );
    repo.write("policies/p.yaml", "p: 1\n")?;
    let c2 = repo.commit("policy change", "alice@x.org", &Signing::Ssh(alice.clone()))?;
    ensure!(
        one(&repo.path, &policy, &c2)? == Err("NotEnoughSigners".into()),
        "one signer passed a 2-of-n rule"
    );
    // Carol's approval does not count for this rule; bob's does.
    repo.tag(
        &format!("approvals/{}-carol", &c2[..12]),
        &c2,
        "carol@x.org",
        &Signing::Ssh(carol.clone()),
    )?;
    ensure!(
        one(&repo.path, &policy, &c2)? == Err("NotEnoughSigners".into()),
        "a signer outside the rule counted"
    );
    // An approval tag signed by bob's key but claiming to be carol is not bob.
    repo.tag(
        &format!("approvals/{}-fake", &c2[..12]),
        &c2,
        "carol@x.org",
        &Signing::Ssh(bob.clone()),
    )?;
    ensure!(
        one(&repo.path, &policy, &c2)? == Err("NotEnoughSigners".into()),
        "a tag with a mismatched tagger counted"
    );
    repo.tag(
        &format!("approvals/{}-bob", &c2[..12]),
        &c2,
        "bob@x.org",
        &Signing::Ssh(bob.clone()),
    )?;
    ensure!(
        one(&repo.path, &policy, &c2)?.is_ok(),
        "2 distinct signers did not satisfy the rule"
    );
    // The same signer twice is still one signer.
    repo.write("egress/e.yaml", "e: 1\n")?;
    let c3 = repo.commit("egress change", "alice@x.org", &Signing::Ssh(alice.clone()))?;
    repo.tag(
        &format!("approvals/{}-alice-again", &c3[..12]),
        &c3,
        "alice@x.org",
        &Signing::Ssh(alice.clone()),
    )?;
    ensure!(
        one(&repo.path, &policy, &c3)? == Err("NotEnoughSigners".into()),
        "the same signer counted twice"
    );
    Ok(())
}

fn forge_merges() -> Result<()> {
    let f = fixture()?;
    let (keys, repo) = (&f.keys, &f.repo);
    let alice = keys.ssh("alice", "ed25519", "alice@x.org")?;
    let forge = keys.ssh("forge", "ed25519", "noreply@forge.example")?;
    let policy = trust_policy(
        f._dir.path(),
        &format!(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: TrustPolicy\nspec:\n  signers:\n{}  forgeKeys:\n{}",
            signer_yaml("alice", "alice@x.org", &keys.ssh_public(&alice)?),
            signer_yaml(
                "web-flow",
                "noreply@forge.example",
                &keys.ssh_public(&forge)?
            )
        ),
    )?;
    repo.write("agents/a.yaml", "a: 1\n")?;
    let base = repo.commit("base", "alice@x.org", &Signing::Ssh(alice.clone()))?;
    let merge_with = |branch: &str, side_signing: Signing| -> Result<String> {
        repo.git(&["checkout", "-q", "-b", branch, &base])?;
        repo.write(&format!("agents/{branch}.yaml"), "x: 1\n")?;
        repo.commit(&format!("{branch} work"), "alice@x.org", &side_signing)?;
        repo.git(&["checkout", "-q", "main"])?;
        repo.git(&["reset", "-q", "--hard", &base])?;
        repo.git(&[
            "-c",
            "user.email=noreply@forge.example",
            "-c",
            "user.name=Forge",
            "-c",
            "gpg.format=ssh",
            "-c",
            &format!("user.signingkey={}", forge.display()),
            "merge",
            "-q",
            "--no-ff",
            "-S",
            "-m",
            &format!("Merge {branch}"),
            branch,
        ])?;
        Ok(repo.git(&["rev-parse", "HEAD"])?.trim().to_string())
    };
    let good = merge_with("good", Signing::Ssh(alice.clone()))?;
    let v = ours(&repo.path, &policy, Some(&base), &good)?;
    ensure!(
        v.ok(),
        "forge merge of verified commits refused: {:?}",
        v.first_problem()
    );
    let bad = merge_with("bad", Signing::None)?;
    let v = ours(&repo.path, &policy, Some(&base), &bad)?;
    let head = v
        .commits
        .iter()
        .find(|c| c.id == bad)
        .context("merge verdict")?;
    ensure!(
        head.refusal.as_ref().map(|r| r.reason().as_str()) == Some("ForgeMergeUnverified"),
        "forge merge of an unsigned commit: {:?}",
        head.refusal
    );
    // The forge key alone on an ordinary commit.
    repo.git(&["reset", "-q", "--hard", &base])?;
    repo.write("agents/web-edit.yaml", "w: 1\n")?;
    let web = repo.commit(
        "edit in the web UI",
        "noreply@forge.example",
        &Signing::Ssh(forge.clone()),
    )?;
    ensure!(
        one(&repo.path, &policy, &web)? == Err("ForgeKeyNotMerge".into()),
        "forge key signed a non-merge"
    );
    Ok(())
}

fn identity_binding() -> Result<()> {
    let f = fixture()?;
    let alice = f.keys.ssh("alice", "ed25519", "alice@x.org")?;
    let allowed = f
        .keys
        .allowed_signers("allowed", &[("alice@x.org", &alice, "")])?;
    let policy =
        verify::load_policy(None, Some(&allowed), None).map_err(|e| anyhow::anyhow!("{e}"))?;
    f.repo.write("a.yaml", "a: 1\n")?;
    let c = f.repo.commit(
        "committed as bob, signed by alice",
        "bob@x.org",
        &Signing::Ssh(alice.clone()),
    )?;
    ensure!(
        one(&f.repo.path, &policy, &c)? == Err("IdentityMismatch".into()),
        "identity binding not enforced"
    );
    // valid-before in the past: the key is outside its validity at the commit date.
    let expired = f.keys.allowed_signers(
        "allowed-expired",
        &[("alice@x.org", &alice, "valid-before=\"20200101\"")],
    )?;
    let policy =
        verify::load_policy(None, Some(&expired), None).map_err(|e| anyhow::anyhow!("{e}"))?;
    f.repo.write("a.yaml", "a: 2\n")?;
    let c = f
        .repo
        .commit("late", "alice@x.org", &Signing::Ssh(alice.clone()))?;
    ensure!(
        one(&f.repo.path, &policy, &c)? == Err("OutsideValidity".into()),
        "valid-before not enforced"
    );
    let cfg = format!("gpg.ssh.allowedSignersFile={}", expired.display());
    ensure!(
        !f.repo.git_ok(&["-c", &cfg, "verify-commit", &c]),
        "git accepted a key past valid-before"
    );
    // namespaces= without git.
    let file_only = f.keys.allowed_signers(
        "allowed-file",
        &[("alice@x.org", &alice, "namespaces=\"file\"")],
    )?;
    let policy =
        verify::load_policy(None, Some(&file_only), None).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(
        one(&f.repo.path, &policy, &c)? == Err("NamespaceNotAllowed".into()),
        "namespaces= not enforced"
    );
    if f.repo.git_ok(&[
        "-c",
        &format!("gpg.ssh.allowedSignersFile={}", file_only.display()),
        "verify-commit",
        &c,
    ]) {
        bail!("git accepted a key restricted to namespace file");
    }
    Ok(())
}
