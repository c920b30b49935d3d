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

#[test]
fn golden_upstream_examples() {
    for name in [
        "basic-agent",
        "byo-quickstart",
        "confidential-agent",
        "demo-clawshield",
        "full-stack-demo",
        "maf-quickstart",
        "openai-agents-quickstart",
        "telegram-agent",
    ] {
        render_golden(
            &manifest_dir().join("testdata/repos").join(name),
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
    let digest = crate::canonical::policy_digest("allowlist.json", body.as_bytes());
    assert_eq!(
        cm.manifest["metadata"]["annotations"]["kars.azure.com/egress-allowlist-digest"],
        digest.as_str()
    );
    assert!(body.contains("api.github.com"));
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
                a.remove(crate::render::SOURCE_ANNOTATION);
                a.remove(crate::render::OBJECT_DIGEST_ANNOTATION);
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
