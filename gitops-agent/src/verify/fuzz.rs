//! Property tests: malformed signature blocks, object headers, key lines and trust files never
//! panic, and garbage never verifies.

use proptest::prelude::*;

use super::keys::{parse_allowed_signers, parse_openpgp_keyring};
use super::objects::{parse_actor, split_tag_signature};
use super::signature::{Signed, check};
use super::trust::{TrustPolicy, glob_match, parse_signer_list};

const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm0bUb5tR3bEKB1v2Q5tYbF1W2T0jnq1m7m0rQy6p7e";

fn armored(marker: &'static str) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..300).prop_map(move |bytes| {
        use base64::Engine;
        let body = base64::engine::general_purpose::STANDARD.encode(bytes);
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect();
        format!(
            "-----BEGIN {marker}-----\n\n{}\n-----END {marker}-----\n",
            lines.join("\n")
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn random_signature_blocks_never_verify_or_panic(
        sig in prop_oneof![armored("SSH SIGNATURE"), armored("PGP SIGNATURE"), ".{0,200}"],
        payload in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let keys = parse_allowed_signers("t", &format!("a@b {ED25519}\n")).unwrap_or_default();
        let r = check(&Signed { payload: &payload, signature: &sig, email: "a@b", time: 0 }, &keys, true, 0);
        prop_assert!(r.is_err());
    }

    #[test]
    fn allowed_signers_lines_never_panic(line in ".{0,200}", opts in "[a-z=\",-]{0,40}") {
        let _ = parse_allowed_signers("t", &line);
        let _ = parse_allowed_signers("t", &format!("p@x {opts} {ED25519}"));
    }

    #[test]
    fn keyrings_never_panic(text in prop_oneof![armored("PGP PUBLIC KEY BLOCK"), ".{0,300}"]) {
        let _ = parse_openpgp_keyring("t", &text);
    }

    #[test]
    fn trust_files_never_panic(text in ".{0,300}") {
        let _ = TrustPolicy::parse("t", &text);
        let _ = parse_signer_list("t", &text, &[]);
    }

    #[test]
    fn headers_never_panic(raw in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = parse_actor(&raw);
        let (payload, sig) = split_tag_signature(&raw);
        prop_assert_eq!(payload.len() + sig.map_or(0, <[u8]>::len), raw.len());
    }

    #[test]
    fn globs_never_panic(p in "[a-z*?/.]{0,20}", t in "[a-z/.]{0,30}") {
        let _ = glob_match(&p, &t);
    }
}
