//! Imports run one way (STYLE.md): no two files of the library import each other, directly
//! or through others. The graph is read from the sources: the module tree from `mod`
//! declarations (with `#[path]`) from `src/lib.rs`; then an arrow from a file to the file that
//! defines each item it names (in `use` declarations and in code, by a path starting
//! `crate::`, `super::`, `self::` or one of its child modules; comments and literals are
//! skipped), following re-exports (`pub use`, globs) to where the item is defined.
//!
//! Not arrows: a file's own containers (its folder's `mod.rs`, `lib.rs`), which hold what the
//! files under them share (`tune::TuneError`, `crate::crash_point!`); and a `pub use` that only
//! hands names on (the file does not use them itself). `main.rs` is another crate (it reaches
//! the library as `corepost::`).

#[path = "module_graph/lexer.rs"]
mod lexer;

use lexer::{strip, tokens};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Folders whose circles are still allowed (a circle all of whose files are in one of them).
/// Issue 25: in `upload/`, `delivery.rs` and `objects.rs` share the worker's state (`Ctx`,
/// `Outcome`, `Request`), and `sink.rs` takes the backoff functions from `delivery.rs`, which
/// takes `Sink` from it. The entry goes once the upload worker gets its own shape (a batcher
/// owning its open objects and permits); until then a new circle there is not caught here.
const ALLOWED: &[&str] = &["src/upload/"];

/// The graph: for each file, the files it imports, with the paths that name them.
type Graph = BTreeMap<PathBuf, BTreeMap<PathBuf, BTreeSet<String>>>;

/// One source file of the library.
struct File {
    path: PathBuf,
    /// Its module path (`["tune", "machine"]`).
    module: Vec<String>,
    /// The library's paths it names.
    names: Vec<Named>,
    /// Items defined at its top level.
    defs: BTreeSet<String>,
    /// Identifiers in its code outside `use` declarations.
    bare: BTreeSet<String>,
}

/// One path a file names.
struct Named {
    /// Absolute (`["queue", "Reservation"]`).
    path: Vec<String>,
    /// As written, for messages.
    text: String,
    /// By `use` (else in code): the name it brings in (`*` for a glob), whether `pub`, and
    /// whether at the file's top level (where other files can reach it through this one).
    by_use: Option<(String, bool, bool)>,
}

/// The library's files, walked from `src/lib.rs` along `mod` declarations.
fn module_tree(src: &Path) -> Vec<File> {
    let mut found = Vec::new();
    let mut todo = vec![(src.join("lib.rs"), Vec::<String>::new(), src.to_path_buf())];
    while let Some((path, module, dir)) = todo.pop() {
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        let toks = tokens(&strip(&text));
        let mut children = BTreeSet::new();
        for (k, (pos, t)) in toks.iter().enumerate() {
            // `mod name;` (an inline `mod name { .. }` stays in this file).
            if t != "mod"
                || toks.get(k + 2).map(|t| t.1.as_str()) != Some(";")
                || cfg_test(&toks, k)
            {
                continue;
            }
            let name = toks[k + 1].1.clone();
            let child = match path_attribute(&text[..*pos]) {
                Some(p) => path.parent().unwrap().join(p),
                None if dir.join(format!("{name}.rs")).exists() => dir.join(format!("{name}.rs")),
                None => dir.join(&name).join("mod.rs"),
            };
            let mut m = module.clone();
            m.push(name.clone());
            todo.push((child, m, dir.join(&name)));
            children.insert(name);
        }
        found.push((path, module, toks, children));
    }
    found
        .into_iter()
        .map(|(path, module, toks, children)| read_file(path, module, &toks, &children))
        .collect()
}

/// The `#[path = ".."]` attribute among the attribute lines right above a `mod` declaration.
fn path_attribute(before: &str) -> Option<String> {
    let above = &before[..before.rfind('\n')?];
    above
        .lines()
        .rev()
        .map(str::trim)
        .take_while(|l| l.starts_with("#["))
        .find_map(|l| Some(l.strip_prefix("#[path")?.split('"').nth(1)?.to_string()))
}

/// Whether the item at token `k` has a `#[cfg(test)]` attribute (test code is no part of the
/// library's structure: a unit test may hold one layer against another).
fn cfg_test(toks: &[(usize, String)], k: usize) -> bool {
    let w = |j: usize| toks[j].1.as_str();
    let mut j = k;
    // Over a visibility (`pub`, `pub(crate)`), then attribute after attribute.
    while j > 0 && matches!(w(j - 1), "pub" | ")" | "crate" | "super" | "(") {
        j -= 1;
    }
    while j > 1 && w(j - 1) == "]" {
        let Some(open) = (0..j - 1).rev().find(|&i| w(i) == "[") else {
            return false;
        };
        let inside: Vec<&str> = (open + 1..j - 1).map(w).collect();
        if inside == ["cfg", "(", "test", ")"] {
            return true;
        }
        j = open.saturating_sub(1);
    }
    false
}

/// What one file defines and names. `children`: its child modules, in scope by name.
fn read_file(
    path: PathBuf,
    module: Vec<String>,
    toks: &[(usize, String)],
    children: &BTreeSet<String>,
) -> File {
    let word = |k: usize| toks.get(k).map_or("", |t| t.1.as_str());
    let is_ident = |w: &str| {
        w.chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
    };
    let mut file = File {
        path,
        module,
        names: Vec::new(),
        defs: BTreeSet::new(),
        bare: BTreeSet::new(),
    };
    // Inline modules (`mod tests { .. }`) shift `super` and hide the file's child modules.
    // Inline modules: the brace depth inside each, its name, whether `#[cfg(test)]`.
    let mut inline: Vec<(usize, String, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut k = 0;
    while k < toks.len() {
        let t = word(k);
        let top = depth == 0;
        let in_test = inline.iter().any(|m| m.2);
        let here: Vec<String> = file
            .module
            .iter()
            .cloned()
            .chain(inline.iter().map(|m| m.1.clone()))
            .collect();
        match t {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|m| m.0 == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            "mod" if word(k + 2) == "{" => {
                inline.push((depth + 1, word(k + 1).to_string(), cfg_test(toks, k)));
            }
            "struct" | "enum" | "union" | "trait" | "type" | "fn" | "const" | "static" | "mod"
                if top && is_ident(word(k + 1)) =>
            {
                file.defs.insert(word(k + 1).to_string());
            }
            "macro_rules" if top && word(k + 1) == "!" => {
                file.defs.insert(word(k + 2).to_string());
            }
            _ => {}
        }
        if t == "use" {
            let public = k.checked_sub(1).is_some_and(|p| word(p) == "pub")
                || (k >= 4 && word(k - 1) == ")" && word(k - 4) == "pub");
            let end = toks[k..]
                .iter()
                .position(|t| t.1 == ";")
                .map_or(toks.len(), |p| k + p);
            let words: Vec<&str> = toks[k + 1..end].iter().map(|t| t.1.as_str()).collect();
            for (p, local) in expand_use(&words).into_iter().filter(|_| !in_test) {
                if let Some(abs) = absolute(&p, &here, inline.is_empty(), children) {
                    file.names.push(Named {
                        path: abs,
                        text: p.join("::"),
                        by_use: Some((local, public, top)),
                    });
                }
            }
            k = end;
            continue;
        }
        // A name used here (not declared: `mod x`; not a field or method: `.x`).
        let previous = k.checked_sub(1).map_or("", word);
        if is_ident(t) && !in_test && previous != "mod" && previous != "." {
            file.bare.insert(t.to_string());
        }
        // A path in code: `crate::a::b(..)`, `super::x::Y`, `child::f()`.
        if is_ident(t) && word(k + 1) == "::" && k.checked_sub(1).is_none_or(|p| word(p) != "::") {
            let mut p = vec![t.to_string()];
            let mut j = k + 1;
            while word(j) == "::" && is_ident(word(j + 1)) {
                p.push(word(j + 1).to_string());
                j += 2;
            }
            if let Some(abs) = absolute(&p, &here, inline.is_empty(), children).filter(|_| !in_test)
            {
                file.names.push(Named {
                    path: abs,
                    text: p.join("::"),
                    by_use: None,
                });
            }
            k = j;
            continue;
        }
        k += 1;
    }
    file
}

/// The paths of a `use` tree (`a::{b, c::{d as e, self}}` → `a::b`, `a::c::d`, `a::c`), each
/// as its segments (`self` dropped) with the name it brings in (`e`, `*` for a glob).
fn expand_use(words: &[&str]) -> Vec<(Vec<String>, String)> {
    fn tree(
        words: &[&str],
        i: &mut usize,
        prefix: &[String],
        out: &mut Vec<(Vec<String>, String)>,
    ) {
        let mut p = prefix.to_vec();
        let mut local = None;
        while *i < words.len() {
            match words[*i] {
                "{" => {
                    *i += 1;
                    while *i < words.len() && words[*i] != "}" {
                        tree(words, i, &p, out);
                        if words.get(*i) == Some(&",") {
                            *i += 1;
                        }
                    }
                    *i += 1;
                    return;
                }
                "," | "}" => break,
                "::" | "self" => *i += 1,
                "*" => {
                    local = Some("*".to_string());
                    *i += 1;
                }
                "as" => {
                    local = words.get(*i + 1).map(|w| w.to_string());
                    *i += 2;
                }
                w => {
                    p.push(w.to_string());
                    *i += 1;
                }
            }
        }
        let local = local.or_else(|| p.last().cloned()).unwrap_or_default();
        out.push((p, local));
    }
    let mut out = Vec::new();
    tree(words, &mut 0, &[], &mut out);
    out
}

/// A path as an absolute module path, or `None` when it starts outside the library (`std::`,
/// another crate, a local name). `top`: the path is not in an inline module, so the file's
/// `children` are in scope by name.
fn absolute(
    p: &[String],
    here: &[String],
    top: bool,
    children: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let mut base: Vec<String> = here.to_vec();
    let mut rest = p;
    match p.first()?.as_str() {
        "crate" => {
            base.clear();
            rest = &p[1..];
        }
        "self" => rest = &p[1..],
        "super" => {
            while rest.first().map(String::as_str) == Some("super") {
                base.pop();
                rest = &rest[1..];
            }
        }
        first if top && children.contains(first) => {}
        _ => return None,
    }
    base.extend(rest.iter().cloned());
    Some(base)
}

/// The file that defines what `path` names (a module: its file), following `use` and glob
/// re-exports; `.1` is false when the name was not found (its module's file then stands in).
fn defining<'f>(files: &'f [File], path: &[String], hops: usize) -> Option<(&'f File, bool)> {
    let (n, file) = (0..=path.len()).rev().find_map(|n| {
        let f = files.iter().find(|f| f.module[..] == path[..n])?;
        Some((n, f))
    })?;
    let Some(name) = path.get(n) else {
        return Some((file, true));
    };
    if file.defs.contains(name) || hops > 16 {
        return Some((file, file.defs.contains(name)));
    }
    let imports = file
        .names
        .iter()
        .filter(|u| u.by_use.as_ref().is_some_and(|b| b.2));
    for u in imports {
        let (local, _, _) = u.by_use.as_ref().unwrap();
        let found = if local == name {
            defining(files, &u.path, hops + 1)
        } else if local == "*" {
            let mut p = u.path.clone();
            p.push(name.clone());
            defining(files, &p, hops + 1)
        } else {
            None
        };
        if let Some((f, true)) = found {
            return Some((f, true));
        }
    }
    Some((file, false))
}

/// For each file, the files it imports, with the paths that name them.
fn edges(files: &[File]) -> Graph {
    let mut out = Graph::new();
    for f in files {
        let mut targets: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
        for n in &f.names {
            let Some((target, _)) = defining(files, &n.path, 0) else {
                continue;
            };
            // The file itself, or one of its containers.
            if f.module.starts_with(&target.module) {
                continue;
            }
            // A `pub use` that only hands names on.
            if let Some((local, true, _)) = &n.by_use {
                let used = if local == "*" {
                    target.defs.iter().any(|d| f.bare.contains(d))
                } else {
                    f.bare.contains(local)
                };
                if !used {
                    continue;
                }
            }
            targets
                .entry(target.path.clone())
                .or_default()
                .insert(n.text.clone());
        }
        out.insert(f.path.clone(), targets);
    }
    out
}

/// Strongly connected components of more than one file (Tarjan).
fn circles(graph: &Graph) -> Vec<Vec<PathBuf>> {
    struct Walk<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g Path, usize>,
        low: BTreeMap<&'g Path, usize>,
        stack: Vec<&'g Path>,
        on_stack: BTreeSet<&'g Path>,
        out: Vec<Vec<PathBuf>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, v: &'g Path) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|e| e.keys()) {
                let w = w.as_path();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                loop {
                    let w = self.stack.pop().unwrap();
                    self.on_stack.remove(w);
                    scc.push(w.to_path_buf());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_path()) {
            walk.visit(v);
        }
    }
    walk.out
}

/// The graph of the library's files (absolute paths) under `root`.
fn graph_of(root: &Path) -> Graph {
    edges(&module_tree(&root.join("src")))
}

#[test]
fn no_import_circles_in_src() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let graph = graph_of(&root);
    let rel = |p: &Path| p.strip_prefix(&root).unwrap().display().to_string();
    let mut report = String::new();
    for scc in circles(&graph) {
        let names: Vec<String> = scc.iter().map(|p| rel(p)).collect();
        if ALLOWED
            .iter()
            .any(|dir| names.iter().all(|n| n.starts_with(dir)))
        {
            continue;
        }
        report.push_str(&format!(
            "circle of {} files: {}\n",
            scc.len(),
            names.join(", ")
        ));
        for from in &scc {
            for (to, via) in &graph[from] {
                if scc.contains(to) {
                    let via: Vec<&str> = via.iter().map(String::as_str).collect();
                    report.push_str(&format!(
                        "  {} -> {}: {}\n",
                        rel(from),
                        rel(to),
                        via.join(", ")
                    ));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "files in src/ import each other (move what they share to a module both import, \
         STYLE.md \"Imports run one way\"):\n{report}"
    );
}

/// The reader sees what it must, on a small crate of its own: the module tree (`#[path]`,
/// `mod.rs`, test modules left out), arrows through `use` trees, code paths, re-exports and
/// child modules, none to containers or from test code, and the circle they close.
#[test]
fn the_graph_reads_the_imports() {
    let dir = tempfile::tempdir().unwrap();
    for (file, text) in [
        (
            "lib.rs",
            "pub mod a;\nmod b;\npub mod c;\n#[cfg(test)]\n#[path = \"lib_tests.rs\"]\nmod tests;\n",
        ),
        // A container: its own item, a child's item re-exported and not used here.
        (
            "a/mod.rs",
            "pub mod x;\npub mod y;\npub use x::X;\n/// Not an arrow: crate::c::C\npub struct Shared;\n",
        ),
        (
            "a/x.rs",
            "use super::Shared;\nuse super::{y::{self, Y}};\npub struct X;\n\
             fn f() -> &'static str { let _ = (Shared, Y, y::g); \"crate::c::C\" } // crate::c\n",
        ),
        ("a/y.rs", "pub struct Y;\npub fn g() -> usize { crate::b::B::N }\n"),
        (
            "b.rs",
            "#[path = \"b_extra.rs\"]\nmod extra;\npub struct B;\n\
             impl B { pub const N: usize = extra::E; }\n\
             #[cfg(test)]\nmod tests { use crate::c::C; }\n",
        ),
        ("b_extra.rs", "pub const E: usize = 1;\nfn h(_: crate::a::X) {}\n"),
        ("c.rs", "pub struct C;\nfn k() -> crate::b::B { crate::b::B }\n"),
        ("lib_tests.rs", "use crate::c::C;\n"),
    ] {
        let path = dir.path().join("src").join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let graph = graph_of(dir.path());
    let file = |p: &str| dir.path().join("src").join(p);
    let mut files: Vec<&PathBuf> = graph.keys().collect();
    files.sort();
    let want = [
        "a/mod.rs",
        "a/x.rs",
        "a/y.rs",
        "b.rs",
        "b_extra.rs",
        "c.rs",
        "lib.rs",
    ];
    assert_eq!(files, want.map(file).iter().collect::<Vec<_>>());
    let arrows: BTreeSet<(String, String)> = graph
        .iter()
        .flat_map(|(from, to)| to.keys().map(move |t| (from.clone(), t.clone())))
        .map(|(f, t)| {
            let rel = |p: PathBuf| {
                p.strip_prefix(dir.path().join("src"))
                    .unwrap()
                    .display()
                    .to_string()
            };
            (rel(f), rel(t))
        })
        .collect();
    let want: BTreeSet<(String, String)> = [
        ("a/x.rs", "a/y.rs"),     // `use super::{y::{self, Y}}`
        ("a/y.rs", "b.rs"),       // `crate::b::B::N` in code
        ("b.rs", "b_extra.rs"),   // `extra::E`: a child module by name
        ("b_extra.rs", "a/x.rs"), // `crate::a::X`, re-exported by a/mod.rs
        ("c.rs", "b.rs"),         // a type and an expression
    ]
    .iter()
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .collect();
    assert_eq!(arrows, want);
    let circle: Vec<PathBuf> = ["a/x.rs", "a/y.rs", "b.rs", "b_extra.rs"]
        .map(file)
        .to_vec();
    assert_eq!(circles(&graph), [circle]);
}

#[test]
fn use_trees_and_literals() {
    let words = "crate :: a :: { b , c :: { d as e , self } , f :: * }";
    let words: Vec<&str> = words.split(' ').collect();
    let got: Vec<(String, String)> = expand_use(&words)
        .into_iter()
        .map(|(p, local)| (p.join("::"), local))
        .collect();
    let want = [
        ("crate::a::b", "b"),
        ("crate::a::c::d", "e"),
        ("crate::a::c", "c"),
        ("crate::a::f", "*"),
    ];
    assert_eq!(got, want.map(|(p, l)| (p.to_string(), l.to_string())));
    let stripped =
        strip("let s = \"crate::x\"; // super::y\nlet c = '\"'; fn f<'a>() {} /* a::b */");
    assert!(!stripped.contains("crate::") && !stripped.contains("super::"));
    assert!(stripped.contains("fn f<'a>()"));
}
