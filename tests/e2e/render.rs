//! The renderer against a real API server with the upstream kars CRDs installed: everything
//! `kars render` produces is accepted, and our validation agrees with the API server's schema
//! and CEL rules on a table of valid and invalid objects.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use kars_e2e::{Cluster, TestNamespace, install_kars_crds, kubectl_apply, workspace_root};
use kars_renderer::source::{RepoTree, SourceLimits};
use kars_renderer::{Bundles, output, render_tree};
use libtest_mimic::Trial;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "render::template_and_upstream_examples_are_accepted_by_the_api_server",
            rendered_sets_are_accepted,
        ),
        trial(
            "render::validation_agrees_with_the_api_server_on_schema_and_cel",
            validation_agrees_with_api_server,
        ),
    ]
}

fn render_file(repo: &Path, cluster: Option<&str>) -> Result<String> {
    let tree = RepoTree::from_dir(repo, SourceLimits::default())?;
    let rendered =
        render_tree(&tree, cluster, &Bundles::none()).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(output::to_yaml(&rendered)?)
}

fn rendered_sets_are_accepted() -> Result<()> {
    let cluster = Cluster::shared()?;
    install_kars_crds(cluster)?;
    let root = workspace_root();
    let mut cases: Vec<(String, std::path::PathBuf, Option<&str>)> =
        vec![("repo-template".into(), root.join("repo-template"), None)];
    let examples = std::fs::read_to_string(root.join("renderer/testdata/upstream-examples.txt"))?;
    for name in examples
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        cases.push((
            name.into(),
            root.join("renderer/testdata/repos").join(name),
            None,
        ));
    }
    ensure!(
        cases.len() == 9,
        "the template and 8 upstream examples: {cases:?}"
    );
    cases.push((
        "multi-cluster/staging".into(),
        root.join("renderer/testdata/repos/multi-cluster"),
        Some("staging"),
    ));
    cases.push((
        "multi-cluster/prod".into(),
        root.join("renderer/testdata/repos/multi-cluster"),
        Some("prod"),
    ));
    // The SRE namespace is the installation's (the chart creates it); repositories never render it.
    crate::sre::install_sre_identities(cluster)?;
    let mut failures = Vec::new();
    for (name, path, cluster_name) in &cases {
        let yaml = render_file(path, *cluster_name).with_context(|| format!("rendering {name}"))?;
        let objects = yaml.matches("\n---\n").count();
        let (ok, out) = kubectl_apply(cluster, &yaml, false)?;
        if !ok {
            failures.push(format!("{name}: the API server refused part of the rendered set ({objects} objects):\n{out}"));
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n\n"));
    }
    Ok(())
}

/// One object, valid or not, and what both validators must say.
struct Case {
    name: &'static str,
    kind: &'static str,
    spec: &'static str,
    valid: bool,
}

const CASES: &[Case] = &[
    Case {
        name: "egress-ok",
        kind: "EgressApproval",
        valid: true,
        spec: "sandbox: a\nhosts: [{host: pypi.org}]\nreason: install\nttl: PT4H",
    },
    Case {
        name: "egress-zero-ttl",
        kind: "EgressApproval",
        valid: false,
        spec: "sandbox: a\nhosts: [{host: pypi.org}]\nreason: install\nttl: PT0S",
    },
    Case {
        name: "egress-bad-ttl",
        kind: "EgressApproval",
        valid: false,
        spec: "sandbox: a\nhosts: [{host: pypi.org}]\nreason: install\nttl: 4h",
    },
    Case {
        name: "egress-17-hosts",
        kind: "EgressApproval",
        valid: false,
        spec: "sandbox: a\nhosts: [{host: a1},{host: a2},{host: a3},{host: a4},{host: a5},{host: a6},{host: a7},{host: a8},{host: a9},{host: b1},{host: b2},{host: b3},{host: b4},{host: b5},{host: b6},{host: b7},{host: b8}]\nreason: x\nttl: PT1H",
    },
    Case {
        name: "egress-control-byte",
        kind: "EgressApproval",
        valid: false,
        spec: "sandbox: a\nhosts: [{host: pypi.org}]\nreason: \"bad\\u0001reason\"\nttl: PT1H",
    },
    Case {
        name: "inference-ok",
        kind: "InferencePolicy",
        valid: true,
        spec: "appliesTo: {sandboxName: a, action: chat}\nmodelPreference: {primary: {provider: p, deployment: d}}\ntokenBudget: {dailyTokens: 10, monthlyTokens: 100}",
    },
    Case {
        name: "inference-monthly-below-daily",
        kind: "InferencePolicy",
        valid: false,
        spec: "appliesTo: {sandboxName: a}\ntokenBudget: {dailyTokens: 100, monthlyTokens: 10}",
    },
    Case {
        name: "inference-bad-action",
        kind: "InferencePolicy",
        valid: false,
        spec: "appliesTo: {action: video}",
    },
    Case {
        name: "inference-bad-severity",
        kind: "InferencePolicy",
        valid: false,
        spec: "appliesTo: {}\ncontentSafety: {hate: Extreme}",
    },
    Case {
        name: "inference-bundle-and-inline",
        kind: "InferencePolicy",
        valid: false,
        spec: "appliesTo: {}\ndisplayName: x\nbundleRef: {registry: r.example, repository: p, digest: 'sha256:00', artifactType: t}",
    },
    Case {
        name: "tools-ok",
        kind: "ToolPolicy",
        valid: true,
        spec: "appliesTo: {sandboxMatchLabels: {team: a}}\nagtProfile: {inline: 'version: \"1\"'}",
    },
    Case {
        name: "tools-empty-selector",
        kind: "ToolPolicy",
        valid: false,
        spec: "appliesTo: {sandboxMatchLabels: {}}",
    },
    Case {
        name: "tools-inline-and-bundle",
        kind: "ToolPolicy",
        valid: false,
        spec: "appliesTo: {sandboxMatchLabels: {a: b}}\nagtProfile: {inline: x, bundleRef: {registry: r, repository: p, digest: 'sha256:00', artifactType: t}}",
    },
    Case {
        name: "sandbox-ok",
        kind: "KarsSandbox",
        valid: true,
        spec: "runtime: {kind: BYO, byo: {image: x, contractVersion: v1}}\nsandbox: {}\ninferenceRef: {name: ip}",
    },
    Case {
        name: "sandbox-wrong-runtime-block",
        kind: "KarsSandbox",
        valid: false,
        spec: "runtime: {kind: OpenClaw, hermes: {}}\nsandbox: {}\ninferenceRef: {name: ip}",
    },
    Case {
        name: "sandbox-byo-with-agent",
        kind: "KarsSandbox",
        valid: false,
        spec: "runtime: {kind: BYO, byo: {image: x, contractVersion: v1}}\nagent: {instructions: hi}\nsandbox: {}\ninferenceRef: {name: ip}",
    },
    Case {
        name: "sandbox-governance-without-policy",
        kind: "KarsSandbox",
        valid: false,
        spec: "runtime: {kind: BYO, byo: {image: x, contractVersion: v1}}\nsandbox: {}\ninferenceRef: {name: ip}\ngovernance: {enabled: true}",
    },
    Case {
        name: "sandbox-trust-threshold",
        kind: "KarsSandbox",
        valid: false,
        spec: "runtime: {kind: BYO, byo: {image: x, contractVersion: v1}}\nsandbox: {}\ninferenceRef: {name: ip}\ngovernance: {trustThreshold: 2000}",
    },
    Case {
        name: "sandbox-duplicate-mcp",
        kind: "KarsSandbox",
        valid: false,
        spec: "runtime: {kind: BYO, byo: {image: x, contractVersion: v1}}\nsandbox: {}\ninferenceRef: {name: ip}\ngovernance: {mcpServerRefs: [{name: m}, {name: m}]}",
    },
    Case {
        name: "sandbox-agentcode-both",
        kind: "KarsSandbox",
        valid: false,
        spec: "runtime: {kind: Anthropic, anthropic: {agentCode: {oci: {image: x}, git: {url: y}}}}\nsandbox: {}\ninferenceRef: {name: ip}",
    },
    Case {
        name: "sandbox-bad-enum",
        kind: "KarsSandbox",
        valid: false,
        spec: "runtime: {kind: BYO, byo: {image: x, contractVersion: v1}}\nsandbox: {isolation: paranoid}\ninferenceRef: {name: ip}",
    },
    Case {
        name: "sandbox-bad-ref-name",
        kind: "KarsSandbox",
        valid: false,
        spec: "runtime: {kind: BYO, byo: {image: x, contractVersion: v1}}\nsandbox: {}\ninferenceRef: {name: Bad_Name}",
    },
    Case {
        name: "trust-bad-alg",
        kind: "TrustGraph",
        valid: false,
        spec: "vertices: [{id: a, alg: RSA, publicKeyB64u: x}]",
    },
    Case {
        name: "trust-ok",
        kind: "TrustGraph",
        valid: true,
        spec: "vertices: [{id: a, alg: EdDSA, publicKeyB64u: x}]\nedges: [{from: a, to: a, score: 10, issuedAt: 5, notAfter: 6, signature: s}]",
    },
    Case {
        name: "trust-not-after-before-issued",
        kind: "TrustGraph",
        valid: false,
        spec: "vertices: [{id: a, alg: EdDSA, publicKeyB64u: x}]\nedges: [{from: a, to: a, score: 10, issuedAt: 5, notAfter: 1, signature: s}]",
    },
    Case {
        name: "mcp-pkce-plain",
        kind: "McpServer",
        valid: false,
        spec: "url: https://m.example\noauth: {issuer: https://i.example, pkce: plain}",
    },
    Case {
        name: "mcp-production-http",
        kind: "McpServer",
        valid: false,
        spec: "url: http://m.example\nproductionMode: true\noauth: {issuer: https://i.example}",
    },
    Case {
        name: "memory-bad-store",
        kind: "KarsMemory",
        valid: false,
        spec: "sandboxRef: {name: a}\nstoreName: Bad_Name\nscope: s",
    },
    Case {
        name: "memory-ok",
        kind: "KarsMemory",
        valid: true,
        spec: "sandboxRef: {name: a}\nstoreName: mem-a\nscope: agent_a",
    },
    Case {
        name: "eval-both-corpora",
        kind: "KarsEval",
        valid: false,
        spec: "targetSandboxRef: {name: a}\ncorpus: {builtin: jailbreak-baseline, bundleRef: {registry: r, repository: p, digest: 'sha256:00', artifactType: t}}",
    },
    Case {
        name: "eval-bad-schedule",
        kind: "KarsEval",
        valid: false,
        spec: "targetSandboxRef: {name: a}\ncorpus: {builtin: x}\nschedule: '* *'",
    },
    Case {
        name: "sre-unknown-action",
        kind: "KarsSREAction",
        valid: false,
        spec: "action: {type: Reboot, params: {}}\napproval: {state: Pending}",
    },
    Case {
        name: "sre-ttl-too-long",
        kind: "KarsSREAction",
        valid: false,
        spec: "action: {type: DeletePod, params: {namespace: a, name: b}}\napproval: {state: Pending}\nttlMinutes: 90",
    },
    Case {
        name: "a2a-external-without-kid",
        kind: "A2AAgent",
        valid: false,
        spec: "endpointUrl: https://a.example\nsigningKeys: [{kid: k, alg: EdDSA, publicKeyB64u: x}]\nfederation: [{kind: external, label: l, endpointUrl: https://b.example}]",
    },
    Case {
        name: "unknown-field",
        kind: "ToolPolicy",
        valid: false,
        spec: "appliesTo: {sandboxMatchLabels: {a: b}}\nratelimit: {rps: 1}",
    },
];

fn validation_agrees_with_api_server() -> Result<()> {
    let cluster = Cluster::shared()?;
    install_kars_crds(cluster)?;
    let ns = TestNamespace::create(cluster, "cel-parity")?;
    let config = "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {name: parity}\nspec:\n  clusters: [{name: c, paths: [x]}]\n";
    let mut disagreements = Vec::new();
    for case in CASES {
        let scoped = !matches!(case.kind, "TrustGraph" | "KarsAuthConfig");
        let meta = if scoped {
            format!(
                "metadata: {{name: {}, namespace: {}}}",
                case.name,
                ns.name()
            )
        } else {
            format!("metadata: {{name: {}-{}}}", case.name, ns.name())
        };
        let spec: String = case.spec.lines().map(|l| format!("  {l}\n")).collect();
        let yaml = format!(
            "apiVersion: kars.azure.com/v1alpha1\nkind: {}\n{meta}\nspec:\n{spec}",
            case.kind
        );
        let tree = RepoTree::from_files([
            ("kars.yaml".to_string(), config.to_string()),
            ("x/obj.yaml".to_string(), yaml.clone()),
        ]);
        let (_, report) = kars_renderer::repo::load(&tree);
        let ours = !report.has_errors();
        let (theirs, out) = kubectl_apply(cluster, &yaml, true)?;
        if ours != case.valid || theirs != case.valid {
            disagreements.push(format!(
                "{} ({}): expected valid={}, ours={ours}, API server={theirs}\n  ours: {}\n  API server: {}",
                case.name,
                case.kind,
                case.valid,
                report.to_string().trim(),
                out.trim()
            ));
        }
    }
    ensure!(
        disagreements.is_empty(),
        "{} of {} cases disagree:\n{}",
        disagreements.len(),
        CASES.len(),
        disagreements.join("\n")
    );
    Ok(())
}
