//! The crate order of docs/architecture.md, enforced: every workspace crate is listed there, and
//! none depends on a crate listed after it.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The order as docs/architecture.md writes it between its crate-order markers.
fn documented_order() -> Vec<String> {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let start = doc.find("<!-- crate-order -->").expect("docs/architecture.md has no crate-order marker");
    let end = doc.find("<!-- /crate-order -->").expect("docs/architecture.md has no closing crate-order marker");
    doc[start + "<!-- crate-order -->".len()..end]
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The `hsu-*` crates a manifest depends on, in any dependency table.
fn hsu_dependencies(manifest: &str) -> Vec<String> {
    let mut in_deps = false;
    let mut out = Vec::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line.contains("dependencies");
            continue;
        }
        if in_deps && line.starts_with("hsu-") {
            out.push(line.split(|c: char| c == '=' || c == '.' || c.is_whitespace()).next().unwrap().to_string());
        }
    }
    out
}

#[test]
fn crates_depend_only_downwards() {
    let order = documented_order();
    let rank = |name: &str| order.iter().position(|c| c == name);
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
        assert!(manifest.contains(&format!("name = \"{name}\"")), "crates/{name} is not package {name}");
        let own =
            rank(&name).unwrap_or_else(|| panic!("crate {name} is missing from the order in docs/architecture.md"));
        for dep in hsu_dependencies(&manifest) {
            let dep_rank = rank(&dep).unwrap_or_else(|| panic!("{name} depends on {dep}, which is not in the order"));
            assert!(dep_rank < own, "{name} depends on {dep}, which comes after it in docs/architecture.md");
        }
        seen.push(name);
    }
    for listed in &order {
        assert!(seen.contains(listed), "docs/architecture.md lists {listed}, which is not under crates/");
    }
}

#[test]
fn the_manifest_scan_finds_dependencies() {
    let manifest = "[package]\nname = \"x\"\n[dependencies]\nhsu-model.workspace = true\nserde = \"1\"\n[dev-dependencies]\nhsu-proto = { path = \"../p\" }\n";
    assert_eq!(hsu_dependencies(manifest), vec!["hsu-model", "hsu-proto"]);
}
