//! Facts of the code's structure, checked on the sources: no import cycle
//! between modules, and clap only at the edge (`main.rs`, `cli/`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/` but `main.rs` and test modules, by module
/// path (`config/settings` for `src/config/settings.rs`, `config` for
/// `src/config/mod.rs`, empty for `lib.rs`).
fn modules() -> BTreeMap<Vec<String>, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&root).unwrap().with_extension("");
        let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts == ["main"] || parts.last().is_some_and(|p| p == "tests") {
            continue;
        }
        if parts == ["lib"] {
            parts.clear();
        }
        out.insert(parts, file);
    }
    out
}

/// The code of a source file: without its `#[cfg(test)] mod tests { ... }`
/// block (tests may reach anywhere) and without comments (a doc link is not
/// an import).
fn code(src: &str) -> String {
    let src = src.find("#[cfg(test)]\nmod tests {").map_or(src, |i| &src[..i]);
    src.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n")
}

/// The paths a file names: `crate::a::b`, `super::a`, and the items of
/// `use crate::{...}` and `use super::{...}` groups (one level deep).
fn named_paths(module: &[String], src: &str) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    let base_of = |ups: usize| module[..module.len().saturating_sub(ups)].to_vec();
    let mut rest = src;
    while let Some(i) = rest.find(['c', 's']) {
        let tail = &rest[i..];
        let boundary = i == 0 || !ident(rest[..i].chars().next_back().unwrap_or(' '));
        let (base, after) = if boundary && tail.starts_with("crate::") {
            (Vec::new(), &tail["crate::".len()..])
        } else if boundary && tail.starts_with("super::") {
            let mut ups = 0;
            let mut t = tail;
            while let Some(r) = t.strip_prefix("super::") {
                ups += 1;
                t = r;
            }
            (base_of(ups), t)
        } else {
            rest = &tail[1..];
            continue;
        };
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let item = item.trim().split(' ').next().unwrap_or("");
                let mut path = base.clone();
                path.extend(item.split("::").filter(|s| !s.is_empty() && s.chars().all(ident)).map(str::to_owned));
                out.push(path);
            }
        } else {
            let mut path = base.clone();
            let segs: String = after.chars().take_while(|c| ident(*c) || *c == ':').collect();
            path.extend(segs.split("::").filter(|s| !s.is_empty()).map(str::to_owned));
            out.push(path);
        }
        rest = after;
    }
    out
}

/// The module each named path is in: its longest prefix that is a module.
fn resolve(path: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains_key(p))
}

fn is_ancestor(a: &[String], b: &[String]) -> bool {
    a.len() < b.len() && b.starts_with(a)
}

/// Edges between modules, leaving out a module's use of its ancestors'
/// items (a child reading its parent's types) and of its descendants.
fn edges() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let modules = modules();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (module, file) in &modules {
        let src = std::fs::read_to_string(file).unwrap();
        for path in named_paths(module, &code(&src)) {
            if let Some(target) = resolve(&path, &modules)
                && target != *module
                && !is_ancestor(&target, module)
                && !is_ancestor(module, &target)
            {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct State<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<&'a Vec<String>, usize>,
        low: BTreeMap<&'a Vec<String>, usize>,
        stack: Vec<&'a Vec<String>>,
        next: usize,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Vec<String>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.out.push(component);
            }
        }
    }
    let mut s =
        State { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), next: 0, out: Vec::new() };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_module_imports_a_module_that_imports_it_back() {
    let edges = edges();
    assert!(edges.len() > 20, "the scan found the modules: {edges:?}");
    assert!(edges[&vec!["server".to_owned()]].contains(&vec!["app".to_owned()]), "the scan follows crate:: paths");
    let found = cycles(&edges);
    let shown: Vec<Vec<String>> = found.iter().map(|c| c.iter().map(|m| m.join("/")).collect()).collect();
    assert!(found.is_empty(), "import cycles between modules: {shown:?}");
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let m = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
    let mut edges = BTreeMap::new();
    edges.insert(m("server"), BTreeSet::from([m("app")]));
    edges.insert(m("app"), BTreeSet::from([m("server/listener")]));
    edges.insert(m("server/listener"), BTreeSet::from([m("server")]));
    assert_eq!(cycles(&edges).len(), 1);
}

#[test]
fn clap_is_used_only_at_the_edge() {
    for (module, file) in modules() {
        if module.first().is_some_and(|m| m == "cli") {
            continue;
        }
        let src = code(&std::fs::read_to_string(&file).unwrap());
        assert!(!src.contains("clap::") && !src.contains("use clap"), "{} uses clap", file.display());
    }
}
