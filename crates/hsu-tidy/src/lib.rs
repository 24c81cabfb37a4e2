//! The workspace's tidy checks, run by `cargo test`: the crate order and the dependency rules
//! written in docs/architecture.md, the shape of every member's manifest, and the `//!` header
//! of every source file. Each check returns the problems it found as sentences that name the
//! file, so that one run lists everything that is wrong.
//!
//! Within each crate, the modules must not import one another in a circle: every module can
//! then be read, and changed, knowing only those below it. The store's key prefixes are written
//! in one file, `hsu_model::keys`; no other source (tests aside) spells one out.
//!
//! Manifests are parsed as TOML, so every dependency table counts: `[dependencies]`,
//! `[dev-dependencies]`, `[build-dependencies]` and their `[target.'cfg(..)'.*]` forms.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One workspace member as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its directory, relative to the workspace root (`crates/hsu-store`).
    pub dir: String,
    pub name: String,
    /// Every crate it depends on, in any dependency table.
    pub deps: BTreeSet<String>,
    pub workspace_lints: bool,
}

/// A rule of the dependency-rules block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// Only these crates may depend on `dep`.
    Only { dep: String, users: BTreeSet<String> },
    /// `user` may not depend on `dep`.
    Not { user: String, dep: String },
}

/// Parses one manifest. `dir` is where it lives, relative to the root.
pub fn parse_member(dir: &str, manifest: &str) -> Result<Member, String> {
    let doc: toml::Table = manifest.parse().map_err(|e| format!("{dir}/Cargo.toml: {e}"))?;
    let name = doc
        .get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .ok_or_else(|| format!("{dir}/Cargo.toml: no [package] name"))?
        .to_string();
    let mut deps = BTreeSet::new();
    let mut add_tables = |t: &toml::Table| {
        for key in ["dependencies", "dev-dependencies", "build-dependencies"] {
            if let Some(table) = t.get(key).and_then(|d| d.as_table()) {
                for (dep, spec) in table {
                    // `alias = { package = "real" }` depends on `real`.
                    let real = spec.get("package").and_then(|p| p.as_str()).unwrap_or(dep);
                    deps.insert(real.to_string());
                }
            }
        }
    };
    add_tables(&doc);
    if let Some(targets) = doc.get("target").and_then(|t| t.as_table()) {
        for cfg in targets.values().filter_map(|v| v.as_table()) {
            add_tables(cfg);
        }
    }
    let workspace_lints = doc.get("lints").and_then(|l| l.get("workspace")).and_then(|w| w.as_bool()).unwrap_or(false);
    Ok(Member { dir: dir.to_string(), name, deps, workspace_lints })
}

/// The text between `<!-- NAME -->` and `<!-- /NAME -->` in `doc`.
pub fn block<'a>(doc: &'a str, name: &str) -> Result<&'a str, String> {
    let open = format!("<!-- {name} -->");
    let close = format!("<!-- /{name} -->");
    let start = doc.find(&open).ok_or_else(|| format!("docs/architecture.md has no {open} marker"))?;
    let end = doc.find(&close).ok_or_else(|| format!("docs/architecture.md has no {close} marker"))?;
    Ok(&doc[start + open.len()..end])
}

fn list(s: &str) -> impl Iterator<Item = String> + '_ {
    s.split(',').map(|c| c.trim().to_string()).filter(|c| !c.is_empty())
}

/// The crate order: a comma-separated list, lowest first.
pub fn parse_order(block: &str) -> Vec<String> {
    list(block).collect()
}

/// The rules: one per line, `X, Y: only A, B` or `A: not X, Y`.
pub fn parse_rules(block: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (n, line) in block.lines().map(str::trim).enumerate().filter(|(_, l)| !l.is_empty()) {
        let (left, right) =
            line.split_once(':').ok_or_else(|| format!("dependency rule {}: {line:?} has no ':'", n + 1))?;
        let right = right.trim();
        if let Some(users) = right.strip_prefix("only ") {
            let users: BTreeSet<String> = list(users).collect();
            rules.extend(list(left).map(|dep| Rule::Only { dep, users: users.clone() }));
        } else if let Some(deps) = right.strip_prefix("not ") {
            for user in list(left) {
                rules.extend(list(deps).map(|dep| Rule::Not { user: user.clone(), dep }));
            }
        } else {
            return Err(format!("dependency rule {}: {line:?}: expected `only ...` or `not ...` after ':'", n + 1));
        }
    }
    Ok(rules)
}

/// The order and the rules against the members: every problem, as a sentence.
pub fn check_dependencies(members: &[Member], order: &[String], rules: &[Rule]) -> Vec<String> {
    let mut problems = Vec::new();
    let rank: BTreeMap<&str, usize> = order.iter().enumerate().map(|(i, c)| (c.as_str(), i)).collect();
    let names: BTreeSet<&str> = members.iter().map(|m| m.name.as_str()).collect();
    for m in members {
        let dir_name = m.dir.rsplit('/').next().unwrap_or(&m.dir);
        if dir_name != m.name {
            problems
                .push(format!("{}/Cargo.toml: package {} is not named after its directory {dir_name}", m.dir, m.name));
        }
        if !m.workspace_lints {
            problems.push(format!("{}/Cargo.toml: no `[lints] workspace = true`", m.dir));
        }
        let Some(&own) = rank.get(m.name.as_str()) else {
            problems.push(format!("{} is a workspace member missing from the crate order", m.name));
            continue;
        };
        for dep in &m.deps {
            if let Some(&r) = rank.get(dep.as_str()) {
                if r >= own {
                    problems
                        .push(format!("{} depends on {dep}, which does not come before it in the crate order", m.name));
                }
            } else if dep.starts_with("hsu") || names.contains(dep.as_str()) {
                problems.push(format!("{} depends on {dep}, which is not in the crate order", m.name));
            }
        }
        for rule in rules {
            match rule {
                Rule::Only { dep, users } if m.deps.contains(dep) && !users.contains(&m.name) => {
                    problems.push(format!("{} depends on {dep}, which only {} may use", m.name, join(users)));
                }
                Rule::Not { user, dep } if *user == m.name && m.deps.contains(dep) => {
                    problems.push(format!("{} depends on {dep}, which it must not", m.name));
                }
                _ => {}
            }
        }
    }
    for listed in order {
        if !names.contains(listed.as_str()) {
            problems.push(format!("the crate order lists {listed}, which is not a workspace member"));
        }
    }
    for rule in rules {
        let named: Vec<&String> = match rule {
            Rule::Only { users, .. } => users.iter().collect(),
            Rule::Not { user, .. } => vec![user],
        };
        for n in named.into_iter().filter(|n| !names.contains(n.as_str())) {
            problems.push(format!("a dependency rule names {n}, which is not a workspace member"));
        }
    }
    problems
}

fn join(set: &BTreeSet<String>) -> String {
    set.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
}

/// The problems of one source file: no `//!` header, or a call of the store's Raft handle
/// outside hsu-store (this crate only names the call, to look for it).
pub fn check_source(path: &str, member: &str, text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !text.starts_with("//!") {
        problems.push(format!("{path}: does not start with a `//!` paragraph saying what it owns"));
    }
    if member != "hsu-store" && member != "hsu-tidy" {
        for (n, line) in text.lines().enumerate() {
            if line.contains(".raft()") && !line.trim_start().starts_with("//") {
                problems.push(format!("{path}:{}: calls `.raft()`; outside hsu-store use `Store::status()`", n + 1));
            }
        }
    }
    problems
}

/// Where every key prefix of the store is written (`hsu_model::keys`).
pub const KEYS_FILE: &str = "crates/hsu-model/src/keys.rs";

/// The store's key prefixes as `keys.rs` declares them: the literal of each `Space::new` and of
/// `USER_KV`.
pub fn key_prefixes(keys_rs: &str) -> Vec<String> {
    keys_rs
        .lines()
        .filter(|l| l.contains("Space::new(\"") || l.contains("USER_KV: &str"))
        .filter_map(|l| l.split('"').nth(1).map(str::to_string))
        .collect()
}

/// The lines of a source file (not a test) that write a store key prefix as a string literal:
/// keys are made by the spaces of `hsu_model::keys`, so that a key space has one definition.
pub fn check_key_literals(path: &str, text: &str, prefixes: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim_start().starts_with("//")) {
        for p in prefixes {
            if line.contains(&format!("\"{p}")) {
                problems.push(format!(
                    "{path}:{}: writes the key prefix {p:?} itself; use the space in hsu_model::keys",
                    n + 1
                ));
            }
        }
    }
    problems
}

/// A test file, by path: `tests.rs`, anything under `tests/`, `benches/`, or cluster-tests.
fn is_test_file(rel: &str) -> bool {
    rel.ends_with("/tests.rs")
        || rel.contains("/tests/")
        || rel.contains("/benches/")
        || rel.starts_with("cluster-tests/")
}

/// The modules of one crate (`src/x.rs` and `src/x/` are module `x`; `lib.rs`, `main.rs` and
/// `bin/` are roots, left out; so are `tests.rs` files) and the other modules each names with a
/// `crate::` path.
pub fn module_imports(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Test modules may reach anything; they are no part of the crate's structure.
    for file in rust_files(src).into_iter().filter(|f| f.file_name().is_some_and(|n| n != "tests.rs")) {
        let rel = file.strip_prefix(src).unwrap_or(&file);
        let top = rel.components().next().map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default();
        let module = top.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" || module == "bin" {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let uses = graph.entry(module.clone()).or_default();
        for name in crate_paths(&text) {
            if name != module {
                uses.insert(name);
            }
        }
    }
    graph
}

/// The first segment of every `crate::` path in `text`, outside comments.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            rest = &rest[i + "crate::".len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue; // `hsu_crate::` or the like
            }
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_lowercase()) {
                out.insert(name);
            }
        }
    }
    out
}

/// The modules that are on some circle of imports (each can reach itself), sorted.
pub fn modules_in_circles(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&str> = graph.get(from).map(|s| s.iter().map(String::as_str).collect()).unwrap_or_default();
        while let Some(m) = todo.pop() {
            if seen.insert(m.to_string()) {
                todo.extend(graph.get(m).map(|s| s.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_or_default());
            }
        }
        seen
    };
    graph.keys().filter(|m| reach(m).contains(*m)).cloned().collect()
}

/// Every `.rs` file under `dir`, sorted; `target` directories are passed over.
pub fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "target") {
                    todo.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Reads the workspace at `root` and runs every check.
pub fn check_workspace(root: &Path) -> Vec<String> {
    let read = |p: &str| std::fs::read_to_string(root.join(p)).map_err(|e| format!("{p}: {e}"));
    let mut problems = Vec::new();
    let (manifest, doc) = match (read("Cargo.toml"), read("docs/architecture.md")) {
        (Ok(m), Ok(d)) => (m, d),
        (m, d) => return [m.err(), d.err()].into_iter().flatten().collect(),
    };
    let dirs: Vec<String> = match manifest.parse::<toml::Table>() {
        Ok(t) => t
            .get("workspace")
            .and_then(|w| w.get("members"))
            .and_then(|m| m.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default(),
        Err(e) => return vec![format!("Cargo.toml: {e}")],
    };
    let mut members = Vec::new();
    for dir in &dirs {
        match read(&format!("{dir}/Cargo.toml")).and_then(|m| parse_member(dir, &m)) {
            Ok(m) => members.push(m),
            Err(e) => problems.push(e),
        }
    }
    let order = block(&doc, "crate-order").map(parse_order);
    let rules = block(&doc, "dependency-rules").and_then(parse_rules);
    match (order, rules) {
        (Ok(order), Ok(rules)) => problems.extend(check_dependencies(&members, &order, &rules)),
        (o, r) => problems.extend([o.err(), r.err()].into_iter().flatten()),
    }
    let prefixes = match read(KEYS_FILE) {
        Ok(text) => key_prefixes(&text),
        Err(e) => {
            problems.push(e);
            Vec::new()
        }
    };
    if prefixes.is_empty() {
        problems.push(format!("{KEYS_FILE} declares no key prefix (`Space::new(\"...\")`)"));
    }
    for m in &members {
        let circle = modules_in_circles(&module_imports(&root.join(&m.dir).join("src")));
        if !circle.is_empty() {
            let names: Vec<&str> = circle.iter().map(String::as_str).collect();
            problems.push(format!(
                "{}: modules {} import one another in a circle (each reaches itself through `crate::` paths)",
                m.dir,
                names.join(", ")
            ));
        }
        for file in rust_files(&root.join(&m.dir)) {
            let rel = file.strip_prefix(root).unwrap_or(&file).display().to_string();
            match std::fs::read_to_string(&file) {
                Ok(text) => {
                    problems.extend(check_source(&rel, &m.name, &text));
                    if rel != KEYS_FILE && !is_test_file(&rel) {
                        problems.extend(check_key_literals(&rel, &text, &prefixes));
                    }
                }
                Err(e) => problems.push(format!("{rel}: {e}")),
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests;
