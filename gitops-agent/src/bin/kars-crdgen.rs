//! `kars-crdgen`: writes the CRDs of kars GitOps' own group (`gitops.kars.io`), generated from
//! the Rust types, into the chart.
//!
//! ```text
//! kars-crdgen                      # print them
//! kars-crdgen --write charts/kars-gitops/crds
//! kars-crdgen --check charts/kars-gitops/crds   # exit 1 when the chart's copy drifted
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

/// File name → manifest, for every CRD of the group.
fn crds() -> Vec<(&'static str, String)> {
    vec![(
        "policyrepos.gitops.kars.io.yaml",
        kars_gitops_agent::status::crd_yaml(),
    )]
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            for (i, (_, yaml)) in crds().iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{yaml}");
            }
            ExitCode::SUCCESS
        }
        [flag, dir] if flag == "--write" || flag == "--check" => {
            let dir = PathBuf::from(dir);
            let mut drifted = 0;
            for (file, yaml) in crds() {
                let path = dir.join(file);
                if flag == "--write" {
                    if let Err(e) = std::fs::write(&path, &yaml) {
                        eprintln!("kars-crdgen: writing {}: {e}", path.display());
                        return ExitCode::from(2);
                    }
                    println!("wrote {}", path.display());
                } else if std::fs::read_to_string(&path).ok().as_deref() != Some(yaml.as_str()) {
                    eprintln!(
                        "kars-crdgen: {} differs from the Rust types; run: cargo run -p kars-gitops-agent --bin kars-crdgen -- --write {}",
                        path.display(),
                        dir.display()
                    );
                    drifted += 1;
                }
            }
            if drifted > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            eprintln!(
                "usage: kars-crdgen [--write DIR | --check DIR]\n  prints (or writes, or checks) the CRDs of group gitops.kars.io generated from the Rust types"
            );
            ExitCode::from(2)
        }
    }
}
