//! Line edits of a policy file that keep every line they do not change: comments, key order,
//! quoting and the other documents of the file. Used where kars proposes a change to a file a
//! person wrote (`kars egress approve|deny|revoke`, the agent's removal of expired grants), so
//! the pull request's diff shows only the change.
//!
//! The edits work on block-style YAML (what `kars init` and the docs write); a flow-style
//! value (`{…}`, `[…]` on the key's line) on the way is refused rather than rewritten. Callers
//! re-parse the result and compare it with what they meant to write before proposing it.

use crate::yaml::{Node, Value};

/// Why an edit cannot be made as a line edit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EditError {
    /// A value on the path is written in flow style.
    #[error(
        "{path} (line {line}) is written in flow style ({{…}} or […]); rewrite it in block style or edit the file by hand"
    )]
    Flow {
        /// The dotted path.
        path: String,
        /// Its line.
        line: u32,
    },
    /// A value on the path is not a mapping.
    #[error("{path} (line {line}) is not a mapping")]
    NotMapping {
        /// The dotted path.
        path: String,
        /// Its line.
        line: u32,
    },
    /// The document has no position information.
    #[error("the document's position is unknown")]
    NoPosition,
}

/// Indentation (spaces) of a line; `None` for blank lines.
fn indent_of(line: &str) -> Option<usize> {
    if line.trim().is_empty() {
        None
    } else {
        Some(line.len() - line.trim_start_matches(' ').len())
    }
}

/// True for a line that ends a document (`---`, `...`).
fn is_document_marker(line: &str) -> bool {
    let t = line.trim_end();
    t == "---" || t.starts_with("--- ") || t == "..."
}

/// The last line (0-based, inclusive) of the block that starts with a key at 0-based line
/// `start` indented by `indent`: every following line that is blank or indented deeper, with
/// trailing blank lines left out (an indentless sequence's entries belong to it too).
fn block_end(lines: &[&str], start: usize, indent: usize) -> usize {
    let mut end = start;
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        if is_document_marker(line) {
            break;
        }
        match indent_of(line) {
            None => {}
            Some(n) if n > indent => end = i,
            // An indentless sequence (`key:` then `- item` at the key's indentation): in a
            // mapping nothing else at that indentation starts with a dash.
            Some(n)
                if n == indent && (line.trim_start().starts_with("- ") || line.trim() == "-") =>
            {
                end = i;
            }
            Some(_) => break,
        }
    }
    end
}

/// `value_lines` (a block YAML value at indentation 0) under `key`, indented by `indent`.
fn keyed_block(key: &str, value_lines: &[String], indent: usize) -> Vec<String> {
    let pad = " ".repeat(indent);
    if value_lines.len() == 1 && !value_lines[0].starts_with("- ") && !value_lines[0].contains(": ")
    {
        // A scalar or an empty collection: on the key's line.
        return vec![format!("{pad}{key}: {}", value_lines[0])];
    }
    let mut out = vec![format!("{pad}{key}:")];
    out.extend(value_lines.iter().map(|l| format!("{pad}  {l}")));
    out
}

/// `keys` nested as block mappings, the last one holding `value_lines`, at indentation 0.
fn nested(keys: &[&str], value_lines: &[String]) -> Vec<String> {
    let Some((last, outer)) = keys.split_last() else {
        return value_lines.to_vec();
    };
    let mut block = keyed_block(last, value_lines, 0);
    for k in outer.iter().rev() {
        let mut wrapped = vec![format!("{k}:")];
        wrapped.extend(block.into_iter().map(|l| format!("  {l}")));
        block = wrapped;
    }
    block
}

fn join(lines: &[String], trailing_newline: bool) -> String {
    let mut s = lines.join("\n");
    if trailing_newline {
        s.push('\n');
    }
    s
}

/// Sets `path` (mapping keys from the document root) of the document `doc` in `text` to the
/// block value `value_lines` (YAML at indentation 0, one entry per line, e.g. `["- host: a",
/// "  port: 443"]`, or `["[]"]`). An existing value is replaced with its key's line and every
/// line under it; missing keys are added at the end of the deepest mapping that exists.
pub fn set_block(
    text: &str,
    doc: &Node,
    path: &[&str],
    value_lines: &[String],
) -> Result<String, EditError> {
    if doc.pos.line == 0 {
        return Err(EditError::NoPosition);
    }
    let lines: Vec<&str> = text.lines().collect();
    let trailing = text.ends_with('\n');
    let mut node = doc;
    // (key line 0-based, key indent) of the deepest existing key on the path.
    let mut parent: Option<(usize, usize)> = None;
    for (depth, key) in path.iter().enumerate() {
        let dotted = path[..=depth].join(".");
        if let (Value::Null, Some((pl, pi))) = (&node.value, parent) {
            // `key:` with no value: the key's line becomes the new block.
            let end = block_end(&lines, pl, pi);
            let pad = " ".repeat(pi);
            let mut out: Vec<String> = lines[..pl].iter().map(|s| s.to_string()).collect();
            out.extend(
                nested(&path[depth - 1..], value_lines)
                    .into_iter()
                    .map(|l| format!("{pad}{l}")),
            );
            out.extend(lines[end + 1..].iter().map(|s| s.to_string()));
            return Ok(join(&out, trailing));
        }
        let Value::Map(entries) = &node.value else {
            return Err(EditError::NotMapping {
                path: path[..depth].join("."),
                line: node.pos.line,
            });
        };
        if parent.is_some_and(|(l, _)| node.pos.line as usize == l + 1) && !entries.is_empty() {
            // A non-empty mapping whose first entry is on its key's line: flow style.
            return Err(EditError::Flow {
                path: path[..depth].join("."),
                line: node.pos.line,
            });
        }
        match entries.iter().find(|(k, _)| k.name == *key) {
            Some((k, v)) => {
                let (line, indent) = (k.pos.line as usize - 1, k.pos.column as usize - 1);
                let on_key_line = v.pos.line == k.pos.line;
                let is_collection = matches!(v.value, Value::Map(_) | Value::Seq(_));
                if on_key_line && is_collection {
                    return Err(EditError::Flow {
                        path: dotted,
                        line: k.pos.line,
                    });
                }
                parent = Some((line, indent));
                node = v;
            }
            None => {
                // Insert the missing keys at the end of this mapping's block.
                let (child_indent, after) = match (entries.first(), parent) {
                    (Some((first, _)), Some((pl, pi))) => {
                        (first.pos.column as usize - 1, block_end(&lines, pl, pi))
                    }
                    (None, Some((pl, pi))) => (pi + 2, pl),
                    (Some((first, _)), None) => {
                        let indent = first.pos.column as usize - 1;
                        let last = entries.last().map_or(first, |(k, _)| k);
                        (
                            indent,
                            block_end(&lines, last.pos.line as usize - 1, indent),
                        )
                    }
                    (None, None) => return Err(EditError::NoPosition),
                };
                if matches!(&node.value, Value::Map(e) if e.is_empty())
                    && parent.is_some_and(|(pl, _)| node.pos.line as usize == pl + 1)
                {
                    return Err(EditError::Flow {
                        path: path[..depth].join("."),
                        line: node.pos.line,
                    });
                }
                let block = nested(&path[depth..], value_lines);
                let pad = " ".repeat(child_indent);
                let mut out: Vec<String> = lines[..=after].iter().map(|s| s.to_string()).collect();
                out.extend(block.into_iter().map(|l| format!("{pad}{l}")));
                out.extend(lines[after + 1..].iter().map(|s| s.to_string()));
                return Ok(join(&out, trailing));
            }
        }
    }
    let Some((line, indent)) = parent else {
        return Err(EditError::NoPosition);
    };
    let end = block_end(&lines, line, indent);
    let mut out: Vec<String> = lines[..line].iter().map(|s| s.to_string()).collect();
    out.extend(keyed_block(path[path.len() - 1], value_lines, indent));
    out.extend(lines[end + 1..].iter().map(|s| s.to_string()));
    Ok(join(&out, trailing))
}

/// `text` without the document that starts at 1-based line `doc_line` (its `---` separator
/// and the comments before it included). `None` when nothing else of substance is left (the
/// file should be deleted).
pub fn remove_document(text: &str, doc_line: u32) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let at = (doc_line as usize).saturating_sub(1).min(lines.len());
    // The separator before the document (or the file start).
    let start = lines[..at]
        .iter()
        .rposition(|l| is_document_marker(l))
        .map_or(0, |i| i);
    let start_is_marker = lines.get(start).is_some_and(|l| is_document_marker(l)) && start < at;
    // The next separator after the document (or the end).
    let next = lines[at..]
        .iter()
        .position(|l| is_document_marker(l))
        .map_or(lines.len(), |i| at + i);
    let (from, to) = if start_is_marker {
        (start, next)
    } else {
        // The first document: drop up to and including the separator after it.
        (0, (next + 1).min(lines.len()))
    };
    let kept: Vec<String> = lines[..from]
        .iter()
        .chain(lines[to..].iter())
        .map(|s| s.to_string())
        .collect();
    let substance = kept.iter().any(|l| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && !is_document_marker(l)
    });
    substance.then(|| join(&kept, text.ends_with('\n')))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{YamlLimits, parse_documents};

    fn doc(text: &str, i: usize) -> Node {
        parse_documents(text, YamlLimits::default()).expect("ok")[i].clone()
    }

    fn eps(hosts: &[(&str, u16)]) -> Vec<String> {
        hosts
            .iter()
            .flat_map(|(h, p)| [format!("- host: {h}"), format!("  port: {p}")])
            .collect()
    }

    const SANDBOX: &str = "# the agent\nkind: KarsSandbox\nmetadata:\n  name: a\nspec:\n  networkPolicy:\n    # Strict: only these\n    egressMode: Strict\n    allowedEndpoints:\n      # the API\n      - host: api.github.com\n        port: 443\n\n    defaultDeny: true\n  other: 1\n";

    #[test]
    fn an_existing_list_is_replaced_and_nothing_else_moves() {
        let out = set_block(
            SANDBOX,
            &doc(SANDBOX, 0),
            &["spec", "networkPolicy", "allowedEndpoints"],
            &eps(&[("api.github.com", 443), ("pypi.org", 443)]),
        )
        .expect("ok");
        assert_eq!(
            out,
            "# the agent\nkind: KarsSandbox\nmetadata:\n  name: a\nspec:\n  networkPolicy:\n    # Strict: only these\n    egressMode: Strict\n    allowedEndpoints:\n      - host: api.github.com\n        port: 443\n      - host: pypi.org\n        port: 443\n\n    defaultDeny: true\n  other: 1\n"
        );
        let empty = set_block(
            SANDBOX,
            &doc(SANDBOX, 0),
            &["spec", "networkPolicy", "allowedEndpoints"],
            &["[]".to_string()],
        )
        .expect("ok");
        assert!(empty.contains("    allowedEndpoints: []\n\n    defaultDeny: true\n"));
    }

    #[test]
    fn missing_keys_are_added_at_the_end_of_the_deepest_mapping() {
        let text = "kind: KarsSandbox\nspec:\n  runtime:\n    kind: OpenClaw\n  sandbox: {isolation: enhanced}\n---\nkind: Other\n";
        let out = set_block(
            text,
            &doc(text, 0),
            &["spec", "networkPolicy", "allowedEndpoints"],
            &eps(&[("pypi.org", 443)]),
        )
        .expect("ok");
        assert_eq!(
            out,
            "kind: KarsSandbox\nspec:\n  runtime:\n    kind: OpenClaw\n  sandbox: {isolation: enhanced}\n  networkPolicy:\n    allowedEndpoints:\n      - host: pypi.org\n        port: 443\n---\nkind: Other\n"
        );
        let null = "kind: KarsSandbox\nspec:\n  networkPolicy:\n  other: 1\n";
        let out = set_block(
            null,
            &doc(null, 0),
            &["spec", "networkPolicy", "allowedEndpoints"],
            &eps(&[("pypi.org", 443)]),
        )
        .expect("ok");
        assert_eq!(
            out,
            "kind: KarsSandbox\nspec:\n  networkPolicy:\n    allowedEndpoints:\n      - host: pypi.org\n        port: 443\n  other: 1\n"
        );
        let top = "kind: KarsSandbox\nmetadata:\n  name: a\n";
        let out = set_block(top, &doc(top, 0), &["spec", "x"], &["1".to_string()]).expect("ok");
        assert_eq!(
            out,
            "kind: KarsSandbox\nmetadata:\n  name: a\nspec:\n  x: 1\n"
        );
    }

    #[test]
    fn flow_style_is_refused_not_rewritten() {
        let text = "kind: KarsSandbox\nspec:\n  networkPolicy: {allowedEndpoints: [{host: a, port: 443}]}\n";
        let e = set_block(
            text,
            &doc(text, 0),
            &["spec", "networkPolicy", "allowedEndpoints"],
            &eps(&[("b", 443)]),
        )
        .expect_err("refused");
        assert!(matches!(e, EditError::Flow { line: 3, .. }), "{e:?}");
        let text = "kind: KarsSandbox\nspec:\n  networkPolicy:\n    allowedEndpoints: [{host: a, port: 443}]\n";
        let e = set_block(
            text,
            &doc(text, 0),
            &["spec", "networkPolicy", "allowedEndpoints"],
            &eps(&[("b", 443)]),
        )
        .expect_err("refused");
        assert!(matches!(e, EditError::Flow { line: 4, .. }), "{e:?}");
    }

    #[test]
    fn the_second_document_is_edited_in_place() {
        let text =
            "kind: A\nspec:\n  x: 1\n---\n# b\nkind: B\nspec:\n  list:\n  - one\n---\nkind: C\n";
        let out = set_block(
            text,
            &doc(text, 1),
            &["spec", "list"],
            &["- two".to_string()],
        )
        .expect("ok");
        assert_eq!(
            out,
            "kind: A\nspec:\n  x: 1\n---\n# b\nkind: B\nspec:\n  list:\n    - two\n---\nkind: C\n"
        );
    }

    #[test]
    fn documents_are_removed_with_their_separator() {
        let text = "kind: A\n---\n# about b\nkind: B\nx: 1\n---\nkind: C\n";
        assert_eq!(
            remove_document(text, 4).as_deref(),
            Some("kind: A\n---\nkind: C\n")
        );
        assert_eq!(
            remove_document(text, 1).as_deref(),
            Some("# about b\nkind: B\nx: 1\n---\nkind: C\n")
        );
        assert_eq!(
            remove_document(text, 7).as_deref(),
            Some("kind: A\n---\n# about b\nkind: B\nx: 1\n")
        );
        assert_eq!(remove_document("# only\nkind: A\n", 2), None);
        assert_eq!(remove_document("---\nkind: A\n", 2), None);
    }
}
