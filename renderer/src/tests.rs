//! Golden tests (rendered output pinned in `testdata/golden/`) and property tests
//! (determinism, no panics on arbitrary input).
//!
//! Regenerate the golden files after an intended change with
//! `KARS_UPDATE_GOLDEN=1 cargo test -p kars-renderer golden`; review the diff like code.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use crate::source::{RepoTree, SourceLimits};
use crate::{Bundles, RenderError, output, render_tree, validate_tree};

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(path: &Path) -> RepoTree {
    RepoTree::from_dir(path, SourceLimits::default())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn check_golden(name: &str, actual: &str) {
    let path = manifest_dir().join("testdata/golden").join(name);
    if std::env::var_os("KARS_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with KARS_UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{name} differs from the golden file at line {}:\n  golden: {:?}\n  actual: {:?}\nrun KARS_UPDATE_GOLDEN=1 cargo test -p kars-renderer golden and review the diff",
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first)
        );
    }
}

fn render_golden(repo: &Path, cluster: Option<&str>, golden: &str) {
    let tree = load(repo);
    let rendered = render_tree(&tree, cluster, &Bundles::none())
        .unwrap_or_else(|e| panic!("{}: {e}", repo.display()));
    let yaml = output::to_yaml(&rendered).unwrap_or_else(|e| panic!("{e}"));
    check_golden(golden, &yaml);
}

#[test]
fn golden_repo_template() {
    render_golden(
        &manifest_dir().join("../repo-template"),
        None,
        "repo-template.yaml",
    );
}

/// The upstream examples that render (`testdata/upstream-examples.txt`, shared with the
/// end-to-end suite).
fn upstream_examples() -> Vec<String> {
    let list = std::fs::read_to_string(manifest_dir().join("testdata/upstream-examples.txt"))
        .expect("testdata/upstream-examples.txt");
    list.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn golden_upstream_examples() {
    let names = upstream_examples();
    assert_eq!(names.len(), 8, "{names:?}");
    for name in names {
        render_golden(
            &manifest_dir().join("testdata/repos").join(&name),
            None,
            &format!("{name}.yaml"),
        );
    }
}

#[test]
fn golden_multi_cluster() {
    let repo = manifest_dir().join("testdata/repos/multi-cluster");
    render_golden(&repo, Some("staging"), "multi-cluster-staging.yaml");
    render_golden(&repo, Some("prod"), "multi-cluster-prod.yaml");
}

#[test]
fn golden_validation_errors_of_invalid_upstream_examples() {
    for name in ["hermes-quickstart", "byo-strict-demo"] {
        let tree = load(&manifest_dir().join("testdata/repos").join(name));
        let report = validate_tree(&tree);
        assert!(report.has_errors(), "{name} should be invalid");
        check_golden(&format!("{name}.errors.txt"), &report.to_string());
        match render_tree(&tree, None, &Bundles::none()) {
            Err(RenderError::Invalid { report: r }) => {
                assert_eq!(r.error_count(), report.error_count())
            }
            other => panic!("{name}: expected Invalid, got {other:?}"),
        }
    }
}

#[test]
fn multi_cluster_selects_directories_and_namespaces() {
    let tree = load(&manifest_dir().join("testdata/repos/multi-cluster"));
    let prod = render_tree(&tree, Some("prod"), &Bundles::none()).expect("prod renders");
    assert!(
        prod.objects.iter().all(|o| !o.key().contains("research")),
        "prod must not get the research agent"
    );
    assert!(
        prod.objects
            .iter()
            .any(|o| o.key() == "KarsSandbox/acme-prod/payments")
    );
    let staging = render_tree(&tree, Some("staging"), &Bundles::none()).expect("staging renders");
    assert!(
        staging
            .objects
            .iter()
            .any(|o| o.key() == "KarsSandbox/acme-agents/research")
    );
    assert!(
        staging
            .objects
            .iter()
            .any(|o| o.key() == "KarsSREAction/kars-sre/scale-research-down")
    );
    match render_tree(&tree, None, &Bundles::none()) {
        Err(RenderError::Cluster(msg)) => assert!(msg.contains("--cluster"), "{msg}"),
        other => panic!("expected a cluster choice error, got {other:?}"),
    }
    match render_tree(&tree, Some("dev"), &Bundles::none()) {
        Err(RenderError::Cluster(msg)) => {
            assert!(msg.contains("prod") && msg.contains("staging"), "{msg}")
        }
        other => panic!("expected unknown cluster, got {other:?}"),
    }
}

#[test]
fn apply_order_puts_namespaces_first_and_workloads_last() {
    let tree = load(&manifest_dir().join("../repo-template"));
    let r = render_tree(&tree, None, &Bundles::none()).expect("renders");
    let waves: Vec<u8> = r.objects.iter().map(|o| o.wave).collect();
    let mut sorted = waves.clone();
    sorted.sort();
    assert_eq!(waves, sorted);
    assert_eq!(r.objects.first().map(|o| o.kind()), Some("Namespace"));
    assert_eq!(r.objects.last().map(|o| o.kind()), Some("Deployment"));
}

#[test]
fn compiled_configmaps_carry_the_digest_of_their_content() {
    let tree = load(&manifest_dir().join("../repo-template"));
    let r = render_tree(&tree, None, &Bundles::none()).expect("renders");
    let cm = r
        .objects
        .iter()
        .find(|o| o.name() == "karssandbox-hello-agent-egress-allowlist")
        .expect("allowlist configmap");
    let body = cm.manifest["data"]["allowlist.json"]
        .as_str()
        .expect("body");
    let digest = kars_contract::policy::digest_file("allowlist.json", body.as_bytes());
    assert_eq!(
        cm.manifest["metadata"]["annotations"]["kars.azure.com/egress-allowlist-digest"],
        digest.as_str()
    );
    assert!(body.contains("api.github.com"));
}

// ---- signed bundles ---------------------------------------------------------------------------

const EGRESS_DIGEST: &str =
    "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn signed_bundles_tree() -> RepoTree {
    load(&manifest_dir().join("testdata/repos/signed-bundles"))
}

/// Canonical content for every reference of the signed-bundles fixture.
fn fixture_bundles() -> Vec<(&'static str, &'static str, &'static str, Vec<u8>)> {
    use crate::bundle::{BundleKind, allowlist_bundle, canonicalize};
    let c = |k: BundleKind, text: &str| canonicalize(k, text.as_bytes()).expect("fixture bundle");
    vec![
        (
            "KarsSandbox/agents/signed",
            "spec.networkPolicy.allowlistRef",
            EGRESS_DIGEST,
            allowlist_bundle(
                &[
                    ("api.openai.com".into(), 443),
                    ("pypi.org".into(), 443),
                    ("git.example.com".into(), 22),
                ],
                1,
            )
            .expect("allowlist"),
        ),
        (
            "ToolPolicy/agents/signed-tools",
            "spec.agtProfile.bundleRef",
            "sha256:2222222222222222222222222222222222222222222222222222222222222222",
            c(
                BundleKind::AgtProfile,
                "version: '1.0'\nagent: signed\npolicies:\n- name: tool-allow\n  type: capability\n  allowed_actions: ['tool:*']\n  priority: 70\n",
            ),
        ),
        (
            "InferencePolicy/agents/signed-inference",
            "spec.bundleRef",
            "sha256:3333333333333333333333333333333333333333333333333333333333333333",
            c(
                BundleKind::InferencePolicy,
                r#"{"modelPreference":{"primary":{"provider":"azure-openai","deployment":"gpt-4.1-signed"}},"tokenBudget":{"dailyTokens":42000}}"#,
            ),
        ),
        (
            "KarsMemory/agents/signed-memory",
            "spec.bundleRef",
            "sha256:4444444444444444444444444444444444444444444444444444444444444444",
            c(
                BundleKind::MemoryBinding,
                r#"{"storeName":"signed-store","retentionDays":30}"#,
            ),
        ),
        (
            "McpServer/agents/docs",
            "spec.bundleRef",
            "sha256:5555555555555555555555555555555555555555555555555555555555555555",
            c(
                BundleKind::McpServer,
                r#"{"url":"https://mcp.example.com/docs","allowedTools":["search"]}"#,
            ),
        ),
    ]
}

fn bundles_except(skip: &[&str]) -> Bundles {
    let mut b = Bundles::none();
    for (object, field, digest, bytes) in fixture_bundles() {
        if !skip.contains(&object) {
            b.insert(object, field, digest, bytes);
        }
    }
    b
}

fn find<'a>(r: &'a crate::Rendered, kind: &str, name: &str) -> Option<&'a crate::RenderedObject> {
    r.objects
        .iter()
        .find(|o| o.kind() == kind && o.name() == name)
}

#[test]
fn golden_signed_bundles_verified() {
    let tree = signed_bundles_tree();
    let r = render_tree(&tree, None, &bundles_except(&[])).expect("renders");
    assert!(r.held_back.is_empty(), "{:?}", r.held_back);
    let cm = find(&r, "ConfigMap", "karssandbox-signed-egress-allowlist").expect("allowlist");
    let body = cm.manifest["data"]["allowlist.json"]
        .as_str()
        .expect("body");
    assert_eq!(
        body,
        r#"{"endpoints":[{"host":"api.openai.com","port":443},{"host":"git.example.com","port":22},{"host":"pypi.org","port":443}],"schemaVersion":1}"#
    );
    assert_eq!(
        cm.manifest["metadata"]["annotations"][kars_contract::labels::BUNDLE_DIGEST_ANNOTATION],
        EGRESS_DIGEST
    );
    let inf = find(&r, "ConfigMap", "inferencepolicy-signed-inference-profile").expect("inference");
    assert!(
        inf.manifest["data"]["inference-policy.json"]
            .as_str()
            .is_some_and(|b| b.contains("gpt-4.1-signed"))
    );
    let mcp = find(&r, "ConfigMap", "mcp-docs-server").expect("mcp");
    let server = mcp.manifest["data"]["server.json"]
        .as_str()
        .expect("server.json");
    assert!(
        server.contains("https://mcp.example.com/docs") && server.contains("DOCS_TOKEN"),
        "{server}"
    );
    // Port 22 from the bundle opens in the NetworkPolicy like an inline endpoint's would.
    let np = r
        .objects
        .iter()
        .find(|o| o.kind() == "NetworkPolicy" && o.namespace() == Some("kars-signed"))
        .expect("netpol");
    assert!(
        np.manifest.to_string().contains("\"port\":22"),
        "{}",
        np.manifest
    );
    let yaml = output::to_yaml(&r).expect("yaml");
    check_golden("signed-bundles.yaml", &yaml);
}

#[test]
fn an_unverified_bundle_holds_back_only_what_depends_on_it() {
    let tree = signed_bundles_tree();
    let all = render_tree(&tree, None, &bundles_except(&[])).expect("renders");
    // The allowlist of sandbox "signed" did not verify and was never verified before.
    let r =
        render_tree(&tree, None, &bundles_except(&["KarsSandbox/agents/signed"])).expect("renders");
    assert_eq!(r.held_back.len(), 1, "{:?}", r.held_back);
    let h = &r.held_back[0];
    assert_eq!(h.object, "KarsSandbox/agents/signed");
    assert!(
        h.reason.contains("spec.networkPolicy.allowlistRef") && h.reason.contains("kars-signed"),
        "{}",
        h.reason
    );
    assert!(
        r.objects
            .iter()
            .all(|o| o.namespace() != Some("kars-signed") && o.name() != "kars-signed"),
        "nothing of the held sandbox renders"
    );
    assert!(find(&r, "KarsSandbox", "signed").is_none());
    assert!(
        r.generated_secrets
            .iter()
            .all(|s| s.namespace != "kars-signed")
    );
    // Everything else renders exactly as with every bundle verified.
    let others = |x: &crate::Rendered| -> Vec<serde_json::Value> {
        x.objects
            .iter()
            .filter(|o| {
                o.namespace() != Some("kars-signed")
                    && o.name() != "kars-signed"
                    && !(o.kind() == "KarsSandbox" && o.name() == "signed")
            })
            .filter(|o| o.name() != "kars-spawner-signed")
            .map(|o| o.manifest.clone())
            .collect()
    };
    assert_eq!(others(&r), others(&all));
    assert!(
        find(&r, "Deployment", "plain").is_some()
            || r.objects
                .iter()
                .any(|o| o.kind() == "Deployment" && o.namespace() == Some("kars-plain"))
    );

    // A policy object's bundle: the policy CR and the sandboxes that use it are held back.
    let r = render_tree(
        &tree,
        None,
        &bundles_except(&["ToolPolicy/agents/signed-tools"]),
    )
    .expect("renders");
    let held: Vec<&str> = r.held_back.iter().map(|h| h.object.as_str()).collect();
    assert_eq!(
        held,
        [
            "KarsSandbox/agents/signed",
            "ToolPolicy/agents/signed-tools"
        ],
        "{:?}",
        r.held_back
    );
    assert!(find(&r, "ToolPolicy", "signed-tools").is_none());
    assert!(find(&r, "ToolPolicy", "kars-default").is_some());

    // Nothing verified: the plain sandbox still renders in full.
    let r = render_tree(&tree, None, &Bundles::none()).expect("renders");
    assert!(
        r.objects
            .iter()
            .any(|o| o.kind() == "Deployment" && o.namespace() == Some("kars-plain"))
    );
    assert!(
        !r.objects
            .iter()
            .any(|o| o.namespace() == Some("kars-signed"))
    );
    assert_eq!(r.held_back.len(), 5, "{:?}", r.held_back);
}

#[test]
fn the_last_verified_bundle_stays_projected_when_a_new_reference_fails() {
    let tree = signed_bundles_tree();
    let old =
        crate::bundle::allowlist_bundle(&[("old.example.com".into(), 443)], 1).expect("allowlist");
    let old_digest = "sha256:9999999999999999999999999999999999999999999999999999999999999999";
    let mut b = bundles_except(&["KarsSandbox/agents/signed"]);
    b.insert(
        "KarsSandbox/agents/signed",
        "spec.networkPolicy.allowlistRef",
        old_digest,
        old,
    );
    let r = render_tree(&tree, None, &b).expect("renders");
    // The CR (which names the new digest) is held back; its workloads render with the old bundle.
    assert!(find(&r, "KarsSandbox", "signed").is_none());
    assert_eq!(r.held_back.len(), 1);
    assert!(
        r.held_back[0].reason.contains(old_digest),
        "{}",
        r.held_back[0].reason
    );
    let cm = find(&r, "ConfigMap", "karssandbox-signed-egress-allowlist").expect("allowlist stays");
    assert!(
        cm.manifest["data"]["allowlist.json"]
            .as_str()
            .is_some_and(|s| s.contains("old.example.com"))
    );
    assert_eq!(
        cm.manifest["metadata"]["annotations"][kars_contract::labels::BUNDLE_DIGEST_ANNOTATION],
        old_digest
    );
    assert!(
        r.objects
            .iter()
            .any(|o| o.kind() == "Deployment" && o.namespace() == Some("kars-signed"))
    );
}

#[test]
fn bundle_references_are_listed_with_their_kind_and_line() {
    let tree = signed_bundles_tree();
    let p = crate::prepare(&tree, None).expect("valid");
    let uses = p.bundle_uses();
    let got: Vec<(String, &str, &str, u32)> = uses
        .iter()
        .map(|u| (u.object.clone(), u.field, u.kind.name(), u.pos.line))
        .collect();
    assert_eq!(
        got,
        [
            (
                "InferencePolicy/agents/signed-inference".to_string(),
                "spec.bundleRef",
                "inference-policy",
                9
            ),
            (
                "KarsMemory/agents/signed-memory".to_string(),
                "spec.bundleRef",
                "memory-binding",
                22
            ),
            (
                "McpServer/agents/docs".to_string(),
                "spec.bundleRef",
                "mcp-server-bundle",
                34
            ),
            (
                "KarsSandbox/agents/signed".to_string(),
                "spec.networkPolicy.allowlistRef",
                "egress-allowlist",
                65
            ),
            (
                "ToolPolicy/agents/signed-tools".to_string(),
                "spec.agtProfile.bundleRef",
                "agt-profile",
                29
            ),
        ]
    );
}

#[test]
fn bundle_references_must_be_pinned_digests_of_the_fields_kind() {
    let base = signed_bundles_tree();
    let files: Vec<(String, Vec<u8>)> = base
        .files()
        .map(|(p, b)| (p.to_string(), b.to_vec()))
        .collect();
    let with = |from: &str, to: &str| {
        let t = RepoTree::from_files(files.iter().map(|(p, b)| {
            let text = String::from_utf8_lossy(b).replace(from, to);
            (p.clone(), text.into_bytes())
        }));
        validate_tree(&t).to_string()
    };
    let tag = with(
        "sha256:1111111111111111111111111111111111111111111111111111111111111111",
        "latest",
    );
    assert!(
        tag.contains("agents/signed/sandbox.yaml:65")
            && tag.contains("InvalidRef")
            && tag.contains("never by tag"),
        "{tag}"
    );
    let short = with(
        "sha256:3333333333333333333333333333333333333333333333333333333333333333",
        "sha256:3333",
    );
    assert!(
        short.contains("agents/signed/sandbox.yaml:9") && short.contains("InvalidRef"),
        "{short}"
    );
    let wrong_type = with(
        "application/vnd.kars.egress-allowlist.v1+yaml",
        "application/vnd.kars.agt-profile.v1+yaml",
    );
    assert!(
        wrong_type.contains("ArtifactTypeMismatch") && wrong_type.contains(":65"),
        "{wrong_type}"
    );
    let scheme = with(
        "registry: 127.0.0.1:5000\n    repository: policies/memory",
        "registry: https://127.0.0.1:5000\n    repository: policies/memory",
    );
    assert!(scheme.contains("InvalidRef: registry"), "{scheme}");
    let upper = with("policies/mcp-docs", "Policies/MCP");
    assert!(upper.contains("InvalidRef: repository"), "{upper}");
    assert!(
        !with("nothing", "nothing").contains("error"),
        "the fixture itself is valid"
    );
}

// ---- properties -------------------------------------------------------------------------------

fn template_files() -> Vec<(String, String)> {
    let tree = load(&manifest_dir().join("../repo-template"));
    tree.files()
        .map(|(p, b)| (p.to_string(), String::from_utf8_lossy(b).into_owned()))
        .collect()
}

/// Objects as canonical JSON without the annotations that name the source file (moving an
/// object to another file legitimately changes those).
fn objects_without_source(tree: &RepoTree) -> Vec<String> {
    let r = render_tree(tree, None, &Bundles::none()).expect("renders");
    r.objects
        .iter()
        .map(|o| {
            let mut m = o.manifest.clone();
            if let Some(a) = m["metadata"]["annotations"].as_object_mut() {
                a.remove(kars_contract::labels::SOURCE_ANNOTATION);
                a.remove(kars_contract::labels::OBJECT_DIGEST_ANNOTATION);
            }
            crate::canonical::json(&m)
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Same input → same bytes, and renaming files or moving documents between files (other
    /// than kars.yaml) → the same objects.
    #[test]
    fn rendering_is_deterministic_under_file_permutation(seed in any::<u64>(), merge in any::<bool>()) {
        let files = template_files();
        let baseline_tree = RepoTree::from_files(files.iter().map(|(p, b)| (p.clone(), b.clone())));
        let a = render_tree(&baseline_tree, None, &Bundles::none()).expect("renders");
        let b = render_tree(&baseline_tree, None, &Bundles::none()).expect("renders");
        prop_assert_eq!(output::to_yaml(&a).expect("yaml"), output::to_yaml(&b).expect("yaml"));

        // Permute: every policy document into a renamed file, in shuffled order; optionally all
        // of one folder's documents merged into a single multi-document file.
        let mut docs: Vec<(String, String)> = Vec::new();
        for (path, body) in &files {
            if path == "kars.yaml" || !path.ends_with(".yaml") || path.starts_with('.') {
                continue;
            }
            let dir = path.rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default();
            for doc in body.split("\n---\n") {
                docs.push((dir.clone(), doc.to_string()));
            }
        }
        let mut rng = seed;
        for i in (1..docs.len()).rev() {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let j = (rng >> 33) as usize % (i + 1);
            docs.swap(i, j);
        }
        let mut permuted: Vec<(String, String)> = vec![("kars.yaml".into(), files.iter().find(|(p, _)| p == "kars.yaml").map(|f| f.1.clone()).unwrap_or_default())];
        if merge {
            let mut by_dir: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for (dir, doc) in docs {
                by_dir.entry(dir).or_default().push(doc);
            }
            for (dir, ds) in by_dir {
                permuted.push((format!("{dir}/all-{seed}.yml"), ds.join("\n---\n")));
            }
        } else {
            for (i, (dir, doc)) in docs.into_iter().enumerate() {
                permuted.push((format!("{dir}/z{}-{i}.yaml", seed % 997), doc));
            }
        }
        let permuted_tree = RepoTree::from_files(permuted);
        prop_assert_eq!(objects_without_source(&baseline_tree), objects_without_source(&permuted_tree));
    }

    /// Validation never panics, whatever the YAML.
    #[test]
    fn validation_never_panics_on_arbitrary_text(text in ".{0,400}") {
        let tree = RepoTree::from_files([("kars.yaml".to_string(), text.clone()), ("agents/a/x.yaml".to_string(), text)]);
        let _ = validate_tree(&tree);
    }

    /// Validation never panics on structurally plausible kars objects with random content.
    #[test]
    fn validation_never_panics_on_random_kars_objects(
        kind in prop::sample::select(crate::crds::kinds().collect::<Vec<_>>()),
        spec in arb_json(4),
        name in "[a-z0-9-]{0,70}",
    ) {
        let doc = serde_json::json!({
            "apiVersion": crate::crds::API_VERSION,
            "kind": kind,
            "metadata": {"name": name},
            "spec": spec,
        });
        let yaml = crate::output::object_yaml(&doc).expect("yaml");
        let cfg = "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: p}\nspec:\n  clusters: [{name: c, paths: [agents]}]\n";
        let tree = RepoTree::from_files([("kars.yaml".to_string(), cfg.to_string()), ("agents/a/x.yaml".to_string(), yaml)]);
        let report = validate_tree(&tree);
        // Rendering must not panic either (it refuses or renders).
        let _ = render_tree(&tree, None, &Bundles::none());
        let _ = report;
    }
}

fn arb_json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|i| serde_json::json!(i)),
        "[a-zA-Z0-9:/._*-]{0,12}".prop_map(serde_json::Value::String),
    ];
    let keys = prop::sample::select(vec![
        "runtime",
        "kind",
        "openclaw",
        "byo",
        "image",
        "contractVersion",
        "sandbox",
        "isolation",
        "inferenceRef",
        "name",
        "governance",
        "enabled",
        "toolPolicyRef",
        "networkPolicy",
        "allowedEndpoints",
        "host",
        "port",
        "hosts",
        "ttl",
        "reason",
        "appliesTo",
        "sandboxMatchLabels",
        "agtProfile",
        "inline",
        "bundleRef",
        "tokenBudget",
        "dailyTokens",
        "monthlyTokens",
        "vertices",
        "edges",
        "alg",
        "score",
        "corpus",
        "builtin",
        "action",
        "type",
        "params",
        "approval",
        "state",
        "signingKeys",
        "federation",
        "sandboxRef",
        "storeName",
        "scope",
        "x",
    ]);
    leaf.prop_recursive(depth, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(keys.clone(), inner, 0..5).prop_map(|m| {
                serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

/// `kars validate` names every field the template and the upstream examples set that this
/// version does not enforce, with file and line (pinned in `unenforced-fields.txt`).
#[test]
fn golden_unenforced_fields_of_the_template_and_upstream_examples() {
    let mut repos = vec![(
        "repo-template".to_string(),
        manifest_dir().join("../repo-template"),
    )];
    for name in upstream_examples() {
        let path = manifest_dir().join("testdata/repos").join(&name);
        repos.push((name, path));
    }
    let mut out = String::new();
    for (name, path) in repos {
        let report = validate_tree(&load(&path));
        assert!(!report.has_errors(), "{name}: {report}");
        out.push_str(&format!("== {name}\n"));
        for d in report
            .diagnostics
            .iter()
            .filter(|d| d.message.contains("accepted, not enforced by this version"))
        {
            out.push_str(&format!("{d}\n"));
        }
        // The agent's list is the same set.
        let prepared = crate::prepare(&load(&path), None).expect("prepares");
        let warned = report
            .diagnostics
            .iter()
            .filter(|d| d.message.contains("accepted, not enforced by this version"))
            .count();
        assert_eq!(prepared.unenforced.len(), warned, "{name}");
    }
    check_golden("unenforced-fields.txt", &out);
}

/// Inference configured from Git: a provider without an endpoint for the cluster is refused at
/// its line; a cluster's entry replaces the repository-wide one; the router gets the endpoints
/// of the providers its policy names and the key mounted from the Secret.
#[test]
fn providers_come_from_kars_yaml_per_cluster() {
    let cfg = |providers: &str| {
        format!(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {{name: p}}\nspec:\n  defaultNamespace: agents\n{providers}  clusters:\n  - {{name: staging, paths: [agents], providers: {{b: {{endpoint: \"https://b-staging.example/v1\"}}}}}}\n  - {{name: prod, paths: [agents]}}\n"
        )
    };
    let sandbox = "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata: {name: a}\nspec:\n  runtime: {kind: OpenClaw, openclaw: {}}\n  sandbox: {}\n  inferenceRef: {name: ip}\n  governance: {enabled: false}\n";
    let policy = "apiVersion: kars.azure.com/v1alpha1\nkind: InferencePolicy\nmetadata: {name: ip}\nspec:\n  appliesTo: {sandboxName: a}\n  modelPreference:\n    primary: {provider: a, deployment: big}\n    fallback:\n    - {provider: b, deployment: small}\n";
    let tree = |providers: &str| {
        RepoTree::from_files([
            ("kars.yaml".to_string(), cfg(providers)),
            ("agents/a/sandbox.yaml".to_string(), sandbox.to_string()),
            ("agents/a/inference.yaml".to_string(), policy.to_string()),
        ])
    };
    // No provider anywhere: both targets refused, with their lines, for each cluster.
    let report = validate_tree(&tree("")).to_string();
    assert!(
        report.contains("agents/a/inference.yaml:7:")
            && report.contains("provider \"a\" has no endpoint for cluster \"prod\""),
        "{report}"
    );
    assert!(
        report.contains("spec.modelPreference.fallback[0].provider: provider \"b\" has no endpoint for cluster \"prod\""),
        "{report}"
    );
    assert!(
        !report.contains("provider \"b\" has no endpoint for cluster \"staging\""),
        "{report}"
    );
    // Repository-wide a and b: prod uses both; staging's own b replaces the shared one.
    let shared = "  providers:\n    a: {endpoint: \"https://a.example/v1\", credentials: {secretName: a-key, key: api-key}}\n    b: {endpoint: \"https://b.example/v1\"}\n";
    let t = tree(shared);
    assert!(!validate_tree(&t).has_errors(), "{}", validate_tree(&t));
    let env_of = |cluster: &str| {
        let r = render_tree(&t, Some(cluster), &Bundles::none()).expect("renders");
        let d = r
            .objects
            .iter()
            .find(|o| o.kind() == "Deployment")
            .expect("deployment")
            .manifest
            .clone();
        let router = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "inference-router").cloned())
            .expect("router");
        let env: std::collections::BTreeMap<String, String> = router["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_string(),
                    e["value"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        (d, env)
    };
    let (prod, env) = env_of("prod");
    assert_eq!(
        env["KARS_INFERENCE_PROVIDERS"],
        "a=https://a.example/v1,b=https://b.example/v1"
    );
    assert_eq!(
        env["KARS_INFERENCE_PROVIDER_KEY_FILES"],
        "a=/etc/kars/providers/a/key"
    );
    let volumes = prod["spec"]["template"]["spec"]["volumes"].to_string();
    assert!(volumes.contains("\"secretName\":\"a-key\""), "{volumes}");
    let (_, env) = env_of("staging");
    assert_eq!(
        env["KARS_INFERENCE_PROVIDERS"],
        "a=https://a.example/v1,b=https://b-staging.example/v1"
    );
}

/// What the router enforces from a ToolPolicy is checked before it gets there: the currency
/// syntax and `monthlyCap >= dailyCap` the CRD's descriptions promise, the approval mode, a
/// positive rate and a window of 1 s to 24 h — each at its line.
#[test]
fn tool_policy_amounts_caps_modes_and_rates_are_validated() {
    let cfg = "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: p}\nspec:\n  defaultNamespace: agents\n  clusters: [{name: c, paths: [policies]}]\n";
    let tp = |spec: &str| {
        format!(
            "apiVersion: kars.azure.com/v1alpha1\nkind: ToolPolicy\nmetadata: {{name: t}}\nspec:\n  appliesTo: {{tool: pay, sandboxMatchLabels: {{team: a}}}}\n  agtProfile: {{inline: 'policies: []'}}\n{spec}"
        )
    };
    let report = |spec: &str| {
        validate_tree(&RepoTree::from_files([
            ("kars.yaml".to_string(), cfg.to_string()),
            ("policies/t.yaml".to_string(), tp(spec)),
        ]))
        .to_string()
    };
    let ok = report(
        "  commerce: {dailyCap: USD 100.00, monthlyCap: USD 1000.00, perTransferCap: USD 50.00, counterpartyAllowlist: [acme.example]}\n  approval: {mode: aboveThreshold, threshold: USD 20.00}\n  rateLimit: {rps: 5, burst: 10, window: 1m}\n",
    );
    assert!(ok.lines().all(|l| l.contains(": warning: ")), "{ok}");
    let bad = report(
        "  commerce:\n    dailyCap: USD 100.00\n    monthlyCap: USD 10.00\n    perTransferCap: 50 USD\n  approval: {mode: sometimes, threshold: USD 1}\n  rateLimit: {rps: 0, window: 25h}\n",
    );
    for want in [
        "policies/t.yaml:9:",
        "spec.commerce.monthlyCap must be at least dailyCap",
        "policies/t.yaml:10:",
        "spec.commerce.perTransferCap: \"50 USD\" is not an amount like \"USD 100.00\"",
        "spec.approval.mode: \"sometimes\" is not never",
        "spec.approval.threshold: \"USD 1\" is not an amount",
        "spec.rateLimit.rps must be a positive number",
        "spec.rateLimit.window: \"25h\" is not a duration from 1s to 24h",
    ] {
        assert!(bad.contains(want), "missing {want:?} in:\n{bad}");
    }
    let mixed = report("  commerce: {dailyCap: USD 100.00, monthlyCap: EUR 1000.00}\n");
    assert!(
        mixed.contains("monthlyCap is in EUR and dailyCap in USD"),
        "{mixed}"
    );
    let no_threshold = report("  commerce: {counterpartyAllowlist: [a.example]}\n");
    assert!(
        no_threshold.contains(
            "warning: spec.approval: aboveThreshold (the default with commerce) without a threshold"
        ),
        "{no_threshold}"
    );
}

/// Who may reach a sandbox is explicit: the kars system on the router port, other sandboxes
/// only on the runtime gateway ports (never the router's 8443), and a sandbox reaches other
/// sandboxes only on those gateway ports too.
#[test]
fn other_sandboxes_reach_only_the_runtime_gateway_ports() {
    let tree = load(&manifest_dir().join("../repo-template"));
    let r = render_tree(&tree, None, &Bundles::none()).expect("renders");
    let np = &r
        .objects
        .iter()
        .find(|o| o.kind() == "NetworkPolicy")
        .expect("a NetworkPolicy")
        .manifest["spec"];
    let from_sandboxes = |rules: &serde_json::Value, side: &str| -> Vec<u64> {
        rules
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r[side]
                    .to_string()
                    .contains("\"kars.azure.com/role\":\"sandbox\"")
            })
            .flat_map(|r| r["ports"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["port"].as_u64())
            .collect()
    };
    assert_eq!(from_sandboxes(&np["ingress"], "from"), [18789, 18791]);
    assert_eq!(from_sandboxes(&np["egress"], "to"), [18789, 18791]);
    let system_ingress = np["ingress"][0].to_string();
    assert!(
        system_ingress.contains("\"app.kubernetes.io/component\":\"system\"")
            && system_ingress.contains("8443"),
        "{system_ingress}"
    );
}

#[test]
fn a_null_in_a_field_that_is_not_nullable_is_rendered_as_absent() {
    // `allowedEndpoints:` with nothing under it is YAML null. The API server prunes it on create,
    // but refuses it in a server-side apply ("must be of type array: null"), so it is not rendered.
    let cfg = "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: p}\nspec:\n  defaultNamespace: agents\n  providers:\n    a: {endpoint: \"https://a.example/v1\"}\n  clusters:\n  - {name: prod, paths: [agents]}\n";
    let sandbox = "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata: {name: a}\nspec:\n  runtime: {kind: OpenClaw, openclaw: {}}\n  sandbox: {}\n  inferenceRef: {name: ip}\n  governance: {enabled: false}\n  networkPolicy:\n    egressMode: Strict\n    allowedEndpoints:\n";
    let policy = "apiVersion: kars.azure.com/v1alpha1\nkind: InferencePolicy\nmetadata: {name: ip}\nspec:\n  appliesTo: {sandboxName: a}\n  modelPreference:\n    primary: {provider: a, deployment: big}\n";
    let tree = RepoTree::from_files([
        ("kars.yaml".to_string(), cfg.to_string()),
        ("agents/a/sandbox.yaml".to_string(), sandbox.to_string()),
        ("agents/a/inference.yaml".to_string(), policy.to_string()),
    ]);
    let report = validate_tree(&tree);
    assert!(!report.has_errors(), "{report}");
    let r = render_tree(&tree, None, &Bundles::none()).expect("renders");
    let sb = find(&r, "KarsSandbox", "a").expect("sandbox");
    let np = &sb.manifest["spec"]["networkPolicy"];
    assert_eq!(np["egressMode"], "Strict", "{np}");
    assert!(
        np.as_object()
            .is_some_and(|m| !m.contains_key("allowedEndpoints")),
        "null kept: {np}"
    );
}
