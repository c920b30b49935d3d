//! The catalogue of stable reason words: every condition reason, failure reason, Event reason
//! and metric label the agent and the `kars` CLI write comes from [`Reason`], so the same
//! situation carries the same word in `kubectl get policyrepo`, `kars status`, Events and
//! `/metrics`. Typed errors expose theirs through a `reason()` method.

macro_rules! catalogue {
    ($( $(#[doc = $doc:literal])* $group:literal $name:ident ),+ $(,)?) => {
        /// A stable reason word (see the module documentation).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum Reason {
            $( $(#[doc = $doc])* $name, )+
        }

        impl Reason {
            /// Every reason, in catalogue order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name),+];

            /// The word itself (CamelCase, never changes once released).
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$name => stringify!($name)),+ }
            }

            /// The pipeline step the reason belongs to (`source`, `verify`, `render`,
            /// `bundles`, `apply`, `prune`, `health`, `enforce`, `sre`, `sync`).
            pub fn step(self) -> &'static str {
                match self { $(Reason::$name => $group),+ }
            }

            /// What the reason means, one line (the doc comment).
            pub fn meaning(self) -> &'static str {
                match self { $(Reason::$name => concat!($($doc),+).trim_ascii()),+ }
            }
        }
    };
}

catalogue! {
    /// The sync finished and the cluster matches the verified head.
    "sync" Synced,
    /// `spec.suspend` is true; nothing was synced.
    "sync" Suspended,
    /// A step of the sync crashed (a bug); nothing more was done in that sync.
    "sync" TaskFailed,
    /// The PolicyRepo status could not be read or written.
    "sync" StatusUnavailable,
    /// The branch head was fetched (or read from the local path).
    "source" Fetched,
    /// The repository could not be read or fetched.
    "source" SourceUnavailable,
    /// Every new commit verified.
    "verify" Verified,
    /// Verification could not run (an object could not be read, history could not be walked).
    "verify" VerificationError,
    /// Verification refused the range for a reason not named more precisely.
    "verify" VerificationFailed,
    /// A commit (or tag) carries no signature.
    "verify" Unsigned,
    /// A signature block does not parse.
    "verify" MalformedSignature,
    /// Signed by a key the trust policy does not know.
    "verify" UnknownSigner,
    /// The signature does not verify over the commit.
    "verify" BadSignature,
    /// An SSH signature made for another namespace than `git`.
    "verify" WrongNamespace,
    /// The signer's `namespaces=` option does not allow `git`.
    "verify" NamespaceNotAllowed,
    /// Signed outside the signer's `valid-after`/`valid-before` window.
    "verify" OutsideValidity,
    /// The OpenPGP key had expired when the commit was made.
    "verify" KeyExpired,
    /// The OpenPGP key is revoked.
    "verify" KeyRevoked,
    /// A weak algorithm (SHA-1, MD5) or key.
    "verify" WeakSignature,
    /// The signer may not sign as the commit's committer.
    "verify" IdentityMismatch,
    /// A path rule needs more distinct signers (k-of-n approvals).
    "verify" NotEnoughSigners,
    /// The repository signer list changed without enough previously trusted signers.
    "verify" SignerListChangeUntrusted,
    /// The repository signer list does not parse.
    "verify" InvalidSignerList,
    /// A forge key signed something that is not a merge.
    "verify" ForgeKeyNotMerge,
    /// A forge-signed merge brings in unverified commits.
    "verify" ForgeMergeUnverified,
    /// A forge-signed merge changes more than the merged branch.
    "verify" ForgeMergeExtraChanges,
    /// The head does not descend from the last applied commit (rollback or force-push).
    "verify" Rollback,
    /// A rollback override is signed by too few signers.
    "verify" RollbackOverrideUnderSigned,
    /// The head rendered.
    "render" Rendered,
    /// The head does not pass validation (schemas, CEL rules, references).
    "render" ValidationFailed,
    /// The cluster asked for is not in `kars.yaml` (or several exist and none was named).
    "render" UnknownCluster,
    /// A validated object could not be rendered.
    "render" ObjectNotRenderable,
    /// The commit's tree breaks a safety rule (symlink escape, `..`, a file too large).
    "render" UnsafeTree,
    /// A bundle reference is not `registry/repository@sha256:<hex>`.
    "bundles" InvalidRef,
    /// The artifact is not of the kind the referencing field takes.
    "bundles" ArtifactTypeMismatch,
    /// The registry could not be reached, refused, or does not have the artifact.
    "bundles" OciPullError,
    /// Bytes from the registry do not hash to the digest asked for.
    "bundles" DigestMismatch,
    /// Signed, but not by a signer of the bundle signer policy.
    "bundles" SignerPolicyMismatch,
    /// A trusted signature names another digest (a replayed signature).
    "bundles" SignatureDigestMismatch,
    /// The bundle content is not in its kind's canonical form.
    "bundles" CanonicalFormatViolation,
    /// An object is held back until a signed bundle it needs verifies.
    "bundles" HeldBack,
    /// Every object is applied (or was already in sync).
    "apply" Applied,
    /// The API server refused an object.
    "apply" ApplyFailed,
    /// Another field manager owns fields the object sets.
    "apply" Conflict,
    /// The API server does not serve the object's kind (is its CRD installed?).
    "apply" KindNotServed,
    /// Not applied because an earlier object failed.
    "apply" Skipped,
    /// Changed in the cluster and left so, because self-heal is off.
    "apply" Drifted,
    /// The API server could not be reached or refused a read the sync needs.
    "apply" ApiServerUnavailable,
    /// A CRD or namespace did not become ready in time.
    "apply" WaitTimeout,
    /// The object is owned by another PolicyRepo; it is neither applied over nor pruned.
    "apply" OwnedByAnotherPolicyRepo,
    /// Pruning was held back (see the failure for which rule).
    "prune" PruneRefused,
    /// The sync would delete more than the threshold share of the inventory.
    "prune" PruneThresholdExceeded,
    /// The render is empty while objects are applied.
    "prune" EmptyRenderRefused,
    /// An object that left Git could not be deleted (yet).
    "prune" PruneFailed,
    /// Every checked object is ready.
    "health" Healthy,
    /// Objects are still rolling out.
    "health" Progressing,
    /// An object failed (rollout deadline exceeded, Ready=False).
    "health" Unhealthy,
    /// Every running router reports the rendered policy digests.
    "enforce" Enforced,
    /// A running router reports other policies than the rendered ones (or cannot be asked).
    "enforce" NotEnforced,
    /// No router pod runs yet, so nothing can be asked.
    "enforce" NoRunningRouters,
    /// An SRE action is in Git but not approved yet.
    "sre" Proposed,
    /// An approved SRE action ran; its recovery is being observed.
    "sre" Executed,
    /// After an SRE action every Deployment in its namespace is available and no failure
    /// Event is newer than 30 s.
    "sre" Recovered,
    /// An SRE action that was reported Failed recovered later (within 30 minutes).
    "sre" LateRecovery,
    /// The namespace did not recover within 10 minutes of an SRE action.
    "sre" RecoveryFailed,
    /// The API server refused an SRE action's writes.
    "sre" ExecutionFailed,
    /// The agent stopped between running an SRE action and recording it; it was not run again.
    "sre" ExecutionInterrupted,
    /// The SRE action's approval state is Rejected.
    "sre" Rejected,
    /// The SRE action reached the cluster after its TTL; it was not run.
    "sre" Expired,
    /// The SRE action breaks a rule of the closed set (type, parameters, denylisted namespace,
    /// bounds).
    "sre" ActionInvalid,
    /// DeleteResourceQuota refuses a quota managed by the kars controller.
    "sre" ControllerManagedQuota,
    /// No separate, signed commit in Git approves the SRE action.
    "sre" ApprovalMissing,
    /// The commit that approves the SRE action (or proposes it) is not signed by a trusted signer.
    "sre" ApprovalUntrusted,
    /// The SRE action is approved only by someone who proposed or changed it.
    "sre" SelfApproval,
    /// The approver is not allowed to approve SRE actions by the trust policy.
    "sre" ApproverNotAllowed,
    /// The SRE action needs more distinct approvers.
    "sre" NotEnoughApprovers,
    /// The SRE action changed in the approving commit or after it.
    "sre" ChangedAfterApproval,
    /// An SRE action was set to Approved in the cluster, not in Git; that does nothing.
    "sre" ApprovalNotFromGit,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not in the catalogue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a kars GitOps reason")]
pub struct UnknownReason(pub String);

impl std::str::FromStr for Reason {
    type Err = UnknownReason;
    fn from_str(s: &str) -> Result<Reason, UnknownReason> {
        Reason::ALL
            .iter()
            .copied()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownReason(s.to_string()))
    }
}

impl serde::Serialize for Reason {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Reason {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_unique_camel_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for r in Reason::ALL {
            let w = r.as_str();
            assert!(seen.insert(w), "{w} twice");
            assert!(w.as_bytes()[0].is_ascii_uppercase(), "{w}");
            assert!(w.bytes().all(|c| c.is_ascii_alphanumeric()), "{w}");
            assert_eq!(w.parse::<Reason>(), Ok(*r));
            assert!(!r.meaning().is_empty(), "{w} has no meaning");
        }
    }
}
