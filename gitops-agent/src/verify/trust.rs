//! The trust policy: who may sign what. Its roots come from outside the repository (a file or
//! a Secret given to the agent; the Helm chart carries it). The repository may add signers
//! through its own signer list (`.kars/signers.yaml`), but only through a commit that enough
//! signers trusted *before* that commit signed; the new list applies from the next commit on.
//!
//! ```yaml
//! apiVersion: gitops.kars.io/v1alpha1
//! kind: TrustPolicy
//! spec:
//!   identityBinding: true            # signer identity must match the committer e-mail
//!   signers:
//!     - name: alice
//!       emails: [alice@example.com]
//!       sshKeys: ["ssh-ed25519 AAAA…"]
//!       openpgpKeys: ["-----BEGIN PGP PUBLIC KEY BLOCK-----…"]
//!   forgeKeys:                       # e.g. GitHub's web-flow key: merges only
//!     - name: github
//!       openpgpKeys: ["…"]
//!   rules:                           # which signers, how many, per path
//!     - paths: ["policies/**", "egress/**"]
//!       signers: [alice, bob, carol]
//!       minSigners: 2
//!   repositorySigners: {path: .kars/signers.yaml, minSigners: 1}
//!   approvalTagPrefix: approvals/    # signed tags that add signatures to a commit
//!   rollback: {minSigners: 2}        # signers needed on an explicit rollback override
//!   sreApprovals:                    # who may approve an SRE action (sre/actions/*.yaml)
//!     approvers: [bob, carol]        # default: the signers the path rules allow there
//!     minApprovers: 1                # distinct approvers, none of them a proposer
//! ```

use serde::Deserialize;

use super::keys::{KeyMaterial, KeySourceError, SignerClass, SignerKey};
use super::signature::parse_openpgp_cert;

/// `apiVersion` of trust files.
pub use kars_contract::GITOPS_API_VERSION as API_VERSION;
/// Default path of the repository's signer list.
pub const DEFAULT_REPO_SIGNERS: &str = ".kars/signers.yaml";

/// A signer entry (trust policy or repository list).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignerSpec {
    /// Unique name; rules refer to it.
    pub name: String,
    /// Identities (e-mail patterns) the signer commits as. Required with identity binding
    /// unless the OpenPGP user ids carry the e-mail.
    #[serde(default)]
    pub emails: Vec<String>,
    /// SSH public keys in OpenSSH format.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// Armored OpenPGP certificates.
    #[serde(default)]
    pub openpgp_keys: Vec<String>,
}

/// A path rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// Glob patterns (`**` any depth, `*` within a path component, `dir/` = everything below).
    pub paths: Vec<String>,
    /// Signer names allowed to count; `*` = every trusted signer.
    #[serde(default = "star")]
    pub signers: Vec<String>,
    /// Distinct signers a commit touching these paths needs.
    #[serde(default = "one")]
    pub min_signers: usize,
}

fn star() -> Vec<String> {
    vec!["*".to_string()]
}
fn one() -> usize {
    1
}

/// `repositorySigners`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RepoSignersSpec {
    /// Path of the list in the repository.
    #[serde(default = "default_repo_signers")]
    pub path: String,
    /// Signers trusted before a commit that must sign a change to the list.
    #[serde(default = "one")]
    pub min_signers: usize,
}

fn default_repo_signers() -> String {
    DEFAULT_REPO_SIGNERS.to_string()
}

/// `rollback`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackSpec {
    /// Distinct signers needed on a rollback override commit.
    #[serde(default = "two")]
    pub min_signers: usize,
}

fn two() -> usize {
    2
}

fn yes() -> bool {
    true
}

/// `spec` of a TrustPolicy.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustPolicySpec {
    /// Require signer identities to match the committer e-mail (default true).
    #[serde(default = "yes")]
    pub identity_binding: bool,
    /// Trusted signers.
    #[serde(default)]
    pub signers: Vec<SignerSpec>,
    /// Forge web-flow keys (merges only).
    #[serde(default)]
    pub forge_keys: Vec<SignerSpec>,
    /// Path rules.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// The repository's own signer list (absent = not read).
    #[serde(default)]
    pub repository_signers: Option<RepoSignersSpec>,
    /// Prefix of approval tags (`refs/tags/<prefix>…`) that co-sign commits.
    #[serde(default = "default_tag_prefix")]
    pub approval_tag_prefix: String,
    /// Rollback override policy.
    #[serde(default)]
    pub rollback: Option<RollbackSpec>,
    /// Who may approve SRE actions.
    #[serde(default)]
    pub sre_approvals: Option<SreApprovalsSpec>,
}

/// `sreApprovals`: who may approve an SRE action and how many must.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SreApprovalsSpec {
    /// Signer names that may approve (`*` = every signer the path rules allow on the action's
    /// file).
    #[serde(default = "star")]
    pub approvers: Vec<String>,
    /// Distinct approvers needed (the approval commit's signer plus signed approval tags on
    /// it), none of whom signed a commit that proposed or changed the action.
    #[serde(default = "one")]
    pub min_approvers: usize,
}

impl Default for SreApprovalsSpec {
    fn default() -> Self {
        SreApprovalsSpec {
            approvers: star(),
            min_approvers: 1,
        }
    }
}

impl SreApprovalsSpec {
    /// True when `name` may approve (the path rules must allow them too).
    pub fn allows(&self, name: &str) -> bool {
        self.approvers.iter().any(|s| s == "*" || s == name)
    }
}

fn default_tag_prefix() -> String {
    "approvals/".to_string()
}

/// A TrustPolicy file.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustPolicyFile {
    /// `gitops.kars.io/v1alpha1`.
    pub api_version: String,
    /// `TrustPolicy`.
    pub kind: String,
    /// Optional metadata (name only).
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// The policy.
    pub spec: TrustPolicySpec,
}

/// A SignerList file (in the repository).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignerListFile {
    /// `gitops.kars.io/v1alpha1`.
    pub api_version: String,
    /// `SignerList`.
    pub kind: String,
    /// Optional metadata.
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
    /// The signers.
    #[serde(default)]
    pub signers: Vec<SignerSpec>,
}

/// A compiled path rule.
#[derive(Clone, Debug)]
pub struct PathRule {
    /// Glob patterns.
    pub paths: Vec<String>,
    /// Allowed signer names (`*` = any).
    pub signers: Vec<String>,
    /// Distinct signers needed.
    pub min_signers: usize,
}

impl PathRule {
    /// True when `path` is matched by one of the patterns.
    pub fn matches(&self, path: &str) -> bool {
        self.paths.iter().any(|p| glob_match(p, path))
    }

    /// True when signer `name` counts for this rule.
    pub fn counts(&self, name: &str) -> bool {
        self.signers.iter().any(|s| s == "*" || s == name)
    }
}

impl TrustPolicy {
    /// True when `signer` may approve the SRE action in file `path`: allowed by
    /// `sreApprovals.approvers` and counted by every path rule that covers the file.
    pub fn may_approve(&self, signer: &str, path: &str) -> bool {
        self.sre_approvals.allows(signer)
            && self
                .rules
                .iter()
                .filter(|r| r.matches(path))
                .all(|r| r.counts(signer))
    }
}

/// Glob match on `/`-separated paths: `**` any run (including `/`), `*` any run within a
/// component, `?` one character, a trailing `/` means "everything below".
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let pattern = if pattern.ends_with('/') {
        format!("{pattern}**")
    } else {
        pattern.to_string()
    };
    fn rec(p: &[u8], t: &[u8]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => match p.get(2) {
                None => true,
                // `**/` matches zero or more whole components.
                Some(b'/') => {
                    rec(&p[3..], t)
                        || t.iter()
                            .enumerate()
                            .any(|(i, c)| *c == b'/' && rec(&p[3..], &t[i + 1..]))
                }
                Some(_) => (0..=t.len()).any(|i| rec(&p[2..], &t[i..])),
            },
            Some(b'*') => (0..=t.len())
                .take_while(|i| *i == 0 || t[i - 1] != b'/')
                .any(|i| rec(&p[1..], &t[i..])),
            Some(b'?') => !t.is_empty() && t[0] != b'/' && rec(&p[1..], &t[1..]),
            Some(c) => t.first() == Some(c) && rec(&p[1..], &t[1..]),
        }
    }
    rec(pattern.as_bytes(), path.as_bytes())
}

/// The compiled trust policy.
#[derive(Clone, Debug)]
pub struct TrustPolicy {
    /// Root keys (persons and forge keys).
    pub roots: Vec<SignerKey>,
    /// Path rules.
    pub rules: Vec<PathRule>,
    /// Identity binding.
    pub identity_binding: bool,
    /// Repository signer list settings.
    pub repo_signers: Option<RepoSignersSpec>,
    /// Approval tag prefix.
    pub approval_tag_prefix: String,
    /// Signers needed on a rollback override.
    pub rollback_min_signers: usize,
    /// Who may approve SRE actions.
    pub sre_approvals: SreApprovalsSpec,
}

impl TrustPolicy {
    /// A policy from plain key lists (`--allowed-signers`, `--openpgp-keyring`): every commit
    /// needs one trusted signer, identity binding on, no repository list.
    pub fn from_keys(keys: Vec<SignerKey>) -> Self {
        TrustPolicy {
            roots: keys,
            rules: Vec::new(),
            identity_binding: true,
            repo_signers: None,
            approval_tag_prefix: default_tag_prefix(),
            rollback_min_signers: 2,
            sre_approvals: SreApprovalsSpec::default(),
        }
    }

    /// Parses a TrustPolicy file.
    pub fn parse(source_name: &str, text: &str) -> Result<Self, KeySourceError> {
        let file: TrustPolicyFile =
            serde_saphyr::from_str(text).map_err(|e| yaml_error(source_name, &e))?;
        let err = |message: String| KeySourceError {
            source_name: source_name.to_string(),
            line: 0,
            message,
        };
        if file.api_version != API_VERSION || file.kind != "TrustPolicy" {
            return Err(err(format!(
                "expected apiVersion {API_VERSION}, kind TrustPolicy"
            )));
        }
        let spec = file.spec;
        let mut roots = Vec::new();
        for s in &spec.signers {
            roots.extend(compile_signer(source_name, s, SignerClass::Person)?);
        }
        for s in &spec.forge_keys {
            roots.extend(compile_signer(source_name, s, SignerClass::Forge)?);
        }
        let mut names: Vec<&str> = spec
            .signers
            .iter()
            .chain(&spec.forge_keys)
            .map(|s| s.name.as_str())
            .collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(err(format!("signer {:?} is defined twice", w[0])));
        }
        if let Some(a) = &spec.sre_approvals {
            if a.min_approvers == 0 {
                return Err(err("sreApprovals.minApprovers must be at least 1".into()));
            }
            if let Some(unknown) = a
                .approvers
                .iter()
                .find(|n| *n != "*" && !spec.signers.iter().any(|s| &s.name == *n))
            {
                return Err(err(format!(
                    "sreApprovals.approvers: {unknown:?} is not a signer of this policy"
                )));
            }
        }
        for r in &spec.rules {
            if r.min_signers == 0 {
                return Err(err("rules[].minSigners must be at least 1".into()));
            }
            if r.paths.is_empty() {
                return Err(err("rules[].paths must not be empty".into()));
            }
        }
        Ok(TrustPolicy {
            roots,
            rules: spec
                .rules
                .into_iter()
                .map(|r| PathRule {
                    paths: r.paths,
                    signers: r.signers,
                    min_signers: r.min_signers,
                })
                .collect(),
            identity_binding: spec.identity_binding,
            repo_signers: spec.repository_signers,
            approval_tag_prefix: spec.approval_tag_prefix,
            rollback_min_signers: spec.rollback.map_or(2, |r| r.min_signers.max(1)),
            sre_approvals: spec.sre_approvals.unwrap_or_default(),
        })
    }
}

fn yaml_error(source_name: &str, e: &serde_saphyr::Error) -> KeySourceError {
    KeySourceError {
        source_name: source_name.to_string(),
        line: e
            .location()
            .map_or(0, |l| usize::try_from(l.line()).unwrap_or(0)),
        message: e.to_string(),
    }
}

/// Turns a signer entry into keys.
pub fn compile_signer(
    source_name: &str,
    s: &SignerSpec,
    class: SignerClass,
) -> Result<Vec<SignerKey>, KeySourceError> {
    let err = |message: String| KeySourceError {
        source_name: source_name.to_string(),
        line: 0,
        message: format!("signer {:?}: {message}", s.name),
    };
    if s.ssh_keys.is_empty() && s.openpgp_keys.is_empty() {
        return Err(err("has no sshKeys or openpgpKeys".into()));
    }
    let mut out = Vec::new();
    for k in &s.ssh_keys {
        let pk =
            ssh_key::PublicKey::from_openssh(k.trim()).map_err(|e| err(format!("SSH key: {e}")))?;
        out.push(SignerKey {
            signer: s.name.clone(),
            principals: s.emails.clone(),
            key: KeyMaterial::Ssh(Box::new(pk)),
            namespaces: None,
            valid_after: None,
            valid_before: None,
            class,
            origin: source_name.to_string(),
        });
    }
    for k in &s.openpgp_keys {
        let cert = parse_openpgp_cert(k).map_err(|e| err(format!("OpenPGP key: {e}")))?;
        out.push(SignerKey {
            signer: s.name.clone(),
            principals: s.emails.clone(),
            key: KeyMaterial::OpenPgp(Box::new(cert)),
            namespaces: None,
            valid_after: None,
            valid_before: None,
            class,
            origin: source_name.to_string(),
        });
    }
    Ok(out)
}

/// Parses a repository signer list. Names may not shadow root signers.
pub fn parse_signer_list(
    source_name: &str,
    text: &str,
    roots: &[SignerKey],
) -> Result<Vec<SignerKey>, KeySourceError> {
    let file: SignerListFile =
        serde_saphyr::from_str(text).map_err(|e| yaml_error(source_name, &e))?;
    let err = |message: String| KeySourceError {
        source_name: source_name.to_string(),
        line: 0,
        message,
    };
    if file.api_version != API_VERSION || file.kind != "SignerList" {
        return Err(err(format!(
            "expected apiVersion {API_VERSION}, kind SignerList"
        )));
    }
    let mut out = Vec::new();
    for s in &file.signers {
        if roots.iter().any(|r| r.signer == s.name) {
            return Err(err(format!(
                "signer {:?} is already a trust root; repository signers need their own names",
                s.name
            )));
        }
        out.extend(compile_signer(source_name, s, SignerClass::Person)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("**", "a/b/c.yaml"));
        assert!(glob_match("policies/**", "policies/x.yaml"));
        assert!(glob_match("policies/", "policies/a/b.yaml"));
        assert!(!glob_match("policies/**", "agents/policies/x.yaml"));
        assert!(glob_match("agents/*/sandbox.yaml", "agents/a/sandbox.yaml"));
        assert!(!glob_match(
            "agents/*/sandbox.yaml",
            "agents/a/b/sandbox.yaml"
        ));
        assert!(glob_match("**/tools.yaml", "agents/a/tools.yaml"));
        assert!(glob_match("**/tools.yaml", "tools.yaml"));
        assert!(glob_match(".kars/signers.yaml", ".kars/signers.yaml"));
        assert!(!glob_match("kars.yaml", "xkars.yaml"));
        assert!(!glob_match("**/tools.yaml", "agents/mytools.yaml"));
        assert!(glob_match("agents/**/x", "agents/x"));
    }

    #[test]
    fn policy_file_errors_are_clear() {
        let e = TrustPolicy::parse("trust.yaml", "apiVersion: gitops.kars.io/v1alpha1\nkind: TrustPolicy\nspec:\n  signers:\n  - name: a\n    emials: [x]\n").expect_err("typo");
        assert!(e.to_string().contains("emials"), "{e}");
        let e = TrustPolicy::parse(
            "trust.yaml",
            "apiVersion: v1\nkind: TrustPolicy\nspec: {}\n",
        )
        .expect_err("version");
        assert!(e.to_string().contains("gitops.kars.io/v1alpha1"), "{e}");
        let e = TrustPolicy::parse("trust.yaml", "apiVersion: gitops.kars.io/v1alpha1\nkind: TrustPolicy\nspec:\n  signers:\n  - name: a\n").expect_err("no keys");
        assert!(e.to_string().contains("no sshKeys"), "{e}");
    }
}
