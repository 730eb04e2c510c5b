//! The layout rules of issue 10, checked on the sources so that they stay true:
//! - no two modules of a crate import each other, nor do several in a loop: among the children of
//!   one module, "A uses B" (anything in A's subtree names something in B's subtree through
//!   `crate::` or `super::`) must be acyclic;
//! - library crates do not depend on `anyhow` (it belongs to binaries).
//!
//! A module is a file: `src/a.rs` and `src/a/b.rs` are `a` and `a::b`; `lib.rs`, `main.rs` and
//! `mod.rs` name their folder's module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module path of `file` under `src` (`a::b`), empty for the crate root. Binaries under
/// `src/bin/` are crates of their own and are left out.
fn module_of(src: &Path, file: &Path) -> Option<Vec<String>> {
    let rel = file.strip_prefix(src).ok()?.with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") {
        return None;
    }
    if parts
        .last()
        .is_some_and(|l| l == "lib" || l == "main" || l == "mod")
    {
        parts.pop();
    }
    Some(parts)
}

fn ident_start(c: char) -> bool {
    c.is_ascii_lowercase() || c == '_'
}

/// The paths a source text names through `crate::` and `super::` (with `super` resolved against
/// `here`), as module paths split into segments; grouped imports (`crate::{a, b::c}`) count each
/// member.
fn references(text: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (prefix, base) in [
        ("crate::", Vec::new()),
        ("super::", {
            let mut b = here.to_vec();
            b.pop();
            b
        }),
    ] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().next_back();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for member in group[..end].split(',') {
                    let mut p = base.clone();
                    p.extend(path_segments(member.trim()));
                    out.push(p);
                }
            } else {
                let mut p = base.clone();
                for seg in path_segments(rest) {
                    if seg == "super" {
                        p.pop();
                    } else {
                        p.push(seg);
                    }
                }
                out.push(p);
            }
        }
    }
    out
}

fn path_segments(s: &str) -> Vec<String> {
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let seg = &rest[..len];
        if seg.is_empty() || !seg.starts_with(ident_start) {
            break;
        }
        segs.push(seg.to_string());
        match rest[len..].strip_prefix("::") {
            Some(r) => rest = r,
            None => break,
        }
    }
    segs
}

/// The loops among sibling modules of the crate whose sources are in `src`.
fn sibling_cycles(src: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mods: BTreeMap<Vec<String>, PathBuf> = files
        .into_iter()
        .filter_map(|f| module_of(src, &f).map(|m| (m, f)))
        .collect();
    // Edges between siblings: (parent, from child, to child).
    let mut edges: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (m, file) in &mods {
        let text = std::fs::read_to_string(file).expect("read a source file");
        for r in references(&text, m) {
            // The longest known module that `r` lies in.
            let Some(target) = (1..=r.len())
                .rev()
                .map(|n| r[..n].to_vec())
                .find(|p| mods.contains_key(p))
            else {
                continue;
            };
            // The common ancestor, and the two children of it on each side.
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common >= m.len() || common >= target.len() {
                continue; // one is inside the other: parent and child may use each other
            }
            edges
                .entry(m[..common].to_vec())
                .or_default()
                .entry(m[common].clone())
                .or_default()
                .insert(target[common].clone());
        }
    }
    // The graphs are small: find each strongly connected group by plain reachability.
    let mut found = Vec::new();
    for (parent, graph) in &edges {
        let reach = |from: &str| {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.to_string()];
            while let Some(n) = todo.pop() {
                for m in graph.get(&n).into_iter().flatten() {
                    if seen.insert(m.clone()) {
                        todo.push(m.clone());
                    }
                }
            }
            seen
        };
        let reaches: BTreeMap<&String, BTreeSet<String>> =
            graph.keys().map(|n| (n, reach(n))).collect();
        let mut reported = BTreeSet::new();
        for (n, r) in &reaches {
            if !r.contains(n.as_str()) || reported.contains(n.as_str()) {
                continue;
            }
            let group: Vec<String> = r
                .iter()
                .filter(|m| reaches.get(m).is_some_and(|back| back.contains(n.as_str())))
                .cloned()
                .collect();
            reported.extend(group.iter().cloned());
            let at = if parent.is_empty() {
                String::from("crate")
            } else {
                parent.join("::")
            };
            found.push(format!(
                "{}: {at}: {} use each other",
                src.display(),
                group.join(", ")
            ));
        }
    }
    found
}

const CRATES: [&str; 8] = [
    "proto",
    "datastore",
    "control",
    "python",
    "runtime",
    "cli",
    "benches",
    "tests",
];

#[test]
fn no_two_modules_import_each_other() {
    let root = workspace();
    let cycles: Vec<String> = CRATES
        .iter()
        .flat_map(|c| sibling_cycles(&root.join(c).join("src")))
        .collect();
    assert!(
        cycles.is_empty(),
        "modules that import each other:\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_cycle_finder_sees_a_cycle() {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = dir.path();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c;").expect("write");
    std::fs::write(src.join("a.rs"), "use crate::b::thing;").expect("write");
    std::fs::write(src.join("b.rs"), "use crate::{c, a::other};").expect("write");
    std::fs::create_dir(src.join("c")).expect("mkdir");
    std::fs::write(src.join("c.rs"), "mod d;").expect("write");
    std::fs::write(src.join("c/d.rs"), "use super::super::a;").expect("write");
    let found = sibling_cycles(src);
    // a uses b, b uses a and c, c uses a (from its child d): one group of three.
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].ends_with("crate: a, b, c use each other"),
        "{found:?}"
    );
}

#[test]
fn library_crates_do_not_depend_on_anyhow() {
    let root = workspace();
    for lib in ["proto", "datastore", "control", "runtime", "python"] {
        let manifest = root.join(lib).join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).expect("read a manifest");
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with("anyhow")),
            "{} depends on anyhow; library crates return typed errors",
            manifest.display()
        );
    }
}
