//! Imports run one way in every crate under `filter/`: no module imports, directly or through
//! others, a module that imports it.
//!
//! A module is a file under `src/` (`a.rs`, `a/mod.rs` and `a/b.rs` are modules `a` and `a::b`);
//! it imports `crate::x::y` (or `super::...`) as the deepest module that exists on that path.
//! Test-only modules (`tests`, `fake`) may import anything.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const TEST_MODULES: [&str; 2] = ["tests", "fake"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module name -> file, without the crate root and test-only modules.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut found = BTreeMap::new();
    for path in files {
        let relative = path.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> =
            relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        let is_root = parts == ["lib"] || parts == ["main"];
        let is_test = parts.last().is_some_and(|p| TEST_MODULES.contains(&p.as_str()));
        if !is_root && !is_test {
            found.insert(parts.join("::"), path);
        }
    }
    found
}

/// The modules `name` imports through `crate::` and `super::` paths.
fn imports(name: &str, path: &Path, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let text: String = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n");
    let is_mod_rs = path.file_name().is_some_and(|f| f == "mod.rs");
    let mut found = BTreeSet::new();
    for head in ["crate::", "super::"] {
        for (at, _) in text.match_indices(head) {
            let before = text[..at].chars().last();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let tail: String = text[at + head.len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let mut parts: Vec<String> = if head == "crate::" {
                Vec::new()
            } else {
                let own: Vec<&str> = name.split("::").collect();
                let keep = if is_mod_rs { own.len() } else { own.len() - 1 };
                own[..keep.min(own.len())].iter().map(|s| s.to_string()).collect()
            };
            parts.extend(tail.split("::").filter(|p| !p.is_empty()).map(str::to_string));
            while !parts.is_empty() && !known.contains_key(&parts.join("::")) {
                parts.pop();
            }
            let target = parts.join("::");
            if !target.is_empty() && target != name && !name.starts_with(&format!("{target}::")) {
                found.insert(target);
            }
        }
    }
    found
}

/// A circle in the graph, if there is one, as the path that closes it.
fn circle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(at) = stack.iter().position(|n| n == next) {
                let mut found = stack[at..].to_vec();
                found.push(next.clone());
                return Some(found);
            }
            if !done.contains(next) {
                if let Some(found) = visit(next, graph, done, stack) {
                    return Some(found);
                }
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if !done.contains(node) {
            if let Some(found) = visit(node, graph, &mut done, &mut Vec::new()) {
                return Some(found);
            }
        }
    }
    None
}

#[test]
fn imports_run_one_way_in_every_filter_crate() {
    let filter = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut crates = 0;
    for entry in std::fs::read_dir(&filter).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        crates += 1;
        let known = modules(&src);
        let graph: BTreeMap<String, BTreeSet<String>> =
            known.iter().map(|(name, path)| (name.clone(), imports(name, path, &known))).collect();
        if let Some(found) = circle(&graph) {
            panic!("import circle in {}: {}", src.display(), found.join(" -> "));
        }
    }
    assert!(crates >= 4, "found the crates under filter/");
}

#[test]
fn a_circle_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("config".to_string(), BTreeSet::from(["manifest".to_string()])),
        ("manifest".to_string(), BTreeSet::from(["digest".to_string(), "config".to_string()])),
        ("digest".to_string(), BTreeSet::new()),
    ]
    .into_iter()
    .collect();
    assert_eq!(circle(&graph).unwrap(), ["config", "manifest", "config"]);
}
