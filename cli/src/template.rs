//! The policy-repository template `kars init` writes (the files of `repo-template/`).

/// `(relative path, contents)` of every template file.
pub const FILES: &[(&str, &str)] = &[
    (
        ".github/workflows/validate.yaml",
        include_str!("../../repo-template/.github/workflows/validate.yaml"),
    ),
    ("CODEOWNERS", include_str!("../../repo-template/CODEOWNERS")),
    ("README.md", include_str!("../../repo-template/README.md")),
    (
        "agents/hello-agent/inference.yaml",
        include_str!("../../repo-template/agents/hello-agent/inference.yaml"),
    ),
    (
        "agents/hello-agent/sandbox.yaml",
        include_str!("../../repo-template/agents/hello-agent/sandbox.yaml"),
    ),
    (
        "agents/hello-agent/tools.yaml",
        include_str!("../../repo-template/agents/hello-agent/tools.yaml"),
    ),
    (
        "egress/README.md",
        include_str!("../../repo-template/egress/README.md"),
    ),
    ("kars.yaml", include_str!("../../repo-template/kars.yaml")),
    (
        "policies/kars-default.yaml",
        include_str!("../../repo-template/policies/kars-default.yaml"),
    ),
    (
        "sre/README.md",
        include_str!("../../repo-template/sre/README.md"),
    ),
];

#[cfg(test)]
mod tests {
    use std::path::Path;

    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).expect("read template dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(
                    p.strip_prefix(root)
                        .expect("prefix")
                        .to_string_lossy()
                        .replace('\\', "/"),
                );
            }
        }
    }

    #[test]
    fn template_list_matches_repo_template_directory() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../repo-template");
        let mut on_disk = Vec::new();
        walk(&root, &root, &mut on_disk);
        on_disk.sort();
        let listed: Vec<String> = super::FILES.iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(
            on_disk, listed,
            "cli/src/template.rs must list every file of repo-template/"
        );
    }
}
