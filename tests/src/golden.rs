//! Golden files for CLI text: what a command printed, with the parts that change from run to
//! run (temporary paths, names, commit ids, digests, ports, times) replaced by placeholders,
//! compared with `tests/golden/<name>.txt`. `KARS_UPDATE_GOLDEN=1` rewrites the files.

use std::path::PathBuf;

use anyhow::{Result, bail};

/// Replaces what varies between runs with stable placeholders.
#[derive(Default)]
pub struct Normalizer {
    literal: Vec<(String, String)>,
    columns: bool,
}

impl Normalizer {
    /// Replaces every occurrence of `from` with `<to>` (longest first when applied).
    pub fn replace(mut self, from: impl Into<String>, to: &str) -> Self {
        let from = from.into();
        if !from.is_empty() {
            self.literal.push((from, format!("<{to}>")));
        }
        self
    }

    /// Collapses column padding (runs of spaces) to two spaces: tables whose widths follow
    /// names of varying length compare equal.
    pub fn columns(mut self) -> Self {
        self.columns = true;
        self
    }

    /// The normalized text.
    pub fn apply(&self, text: &str) -> String {
        let mut literal = self.literal.clone();
        literal.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
        let mut out = text.to_string();
        for (from, to) in &literal {
            out = out.replace(from.as_str(), to);
        }
        let patterns: [(&str, &str); 7] = [
            (r"sha256:[0-9a-f]{64}", "<DIGEST>"),
            (r"\b[0-9a-f]{40}\b", "<COMMIT>"),
            (r"\b[0-9a-f]{12}\b", "<SHORT>"),
            (r"https://127\.0\.0\.1:[0-9]+", "<SERVER>"),
            (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<TIME>"),
            (r"\[ *\d+\.\ds\]", "[<T>]"),
            (r"\b\d+[smhd]( {2,}|\b)", "<AGE>$1"),
        ];
        for (pattern, to) in patterns {
            if let Ok(re) = regex::Regex::new(pattern) {
                out = re.replace_all(&out, to).into_owned();
            }
        }
        if self.columns
            && let Ok(re) = regex::Regex::new(" {2,}")
        {
            out = re.replace_all(&out, "  ").into_owned();
        }
        out
    }
}

fn path_of(name: &str) -> PathBuf {
    crate::workspace_root()
        .join("tests/golden")
        .join(format!("{name}.txt"))
}

/// Compares `actual` with the golden file `name` (rewrites it under `KARS_UPDATE_GOLDEN=1`).
pub fn check(name: &str, actual: &str) -> Result<()> {
    let path = path_of(name);
    if std::env::var_os("KARS_UPDATE_GOLDEN").is_some() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, actual)?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let diff = similar::TextDiff::from_lines(&expected, actual)
            .unified_diff()
            .header(&format!("{}", path.display()), "actual")
            .to_string();
        bail!(
            "{name}: the output differs from {} (KARS_UPDATE_GOLDEN=1 rewrites it after review):\n{diff}",
            path.display()
        );
    }
    Ok(())
}
