//! The crate's modules import one another in one direction: no module imports another that
//! imports it back, directly or through others. Checked here on the source text, so that a
//! new import that closes a cycle fails the tests rather than waiting for a reader to trip
//! on it. Test code (`#[cfg(test)]` modules) may import anything and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path ("engine::native::copy") → the module paths its production code refers to.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    collect(src, src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut g = BTreeMap::new();
    for (module, text) in &files {
        let mut deps = BTreeSet::new();
        for path in references(&production(text)) {
            if let Some(target) = resolve(module, &path, &modules) {
                if &target != module {
                    deps.insert(target);
                }
            }
        }
        g.insert(module.clone(), deps);
    }
    g
}

/// (module path, source) of every file below `dir`; `lib.rs` is the crate root (""), `main.rs`
/// (the binary) is left out.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(root, &p, out);
            continue;
        }
        if p.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        let rel = p.strip_prefix(root).expect("below src");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        if matches!(parts.last().map(String::as_str), Some("mod")) {
            parts.pop();
        }
        if parts.len() == 1 && parts[0] == "main" {
            continue;
        }
        if parts.len() == 1 && parts[0] == "lib" {
            parts.clear();
        }
        out.push((parts.join("::"), std::fs::read_to_string(&p).expect("read")));
    }
}

/// The text without comments and without its `#[cfg(test)]` items.
fn production(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<i32> = None;
    let mut depth = 0i32;
    let mut cfg_test = false;
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let trimmed = code.trim();
        if skip_depth.is_none() && trimmed.starts_with("#[cfg(test)]") {
            cfg_test = true;
            continue;
        }
        let opens = code.matches('{').count() as i32;
        let closes = code.matches('}').count() as i32;
        if cfg_test && skip_depth.is_none() && !trimmed.is_empty() {
            cfg_test = false;
            if opens > closes {
                skip_depth = Some(depth);
            } else {
                // A one-line item (`mod x;`, `use …;`) under #[cfg(test)].
                depth += opens - closes;
                continue;
            }
        }
        depth += opens - closes;
        match skip_depth {
            Some(d) if depth <= d => skip_depth = None,
            Some(_) => {}
            None => {
                out.push_str(code);
                out.push('\n');
            }
        }
    }
    out
}

/// Every `crate::…`, `super::…` and `self::…` path in the code, with `use a::{b, c::d}`
/// groups expanded one level.
fn references(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..bytes.len().min(i + 8)].iter().collect();
        let starts = ["crate::", "super::", "self::"]
            .iter()
            .find(|p| rest.starts_with(*p))
            .copied();
        let boundary = i == 0
            || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':');
        let Some(prefix) = starts.filter(|_| boundary) else {
            i += 1;
            continue;
        };
        let mut j = i + prefix.len();
        let mut path = prefix.trim_end_matches("::").to_string();
        loop {
            let start = j;
            while j < bytes.len() && (bytes[j].is_alphanumeric() || bytes[j] == '_') {
                j += 1;
            }
            if j > start {
                path.push_str("::");
                path.extend(&bytes[start..j]);
            }
            if j + 2 < bytes.len() && bytes[j] == ':' && bytes[j + 1] == ':' {
                if bytes[j + 2] == '{' {
                    let close = (j + 3..bytes.len())
                        .find(|&k| bytes[k] == '}')
                        .unwrap_or(bytes.len());
                    let group: String = bytes[j + 3..close].iter().collect();
                    for item in group.split(',') {
                        let first = item.trim().split("::").next().unwrap_or("").trim();
                        if !first.is_empty() && first != "self" {
                            out.push(format!("{path}::{first}"));
                        }
                    }
                    j = close;
                    break;
                }
                j += 2;
                continue;
            }
            break;
        }
        out.push(path);
        i = j.max(i + 1);
    }
    out
}

/// The module a path names: its longest prefix that is a module of the crate.
fn resolve(current: &str, path: &str, modules: &BTreeSet<String>) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<&str> = match segs[0] {
        "crate" => Vec::new(),
        "self" => current.split("::").collect(),
        "super" => {
            let mut b: Vec<&str> = current.split("::").collect();
            b.pop();
            while segs.get(1) == Some(&"super") {
                b.pop();
                segs.remove(1);
            }
            b
        }
        _ => return None,
    };
    let mut best = base.join("::");
    for s in &segs[1..] {
        base.push(s);
        let candidate = base.join("::");
        if modules.contains(&candidate) {
            best = candidate;
        } else {
            break;
        }
    }
    Some(best)
}

/// The cycles of the graph: each strongly connected component of more than one module.
fn cycles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Kosaraju: reachability both ways.
    let reach = |from: &str, forward: bool| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            let next: Vec<String> = if forward {
                g.get(&m)
                    .map(|d| d.iter().cloned().collect())
                    .unwrap_or_default()
            } else {
                g.iter()
                    .filter(|(_, d)| d.contains(&m))
                    .map(|(k, _)| k.clone())
                    .collect()
            };
            for n in next {
                if seen.insert(n.clone()) {
                    stack.push(n);
                }
            }
        }
        seen
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in g.keys() {
        if done.contains(m) {
            continue;
        }
        let fwd = reach(m, true);
        let back = reach(m, false);
        let comp: Vec<String> = fwd.intersection(&back).cloned().collect();
        if !comp.is_empty() {
            done.extend(comp.iter().cloned());
            out.push(comp);
        }
    }
    out
}

/// A module's name as a reader writes it.
fn shown(m: &str) -> &str {
    if m.is_empty() {
        "crate"
    } else {
        m
    }
}

#[test]
fn no_module_imports_itself_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() > 10, "the modules were found: {g:?}");
    assert!(
        g["run"].contains("engine"),
        "the reading of imports works: {:?}",
        g["run"]
    );
    let found = cycles(&g);
    let shown: Vec<String> = found
        .iter()
        .map(|c| {
            let edges: Vec<String> = c
                .iter()
                .flat_map(|m| {
                    g[m].iter()
                        .filter(|d| c.contains(d))
                        .map(move |d| format!("{} -> {}", shown(m), shown(d)))
                })
                .collect();
            edges.join(", ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles: {shown:#?}");
}

#[test]
fn the_reader_sees_uses_groups_and_relative_paths() {
    let code = production(
        "use crate::a::{b, c::D};\nuse super::x;\nfn f() { crate::text::plural(1, \"x\"); }\n\
         #[cfg(test)]\nmod tests {\n    use crate::z;\n}\n// crate::comment\n",
    );
    let refs = references(&code);
    assert!(refs.contains(&"crate::a::b".to_string()), "{refs:?}");
    assert!(refs.contains(&"crate::a::c".to_string()), "{refs:?}");
    assert!(refs.contains(&"super::x".to_string()), "{refs:?}");
    assert!(
        refs.contains(&"crate::text::plural".to_string()),
        "{refs:?}"
    );
    assert!(
        !refs
            .iter()
            .any(|r| r.contains('z') || r.contains("comment")),
        "{refs:?}"
    );
    let modules: BTreeSet<String> = ["a", "a::b", "e", "e::n", "e::n::x", "text"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(
        resolve("e::n::c", "super::x", &modules).as_deref(),
        Some("e::n::x")
    );
    assert_eq!(
        resolve("a", "crate::a::b::f", &modules).as_deref(),
        Some("a::b")
    );
    assert_eq!(
        resolve("x", "crate::text::plural", &modules).as_deref(),
        Some("text")
    );
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string()]]);
}
