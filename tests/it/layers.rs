//! The shape of `src/`: no import circle between its files, and every import pointing down
//! the layers config, domains, generation and reload, proxy, server. Read from the source
//! text (`crate::` and `super::` paths), so a new circle fails here, not in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layer of a module, by its first path segment; lower layers never import higher ones.
fn layer(module: &str) -> usize {
    match module.split("::").next().unwrap_or(module) {
        "config" | "metrics" | "store" | "carry" => 0,
        "auth" | "routing" | "upstream" | "ratelimit" | "client_ip" | "headers" | "settings"
        | "access_log" | "tls" | "session" | "revocation" | "trace" | "edits" | "cors"
        | "ip_lists" | "cache" => 1,
        "generation" | "reload" => 2,
        "proxy" | "connections" | "admin" | "memory" | "status" => 3,
        "server" | "demo" => 4,
        other => panic!("module `{other}` has no layer: add it to tests/it/layers.rs"),
    }
}

/// Every module of `src/` (by path: `auth::issuer`) and the modules its non-test code names.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut texts = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap().with_extension("");
            let mut module = rel.to_string_lossy().replace('/', "::");
            if let Some(parent) = module.strip_suffix("::mod") {
                module = parent.to_string();
            }
            if ["lib", "main"].contains(&module.as_str()) || module.ends_with("tests") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let code: Vec<&str> = code
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            texts.insert(module, code.join("\n"));
        }
    }
    let modules: Vec<String> = texts.keys().cloned().collect();
    // The longest module a path names: `crate::auth::issuer::Issuer` is `auth::issuer`.
    let resolve = |path: &str| {
        modules
            .iter()
            .filter(|m| path == m.as_str() || path.starts_with(&format!("{m}::")))
            .max_by_key(|m| m.len())
            .cloned()
    };
    let mut edges = BTreeMap::new();
    for (module, code) in &texts {
        let parent = module.rsplit_once("::").map(|(p, _)| p);
        let mut to = BTreeSet::new();
        for (prefix, base) in [("crate::", None), ("super::", parent)] {
            for (at, _) in code.match_indices(prefix) {
                let before = code[..at].chars().last();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let rest = &code[at + prefix.len()..];
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                let path = rest[..end].trim_end_matches(':');
                let full = match base {
                    Some(p) => format!("{p}::{path}"),
                    None => path.to_string(),
                };
                if let Some(target) = resolve(&full) {
                    if &target != module {
                        to.insert(target);
                    }
                }
            }
        }
        edges.insert(module.clone(), to);
    }
    edges
}

#[test]
fn src_has_no_import_circle() {
    let edges = imports();
    // Depth-first search; a module met again while on the stack closes a circle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| s == m) {
            panic!("import circle: {} -> {m}", stack[at..].join(" -> "));
        }
        stack.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            visit(next, edges, stack, done);
        }
        stack.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done);
    }
    assert!(edges.len() > 20, "only {} modules found", edges.len());
}

#[test]
fn imports_point_down_the_layers() {
    let mut wrong = Vec::new();
    for (from, to) in imports() {
        for target in to {
            if layer(&target) > layer(&from) {
                wrong.push(format!("{from} -> {target}"));
            }
        }
    }
    assert!(wrong.is_empty(), "imports up the layers: {wrong:?}");
}
