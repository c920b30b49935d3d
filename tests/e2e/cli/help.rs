//! `--help` of every command is golden text, and the README carries `kars --help` (the command
//! list and the exit-code table) word for word; `version` and `completion` work.

use anyhow::{Result, ensure};
use kars_e2e::golden::{self, Normalizer};
use libtest_mimic::Trial;

use super::{expect_code, kars_at};
use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial("cli::help_of_every_command_is_golden", help_is_golden),
        trial("cli::readme_carries_kars_help", readme_carries_help),
        trial("cli::version_and_completion", version_and_completion),
    ]
}

const COMMANDS: [&[&str]; 41] = [
    &[],
    &["init"],
    &["validate"],
    &["render"],
    &["verify"],
    &["sync"],
    &["diff"],
    &["get"],
    &["status"],
    &["events"],
    &["why"],
    &["trace"],
    &["reconcile"],
    &["suspend"],
    &["resume"],
    &["delete"],
    &["policy"],
    &["policy", "sign"],
    &["policy", "verify"],
    &["policy", "canonicalize"],
    &["policy", "kinds"],
    &["audit"],
    &["audit", "verify"],
    &["audit", "key"],
    &["audit", "syncs"],
    &["sre"],
    &["sre", "propose"],
    &["sre", "actions"],
    &["sre", "show"],
    &["sre", "approve"],
    &["sre", "reject"],
    &["egress"],
    &["egress", "learned"],
    &["egress", "approve"],
    &["egress", "deny"],
    &["egress", "allow-extra"],
    &["egress", "approvals"],
    &["egress", "revoke"],
    &["version"],
    &["completion"],
    &["help"],
];

fn help_is_golden() -> Result<()> {
    let mut failures = Vec::new();
    for path in COMMANDS {
        let mut args: Vec<&str> = path.to_vec();
        if path != ["help"] {
            args.push("--help");
        }
        let out = kars_at(None, &args, &[])?;
        expect_code(&format!("kars {}", args.join(" ")), &out, 0)?;
        let name = if path.is_empty() {
            "kars".to_string()
        } else {
            format!("kars-{}", path.join("-"))
        };
        if let Err(e) = golden::check(&format!("cli/help/{name}"), &out.stdout) {
            failures.push(e.to_string());
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

const START: &str =
    "<!-- kars --help: generated, checked by cli::readme_carries_kars_help -->\n```text\n";
const END: &str = "```\n<!-- end of kars --help -->";

fn readme_carries_help() -> Result<()> {
    let help = kars_at(None, &["--help"], &[])?.stdout;
    let path = kars_e2e::workspace_root().join("README.md");
    let readme = std::fs::read_to_string(&path)?;
    let (Some(a), Some(b)) = (readme.find(START), readme.find(END)) else {
        anyhow::bail!("README.md has no `kars --help` section between the markers");
    };
    let current = &readme[a + START.len()..b];
    if current == help {
        return Ok(());
    }
    if std::env::var_os("KARS_UPDATE_GOLDEN").is_some() {
        let updated = format!("{}{help}{}", &readme[..a + START.len()], &readme[b..]);
        std::fs::write(&path, updated)?;
        return Ok(());
    }
    anyhow::bail!("README.md's copy of `kars --help` is stale (KARS_UPDATE_GOLDEN=1 rewrites it)")
}

fn version_and_completion() -> Result<()> {
    let v = kars_at(None, &["version"], &[])?;
    expect_code("kars version", &v, 0)?;
    golden::check("cli/version", &Normalizer::default().apply(&v.stdout))?;
    let j = kars_at(None, &["version", "-o", "json"], &[])?;
    let doc: serde_json::Value = serde_json::from_str(&j.stdout)?;
    ensure!(doc["karsApi"] == "kars.azure.com/v1alpha1", "{doc}");
    ensure!(
        doc["commit"].as_str().is_some_and(|c| c.len() == 40),
        "{doc}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let c = kars_at(None, &["completion", shell], &[])?;
        expect_code(shell, &c, 0)?;
        for verb in ["reconcile", "trace", "suspend", "namespace"] {
            ensure!(c.stdout.contains(verb), "{shell} completion lacks {verb}");
        }
    }
    let bad = kars_at(None, &["completion", "tcsh"], &[])?;
    expect_code("completion tcsh", &bad, 2)?;
    Ok(())
}
