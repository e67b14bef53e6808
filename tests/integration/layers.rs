//! The crate's imports follow the data: no module imports one above it in
//! [`LAYERS`], and no cycle at any level of the module tree; and no source
//! file grows past [`MOST_LINES`] lines of code (the daemon's wiring past
//! [`MOST_WIRING_LINES`]).
//!
//! Read from the source text (`use crate::…`, `use super::…` and paths
//! written inline), so that the rule holds without a tool: a module is a
//! folder or a file under `src/`; an import from `a::x` of `b::y` is an arrow
//! `a → b` between the siblings `a` and `b` under their common parent. A
//! module's `mod.rs` is its front door: the arrows between it and its own
//! children do not count. Test code (`#[cfg(test)]`) is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules from the top down: each may import only those
/// below it. The data path runs `sources → pipeline → store → forward → db`
/// with `history` beside it; the leaves at the bottom know nothing of the
/// rest.
const LAYERS: &[&[&str]] = &[
    &["cli"],
    &["daemon"],
    &["web"],
    &["report"],
    &["simulator"],
    &["sources"],
    &["forward"],
    &["history"],
    &["db"],
    &["store"],
    &["systemd"],
    &["pipeline", "failover", "status", "logging", "latest"],
    &["quantity"],
    &["reading", "registers", "config"],
    &["clock", "schedule", "signals"],
];

/// The most lines of non-test code in one source file.
const MOST_LINES: usize = 600;

/// The most lines of `src/daemon/mod.rs`, the wiring of `run`.
const MOST_WIRING_LINES: usize = 300;

type Module = Vec<String>;

/// Every non-test source file of the library, by module path.
fn source_files(src: &Path) -> Vec<(Module, PathBuf)> {
    let mut files = Vec::new();
    let mut stack = vec![(Vec::new(), src.to_path_buf())];
    while let Some((prefix, dir)) = stack.pop() {
        let test_children = test_only_children(&dir);
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("dir entry").path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if test_children.contains(&name) {
                continue;
            }
            let mut module = prefix.clone();
            if path.is_dir() {
                module.push(name);
                stack.push((module, path));
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                if name == "main" && prefix.is_empty() {
                    continue;
                }
                if name != "mod" && name != "lib" {
                    module.push(name);
                }
                files.push((module, path));
            }
        }
    }
    files.sort();
    files
}

/// The children a folder's `mod.rs` (or `lib.rs`) declares under
/// `#[cfg(test)]`.
fn test_only_children(dir: &Path) -> BTreeSet<String> {
    let front = ["mod.rs", "lib.rs"]
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.exists());
    let Some(text) = front.and_then(|path| std::fs::read_to_string(path).ok()) else {
        return BTreeSet::new();
    };
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|pair| pair[0] == "#[cfg(test)]")
        .filter_map(|pair| pair[1].strip_prefix("mod "))
        .filter_map(|rest| rest.strip_suffix(';'))
        .map(str::to_owned)
        .collect()
}

/// The code of a file without comments and without its test module.
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim();
        if trimmed == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        let without_comment = match line.find("//") {
            Some(at) if !line[..at].contains('"') => &line[..at],
            _ => line,
        };
        code.push_str(without_comment);
        code.push('\n');
    }
    code
}

/// The module paths a file's code names through `crate::` or `super::`,
/// `use` trees expanded, resolved against the file's own module.
fn imports_of(module: &Module, code: &str) -> BTreeSet<Module> {
    let tokens = tokenize(code);
    let mut found = BTreeSet::new();
    // `super` is relative to the file's module (a `mod.rs` is its folder's).
    let here = module.clone();
    let mut at = 0;
    while at < tokens.len() {
        let start = tokens[at].as_str();
        if (start == "crate" || start == "super")
            && tokens.get(at + 1).is_some_and(|t| t == "::")
            && (at == 0 || tokens[at - 1] != "::")
        {
            let (paths, next) = path_tree(&tokens, at);
            for path in paths {
                if let Some(resolved) = resolve(&here, &path) {
                    found.insert(resolved);
                }
            }
            at = next;
        } else {
            at += 1;
        }
    }
    found
}

/// Splits code into identifiers, `::` and single punctuation.
fn tokenize(code: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            // A raw string (`r"…"`, `r#"…"#`, `br"…"`): skipped whole.
            let hashes = chars[i..].iter().take_while(|c| **c == '#').count();
            if (word == "r" || word == "br") && chars.get(i + hashes) == Some(&'"') {
                let close: Vec<char> = std::iter::once('"')
                    .chain(std::iter::repeat_n('#', hashes))
                    .collect();
                i += hashes + 1;
                while i < chars.len() && !chars[i..].starts_with(&close) {
                    i += 1;
                }
                i += close.len();
                continue;
            }
            tokens.push(word);
        } else if c == '\'' {
            // A character literal (`'"'`, `'\''`, `'\u{1F600}'`) is
            // skipped; otherwise it is a lifetime's quote.
            if chars.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < chars.len() && chars[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if chars.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".to_owned());
            i += 2;
        } else if c == '"' {
            // Skip a string literal.
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    tokens
}

/// Reads a path (and a `use` tree's braces) from `tokens[at]`: the paths it
/// names and the index after it.
fn path_tree(tokens: &[String], mut at: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix = Vec::new();
    loop {
        let Some(token) = tokens.get(at) else {
            return (vec![prefix], at);
        };
        if token == "{" {
            let mut paths = Vec::new();
            at += 1;
            loop {
                match tokens.get(at).map(String::as_str) {
                    None => return (paths, at),
                    Some("}") => return (paths, at + 1),
                    Some(",") => at += 1,
                    Some(_) => {
                        let (inner, next) = path_tree(tokens, at);
                        for path in inner {
                            let mut whole = prefix.clone();
                            whole.extend(path);
                            paths.push(whole);
                        }
                        // Skip what follows an inner path (`as name`).
                        at = next;
                        while let Some(t) = tokens.get(at) {
                            if t == "," || t == "}" {
                                break;
                            }
                            at += 1;
                        }
                    }
                }
            }
        }
        let is_name = token.chars().all(|c| c.is_alphanumeric() || c == '_');
        if !is_name {
            return (vec![prefix], at);
        }
        prefix.push(token.clone());
        at += 1;
        if tokens.get(at).is_some_and(|t| t == "::") {
            at += 1;
        } else {
            return (vec![prefix], at);
        }
    }
}

/// The absolute module path a `crate::`/`super::` path starts with (its
/// item names included; they are cut at the first name that is no module).
fn resolve(here: &Module, path: &[String]) -> Option<Module> {
    let mut absolute: Module = Vec::new();
    let mut rest = path;
    if rest.first().is_some_and(|first| first == "crate") {
        rest = &rest[1..];
    } else {
        absolute = here.clone();
        while rest.first().is_some_and(|first| first == "super") {
            absolute.pop()?;
            rest = &rest[1..];
        }
    }
    absolute.extend(rest.iter().cloned());
    Some(absolute)
}

/// The arrows between siblings: for each parent module, child → child.
fn arrows(files: &[(Module, PathBuf)]) -> BTreeMap<Module, BTreeSet<(String, String)>> {
    let modules: BTreeSet<Module> = files.iter().map(|(module, _)| module.clone()).collect();
    let mut by_parent: BTreeMap<Module, BTreeSet<(String, String)>> = BTreeMap::new();
    for (module, path) in files {
        let text = std::fs::read_to_string(path).expect("read source");
        for target in imports_of(module, &code_of(&text)) {
            // Cut the target at its longest known module prefix.
            let target: Module = (0..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|prefix| modules.contains(prefix))
                .unwrap_or_default();
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            // An import of an ancestor or a descendant is no arrow between
            // siblings (a front door and its rooms).
            if common == module.len() || common == target.len() {
                continue;
            }
            by_parent
                .entry(module[..common].to_vec())
                .or_default()
                .insert((module[common].clone(), target[common].clone()));
        }
    }
    by_parent
}

/// A cycle in a graph, if there is one.
fn find_cycle(edges: &BTreeSet<(String, String)>) -> Option<Vec<String>> {
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (from, to) in edges {
        next.entry(from).or_default().push(to);
    }
    fn visit<'a>(
        node: &'a str,
        next: &BTreeMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[at..].iter().map(|n| n.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for to in next.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(to, next, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    next.keys()
        .find_map(|node| visit(node, &next, &mut Vec::new(), &mut done))
}

fn crate_arrows() -> BTreeMap<Module, BTreeSet<(String, String)>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    arrows(&source_files(&src))
}

#[test]
fn no_module_imports_one_above_it() {
    let rank = |name: &str| LAYERS.iter().position(|layer| layer.contains(&name));
    let top = crate_arrows().remove(&Vec::new()).unwrap_or_default();
    let mut wrong = Vec::new();
    for (from, to) in &top {
        match (rank(from), rank(to)) {
            (Some(from_rank), Some(to_rank)) if from_rank < to_rank => {}
            (None, _) => wrong.push(format!("{from} is in no layer")),
            (_, None) => wrong.push(format!("{to} is in no layer")),
            _ => wrong.push(format!("{from} imports {to}, which is not below it")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn no_cycle_at_any_level() {
    let cycles: Vec<String> = crate_arrows()
        .iter()
        .filter_map(|(parent, edges)| {
            find_cycle(edges).map(|cycle| {
                let place = if parent.is_empty() {
                    "crate".to_owned()
                } else {
                    parent.join("::")
                };
                format!("in {place}: {}", cycle.join(" → "))
            })
        })
        .collect();
    assert!(cycles.is_empty(), "{}", cycles.join("\n"));
}

#[test]
fn the_check_sees_an_import_and_a_cycle() {
    // The reader itself, on text whose arrows are known.
    let module = vec!["pipeline".to_owned(), "batcher".to_owned()];
    let code = code_of(
        "use crate::{store::{LocalStore, StoreError}, reading::Reading as R};\n\
         // use crate::db::Nothing;\n\
         const Q: char = '\"'; const S: &str = r#\"crate::cli::NotCode\"#;\n\
         fn g<'a>(x: &'a str) -> char { '\\'' }\n\
         fn f() { super::super::forward::ship(); }\n\
         #[cfg(test)]\nmod tests { use crate::cli::X; }\n",
    );
    let found: Vec<String> = imports_of(&module, &code)
        .into_iter()
        .map(|path| path.join("::"))
        .collect();
    assert_eq!(
        found,
        [
            "forward::ship",
            "reading::Reading",
            "store::LocalStore",
            "store::StoreError"
        ]
    );
    let edges: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
}

#[test]
fn no_source_file_is_over_its_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut over = Vec::new();
    for (_, path) in source_files(&src) {
        let text = std::fs::read_to_string(&path).expect("read source");
        let lines = text.lines().collect::<Vec<_>>();
        let code = lines
            .windows(2)
            .position(|pair| pair[0].trim() == "#[cfg(test)]" && pair[1].starts_with("mod "))
            .unwrap_or(lines.len());
        let limit = if path.ends_with("daemon/mod.rs") {
            MOST_WIRING_LINES
        } else {
            MOST_LINES
        };
        if code > limit {
            over.push(format!(
                "{}: {code} lines of code (at most {limit})",
                path.display()
            ));
        }
    }
    assert!(over.is_empty(), "{}", over.join("\n"));
}
